"""``cryoflow bench pick``: picking accuracy against the simulator's truth, diameter search, speed.

Held-out datasets (their own seeds, one species each, all-good squares) are simulated and
picked twice: with the diameter searched and with the true diameter given. A pick is a
true positive when it lies within 0.25 x the particle's diameter of a true particle (one
pick per particle, optimal assignment); true particles whose centre lies inside the edge
margin the picker keeps clear of are not counted. Picks on junk objects (broken
particles, ice chips, contaminants, aggregates) are counted apart. The CTF given to the
picker is the simulator's (the CTF step's estimates are within 0.1% of it, see
``cryoflow bench ctf``). Speed is timed on full-size 4096² micrographs (0.83 Å/px).

Each picker of ``--pickers`` (default ``cnn,blob``) is measured on the same micrographs and
printed side by side: F1, precision, recall, junk and background shares (diameter searched
and given), the diameter found, seconds per micrograph (CNN training included).

Usage::

    cryoflow bench pick                      # 4 species x 6 micrographs of 1024², speed on 2 x 4096²
    cryoflow bench pick --n 10 --json pick_bench.json
    cryoflow bench pick --n 6 --speed-n 2 --pickers cnn,blob
    cryoflow bench pick --n 4 --speed-n 0 --topaz /tmp/topaz-venv/bin/python

``--topaz PYTHON`` also runs Topaz's pretrained picker (``--topaz-model``, default resnet16) on the
same micrographs and scores its picks with the same matching: Topaz is given the true diameter
(downsampling so the particle is ~28 px across, extraction radius = particle radius) and is
reported at score threshold 0 and at the best threshold of a sweep over -6..6; its seconds per
micrograph are the wall clock of ``topaz preprocess`` + ``topaz extract`` (start-up included).
Topaz is GPL-3.0: it is never imported by cryoflow, only run as a separate program from its own
venv, where torchvision is not needed (the bench runs ``python -m topaz.commands.X``)::

    python3.11 -m venv /tmp/topaz-venv
    /tmp/topaz-venv/bin/pip install --no-deps topaz-em
    /tmp/topaz-venv/bin/pip install torch==2.13.0 numpy pandas scipy scikit-learn pillow h5py tqdm psutil future
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

    index = read_blocks(pick_dir / "coordinates.star")["coordinate_files"]
    picks = {}
    for _, row in index.iterrows():
        table = next(iter(read_blocks(pick_dir / row["rlnMicrographCoordinates"]).values()))
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float) if len(table) else np.zeros((0, 2))
        picks[row["rlnMicrographName"]] = xy
    return score_coordinates(picks, data_dir, margin_px)


def score_coordinates(picks_by_micrograph: dict, data_dir: Path, margin_px: float, truth_tables=None) -> dict:
    """:func:`score_picks` on picks given as ``{micrograph name: (n, 2) [x, y] px}``.

    Micrographs absent from the mapping are not counted (as a pick folder without their file).
    ``truth_tables`` is ``read_truth(data_dir)``, when the caller has it already (threshold sweeps).
    """
    from cryoflow.simulate import read_truth

    mics, parts = truth_tables if truth_tables is not None else read_truth(data_dir)
    good = set(mics.table.loc[mics.table["cfLabel"] == "good", "rlnMicrographName"])
    apix = float(mics.optics["rlnMicrographPixelSize"].iloc[0])
    tp = fp = junk = n_true = 0
    kinds: dict[str, int] = {}
    for name, picks in picks_by_micrograph.items():
        if name not in good:
            continue
        picks = np.asarray(picks, float).reshape(-1, 2)
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
        for kind in truth["cfJunkKind"].to_numpy()[matched[hit & is_junk[np.maximum(matched, 0)]]]:
            kinds[str(kind)] = kinds.get(str(kind), 0) + 1
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
        "junk_picks_by_kind": kinds,
        "background_share": round(fp / max(n_picks, 1), 4),
    }


TOPAZ_MODELS = ("resnet16", "resnet16_u32", "resnet8", "resnet8_u32")  # pretrained detectors in the wheel
TOPAZ_DIAMETER_PX = 28  # particle diameter after downsampling: Topaz's tutorial (T20S, -s 8, -r 14)
TOPAZ_THRESHOLDS = np.round(np.arange(-6.0, 6.01, 0.25), 2)  # -6 is topaz extract's default cut


def _topaz_python(path: str) -> tuple[str, str, float]:
    """The Topaz venv's python (a ``topaz`` entry point resolves to the python beside it), its version
    and the seconds it takes to start and import topaz and torch (part of each Topaz step's time)."""
    import subprocess

    exe = Path(path).expanduser()
    if exe.name.startswith("topaz"):
        exe = exe.parent / "python"
    probe = "import topaz, torch; print(topaz.__version__, torch.__version__)"
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), "-c", probe], capture_output=True, text=True, env=_topaz_env())
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"--topaz {path}: cannot import topaz with {exe}:\n{done.stderr.strip()[-2000:]}")
    topaz_version, torch_version = done.stdout.split()
    return str(exe), f"topaz {topaz_version} (torch {torch_version})", seconds


def _topaz_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run_topaz(
    python: str,
    data_dir: Path,
    work: Path,
    diameter_a: float,
    model: str = "resnet16",
    diameter_px: float = TOPAZ_DIAMETER_PX,
) -> dict:
    """Topaz's pretrained picker on a simulated dataset's micrographs, as a separate program.

    ``topaz preprocess`` (Fourier downsampling by an integer so the particle is ~``diameter_px`` across,
    GMM normalisation) then ``topaz extract`` with the pretrained ``model``, the particle radius
    and threshold -6; the modules are run as ``python -m topaz.commands.X`` because the ``topaz``
    entry point imports the training code, which needs torchvision. Returns the picks in
    micrograph pixels (columns micrograph, x, y, score) and the wall-clock seconds of both steps.
    """
    import subprocess

    from cryoflow.simulate import read_truth

    mics, _ = read_truth(data_dir)
    apix = float(mics.optics["rlnMicrographPixelSize"].iloc[0])
    h, w = [int(v) for v in json.loads((data_dir / "dataset.json").read_text())["parameters"]["shape"]]
    d_px = diameter_a / apix
    scale = max(1, int(round(d_px / diameter_px)))
    radius = max(1, int(round(d_px / 2 / scale)))
    raw, pre = work / "micrographs", work / "preprocessed"
    raw.mkdir(parents=True)
    names = {}
    for i, name in enumerate(mics.table["rlnMicrographName"]):
        (raw / f"mic{i:04d}.mrc").symlink_to((data_dir / name).resolve())  # flat, unique stems
        names[f"mic{i:04d}"] = name
    stems = sorted(names)
    steps = {
        "preprocess": ["-m", "topaz.commands.preprocess", "-s", str(scale), "-d", "-1", "-o", str(pre)]
        + [str(raw / f"{k}.mrc") for k in stems],
        "extract": ["-m", "topaz.commands.extract", "-m", model, "-r", str(radius), "-t", str(TOPAZ_THRESHOLDS[0])]
        + ["-d", "-1", "-o", str(work / "picks.txt")]
        + [str(pre / f"{k}.mrc") for k in stems],
    }
    seconds = {}
    for step, args in steps.items():
        t0 = time.perf_counter()
        done = subprocess.run([python, *args], capture_output=True, text=True, env=_topaz_env())
        seconds[step] = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"topaz {step} failed ({done.returncode}):\n{done.stderr.strip()[-3000:]}")
    picks = pd.read_csv(work / "picks.txt", sep="\t")
    # coordinates in the downsampled grid (x: column, y: row from the top left, as cryoflow's)
    picks = pd.DataFrame(
        {
            "micrograph": picks["image_name"].astype(str).map(names),
            "x": picks["x_coord"].to_numpy(float) * w / int(w / scale),
            "y": picks["y_coord"].to_numpy(float) * h / int(h / scale),
            "score": picks["score"].to_numpy(float),
        }
    )
    return {"picks": picks, "scale": scale, "radius_px": radius, "seconds": seconds, "micrographs": len(stems)}


def score_topaz(topaz: dict, data_dir: Path, margin_px: float) -> dict:
    """:func:`score_coordinates` of Topaz's picks at threshold 0 (log-likelihood ratio 0, p = 0.5) and at
    the threshold of the sweep that maximises F1 (chosen with the truth: an upper bound for Topaz).

    Topaz's non-maximum suppression is greedy by score, so the picks of ``topaz extract -t T`` are the
    picks of ``-t -6`` with score >= T and a single extraction serves the whole sweep. Picks within
    ``margin_px`` of the edge are dropped first: particles there are not counted as true (cryoflow keeps
    clear of them), so both pickers are scored on the same area.
    """
    from cryoflow.simulate import read_truth

    tables = read_truth(data_dir)
    names = list(tables[0].table["rlnMicrographName"])
    h, w = [int(v) for v in json.loads((data_dir / "dataset.json").read_text())["parameters"]["shape"]]
    picks = topaz["picks"]
    x, y = picks["x"], picks["y"]
    inside = (x >= margin_px) & (y >= margin_px) & (x <= w - 1 - margin_px) & (y <= h - 1 - margin_px)
    picks = picks[inside]

    def at(threshold: float) -> dict:
        kept = picks[picks["score"] >= threshold]
        by_name = {n: kept.loc[kept["micrograph"] == n, ["x", "y"]].to_numpy(float) for n in names}
        return score_coordinates(by_name, data_dir, margin_px, truth_tables=tables) | {"threshold": float(threshold)}

    sweep = [at(t) for t in TOPAZ_THRESHOLDS]
    best = max(sweep, key=lambda r: r["f1"])
    return {
        "threshold_0": at(0.0),
        "best": best,
        "sweep": [{k: r[k] for k in ("threshold", "precision", "recall", "f1")} for r in sweep],
        "scale": topaz["scale"],
        "radius_px": topaz["radius_px"],
        "edge_picks_dropped": int((~inside & (topaz["picks"]["score"] >= 0)).sum()),
        "seconds": {k: round(v, 2) for k, v in topaz["seconds"].items()},
        "seconds_per_micrograph": round(sum(topaz["seconds"].values()) / max(topaz["micrographs"], 1), 3),
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


def _print_row(label: str, true_d: float, picker: str, r: dict) -> None:
    """One line per species and picker: diameter found, F1 (searched and given), junk, background, speed."""
    s, g = r["searched"], r["given"]
    print(
        f"{label:24s} {picker:4s} true {true_d:5.0f} Å  searched {s['diameter_A']:5.0f} Å "
        f"({100 * r['diameter_error']:+.0f}%)  F1 searched {s['f1']:.3f} (P {s['precision']:.3f} R {s['recall']:.3f}) "
        f"junk {100 * s['junk_share']:.1f}% background {100 * s['background_share']:.1f}% | given F1 {g['f1']:.3f} "
        f"(P {g['precision']:.3f} R {g['recall']:.3f}) junk {100 * g['junk_share']:.1f}% "
        f"{g['junk_picks_by_kind']} | {s['seconds_per_micrograph']:.2f} s/mic searched"
        + (f" (training {s['cnn_training_seconds']:.1f} s)" if "cnn_training_seconds" in s else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cryoflow bench pick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="micrographs per species")
    parser.add_argument("--size", type=int, default=1024, help="micrograph size for accuracy (px, 1.5 Å/px)")
    parser.add_argument("--speed-n", type=int, default=2, help="4096² micrographs timed (0: skip)")
    parser.add_argument("--seed", type=int, default=1000, help="first dataset seed (training never uses these)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--topaz",
        metavar="PYTHON",
        help="also run Topaz's pretrained picker with this python (a venv with topaz-em: see the module docstring)",
    )
    parser.add_argument("--topaz-model", default="resnet16", choices=TOPAZ_MODELS, help="Topaz pretrained detector")
    parser.add_argument(
        "--topaz-diameter-px",
        type=float,
        default=TOPAZ_DIAMETER_PX,
        help="particle diameter Topaz sees after its downsampling (px; default %(default)s)",
    )
    parser.add_argument(
        "--pickers",
        default="cnn,blob",
        help="pickers to measure side by side, comma-separated from auto, blob, cnn (default %(default)s; "
        "the first one's figures are the headline and the Topaz comparison's)",
    )
    args = parser.parse_args(argv)
    pickers = [p.strip() for p in args.pickers.split(",") if p.strip()]
    if not pickers or not set(pickers) <= {"auto", "blob", "cnn"}:
        parser.error(f"--pickers: a comma-separated list of auto, blob, cnn, not {args.pickers!r}")

    from cryoflow.picking.pick import run_pick
    from cryoflow.simulate import read_truth

    results = {"accuracy": [], "speed": None}
    if args.topaz:
        topaz_python, results["topaz"], startup = _topaz_python(args.topaz)
        print(
            f"comparing with {results['topaz']}, pretrained {args.topaz_model}, via {topaz_python} "
            f"(start-up and imports {startup:.1f} s, twice per species)",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="cryoflow-bench-pick-") as tmp:
        tmp = Path(tmp)
        for j, (label, species) in enumerate(SPECIES.items()):
            data = _dataset(tmp / f"data{j}", species, args.seed + j, args.n, (args.size, args.size), 1.5)
            _, parts = read_truth(data)
            true_d = float(parts.table.loc[parts.table["cfIsJunk"] == 0, "cfDiameter"].median())
            star = data / "truth" / "micrographs_truth.star"
            row = {"species": label, "true_diameter_A": round(true_d, 1), "pickers": {}}
            for picker in pickers:
                figures = row["pickers"][picker] = {}
                for mode, given in (("searched", None), ("given", true_d)):
                    folder = tmp / f"pick{j}_{picker}_{mode}"
                    t0 = time.perf_counter()
                    summary = run_pick(star, folder, diameter=given, device="cpu", report=False, picker=picker)
                    seconds = time.perf_counter() - t0
                    margin = search.EDGE_MARGIN * summary["diameter_A"] / 1.5
                    figures[mode] = score_picks(folder, data, margin)
                    figures[mode]["diameter_A"] = summary["diameter_A"]
                    figures[mode]["threshold"] = summary["threshold"]
                    figures[mode]["picker_ran"] = summary["picker_choice"]["ran"]
                    if summary.get("cnn"):
                        figures[mode]["cnn_training_seconds"] = summary["cnn"]["seconds"]
                    if summary.get("diameter_search"):
                        row["diameter_search"] = summary["diameter_search"]
                    figures[mode]["seconds_per_micrograph"] = round(seconds / args.n, 3)
                figures["diameter_error"] = round(figures["searched"]["diameter_A"] / true_d - 1, 4)
                _print_row(label if picker == pickers[0] else "", true_d, picker, figures)
            # the headline figures (and the Topaz comparison): the first picker's
            row.update(row["pickers"][pickers[0]])
            results["accuracy"].append(row)
            if args.topaz:
                found = run_topaz(
                    topaz_python, data, tmp / f"topaz{j}", true_d, args.topaz_model, args.topaz_diameter_px
                )
                row["topaz"] = score_topaz(found, data, search.EDGE_MARGIN * true_d / 1.5)
                t0_, best = row["topaz"]["threshold_0"], row["topaz"]["best"]
                print(
                    f"{'  topaz ' + args.topaz_model:24s} /{found['scale']} r {found['radius_px']} px  "
                    f"F1 t=0 {t0_['f1']:.3f} (P {t0_['precision']:.3f} R {t0_['recall']:.3f})  "
                    f"best F1 {best['f1']:.3f} at t={best['threshold']:g} "
                    f"(P {best['precision']:.3f} R {best['recall']:.3f})  junk {100 * t0_['junk_share']:.1f}%  "
                    f"background {100 * t0_['background_share']:.1f}%  s/micrograph: topaz "
                    f"{row['topaz']['seconds_per_micrograph']:.2f}, cryoflow given {row['given']['seconds_per_micrograph']:.2f}, "
                    f"searched {row['searched']['seconds_per_micrograph']:.2f}",
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
            results["speed"] = {}
            for picker in pickers:
                t0 = time.perf_counter()
                fixed = run_pick(
                    star, tmp / f"speed_given_{picker}", diameter=150.0, device="cpu", report=False, picker=picker
                )
                t_given = (time.perf_counter() - t0) / args.speed_n
                t0 = time.perf_counter()
                run_pick(star, tmp / f"speed_searched_{picker}", device="cpu", report=False, picker=picker)
                t_search = (time.perf_counter() - t0) / args.speed_n
                train = fixed["cnn"]["seconds"] if fixed.get("cnn") else 0.0
                results["speed"][picker] = {
                    "micrographs": args.speed_n,
                    "seconds_per_micrograph_given_diameter": round(t_given, 3),
                    "seconds_per_micrograph_with_search": round(t_search, 3),
                    "picking_only_median": fixed["seconds"]["per_micrograph_median"],
                    "cnn_training_seconds": train,
                }
                print(
                    f"speed {picker:4s} 4096² @ 0.83 Å/px: {t_given:.2f} s per micrograph (diameter given, incl. "
                    f"reading, writing and, for cnn, {train:.1f} s of training spread over {args.speed_n}), "
                    f"{t_search:.2f} s with the diameter search; picking alone median "
                    f"{fixed['seconds']['per_micrograph_median']:.2f} s",
                    flush=True,
                )
    for picker in pickers:
        rows = [r["pickers"][picker] for r in results["accuracy"]]
        f1 = [r["searched"]["f1"] for r in rows]
        junk = [r["searched"]["junk_share"] for r in rows]
        derr = [abs(r["diameter_error"]) for r in rows]
        print(
            f"targets ({picker}, diameter searched): F1 >= 0.90 (mean {np.mean(f1):.3f}, min {np.min(f1):.3f}); "
            f"picks on junk <= 2% (mean {100 * np.mean(junk):.1f}%, max {100 * np.max(junk):.1f}%); diameter within "
            f"15% (max error {100 * np.max(derr):.0f}%)"
        )
    f1 = [r["searched"]["f1"] for r in results["accuracy"]]
    if args.topaz:
        rows = results["accuracy"]
        print(
            f"topaz {args.topaz_model} (diameter given): mean F1 t=0 "
            f"{np.mean([r['topaz']['threshold_0']['f1'] for r in rows]):.3f}, best-threshold "
            f"{np.mean([r['topaz']['best']['f1'] for r in rows]):.3f}; {np.mean([r['topaz']['seconds_per_micrograph'] for r in rows]):.2f} "
            f"s/micrograph incl. preprocessing and start-up. cryoflow: mean F1 given "
            f"{np.mean([r['given']['f1'] for r in rows]):.3f}, searched {np.mean(f1):.3f}; "
            f"{np.mean([r['given']['seconds_per_micrograph'] for r in rows]):.2f} s/micrograph given, "
            f"{np.mean([r['searched']['seconds_per_micrograph'] for r in rows]):.2f} searched"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results
