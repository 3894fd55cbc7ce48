"""Per-micrograph scores of a run folder, one row per micrograph.

Read from the steps' output files (the file contract in ARCHITECTURE.md):

- ``RUN/micassess/micrographs_good.star`` + ``micrographs_rejected.star``: ``p_good``
  (cryoflowMicassessPGood, calibrated probability of being good) and ``reason``
  (cryoflowMicassessReason); the CTF columns they carry over too;
- else ``RUN/ctf/micrographs_ctf.star`` (+ ``micrographs_ctf_failed.star``): no P(good); the
  quality then comes from the CTF fit alone (see :func:`ctf_quality`);
- ``RUN/pick/summary.json`` ``picks_per_micrograph``: particles picked;
- ``RUN/particles/micrographs_yield.star`` (``cryoflow particles score``): ``good_particles``,
  the particles the particle classifier kept: the micrograph's yield in what matters
  downstream.

Columns of the returned table: ``key`` (see :func:`names.micrograph_key`), ``name``,
``p_good``, ``reason``, ``ctf_resolution_A`` (rlnCtfMaxResolution, Å; NaN without a fit),
``ice`` (cryoflowRelativeIceThickness, relative units, larger is thicker), ``picks``
(NaN without a pick step), ``good_particles`` (NaN without a particle classifier) and ``quality`` (the score aggregated to holes and squares:
P(good) when micassess ran, else the CTF quality).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.feedback.names import micrograph_key

P_GOOD = "cryoflowMicassessPGood"
REASON = "cryoflowMicassessReason"
RESOLUTION = "rlnCtfMaxResolution"
ICE = "cryoflowRelativeIceThickness"
CTF_GOOD_A = 5.0  # a CTF fit to this resolution (Å) or better counts as fully good ...
CTF_BAD_A = 10.0  # ... and one to this or worse as bad (linear in between)


def ctf_quality(resolution_A: np.ndarray) -> np.ndarray:
    """Quality in [0, 1] from the CTF fit resolution (Å): 1 at <= 5 Å, 0 at >= 10 Å or no fit."""
    r = np.asarray(resolution_A, dtype=float)
    q = np.clip((CTF_BAD_A - r) / (CTF_BAD_A - CTF_GOOD_A), 0.0, 1.0)
    return np.where(np.isfinite(r), q, 0.0)


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    from cryoflow.io import read_table, require_columns

    table = read_table(path, "micrographs").table
    if len(table) or len(table.columns):
        require_columns(table, required, path, "micrographs")
    return table


def read_scores(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """The per-micrograph score table of run folder ``run`` and where each score came from.

    Raises :class:`CryoflowError` when the folder holds neither a micassess nor a CTF output,
    when a table lacks a needed column, or when no micrograph is found.
    """
    run = Path(run)
    if not run.is_dir():
        raise CryoflowError(run, "run folder not found")
    good = run / "micassess" / "micrographs_good.star"
    ctf = run / "ctf" / "micrographs_ctf.star"
    sources: dict[str, str] = {}
    if good.exists():
        rejected = good.with_name("micrographs_rejected.star")
        tables = [_read(good, ("rlnMicrographName", P_GOOD, REASON))]
        if rejected.exists():
            tables.append(_read(rejected, ("rlnMicrographName", P_GOOD, REASON)))
        table = pd.concat(tables, ignore_index=True)
        sources["p_good"] = str(good.relative_to(run))
    elif ctf.exists():
        tables = [_read(ctf, ("rlnMicrographName", RESOLUTION))]
        failed = ctf.with_name("micrographs_ctf_failed.star")
        if failed.exists():
            tables.append(_read(failed, ("rlnMicrographName",)))
        table = pd.concat(tables, ignore_index=True)
        sources["quality"] = f"{ctf.relative_to(run)} (CTF fit resolution: no micassess step)"
    else:
        raise CryoflowError(
            run, "holds no micassess/micrographs_good.star nor ctf/micrographs_ctf.star: not a cryoflow run folder?"
        )
    if not len(table):
        raise CryoflowError(run, "the run's micrograph tables hold no micrographs")
    names = table["rlnMicrographName"].astype(str)
    out = pd.DataFrame({"key": [micrograph_key(n) for n in names], "name": names})
    out["p_good"] = table[P_GOOD].astype(float).to_numpy() if P_GOOD in table else np.nan
    out["reason"] = table[REASON].astype(str).to_numpy() if REASON in table else "unknown"
    out["ctf_resolution_A"] = table[RESOLUTION].astype(float).to_numpy() if RESOLUTION in table else np.nan
    out["ice"] = table[ICE].astype(float).to_numpy() if ICE in table else np.nan
    if "p_good" in sources:
        out["quality"] = out["p_good"].fillna(0.0)
    else:
        out["quality"] = ctf_quality(out["ctf_resolution_A"].to_numpy())
        out["reason"] = np.where(out["quality"] >= 0.5, "good", "poor_ctf")
    out["picks"] = np.nan
    picks = _picks(run)
    if picks:
        out["picks"] = [picks.get(k, np.nan) for k in out["key"]]
        sources["picks"] = "pick/summary.json"
    out["good_particles"] = np.nan
    yields = _good_particles(run)
    if yields:
        out["good_particles"] = [yields.get(k, 0.0) for k in out["key"]]
        sources["good_particles"] = "particles/micrographs_yield.star"
    out = out.drop_duplicates("key").reset_index(drop=True)
    return out, sources


def _good_particles(run: Path) -> dict[str, float]:
    """``{micrograph key: good particles}`` from ``RUN/particles/micrographs_yield.star`` (empty when absent)."""
    path = run / "particles" / "micrographs_yield.star"
    if not path.exists():
        return {}
    table = _read(path, ("rlnMicrographName", "cfGoodParticles"))
    return {
        micrograph_key(str(n)): float(v)
        for n, v in zip(table["rlnMicrographName"], table["cfGoodParticles"], strict=True)
    }


def _picks(run: Path) -> dict[str, float]:
    """``{micrograph key: picks}`` from ``RUN/pick/summary.json`` (empty when absent)."""
    path = run / "pick" / "summary.json"
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CryoflowError(path, "is not valid JSON") from None
    per = summary.get("picks_per_micrograph") or {}
    return {micrograph_key(k): float(v) for k, v in per.items()}
