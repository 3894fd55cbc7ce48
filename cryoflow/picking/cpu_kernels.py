"""Extraction's CPU kernels, compiled by numba: background normalization in two passes, and the split of rows
into even and odd samples for Fourier binning by 2.

**Normalization** (:func:`normalize_chunk`). The result is
:func:`particle_images.normalize_background`'s (a plane fitted by least squares to the
background ring and subtracted, then the background's standard deviation scaled to 1),
computed in two passes over each chunk of boxes instead of five, the second also summing the
images into the report's average and giving the header statistics' sum and sum of squares:

1. :func:`_moments` reads each box once: on the background ring (a 0/1 weight per pixel) the
   sums of ``v``, ``v x``, ``v y`` and ``v²``, with ``v`` the pixel less the box's first
   pixel (a shift that keeps the squares from being mostly the mean's: the plane fit is about
   the same value whatever the micrograph's offset). Sums run in float32 along a row (vector
   lanes) and in float64 over rows.
2. The plane's coefficients solve the normal equations (3x3, float64); the background's
   residual sum of squares is ``Σ v² - cᵀ (Dᵀ M v)`` (least squares), so no pass over the
   subtracted images is needed for the variance.
3. :func:`_apply` writes ``scale / std x ((image - shift) - plane)`` over each box (the plane
   about the shift, in the order written: a background far from zero keeps its digits, 1e-5
   from float64 least squares at an offset of 1e4 with noise of 1.5, where the torch passes
   are off by 2e-3), adds it to the running sum of images and sums the values and their
   squares.

Measured here on one core, chunks of six 288² boxes: normalization, the sum of images and the
header statistics take 36 µs per particle, against 97-106 µs for the torch passes (fit
product, plane subtraction, squares, product with the mask, scaling), a product for the sum
and the header's four reads (min, max, sum, sum of squares); with these two passes the header
reads the chunk only for its min and max. In ``cryoflow bench extract`` the user CPU time per
1,000 particles of box 288 fell from 0.30 to 0.16 s. A NaN or Inf in a box makes that whole
image NaN (the sums and the running total carry it: extraction checks the stack's
statistics); a flat background (zero variance) gives zeros, as in
:func:`particle_images.normalize_background`. The floating-point flags allow reordering sums
(vector lanes) but keep NaN and Inf semantics.

**Even and odd samples** (:func:`split_samples`). :func:`particle_images.halve` bins a row by
2 as the mean of its even samples and its odd ones moved by half a sample (an FFT pair): the
two come out contiguous from one pass over the rows, so that the FFT and the sum read
contiguous rows. Measured here on one core, per 4096² micrograph: the split takes 1.6 ms
(torch's strided copies 10-11 ms), and spares 1.3 ms of the FFT on strided samples and 2.4 ms
of the sum with strided samples; the whole halving takes 34.6-35.3 ms against 37.0-38.2 ms
(fastest of 25). In extraction with ``--bin 2`` (2 workers, 12 micrographs, 11 alternated
runs twice) the user CPU time fell from 0.295 to 0.275-0.283 s per 1,000 particles; the rates
moved less than the machine's own spread.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np

#: numba's fast-math flags without "no NaN / no Inf": sums may be reordered, a NaN still propagates.
_FLAGS = {"reassoc", "contract", "nsz", "arcp"}


def _compiled(function=None, *, reorder: bool = True):
    """``function`` compiled by numba (no Python objects, no GIL), cached on disk where a cache folder can be written.

    ``reorder``: sums may be reordered (:data:`_FLAGS`; vector lanes), else the arithmetic runs as
    written. The cache (next to this file, else the user's cache folder) spares each process the
    ~1 s of compiling; where neither can be written (a read-only install without a writable home)
    each process compiles once instead."""
    if function is None:
        return functools.partial(_compiled, reorder=reorder)
    options = {"fastmath": _FLAGS if reorder else _FLAGS - {"reassoc"}, "boundscheck": False, "nogil": True}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


class BackgroundFit(NamedTuple):
    """The fixed arrays of one box size and background radius (:func:`background_fit`)."""

    weights: np.ndarray  #: (B, B) float32: 1 on the background ring, 0 inside the circle
    offsets: np.ndarray  #: (B,) float32: pixel index less the box centre, ``j - B // 2``
    inverse: np.ndarray  #: (k, k) float64: inverse of ``Dᵀ M D`` for the k design columns (1, x, y or 1)
    dof: float  #: background pixels less k


@functools.lru_cache(maxsize=8)
def background_fit(box: int, bg_radius: float, ramp: bool = True) -> BackgroundFit:
    """:class:`BackgroundFit` for ``box``-pixel images, background farther than ``bg_radius`` pixels from the centre."""
    r = np.arange(box, dtype=np.float64) - box // 2
    mask = (r[:, None] ** 2 + r[None, :] ** 2) > bg_radius**2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    columns = [np.ones(int(mask.sum())), xx[mask], yy[mask]] if ramp else [np.ones(int(mask.sum()))]
    design = np.stack(columns, axis=1)
    inverse = np.linalg.inv(design.T @ design)
    dof = max(float(mask.sum()) - design.shape[1], 1.0)
    return BackgroundFit(mask.astype(np.float32), r.astype(np.float32), inverse, dof)


@_compiled
def _moments(boxes, weights, offsets, out):  # pragma: no cover - compiled
    """``out[k] = (Σ w v, Σ w v x, Σ w v y, Σ w v², shift)`` of box ``k``, ``v`` = pixel - shift (its first pixel)."""
    n, size = boxes.shape[0], boxes.shape[1]
    for k in range(n):
        shift = boxes[k, 0, 0]
        s0, sx, sy, sq = 0.0, 0.0, 0.0, 0.0
        for i in range(size):
            row, w = boxes[k, i], weights[i]
            r0, rx, rq = np.float32(0.0), np.float32(0.0), np.float32(0.0)
            for j in range(size):
                v = row[j] - shift
                vw = v * w[j]
                r0 += vw
                rx += vw * offsets[j]
                rq += vw * v
            s0 += r0
            sx += rx
            sy += r0 * offsets[i]
            sq += rq
        out[k, 0], out[k, 1], out[k, 2], out[k, 3], out[k, 4] = s0, sx, sy, sq, shift


@_compiled
def _sums(row):  # pragma: no cover - compiled
    """The sum and the sum of squares of ``row`` (float32, vector lanes)."""
    r1, r2 = np.float32(0.0), np.float32(0.0)
    for j in range(row.shape[0]):
        r1 += row[j]
        r2 += row[j] * row[j]
    return r1, r2


@_compiled(reorder=False)
def _apply(boxes, coeffs, factors, offsets, total, sums):  # pragma: no cover - compiled
    """Box ``k`` becomes ``factors[k] x ((box - shift) - (a + b x + c y))`` (``coeffs[k] = a, b, c, shift``: the
    plane about the shift; as written, not reordered, so a background far from zero keeps its digits), added to
    ``total``; ``sums`` += (sum, sum of squares) of the results."""
    n, size = boxes.shape[0], boxes.shape[1]
    s1, s2 = 0.0, 0.0
    for k in range(n):
        scale, slope, shift = np.float32(factors[k]), np.float32(coeffs[k, 1]), np.float32(coeffs[k, 3])
        for i in range(size):
            row, t = boxes[k, i], total[i]
            base = np.float32(coeffs[k, 0] + coeffs[k, 2] * offsets[i])
            for j in range(size):
                v = scale * ((row[j] - shift) - (base + slope * offsets[j]))
                row[j] = v
                t[j] += v
            r1, r2 = _sums(row)  # the row in cache
            s1 += r1
            s2 += r2
    sums[0] += s1
    sums[1] += s2


def normalize_chunk(
    boxes: np.ndarray, fit: BackgroundFit, scale: float, total: np.ndarray, sums: np.ndarray
) -> np.ndarray:
    """Normalize ``boxes`` ``(N, B, B)`` float32 (C-contiguous) in place, as :func:`particle_images.normalize_background`.

    ``fit``: :func:`background_fit` of the box; ``scale``: multiplies the result (-1 inverts the
    contrast). Each result is added to ``total`` ``(B, B)`` float32, and its sum and sum of
    squares to ``sums`` ``(2,)`` float64. Returns ``boxes``."""
    n = len(boxes)
    moments = np.empty((n, 5))
    _moments(boxes, fit.weights, fit.offsets, moments)
    k = len(fit.inverse)
    linear = moments[:, :k]  # Dᵀ M v
    coeffs = np.zeros((n, 4))  # a, b, c about the shift, and the shift
    coeffs[:, :k] = linear @ fit.inverse  # the normal equations (the inverse is symmetric)
    residual = moments[:, 3] - (coeffs[:, :k] * linear).sum(axis=1)  # least squares: Σv² - cᵀ Dᵀ M v
    coeffs[:, 3] = moments[:, 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = scale / np.sqrt(residual / fit.dof)
    flat = ~(residual > 0) & np.isfinite(residual)  # a flat background (std 0, or rounding below): zeros
    factors[flat | np.isinf(factors)] = 0.0  # NaN stays NaN: the whole image becomes NaN
    _apply(boxes, coeffs, factors, fit.offsets, total, sums)
    return boxes


@_compiled
def _split(rows, even, odd):  # pragma: no cover - compiled
    """``even[i, j] = rows[i, 2 j]``, ``odd[i, j] = rows[i, 2 j + 1]``."""
    for i in range(even.shape[0]):
        for j in range(even.shape[1]):
            even[i, j] = rows[i, 2 * j]
            odd[i, j] = rows[i, 2 * j + 1]


def split_samples(rows: np.ndarray, even: np.ndarray, odd: np.ndarray) -> None:
    """The even and the odd samples of ``rows`` ``(n, 2 m)`` float32 into ``even`` and ``odd`` ``(n, m)`` float32."""
    _split(rows, even, odd)


def compile_kernels() -> None:
    """Compile (or load from the cache) the kernels for the array types extraction passes. The container images
    run this at build time: a check that they compile, and their cache for containers run writable (numba uses a
    cache only where it can write; read-only containers compile in each process, about 1 s)."""
    boxes = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    normalize_chunk(boxes, background_fit(16, 6.0), -1.0, np.zeros((16, 16), np.float32), np.zeros(2))
    split_samples(boxes[0], np.empty((16, 8), np.float32), np.empty((16, 8), np.float32))
