"""Micrographs in batches for a scattered workflow step, and the batches' step folders merged back.

The per-micrograph steps (CTF fit, picking, extraction) run on batches of micrographs in
parallel, one CWL scatter job per batch (``workflows/preprocess.cwl``,
``workflows/screening.cwl``), so a workflow scales out on Toil, Slurm or Arvados; what a step
decides per dataset is decided once, so the outcome does not depend on the batching:

- ctf: each micrograph is fitted alone; the one dataset-relative figure (ice thickness) is
  recomputed over the whole set by the merge.
- micassess runs on the merged CTF results (its thresholds are per dataset).
- pick: its automatic parameters are per dataset (diameter, score threshold, the median
  pick's score that sets the ceiling and the flank floor, the CNN picker's training and logit
  threshold, the junk tests' spreads). One parameter search, ``cryoflow pick`` on
  ``sample.star`` (up to ``--sample`` micrographs spread evenly over the good ones, all of them
  in a small set), takes them and records them at full precision (summary.json ``fixed``,
  ``picker_state.pt``); every batch is then picked with them (``cryoflow pick --parameters``),
  so each micrograph is picked exactly as one job over all micrographs with that search
  would pick it, and, when the sample is the whole set, exactly as the unscattered
  ``cryoflow pick`` does (``tests/test_batches.py`` checks both).
- extract: each batch extracts its own pick batch; the box comes from the pick folder's
  diameter (the search's), so it is one box for all batches.

:func:`split_micrographs` (``cryoflow split``) writes one micrographs STAR file per batch
(and ``sample.star`` with ``sample``). A folder's micrographs are named
``<folder name>/<path inside the folder>``: the name resolves in any working directory where
the folder is staged under that name, as ``tools/ctf.cwl`` stages its ``images`` input under
its CWL basename (a CWL runner stages every input somewhere else, so an absolute path written by
one job means nothing to the next; Toil even stages a folder under a temporary name, hence
``folder_name``). Micrographs are grouped into optics groups by the pixel size in their
headers, numbered over the whole set, so every batch carries the same ``data_optics``. A STAR
input (micassess's ``micrographs_good.star`` for pick and extract) is cut into batches as it
is; its names resolve as they did for the whole set (pick and extract look them up in their
``--images`` folder).

:func:`merge_step_folders` (``cryoflow merge``) joins the step folders of the batches
(in the order of their names, ``batch_001``, ``batch_002``, ...) into one folder laid out
as the step itself would have written it for the whole set, with summary.json over the whole
set, a report of the whole set, and each batch's own report under ``batches/<name>/``:

- ``ctf`` folders: ``micrographs_ctf.star`` (+ ``micrographs_ctf_failed.star``) concatenated
  under one optics table, the dataset-relative ice thickness recomputed over all micrographs
  (it is relative to the dataset's thinnest typical ice, so per batch it would differ),
  ``diagnostics/``.
- ``pick`` folders (every batch picked with the same ``fixed`` decisions, else an error):
  ``coordinates.star`` and ``coordinates/`` (the per-micrograph files, paths as one pick job
  writes them), the search's ``picker_state.pt`` / ``self_template.mrcs`` (so the merged folder
  can itself be given to ``--parameters``), summary.json with the per-micrograph figures joined
  and the search's evidence, the search's report under ``search/``.
- ``extract`` folders (one box for all, else an error): ``particles.star`` under one optics
  table (``rlnImageName`` ``N@Particles/<micrograph>.mrcs``, relative to the merged folder as
  to each batch's), the stacks, ``particles.cs`` made over all particles with the extract
  seed (the uids one extract job over the set gives), the report's gallery and average from
  the merged stacks.
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


SAMPLE_STAR = "sample.star"


def sample_rows(n: int, size: int) -> np.ndarray:
    """Indices of up to ``size`` of ``n`` micrographs spread evenly over the set (first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(size, n)).round().astype(int)) if n and size > 0 else np.zeros(0, int)


def split_micrographs(
    inputs,
    out: str | os.PathLike,
    batch_size: int = 10,
    folder_name: str | None = None,
    sample: int | None = None,
) -> dict:
    """Write ``out/batch_NNN.star``, ``batch_size`` micrographs each (the last may hold fewer).

    ``inputs``: as ``cryoflow ctf`` takes them (folder, files, globs or one STAR file).
    ``folder_name``: the name a folder input is known by where the batches are used (default:
    its own; a CWL runner may stage it under another name, e.g. Toil, while the next job
    stages it under its CWL basename). ``sample``: also write ``out/sample.star``, up to that many
    micrographs spread evenly over the set (:func:`sample_rows`; all of them when the set is no
    larger), on which a step that decides per dataset searches its parameters (pick).
    Returns ``{"micrographs": n, "batches": [file names], "sample": file name or None}``.
    """
    from cryoflow.io import StarTable, atomic_dir, write_table

    out = Path(out)
    _check_out(out)
    if batch_size < 1:
        raise CryoflowError(None, f"--batch-size must be at least 1, got {batch_size}")
    if sample is not None and sample < 1:
        raise CryoflowError(None, f"--sample must be at least 1, got {sample}")
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
        if sample is not None:
            rows = table.iloc[sample_rows(len(table), sample)].reset_index(drop=True)
            write_table(tmp / SAMPLE_STAR, StarTable(optics, rows, "micrographs"))
    return {
        "micrographs": len(table),
        "batch_size": batch_size,
        "batches": names,
        "sample": SAMPLE_STAR if sample is not None else None,
    }


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


#: the file that tells each step's folder, and the merge of that step
STEP_FILES = {"ctf": "micrographs_ctf.star", "pick": "coordinates.star", "extract": "particles.star"}


def merge_step_folders(folders, out: str | os.PathLike, search: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """Merge the step folders of the batches of one step into ``out`` (see the module doc).

    ``search``: for pick, the folder of the parameter search whose ``fixed`` decisions the
    batches used (its report and evidence go to ``out/search/``); ``seed``: for extract, the
    seed of the cryoSPARC uids (as ``cryoflow extract --seed``; the merged particles.cs is made
    over all particles with it, as one extract job writes it). Returns the merged summary."""
    folders = _batch_folders(folders)
    out = Path(out)
    _check_out(out)
    for step, name in STEP_FILES.items():
        if all((f / name).is_file() for f in folders):
            if search is not None and step != "pick":
                raise CryoflowError(
                    Path(search), "--search is the pick step's parameter search; these are not pick folders"
                )
            if step == "ctf":
                return _merge_ctf(folders, out)
            if step == "pick":
                return _merge_pick(folders, out, Path(search) if search is not None else None)
            return _merge_extract(folders, out, seed)
    raise CryoflowError(
        folders[0],
        "not a ctf, pick or extract step folder of a batch (none of micrographs_ctf.star, coordinates.star, "
        "particles.star in every folder); cryoflow merge joins the batches of one step",
    )


def _copy_report(folder: Path, dest: Path) -> None:
    """A batch's report.html, summary.json and figures/ (what its page shows) into ``dest``."""
    dest.mkdir(parents=True)
    for name in ("report.html", "summary.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    if (folder / "figures").is_dir():
        shutil.copytree(folder / "figures", dest / "figures")


def _merge_ctf(folders: list[Path], out: Path) -> dict:
    from cryoflow.ctf.run import add_relative_thickness
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
        add_relative_thickness(table, failed_table)
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
    from cryoflow.ctf.report import INTRO, histogram
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
        dist.figure(histogram(defocus, "defocus (µm)", "Defocus"), "Histogram of the mean defocus.")
        dist.figure(histogram(resolution, "fit resolution (Å)", "Fit resolution"), METRIC_DOCS["fit_resolution"])
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


# --- pick ---------------------------------------------------------------------------------


def _merge_pick(folders: list[Path], out: Path, search: Path | None) -> dict:
    """Coordinates of the batches (picked with one search's ``fixed`` decisions) as one pick folder."""
    from cryoflow.io import atomic_dir, read_blocks, write_blocks
    from cryoflow.picking.pick import COORDINATE_DIR, COORDINATES_STAR, PICKER_STATE, SELF_TEMPLATE

    summaries = [_read_json(f / "summary.json") for f in folders]
    fixed = [s.get("fixed") for s in summaries]
    if any(f != fixed[0] for f in fixed):
        bad = folders[next(i for i, f in enumerate(fixed) if f != fixed[0])]
        raise CryoflowError(
            bad,
            f"was picked with other parameters than {folders[0].name} (summary.json 'fixed' differs); "
            "pick every batch with the same --parameters",
        )
    if search is not None and not (search / "summary.json").is_file():
        raise CryoflowError(search, "not a pick folder (no summary.json); --search takes the parameter search's folder")
    search_summary = _read_json(search / "summary.json") if search is not None else {}
    if search is not None and search_summary.get("fixed") is not None and fixed[0] is not None:
        if {k: v for k, v in search_summary["fixed"].items()} != fixed[0]:
            raise CryoflowError(search, "is not the search the batches were picked with (its 'fixed' record differs)")
    index, seen, batches = [], set(), []
    with atomic_dir(out) as tmp:
        for folder, s in zip(folders, summaries, strict=True):
            table = read_blocks(folder / COORDINATES_STAR).get("coordinate_files", pd.DataFrame())
            for record in table.to_dict("records"):
                rel = str(record["rlnMicrographCoordinates"])
                if rel in seen:
                    raise CryoflowError(folder / rel, "the same micrograph's coordinates in two batches")
                seen.add(rel)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / rel, tmp / rel)
                index.append(record)
            _copy_report(folder, tmp / "batches" / folder.name)
            batches.append(
                {
                    "batch": folder.name,
                    "micrographs": s.get("micrographs"),
                    "particles": s.get("particles"),
                    "report": f"batches/{folder.name}/report.html" if (folder / "report.html").is_file() else None,
                }
            )
        (tmp / COORDINATE_DIR).mkdir(exist_ok=True)
        write_blocks(tmp / COORDINATES_STAR, {"coordinate_files": pd.DataFrame(index)})
        for name in (PICKER_STATE, SELF_TEMPLATE):  # what the batches picked with, as a whole pick folder holds it
            for source in ([search] if search is not None else []) + folders:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
                    break
        if search is not None:
            _copy_report(search, tmp / "search")
        summary = _pick_summary(summaries, search_summary, batches, search is not None)
        _pick_report(tmp, summary)
    return summary


def _sum(summaries: list[dict], *keys) -> int:
    total = 0
    for s in summaries:
        value = s
        for k in keys:
            value = (value or {}).get(k) if isinstance(value, dict) else None
        total += int(value or 0)
    return total


def _pick_summary(summaries: list[dict], search: dict, batches: list[dict], has_search: bool) -> dict:
    """The pick step's summary.json over the batches: counts summed, per-micrograph figures joined,
    the fixed decisions (the same in every batch) and the search's evidence."""
    first = summaries[0]
    per_mic = {k: v for s in summaries for k, v in s.get("picks_per_micrograph", {}).items()}
    junk = None
    if first.get("junk_tests") is not None:
        junk = dict(first["junk_tests"])
        junk["picks_tested"] = _sum(summaries, "junk_tests", "picks_tested")
        junk["rejected"] = {k: _sum(summaries, "junk_tests", "rejected", k) for k in junk.get("rejected", {})}
        junk["rejected_total"] = _sum(summaries, "junk_tests", "rejected_total")
    cnn = None
    if first.get("cnn") is not None:
        cnn = dict(search.get("cnn") or first["cnn"])  # the training (the search's), the batches' counts
        cnn["blob_picks"] = _sum(summaries, "cnn", "blob_picks")
        cnn["kept"] = _sum(summaries, "cnn", "kept")
    flank = dict(first.get("flank_peaks") or {})
    if flank:
        flank["kept"], flank["dropped"] = (
            _sum(summaries, "flank_peaks", "kept"),
            _sum(summaries, "flank_peaks", "dropped"),
        )
    seconds = [float((s.get("seconds") or {}).get("total") or 0.0) for s in summaries]
    return {
        "micrographs": sum(int(s.get("micrographs", 0)) for s in summaries),
        "particles": sum(int(s.get("particles", 0)) for s in summaries),
        "stage": {
            "micrographs": _sum(summaries, "stage", "micrographs"),
            "particles": _sum(summaries, "stage", "particles"),
        },
        "diameter_A": first.get("diameter_A"),
        "diameter_source": search.get("diameter_source", first.get("diameter_source")),
        "filter_diameter_A": first.get("filter_diameter_A"),
        "picker": first.get("picker"),
        "picker_choice": search.get("picker_choice", first.get("picker_choice")),
        "cnn": cnn,
        "templates": first.get("templates"),
        "threshold": first.get("threshold"),
        "threshold_source": search.get("threshold_source", first.get("threshold_source")),
        "ceiling": first.get("ceiling"),
        "rejected_too_strong": _sum(summaries, "rejected_too_strong"),
        "junk_tests": junk,
        "flank_peaks": flank or None,
        "min_distance_A": first.get("min_distance_A"),
        "edge_margin_A": first.get("edge_margin_A"),
        "picks_per_micrograph": per_mic,
        "excluded_fraction": {k: v for s in summaries for k, v in s.get("excluded_fraction", {}).items()},
        "threshold_search": search.get("threshold_search"),
        "diameter_search": search.get("diameter_search"),
        "seconds": {
            "search": (search.get("seconds") or {}).get("total"),
            "batches_total": round(sum(seconds), 3),
            "batch_max": round(max(seconds), 3) if seconds else 0.0,
        },
        "fixed": first.get("fixed"),
        "search": {
            "micrographs": search.get("micrographs"),
            "particles": search.get("particles"),
            "report": "search/report.html",
        }
        if has_search
        else None,
        "merged_from": batches,
    }


def _pick_report(out: Path, summary: dict) -> None:
    """The pick report over the merged set: the decisions (taken once, by the search), the picks
    per micrograph, links to the search's report (its evidence and overlays) and each batch's."""
    import matplotlib.pyplot as plt

    from cryoflow.report import Report

    s = summary
    report = Report(
        "Particle picking",
        step="pick",
        intro="Particles picked on every micrograph in batches, in parallel (one workflow job each), with the "
        "parameters a search took once"
        + (
            " on a sample of the micrographs (its report, with the evidence for each choice, is linked below)"
            if s["search"]
            else ""
        )
        + ": the diameter, the score threshold, the CNN picker and the junk tests' limits. Each micrograph is "
        "therefore picked as one job over all of them would pick it.",
    )
    ov = report.section("Overview", "What was picked, with which parameters.")
    ov.metric("Micrographs", s["micrographs"], "", "Micrographs picked.")
    ov.metric("Particles", s["particles"], "", "Picks kept, over every batch.")
    ov.metric(
        "Diameter", s["diameter_A"], "Å", f"Particle diameter ({s['diameter_source']}); extraction's box follows it."
    )
    ov.metric(
        "Threshold", s["threshold"], "σ", f"Score threshold in noise standard deviations ({s['threshold_source']})."
    )
    ran = (s.get("picker_choice") or {}).get("ran", s.get("picker"))
    ov.text(f"Picker: {ran}. Junk tests rejected {(s.get('junk_tests') or {}).get('rejected_total', 0)} picks.")
    picks = np.asarray(list(s["picks_per_micrograph"].values()), dtype=float)
    if picks.size:
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.plot(np.arange(picks.size), picks, "o-", ms=3, lw=0.6, color="#1f6f8b")
        ax.set_xlabel("micrograph (acquisition order)")
        ax.set_ylabel("picks")
        report.section("Picks per micrograph", "Over every batch, in acquisition order.").figure(
            fig, "Picks per micrograph: drops point to empty holes, thick ice or aggregation."
        )
    if s["search"]:
        report.section(
            "Parameter search",
            f"The search ran on {s['search']['micrographs']} micrographs spread over the set; its report shows the "
            "diameter response, the threshold against the noise null, the CNN's training and picks drawn on "
            "micrographs.",
        ).table(
            [{"search": "parameter search", "micrographs": s["search"]["micrographs"], "report": s["search"]["report"]}]
        )
    report.section("Batches", "The batches picked in parallel and their own reports, relative to this folder.").table(
        s["merged_from"], columns=["batch", "micrographs", "particles", "report"]
    )
    report.write(out, summary=summary)


# --- extract ------------------------------------------------------------------------------


def _merge_extract(folders: list[Path], out: Path, seed: int) -> dict:
    """Particles of the batches (one box for all) as one extract folder: particles.star under one
    optics table, the stacks, particles.cs over all particles, summary and report."""
    from cryoflow.io import StarTable, atomic_dir, write_table
    from cryoflow.picking.cryosparc import particles_cs, write_cs
    from cryoflow.picking.extract import GALLERY, STACK_DIR

    summaries = [_read_json(f / "summary.json") for f in folders]
    for key in ("box", "window", "bin", "phase_flipped", "ramp_removed", "dtype"):
        values = {repr(s.get(key)) for s in summaries}
        if len(values) > 1:
            raise CryoflowError(
                folders[0].parent,
                f"the batches were extracted with different {key} ({sorted(values)}); use one for all",
            )
    particles, counts = concat_tables([f / "particles.star" for f in folders], "particles")
    shapes: dict[str, tuple[int, int]] = {}
    for folder in folders:
        cs = np.load(folder / "particles.cs", allow_pickle=False)
        for name, shape in zip(cs["location/micrograph_path"], cs["location/micrograph_shape"], strict=True):
            shapes[name.decode()] = (int(shape[0]), int(shape[1]))
    table = particles.table
    if not len(table):
        raise CryoflowError(folders[0].parent, f"no particle was extracted in any of the {len(folders)} batches")
    # the optics groups the particles use, as one extract job writes them (an empty batch lists its micrographs')
    used = set(table["rlnOpticsGroup"].astype(int))
    optics = particles.optics[particles.optics["rlnOpticsGroup"].isin(used)].reset_index(drop=True)
    first = next(s for s, n in zip(summaries, counts, strict=True) if n)
    batches = []
    with atomic_dir(out) as tmp:
        seen: set[str] = set()
        for folder, s, count in zip(folders, summaries, counts, strict=True):
            for stack in (folder / STACK_DIR).rglob("*.mrcs") if (folder / STACK_DIR).is_dir() else []:
                rel = stack.relative_to(folder).as_posix()
                if rel in seen:
                    raise CryoflowError(stack, "the same micrograph's stack in two batches")
                seen.add(rel)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(stack, tmp / rel)
            _copy_report(folder, tmp / "batches" / folder.name)
            batches.append(
                {
                    "batch": folder.name,
                    "micrographs": s.get("micrographs"),
                    "particles": count,
                    "report": f"batches/{folder.name}/report.html" if (folder / "report.html").is_file() else None,
                }
            )
        write_table(tmp / "particles.star", StarTable(optics, table, "particles"))
        write_cs(tmp / "particles.cs", particles_cs(table, optics, shapes, seed=seed))
        per_mic = [r for s in summaries for r in s.get("per_micrograph", [])]
        seconds = sum(float(s.get("seconds") or 0.0) for s in summaries)
        summary = {
            **{k: first.get(k) for k in first if k not in ("per_micrograph", "unmatched_micrographs")},
            "micrographs": sum(int(s.get("micrographs", 0)) for s in summaries),
            "micrographs_with_particles": sum(int(s.get("micrographs_with_particles", 0)) for s in summaries),
            "n_picked": _sum(summaries, "n_picked"),
            "n_particles": len(table),
            "stage": {"micrographs": _sum(summaries, "stage", "micrographs"), "particles": len(table)},
            "dropped_at_edges": _sum(summaries, "dropped_at_edges"),
            "skipped_no_ctf": _sum(summaries, "skipped_no_ctf"),
            "unmatched_coordinates": _sum(summaries, "unmatched_coordinates"),
            "unmatched_micrographs": {
                k: v for s in summaries for k, v in (s.get("unmatched_micrographs") or {}).items()
            },
            "seconds": seconds,
            "particles_per_second": len(table) / max(seconds, 1e-9),
            "per_micrograph": per_mic,
            "merged_from": batches,
        }
        gallery, captions, average = _extract_gallery(tmp, table, per_mic, first["box"], GALLERY)
        from cryoflow.picking.extract_report import write_report

        write_report(tmp, summary, gallery, captions, average)
    return summary


def _extract_gallery(folder: Path, table: pd.DataFrame, per_mic: list[dict], box: int, size: int):
    """The report's gallery (the particles one extract job shows: the first few of each micrograph in
    order) and the average of every particle, read from the merged stacks."""
    import mrcfile

    order = len(per_mic)
    gallery, captions = [], []
    total = np.zeros((box, box), dtype=np.float64)
    n = 0
    stacks = table["rlnImageName"].astype(str).str.split("@", n=1).str[1]
    for rel, name in dict.fromkeys(zip(stacks, table["rlnMicrographName"].astype(str), strict=True)):
        with mrcfile.mmap(folder / rel, mode="r", permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32).reshape(-1, box, box)
            total += data.sum(0, dtype=np.float64)
            n += len(data)
            if len(gallery) < size:
                take = min(len(data), max(1, size // max(order, 1)), size - len(gallery))
                gallery.extend(data[:take].copy())
                captions.extend(f"{Path(name).stem} #{j + 1}" for j in range(take))
    return gallery, captions, (total / max(n, 1)).astype(np.float32)
