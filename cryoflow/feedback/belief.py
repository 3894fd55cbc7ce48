"""What the planner believes about a square's quality: a discrete posterior over its good fraction.

A square's quality ``q`` (the fraction of its exposures that are good) is unknown until
holes are imaged. On real grids the distribution of ``q`` over squares is wide and often
bimodal: many squares are unusable (broken, dry, thick, contaminated) and the good ones
are mostly good (see :mod:`cryoflow.simulate.grid_model`). The belief is kept on a grid of
values :data:`Q` (a histogram, no conjugacy needed):

- prior of a square: a kernel density over the estimated qualities of the squares seen so
  far, each weighted by ``1 + neighbour`` (squares near it on the grid count more: blotting
  leaves ice gradients, so nearby squares are alike), plus ``pseudo`` squares spread
  uniformly (any quality stays possible);
- likelihood of an imaged hole with score ``y`` (P(good) from micassess):
  ``q^y (1 - q)^(1 - y)``, a Bernoulli with a soft outcome.
"""

from __future__ import annotations

import numpy as np

Q = np.linspace(0.025, 0.975, 20)  # the values a square's good fraction may take


def prior(
    seen: np.ndarray, weights: np.ndarray | None = None, pseudo: float = 2.0, bandwidth: float = 0.08
) -> np.ndarray:
    """Prior over :data:`Q` from the estimated qualities ``seen`` ``(S,)`` of other squares (sums to 1)."""
    seen = np.asarray(seen, dtype=float)
    w = np.ones(len(seen)) if weights is None else np.asarray(weights, dtype=float)
    density = np.full(len(Q), pseudo / len(Q))
    if len(seen):
        k = np.exp(-((Q[None, :] - seen[:, None]) ** 2) / (2 * bandwidth**2))
        k /= k.sum(1, keepdims=True)
        density = density + (w[:, None] * k).sum(0)
    return density / density.sum()


def posterior(prior_q: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Posterior over :data:`Q` after holes with scores ``(N,)`` in [0, 1] (sums to 1)."""
    y = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    log_l = (y[:, None] * np.log(Q[None, :]) + (1 - y[:, None]) * np.log1p(-Q[None, :])).sum(0)
    post = prior_q * np.exp(log_l - log_l.max())
    return post / post.sum()


def neighbour_weights(xy: np.ndarray, seen_xy: np.ndarray, length_um: float) -> np.ndarray:
    """Weights ``exp(-d² / 2ℓ²)`` ``(S,)`` of squares at ``seen_xy`` ``(S, 2)`` µm seen from ``xy`` ``(2,)``; 0 where unknown."""
    seen_xy = np.asarray(seen_xy, dtype=float).reshape(-1, 2)
    d2 = ((seen_xy - np.asarray(xy, dtype=float)[None, :]) ** 2).sum(1)
    return np.nan_to_num(np.exp(-d2 / (2 * length_um**2)), nan=0.0)
