"""Simulated datasets: a grid session of micrographs with complete ground truth.

:func:`simulate_dataset` turns a preset (:mod:`cryoflow.simulate.presets`) and a seed into
a folder laid out as EPU writes a session, plus the truth (:mod:`cryoflow.simulate.truth`)
and a report::

    DIR/
      GridSquare_<n>/GridSquare_<n>.mrc           low-magnification image of the square
      GridSquare_<n>/Data/FoilHole_<m>_Data_<k>.mrc   the micrographs (float32 counts)
      micrographs.star                             input of the next step (no truth)
      truth/micrographs_truth.star, truth/particles_truth.star, truth/squares_truth.star
      dataset.json                                 every parameter, the seed, the version
      report.html, figures/, summary.json          what the dataset holds
      realism/report.html                          (optional) beside real micrographs

How a micrograph's parameters are drawn: the grid plan (:func:`grid.plan_grid`) gives
each exposure its square, hole, stage position, ice thickness and the reason it is made
bad (or ``good``); then, from the exposure's own random stream (the dataset seed and its
index, so that micrograph ``i`` does not change when more are asked for), the mean
defocus (uniform in the preset's range), the astigmatism (uniform up to the preset's
limit, at a uniform angle), the B-factor and the number of particles. The micrograph
simulator (:func:`micrograph.simulate_micrograph`) applies the defect and reports the
truth that is written.

Everything is seeded: the same preset, overrides and seed give byte-identical files
(the report's page carries its creation time; everything else does not).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.io import write_mrc
from cryoflow.simulate import grid as _grid
from cryoflow.simulate import truth as _truth
from cryoflow.simulate.presets import Preset, SpeciesSpec, get_preset

THUMBNAIL = 256  # pixels of the thumbnails kept for the report
SQUARE_PIXEL_UM = 0.17  # µm per pixel of the low-magnification square images (at 512 px)


@dataclass
class SimulatedDataset:
    """What :func:`simulate_dataset` wrote.

    ``path``: the dataset folder. ``reasons``: number of micrographs per truth reason
    (``good`` first). ``files``: the main files (micrographs.star, truth files, report).
    """

    path: Path
    preset: str
    seed: int
    n_micrographs: int
    n_particles: int
    n_junk: int
    reasons: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)


# --- parameters -----------------------------------------------------------------------------
def resolve_preset(preset: str | Preset, n_micrographs: int | None = None, **overrides) -> Preset:
    """The preset with ``n_micrographs`` and any field overrides applied."""
    base = get_preset(preset) if isinstance(preset, str) else preset
    if n_micrographs is not None:
        overrides["n_micrographs"] = int(n_micrographs)
    if "shape" in overrides:
        overrides["shape"] = tuple(int(v) for v in overrides["shape"])
    try:
        resolved = base.replace(**overrides)
    except TypeError as exc:
        raise CryoflowError(None, f"unknown dataset parameter: {exc}") from None
    if resolved.n_micrographs < 1:
        raise CryoflowError(None, f"the number of micrographs must be at least 1, got {resolved.n_micrographs}")
    return resolved


def structure_species(paths: list[str | os.PathLike]) -> tuple[SpeciesSpec, ...]:
    """Species specs for user structures (PDB/mmCIF models or MRC maps), equal abundance."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise CryoflowError(path, "structure file not found")
        out.append(SpeciesSpec("file", weight=1.0, path=str(path)))
    return tuple(out)


def _is_map(path: Path) -> bool:
    return path.suffix.lower() in (".mrc", ".map", ".mrcs", ".ccp4") or path.name.lower().endswith(".map.gz")


@functools.lru_cache(maxsize=32)
def _make_species_cached(spec: SpeciesSpec, pixel_size: float):
    from cryoflow.simulate import structures

    if spec.kind == "reference":
        s = structures.reference_species(pixel_size)
    elif spec.kind == "procedural":
        s = structures.procedural_species(spec.diameter, pixel_size, seed=spec.seed, shape=spec.shape)
    elif spec.kind == "file":
        path = Path(spec.path or "")
        s = (
            structures.species_from_map(path, pixel_size)
            if _is_map(path)
            else structures.species_from_pdb(path, pixel_size)
        )
    else:
        raise CryoflowError(None, f"unknown species kind {spec.kind!r} (reference, procedural or file)")
    if spec.name and spec.name != s.name:
        s = dataclasses.replace(s, name=spec.name)
    return s


def make_species(specs: tuple[SpeciesSpec, ...], pixel_size: float, device: str = "cpu") -> list:
    """Build (and cache per process) the :class:`structures.Species` of ``specs`` at ``pixel_size`` Å.

    Names are made unique (``name``, ``name_2`` ...) so the truth tells species apart.
    """
    out, seen = [], Counter()
    for spec in specs:
        s = _make_species_cached(spec, round(float(pixel_size), 6))
        seen[s.name] += 1
        if seen[s.name] > 1:
            s = dataclasses.replace(s, name=f"{s.name}_{seen[s.name]}")
        if device != "cpu":
            s = s.to(device)
        out.append(s)
    return out


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CryoflowError(None, "--device cuda asked for but no CUDA device is available")
    return device


def plan_dataset(preset: Preset, seed: int) -> _grid.GridPlan:
    """The grid plan (squares, holes, exposures with their reasons) of a dataset."""
    fov_um = preset.shape[1] * preset.pixel_size * 1e-4
    return _grid.plan_grid(
        preset.n_micrographs,
        preset.squares,
        np.random.default_rng([int(seed), 0]),
        shots_per_hole=preset.shots_per_hole,
        hole_diameter=preset.hole_diameter,
        hole_pitch=preset.hole_pitch,
        thick_ice_threshold=preset.thick_ice_threshold,
        field_of_view=fov_um,
    )


def micrograph_spec(preset: Preset, shot: _grid.Shot, seed: int):
    """The :class:`micrograph.MicrographSpec` of one exposure (drawn from its own stream)."""
    from cryoflow.simulate.micrograph import MicrographSpec

    rng = np.random.default_rng([int(seed), 1, shot.index])
    mean = rng.uniform(*preset.defocus)
    astig = rng.uniform(0.0, preset.astigmatism)
    angle = rng.uniform(0.0, 180.0)
    lo, hi = preset.particles
    return MicrographSpec(
        shape=tuple(preset.shape),
        pixel_size=preset.pixel_size,
        voltage=preset.voltage,
        cs=preset.cs,
        amplitude_contrast=preset.amplitude_contrast,
        defocus_u=round(mean + astig / 2, 2),
        defocus_v=round(mean - astig / 2, 2),
        defocus_angle=round(angle, 2),
        phase_shift=preset.phase_shift or 0.0,
        b_factor=round(rng.uniform(*preset.b_factor), 2),
        dose=preset.dose,
        ice_thickness=shot.ice_thickness,
        detector=preset.detector,
        n_particles=int(rng.integers(lo, hi + 1)),
        species_weights=tuple(float(s.weight) for s in preset.species),
        junk_fraction=preset.junk_fraction,
        defect=None if shot.reason == "good" else shot.reason,
        seed=int(rng.integers(0, 2**31 - 1)),
    )


# --- the dataset ----------------------------------------------------------------------------
def simulate_dataset(
    out_dir: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    n_micrographs: int | None = None,
    structures: list[str | os.PathLike] | None = None,
    device: str = "auto",
    report: bool = True,
    realism_report: bool = False,
    real_micrographs: str | os.PathLike | None = None,
    workers: int | None = None,
    **overrides,
) -> SimulatedDataset:
    """Simulate a dataset into ``out_dir`` (which must not exist or be empty).

    Parameters
    ----------
    out_dir: the dataset folder; built in a hidden temporary folder beside it and renamed
        when complete, so it is never half-written. An existing non-empty folder is a
        :class:`CryoflowError` (nothing is overwritten).
    preset: ``"tiny"``, ``"demo"``, ``"realistic"`` or a :class:`Preset`.
    seed: the random seed; the same arguments give byte-identical micrographs and truth.
    n_micrographs: overrides the preset's number of micrographs.
    structures: PDB/mmCIF models or MRC maps replacing the preset's species (equal weights).
    device: ``auto``, ``cpu`` or ``cuda``.
    report: write ``report.html`` + ``summary.json`` describing the dataset.
    realism_report: also write ``realism/report.html`` (see :mod:`cryoflow.simulate.realism`).
    real_micrographs: folder of real micrographs for the realism report.
    workers: CPU processes simulating micrographs in parallel (default: the cores, for
        datasets big enough; the output does not depend on it).
    overrides: any other :class:`Preset` field, e.g. ``shape=(512, 512)``, ``squares=("good", "bad")``.
    """
    from cryoflow.io import atomic_dir

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "already exists and is not empty; give a new folder (simulate never overwrites data)")
    if structures:
        overrides["species"] = structure_species(structures)
    params = resolve_preset(preset, n_micrographs, **overrides)
    device = resolve_device(device)
    try:
        with atomic_dir(out) as tmp:
            result = write_dataset(tmp, params, seed, device=device, report=report, workers=workers)
            if realism_report:
                from cryoflow.simulate.realism import write_realism_report

                # the user's structures if given, else species sized like the real samples'
                species = params.species if structures else None
                write_realism_report(tmp / "realism", real_micrographs, seed=seed, device=device, species=species)
    except FileExistsError:
        raise CryoflowError(
            out, "already exists and is not empty; give a new folder (simulate never overwrites data)"
        ) from None
    result.path = out
    result.files = {k: out / v.relative_to(tmp) for k, v in result.files.items()}
    return result


PARALLEL_MIN_PIXELS = 16 * 1024 * 1024  # a dataset this big (pixels in all) repays worker start-up


def _n_workers(workers: int | None, preset: Preset, device: str) -> int:
    if device != "cpu":
        return 1
    if workers is not None:
        if workers < 1:
            raise CryoflowError(None, f"the number of worker processes must be at least 1, got {workers}")
        return min(int(workers), preset.n_micrographs)
    if preset.n_micrographs * preset.shape[0] * preset.shape[1] < PARALLEL_MIN_PIXELS:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, preset.n_micrographs))


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class _torch_threads:
    """Context: run with ``n`` torch threads (``None``: unchanged), then restore."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def _simulate_one(folder: Path, preset: Preset, seed: int, shot: _grid.Shot, device: str):
    """Simulate and write one exposure; return its truth row, particle table, details, thumbnail."""
    from cryoflow.simulate.micrograph import simulate_micrograph

    species = make_species(preset.species, preset.pixel_size, device)
    spec = micrograph_spec(preset, shot, seed)
    sim = simulate_micrograph(spec, species, device)
    write_mrc(folder / shot.name, sim.image, preset.pixel_size)
    t = sim.truth
    parts = sim.particles
    junk = parts["is_junk"].astype(bool)
    row = {
        "rlnMicrographName": shot.name,
        "rlnDefocusU": float(t["defocus_u"]),
        "rlnDefocusV": float(t["defocus_v"]),
        "rlnDefocusAngle": float(t["defocus_angle"]),
        "rlnPhaseShift": float(t.get("phase_shift", 0.0)),
        "rlnCtfBfactor": float(spec.b_factor),
        "cfIceThickness": round(float(t["ice_thickness"]), 3),
        "cfLabel": t["label"],
        "cfReason": t["reason"],
        "cfGridSquare": shot.square.square_id,
        "cfFoilHole": shot.hole.hole_id,
        "cfStageX": shot.stage_x,
        "cfStageY": shot.stage_y,
        "cfParticleCount": int((~junk).sum()),
        "cfJunkCount": int(junk.sum()),
        "cfDose": float(spec.dose),
    }
    detail = {
        "name": shot.name,
        "planned_reason": shot.reason,
        "spec": spec.to_dict(),
        "truth": {k: v for k, v in t.items() if k != "masks"},
        "mask_fractions": {k: float(np.mean(v)) for k, v in (t.get("masks") or {}).items()},
    }
    return row, _particle_frame(shot.name, parts), detail, _thumbnail(sim.image)


def write_dataset(
    folder: Path, preset: Preset, seed: int, device: str = "cpu", report: bool = True, workers: int | None = None
) -> SimulatedDataset:
    """Simulate every micrograph of ``preset`` and write the dataset into ``folder``.

    ``workers``: processes simulating micrographs in parallel on the CPU (``None``: as many
    as there are cores when the dataset is big enough to repay their start-up, else 1).
    Species and micrographs are computed with one torch thread whatever the number of
    workers (on the CPU), so the bytes written do not depend on it; the parallelism is
    across micrographs, which on small images is also faster than threads within one.
    """
    from cryoflow import __version__
    from cryoflow.progress import progress

    folder = Path(folder)
    plan = plan_dataset(preset, seed)
    with _torch_threads(1 if device == "cpu" else None):  # as in the workers: same bytes
        species = make_species(preset.species, preset.pixel_size, device)
    n_workers = _n_workers(workers, preset, device)
    desc = "simulating micrographs" + (f" ({n_workers} processes)" if n_workers > 1 else "")
    if n_workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=context, initializer=_init_worker) as pool:
            jobs = pool.map(
                _simulate_one, *zip(*[(folder, preset, seed, shot, device) for shot in plan.shots], strict=True)
            )
            results = list(progress(jobs, desc=desc, total=len(plan.shots), unit="micrograph"))
    else:
        with _torch_threads(1 if device == "cpu" else None):
            results = [
                _simulate_one(folder, preset, seed, shot, device)
                for shot in progress(plan.shots, desc=desc, unit="micrograph")
            ]
    mic_rows = [r[0] for r in results]
    frames = [r[1] for r in results]
    details = [r[2] for r in results]
    thumbs = [r[3] for r in results]

    # low-magnification square images and the square table
    square_rows = []
    by_square = Counter(str(r["cfGridSquare"]) for r in mic_rows)
    bad_by_square = Counter(str(r["cfGridSquare"]) for r in mic_rows if r["cfLabel"] == "bad")
    square_images = {}
    for square in plan.squares:
        name = f"{square.folder}/{square.folder}.mrc"
        if preset.square_image > 0:
            rng = np.random.default_rng([int(seed), 2, square.index])
            size = preset.square_image
            pix_um = SQUARE_PIXEL_UM * 512 / size
            image = _grid.render_square(plan, square, rng, size=size, pixel_size_um=pix_um)
            write_mrc(folder / name, image, pix_um * 1e4)
            square_images[square.square_id] = image
        n_sq = by_square[str(square.square_id)]
        square_rows.append(
            {
                "cfGridSquare": square.square_id,
                "cfSquareQuality": square.quality.name,
                "cfStageX": square.stage_x,
                "cfStageY": square.stage_y,
                "cfIceThickness": square.quality.ice_mean,
                "cfMicrographCount": n_sq,
                "cfBadCount": bad_by_square[str(square.square_id)],
                "cfBadFraction": round(bad_by_square[str(square.square_id)] / n_sq, 4) if n_sq else 0.0,
                "cfSquareImage": name if preset.square_image > 0 else "none",
            }
        )

    optics = _truth.optics_table(preset.pixel_size, preset.voltage, preset.cs, preset.amplitude_contrast)
    reasons = Counter(r["cfReason"] for r in mic_rows)
    ordered = {k: reasons[k] for k in _grid.REASONS if reasons[k]}
    n_particles = int(sum(r["cfParticleCount"] for r in mic_rows))
    n_junk = int(sum(r["cfJunkCount"] for r in mic_rows))
    dataset = {
        "cryoflow_version": __version__,
        "preset": preset.name,
        "seed": int(seed),
        "parameters": preset.to_dict(),
        "units": {
            "pixel_size": "Å/px",
            "defocus": "Å (positive underfocus, RELION)",
            "defocus_angle": "degrees (RELION rlnDefocusAngle)",
            "dose": "e/Å²",
            "ice_thickness": "nm",
            "stage": "µm",
            "b_factor": "Å²",
            "voltage": "kV",
            "cs": "mm",
        },
        "species": [
            {
                "name": s.name,
                "spec": spec.to_dict(),
                "diameter_A": round(float(s.diameter), 2),
                "box_px": int(s.box),
                "mass_Da": round(float(s.mass), 1) if np.isfinite(s.mass) else None,
                "source": s.source,
            }
            for s, spec in zip(species, preset.species, strict=True)
        ],
        "grid": {
            "hole_diameter_um": plan.hole_diameter,
            "hole_pitch_um": plan.hole_pitch,
            "thick_ice_threshold_nm": plan.thick_ice_threshold,
            "square_image_pixel_um": SQUARE_PIXEL_UM * 512 / max(preset.square_image, 1),
            "squares": square_rows,
            "holes": [dataclasses.asdict(h) for h in plan.holes],
        },
        "counts": {"micrographs": len(mic_rows), "particles": n_particles, "junk": n_junk, "reasons": ordered},
        "micrographs": details,
    }
    files = _truth.write_truth(folder, optics, mic_rows, frames, square_rows, dataset)
    result = SimulatedDataset(folder, preset.name, int(seed), len(mic_rows), n_particles, n_junk, ordered, files)
    if report:
        files["report"] = write_dataset_report(folder, preset, plan, mic_rows, thumbs, square_images, species, result)
    return result


def _particle_frame(name: str, parts: pd.DataFrame) -> pd.DataFrame:
    """The simulator's particle table in RELION/cryoflow truth columns."""
    return pd.DataFrame(
        {
            "rlnMicrographName": [name] * len(parts),
            "rlnCoordinateX": parts["x"].to_numpy(np.float64).round(3),
            "rlnCoordinateY": parts["y"].to_numpy(np.float64).round(3),
            "rlnAngleRot": parts["rot"].to_numpy(np.float64).round(4),
            "rlnAngleTilt": parts["tilt"].to_numpy(np.float64).round(4),
            "rlnAnglePsi": parts["psi"].to_numpy(np.float64).round(4),
            "rlnDefocusU": parts["defocus_u"].to_numpy(np.float64).round(2),
            "rlnDefocusV": parts["defocus_v"].to_numpy(np.float64).round(2),
            "rlnDefocusAngle": parts["defocus_angle"].to_numpy(np.float64).round(3),
            "cfSpecies": [s if s else "none" for s in parts["species"]],
            "cfIsJunk": parts["is_junk"].astype(int).to_numpy(),
            "cfJunkKind": [k if k else "none" for k in parts["junk_kind"]],
            "cfHeight": parts["z"].to_numpy(np.float64).round(2),
            "cfDiameter": parts["diameter"].to_numpy(np.float64).round(2),
            "cfMembers": parts["n_members"].astype(int).to_numpy(),
        }
    )


def _thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """Block-average ``image`` down to about ``size`` pixels across (a low-pass for display)."""
    f = max(1, image.shape[1] // size)
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    return image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)).astype(np.float32)


# --- the dataset report ---------------------------------------------------------------------
def write_dataset_report(folder, preset, plan, rows, thumbs, square_images, species, result) -> Path:
    """``report.html`` + ``summary.json`` describing a simulated dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoflow.report import Report

    df = pd.DataFrame(rows)
    n = len(df)
    n_bad = int((df["cfLabel"] == "bad").sum())
    report = Report(
        f"Simulated dataset ({preset.name})",
        step="simulate",
        intro=(
            "A synthetic cryo-EM session made by cryoflow's simulator, with complete ground truth: every "
            "micrograph's defocus, ice thickness and whether it is good or bad (and why), every particle's "
            "position, orientation and species. Later steps measure themselves against this truth "
            "(truth/micrographs_truth.star, truth/particles_truth.star)."
        ),
    )
    s = report.section("Overview", "What the dataset holds and the fixed imaging parameters.")
    s.metric("Micrographs", n, "", f"{preset.shape[1]}x{preset.shape[0]} pixels each, EPU layout GridSquare_*/Data/.")
    s.metric("Bad micrographs", n_bad, "", f"{100 * n_bad / n:.0f}% of the micrographs; the reasons are listed below.")
    s.metric(
        "Particles", result.n_particles, "", "Particles placed (junk not counted), listed in particles_truth.star."
    )
    s.metric("Junk objects", result.n_junk, "", "Broken particles, ice chips, small contaminants and aggregates.")
    s.metric("Pixel size", preset.pixel_size, "Å", "Size of one pixel on the specimen.")
    s.metric("Voltage", preset.voltage, "kV", "Accelerating voltage of the microscope.")
    s.metric("Dose", preset.dose, "e/Å²", "Electrons per Å² over the whole exposure; sets the shot noise.")
    s.metric(
        "Species", ", ".join(sp.name for sp in species), "", "Particle species, by relative abundance in the preset."
    )
    s.metric("Seed", result.seed, "", "The same preset and seed give identical files.")

    s = report.section(
        "Why micrographs are bad",
        "Each bad micrograph carries one reason, the defect it was made with. Bad micrographs cluster "
        "in the squares of poor quality, as on real grids.",
    )
    table = df.groupby(["cfGridSquare", "cfReason"]).size().unstack(fill_value=0)
    quality = {sq.square_id: sq.quality.name for sq in plan.squares}
    table.insert(0, "square quality", [quality[int(i)] for i in table.index])
    table = table.reset_index().rename(columns={"cfGridSquare": "grid square"})
    s.table(table, caption="Micrographs per grid square and reason")
    fig, ax = plt.subplots(figsize=(6, 3))
    counts = df["cfReason"].value_counts().reindex([r for r in _grid.REASONS if r in set(df["cfReason"])])
    ax.barh(counts.index, counts.to_numpy(), color=["tab:green" if r == "good" else "tab:red" for r in counts.index])
    ax.invert_yaxis()
    ax.set_xlabel("micrographs")
    s.figure(fig, "Micrographs per reason (green: good, red: bad)")

    s = report.section("Defocus and ice", "The truth values each micrograph was simulated with.")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    mean_def = (df["rlnDefocusU"] + df["rlnDefocusV"]) / 2e4
    for label, color in (("good", "tab:green"), ("bad", "tab:red")):
        sel = df["cfLabel"] == label
        axes[0].hist(
            mean_def[sel], bins=12, range=(0, max(3.0, mean_def.max() + 0.1)), alpha=0.6, color=color, label=label
        )
        axes[1].hist(
            df["cfIceThickness"][sel],
            bins=12,
            range=(0, max(200.0, df["cfIceThickness"].max() + 5)),
            alpha=0.6,
            color=color,
            label=label,
        )
    axes[0].set_xlabel("mean defocus (µm, underfocus)")
    axes[1].set_xlabel("ice thickness (nm)")
    for a in axes:
        a.set_ylabel("micrographs")
        a.legend()
    s.figure(fig, "Defocus and ice thickness of good and bad micrographs")

    s = report.section(
        "Micrographs",
        "Thumbnails (block-averaged) of a few good micrographs and one of each kind of bad one, with the reason.",
    )
    good = [i for i in range(n) if rows[i]["cfLabel"] == "good"][:4]
    bad, seen = [], set()
    for i in range(n):
        r = rows[i]["cfReason"]
        if rows[i]["cfLabel"] == "bad" and r not in seen:
            seen.add(r)
            bad.append(i)
    if good:
        s.gallery(
            [thumbs[i] for i in good],
            [
                f"good · {(rows[i]['rlnDefocusU'] + rows[i]['rlnDefocusV']) / 2e4:.2f} µm · {rows[i]['cfParticleCount']} particles"
                for i in good
            ],
            name="good_micrographs",
        )
    if bad:
        s.gallery(
            [thumbs[i] for i in bad],
            [f"bad · {rows[i]['cfReason']} · {Path(rows[i]['rlnMicrographName']).name}" for i in bad],
            name="bad_micrographs",
        )

    if square_images:
        s = report.section(
            "Grid squares",
            "Low-magnification images of the squares (GridSquare_<n>/GridSquare_<n>.mrc): grid bars, the foil "
            "with its holes (darker where the ice is thicker), contamination. Below, the stage positions of the "
            "exposures coloured by their label.",
        )
        ids = list(square_images)
        s.gallery(
            [square_images[i] for i in ids],
            [f"GridSquare_{i} · {quality[i]} · {int((df['cfGridSquare'] == i).sum())} exposures" for i in ids],
            name="squares",
        )
        fig, axes = plt.subplots(1, len(plan.squares), figsize=(3.2 * len(plan.squares), 3.2), squeeze=False)
        for ax, sq in zip(axes[0], plan.squares, strict=True):
            sel = df["cfGridSquare"] == sq.square_id
            for label, color in (("good", "tab:green"), ("bad", "tab:red")):
                m = sel & (df["cfLabel"] == label)
                ax.scatter(df["cfStageX"][m], df["cfStageY"][m], s=14, color=color, label=label)
            half = (_grid.GRID_BAR_PITCH_UM - _grid.GRID_BAR_WIDTH_UM) / 2
            ax.set_xlim(sq.stage_x - half, sq.stage_x + half)
            ax.set_ylim(sq.stage_y + half, sq.stage_y - half)
            ax.set_aspect("equal")
            ax.set_title(f"{sq.folder} ({sq.quality.name})", fontsize=8)
            ax.set_xlabel("stage x (µm)")
        axes[0][0].set_ylabel("stage y (µm)")
        axes[0][0].legend(fontsize=7)
        s.figure(fig, "Exposures on each square (stage positions, µm)")

    summary = {
        "preset": preset.name,
        "seed": result.seed,
        "n_micrographs": n,
        "n_good": n - n_bad,
        "n_bad": n_bad,
        "bad_fraction": n_bad / n,
        "reasons": result.reasons,
        "n_particles": result.n_particles,
        "n_junk": result.n_junk,
        "pixel_size_A": preset.pixel_size,
        "shape": list(preset.shape),
        "species": [sp.name for sp in species],
        "bad_fraction_per_square": {
            str(sq.square_id): float((df["cfLabel"][df["cfGridSquare"] == sq.square_id] == "bad").mean())
            for sq in plan.squares
            if (df["cfGridSquare"] == sq.square_id).any()
        },
    }
    return report.write(folder, summary=summary)
