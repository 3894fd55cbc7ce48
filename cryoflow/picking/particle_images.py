"""Batched particle-image numerics: box sizes, cutting boxes, Fourier binning, phase flipping, normalization.

Conventions
-----------
- Arrays are indexed ``[y, x]``; a batch of boxes is ``(N, B, B)`` float32 on any torch device.
- A box is centred as RELION centres it: the particle's pixel (coordinate rounded half up)
  sits at index ``B // 2`` of the box (the FFT origin after ``ifftshift``), so the box spans
  ``round(c) - B // 2`` to ``round(c) + B // 2 - 1``. No sub-pixel shift is applied (RELION
  does none either); the residual offset is at most half a pixel. With binning the whole
  micrograph is binned once (:func:`bin_micrograph`) and the box is centred on the coordinate
  rounded at the binned scale (:func:`binned_starts`): the offset is at most half a binned pixel.
- Frequencies are in Å⁻¹ (``ky`` along rows). The CTF is :func:`cryoflow.optics.ctf_values`
  (RELION convention). Extracted images have their contrast inverted (particles white), so an
  image is ``CTF ⊗ projection``; phase flipping multiplies its Fourier transform by
  ``sign(CTF)``, giving ``|CTF| ⊗ projection``.
- Normalization follows RELION's ``relion_preprocess --norm`` defaults: a plane (ramp) is fitted
  by least squares to the background pixels (farther than ``bg_radius`` from the box centre)
  and subtracted, then the image is divided by the standard deviation of the background, so
  the background has mean 0 and standard deviation 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from cryoflow.errors import CryoflowError
from cryoflow.numerics import fft_friendly
from cryoflow.optics import ctf_values

#: Box = this many particle diameters, rounded up to an FFT-friendly even size.
BOX_FACTOR = 1.5
#: Background circle diameter as a fraction of the box (RELION's default bg_radius = 0.75 * box / 2).
BG_DIAMETER_FRACTION = 0.75
#: Rows of the micrograph transformed at once when binning (a few MiB: in cache).
ROW_BLOCK = 64
#: Output pixels per chunk of particles (:func:`particle_chunks`): 2 MiB of float32, in cache. With two
#: workers, 4 MiB chunks (and their 4 MiB of squares) ran 20-40 % slower in extraction here, in user and
#: system time alike (the stack's copy into the page cache reads the chunk): four series of 7-9 alternated
#: runs of box 288, medians 4,927-6,781 against 6,646-7,240 particles/s (bin 2: 5,741 against 6,247);
#: 1.3 MiB chunks were as fast as 2 MiB.
CHUNK_PIXELS = 1 << 19
#: Devices whose work runs in the numba kernels of :mod:`cryoflow.picking.cpu_kernels`: :func:`particle_chunks`
#: normalizes chunks in two passes, :func:`halve` splits rows into even and odd samples in one; on others (GPUs)
#: torch does (:func:`normalize_background`, strided copies).
NUMBA_DEVICES = ("cpu",)


class Chunk(NamedTuple):
    """A chunk of particle images (:func:`particle_chunks`) and the sum and sum of squares of its values."""

    images: torch.Tensor  #: (k, box, box) float32, a reused buffer
    sum: float
    squares: float


class Workspace:
    """Named buffers kept between calls, one per name, grown when a call needs more.

    Extraction makes the same large temporaries for every micrograph (spectra of the whole
    micrograph, the stack of boxes); fresh memory of that size costs a page fault per 4 KiB
    page each time, more than the arithmetic. A buffer from :meth:`get` is only valid until the
    next :meth:`get` of the same name.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=torch.float32, device="cpu") -> torch.Tensor:
        """An uninitialized ``shape`` tensor, a view of the buffer ``name``."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


def auto_box(diameter_A: float, pixel_size_A: float, factor: float = BOX_FACTOR) -> int:
    """Box size in pixels of ``pixel_size_A`` for a particle of ``diameter_A``: ``factor`` x diameter, FFT-friendly."""
    return fft_friendly(factor * diameter_A / pixel_size_A)


def window_size(box: int, binning: float) -> int:
    """Full-resolution window (pixels of the micrograph) that bins to ``box`` pixels: ``box * binning`` rounded to even."""
    return max(2, 2 * int(round(box * binning / 2)))


def box_starts(coords: torch.Tensor, size: int) -> torch.Tensor:
    """First pixel of the box of each coordinate (``(N,)`` float pixels) for a box of ``size``: ``round(c) - size // 2``."""
    return torch.floor(coords + 0.5).long() - size // 2


def inside(x0: torch.Tensor, y0: torch.Tensor, size: int, shape: tuple[int, int]) -> torch.Tensor:
    """``(N,)`` bool: the box starting at ``(y0, x0)`` lies entirely inside an image of ``shape`` ``(H, W)``."""
    h, w = shape
    return (x0 >= 0) & (y0 >= 0) & (x0 + size <= w) & (y0 + size <= h)


def gather_boxes(image: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``(N, size, size)`` boxes from ``image`` ``(H, W)`` with one indexing op.

    ``y0, x0``: ``(N,)`` long, first row / column of each box (boxes must lie inside the image).
    The image is viewed as all its ``size``² windows (``unfold``, no copy) and the wanted ones
    are gathered at once.
    """
    windows = image.unfold(0, size, 1).unfold(1, size, 1)  # (H - size + 1, W - size + 1, size, size) view
    return windows[y0.to(image.device), x0.to(image.device)]


def copy_boxes(image: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Cut the boxes starting at ``(y0, x0)`` from ``image`` ``(H, W)`` into ``out`` ``(N, B, B)`` float32.

    On the CPU one slice copy per box (numpy: converts integer or float16 micrographs on the
    way, reads only the box's rows); on a GPU :func:`gather_boxes`.
    """
    size = out.shape[-1]
    if image.device.type != "cpu":
        return out.copy_(gather_boxes(image, y0, x0, size))
    src, dst = image.numpy(), out.numpy()
    for j, (a, b) in enumerate(zip(y0.tolist(), x0.tolist(), strict=True)):
        dst[j] = src[a : a + size, b : b + size]
    return out


def fourier_crop(spectrum: torch.Tensor, size: int, box: int) -> torch.Tensor:
    """Crop an ``rfft2`` spectrum ``(N, size, size // 2 + 1)`` to ``(N, box, box // 2 + 1)`` (Fourier binning).

    Keeps the frequencies below the new Nyquist; at the new Nyquist the row is the mean of the
    ``+f`` and ``-f`` rows, the real part along y as ``irfft2`` takes the real part along x (the
    crop of :func:`bin_micrograph`: numpy's ``irfft(rfft(x)[: m // 2 + 1], m)`` along each
    axis). Values are scaled by ``(box / size)²`` so that ``irfft2`` of the result keeps the
    real-space mean (binning by ``size / box``).
    """
    if box == size:
        return spectrum
    h = box // 2
    rows = torch.cat([spectrum[:, :h], spectrum[:, size - h :]], dim=1)
    rows[:, h] = (rows[:, h] + spectrum[:, h]) * 0.5
    return rows[..., : h + 1] * ((box / size) ** 2)


def ctf_sign(
    size: int,
    pixel_size: float,
    defocus_u: torch.Tensor | float,
    defocus_v: torch.Tensor | float,
    defocus_angle: torch.Tensor | float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    phase_shift: torch.Tensor | float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``sign(CTF)`` on the ``rfft2`` grid of a ``size``² box: ``(N, size, size // 2 + 1)`` float32.

    Defocus U/V in Å (positive underfocus), angle and phase shift in degrees: ``(N,)`` tensors
    (one set per particle) or numbers (one for all, ``N`` = 1, broadcasting over a batch);
    voltage kV, cs mm, pixel size Å. Zeros of the CTF get +1.
    """
    ky = torch.fft.fftfreq(size, d=pixel_size, device=device, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(size, d=pixel_size, device=device, dtype=torch.float64)[None, :]
    per = lambda v: torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1, 1, 1)  # noqa: E731
    ctf = ctf_values(
        ky, kx, per(defocus_u), per(defocus_v), per(defocus_angle), voltage, cs, amplitude_contrast, per(phase_shift)
    )
    return torch.where(ctf < 0, -1.0, 1.0).to(torch.float32)


def _smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


def padded_size(n: int, box: int, window: int) -> int:
    """Micrograph side (pixels, >= ``n``) for Fourier binning by ``window / box`` on the whole micrograph.

    A multiple of ``2 q`` (``box / window = p / q`` in lowest terms), so that the binned side
    ``n' p / q`` is a whole even number; the smallest such size (within +12.5 %) whose full and
    binned sides have only the prime factors 2, 3 and 5 (fast FFTs), else the smallest multiple.
    """
    g = math.gcd(box, window)
    p, q = box // g, window // g
    first = -(-n // (2 * q)) * 2 * q
    for m in range(first, first + max(n // 8, 2 * q) + 1, 2 * q):
        if _smooth(m) and _smooth(m * p // q):
            return m
    return first


def bin_micrograph(image: torch.Tensor, box: int, window: int, workspace: Workspace | None = None) -> torch.Tensor:
    """Fourier-bin a whole micrograph by ``window / box``: keep the frequencies below the binned Nyquist.

    ``image``: ``(H, W)``. The micrograph is padded at its far edges with its mean to
    :func:`padded_size` ``(H', W')`` and Fourier-cropped to ``(H' p / q, W' p / q)``
    (``p / q = box / window``): the binned pixel ``(j, i)`` lies at micrograph pixel
    ``(j q / p, i q / p)``, and the pixel size becomes ``pixel size x window / box``. Values are
    scaled by ``(p / q)²`` so the mean is kept.

    The crop is separable and real along each axis, as ``numpy.fft.irfft(rfft(row)[: m // 2 + 1], m)``
    crops a row: the new Nyquist frequency keeps the real part of the old spectrum there (the
    same along x and y). Binning by exactly 2 (even sides) is :func:`halve` (no padding);
    other factors transform the whole micrograph, in blocks of ``ROW_BLOCK`` rows or columns
    (each block's transform is small and stays in cache): a real FFT along x keeps only the
    columns below the binned Nyquist (stored transposed, so that the transforms along y run
    over contiguous memory); the FFT along y, the crop of rows and the inverse FFT along y, a
    block of columns at a time; the inverse real FFT along x. Padding with the mean is done
    without a padded copy: the mean is subtracted, the transform zero-pads, and the mean is
    added back to the zero frequency. ``workspace`` keeps the large spectra between calls (no
    fresh memory to fault in for every micrograph); the result is a buffer of ``workspace``
    when one is given.
    """
    g = math.gcd(box, window)
    p, q = box // g, window // g
    h, w = image.shape
    workspace = workspace or Workspace()
    if (p, q) == (1, 2) and h % 2 == 0 and w % 2 == 0:
        return halve(image, workspace)
    hp, wp = padded_size(h, box, window), padded_size(w, box, window)
    mh, mw = hp * p // q, wp * p // q
    keep = mw // 2 + 1
    padded = (hp, wp) != (h, w)
    mean = float(image.mean(dtype=torch.float32)) if padded else 0.0  # a cascade sum: float32 is accurate here
    # the x transforms stored transposed (frequency x, then y), so the y transforms run along rows
    columns = workspace.get("bin_columns", (keep, hp), torch.complex64, image.device)
    for r in range(0, h, ROW_BLOCK):
        rows = image[r : r + ROW_BLOCK].float()
        columns[:, r : r + len(rows)] = torch.fft.rfft(rows - mean if padded else rows, n=wp, dim=1)[:, :keep].T
    columns[:, h:] = 0
    binned = workspace.get("bin_binned", (keep, mh), torch.complex64, image.device)
    half, scale = mh // 2, (mh * mw) / (hp * wp)
    for c in range(0, keep, ROW_BLOCK):  # along y, a block of x frequencies at a time: transform, crop, back
        spectrum = torch.fft.fft(columns[c : c + ROW_BLOCK], dim=1)
        if c == 0:
            spectrum[0, 0] += mean * hp * wp  # the mean back, over the padded micrograph too
        block = binned[c : c + ROW_BLOCK]
        if mh < hp:
            block[:, :half], block[:, half:] = spectrum[:, :half], spectrum[:, hp - half :]
            block[:, half] += spectrum[:, half]  # the new Nyquist: the mean of +-f, the real part along y
            block[:, half] *= 0.5
        else:
            block.copy_(spectrum)
        block.copy_(torch.fft.ifft(block.mul_(scale), dim=1))
    out = workspace.get("bin_image", (mh, mw), torch.float32, image.device)
    for r in range(0, mh, ROW_BLOCK):
        out[r : r + ROW_BLOCK] = torch.fft.irfft(binned[:, r : r + ROW_BLOCK].T, n=mw, dim=1)
    return out


@functools.lru_cache(maxsize=16)
def _half_pixel_shift(m: int, device: torch.device) -> torch.Tensor:
    """``exp(-i pi f / m) / 2`` for the ``m // 2 + 1`` frequencies ``f`` of an ``rfft`` of length ``m``."""
    f = torch.arange(m // 2 + 1, dtype=torch.float64)
    return (0.5 * torch.polar(torch.ones_like(f), -math.pi * f / m)).to(torch.complex64).to(device)


def _split_samples(rows: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The even and the odd samples of ``rows`` ``(n, 2 m)``, contiguous, in ``out`` ``(2, n, m)``: ``out[0], out[1]``.

    On the devices of :data:`NUMBA_DEVICES` one pass (:func:`cpu_kernels.split_samples`; torch's
    strided copies take 6-7 times as long on the CPU), elsewhere two copies."""
    if rows.device.type in NUMBA_DEVICES and rows.is_contiguous():
        from cryoflow.picking import cpu_kernels  # numba: imported (0.3 s) only where needed

        cpu_kernels.split_samples(rows.numpy(), out[0].numpy(), out[1].numpy())
    else:
        out[0].copy_(rows[:, 0::2])
        out[1].copy_(rows[:, 1::2])
    return out[0], out[1]


def halve(image: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """Fourier-bin ``image`` ``(H, W)`` (even sides) by 2: ``(H / 2, W / 2)``, as :func:`bin_micrograph` bins.

    Along each axis, the crop of a length-``n`` spectrum to its ``m = n / 2`` lowest
    frequencies is, split into even and odd samples, the mean of the even samples and the
    odd ones moved back by half a sample (``irfft(rfft(odd) exp(-i pi f / m), m)``): one
    transform pair of half length on half the data instead of a full-length transform of all
    of it (measured on a 4096² micrograph, one core: 50 ms instead of 70). Along x in blocks
    of ``ROW_BLOCK`` rows, each split into its even and odd samples first (contiguous, so that
    the FFT and the sum read contiguous rows: :func:`_split_samples`); along y in blocks of
    ``ROW_BLOCK`` columns (transforms along dim 0; a strided store of the result would be
    slow, so torch's transposed result is written to a contiguous buffer first). The result is
    a buffer of ``workspace``.
    """
    h, w = image.shape
    if h % 2 or w % 2:
        raise ValueError(f"halve needs even sides, got {h} x {w}")
    workspace = workspace or Workspace()
    mh, mw = h // 2, w // 2
    shift = _half_pixel_shift(mw, image.device)
    rows = workspace.get("halve_rows", (h, mw), torch.float32, image.device)  # binned along x
    samples = workspace.get("halve_samples", (2, min(ROW_BLOCK, h), mw), torch.float32, image.device)
    for r in range(0, h, ROW_BLOCK):
        block = image[r : r + ROW_BLOCK].float()
        even, odd = _split_samples(block, samples[:, : len(block)])
        torch.fft.irfft(torch.fft.rfft(odd, dim=1).mul_(shift), n=mw, dim=1, out=odd)
        torch.add(odd, even, alpha=0.5, out=rows[r : r + ROW_BLOCK])
    shift = _half_pixel_shift(mh, image.device)[:, None]
    out = workspace.get("bin_image", (mh, mw), torch.float32, image.device)
    for c in range(0, mw, ROW_BLOCK):
        k = min(ROW_BLOCK, mw - c)
        odd = workspace.get("halve_odd", (mh, k), torch.float32, image.device).copy_(rows[1::2, c : c + k])
        spectrum = torch.fft.rfft(odd, dim=0).mul_(shift)
        torch.fft.irfft(spectrum, n=mh, dim=0, out=odd)
        torch.add(odd, rows[0::2, c : c + k], alpha=0.5, out=out[:, c : c + k])
    return out


def binned_starts(coords: torch.Tensor, box: int, window: int) -> torch.Tensor:
    """First pixel of each box in the micrograph binned by ``window / box`` (:func:`bin_micrograph`).

    The coordinate (micrograph pixels) is scaled by ``box / window`` and rounded half up, as
    :func:`box_starts` rounds at full scale: the particle sits within half a *binned* pixel of
    the box centre ``box // 2`` (half a micrograph pixel when not binning).
    """
    return torch.floor(coords.double() * box / window + 0.5).long() - box // 2


def background_mask(box: int, bg_radius: float, device=None) -> torch.Tensor:
    """``(box, box)`` bool: pixels farther than ``bg_radius`` (pixels) from the box centre ``(box // 2, box // 2)``."""
    r = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) > bg_radius**2


class BackgroundModel(NamedTuple):
    """The fixed matrices of :func:`normalize_background` for one box size (cached)."""

    mask: torch.Tensor  #: (B²,): 1 on the background ring, 0 inside the circle
    fit: torch.Tensor  #: (k, B²): the plane's k coefficients (a, b, c or a) of an image are fit @ image
    rows: torch.Tensor  #: (B, k): with columns, the plane of coefficients c is rows @ (c[:, None] * columns)
    columns: torch.Tensor  #: (k, B)
    dof: float  #: background pixels less the fitted coefficients


@functools.lru_cache(maxsize=8)
def _background_model(box: int, bg_radius: float, ramp: bool, dtype: torch.dtype, device: torch.device):
    """:class:`BackgroundModel` of a ``box``-pixel image, background farther than ``bg_radius`` pixels from its centre."""
    mask = background_mask(box, bg_radius, device).reshape(-1).to(dtype)  # (B²,)
    r = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    ones = torch.ones(box * box, device=device, dtype=torch.float64)
    design = torch.stack([ones, xx.reshape(-1), yy.reshape(-1)], dim=1) if ramp else ones[:, None]  # (B², k)
    weighted = design * mask.double()[:, None]
    fit = (weighted @ (weighted.T @ design).inverse()).T  # (k, B²): (Dᵀ M D)⁻¹ Dᵀ M, the normal equations
    one = torch.ones(box, device=device, dtype=torch.float64)
    # a + b x + c y = [1, 1, y] @ [a, b x, c] (rows i = y, columns j = x): two fixed factors
    rows = torch.stack([one, one, r], dim=1) if ramp else one[:, None]
    columns = torch.stack([one, r, one]) if ramp else one[None, :]
    dof = max(float(mask.sum()) - design.shape[1], 1.0)
    return BackgroundModel(mask, fit.to(dtype).contiguous(), rows.to(dtype), columns.to(dtype), dof)


def normalize_background(
    images: torch.Tensor,
    bg_radius: float,
    ramp: bool = True,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Zero mean, unit standard deviation in the background ring, as RELION normalizes.

    ``images``: ``(N, B, B)``; ``bg_radius``: pixels. With ``ramp`` a plane ``a + b x + c y`` is
    fitted to each image's background by least squares and subtracted; without it only the
    background mean is. The result is multiplied by ``scale`` (-1 inverts the contrast).
    Images whose background is flat (std 0) come out as zeros. ``out``: ``(N, B, B)`` float32
    to write the result to (may be ``images`` itself: normalized in place); a new tensor if
    ``None``.

    Passes over the batch, each in cache when called on a few MiB at a time
    (:func:`particle_chunks`): the fit (one matrix product, a read); the plane subtracted (a
    read and a write: the plane is a product of rank 3 of a fixed ``(B, 3)`` factor and a
    ``(3, B)`` one per image, added by ``baddbmm``, in place when ``out`` is ``images``: 6.3 µs
    per 288² image measured here, against 13.1 for two broadcast subtractions); the background
    variance (squares into a buffer of ``workspace``, a chunk at a time, then a matrix-vector
    product); the scaling (in place). The fixed matrices are cached per box size, and the rest
    is a few operations per call: on a CPU each costs microseconds of dispatch, which is as
    much as a pass over a small batch.
    """
    n, box, _ = images.shape
    model = _background_model(box, float(bg_radius), ramp, images.dtype, images.device)
    coeffs = (model.fit @ images.reshape(n, -1).T).T  # (N, k): the least-squares fit on the background
    rows = model.rows.expand(n, box, -1)  # (N, B, k), no copy
    per_image = coeffs[:, :, None] * model.columns  # (N, k, B)
    if out is images:
        result = images.baddbmm_(rows, per_image, alpha=-1.0)
    else:
        result = torch.baddbmm(images, rows, per_image, alpha=-1.0, out=out)
    flat = result.reshape(n, -1)
    step = max(1, CHUNK_PIXELS // (box * box))  # a chunk's worth of squares at a time
    squares = (workspace or Workspace()).get("squares", (min(step, n), box * box), result.dtype, result.device)
    var = torch.empty(n, dtype=result.dtype, device=result.device)
    for s in range(0, n, step):
        part = flat[s : s + step]
        torch.mv(torch.mul(part, part, out=squares[: len(part)]), model.mask, out=var[s : s + len(part)])
    # scale / std; a flat background (std 0: infinite) gives zeros, as does NaN (its pixels stay NaN)
    factor = var.mul_(1.0 / model.dof).rsqrt_().mul_(scale).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return result.mul_(factor[:, None, None])


def process_boxes(
    boxes: torch.Tensor,
    box: int,
    bg_radius: float,
    flip_sign: torch.Tensor | None = None,
    ramp: bool = True,
) -> torch.Tensor:
    """Invert contrast, phase flip, Fourier-bin and normalize a batch of full-resolution boxes.

    ``boxes``: ``(N, S, S)`` as cut from the micrograph (particles dark); ``box``: output size
    (``S`` for no binning); ``flip_sign``: ``(N, S, S // 2 + 1)`` from :func:`ctf_sign` or
    ``None``; ``bg_radius`` in output pixels. Returns ``(N, box, box)`` float32, particles
    white. One batched ``rfft2``/``irfft2`` pair, only when binning or flipping.
    """
    size = boxes.shape[-1]
    images = boxes.float()
    if box != size or flip_sign is not None:
        spectrum = torch.fft.rfft2(images)
        if flip_sign is not None:
            spectrum = spectrum * flip_sign
        images = torch.fft.irfft2(fourier_crop(spectrum, size, box), s=(box, box))
    return normalize_background(images, bg_radius, ramp=ramp, scale=-1.0)  # inverted: particles white


def particle_chunks(
    image: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    box: int,
    window: int,
    bg_radius: float,
    flip_sign: torch.Tensor | None = None,
    ramp: bool = True,
    max_pixels: int | None = None,
    workspace: Workspace | None = None,
    source=None,
    total: torch.Tensor | None = None,
) -> Iterator[Chunk]:
    """Particle images (particles white, normalized) from one micrograph, ``max_pixels`` output pixels at a time
    (:data:`CHUNK_PIXELS` if ``None``).

    Yields a :class:`Chunk` at a time: ``(k, box, box)`` float32 images in the order of ``x, y``
    (``(N,)`` coordinates in micrograph pixels whose ``window``-pixel boxes lie inside ``image``
    ``(H, W)``, see :func:`inside`), a buffer of ``workspace`` valid until the next chunk is
    asked for, with the sum and the sum of squares of its values (an MRC header's statistics).
    Each image is also added to ``total`` (``(box, box)`` float32 on the image's device, when
    given: the report's average). A chunk (2 MiB by default) stays in cache while it is cut,
    flipped and normalized and while the caller uses it (writes it to the stack file): a whole
    stack is never held, and no pass of any step goes out to memory. On the devices of
    :data:`NUMBA_DEVICES` (the CPU) the normalization, the sums and the total are two passes
    over the chunk (:mod:`cryoflow.picking.cpu_kernels`); elsewhere :func:`normalize_background`
    and torch reductions.

    Binning (``box < window``) is done on the whole micrograph once (:func:`bin_micrograph`,
    one FFT of the micrograph instead of one per particle) and the ``box``-pixel boxes are cut
    from it at :func:`binned_starts`. Compared with binning each window (:func:`process_boxes`),
    the box edges differ (no wrap-around inside the window) and the particle is within half a
    *binned* pixel of the box centre (half a micrograph pixel without binning). ``flip_sign``:
    ``(box, box // 2 + 1)`` sign map of the output box (:func:`ctf_sign` at the output pixel
    size; the frequencies of the window's grid below the binned Nyquist) multiplied into each
    box's spectrum (phase flipping). ``workspace`` keeps the large
    temporaries between micrographs. With binning, a NaN or Inf anywhere in the micrograph
    (checked on the binned micrograph) raises a :class:`CryoflowError` naming ``source`` (the
    micrograph's path). Without binning the boxes are not checked here (it would be a pass over
    every chunk): a NaN or Inf in a box comes out as NaN or Inf in that particle image
    (normalizing never removes one) and in the chunk's sums, so a caller checks sums it needs
    anyway (extraction: the stack's header statistics, one check per micrograph).
    """
    workspace = workspace or Workspace()
    if box != window:
        image = bin_micrograph(image, box, window, workspace)
        if not torch.isfinite(image.sum()):  # every NaN or Inf of the micrograph lands in the binned image
            raise CryoflowError(source, "data contain NaN or Inf values (binning spreads them into the particles)")
        x0, y0 = binned_starts(x, box, window), binned_starts(y, box, window)
        # never needed when the window fits (the rounding keeps the binned box inside); a safeguard
        x0 = x0.clamp(0, image.shape[1] - box)
        y0 = y0.clamp(0, image.shape[0] - box)
    else:
        x0, y0 = box_starts(x, box), box_starts(y, box)
    n = len(x0)
    chunk = max(1, (max_pixels or CHUNK_PIXELS) // box**2)
    scratch = workspace.get("chunk", (min(chunk, n), box, box), device=image.device)
    total = torch.zeros(box, box, device=image.device) if total is None else total
    fused = image.device.type in NUMBA_DEVICES
    if fused:  # numba: imported (0.3 s) only where needed
        from cryoflow.picking import cpu_kernels

        fit = cpu_kernels.background_fit(box, float(bg_radius), ramp)
    for s in range(0, n, chunk):
        boxes = copy_boxes(image, y0[s : s + chunk], x0[s : s + chunk], scratch[: min(chunk, n - s)])
        if flip_sign is not None:
            boxes.copy_(torch.fft.irfft2(torch.fft.rfft2(boxes) * flip_sign, s=(box, box)))
        if fused:  # two passes, the sums on the way (cpu_kernels)
            sums = np.zeros(2)
            cpu_kernels.normalize_chunk(boxes.numpy(), fit, -1.0, total.numpy(), sums)
            yield Chunk(boxes, float(sums[0]), float(sums[1]))
        else:
            normalize_background(boxes, bg_radius, ramp=ramp, scale=-1.0, out=boxes, workspace=workspace)
            total.add_(boxes.sum(dim=0))
            flat = boxes.reshape(-1).double()
            yield Chunk(boxes, float(flat.sum()), float(flat.dot(flat)))
