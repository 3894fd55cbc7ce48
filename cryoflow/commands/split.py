"""Cut a micrograph set into batches (one STAR file each) for a step scattered over them.

Writes batch_001.star, batch_002.star, ... into --out, --batch-size micrographs each, in
the order of the set. A folder's micrographs are named <folder name>/<path inside it>, so a
batch resolves wherever the folder sits beside it under its own name (as the CWL workflows
stage it for the CTF step); optics groups come from the pixel sizes in the headers, numbered
over the whole set. A STAR input is cut as it is. With --sample N, sample.star holds up to N
micrographs spread evenly over the set, where a per-dataset search runs first (pick's
parameters, then 'cryoflow pick --parameters' per batch). 'cryoflow merge' joins the step
folders the batches give.

Examples::

    cryoflow split Images-Disc1/ --out run/batches --batch-size 50
    cd run && cryoflow ctf batches/batch_001.star --out ctf_batches/batch_001   # from the folder holding Images-Disc1/
    cryoflow split run/micassess/micrographs_good.star --out run/good_batches --batch-size 20 --sample 40
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "micrographs", nargs="+", metavar="MICROGRAPHS", help="MRC files, globs, a folder or a STAR file"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--batch-size", type=int, default=10, metavar="N", help="micrographs per batch")
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="also write sample.star: up to N micrographs spread evenly over the set (all when fewer), for a "
        "parameter search (pick) before the batches",
    )
    parser.add_argument(
        "--folder-name",
        metavar="NAME",
        help="name of a folder input in the micrograph names (default: its own name; a workflow gives the "
        "name the next jobs stage it under)",
    )


def main(args: argparse.Namespace) -> int:
    from cryoflow.batches import split_micrographs

    s = split_micrographs(args.micrographs, args.out, args.batch_size, args.folder_name, args.sample)
    print(
        f"split: {s['micrographs']} micrographs into {len(s['batches'])} batches of up to {args.batch_size} -> {args.out}"
    )
    return 0
