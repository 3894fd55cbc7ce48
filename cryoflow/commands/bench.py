"""Print the figures an issue asks for (accuracy against the simulator's truth, seconds per item, memory).

A benchmark measures a step on data the simulator makes, so a user can reproduce the
figures on their own hardware. Each step that has one provides ``cryoflow.<step>.bench``
with ``main(argv) -> dict``; options after STEP go to it (see ``cryoflow bench STEP --help``).

Examples::

    cryoflow bench simulate
    cryoflow bench simulate --help
"""

from __future__ import annotations

import argparse
import importlib

from cryoflow.errors import CryoflowError

STEPS = ["simulate", "ctf", "micassess", "pick", "extract", "classify2d", "classassess", "feedback", "watch"]
# steps whose benchmark module is not cryoflow.<step>.bench
MODULES = {
    "pick": "cryoflow.picking.pick_bench",
    "extract": "cryoflow.picking.extract_bench",
    "watch": "cryoflow.feedback.watch_bench",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", choices=STEPS, help="the step to benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options passed to the step's benchmark")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(MODULES.get(args.step, f"cryoflow.{args.step}.bench"))
    except ModuleNotFoundError:
        raise CryoflowError(None, f"no benchmark for step {args.step!r} yet") from None
    options = list(args.options)
    if "--json" in options:  # accepted after STEP too
        i = options.index("--json")
        if i + 1 >= len(options):
            raise CryoflowError(None, "--json needs a FILE")
        args.json = options[i + 1]
        del options[i : i + 2]
    figures = module.main(options)  # prints its own readable table
    if args.json:
        from cryoflow.report.builder import write_summary

        write_summary(args.json, figures)
    return 0
