"""Assess every micrograph of a CTF-step output and write the step's outputs.

Inputs: ``micrographs_ctf.star`` (fitted) and, when present beside it,
``micrographs_ctf_failed.star`` (no CTF fit: those get a probability and a reason too).
Images are read from ``rlnMicrographName`` (resolved as RELION does, see
:func:`cryoflow.io.resolve_star_path`; ``images`` is a further folder to look in).

Outputs in ``out`` (built in a temporary folder beside it and renamed when complete):

- ``micrographs_good.star`` / ``micrographs_rejected.star``: RELION 3.1 ``data_optics`` +
  ``data_micrographs`` with every input column, plus ``cryoflowMicassessPGood`` (calibrated
  probability that the micrograph is good), ``cryoflowMicassessReason`` (good,
  contamination, empty, no_particles, crystalline_ice, thick_ice, carbon, poor_ctf),
  ``cryoflowMicassessDetail`` (the finer reason when the model is confident: crack, drift,
  aggregation, crowding, astigmatism), ``cryoflowMicassessEvidence`` (the three inputs
  that pushed the call most, ``name:+log-odds``; ``cnn`` is the image network).
- ``summary.json``, ``report.html`` + ``figures/``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoflow.errors import CryoflowError
from cryoflow.micassess.data import acquisition_key
from cryoflow.micassess.features import (
    FEATURES,
    GROUP,
    REASONS,
    add_set_features,
    feature_vector,
    ice_scale,
    inputs_from_image,
    tabular_ctf,
    tiles,
)
from cryoflow.micassess.model import MicAssessModel

REQUIRED = ("rlnMicrographName", "rlnCtfFigureOfMerit")
COLUMNS = {
    "p_good": "cryoflowMicassessPGood",
    "reason": "cryoflowMicassessReason",
    "detail": "cryoflowMicassessDetail",
    "evidence": "cryoflowMicassessEvidence",
}
DETAIL_SHARE = 0.6  # the finer reason is given when it holds this share of its group


@dataclass
class Prediction:
    """Per micrograph: P(good), reason group, finer reason, evidence, and the arrays behind them."""

    p_good: np.ndarray
    reason: list[str]
    detail: list[str]
    evidence: list[str]
    fine: np.ndarray  # (N, C) calibrated fine-class probabilities
    contributions: np.ndarray  # (N, F + 1)


def predict(
    model: MicAssessModel,
    x: np.ndarray,
    tile_sets: list[np.ndarray],
    spectra: np.ndarray,
    threshold: float,
    device="cpu",
) -> Prediction:
    """Batch prediction from feature vectors ``(N, F)``, CNN tiles and spectra ``(N, 2, K)``."""
    lin = model.linear.logits(x)
    cnn = model.cnn_log_proba(tile_sets, spectra, device)
    p = model.combine(lin, cnn)
    groups = model.group_proba(p)
    g_good = REASONS.index("good")
    p_good = groups[:, g_good]
    bad = groups.copy()
    bad[:, g_good] = -1
    top_group = bad.argmax(1)
    reasons, details, targets = [], [], []
    for i in range(len(p)):
        group = REASONS[top_group[i]]
        members = [j for j, c in enumerate(model.classes) if GROUP[c] == group]
        best = max(members, key=lambda j: p[i, j])
        targets.append(best)
        if p_good[i] >= threshold:
            reasons.append("good")
            details.append("good")
        else:
            reasons.append(group)
            share = p[i, best] / max(groups[i, top_group[i]], 1e-12)
            details.append(model.classes[best] if share >= DETAIL_SHARE else group)
    contrib = model.contributions(x, lin, cnn, np.array(targets))
    names = list(FEATURES) + ["cnn"]
    evidence = []
    for i in range(len(p)):
        c = contrib[i] if p_good[i] < threshold else -contrib[i]  # what pushed towards the call made
        top = np.argsort(-c)[:3]
        sign = 1 if p_good[i] < threshold else -1
        evidence.append(",".join(f"{names[j]}:{sign * c[j]:+.2f}" for j in top))
    return Prediction(p_good, reasons, details, evidence, p, contrib)


def knee_threshold(p_good: np.ndarray) -> float:
    """The emptiest point of the P(good) histogram between 0.2 and 0.8 (0.5 if none stands out)."""
    if len(p_good) < 10:
        return 0.5
    hist, edges = np.histogram(p_good, bins=20, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    sel = (centres > 0.2) & (centres < 0.8)
    smooth = np.convolve(hist, [1, 1, 1], mode="same")[sel]
    candidates = centres[sel][smooth == smooth.min()]
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


def _voltages(star) -> pd.Series:
    """Per row of a STAR table (same index): the voltage (kV) of its optics group (NaN when not given)."""
    try:
        return star.optics_for_rows()["rlnVoltage"].astype(float)
    except Exception:  # no optics table or no voltage column: the pixel size alone keys the setting
        return pd.Series(math.nan, index=star.table.index)


def _read_inputs(star_path: Path):
    from cryoflow.io import read_table, require_columns

    fitted = read_table(star_path, "micrographs")
    if len(fitted.table) or len(fitted.table.columns):  # an empty table: every micrograph failed the CTF fit
        require_columns(fitted.table, REQUIRED, star_path, "micrographs")
    failed_path = star_path.with_name("micrographs_ctf_failed.star")
    failed = None
    if failed_path.exists() and failed_path != star_path:
        failed = read_table(failed_path, "micrographs")
        require_columns(failed.table, ["rlnMicrographName"], failed_path, "micrographs")
    return fitted, failed, failed_path


def _session_thickness(rows: list[dict], intensities: Sequence[float]) -> dict:
    """``relative_ice_thickness`` feature values of more fitted micrographs of the session from
    their mean intensities, against the reference of ``rows`` (``I_ref = I exp(rel)`` of a row
    with both columns), under that row's acquisition setting (a live session has one)."""
    values = np.asarray(intensities, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    for r in rows if len(values) else ():
        i, rel = r.get("cryoflowMeanIntensity", np.nan), r.get("cryoflowRelativeIceThickness", np.nan)
        if r["_fitted"] and np.isfinite(i) and i > 0 and np.isfinite(rel):
            scale = ice_scale(r["_voltage"])
            return {acquisition_key(r): np.clip(scale * np.log(i * np.exp(rel) / values), -1, 3)}
    return {}


def run_micassess(
    micrographs: str | os.PathLike,
    out: str | os.PathLike,
    threshold: float | str | None = None,
    model: str | os.PathLike | MicAssessModel | None = None,
    device: torch.device | str = "cpu",
    images: str | os.PathLike | None = None,
    report: bool = True,
    loaded: dict[str, np.ndarray] | None = None,
    session_intensities: Sequence[float] = (),
) -> dict:
    """Assess the micrographs of a CTF-step STAR file and write the outputs into ``out``.

    ``threshold``: P(good) below which a micrograph is rejected; ``None``/``"auto"`` the
    model's calibrated 0.5, ``"knee"`` the emptiest point of this dataset's P(good)
    histogram. ``out`` must not exist or be empty. Returns the summary. ``report``: False writes
    ``summary.json`` without ``report.html`` and its figures (``cryoflow watch``). ``loaded``:
    micrographs already read (``os.path.realpath`` of the file -> image, as ``run_ctf`` fills
    it), used instead of reading those files again. ``session_intensities``: mean intensities of
    more fitted micrographs of the same session (``cryoflow watch``'s earlier batches, as
    ``run_ctf`` takes them), so ``ice_thickness_vs_median`` is measured against the session's
    median, not a small batch's.
    """
    from cryoflow.io import StarTable, atomic_dir, find_image, read_micrograph, write_table
    from cryoflow.micassess.data import add_relative_thickness, relative_thickness_per_setting
    from cryoflow.progress import progress

    star_path = Path(micrographs)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    if isinstance(threshold, str) and threshold not in ("auto", "knee"):
        try:
            threshold = float(threshold)
        except ValueError:
            raise CryoflowError(None, f"--threshold must be auto, knee or a probability, not {threshold!r}") from None
    if isinstance(threshold, float) and not 0 < threshold < 1:
        raise CryoflowError(None, f"--threshold must be a probability between 0 and 1, got {threshold}")
    device = torch.device(device)
    fitted, failed, failed_path = _read_inputs(star_path)
    model = model if isinstance(model, MicAssessModel) else MicAssessModel.load(model)
    images = Path(images) if images else None

    tables = [(fitted, True, star_path)] + ([(failed, False, failed_path)] if failed is not None else [])
    rows, sources = [], []
    for table, ok, path in tables:
        sizes = table.pixel_size()
        volts = _voltages(table)
        for i, row in table.table.iterrows():
            r = row.to_dict()
            r["_fitted"] = ok
            r["_apix"] = float(sizes[i])
            r["_voltage"] = float(volts[i])
            rows.append(r)
            sources.append(path)
    if not rows:
        raise CryoflowError(star_path, "data_micrographs holds no micrographs")
    # intensities compare only within one acquisition setting (detector, binning): a mixed set
    # gets its relative ice thickness per setting, not over all (see relative_thickness_per_setting)
    if not relative_thickness_per_setting(rows) and any(
        not np.isfinite(r.get("cryoflowRelativeIceThickness", np.nan)) for r in rows if r["_fitted"]
    ):
        add_relative_thickness(rows)

    t0 = time.perf_counter()
    feats, tile_sets, spectra, smalls, bases = [], [], [], [], []
    for r, src in zip(progress(rows, desc="micassess", unit="mic"), sources, strict=True):
        path = find_image(str(r["rlnMicrographName"]), src, images, bases)
        image = loaded.get(os.path.realpath(path)) if loaded else None
        if image is None:
            image, _ = read_micrograph(path, pixel_size=r["_apix"], mmap=True)  # features read, never write
        inp = inputs_from_image(image, r["_apix"], device)
        feats.append(feature_vector(tabular_ctf(r, r["_apix"], r["_fitted"]), inp["stats"]))
        tile_sets.append(tiles(inp["cnn"].astype(np.float32)))
        spectra.append(inp["spectrum"])
        smalls.append(inp["cnn"][0])
        r["_path"] = path
    x = add_set_features(
        np.stack(feats), [acquisition_key(r) for r in rows], _session_thickness(rows, session_intensities)
    )
    spectra = np.stack(spectra)
    auto = threshold in (None, "auto")
    t = model.threshold if auto else 0.5 if threshold == "knee" else float(threshold)
    pred = predict(model, x, tile_sets, spectra, t, device)
    if threshold == "knee":
        t = knee_threshold(pred.p_good)
        pred = predict(model, x, tile_sets, spectra, t, device)
    seconds = time.perf_counter() - t0
    how = (
        "calibrated 0.5" if auto else "knee of the P(good) histogram" if threshold == "knee" else "given (--threshold)"
    )

    out_rows = []
    for r, p, reason, detail, ev in zip(rows, pred.p_good, pred.reason, pred.detail, pred.evidence, strict=True):
        keep = {k: v for k, v in r.items() if not k.startswith("_")}
        keep.update(
            {
                COLUMNS["p_good"]: round(float(p), 5),
                COLUMNS["reason"]: reason,
                COLUMNS["detail"]: detail,
                COLUMNS["evidence"]: ev,
            }
        )
        out_rows.append(keep)
    table = pd.DataFrame(out_rows)
    good = table[COLUMNS["reason"]] == "good"
    optics = fitted.optics
    if failed is not None:
        optics = pd.concat([optics, failed.optics]).drop_duplicates("rlnOpticsGroup").reset_index(drop=True)
    with atomic_dir(out) as tmp:
        write_table(tmp / "micrographs_good.star", StarTable(optics, table[good].reset_index(drop=True), "micrographs"))
        write_table(
            tmp / "micrographs_rejected.star", StarTable(optics, table[~good].reset_index(drop=True), "micrographs")
        )
        if report:
            from cryoflow.micassess.report import write_report

            summary = write_report(
                tmp,
                table=table,
                rows=rows,
                pred=pred,
                smalls=smalls,
                threshold=t,
                how=how,
                model=model,
                seconds=seconds,
                device=device,
            )
        else:
            from cryoflow.report.builder import write_summary

            summary = {"step": "micassess", **summarize(rows, pred, t, how, model, seconds)}
            write_summary(tmp / "summary.json", summary)
    return summary


def summarize(
    rows: list[dict], pred: Prediction, threshold: float, how: str, model: MicAssessModel, seconds: float
) -> dict:
    """The step's ``summary.json`` (written with or without the report)."""
    n = len(rows)
    reasons = list(pred.reason)
    counts = {r: reasons.count(r) for r in REASONS}
    good_no_ctf = int(sum(1 for r, row in zip(reasons, rows, strict=True) if r == "good" and not row["_fitted"]))
    return {
        "micrographs": n,
        "good": counts["good"],
        "rejected": n - counts["good"],
        "good_without_ctf_fit": good_no_ctf,
        "threshold": float(threshold),
        "threshold_method": how,
        "counts_per_reason": counts,
        "seconds_per_micrograph": seconds / max(n, 1),
        "model": {k: (model.meta or {}).get(k) for k in ("trained", "simulated_micrographs", "fine_tuned")},
        "outputs": {"good": "micrographs_good.star", "rejected": "micrographs_rejected.star"},
    }


def counts_by_reason(reasons: list[str]) -> dict[str, int]:
    return {r: int(sum(1 for x in reasons if x == r)) for r in REASONS}
