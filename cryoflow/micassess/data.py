"""Labelled examples for micassess: simulated sessions (with truth) and user-labelled micrographs.

A simulated *session* is a small dataset as a facility collects it: one pixel size, dose,
detector, voltage and one or two particle species; per micrograph its own defocus,
astigmatism, ice thickness, particle density, junk and (about half the time) a defect.
Each micrograph goes through the public CTF estimator (:func:`cryoflow.ctf.estimate`, tilt
skipped: not a feature) and its outputs are turned into the STAR row the CTF step would
write, including the session-relative ice thickness, so training sees exactly what
prediction reads from ``micrographs_ctf.star``.

An :class:`Example` keeps what the models need (tabular features, CNN image, spectrum,
fine reason), not the micrograph; sets are cached as ``.pt`` files (weights-only loadable).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoflow.micassess.features import (
    DENSITY_FEATURES,
    FEATURES,
    FINE,
    FULLRES_FEATURES,
    GROUP,
    IMAGE_FEATURES,
    SET_FEATURES,
    add_set_features,
    density_statistics,
    feature_vector,
    inputs_from_image,
    spectrum_anisotropy,
    tabular_ctf,
)

DEFECTS = tuple(r for r in FINE if r != "good")


@dataclass
class Ranges:
    """Parameter ranges of simulated sessions (units in the names)."""

    shape: tuple[int, int] = (512, 512)
    pixel_size: tuple[float, float] = (0.8, 2.0)  # Å
    defocus_um: tuple[float, float] = (0.5, 3.5)
    astigmatism_A: tuple[float, float] = (0.0, 800.0)  # good micrographs
    dose: tuple[float, float] = (20.0, 70.0)  # e/Å²
    ice_nm: tuple[float, float] = (15.0, 85.0)  # good ice
    diameter_A: tuple[float, float] = (80.0, 300.0)  # procedural species
    density: tuple[float, float] = (0.08, 0.45)  # particle area / field area
    b_factor: tuple[float, float] = (30.0, 130.0)
    good_fraction: float = 0.45
    per_session: int = 12
    species_seed_offset: int = 0
    balanced: bool = False  # True: each session cycles through the defects (benchmarks)


# the training's second set of sessions: binned data up to 4.2 Å/px (3.7 Å ice ring beyond
# Nyquist, CTF fitted to lower resolution), so such micrographs are not extrapolated
WIDE = Ranges(pixel_size=(1.8, 4.2))
WIDE_TAG = "wide"  # its cache files and session names carry this tag (another seed, other ranges)


@dataclass
class Example:
    """One labelled micrograph, ready for the models."""

    name: str
    reason: str  # fine reason (FINE) or a group reason (REASONS) for user labels
    features: np.ndarray  # (len(FEATURES),)
    cnn: np.ndarray  # (2, h, w) float16 at CNN_PIXEL_SIZE
    spectrum: np.ndarray  # (2, K)
    row: dict = field(default_factory=dict)  # the STAR-like row (CTF columns)


def _session_plan(session: int, seed: int, ranges: Ranges) -> dict:
    rng = np.random.default_rng([seed, 7, session])
    detectors = ["falcon4", "k3", "counting"]
    return {
        "pixel_size": round(float(rng.uniform(*ranges.pixel_size)), 3),
        "dose": float(rng.uniform(*ranges.dose)),
        "detector": detectors[int(rng.integers(len(detectors)))],
        "voltage": 300.0 if rng.random() < 0.8 else 200.0,
        "n_species": 1 + int(rng.random() < 0.35),
        "reference": bool(rng.random() < 0.35),
        "diameters": [float(rng.uniform(*ranges.diameter_A)) for _ in range(2)],
        "shapes": [str(rng.choice(["globular", "elongated", "ring", "multimer"])) for _ in range(2)],
        "species_seed": int(rng.integers(0, 10**6)) + ranges.species_seed_offset,
        "density": float(rng.uniform(*ranges.density)),
        "ice_contrast": float(rng.uniform(0.8, 1.2)),
        "junk": float(rng.uniform(0.0, 0.15)),
    }


def _species(plan: dict):
    from cryoflow.simulate.structures import procedural_species, reference_species

    apix = plan["pixel_size"]
    out = []
    if plan["reference"]:
        out.append(reference_species(apix))
    while len(out) < plan["n_species"]:
        i = len(out)
        out.append(
            procedural_species(plan["diameters"][i], apix, seed=plan["species_seed"] + i, shape=plan["shapes"][i])
        )
    return out


def simulate_session(session: int, seed: int, ranges: Ranges, reasons: list[str] | None = None) -> list[Example]:
    """Simulate one session, estimate its CTF and return its examples (see the module doc).

    ``reasons``: the fine reason of each micrograph (default: drawn, ``good_fraction`` good).
    """
    from cryoflow.ctf import Optics, Settings, estimate
    from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph

    plan = _session_plan(session, seed, ranges)
    rng = np.random.default_rng([seed, 8, session])
    species = _species(plan)
    apix = plan["pixel_size"]
    h, w = ranges.shape
    mean_d = float(np.mean([s.diameter for s in species]))
    n = ranges.per_session if reasons is None else len(reasons)
    if reasons is None and ranges.balanced:
        n_good = round(ranges.good_fraction * n)
        reasons = ["good"] * n_good + [DEFECTS[(session * (n - n_good) + j) % len(DEFECTS)] for j in range(n - n_good)]
    elif reasons is None:
        reasons = ["good" if rng.random() < ranges.good_fraction else str(rng.choice(DEFECTS)) for _ in range(n)]
    optics = Optics(plan["voltage"], 2.7, 0.07)
    settings = Settings(tilt=False)
    rows, inputs, truths, names = [], [], [], []
    for i, reason in enumerate(reasons):
        defocus = float(rng.uniform(*ranges.defocus_um)) * 1e4
        astig = float(rng.uniform(*ranges.astigmatism_A))
        density = plan["density"] * float(rng.uniform(0.7, 1.3))
        n_particles = max(3, int(density * h * w * apix**2 / (math.pi * (mean_d / 2) ** 2)))
        spec = MicrographSpec(
            shape=(h, w),
            pixel_size=apix,
            voltage=plan["voltage"],
            amplitude_contrast=0.07,
            defocus_u=defocus + astig / 2,
            defocus_v=defocus - astig / 2,
            defocus_angle=float(rng.uniform(0, 180)),
            b_factor=float(rng.uniform(*ranges.b_factor)),
            dose=plan["dose"] * float(rng.uniform(0.95, 1.05)),
            ice_thickness=float(rng.uniform(*ranges.ice_nm)),
            detector=plan["detector"],
            n_particles=n_particles,
            junk_fraction=plan["junk"],
            defect=None if reason == "good" else reason,
            # thick ice from just above the label's 100 nm, as grid squares near the bars give
            defect_params={"thickness_nm": (100.0, 220.0)} if reason == "thick_ice" else None,
            ice_contrast=plan["ice_contrast"],
            thickness_variation=float(rng.uniform(0.01, 0.06)),
            seed=int(rng.integers(0, 2**31 - 1)),
        )
        sim = simulate_micrograph(spec, species)
        image = torch.from_numpy(sim.image)
        result = estimate(image, apix, optics, settings)
        row = {
            "rlnMicrographName": f"session{session:04d}_{i:03d}",
            "cryoflowMeanIntensity": result.metrics.get("mean_intensity"),
        }
        from cryoflow.ctf.run import COLUMNS

        for metric, column in COLUMNS.items():
            if metric in result.metrics:
                row[column] = result.metrics[metric]
        if result.ok:
            row.update(rlnDefocusU=result.fit.defocus_u, rlnDefocusV=result.fit.defocus_v)
        row["_fitted"] = bool(result.ok)
        row["_voltage"] = plan["voltage"]  # as run.py reads it from the optics (relative ice thickness)
        rows.append(row)
        inputs.append(inputs_from_image(sim.image, apix))
        truths.append(sim.truth["reason"])
        names.append(row["rlnMicrographName"])
    add_relative_thickness(rows)
    x = add_set_features(
        np.stack(
            [
                feature_vector(tabular_ctf(row, apix, row["_fitted"]), inp["stats"])
                for row, inp in zip(rows, inputs, strict=True)
            ]
        )
    )
    return [
        Example(name, truth, features, inp["cnn"], inp["spectrum"], row)
        for row, inp, truth, name, features in zip(rows, inputs, truths, names, x, strict=True)
    ]


def add_relative_thickness(rows: list[dict]) -> None:
    """cryoflowRelativeIceThickness as the CTF step writes it: ln(I95 / I), I95 the 95th
    percentile of the mean intensity over the fitted micrographs of the set."""
    values = np.array([r.get("cryoflowMeanIntensity", math.nan) for r in rows if r["_fitted"]], dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return
    ref = float(np.percentile(values, 95))
    for r in rows:
        i = r.get("cryoflowMeanIntensity", math.nan)
        r["cryoflowRelativeIceThickness"] = math.log(ref / i) if i and i > 0 else math.nan


def acquisition_key(row: dict) -> tuple[float, float]:
    """Which micrographs' mean intensities are comparable: those of one acquisition setting
    (pixel size to 0.01 Å, voltage), i.e. one detector, binning and dose rate."""
    apix = row.get("_apix", math.nan)
    try:
        volt = float(row.get("_voltage", math.nan))
    except (TypeError, ValueError):
        volt = math.nan
    return (round(float(apix), 2) if math.isfinite(apix) else math.nan, volt)


def relative_thickness_per_setting(rows: list[dict]) -> bool:
    """Recompute cryoflowRelativeIceThickness per acquisition setting (:func:`acquisition_key`)
    when ``rows`` hold more than one; returns whether it did.

    The CTF step's value is ln(I95 / I) over its whole input; when that input mixes detectors
    or binnings (e.g. a Falcon and a K3 set, or binned and unbinned images), the intensities
    are in different units and a whole set reads as thick ice. Within one setting it is
    :func:`add_relative_thickness` over that setting's micrographs: a setting with a single
    fitted micrograph gets 0, one with none NaN (no evidence either way)."""
    keys = [acquisition_key(r) for r in rows]
    if len(set(keys)) <= 1:
        return False
    for key in set(keys):
        members = [r for r, k in zip(rows, keys, strict=True) if k == key]
        for r in members:  # the mixed set's value compares intensities in other units
            r["cryoflowRelativeIceThickness"] = math.nan
        add_relative_thickness(members)
    return True


def _one(job):
    session, seed, ranges = job
    torch.set_num_threads(1)
    return simulate_session(session, seed, ranges)


def simulate_examples(
    n_sessions: int,
    seed: int,
    ranges: Ranges | None = None,
    workers: int | None = None,
    cache: str | os.PathLike | None = None,
    tag: str = "",
) -> list[Example]:
    """``n_sessions`` simulated sessions (see :func:`simulate_session`), in ``workers``
    processes; with ``cache`` (a folder) each session is saved and re-used when present
    (``session_{tag}{seed}_{s}.pt``: the cache is keyed on seed and tag, not on ranges). With
    a ``tag`` the examples' names start with it (``{tag}session0003_001``), so sets of other
    seeds or ranges never share a session name (the validation split is by session)."""
    ranges = ranges or Ranges()
    workers = workers or min(2, os.cpu_count() or 1)
    cache = Path(cache) if cache else None
    todo, done = [], {}
    for s in range(n_sessions):
        path = cache / f"session_{tag}{seed}_{s}.pt" if cache else None
        if path is not None and path.exists():
            done[s] = load_examples(path)
        else:
            todo.append(s)
    from cryoflow.progress import progress

    jobs = [(s, seed, ranges) for s in todo]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            results = progress(pool.imap(_one, jobs), desc="simulate", total=len(jobs), unit="session")
            for s, examples in zip(todo, results, strict=True):
                done[s] = examples
                if cache:
                    save_examples(cache / f"session_{tag}{seed}_{s}.pt", examples)
    else:
        for job in progress(jobs, desc="simulate", unit="session"):
            examples = simulate_session(*job)
            done[job[0]] = examples
            if cache:
                save_examples(cache / f"session_{tag}{seed}_{job[0]}.pt", examples)
    out = [e for s in range(n_sessions) for e in done[s]]
    if tag:
        for e in out:
            if not e.name.startswith(tag):
                e.name = tag + e.name
    return out


def save_examples(path: str | os.PathLike, examples: list[Example]) -> None:
    """Save examples (tensors, strings and numbers only: ``torch.load(weights_only=True)``)."""
    from cryoflow.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [
        {
            "name": e.name,
            "reason": e.reason,
            "features": torch.from_numpy(e.features),
            "feature_names": list(FEATURES),
            "cnn": torch.from_numpy(e.cnn),
            "spectrum": torch.from_numpy(e.spectrum),
        }
        for e in examples
    ]
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# the feature list of the first cached sets (files without feature names)
FIRST_FEATURES = (
    "ctf_fitted figure_of_merit log_fit_resolution fit_resolution_nyquist ice_ring ice_ring_missing "
    "ice_crystallinity log_envelope_b thon_anisotropy astigmatism_kA astigmatism_relative defocus_um dark_fraction "
    "bright_fraction relative_ice_thickness pixel_size contrast_lowpass contrast_tiles log_particle_band log_ice_band "
    "skew_lowpass empty_noise"
).split()


def load_examples(path: str | os.PathLike) -> list[Example]:
    """Examples saved by :func:`save_examples`; features re-ordered to :data:`FEATURES` by name
    (files without names hold :data:`FIRST_FEATURES`); :data:`DENSITY_FEATURES` missing from
    an older file are computed from its stored CNN image, and so are :data:`IMAGE_FEATURES`;
    :data:`SET_FEATURES` missing are computed over the file (one session);
    :data:`FULLRES_FEATURES` missing are NaN (no evidence: re-simulate the set to have them, and
    the 300 kV scaling of ``relative_ice_thickness`` that files of 200 kV sessions made before it
    lack); an older file's ice-ring features
    imputed when unmeasurable (flag ``ice_ring_missing``) become NaN, as
    :func:`~cryoflow.micassess.features.tabular_ctf` now writes them."""
    data = torch.load(path, weights_only=True)
    out = []
    for d in data:
        names = d.get("feature_names") or FIRST_FEATURES
        values = dict(zip(names, d["features"].numpy().tolist(), strict=True))
        if any(n not in values for n in DENSITY_FEATURES):
            values.update(density_statistics(d["cnn"].numpy()))
        if any(n not in values for n in IMAGE_FEATURES):
            values.update(spectrum_anisotropy(d["cnn"].numpy()))
        for n in FULLRES_FEATURES:  # not computable without the full-resolution image: no evidence
            values.setdefault(n, math.nan)
        if values.pop("ice_ring_missing", 0.0) > 0.5:  # older files: unmeasured ice ring imputed, with a flag
            values["ice_ring"] = values["ice_crystallinity"] = math.nan
        missing_set = any(n not in values for n in SET_FEATURES)
        features = np.array([values.get(n, math.nan) for n in FEATURES], dtype=np.float64)
        out.append(Example(d["name"], d["reason"], features, d["cnn"].numpy(), d["spectrum"].numpy()))
    if out and missing_set:  # a file holds one session: one acquisition setting
        for e, row in zip(out, add_set_features(np.stack([e.features for e in out])), strict=True):
            e.features = row
    return out


def group_of(reason: str) -> str:
    """The reported reason group of a fine (simulator) or user reason."""
    return GROUP.get(reason, reason)
