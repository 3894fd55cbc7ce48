"""``cryoflow classassess``: score the 2D classes, keep the good ones, optionally reclassify.

:func:`run_classassess` reads the classes (:func:`~cryoflow.classassess.inputs.read_classes`:
a classify2d folder, a RELION Class2D job or a bare stack), computes their features,
scores them with the shipped :class:`~cryoflow.classassess.model.ClassScorer` (or
``--model``), decides (:func:`~cryoflow.classassess.select.select`) and writes into ``out``
(built in a temporary folder, renamed when complete):

- ``classes_selected.star`` (``data_classes``): one row per class: rlnReferenceImage,
  rlnClassNumber, rlnClassScore (calibrated probability that the class is good),
  cfSelected (1/0), cfDecision (kept, rejected, kept (floor), kept (user), rejected
  (user)), cfEvidence (the features that pushed the score down most, for rejections;
  up most, for kept classes: ``feature:+log-odds`` pairs, ``cnn`` for the CNN), the particle count and every feature;
- ``classes_selected.mrcs``: the kept averages (templates for ``cryoflow pick --templates``);
- ``particles_selected.star`` / ``particles_rejected.star``: the particles of kept / rejected
  classes (the input rows, same optics, plus rlnClassScore of their class), the labels the
  particle classifier (``cryoflow particles train``) learns from;
- ``summary.json``, ``report.html``.

Rounds (``rounds > 1``, needs the particles and their images): the kept particles are
classified again by ``classify2d`` (in ``rounds/round_N/``) and assessed again, as users
clean a stack in several passes; junk that hid in good classes of the first pass gathers
in classes of its own. The outputs describe the last round; the particles rejected in any
round are in ``particles_rejected.star``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.classassess.features import EXPLAIN, class_features
from cryoflow.classassess.inputs import ClassSet, read_classes
from cryoflow.classassess.model import ClassScorer
from cryoflow.classassess.select import Selection, parse_ids, select
from cryoflow.errors import CryoflowError


def assess(cs: ClassSet, scorer: ClassScorer, device="cpu", **choice) -> tuple[dict, Selection, np.ndarray]:
    """Score and select one set of classes: ``(scores, selection, features)``."""
    feats, images, radius = class_features(cs)
    scores = scorer.score(feats, images, radius, device)
    counts = cs.table["count"].to_numpy(float)
    selection = select(scores["p_good"], counts, **choice)
    scores["radius"] = radius
    scores["images"] = images
    return scores, selection, feats


def evidence(scores: dict, keep: np.ndarray, n: int = 3) -> list[list[tuple[str, float]]]:
    """Per class, the (feature, log-odds push) pairs that pushed its score most towards its
    decision; ``cnn`` stands for the CNN's view of the average."""
    contrib = np.concatenate([scores["contributions"], scores["cnn_contribution"][:, None]], 1)
    names = list(scores["features"]) + ["cnn"]
    out = []
    for i in range(len(keep)):
        c = contrib[i] if keep[i] else -contrib[i]
        top = np.argsort(-c)[:n]
        out.append([(names[j], float(contrib[i, j])) for j in top if c[j] > 0])
    return out


def evidence_text(pairs: list[tuple[str, float]], prose: bool = False) -> str:
    """``contrast:+2.6,cnn:+1.6`` (STAR: no spaces, no quotes) or the report's sentence."""
    if not pairs:
        return "-"
    if not prose:
        return ",".join(f"{name}:{value:+.1f}" for name, value in pairs)
    explain = {**EXPLAIN, "cnn": "the CNN's view of the average"}
    return "; ".join(f"{explain[name]} ({value:+.1f})" for name, value in pairs)


def _rebased(table: pd.DataFrame, star: Path, images: Path | None, folder: Path) -> pd.DataFrame:
    """The table with rlnImageName resolvable from a STAR file written into ``folder``."""
    from cryoflow.io import rebase_image_names

    if "rlnImageName" not in table:
        return table
    return table.assign(rlnImageName=rebase_image_names(table["rlnImageName"], star, images, folder))


def _reclassify(cs: ClassSet, keep_rows: np.ndarray, folder: Path, seed: int, device) -> ClassSet:
    from cryoflow.classify2d.run import Settings, run_classify2d
    from cryoflow.io import StarTable, write_table

    folder.mkdir(parents=True)
    table = cs.particles.table.loc[keep_rows]
    keep_cols = [
        c for c in table.columns if c not in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")
    ]
    table = table[keep_cols].reset_index(drop=True)
    star = folder / "particles.star"
    write_table(star, StarTable(cs.particles.optics, table, "particles"))
    run_classify2d(star, folder / "classify2d", Settings(seed=seed), device=device, log=lambda *a, **k: None)
    return read_classes(folder / "classify2d")


def _class_rows(cs: ClassSet, scores: dict, sel: Selection, feats: np.ndarray, ev: list) -> pd.DataFrame:
    from cryoflow.classassess.features import FEATURES

    rows = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{k:06d}@classes_all.mrcs" for k in cs.table["class"]],
            "rlnClassNumber": cs.table["class"].to_numpy(int),
            "rlnClassScore": np.round(scores["p_good"], 4),
            "cfSelected": sel.keep.astype(int),
            "cfDecision": sel.decision,
            "cfEvidence": [evidence_text(e) for e in ev],
            "cfParticleCount": cs.table["count"].to_numpy(float),
        }
    )
    for j, name in enumerate(FEATURES):
        rows[f"cf_{name}"] = np.round(feats[:, j], 4)
    return rows


def run_classassess(
    classes: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    min_score: float | None = None,
    keep: str | None = None,
    reject: str | None = None,
    rounds: int = 1,
    images: str | os.PathLike | None = None,
    min_classes: int = 1,
    min_particles: float = 0.05,
    device="cpu",
    seed: int = 0,
    log=print,
) -> dict:
    """Assess ``classes`` into ``out`` (see the module doc); returns the summary."""
    from cryoflow.io import StarTable, atomic_dir, write_blocks, write_mrc, write_table

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    if rounds < 1:
        raise CryoflowError(None, f"--rounds must be at least 1, got {rounds}")
    if not 0 <= min_particles <= 1:
        raise CryoflowError(None, f"--min-particles must be a fraction within 0-1, got {min_particles}")
    t0 = time.perf_counter()
    cs = read_classes(classes)
    scorer = ClassScorer.load(model)
    keep_ids, reject_ids = parse_ids(keep, len(cs), "--keep"), parse_ids(reject, len(cs), "--reject")
    if rounds > 1 and cs.particles is None:
        raise CryoflowError(
            cs.path, "--rounds > 1 needs the classes' particles (a classify2d or RELION Class2D folder)"
        )
    images = Path(images) if images else None
    if cs.particles is not None and cs.particles.path is not None:
        cs.particles.table = _rebased(cs.particles.table, cs.particles.path, images, out)
    history = []
    rejected_parts = []
    with atomic_dir(out) as tmp:
        for r in range(1, rounds + 1):
            t_round = time.perf_counter()
            choice = {"min_score": min_score, "min_classes": min_classes, "min_particles": min_particles}
            if r == 1:
                choice.update(keep=keep_ids, reject=reject_ids)
            scores, sel, feats = assess(cs, scorer, device, **choice)
            counts = cs.table["count"].to_numpy(float)
            history.append(
                {
                    "round": r,
                    "classes": len(cs),
                    "kept_classes": int(sel.keep.sum()),
                    "particles": float(np.nansum(counts)) if np.isfinite(counts).any() else None,
                    "kept_particles": float(np.nansum(counts[sel.keep])) if np.isfinite(counts).any() else None,
                    "threshold": sel.threshold,
                    "seconds": time.perf_counter() - t_round,
                    "scores": scores["p_good"].round(4).tolist(),
                    "keep": sel.keep.astype(int).tolist(),
                }
            )
            log(
                f"classassess: round {r}: kept {int(sel.keep.sum())} of {len(cs)} classes "
                f"(threshold {sel.threshold:.3f}, {sel.threshold_source})"
            )
            part_rows = None
            if cs.particles is not None:
                klass = cs.particles.table["rlnClassNumber"].to_numpy(int)
                part_rows = sel.keep[klass - 1]
                if r < rounds:
                    rejected_parts.append(
                        cs.particles.table.loc[~part_rows].assign(rlnClassScore=scores["p_good"][klass[~part_rows] - 1])
                    )
                    if part_rows.sum() < 2:
                        break
                    cs = _reclassify(cs, part_rows, tmp / "rounds" / f"round_{r + 1}", seed + r, device)
                    cs.particles.table = _rebased(cs.particles.table, cs.particles.path, images, out)
                    continue
            break
        ev = evidence(scores, sel.keep)
        rows = _class_rows(cs, scores, sel, feats, ev)
        write_blocks(tmp / "classes_selected.star", {"classes": rows})
        write_mrc(tmp / "classes_all.mrcs", cs.images, cs.pixel_size, stack=True)
        if sel.keep.any():
            write_mrc(tmp / "classes_selected.mrcs", cs.images[sel.keep], cs.pixel_size, stack=True)
        if cs.particles is not None:
            table = cs.particles.table
            klass = table["rlnClassNumber"].to_numpy(int)
            score = np.round(scores["p_good"][klass - 1], 4)
            kept = table.loc[part_rows].assign(rlnClassScore=score[part_rows])
            rejected = pd.concat(
                rejected_parts + [table.loc[~part_rows].assign(rlnClassScore=score[~part_rows])], ignore_index=True
            )
            write_table(
                tmp / "particles_selected.star",
                StarTable(cs.particles.optics, kept.reset_index(drop=True), "particles"),
            )
            write_table(tmp / "particles_rejected.star", StarTable(cs.particles.optics, rejected, "particles"))
            n_in = int(history[0]["particles"] or 0)
            n_kept = len(kept)
        else:
            n_in = n_kept = None
        summary = {
            "source": cs.source,
            "classes_path": str(Path(classes)),
            # the classes the outputs describe (the last round's), for 'classassess train --labels'
            "final_classes_path": str(cs.path.relative_to(tmp))
            if cs.path.is_relative_to(tmp)
            else str(cs.path.resolve()),
            "features_available": ["image"] + cs.available,
            "variant": scores["variant"],
            "rounds": len(history),
            "classes": len(cs),
            "kept_classes": int(sel.keep.sum()),
            "threshold": sel.threshold,
            "threshold_source": sel.threshold_source,
            "notes": sel.notes,
            "particles_in": n_in,
            "particles_kept": n_kept,
            "stage": {
                "micrographs": int(cs.particles.table.loc[part_rows, "rlnMicrographName"].nunique())
                if cs.particles is not None and "rlnMicrographName" in cs.particles.table
                else None,
                "particles": n_kept,
            },
            "model": scorer.meta,
            "history": history,
            "seconds": time.perf_counter() - t0,
        }
        from cryoflow.classassess.report import write_report

        write_report(tmp, cs, scores, sel, [evidence_text(e, prose=True) for e in ev], summary)
    return summary
