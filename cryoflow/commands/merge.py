"""Join the step folders of a step scattered over batches into one step folder.

Takes the folders the batches gave (ctf step folders, ordered by name: batch_001, batch_002,
...) and writes one folder laid out as the step writes it for the whole set: for ctf,
micrographs_ctf.star (+ micrographs_ctf_failed.star) under one optics table with the
dataset-relative ice thickness recomputed over every micrograph, diagnostics/, summary.json
and report.html over the whole set, and each batch's report under batches/.

Examples::

    cryoflow merge run/ctf_batches/batch_* --out run/ctf
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="step folders of the batches (one step)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")


def main(args: argparse.Namespace) -> int:
    from cryoflow.batches import merge_step_folders

    s = merge_step_folders(args.folders, args.out)
    print(f"merge: {len(args.folders)} batches, {s['micrographs']} micrographs ({s['fitted']} fitted) -> {args.out}")
    return 0
