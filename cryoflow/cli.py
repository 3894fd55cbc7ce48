"""The ``cryoflow`` command: one entry point, one sub-command per pipeline step.

Each sub-command is a module in :mod:`cryoflow.commands` with a docstring (its first line
is the one-line help, the rest worked examples), ``add_args(parser)`` and ``main(args)``.
Modules import heavy libraries (torch, matplotlib) inside ``main`` so ``--help`` is quick.

A :class:`cryoflow.CryoflowError` (bad input, bad parameter) ends the program with
``cryoflow: error: <file>: <what is wrong>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cryoflow import __version__
from cryoflow.errors import CryoflowError

# Sub-commands in pipeline order (module names in cryoflow.commands).
COMMANDS = [
    "simulate",
    "info",
    "split",
    "ctf",
    "merge",
    "micassess",
    "pick",
    "extract",
    "classify2d",
    "classassess",
    "particles",
    "feedback",
    "watch",
    "report",
    "demo",
    "run",
    "bench",
]


def _load(name: str):
    return importlib.import_module(f"cryoflow.commands.{name}")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples in docstrings as written and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryoflow",
        description="Data-driven cryo-EM preprocessing: micrographs in, clean particle stack out.",
        epilog="Run 'cryoflow <command> --help' for the options of a command (every option states its unit).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cryoflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name in COMMANDS:
        module = _load(name)
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(name, help=summary, description=doc, formatter_class=_Formatter)
        module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        result = args._main(args)
    except CryoflowError as exc:
        print(f"cryoflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryoflow: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
