"""Class averages in, from three sources: cryoflow classify2d, RELION Class2D, or a bare stack.

:func:`read_classes` takes a path and returns a :class:`ClassSet`:

- a cryoflow ``classify2d`` folder: ``classes.mrcs`` + ``model.star`` + ``particles.star``;
- a RELION Class2D job folder or one of its ``run_itNNN_model.star`` files: the last
  iteration's ``run_itNNN_model.star`` (``data_model_general``, ``data_model_classes``),
  ``run_itNNN_classes.mrcs`` and ``run_itNNN_data.star`` (the particles, with
  rlnClassNumber). RELION 3.0 names the translation accuracy ``rlnAccuracyTranslations``
  (pixels); it is converted to Å;
- an ``.mrcs`` stack of class averages with no metadata (image features only).

The per-class table always has the same columns (NaN where the source has no value):
``count`` (particles), ``distribution`` (fraction of the particles), ``resolution`` (Å,
the class's estimated resolution), ``accuracy_rotation`` (degrees),
``accuracy_translation`` (Å), ``max_probability`` (mean rlnMaxValueProbDistribution of its
particles), ``micrograph_spread`` (fraction of the dataset's micrographs that hold at
least one of its particles, over the fraction expected from its size: low for a class
fed by a few bad micrographs), ``log_likelihood`` (median over its particles of
rlnLogLikeliContribution, each standardized over the whole dataset: minus the dataset's
median, over its median absolute deviation; junk fits every class worse), ``shift`` (Å,
root-mean-square of its particles' rlnOriginX/YAngst: particles that had to be moved far
to match the average), ``low_probability`` (share of its particles whose best assignment
had rlnMaxValueProbDistribution < :data:`LOW_PROBABILITY`). ``available`` lists the metadata that was found, so the
report can say what the scores rest on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError

METADATA = (
    "count",
    "distribution",
    "resolution",
    "accuracy_rotation",
    "accuracy_translation",
    "max_probability",
    "micrograph_spread",
    "log_likelihood",
    "shift",
    "low_probability",
)
#: a particle whose best class assignment had less probability than this is "unsure"
LOW_PROBABILITY = 0.2
RELION_MODEL = re.compile(r"^(?P<prefix>.*_it(?P<it>\d+))_model\.star$")


@dataclass
class ClassSet:
    """Class averages and what is known about them.

    ``images``: ``(K, B, B)`` float32, in class order (class ``k + 1`` is ``images[k]``);
    ``pixel_size`` Å; ``table``: one row per class (``class`` 1-based + :data:`METADATA`);
    ``particles``: the particle STAR table (with rlnClassNumber) or ``None``;
    ``source``: ``"cryoflow"``, ``"relion"`` or ``"stack"``; ``path``: what was read;
    ``diameter``: the particle/mask diameter in Å when the source gives one.
    """

    images: np.ndarray
    pixel_size: float
    table: pd.DataFrame
    particles: object | None  # cryoflow.io.StarTable
    source: str
    path: Path
    diameter: float | None = None
    available: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _read_stack(path: Path) -> tuple[np.ndarray, float]:
    from cryoflow.io import open_stack

    if not path.is_file():
        raise CryoflowError(path, "class-average stack not found")
    with open_stack(path) as stack:
        images = stack[:]
        apix = stack.pixel_size
    if images.shape[-1] != images.shape[-2]:
        raise CryoflowError(path, f"class averages must be square, got {images.shape[-2]}x{images.shape[-1]}")
    return images.astype(np.float32), float(apix)


def _class_table(
    k: int, model: pd.DataFrame | None, particles: pd.DataFrame | None, path: Path, apix: float | None = None
) -> pd.DataFrame:
    """The per-class table (see the module doc) from a model_classes block and/or particles
    (``apix``: Å per pixel, for RELION 3.0 particle offsets given in pixels)."""
    t = pd.DataFrame({"class": np.arange(1, k + 1)})
    for name in METADATA:
        t[name] = np.nan
    if model is not None:
        if len(model) != k:
            raise CryoflowError(path, f"data_model_classes has {len(model)} rows but the stack has {k} classes")
        columns = {
            "rlnClassDistribution": "distribution",
            "rlnEstimatedResolution": "resolution",
            "rlnAccuracyRotations": "accuracy_rotation",
            "rlnAccuracyTranslationsAngst": "accuracy_translation",
            "cfParticleCount": "count",
        }
        for src, dst in columns.items():
            if src in model:
                t[dst] = pd.to_numeric(model[src], errors="coerce").to_numpy(float)
        # RELION reports 999 for classes it could not estimate
        t.loc[t["resolution"] >= 999, "resolution"] = np.nan
        t.loc[t["accuracy_rotation"] >= 999, "accuracy_rotation"] = np.nan
        t.loc[t["accuracy_translation"] >= 999, "accuracy_translation"] = np.nan
    if particles is not None:
        if "rlnClassNumber" not in particles:
            raise CryoflowError(path, "particle table has no rlnClassNumber column")
        klass = pd.to_numeric(particles["rlnClassNumber"], errors="coerce").to_numpy()
        bad = ~np.isfinite(klass) | (klass < 1) | (klass > k)
        if bad.any():
            raise CryoflowError(path, f"{int(bad.sum())} particles have an rlnClassNumber outside 1..{k}")
        klass = klass.astype(int)
        counts = np.bincount(klass, minlength=k + 1)[1:]
        t["count"] = counts.astype(float)
        t["distribution"] = counts / max(counts.sum(), 1)
        if "rlnMaxValueProbDistribution" in particles:
            p = pd.to_numeric(particles["rlnMaxValueProbDistribution"], errors="coerce").to_numpy(float)
            sums = np.bincount(klass, weights=np.nan_to_num(p), minlength=k + 1)[1:]
            t["max_probability"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            low = np.bincount(klass, weights=(p < LOW_PROBABILITY).astype(float), minlength=k + 1)[1:]
            t["low_probability"] = np.where(counts > 0, low / np.maximum(counts, 1), np.nan)
        if "rlnLogLikeliContribution" in particles:
            ll = pd.to_numeric(particles["rlnLogLikeliContribution"], errors="coerce").to_numpy(float)
            if np.isfinite(ll).sum() > 1:
                centre = np.nanmedian(ll)
                spread = np.nanmedian(np.abs(ll - centre))
                z = (ll - centre) / (spread if spread > 0 else 1.0)
                t["log_likelihood"] = _class_medians(klass, z, k)
        shift = _particle_shifts(particles, apix)
        if shift is not None:
            sq = np.bincount(klass, weights=np.nan_to_num(shift**2), minlength=k + 1)[1:]
            t["shift"] = np.where(counts > 0, np.sqrt(sq / np.maximum(counts, 1)), np.nan)
        if "rlnMicrographName" in particles:
            mics = particles["rlnMicrographName"].astype(str).to_numpy()
            n_mic = len(np.unique(mics))
            pairs = pd.DataFrame({"k": klass, "m": mics}).drop_duplicates()
            seen = np.bincount(pairs["k"].to_numpy(), minlength=k + 1)[1:]
            # micrographs a class of n particles would touch if its particles were spread at random
            expected = n_mic * (1 - (1 - 1 / max(n_mic, 1)) ** counts) if n_mic > 1 else np.ones(k)
            t["micrograph_spread"] = np.where(counts > 0, seen / np.maximum(expected, 1e-9), np.nan)
    return t


def _class_medians(klass: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Median of ``values`` per class 1..k (NaN for a class with no finite value)."""
    out = np.full(k, np.nan)
    ok = np.isfinite(values)
    order = np.lexsort((values[ok], klass[ok]))
    ks, vs = klass[ok][order], values[ok][order]
    starts = np.searchsorted(ks, np.arange(1, k + 1), "left")
    ends = np.searchsorted(ks, np.arange(1, k + 1), "right")
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if b > a:
            out[i] = np.median(vs[a:b])
    return out


def _particle_shifts(particles: pd.DataFrame, apix: float | None) -> np.ndarray | None:
    """Each particle's in-plane offset (Å) from RELION 3.1 (Å) or 3.0 (pixel) origins, or ``None``."""
    if "rlnOriginXAngst" in particles and "rlnOriginYAngst" in particles:
        x, y, scale = particles["rlnOriginXAngst"], particles["rlnOriginYAngst"], 1.0
    elif "rlnOriginX" in particles and "rlnOriginY" in particles and apix:
        x, y, scale = particles["rlnOriginX"], particles["rlnOriginY"], float(apix)
    else:
        return None
    x = pd.to_numeric(x, errors="coerce").to_numpy(float)
    y = pd.to_numeric(y, errors="coerce").to_numpy(float)
    return np.hypot(x, y) * scale


def _available(t: pd.DataFrame) -> list[str]:
    return [c for c in METADATA if t[c].notna().any()]


def _read_cryoflow(folder: Path) -> ClassSet:
    from cryoflow.io import read_blocks, read_table

    images, apix = _read_stack(folder / "classes.mrcs")
    blocks = read_blocks(folder / "model.star")
    model = blocks.get("model_classes")
    general = blocks.get("model_general")
    particles = read_table(folder / "particles.star", "particles") if (folder / "particles.star").is_file() else None
    t = _class_table(len(images), model, particles.table if particles is not None else None, folder, apix)
    diameter = None
    if general is not None and "rlnParticleDiameter" in general:
        diameter = float(general["rlnParticleDiameter"].iloc[0])
    return ClassSet(images, apix, t, particles, "cryoflow", folder, diameter, _available(t))


def _latest_relion_model(folder: Path) -> Path | None:
    found = []
    for p in folder.glob("*_it*_model.star"):
        m = RELION_MODEL.match(p.name)
        if m:
            found.append((int(m["it"]), p))
    return max(found)[1] if found else None


def _read_relion(model_path: Path) -> ClassSet:
    from cryoflow.io import read_blocks, read_table

    m = RELION_MODEL.match(model_path.name)
    prefix = model_path.parent / m["prefix"]
    blocks = read_blocks(model_path)
    if "model_classes" not in blocks:
        raise CryoflowError(model_path, "has no data_model_classes block; is this a RELION Class2D model.star?")
    images, apix = _read_stack(Path(f"{prefix}_classes.mrcs"))
    general = blocks.get("model_general")
    if general is not None and "rlnPixelSize" in general:
        apix = float(general["rlnPixelSize"].iloc[0])
    model = blocks["model_classes"].copy()
    if "rlnAccuracyTranslationsAngst" not in model and "rlnAccuracyTranslations" in model:
        model["rlnAccuracyTranslationsAngst"] = pd.to_numeric(model["rlnAccuracyTranslations"], errors="coerce") * apix
    data = Path(f"{prefix}_data.star")
    particles = read_table(data, "particles") if data.is_file() else None
    t = _class_table(len(images), model, particles.table if particles is not None else None, model_path, apix)
    diameter = None
    if general is not None and "rlnParticleDiameter" in general:
        diameter = float(general["rlnParticleDiameter"].iloc[0])
    return ClassSet(images, apix, t, particles, "relion", model_path, diameter, _available(t))


def read_classes(path: str | os.PathLike) -> ClassSet:
    """Read class averages and their metadata from any of the sources in the module doc."""
    path = Path(path)
    if not path.exists():
        raise CryoflowError(path, "not found")
    if path.is_dir():
        if (path / "classes.mrcs").is_file() and (path / "model.star").is_file():
            return _read_cryoflow(path)
        model = _latest_relion_model(path)
        if model is not None:
            return _read_relion(model)
        raise CryoflowError(
            path, "no classes found: expected classes.mrcs + model.star (cryoflow) or run_itNNN_model.star (RELION)"
        )
    if RELION_MODEL.match(path.name):
        return _read_relion(path)
    if path.suffix in (".mrcs", ".mrc"):
        images, apix = _read_stack(path)
        t = _class_table(len(images), None, None, path)
        return ClassSet(images, apix, t, None, "stack", path, None, [])
    raise CryoflowError(path, "expected a classify2d folder, a RELION run_itNNN_model.star or an .mrcs stack")
