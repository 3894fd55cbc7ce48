"""Power spectra of micrographs for CTF fitting.

The spectrum of a micrograph is estimated as the periodogram of the whole (square) frame,
edge-tapered, averaged in ``b x b`` blocks of neighbouring frequencies (Daniell's method).
This has the variance of averaging ``b²`` tiles of size ``S/b`` (Welch/Bartlett, as
CTFFIND and Gctf do) at the cost of a single FFT, which on a CPU is several times faster
than many tile FFTs. A non-square frame is covered by overlapping squares whose
spectra are averaged.

Spectra are kept as the non-redundant half plane of ``torch.fft.rfft2``, re-ordered so that
ky runs from negative to positive (rows) and kx from 0 (columns): shape ``(T, T//2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TAPER = 0.04  # fraction of the frame tapered by a cosine at each edge


@dataclass
class Spectrum:
    """A block-averaged power spectrum (half plane) and its frequency grid.

    ``power``: ``(..., T, T//2)`` mean |F|²; ``ky, kx``: ``(T, T//2)`` frequencies in Å⁻¹ of each
    block (its mean frequency); ``pixel_size``: Å of the micrograph; ``step``: Å⁻¹ between blocks.
    """

    power: torch.Tensor
    ky: torch.Tensor
    kx: torch.Tensor
    pixel_size: float
    step: float

    @property
    def k(self) -> torch.Tensor:
        """|k| in Å⁻¹, ``(T, T//2)``."""
        return torch.sqrt(self.ky**2 + self.kx**2)

    @property
    def angle(self) -> torch.Tensor:
        """Direction atan2(ky, kx) of each block in radians, ``(T, T//2)``."""
        return torch.atan2(self.ky, self.kx)


def _taper(n: int, device) -> torch.Tensor:
    edge = max(1, int(round(TAPER * n)))
    w = torch.ones(n, device=device)
    ramp = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(edge, device=device) + 0.5) / edge)
    w[:edge] = ramp
    w[-edge:] = ramp.flip(0)
    return w


def square_windows(height: int, width: int) -> list[tuple[int, int, int]]:
    """Overlapping squares ``(y0, x0, size)`` covering a ``height x width`` frame."""
    size = min(height, width)
    n = -(-max(height, width) // size)  # ceil
    long = max(height, width)
    starts = [round(i * (long - size) / max(n - 1, 1)) for i in range(n)]
    return [(s, 0, size) if height > width else (0, s, size) for s in starts]


def block_average(power: torch.Tensor, b: int) -> torch.Tensor:
    """Average ``(..., S, S//2+1)`` half-plane power (fftshifted rows) in ``b x b`` blocks → ``(..., S//b, S//(2b))``."""
    s = power.shape[-2]
    t = s // b
    half = t // 2
    power = power[..., : t * b, : half * b]
    shape = power.shape[:-2]
    power = power.reshape(*shape, t, b, half, b)
    return power.mean(dim=(-3, -1))


def power_spectrum(image: torch.Tensor, pixel_size: float, target: int = 512) -> Spectrum:
    """Block-averaged power spectrum of a micrograph ``(H, W)`` (or a batch ``(N, H, W)``).

    ``target``: wanted size T of the averaged spectrum (the block size is ``b = S // target``
    for a frame of side S, at least 1). Returns a :class:`Spectrum`.
    """
    batch = image.dim() == 3
    if not batch:
        image = image[None]
    height, width = image.shape[-2:]
    windows = square_windows(height, width)
    size = windows[0][2]
    b = max(1, size // target)
    size = (size // (2 * b)) * 2 * b  # multiple of 2b, so blocks tile the half plane exactly
    w = _taper(size, image.device)
    window = w[:, None] * w[None, :]
    total = None
    for y0, x0, _ in windows:
        tile = image[..., y0 : y0 + size, x0 : x0 + size].float()
        tile = (tile - tile.mean(dim=(-2, -1), keepdim=True)) * window
        f = torch.fft.rfft2(tile)
        p = (f.real**2 + f.imag**2) / (size * size)
        total = p if total is None else total + p
    power = block_average(torch.fft.fftshift(total / len(windows), dim=-2), b)
    # block-mean frequencies: the mean of the frequencies each block averages
    fy = torch.fft.fftshift(torch.fft.fftfreq(size, d=pixel_size, device=image.device))
    fx = torch.fft.rfftfreq(size, d=pixel_size, device=image.device)
    t = size // b
    fy = fy[: t * b].reshape(t, b).mean(1)
    fx = fx[: (t // 2) * b].reshape(t // 2, b).mean(1)
    ky = fy[:, None].expand(t, t // 2).contiguous()
    kx = fx[None, :].expand(t, t // 2).contiguous()
    if not batch:
        power = power[0]
    return Spectrum(power=power, ky=ky, kx=kx, pixel_size=pixel_size, step=b / (size * pixel_size))


def box_smooth(x: torch.Tensor, width: int) -> torch.Tensor:
    """Mean over a ``width x width`` box of ``(..., H, W)`` (edges replicated), by running sums: O(HW)."""
    width = max(1, int(width)) | 1  # odd
    pad = width // 2
    for dim in (-2, -1):
        first = x.narrow(dim, 0, 1)
        last = x.narrow(dim, x.shape[dim] - 1, 1)
        padded = torch.cat([first.repeat_interleave(pad, dim=dim), x, last.repeat_interleave(pad, dim=dim)], dim=dim)
        csum = torch.cumsum(padded.double(), dim=dim)
        zero = torch.zeros_like(csum.narrow(dim, 0, 1))
        csum = torch.cat([zero, csum], dim=dim)
        n = x.shape[dim]
        x = ((csum.narrow(dim, width, n) - csum.narrow(dim, 0, n)) / width).to(x.dtype)
    return x


def subtract_background(spectrum: Spectrum, width: int | None = None) -> torch.Tensor:
    """Thon-ring signal: amplitude spectrum minus its box-smoothed background, ``(..., T, T//2)``.

    The background is the mean amplitude over a box of ``width`` blocks (default T/16), wide
    enough to average the rings out away from the centre; the very lowest frequencies, where
    the box cannot follow the steep fall of the spectrum, are excluded from fits anyway.
    """
    amplitude = torch.sqrt(spectrum.power)
    t = amplitude.shape[-2]
    return amplitude - box_smooth(amplitude, width or max(5, t // 16))
