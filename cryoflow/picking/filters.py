"""A micrograph prepared for picking: binned, normalized, in Fourier space with its CTF.

Picking works at a coarse *working* pixel size (about a twentieth of the particle
diameter, never finer than the micrograph's): a 4096² micrograph of a 150 Å particle
becomes ~600², where every filter is one small FFT. Binning is a block mean (cheap on the
full frame); the CTF (from the CTF step's columns, :mod:`cryoflow.optics`) and a radial
noise spectrum are evaluated on the binned frequency grid.

The score filter is centre-surround (:func:`blob_filter`): after phase flipping and a
20 Å low-pass, a particle is a dark disk (its dense core, about :data:`CORE` of its
diameter) in a brighter ring; the filter takes the ring's mean minus the disk's. Scores
are in standard deviations of the shot noise after the filter (:func:`noise_sigma`), not
of the map itself, whose spread in a crowded micrograph comes mostly from the particles;
so a score means the same on every micrograph and noise alone has a known distribution
(:mod:`cryoflow.picking.search` uses it for the threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoflow.optics import ctf_values

#: working pixel size = diameter / WORK_SAMPLES (not finer than the micrograph's)
WORK_SAMPLES = 20.0
#: diameter of the dark core of a particle in a low-passed micrograph, in particle diameters
#: (the projection of a roughly spherical particle thins towards its edge; measured on
#: simulated species of 115-250 Å)
CORE = 0.6
#: outer radius of the surround ring, in core radii
SURROUND = 1.5
#: Gaussian low-pass of the score filter, Å
LOW_PASS = 20.0


@dataclass(frozen=True)
class CtfParams:
    """A micrograph's CTF: defocus U/V in Å (positive is underfocus), angle and phase shift
    in degrees (RELION conventions), voltage kV, Cs mm, amplitude contrast fraction."""

    defocus_u: float
    defocus_v: float
    defocus_angle: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    phase_shift: float = 0.0


@dataclass
class Prepared:
    """A binned micrograph ready for filtering.

    ``image``: ``(h, w)`` float32, zero mean, unit variance; ``spectrum``: its ``rfft2``
    ``(h, w//2+1)``; ``k``: spatial frequency (Å⁻¹) of each Fourier sample; ``ctf``: the
    CTF there (None when unknown); ``noise``: the radially averaged power at each sample;
    ``white``: the power of the shot noise per Fourier sample (the mean power in the
    outer frequency band, where the particles' signal is weakest), from which the noise of
    any filtered map follows (:func:`noise_sigma`); ``contrast``: the binned image's
    standard deviation over its mean (so ``1 + contrast * image`` is the intensity relative
    to the mean); ``bin``: micrograph pixels per working
    pixel; ``pixel_size``: Å per working pixel.
    """

    image: torch.Tensor
    spectrum: torch.Tensor
    k: torch.Tensor
    ctf: torch.Tensor | None
    noise: torch.Tensor
    white: float
    contrast: float
    bin: int
    pixel_size: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)

    def to_micrograph(self, yx: np.ndarray) -> np.ndarray:
        """Working-pixel positions ``(n, 2)`` [y, x] to micrograph pixels (centre of the block)."""
        return (np.asarray(yx, dtype=np.float64) + 0.5) * self.bin - 0.5

    def to_working(self, yx: np.ndarray) -> np.ndarray:
        """Micrograph pixel positions ``(n, 2)`` [y, x] to working pixels."""
        return (np.asarray(yx, dtype=np.float64) + 0.5) / self.bin - 0.5


def bin_factor(pixel_size: float, diameter: float) -> int:
    """Micrograph pixels per working pixel for a particle of ``diameter`` Å."""
    return max(1, int(diameter / WORK_SAMPLES / pixel_size))


def _radial_power(spectrum: torch.Tensor, k: torch.Tensor, n_bins: int = 96) -> torch.Tensor:
    power = spectrum.real.square() + spectrum.imag.square()
    idx = (k / k.max() * (n_bins - 1)).round().long().flatten()
    total = torch.zeros(n_bins, dtype=power.dtype, device=power.device).index_add_(0, idx, power.flatten())
    count = torch.zeros_like(total).index_add_(0, idx, torch.ones_like(power.flatten()))
    return (total / count.clamp_min(1))[idx].reshape(k.shape).clamp_min(1e-12)


def prepare(
    image: np.ndarray | torch.Tensor, pixel_size: float, bin: int, ctf: CtfParams | None, device="cpu"
) -> Prepared:
    """Bin ``image`` ``(H, W)`` by ``bin`` (block mean), normalize, transform, evaluate the CTF."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)
    h, w = x.shape[0] // bin, x.shape[1] // bin
    x = x[: h * bin, : w * bin].reshape(h, bin, w, bin).mean(dim=(1, 3))
    mean, std = float(x.mean()), float(x.std().clamp_min(1e-12))
    x = (x - mean) / std
    apix = pixel_size * bin
    spectrum = torch.fft.rfft2(x)
    ky = torch.fft.fftfreq(h, d=apix, device=device)[:, None]
    kx = torch.fft.rfftfreq(w, d=apix, device=device)[None, :]
    k = torch.sqrt(ky * ky + kx * kx)
    c = None
    if ctf is not None:
        c = ctf_values(
            ky,
            kx,
            ctf.defocus_u,
            ctf.defocus_v,
            ctf.defocus_angle,
            ctf.voltage,
            ctf.cs,
            ctf.amplitude_contrast,
            ctf.phase_shift,
        ).to(torch.float32)
    nyquist = 0.5 / apix
    outer = k > 0.85 * nyquist
    white = float((spectrum[outer].abs().square()).mean())
    contrast = std / mean if mean > 0 else 0.0
    return Prepared(x, spectrum, k, c, _radial_power(spectrum, k), white, contrast, bin, apix)


def _disk(k: torch.Tensor, radius: float) -> torch.Tensor:
    """Fourier transform of a unit-height disk of ``radius`` Å divided by its area (1 at k=0)."""
    a = (2 * math.pi * radius * k).clamp_min(1e-6)
    return 2 * torch.special.bessel_j1(a) / a


def blob_filter(prep: Prepared, diameter: float) -> torch.Tensor:
    """The Fourier filter ``(h, w//2+1)`` that scores particles of ``diameter`` Å (see module doc).

    Centre-surround: the mean inside a disk of the particle's diameter minus the mean in
    the ring around it out to :data:`SURROUND` times the radius, after phase flipping
    (the sign of the CTF) and a Gaussian low-pass at :data:`LOW_PASS` Å; the sign makes
    particles (dark in the micrograph) score high.
    """
    r = CORE * diameter / 2
    inner = _disk(prep.k, r)
    ring = (SURROUND**2 * _disk(prep.k, SURROUND * r) - inner) / (SURROUND**2 - 1)
    filt = -(inner - ring) * torch.exp(-0.5 * (prep.k * LOW_PASS) ** 2)
    if prep.ctf is not None:
        filt = filt * torch.sign(prep.ctf)
    return filt


def _sphere(k: torch.Tensor, radius: float) -> torch.Tensor:
    """Fourier transform of the projection of a uniform sphere of ``radius`` Å (1 at k=0)."""
    a = (2 * math.pi * radius * k).clamp_min(1e-6)
    return 3 * (torch.sin(a) - a * torch.cos(a)) / a**3


def sphere_filter(prep: Prepared, diameter: float) -> torch.Tensor:
    """Matched filter for a uniform sphere of ``diameter`` Å seen through the micrograph's CTF.

    ``-CTF(k) · S(k)`` with frequencies below ``1/diameter`` cut (ice gradients); used to
    measure the particle size (:mod:`cryoflow.picking.search`), where its response, unlike
    the picking filter's, peaks at a fixed fraction of a globular particle's diameter.
    """
    filt = -_sphere(prep.k, diameter / 2) * (1 - torch.exp(-((prep.k * diameter) ** 2)))
    if prep.ctf is not None:
        filt = filt * prep.ctf
    return filt


def noise_sigma(prep: Prepared, filt: torch.Tensor) -> float:
    """Standard deviation of white shot noise (power ``prep.white``) after ``filt``.

    A map's own spread would be the wrong yardstick: in a crowded micrograph the particles
    themselves make much of it.
    """
    h, w = prep.shape
    weight = torch.full((filt.shape[-1],), 2.0, device=filt.device)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    total = (filt.abs().square() * weight).sum()
    return float(torch.sqrt(total * prep.white) / (h * w))


def filtered(prep: Prepared, filt: torch.Tensor) -> torch.Tensor:
    """``prep.image`` filtered by ``filt`` (Fourier), in units of the shot noise's standard deviation ``(h, w)``."""
    out = torch.fft.irfft2(prep.spectrum * filt, s=prep.shape)
    return (out - out.median()) / max(noise_sigma(prep, filt), 1e-12)


def score_map(prep: Prepared, diameter: float) -> torch.Tensor:
    """Blob score ``(h, w)`` in noise standard deviations: high where a particle of ``diameter`` Å sits."""
    return filtered(prep, blob_filter(prep, diameter))
