"""Local maxima of a score map, with a minimum distance and an edge margin.

A pixel is a peak when it is the largest within a square window of half-width
``min_distance`` (one max-pool, no loop over candidates), so no two peaks are closer
than ``min_distance`` along both axes: the duplicate removal of a picker. Positions are
refined to sub-pixel precision by a parabola through the peak and its neighbours.
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


def find_peaks(
    score: torch.Tensor,
    min_distance: float,
    margin: float = 0.0,
    floor: float = -np.inf,
    mask: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of ``score`` ``(h, w)``.

    ``min_distance`` and ``margin`` in pixels of the map; ``floor``: peaks at or below it
    are dropped; ``mask``: ``(h, w)`` bool, peaks where it is False are dropped.
    Returns ``(yx, values)``: ``(n, 2)`` float64 positions [y, x] and ``(n,)`` scores,
    sorted by decreasing score.
    """
    pooled = max_filter(score, max(1, int(round(min_distance))))
    is_peak = (score == pooled) & (score > floor)
    m = int(np.ceil(margin))
    if m > 0:
        is_peak[:m] = False
        is_peak[-m:] = False
        is_peak[:, :m] = False
        is_peak[:, -m:] = False
    is_peak[0] = is_peak[-1] = False
    is_peak[:, 0] = is_peak[:, -1] = False
    if mask is not None:
        is_peak &= mask
    ys, xs = torch.nonzero(is_peak, as_tuple=True)
    values = score[ys, xs]
    dy = _parabola(score[ys - 1, xs], values, score[ys + 1, xs])
    dx = _parabola(score[ys, xs - 1], values, score[ys, xs + 1])
    order = torch.argsort(values, descending=True)
    yx = torch.stack([ys + dy, xs + dx], dim=1)[order]
    return yx.double().cpu().numpy(), values[order].double().cpu().numpy()


def _parabola(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Offset (-0.5..0.5) of the vertex of the parabola through three samples."""
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / torch.where(curvature < 0, curvature, torch.full_like(curvature, -1e12))
    return offset.clamp(-0.5, 0.5)
