"""Simulate the demo dataset and run the pipeline on it, end to end, into one run folder.

The run folder gets one sub-folder per step (simulate/, info/, ...) and an index.html
linking every step's report. A step whose folder already holds its summary.json is
complete and is skipped, so an interrupted demo resumes where it stopped.

Examples::

    cryoflow demo                       # into ./demo_run
    cryoflow demo --out /data/try1 --seed 7
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_run", metavar="DIR", help="run folder (created; resumed if it exists)")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo", "realistic"], help="simulator preset")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulated dataset")


def steps(run: Path, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The pipeline as it stands: (step folder, cryoflow arguments) in order."""
    data = run / "simulate"
    return [
        ("simulate", ["simulate", "--preset", args.preset, "--seed", str(args.seed), "--out", str(data)]),
        ("info", ["info", str(data), "--out", str(run / "info")]),
        ("ctf", ["ctf", str(data / "micrographs.star"), "--out", str(run / "ctf")]),
        (
            "micassess",
            ["micassess", "--micrographs", str(run / "ctf" / "micrographs_ctf.star"), "--out", str(run / "micassess")],
        ),
    ]


def main(args: argparse.Namespace) -> int:
    from cryoflow.cli import main as cryoflow

    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    for folder, argv in steps(run, args):
        if (run / folder / "summary.json").exists():
            print(f"[demo] {folder}: done already, skipped")
            continue
        print(f"[demo] cryoflow {' '.join(argv)}")
        code = cryoflow(argv)
        if code:
            return code
    code = cryoflow(["report", str(run), "--title", "cryoflow demo run"])
    if code == 0:
        print(f"[demo] open {run / 'index.html'} in a browser")
    return code
