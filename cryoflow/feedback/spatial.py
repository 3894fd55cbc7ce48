"""Predicted quality of holes not yet imaged: a kernel smoother over stage positions, shrunk to its square.

Model (all qualities in [0, 1], the probability that an exposure there is good):

- grid mean ``g``: the mean observed hole quality, with ``prior_weight`` pseudo-holes at 0.5;
- square mean ``μ_s = (Σ y_i + k g) / (n_s + k)``: the square's observed holes shrunk towards
  ``g`` with ``k = shrinkage`` pseudo-holes, so one bad hole does not condemn a square;
- hole ``p(x) = μ_s + Σ w_i (y_i - μ_s) / (Σ w_i + λ)``, ``w_i = exp(-d_i² / 2ℓ²)`` over the
  square's imaged holes at distance ``d_i`` (µm), ``ℓ = length_um``, ``λ = nugget``: near an
  imaged hole the prediction follows it (ice thickness varies smoothly, thicker near the
  bars), far from all it is the square's mean. This is the posterior mean of a Gaussian
  process with a squared-exponential kernel, approximated by Nadaraya-Watson weights.

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpatialModel:
    """Hyper-parameters (units: µm for ``length_um``, pseudo-holes for the weights)."""

    shrinkage: float = 3.0
    length_um: float = 4.5
    nugget: float = 1.0
    prior_weight: float = 2.0

    def grid_mean(self, values: np.ndarray) -> float:
        """Mean hole quality over the grid, with ``prior_weight`` pseudo-holes at 0.5."""
        values = np.asarray(values, dtype=float)
        return float((values.sum() + 0.5 * self.prior_weight) / (len(values) + self.prior_weight))

    def square_mean(self, values: np.ndarray, grid_mean: float) -> float:
        """Posterior mean quality of a square from its observed hole qualities."""
        values = np.asarray(values, dtype=float)
        return float((values.sum() + self.shrinkage * grid_mean) / (len(values) + self.shrinkage))

    def predict(
        self, targets_xy: np.ndarray, observed_xy: np.ndarray, observed: np.ndarray, square_mean: float
    ) -> np.ndarray:
        """Predicted quality of targets ``(T, 2)`` µm in a square with holes ``(N, 2)`` of quality ``(N,)``.

        Observations with a non-finite position inform the square mean only.
        """
        targets_xy = np.asarray(targets_xy, dtype=float).reshape(-1, 2)
        out = np.full(len(targets_xy), square_mean)
        observed_xy = np.asarray(observed_xy, dtype=float).reshape(-1, 2)
        ok = np.isfinite(observed_xy).all(1)
        tok = np.isfinite(targets_xy).all(1)
        if not ok.any() or not tok.any():
            return out
        d2 = ((targets_xy[tok, None, :] - observed_xy[None, ok, :]) ** 2).sum(-1)
        w = np.exp(-d2 / (2 * self.length_um**2))
        resid = np.asarray(observed, dtype=float)[ok] - square_mean
        out[tok] = square_mean + (w @ resid) / (w.sum(1) + self.nugget)
        return np.clip(out, 0.0, 1.0)


def predict_targets(model: SpatialModel, targets, holes) -> tuple[np.ndarray, dict[str, float], float]:
    """Predicted quality of every target and each square's mean.

    ``targets``: DataFrame with ``square``, ``x_um``, ``y_um``; ``holes``: imaged holes with
    ``square``, ``x_um``, ``y_um``, ``quality``. Returns ``(p per target, {square: mean}, grid mean)``.
    """
    g = model.grid_mean(holes["quality"].to_numpy())
    p = np.full(len(targets), g)
    means: dict[str, float] = {}
    by_square = {s: h for s, h in holes.groupby("square", sort=False)}
    for square, idx in targets.groupby("square", sort=False).indices.items():
        h = by_square.get(square)
        if h is None:
            means[square] = g
            continue
        mu = model.square_mean(h["quality"].to_numpy(), g)
        means[square] = mu
        p[idx] = model.predict(
            targets.iloc[idx][["x_um", "y_um"]].to_numpy(), h[["x_um", "y_um"]].to_numpy(), h["quality"].to_numpy(), mu
        )
    return p, means, g
