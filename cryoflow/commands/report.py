"""Write the index report of a run folder, linking every step's report.html.

A run folder holds one sub-folder per step (ctf/, micassess/, pick/, ...), each with its
report.html and summary.json. The index page (RUN_DIR/index.html) lists them in pipeline
order with their key figures.

Examples::

    cryoflow report demo_run/
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder holding one sub-folder per step")
    parser.add_argument("--title", default="cryoflow run", help="title of the index page")


def main(args: argparse.Namespace) -> int:
    from cryoflow.report import write_index

    path = write_index(args.run_dir, title=args.title)
    print(path)
    return 0
