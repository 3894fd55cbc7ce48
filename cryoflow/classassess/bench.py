"""``cryoflow bench classassess``: class selection and the clean stack against the simulator's truth.

Held-out datasets (:data:`~cryoflow.classassess.examples.HELD_OUT`: other species seeds,
box 72, pixel size 2-3 Å, 30% junk of every kind) are simulated and classified by
``classify2d`` (cached in ``--cache``), then:

1. ``classassess`` with the shipped model (or ``--model``): class-level accuracy against the
   truth (a class is good when fewer than half of its particles are junk), over all classes
   and over classes of 20 particles or more; class-scoring time per 100 classes;
2. ``particles train`` on its kept/rejected particles, then ``particles score``: the AUC of
   the particle scores against the truth (true particle vs junk) on the micrographs the
   classifier never trained on; scoring speed (particles/s, network time);
3. the clean stack: precision (share of true particles) and recall (of the true particles
   that were picked) of (a) the particles of kept classes, (b) those that the particle
   classifier also keeps, plus the particles of rejected classes that it is confident about
   (``particles score --particles particles_selected.star --rejected particles_rejected.star``:
   the default path), (c) all picks the particle classifier keeps (no class selection: new data).

Targets (issue 9): class accuracy >= 0.95; clean stack precision >= 0.97 with recall >= 0.85;
particle AUC >= 0.95; class scoring < 1 s per 100 classes; particle scoring >= 2,000/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _truth_of(star: Path):
    from cryoflow.io import read_table

    t = read_table(star, "particles").table
    return t


def _pr(table, keep) -> tuple[float, float]:
    good = table["cfIsJunk"].to_numpy(int) == 0
    keep = np.asarray(keep, bool)
    precision = float((good & keep).sum() / max(keep.sum(), 1))
    recall = float((good & keep).sum() / max(good.sum(), 1))
    return precision, recall


def _scoring_seconds(cs, model, device) -> float:
    """Features + scores + decision of one set of classes, warm (imports and model loaded)."""
    from cryoflow.classassess.model import ClassScorer
    from cryoflow.classassess.run import assess

    scorer = ClassScorer.load(model)
    assess(cs, scorer, device)
    t0 = time.perf_counter()
    assess(cs, scorer, device)
    return time.perf_counter() - t0


def bench_dataset(folder: Path, work: Path, model: str | None, device: str, log) -> dict:
    """All figures of one held-out dataset (see the module doc)."""
    from sklearn.metrics import roc_auc_score

    from cryoflow.classassess.examples import class_truth, restore_images
    from cryoflow.classassess.inputs import read_classes
    from cryoflow.classassess.run import run_classassess
    from cryoflow.particles.model import ParticleModel
    from cryoflow.particles.score import score_particles
    from cryoflow.particles.train import train_particles

    restore_images(folder)
    c2d = folder / "classify2d"
    ca = work / "classassess"
    t0 = time.perf_counter()
    summary = run_classassess(c2d, ca, model=model, device=device, log=lambda *a: None)
    t_ca = time.perf_counter() - t0
    cs = read_classes(c2d)
    truth = class_truth(cs)
    keep = np.array(summary["history"][-1]["keep"], bool)
    good = truth["good"].to_numpy()
    big = truth["particles"].to_numpy() >= 20
    out = {
        "dataset": folder.name,
        "classes": len(cs),
        "class_accuracy": float((keep == good).mean()),
        "class_accuracy_20_or_more": float((keep[big] == good[big]).mean()),
        "class_seconds_per_100": _scoring_seconds(cs, model, device) / len(cs) * 100,
        "classassess_seconds": t_ca,
    }
    # the clean stack
    all_parts = _truth_of(c2d / "particles.star")
    sel_table = _truth_of(ca / "particles_selected.star")
    keep_rows = np.isin(all_parts["rlnClassNumber"].to_numpy(int), np.flatnonzero(keep) + 1)
    out["selected_precision"], out["selected_recall"] = _pr(all_parts, keep_rows)
    train_particles(
        ca / "particles_selected.star",
        ca / "particles_rejected.star",
        work / "pmodel",
        device=device,
        log=lambda *a: None,
    )
    pm = ParticleModel.load(work / "pmodel")
    s_sel = score_particles(
        ca / "particles_selected.star",
        work / "pmodel",
        work / "clean",
        device=device,
        rescue=ca / "particles_rejected.star",
        log=lambda *a: None,
    )
    clean = _truth_of(work / "clean" / "particles_clean.star")
    good_total = int((all_parts["cfIsJunk"].to_numpy(int) == 0).sum())
    good_clean = int((clean["cfIsJunk"].to_numpy(int) == 0).sum())
    out["clean_precision"] = float(good_clean / max(len(clean), 1))
    out["clean_recall"] = float(good_clean / max(good_total, 1))
    del sel_table
    s_all = score_particles(
        folder / "stack" / "particles.star", work / "pmodel", work / "all", device=device, log=lambda *a: None
    )
    scored = _truth_of(work / "all" / "particles_clean.star"), _truth_of(work / "all" / "particles_rejected.star")
    import pandas as pd

    every = pd.concat(scored, ignore_index=True)
    truth_good = every["cfIsJunk"].to_numpy(int) == 0
    score = every["cfParticleScore"].to_numpy(float)
    held = np.isin(every["rlnMicrographName"].astype(str), pm.meta.get("validation_micrograph_names", []))
    out["particle_auc_heldout"] = float(roc_auc_score(truth_good[held], score[held])) if held.any() else float("nan")
    out["particle_auc_all"] = float(roc_auc_score(truth_good, score))
    kept_all = score >= pm.threshold
    out["all_precision"], out["all_recall"] = _pr(every, kept_all)
    out["particles_per_second"] = s_all["particles_per_second"]
    out["particle_train_seconds"] = pm.meta.get("seconds")
    del s_sel
    log(
        f"{folder.name}: classes {out['classes']}, accuracy {out['class_accuracy']:.3f} "
        f"(>=20 particles {out['class_accuracy_20_or_more']:.3f}); selected P/R {out['selected_precision']:.3f}/"
        f"{out['selected_recall']:.3f}; clean P/R {out['clean_precision']:.3f}/{out['clean_recall']:.3f}; "
        f"classifier only P/R {out['all_precision']:.3f}/{out['all_recall']:.3f}; particle AUC held-out "
        f"{out['particle_auc_heldout']:.3f}; {out['particles_per_second']:.0f} particles/s"
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    from cryoflow.classassess.examples import HELD_OUT, collect

    ap = argparse.ArgumentParser(prog="cryoflow bench classassess", description=__doc__)
    ap.add_argument("--datasets", type=int, default=3, help="held-out datasets")
    ap.add_argument("--cache", metavar="DIR", help="keep the simulated classifications here between runs")
    ap.add_argument("--model", metavar="FILE", help="class scorer (default: the shipped one)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="bench_classassess_"))
    folders = collect(cache, args.datasets, HELD_OUT, first_seed=1000)
    rows = []
    for folder in folders:
        with tempfile.TemporaryDirectory(prefix="bench_ca_") as tmp:
            rows.append(bench_dataset(folder.parent, Path(tmp), args.model, args.device, print))
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    total_classes = sum(r["classes"] for r in rows)
    pooled = sum(r["class_accuracy"] * r["classes"] for r in rows) / total_classes
    print(f"\nmean over {len(rows)} held-out datasets ({total_classes} classes):")
    print(f"  class accuracy {pooled:.3f} (pooled; target >= 0.95)")
    print(
        f"  clean stack precision {mean['clean_precision']:.3f} (>= 0.97), recall {mean['clean_recall']:.3f} (>= 0.85)"
    )
    print(f"  particle classifier AUC on held-out micrographs {mean['particle_auc_heldout']:.3f} (>= 0.95)")
    print(f"  class scoring {mean['class_seconds_per_100']:.2f} s per 100 classes (< 1)")
    print(f"  particle scoring {mean['particles_per_second']:.0f} particles/s (>= 2000)")
    figures = {"datasets": rows, "mean": mean, "class_accuracy_pooled": pooled}
    print(json.dumps({"mean": mean}, indent=1))
    return figures
