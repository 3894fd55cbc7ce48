"""Run CTF estimation over a micrograph set and write the step's outputs.

Outputs in ``--out`` (built in a temporary folder beside it and renamed when complete):

- ``micrographs_ctf.star``: ``data_optics`` + ``data_micrographs`` of every micrograph with a
  fit (RELION columns rlnDefocusU/V, rlnDefocusAngle, rlnCtfAstigmatism,
  rlnCtfFigureOfMerit, rlnCtfMaxResolution, rlnCtfIceRingDensity, plus cryoflow quality
  metrics as ``cryoflow*`` columns). Loads in RELION as a CtfFind job's output.
- ``micrographs_ctf_failed.star``: micrographs where no fit was possible, with the reason
  (``cryoflowCtfFailure``) and the metrics that could be measured (only when there are some).
- ``diagnostics/<micrograph>.png``: the spectrum (left) with the fit (right).
- ``report.html`` + ``figures/`` + ``summary.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoflow.ctf.estimate import CtfResult, Settings, estimate
from cryoflow.ctf.fit import Optics
from cryoflow.errors import CryoflowError
from cryoflow.io import MicrographSet, StarTable, atomic_dir, find_micrographs, read_info, read_micrograph, write_table
from cryoflow.io.mrc import resolve_pixel_size
from cryoflow.progress import progress

# cryoflow metric name -> STAR column
COLUMNS = {
    "figure_of_merit": "rlnCtfFigureOfMerit",
    "fit_resolution": "rlnCtfMaxResolution",
    "ice_ring": "rlnCtfIceRingDensity",
    "ice_crystallinity": "cryoflowIceCrystallinity",
    "envelope_b": "cryoflowEnvelopeB",
    "thon_anisotropy": "cryoflowThonAnisotropy",
    "thon_weak_angle": "cryoflowThonWeakAngle",
    "mean_intensity": "cryoflowMeanIntensity",
    "relative_ice_thickness": "cryoflowRelativeIceThickness",
    "dark_fraction": "cryoflowDarkFraction",
    "bright_fraction": "cryoflowBrightFraction",
    "tilt_angle": "cryoflowTiltAngle",
    "tilt_axis": "cryoflowTiltAxis",
}


@dataclass
class Micrograph:
    """One input: the file, its name as written to STAR, its pixel size (Å) and optics group."""

    path: Path
    name: str
    pixel_size: float
    group: int


def plan(inputs, pixel_size: float | None, optics: Optics) -> tuple[list[Micrograph], pd.DataFrame]:
    """Resolve inputs and check every header before any work: ``(micrographs, data_optics)``.

    Pixel size: ``--pixel-size`` if given, else the input STAR's optics group, else the MRC
    header. Voltage, Cs and amplitude contrast come from the input STAR's optics when it has
    them, else from ``optics``.
    """
    mics: MicrographSet = find_micrographs(inputs)
    star: StarTable | None = mics.star
    entries = []
    if star is not None:
        names = list(star.table["rlnMicrographName"].astype(str))
        groups = list(star.table["rlnOpticsGroup"].astype(int))
        try:
            star_sizes = list(star.pixel_size())
        except CryoflowError:
            star_sizes = [None] * len(names)
    else:
        names = [str(p) for p in mics.paths]
        groups = [0] * len(names)
        star_sizes = [None] * len(names)
    for path, name, group, star_size in zip(mics.paths, names, groups, star_sizes, strict=True):
        info = read_info(path)
        if info.n_images != 1:
            raise CryoflowError(path, f"holds {info.n_images} images; expected one motion-corrected micrograph")
        apix = resolve_pixel_size(path, star_size or info.pixel_size, pixel_size)
        entries.append(Micrograph(path=path, name=name, pixel_size=apix, group=group))
    if star is not None:
        optics_table = star.optics.copy()
        for column, value in (
            ("rlnVoltage", optics.voltage),
            ("rlnSphericalAberration", optics.cs),
            ("rlnAmplitudeContrast", optics.amplitude_contrast),
        ):
            if column not in optics_table:
                optics_table[column] = value
        if pixel_size is not None or "rlnMicrographPixelSize" not in optics_table:
            sizes = {m.group: m.pixel_size for m in entries}
            optics_table["rlnMicrographPixelSize"] = [sizes.get(int(g), np.nan) for g in optics_table["rlnOpticsGroup"]]
    else:
        sizes = sorted({m.pixel_size for m in entries})
        for m in entries:
            m.group = sizes.index(m.pixel_size) + 1
        optics_table = pd.DataFrame(
            {
                "rlnOpticsGroup": list(range(1, len(sizes) + 1)),
                "rlnOpticsGroupName": [f"opticsGroup{i}" for i in range(1, len(sizes) + 1)],
                "rlnVoltage": optics.voltage,
                "rlnSphericalAberration": optics.cs,
                "rlnAmplitudeContrast": optics.amplitude_contrast,
                "rlnMicrographPixelSize": sizes,
            }
        )
    return entries, optics_table


def _optics_for(optics_table: pd.DataFrame, group: int, default: Optics) -> Optics:
    row = optics_table.loc[optics_table["rlnOpticsGroup"] == group]
    if row.empty:
        return default
    row = row.iloc[0]
    return Optics(float(row["rlnVoltage"]), float(row["rlnSphericalAberration"]), float(row["rlnAmplitudeContrast"]))


def _unique_stems(mics: list[Micrograph]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for m in mics:
        stem = m.path.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def run_ctf(
    inputs,
    out: str | os.PathLike,
    pixel_size: float | None = None,
    optics: Optics | None = None,
    settings: Settings | None = None,
    device: torch.device | str = "cpu",
    report: bool = True,
    diagnostics: bool = True,
    session_intensities: Sequence[float] = (),
    loaded: dict[str, np.ndarray] | None = None,
) -> dict:
    """Estimate the CTF of every micrograph in ``inputs`` and write the outputs into ``out``.

    ``out`` must not exist or be empty (nothing a user has is overwritten). Returns the summary.
    ``report``: False writes ``summary.json`` without ``report.html`` and its figures (``cryoflow
    watch``: the same STAR files in a fraction of the time); ``diagnostics``: False writes no
    per-micrograph PNG (the STAR files then have no ``cryoflowDiagnostic`` column).
    ``session_intensities``: mean intensities of fitted micrographs of the same session
    processed earlier (``cryoflow watch``'s previous batches): the relative ice thickness is
    then measured against the whole session's typical intensity, as if all had been given at
    once, not against this batch's alone. ``loaded``: a dict that receives every micrograph
    read (``os.path.realpath`` of its file -> the read-only float32 image), for the next steps
    to use instead of reading the files again (``cryoflow watch``).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    optics = optics or Optics()
    settings = settings or Settings()
    device = torch.device(device)
    mics, optics_table = plan(inputs, pixel_size, optics)
    stems = _unique_stems(mics)
    results: list[CtfResult] = []
    with atomic_dir(out) as tmp:
        if diagnostics:
            (tmp / "diagnostics").mkdir()
        for mic, stem in zip(progress(mics, desc="ctf", unit="mic"), stems, strict=True):
            image, _ = read_micrograph(mic.path, pixel_size=mic.pixel_size)
            if loaded is not None:
                image.flags.writeable = False  # shared with the next steps: nobody may change it
                loaded[os.path.realpath(mic.path)] = image
            result = estimate(
                torch.as_tensor(np.array(image)).to(device),
                mic.pixel_size,
                _optics_for(optics_table, mic.group, optics),
                settings,
            )
            results.append(result)
            if result.ok and diagnostics:
                _save_diagnostic(result, tmp / "diagnostics" / f"{stem}.png")
        fitted, failed = tables(mics, stems, results, diagnostics=diagnostics)
        add_relative_thickness(fitted, failed, session_intensities)
        write_table(tmp / "micrographs_ctf.star", StarTable(optics_table, fitted, "micrographs"))
        if len(failed):
            write_table(tmp / "micrographs_ctf_failed.star", StarTable(optics_table, failed, "micrographs"))
        if report:
            from cryoflow.ctf.report import write_report

            summary = write_report(tmp, mics, stems, results, fitted, failed, optics_table, settings)
        else:
            from cryoflow.report.builder import write_summary

            summary = {"step": "ctf", **summarize(results, failed)}
            write_summary(tmp / "summary.json", summary)
    return summary


def summarize(results: list[CtfResult], failed: pd.DataFrame) -> dict:
    """The step's ``summary.json`` (written with or without the report)."""
    n, n_ok = len(results), int(sum(r.ok for r in results))
    ok = [r for r in results if r.ok]
    med = lambda a: float(np.median(a)) if len(a) else float("nan")  # noqa: E731
    defocus = np.array([r.fit.defocus / 1e4 for r in ok])
    astig = np.array([r.fit.astigmatism for r in ok])
    resolution = np.array([r.resolution for r in ok])
    fom = np.array([r.fit.score for r in ok])
    return {
        "micrographs": n,
        "fitted": n_ok,
        "failed": n - n_ok,
        "median_defocus_um": med(defocus),
        "median_astigmatism_A": med(astig),
        "median_fit_resolution_A": med(resolution),
        "median_figure_of_merit": med(fom),
        "failures": {str(r["rlnMicrographName"]): r["cryoflowCtfFailure"] for _, r in failed.iterrows()}
        if len(failed)
        else {},
        "outputs": {
            "micrographs_ctf": "micrographs_ctf.star",
            "failed": "micrographs_ctf_failed.star" if len(failed) else None,
        },
    }


def _save_diagnostic(result: CtfResult, path: Path) -> None:
    import matplotlib.image

    from cryoflow.ctf.diagnostics import half_and_half

    matplotlib.image.imsave(path, half_and_half(result), cmap="gray", vmin=0, vmax=1)


def tables(
    mics: list[Micrograph], stems: list[str], results: list[CtfResult], diagnostics: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``micrographs_ctf.star`` (fitted) and ``micrographs_ctf_failed.star``."""
    fitted, failed = [], []
    for mic, stem, r in zip(mics, stems, results, strict=True):
        row = {"rlnMicrographName": mic.name, "rlnOpticsGroup": mic.group}
        if r.ok:
            f = r.fit
            row.update(
                {
                    "rlnDefocusU": round(f.defocus_u, 2),
                    "rlnDefocusV": round(f.defocus_v, 2),
                    "rlnDefocusAngle": round(f.angle, 3),
                    "rlnCtfAstigmatism": round(f.astigmatism, 2),
                }
            )
            if f.phase_shift:
                row["rlnPhaseShift"] = round(f.phase_shift, 3)
        for metric, column in COLUMNS.items():
            if metric in r.metrics:
                row[column] = r.metrics[metric]
        if r.ok:
            if diagnostics:
                row["cryoflowDiagnostic"] = f"diagnostics/{stem}.png"
            fitted.append(row)
        else:
            row["cryoflowCtfFailure"] = r.reason
            failed.append(row)
    return pd.DataFrame(fitted), pd.DataFrame(failed)


def add_relative_thickness(fitted: pd.DataFrame, failed: pd.DataFrame, others: Sequence[float] = ()) -> None:
    """Relative ice thickness ln(I_ref / I): I the mean intensity, I_ref its 95th percentile over
    the fitted micrographs (the thinnest typical ice of the dataset; ``others``: mean intensities
    of more fitted micrographs of it, not in ``fitted``). In units of the inelastic mean free
    path (~300-350 nm at 300 kV) if the dose per micrograph is constant; 0 = thinnest."""
    column = COLUMNS["mean_intensity"]
    if fitted.empty or column not in fitted:
        return
    values = np.concatenate([fitted[column].to_numpy(dtype=float), np.asarray(others, dtype=float)])
    reference = np.percentile(values[values > 0], 95) if (values > 0).any() else math.nan
    for table in (fitted, failed):
        if column in table:
            intensity = table[column].to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                table[COLUMNS["relative_ice_thickness"]] = np.where(
                    intensity > 0, np.log(reference / intensity), np.nan
                )
