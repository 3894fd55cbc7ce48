"""Scores of a classification against the simulator's truth (benchmark and tests).

Works on a ``particles.star`` table written by ``classify2d`` from a stack made by
:func:`cryoflow.simulate.stack.simulate_stack` (truth columns ``cfSpecies``, ``cfIsJunk``,
``cfTrueRot/Tilt/Psi``, ``cfTrueOriginX/YAngst``).

- **Purity** of good particles: a particle is pure when it has its class's dominant
  species and its viewing direction lies within ``tolerance`` degrees of the class's
  central view (the member direction with the most members of that species within
  ``tolerance``). Junk is left out of this figure and scored separately (the fraction of
  junk in classes whose majority is junk).
- **In-plane angle error** of pure particles: the estimated rlnAnglePsi minus the true
  in-plane angle relative to the class's central view, after removing the circular mean
  per class (a class average may sit at any in-plane angle).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cryoflow.simulate.rotations import euler_to_matrix


def _wrap(deg: np.ndarray) -> np.ndarray:
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


def _directions(table: pd.DataFrame) -> np.ndarray:
    rot = np.radians(table["cfTrueRot"].to_numpy(float))
    tilt = np.radians(table["cfTrueTilt"].to_numpy(float))
    return np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)


def score_classes(table: pd.DataFrame, tolerance: float = 15.0) -> dict:
    """Purity, junk separation and in-plane angle errors (see the module doc). Returns a dict
    with ``purity``, ``junk_in_junk_classes``, ``angle_error_median``/``p90``/``within_5``
    (degrees / fraction), ``per_particle`` (a DataFrame: pure flag, angle error, junk flag and
    ``twist``, the true in-plane angle relative to the class's central view, degrees)."""
    klass = table["rlnClassNumber"].to_numpy()
    junk = table["cfIsJunk"].to_numpy().astype(bool) | ~np.isfinite(table["cfTrueTilt"].to_numpy(float))
    species = table["cfSpecies"].astype(str).to_numpy()
    dirs = _directions(table)
    cos_tol = np.cos(np.radians(tolerance))
    pure = np.zeros(len(table), dtype=bool)
    centre_of = np.full(len(table), -1)
    junk_classes = set()
    for k in np.unique(klass):
        members = np.flatnonzero(klass == k)
        if junk[members].mean() > 0.5:
            junk_classes.add(k)
        good = members[~junk[members]]
        if len(good) == 0:
            continue
        names, counts = np.unique(species[good], return_counts=True)
        main = good[species[good] == names[counts.argmax()]]
        near = (dirs[main] @ dirs[main].T) >= cos_tol
        centre = main[near.sum(1).argmax()]
        ok = main[(dirs[main] @ dirs[centre]) >= cos_tol]
        pure[ok] = True
        centre_of[ok] = centre
    # in-plane angle relative to the class's central view: twist of R_c^T R about z
    err = np.full(len(table), np.nan)
    twist_all = np.full(len(table), np.nan)
    idx = np.flatnonzero(pure)
    if len(idx):
        ang = torch.tensor(table[["cfTrueRot", "cfTrueTilt", "cfTruePsi"]].to_numpy(float), dtype=torch.float64)
        rmat = euler_to_matrix(ang)
        c_ang = ang[centre_of[idx]].clone()
        c_ang[:, 2] = 0.0
        q = euler_to_matrix(c_ang).transpose(-1, -2) @ rmat[idx]
        twist = np.degrees(torch.atan2(q[:, 1, 0] - q[:, 0, 1], q[:, 0, 0] + q[:, 1, 1]).numpy())
        twist_all[idx] = twist
        d = _wrap(table["rlnAnglePsi"].to_numpy(float)[idx] - twist)
        for k in np.unique(klass[idx]):
            sel = klass[idx] == k
            mean = np.degrees(np.angle(np.exp(1j * np.radians(d[sel])).mean()))
            err[idx[sel]] = np.abs(_wrap(d[sel] - mean))
    good_total = int((~junk).sum())
    n_junk = int(junk.sum())
    errors = err[np.isfinite(err)]
    return {
        "purity": float(pure.sum() / good_total) if good_total else float("nan"),
        "junk_in_junk_classes": float(np.isin(klass[junk], list(junk_classes)).mean()) if n_junk else float("nan"),
        "angle_error_median": float(np.median(errors)) if len(errors) else float("nan"),
        "angle_error_p90": float(np.percentile(errors, 90)) if len(errors) else float("nan"),
        "angle_within_5": float((errors <= 5).mean()) if len(errors) else float("nan"),
        "per_particle": pd.DataFrame({"pure": pure, "angle_error": err, "junk": junk, "twist": twist_all}),
    }
