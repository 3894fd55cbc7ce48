"""Simulate a cryo-EM dataset with complete ground truth (micrographs, grid, particles).

Writes an EPU-like folder (GridSquare_<n>/Data/FoilHole_<m>_Data_<k>.mrc plus a
low-magnification image of each square), micrographs.star (the input of the next steps),
the ground truth (truth/micrographs_truth.star, truth/particles_truth.star,
truth/squares_truth.star), dataset.json (every parameter, the seed, the version) and
report.html + summary.json describing the dataset. DIR must not exist or be empty: the
dataset is built in a temporary folder beside it and renamed when complete.

Presets: tiny (6 small micrographs, for tests), demo (30 micrographs of 1024² at 1.5 Å/px,
two species, ~25% bad over 3 squares), realistic (4096² at 0.83 Å/px).

Examples::

    cryoflow simulate --preset demo --out demo_data
    cryoflow simulate --preset tiny --out /tmp/tiny --seed 3
    cryoflow simulate --preset realistic --out big --n-micrographs 8 --device cuda
    cryoflow simulate --preset demo --out mine --structure my_model.cif other_map.mrc
    cryoflow simulate --preset demo --out demo_data --realism-report
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryoflow.errors import CryoflowError

PRESET_NAMES = ("tiny", "demo", "realistic")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESET_NAMES, default="demo", help="dataset preset")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--n-micrographs", type=int, metavar="N", help="number of micrographs (default: the preset's)")
    parser.add_argument(
        "--structure",
        nargs="+",
        metavar="PDB_OR_MAP",
        help="particle species from PDB/mmCIF models or MRC maps (replace the preset's species; equal abundance)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to compute")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="CPU processes simulating micrographs in parallel (default: the cores, for big enough datasets); "
        "the output does not depend on it",
    )
    parser.add_argument(
        "--realism-report",
        action="store_true",
        help="also write DIR/realism/report.html: simulated micrographs beside real ones at their pixel sizes",
    )
    parser.add_argument(
        "--real-micrographs",
        metavar="DIR",
        help="folder of real micrographs for the realism report (default: ../shared/data/micrographs if present)",
    )


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "already exists and is not empty; give a new folder (simulate never overwrites data)")
    if args.workers is not None and args.workers < 1:
        raise CryoflowError(None, f"--workers must be at least 1, got {args.workers}")
    if args.n_micrographs is not None and args.n_micrographs < 1:
        raise CryoflowError(None, f"--n-micrographs must be at least 1, got {args.n_micrographs}")
    for path in args.structure or []:
        if not Path(path).is_file():
            raise CryoflowError(path, "structure file not found")

    from cryoflow.simulate.dataset import simulate_dataset

    result = simulate_dataset(
        out,
        preset=args.preset,
        seed=args.seed,
        n_micrographs=args.n_micrographs,
        structures=args.structure,
        device=args.device,
        realism_report=args.realism_report,
        real_micrographs=args.real_micrographs,
        workers=args.workers,
    )
    reasons = ", ".join(f"{k} {v}" for k, v in result.reasons.items())
    print(f"{result.path}: {result.n_micrographs} micrographs ({reasons}), {result.n_particles} particles")
    print(f"input for the next step: {result.path / 'micrographs.star'}")
    print(f"report: {result.path / 'report.html'}")
    return 0
