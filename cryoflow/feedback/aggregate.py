"""Per-micrograph scores aggregated to holes, squares and the grid.

``quality`` is the per-micrograph score of :mod:`cryoflow.feedback.scores` (P(good));
``good`` counts micrographs micassess calls good; ``ctf_resolution_A`` (Å) and ``ice``
(relative thickness) are medians; ``picks_per_micrograph`` is the mean number of picked
particles, ``good_particles_per_micrograph`` the mean number the particle classifier kept
(the yield; NaN without a ``particles`` step).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["grid", "square", "hole"]


def main_reason(reasons: pd.Series) -> str:
    """The most common reason other than ``good`` as ``reason (k/n)``, or ``""`` when all are good."""
    bad = reasons[reasons != "good"]
    if not len(bad):
        return ""
    top = bad.value_counts()
    return f"{top.index[0]} ({int(top.iloc[0])}/{len(reasons)})"


def _summarise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if "good_particles" not in df:
        df = df.assign(good_particles=np.nan)
    g = df.groupby(keys, sort=False)
    out = g.agg(
        x_um=("x_um", "mean"),
        y_um=("y_um", "mean"),
        micrographs=("key", "size"),
        good=("is_good", "sum"),
        quality=("quality", "mean"),
        ctf_resolution_A=("ctf_resolution_A", "median"),
        ice=("ice", "median"),
        picks_per_micrograph=("picks", "mean"),
        good_particles_per_micrograph=("good_particles", "mean"),
    ).reset_index()
    out["good"] = out["good"].astype(int)
    out["main_reason"] = g["reason"].apply(main_reason).to_numpy()
    return out


def per_micrograph(scores: pd.DataFrame, locations: pd.DataFrame) -> pd.DataFrame:
    """Scores joined with locations (both keyed by ``key``)."""
    df = scores.merge(locations, on="key", how="left")
    df["is_good"] = df["reason"] == "good"
    return df


def per_hole(mics: pd.DataFrame) -> pd.DataFrame:
    """One row per imaged hole."""
    return _summarise(mics, KEYS)


def per_square(mics: pd.DataFrame) -> pd.DataFrame:
    """One row per square with micrographs, plus ``holes_imaged`` and ``good_fraction``."""
    out = _summarise(mics, KEYS[:2])
    out["holes_imaged"] = mics.groupby(KEYS[:2], sort=False)["hole"].nunique().to_numpy()
    out["good_fraction"] = out["good"] / out["micrographs"]
    return out


def per_grid(mics: pd.DataFrame) -> dict:
    """Grid-wide figures (all grids together)."""
    n = len(mics)
    picks = mics["picks"].to_numpy(float)
    good = mics["good_particles"].to_numpy(float) if "good_particles" in mics else np.full(n, np.nan)
    return {
        "micrographs": n,
        "good": int(mics["is_good"].sum()),
        "good_fraction": float(mics["is_good"].mean()) if n else float("nan"),
        "mean_quality": float(mics["quality"].mean()) if n else float("nan"),
        "squares_imaged": int(mics.groupby(KEYS[:2]).ngroups),
        "holes_imaged": int(mics.groupby(KEYS).ngroups),
        "median_ctf_resolution_A": float(np.nanmedian(mics["ctf_resolution_A"]))
        if mics["ctf_resolution_A"].notna().any()
        else float("nan"),
        "picks_per_micrograph": float(np.nanmean(picks)) if np.isfinite(picks).any() else float("nan"),
        "good_particles_per_micrograph": float(np.nanmean(good)) if np.isfinite(good).any() else float("nan"),
    }
