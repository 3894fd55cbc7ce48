"""Micrographs in batches for a scattered workflow step, and the batches' step folders merged back.

A per-micrograph step (the CTF fit) runs on batches of micrographs in parallel, one CWL scatter
job per batch (``workflows/preprocess.cwl``, ``workflows/screening.cwl``);
steps that decide per dataset (micassess's thresholds, pick's parameter search) run on the
merged result, so the outcome does not depend on the batching.

:func:`split_micrographs` (``cryoflow split``) writes one micrographs STAR file per batch.
A folder's micrographs are named ``<folder name>/<path inside the folder>``: the name
resolves in any working directory where the folder is staged under that name, as
``tools/ctf.cwl`` stages its ``images`` input under its CWL basename (a CWL runner stages
every input somewhere else, so an absolute path written by one job means nothing to the
next; Toil even stages a folder under a temporary name, hence ``folder_name``). Micrographs are
grouped into optics groups by the pixel size in their headers, numbered over the whole set,
so every batch carries the same ``data_optics``. A STAR input is cut into batches as it is.

:func:`merge_step_folders` (``cryoflow merge``) joins the step folders of the batches
(in the order of their names, ``batch_001``, ``batch_002``, ...) into one folder laid out
as the step itself would have written it for the whole set. For ``ctf`` folders:
``micrographs_ctf.star`` (+ ``micrographs_ctf_failed.star``) concatenated under one optics
table, the dataset-relative ice thickness recomputed over all micrographs (it is relative
to the dataset's thinnest typical ice, so per batch it would differ), ``diagnostics/``,
summary.json with the step's figures over the whole set, a report of the whole set, and
each batch's own report under ``batches/<name>/``.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError

BATCH_PREFIX = "batch_"


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")


def _micrograph_table(inputs, folder_name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(data_optics, data_micrographs)`` naming the micrographs of ``inputs`` (see the module doc)."""
    from cryoflow.io import find_micrographs, read_info

    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    inputs = [Path(i) for i in inputs]
    mics = find_micrographs(inputs)
    if mics.star is not None:
        return mics.star.optics, mics.star.table
    if len(inputs) == 1 and inputs[0].is_dir():  # (not resolved: the files may be links to elsewhere)
        prefix = folder_name or inputs[0].resolve().name
        names = [f"{prefix}/{p.relative_to(inputs[0]).as_posix()}" for p in mics.paths]
    else:
        names = [os.path.abspath(p) for p in mics.paths]
    sizes = [read_info(p).pixel_size for p in mics.paths]
    known = sorted({round(float(s), 5) for s in sizes if s and s > 0})
    if known and all(s and s > 0 for s in sizes):  # one optics group per pixel size, as ctf makes them
        groups = [known.index(round(float(s), 5)) + 1 for s in sizes]
        optics = pd.DataFrame(
            {
                "rlnOpticsGroup": range(1, len(known) + 1),
                "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(known) + 1)],
                "rlnMicrographPixelSize": known,
            }
        )
    else:  # a header without pixel size: the CTF step's --pixel-size decides
        groups = [1] * len(names)
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
    return optics, pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": groups})


def split_micrographs(inputs, out: str | os.PathLike, batch_size: int = 10, folder_name: str | None = None) -> dict:
    """Write ``out/batch_NNN.star``, ``batch_size`` micrographs each (the last may hold fewer).

    ``inputs``: as ``cryoflow ctf`` takes them (folder, files, globs or one STAR file).
    ``folder_name``: the name a folder input is known by where the batches are used (default:
    its own; a CWL runner may stage it under another name, e.g. Toil, while the next job
    stages it under its CWL basename). Returns ``{"micrographs": n, "batches": [file names]}``.
    """
    from cryoflow.io import StarTable, atomic_dir, write_table

    out = Path(out)
    _check_out(out)
    if batch_size < 1:
        raise CryoflowError(None, f"--batch-size must be at least 1, got {batch_size}")
    if folder_name is not None and (not folder_name or "/" in folder_name or folder_name in (".", "..")):
        raise CryoflowError(None, f"--folder-name must be a plain folder name, got {folder_name!r}")
    optics, table = _micrograph_table(inputs, folder_name)
    n_batches = math.ceil(len(table) / batch_size)
    width = max(3, len(str(n_batches)))
    names = []
    with atomic_dir(out) as tmp:
        for b in range(n_batches):
            name = f"{BATCH_PREFIX}{b + 1:0{width}d}.star"
            rows = table.iloc[b * batch_size : (b + 1) * batch_size].reset_index(drop=True)
            write_table(tmp / name, StarTable(optics, rows, "micrographs"))
            names.append(name)
    return {"micrographs": len(table), "batch_size": batch_size, "batches": names}


# --- merging ------------------------------------------------------------------------------


def merge_optics(tables: list[pd.DataFrame], source: Path | None = None) -> pd.DataFrame:
    """One ``data_optics`` from several: groups by ``rlnOpticsGroup``, each column's first
    known value (a batch may lack a group's pixel size). Differing known values are an error."""
    rows: dict[int, dict] = {}
    columns: list[str] = []
    for optics in tables:
        columns += [c for c in optics.columns if c not in columns]
        for record in optics.to_dict("records"):
            group = int(record["rlnOpticsGroup"])
            merged = rows.setdefault(group, {})
            for column, value in record.items():
                if pd.isna(value):
                    continue
                if column in merged and merged[column] != value:
                    if not (isinstance(value, float | int) and np.isclose(float(merged[column]), float(value))):
                        raise CryoflowError(
                            source,
                            f"optics group {group} has {column} {merged[column]} in one batch, {value} in another",
                        )
                merged.setdefault(column, value)
    frame = pd.DataFrame([rows[g] for g in sorted(rows)], columns=columns)
    frame["rlnOpticsGroup"] = frame["rlnOpticsGroup"].astype(int)
    return frame


def concat_tables(paths: list[Path], kind: str):
    """The tables of several STAR files of one ``kind`` as one StarTable (rows in file order)
    and the number of rows each file gave."""
    from cryoflow.io import StarTable, read_table

    stars = [read_table(p, kind) for p in paths]
    optics = merge_optics([s.optics for s in stars], paths[0].parent if paths else None)
    frames = [s.table for s in stars if len(s.table)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return StarTable(optics, table, kind), [len(s.table) for s in stars]


def _batch_folders(folders) -> list[Path]:
    folders = sorted((Path(f) for f in folders), key=lambda p: (p.name, str(p)))
    if not folders:
        raise CryoflowError(None, "no step folders to merge")
    for folder in folders:
        if not folder.is_dir():
            raise CryoflowError(folder, "not a folder (cryoflow merge takes the step folders of the batches)")
    return folders


def merge_step_folders(folders, out: str | os.PathLike) -> dict:
    """Merge the step folders of the batches of one step into ``out`` (see the module doc)."""
    folders = _batch_folders(folders)
    out = Path(out)
    _check_out(out)
    if all((f / "micrographs_ctf.star").is_file() for f in folders):
        return _merge_ctf(folders, out)
    missing = next(f for f in folders if not (f / "micrographs_ctf.star").is_file())
    raise CryoflowError(missing, "not a ctf step folder (no micrographs_ctf.star); cryoflow merge joins ctf batches")


def _copy_report(folder: Path, dest: Path) -> None:
    """A batch's report.html, summary.json and figures/ (what its page shows) into ``dest``."""
    dest.mkdir(parents=True)
    for name in ("report.html", "summary.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    if (folder / "figures").is_dir():
        shutil.copytree(folder / "figures", dest / "figures")


def _merge_ctf(folders: list[Path], out: Path) -> dict:
    from cryoflow.ctf.run import _add_relative_thickness
    from cryoflow.io import StarTable, atomic_dir, write_table

    fitted, counts = concat_tables([f / "micrographs_ctf.star" for f in folders], "micrographs")
    failed_paths = [f / "micrographs_ctf_failed.star" for f in folders if (f / "micrographs_ctf_failed.star").is_file()]
    failed = concat_tables(failed_paths, "micrographs")[0] if failed_paths else None
    failed_table = failed.table if failed is not None else pd.DataFrame()
    optics = merge_optics([fitted.optics] + ([failed.optics] if failed is not None else []), folders[0])
    table = fitted.table
    batches = []
    with atomic_dir(out) as tmp:
        (tmp / "diagnostics").mkdir()
        used: set[str] = set()
        start = 0
        for folder, count in zip(folders, counts, strict=True):
            rows = table.iloc[start : start + count]
            start += count
            for i, rel in rows.get("cryoflowDiagnostic", pd.Series(dtype=str)).items():
                src = folder / str(rel)
                if not src.is_file():
                    continue
                name = src.name
                while name in used:  # the same file name in two batches (same stem, other folders)
                    name = f"{Path(name).stem}_{folder.name}{src.suffix}"
                used.add(name)
                shutil.copyfile(src, tmp / "diagnostics" / name)
                table.at[i, "cryoflowDiagnostic"] = f"diagnostics/{name}"
            _copy_report(folder, tmp / "batches" / folder.name)
            summary = _read_json(folder / "summary.json")
            batches.append(
                {
                    "batch": folder.name,
                    "micrographs": summary.get("micrographs"),
                    "fitted": summary.get("fitted", count),
                    "report": f"batches/{folder.name}/report.html",
                }
            )
        _add_relative_thickness(table, failed_table)
        write_table(tmp / "micrographs_ctf.star", StarTable(optics, table, "micrographs"))
        if len(failed_table):
            write_table(tmp / "micrographs_ctf_failed.star", StarTable(optics, failed_table, "micrographs"))
        summary = _ctf_summary(table, failed_table, batches)
        _ctf_report(tmp, table, failed_table, optics, summary)
    return summary


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        raise CryoflowError(path, "is not valid JSON") from None


def _median(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _column(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[column].to_numpy(dtype=float) if column in table else np.array([])


def _ctf_summary(fitted: pd.DataFrame, failed: pd.DataFrame, batches: list[dict]) -> dict:
    """The ctf step's summary.json figures, over the merged tables."""
    defocus_u, defocus_v = _column(fitted, "rlnDefocusU"), _column(fitted, "rlnDefocusV")
    failures = (
        {str(r["rlnMicrographName"]): r.get("cryoflowCtfFailure", "") for r in failed.to_dict("records")}
        if len(failed)
        else {}
    )
    return {
        "micrographs": len(fitted) + len(failed),
        "fitted": len(fitted),
        "failed": len(failed),
        "median_defocus_um": _median((defocus_u + defocus_v) / 2 / 1e4) if len(defocus_u) else float("nan"),
        "median_astigmatism_A": _median(_column(fitted, "rlnCtfAstigmatism")),
        "median_fit_resolution_A": _median(_column(fitted, "rlnCtfMaxResolution")),
        "median_figure_of_merit": _median(_column(fitted, "rlnCtfFigureOfMerit")),
        "failures": failures,
        "merged_from": batches,
        "outputs": {
            "micrographs_ctf": "micrographs_ctf.star",
            "failed": "micrographs_ctf_failed.star" if len(failed) else None,
        },
    }


def _ctf_report(out: Path, fitted: pd.DataFrame, failed: pd.DataFrame, optics: pd.DataFrame, summary: dict) -> None:
    """The CTF report over the merged set: the ctf step's overview and dataset figures, the best
    and worst fits (their diagnostic images), and each batch's own report (spectrum profiles)."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from cryoflow.ctf.estimate import METRIC_DOCS
    from cryoflow.ctf.report import INTRO, _hist
    from cryoflow.report import Report

    batches = summary["merged_from"]
    report = Report(
        "CTF estimation",
        step="ctf",
        intro=f"{INTRO} The micrographs were fitted in {len(batches)} batches in parallel; this page covers "
        "all of them, and each batch's own page (with the spectrum profiles of its best and worst fits) is "
        "listed at the end.",
    )
    overview = report.section("Overview", "The numbers a facility checks first.")
    overview.metric("Micrographs", summary["micrographs"], "", "Micrographs given to the step.")
    overview.metric("Fitted", summary["fitted"], "", "Micrographs whose Thon rings could be fitted.")
    overview.metric(
        "No fit possible",
        summary["failed"],
        "",
        "Empty holes, pure noise or damaged images: listed below with the reason; not used downstream.",
    )
    overview.metric("Median defocus", summary["median_defocus_um"], "µm", METRIC_DOCS["defocus"])
    overview.metric("Median astigmatism", summary["median_astigmatism_A"], "Å", METRIC_DOCS["astigmatism"])
    overview.metric("Median fit resolution", summary["median_fit_resolution_A"], "Å", METRIC_DOCS["fit_resolution"])
    overview.metric("Median figure of merit", summary["median_figure_of_merit"], "", METRIC_DOCS["figure_of_merit"])
    kv = ", ".join(f"{v:g}" for v in sorted(set(optics["rlnVoltage"]))) if "rlnVoltage" in optics else "?"
    overview.text(f"Optics: {kv} kV; {len(optics)} optics group(s).")

    if len(fitted):
        defocus = (_column(fitted, "rlnDefocusU") + _column(fitted, "rlnDefocusV")) / 2 / 1e4
        resolution = _column(fitted, "rlnCtfMaxResolution")
        dist = report.section(
            "Defocus and fit resolution",
            "How the dataset was collected and how far the Thon rings reach, over every batch.",
        )
        dist.figure(_hist(defocus, "defocus (µm)", "Defocus"), "Histogram of the mean defocus.")
        dist.figure(_hist(resolution, "fit resolution (Å)", "Fit resolution"), METRIC_DOCS["fit_resolution"])
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.plot(np.arange(len(resolution)), resolution, "o-", ms=3, lw=0.6, color="#1f6f8b")
        ax.set_xlabel("micrograph (acquisition order)")
        ax.set_ylabel("fit resolution (Å)")
        dist.figure(
            fig,
            "Fit resolution per micrograph in acquisition order: drifts or jumps point to changes at the "
            "microscope (ice, alignment, stage).",
        )
        ranked = fitted.assign(_res=resolution).sort_values("_res", kind="stable")
        for title, rows in (("Best fits", ranked.head(3)), ("Worst fits", ranked.tail(3).iloc[::-1])):
            images, captions = [], []
            for _, row in rows.iterrows():
                path = out / str(row.get("cryoflowDiagnostic", ""))
                if path.is_file():
                    images.append(matplotlib.image.imread(path)[..., :3].mean(-1))
                    captions.append(f"{Path(str(row['rlnMicrographName'])).stem}: {row['_res']:.2f} Å")
            if images:
                report.section(
                    title,
                    "Left half of each image: the measured Thon rings (background removed); right half: the "
                    "fitted CTF. The rings should continue across the centre line.",
                ).gallery(images, captions, name=title, size=256)
    if len(failed):
        report.section(
            "No fit possible",
            "These micrographs had no Thon rings cryoflow could fit; the bad-micrograph step uses their "
            "metrics to give the reason (empty hole, thick ice, ...).",
        ).table(
            failed[["rlnMicrographName", "cryoflowCtfFailure"]].rename(
                columns={"rlnMicrographName": "micrograph", "cryoflowCtfFailure": "reason"}
            )
        )
    shown = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit"]
    if len(fitted):
        report.section("Micrographs", "Every fit, in acquisition order (first 200).").table(
            fitted[[c for c in shown if c in fitted]]
        )
    report.section(
        "Batches",
        "The batches fitted in parallel (one workflow job each) and their own reports, relative to this folder.",
    ).table(batches, columns=["batch", "micrographs", "fitted", "report"])
    report.write(out, summary=summary)
