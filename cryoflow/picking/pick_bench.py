"""``cryoflow bench pick``: picking accuracy against the simulator's truth, diameter search, speed.

Held-out datasets (their own seeds, one species each, all-good squares) are simulated and
picked twice: with the diameter searched and with the true diameter given. A pick is a
true positive when it lies within 0.25 x the particle's diameter of a true particle (one
pick per particle, optimal assignment); true particles whose centre lies inside the edge
margin the picker keeps clear of are not counted. Picks on junk objects (broken
particles, ice chips, contaminants, aggregates) are counted apart. The CTF given to the
picker is the simulator's (the CTF step's estimates are within 0.1% of it, see
``cryoflow bench ctf``). Speed is timed on full-size 4096² micrographs (0.83 Å/px).

Usage::

    cryoflow bench pick                      # 4 species x 6 micrographs of 1024², speed on 2 x 4096²
    cryoflow bench pick --n 10 --json pick_bench.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.picking import search

SPECIES = {
    "7DDO (92 kDa, 115 Å)": {"kind": "reference"},
    "globular 150 Å": {"kind": "procedural", "diameter": 150.0, "shape": "globular", "seed": 31},
    "elongated 200 Å": {"kind": "procedural", "diameter": 200.0, "shape": "elongated", "seed": 32},
    "globular 250 Å": {"kind": "procedural", "diameter": 250.0, "shape": "globular", "seed": 33},
}


def match(picks: np.ndarray, truth: pd.DataFrame, pixel_size: float) -> np.ndarray:
    """Index into ``truth`` of each pick's matched object (-1: none); picks ``(n, 2)`` [x, y] px."""
    from scipy.optimize import linear_sum_assignment

    out = np.full(len(picks), -1)
    if len(picks) == 0 or truth.empty:
        return out
    tx, ty = truth["rlnCoordinateX"].to_numpy(float), truth["rlnCoordinateY"].to_numpy(float)
    dist = np.hypot(picks[:, :1] - tx[None], picks[:, 1:2] - ty[None])
    radius = 0.25 * truth["cfDiameter"].to_numpy(float)[None] / pixel_size
    cost = np.where(dist < radius, dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] < 1e6
    out[rows[ok]] = cols[ok]
    return out


def score_picks(pick_dir: Path, data_dir: Path, margin_px: float) -> dict:
    """Precision, recall, F1 and junk share of a pick folder against a simulated dataset's truth."""
    from cryoflow.io import read_blocks
    from cryoflow.simulate import read_truth

    mics, parts = read_truth(data_dir)
    good = set(mics.table.loc[mics.table["cfLabel"] == "good", "rlnMicrographName"])
    index = read_blocks(pick_dir / "coordinates.star")["coordinate_files"]
    apix = float(mics.optics["rlnMicrographPixelSize"].iloc[0])
    tp = fp = junk = n_true = 0
    for _, row in index.iterrows():
        name = row["rlnMicrographName"]
        if name not in good:
            continue
        table = next(iter(read_blocks(pick_dir / row["rlnMicrographCoordinates"]).values()))
        picks = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float) if len(table) else np.zeros((0, 2))
        truth = parts.table[parts.table["rlnMicrographName"] == name].reset_index(drop=True)
        h, w = [int(v) for v in json.loads((data_dir / "dataset.json").read_text())["parameters"]["shape"]]
        matched = match(picks, truth, apix)
        is_junk = truth["cfIsJunk"].to_numpy(int) == 1
        inside = (
            (truth["rlnCoordinateX"] >= margin_px)
            & (truth["rlnCoordinateY"] >= margin_px)
            & (truth["rlnCoordinateX"] <= w - 1 - margin_px)
            & (truth["rlnCoordinateY"] <= h - 1 - margin_px)
        ).to_numpy()
        hit = matched >= 0
        tp += int((hit & ~is_junk[np.maximum(matched, 0)]).sum())
        junk += int((hit & is_junk[np.maximum(matched, 0)]).sum())
        fp += int((~hit).sum())
        n_true += int((~is_junk & inside).sum())
    n_picks = tp + fp + junk
    precision = tp / max(n_picks, 1)
    recall = min(1.0, tp / max(n_true, 1))
    return {
        "picks": n_picks,
        "true_particles": n_true,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "junk_share": round(junk / max(n_picks, 1), 4),
        "background_share": round(fp / max(n_picks, 1), 4),
    }


def _dataset(folder: Path, species: dict, seed: int, n: int, shape, pixel_size: float, **extra) -> Path:
    from cryoflow.simulate import SpeciesSpec, simulate_dataset

    spec = SpeciesSpec(**species)
    simulate_dataset(
        folder,
        preset="demo",
        seed=seed,
        n_micrographs=n,
        species=(spec,),
        squares=("good",),
        shape=tuple(shape),
        pixel_size=pixel_size,
        report=False,
        workers=1,
        **extra,
    )
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cryoflow bench pick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="micrographs per species")
    parser.add_argument("--size", type=int, default=1024, help="micrograph size for accuracy (px, 1.5 Å/px)")
    parser.add_argument("--speed-n", type=int, default=2, help="4096² micrographs timed (0: skip)")
    parser.add_argument("--seed", type=int, default=1000, help="first dataset seed (training never uses these)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    from cryoflow.picking.pick import run_pick
    from cryoflow.simulate import read_truth

    results = {"accuracy": [], "speed": None}
    with tempfile.TemporaryDirectory(prefix="cryoflow-bench-pick-") as tmp:
        tmp = Path(tmp)
        for j, (label, species) in enumerate(SPECIES.items()):
            data = _dataset(tmp / f"data{j}", species, args.seed + j, args.n, (args.size, args.size), 1.5)
            _, parts = read_truth(data)
            true_d = float(parts.table.loc[parts.table["cfIsJunk"] == 0, "cfDiameter"].median())
            star = data / "truth" / "micrographs_truth.star"
            row = {"species": label, "true_diameter_A": round(true_d, 1)}
            for mode, given in (("searched", None), ("given", true_d)):
                t0 = time.perf_counter()
                summary = run_pick(star, tmp / f"pick{j}_{mode}", diameter=given, device="cpu", report=False)
                seconds = time.perf_counter() - t0
                margin = search.EDGE_MARGIN * summary["diameter_A"] / 1.5
                row[mode] = score_picks(tmp / f"pick{j}_{mode}", data, margin)
                row[mode]["diameter_A"] = summary["diameter_A"]
                row[mode]["threshold"] = summary["threshold"]
                row[mode]["seconds_per_micrograph"] = round(seconds / args.n, 3)
            row["diameter_error"] = round(row["searched"]["diameter_A"] / true_d - 1, 4)
            results["accuracy"].append(row)
            print(
                f"{label:24s} true {true_d:5.0f} Å  searched {row['searched']['diameter_A']:5.0f} Å "
                f"({100 * row['diameter_error']:+.0f}%)  F1 searched {row['searched']['f1']:.3f} "
                f"given {row['given']['f1']:.3f}  (P {row['given']['precision']:.3f} R {row['given']['recall']:.3f}) "
                f"junk {100 * row['given']['junk_share']:.1f}%  background {100 * row['given']['background_share']:.1f}%",
                flush=True,
            )
        if args.speed_n:
            data = _dataset(
                tmp / "speed",
                SPECIES["globular 150 Å"],
                args.seed + 99,
                args.speed_n,
                (4096, 4096),
                0.83,
                particles=(250, 350),
            )
            star = data / "truth" / "micrographs_truth.star"
            t0 = time.perf_counter()
            fixed = run_pick(star, tmp / "speed_given", diameter=150.0, device="cpu", report=False)
            t_given = (time.perf_counter() - t0) / args.speed_n
            t0 = time.perf_counter()
            run_pick(star, tmp / "speed_searched", device="cpu", report=False)
            t_search = (time.perf_counter() - t0) / args.speed_n
            results["speed"] = {
                "micrographs": args.speed_n,
                "seconds_per_micrograph_given_diameter": round(t_given, 3),
                "seconds_per_micrograph_with_search": round(t_search, 3),
                "picking_only_median": fixed["seconds"]["per_micrograph_median"],
            }
            print(
                f"speed 4096² @ 0.83 Å/px: {t_given:.2f} s per micrograph (diameter given, incl. reading and writing), "
                f"{t_search:.2f} s with the diameter search over {args.speed_n} micrographs; "
                f"picking alone median {fixed['seconds']['per_micrograph_median']:.2f} s"
            )
    f1 = [r["searched"]["f1"] for r in results["accuracy"]]
    junk = [r["searched"]["junk_share"] for r in results["accuracy"]]
    derr = [abs(r["diameter_error"]) for r in results["accuracy"]]
    print(
        f"targets: F1 >= 0.90 (mean searched {np.mean(f1):.3f}, min {np.min(f1):.3f}); picks on junk <= 2% "
        f"(mean {100 * np.mean(junk):.1f}%); diameter within 15% (max error {100 * np.max(derr):.0f}%)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results
