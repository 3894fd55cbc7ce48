"""``cryoflow particles score``: keep good particles with the trained classifier, no 2D needed.

Reads any particle STAR file with stacks (the extract step's ``particles.star`` of new
micrographs, or ``classassess``'s ``particles_selected.star``), scores every image with a
:class:`~cryoflow.particles.model.ParticleModel` and keeps those at or above the threshold.
With ``rescue`` (``classassess``'s ``particles_rejected.star``), the particles of rejected
classes are scored too and kept when the classifier is confident (score >=
``rescue_threshold``, default :data:`RESCUE_THRESHOLD`): the classifier overrules the class
both ways, dropping junk from good classes and taking back true particles from classes
rejected as a whole (on held-out simulated data: recall 0.89 -> 0.91 at the same
precision; in a dataset with good classes rejected, 0.64 -> 0.70). Writes into ``out``
(built in a temporary folder, renamed when complete):

- ``particles_clean.star``: the kept particles (input columns + ``cfParticleScore``), their
  images copied into ``CleanParticles/<stack>.mrcs`` (only the kept ones, so the stack is
  self-contained for RELION 3D or cryoSPARC); ``particles_clean.cs`` (cryoSPARC);
- ``particles_rejected.star``: the others (their original images, names rebased); with a
  pass-through model (``particles train`` had no kept or no rejected particles) every
  particle of ``particles`` is kept unscored and those of ``rescue`` stay rejected; an empty
  ``particles`` (no class kept) gives an empty clean stack, not an error, and a yield of 0;
- ``micrographs_yield.star``: per micrograph the picks, the good particles, their share
  and the mean score: the micrograph-level yield that acquisition feedback uses;
- ``summary.json``, ``report.html``.

Images are streamed stack by stack, so memory does not grow with the number of particles.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.particles.model import ParticleModel

#: folder of the clean stacks; not extract's ``Particles``, so that a STAR name
#: ``Particles/x.mrcs`` resolved by searching a run's sibling folders finds extract's stack
STACKS = "CleanParticles"
#: score a particle of a rejected class needs to be taken back (``rescue``)
RESCUE_THRESHOLD = 0.8


def micrograph_yield(table: pd.DataFrame, keep: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Per micrograph: cfPicks, cfGoodParticles, cfGoodFraction, cfMeanScore."""
    names = table["rlnMicrographName"].astype(str) if "rlnMicrographName" in table else pd.Series(["-"] * len(table))
    df = pd.DataFrame({"rlnMicrographName": names.to_numpy(), "keep": keep, "score": score})
    g = df.groupby("rlnMicrographName", sort=True)
    out = pd.DataFrame(
        {
            "cfPicks": g.size(),
            "cfGoodParticles": g["keep"].sum().astype(int),
            "cfGoodFraction": g["keep"].mean().round(4),
            "cfMeanScore": g["score"].mean().round(4),
        }
    ).reset_index()
    return out


def _micrograph_shapes(table: pd.DataFrame, star: Path) -> tuple[dict, str]:
    """``{name: (H, W)}`` from the micrograph headers when the files are found, else from the
    coordinates (the extent of the picks; said in the summary)."""
    from cryoflow.io import find_image, read_info

    shapes, estimated = {}, 0
    bases: list[Path] = []
    for name, rows in table.groupby(table["rlnMicrographName"].astype(str)):
        path = find_image(name, star, None, bases)
        if path.is_file():
            try:
                info = read_info(path)
                shapes[name] = tuple(int(v) for v in info.shape[-2:])
                continue
            except CryoflowError:
                pass
        estimated += 1
        shapes[name] = (int(np.ceil(rows["rlnCoordinateY"].max())) + 1, int(np.ceil(rows["rlnCoordinateX"].max())) + 1)
    note = "micrograph headers" if not estimated else f"estimated from the picks for {estimated} micrograph(s)"
    return shapes, note


def _score_set(ps, pm: ParticleModel, threshold: float, folder: Path, used: set, device, passed: bool = True) -> tuple:
    """Score the particle set ``ps``; the kept images go into ``folder/STACKS`` (one stack per
    input stack, names made unique in ``used``). Returns ``(score, keep, new_names, seconds)``.
    A pass-through model scores nothing (NaN): every particle is kept when ``passed``, none
    otherwise (then no image is read)."""
    from cryoflow.io import open_stack, write_mrc

    n = len(ps)
    score, keep = np.zeros(n), np.zeros(n, dtype=bool)
    new_names = np.array([""] * n, dtype=object)
    apix = ps.pixel_size * ps.box / (ps.stack_box or ps.box)
    seconds = 0.0
    if not pm.trained and not passed:
        return np.full(n, np.nan), keep, new_names, seconds
    for f, path in enumerate(ps.files):
        rows = np.flatnonzero(ps.file_index == f)
        slices = ps.slice_index[rows]
        order = np.argsort(slices, kind="stable")
        rows, slices = rows[order], slices[order]
        with open_stack(path, pixel_size=apix) as stack:
            images = stack[slices]
        t1 = time.perf_counter()
        s = pm.scores(images, device) if pm.trained else np.full(len(images), np.nan)
        seconds += time.perf_counter() - t1
        score[rows] = s
        k = s >= threshold if pm.trained else np.ones(len(images), dtype=bool)
        keep[rows] = k
        if k.any():
            name = path.stem
            while name in used:
                name += "_"
            used.add(name)
            write_mrc(folder / STACKS / f"{name}.mrcs", images[k], apix, stack=True)
            new_names[rows[k]] = [f"{i + 1:06d}@{STACKS}/{name}.mrcs" for i in range(int(k.sum()))]
    return score, keep, new_names, seconds


def score_particles(
    particles: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    threshold: float | None = None,
    device="cpu",
    images: str | os.PathLike | None = None,
    rescue: str | os.PathLike | None = None,
    rescue_threshold: float | None = None,
    log=print,
) -> dict:
    """Score ``particles`` (and ``rescue``) with ``model`` into ``out`` (see the module doc);
    returns the summary."""
    from cryoflow.classify2d.data import read_particles
    from cryoflow.io import StarTable, atomic_dir, read_table, rebase_image_names, write_blocks, write_table
    from cryoflow.picking.cryosparc import particles_cs, write_cs

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    pm = ParticleModel.load(model)
    if threshold is None:
        threshold = pm.threshold
    if rescue_threshold is None:
        rescue_threshold = RESCUE_THRESHOLD
    for name, value in (("--threshold", threshold), ("--rescue-threshold", rescue_threshold)):
        if not 0 <= value <= 1:
            raise CryoflowError(None, f"{name} must be within 0-1, got {value}")
    t0 = time.perf_counter()
    images = Path(images) if images else None
    # (set, threshold, kept when the model passes everything through, is the rescue set);
    # an empty STAR file (classassess kept no class) is skipped: the rescue set may still hold particles
    sets = []
    for path, thr, passed in ((particles, threshold, True), (rescue, rescue_threshold, False)):
        if path and len(read_table(Path(path), "particles").table):
            sets.append((read_particles(path, images), thr, passed, path == rescue))
    if not sets:
        raise CryoflowError(particles, "holds no particles" + (f" and neither does {rescue}" if rescue else ""))
    ps = sets[0][0]
    star = ps.table
    apix = ps.pixel_size * ps.box / (ps.stack_box or ps.box)
    with atomic_dir(out) as tmp:
        (tmp / STACKS).mkdir()
        used: set = set()
        parts, t_score = [], 0.0
        for one, thr, passed, _ in sets:
            score, keep, new_names, seconds = _score_set(one, pm, thr, tmp, used, device, passed)
            table = one.table.table.copy()
            table["rlnImageName"] = rebase_image_names(table["rlnImageName"], one.path, images, out)
            parts.append((table, score, keep, new_names))
            t_score += seconds
        table = pd.concat([p[0] for p in parts], ignore_index=True)
        score, keep, new_names = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
        from_rescue = [p[2] for p, one in zip(parts, sets, strict=True) if one[3]]
        rescued = int(sum(k.sum() for k in from_rescue)) if rescue and pm.trained else None
        n = len(table)
        table["cfParticleScore"] = score.round(4)
        clean = table.loc[keep].copy()
        clean["rlnImageName"] = new_names[keep]
        rejected = table.loc[~keep].copy()
        write_table(tmp / "particles_clean.star", StarTable(star.optics, clean.reset_index(drop=True), "particles"))
        write_table(
            tmp / "particles_rejected.star", StarTable(star.optics, rejected.reset_index(drop=True), "particles")
        )
        yields = micrograph_yield(table, keep, score)
        write_blocks(tmp / "micrographs_yield.star", {"micrographs": yields})
        shape_note = None
        if len(clean) and {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(clean.columns):
            optics = star.optics
            if "rlnMicrographOriginalPixelSize" not in optics:
                optics = optics.assign(rlnMicrographOriginalPixelSize=optics.get("rlnImagePixelSize", apix))
            if "rlnPhaseShift" not in clean:
                clean["rlnPhaseShift"] = 0.0
            shapes, shape_note = _micrograph_shapes(clean, ps.path)
            write_cs(tmp / "particles_clean.cs", particles_cs(clean.reset_index(drop=True), optics, shapes))
        seconds = time.perf_counter() - t0
        summary = {
            "particles_in": int(n),
            "particles_kept": int(keep.sum()),
            "threshold": float(threshold),
            "rescue": str(rescue) if rescue else None,
            "rescue_threshold": float(rescue_threshold) if rescue else None,
            "rescued": rescued,
            "model": str(model),
            "model_figures": pm.meta,
            "model_trained": pm.trained,
            "passed_through": None
            if pm.trained
            else f"nothing scored ({pm.meta.get('reason')}): the particles of the kept classes are kept, "
            "those of rejected classes stay rejected",
            "micrographs": int(len(yields)),
            "median_good_per_micrograph": float(yields["cfGoodParticles"].median()) if len(yields) else 0.0,
            "micrograph_sizes_for_cryosparc": shape_note,
            "stage": {"micrographs": int((yields["cfGoodParticles"] > 0).sum()), "particles": int(keep.sum())},
            "scoring_seconds": t_score,
            "particles_per_second": float(n / t_score) if t_score > 0 else None,
            "seconds": seconds,
        }
        from cryoflow.particles.report import write_score_report

        starts = np.cumsum([0] + [len(one) for one, *_ in sets])

        def read(rows: np.ndarray) -> np.ndarray:  # rows of the joined table, in order
            which = np.searchsorted(starts, rows, side="right") - 1
            return np.concatenate([sets[w][0].read(rows[which == w] - starts[w]) for w in np.unique(which)])

        write_score_report(tmp, table, keep, score, threshold, yields, read, summary)
    taken = f", {rescued} of them taken back from rejected classes" if rescued is not None else ""
    log(f"particles score: kept {int(keep.sum())} of {n} particles (threshold {threshold:.2f}{taken}) -> {out}")
    return summary
