"""Local maxima of a score map, with a minimum distance and an edge margin.

A peak is a local maximum of the map within a square window of half-width
``min_distance / 2`` (one max-pool, no loop over pixels; a particle's own bumps merge),
refined to sub-pixel precision by a parabola through it and its neighbours and kept when
the refined position lies at least ``margin`` from the map's edge; then non-maximum
suppression by the distance between peaks: in order of decreasing score, a peak is kept
unless a kept peak lies closer than ``min_distance`` (the duplicate removal of a picker;
rounds over all peaks at once, :func:`suppress`), so no two are closer, in any direction.

A peak that is not the maximum within ``min_distance`` along both axes lies on the flank of
a stronger peak. Such peaks are only returned on request (``flanks``), flagged: most are the
bumps a crowded field leaves between particles (a few noise standard deviations), but some
are particles touching a stronger one, whose slope reaches into their window (measured on
the simulated 250 Å species: 8-18% of the particles); the caller tells them apart by score
(:func:`cryoflow.picking.pick.run_pick`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def max_filter(x: torch.Tensor, half: int) -> torch.Tensor:
    """Maximum of ``x`` ``(h, w)`` over a square window of half-width ``half`` pixels.

    A square window is separable: two 1D max-pools, O(half) per pixel.
    """
    size = 2 * half + 1
    out = F.max_pool2d(x[None, None], (1, size), stride=1, padding=(0, half))
    return F.max_pool2d(out, (size, 1), stride=1, padding=(half, 0))[0, 0]


def suppress(yx: np.ndarray, values: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression: bool ``(n,)``, True for the peaks kept.

    Peaks ``yx`` ``(n, 2)`` are taken in order of decreasing ``values``; one is kept unless a
    kept peak lies closer than ``min_distance`` (same units as ``yx``). Computed in rounds (a
    peak better than every undecided neighbour is kept and its neighbours dropped), which
    gives the same result as the sequential loop.
    """
    from scipy.spatial import cKDTree

    n = len(yx)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    pairs = cKDTree(yx).query_pairs(float(min_distance), output_type="ndarray")
    if len(pairs) == 0:
        return np.ones(n, dtype=bool)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -np.asarray(values)))] = np.arange(n)  # 0: the best
    a, b = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    open_ = np.ones(n, dtype=bool)
    while open_.any():
        live = open_[a] & open_[b]
        best = np.full(n, n, dtype=np.int64)
        np.minimum.at(best, a[live], rank[b[live]])
        chosen = open_ & (rank < best)
        keep |= chosen
        open_ &= ~chosen
        open_[b[chosen[a]]] = False
    return keep


def find_peaks(
    score: torch.Tensor,
    min_distance: float,
    margin: float = 0.0,
    floor: float = -np.inf,
    mask: torch.Tensor | None = None,
    flanks: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of ``score`` ``(h, w)`` (see the module doc).

    ``min_distance`` and ``margin`` in pixels of the map; ``floor``: peaks at or below it
    are dropped; ``mask``: ``(h, w)`` bool, peaks where it is False are dropped.
    Returns ``(yx, values)``: ``(n, 2)`` float64 positions [y, x] and ``(n,)`` scores,
    sorted by decreasing score; no two closer than ``min_distance``. Only the peaks that are
    the maximum of the map within ``min_distance`` along both axes, unless ``flanks``: then
    also the peaks on a stronger peak's flank, and a third array ``(n,)`` bool, True for those.
    """
    full = max(1, int(round(min_distance)))
    if flanks:  # the local maxima, and (windows compose) the maximum within min_distance
        half = max(1, int(round(min_distance / 2)))
        pooled = max_filter(score, half)
        pooled_full = max_filter(pooled, full - half) if full > half else pooled
    else:  # only the maxima within min_distance
        pooled = pooled_full = max_filter(score, full)
    is_peak = (score == pooled) & (score > floor)
    is_peak[0] = is_peak[-1] = False  # the parabola needs both neighbours
    is_peak[:, 0] = is_peak[:, -1] = False
    if mask is not None:
        is_peak &= mask
    ys, xs = torch.nonzero(is_peak, as_tuple=True)
    values = score[ys, xs]
    flank = (values < pooled_full[ys, xs]).cpu().numpy()
    dy = _parabola(score[ys - 1, xs], values, score[ys + 1, xs])
    dx = _parabola(score[ys, xs - 1], values, score[ys, xs + 1])
    yx = torch.stack([ys + dy, xs + dx], dim=1).double().cpu().numpy()
    values = values.double().cpu().numpy()
    # the margin on the refined position: its distance to the map's edge (pixel edges at -0.5, size - 0.5)
    h, w = score.shape
    keep = (yx >= margin - 0.5).all(1) & (yx[:, 0] <= h - 0.5 - margin) & (yx[:, 1] <= w - 0.5 - margin)
    if not flanks:
        keep &= ~flank
    yx, values, flank = yx[keep], values[keep], flank[keep]
    keep = suppress(yx, values, min_distance)
    order = np.argsort(-values[keep], kind="stable")
    yx, values, flank = yx[keep][order], values[keep][order], flank[keep][order]
    return (yx, values, flank) if flanks else (yx, values)


def _parabola(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Offset (-0.5..0.5) of the vertex of the parabola through three samples."""
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / torch.where(curvature < 0, curvature, torch.full_like(curvature, -1e12))
    return offset.clamp(-0.5, 0.5)
