"""Join the step folders of a step scattered over batches into one step folder.

Takes the folders the batches gave (step folders of one step, ordered by name: batch_001,
batch_002, ...) and writes one folder laid out as the step writes it for the whole set:

- ctf: micrographs_ctf.star (+ micrographs_ctf_failed.star) under one optics table with the
  dataset-relative ice thickness recomputed over every micrograph, diagnostics/;
- pick (batches picked with one search's parameters, ``cryoflow pick --parameters``):
  coordinates.star and coordinates/, the search's picker_state.pt (and self_template.mrcs),
  the search's report under search/ (--search);
- extract: particles.star under one optics table (image names relative to the merged folder),
  Particles/*.mrcs, particles.cs made over all particles with --seed (as one extract job);

with summary.json and report.html over the whole set and each batch's report under batches/.

Examples::

    cryoflow merge run/ctf_batches/batch_* --out run/ctf
    cryoflow merge run/pick_batches/batch_* --search run/pick_search --out run/pick
    cryoflow merge run/extract_batches/batch_* --out run/extract
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="step folders of the batches (one step)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--search", metavar="PICK_DIR", help="pick: the parameter search the batches were picked with (--parameters)"
    )
    parser.add_argument("--seed", type=int, default=0, help="extract: seed of the cryoSPARC uids (as extract's)")


def main(args: argparse.Namespace) -> int:
    from cryoflow.batches import merge_step_folders

    s = merge_step_folders(args.folders, args.out, search=args.search, seed=args.seed)
    if "fitted" in s:
        what = f"{s['micrographs']} micrographs ({s['fitted']} fitted)"
    elif "n_particles" in s:
        what = f"{s['n_particles']} particles from {s['micrographs']} micrographs (box {s['box']} px)"
    else:
        what = f"{s['particles']} picks on {s['micrographs']} micrographs"
    print(f"merge: {len(args.folders)} batches, {what} -> {args.out}")
    return 0
