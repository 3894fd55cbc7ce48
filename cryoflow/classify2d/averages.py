"""The M-step: Wiener-filtered class averages from the E-step sums, their FRC, centring, re-seeding.

From an :class:`~cryoflow.classify2d.em.Accumulator` the back-rotated coefficient sums of
each (class, translation) are synthesised into images, shifted back by their
translation and summed: ``Num_k = Σ_i Σ p S_t⁻¹ R_α⁻¹ (CTF_i x_i)``. With
``Den_k(j) = Σ_i p_ik CTF²_i(j)`` the class average is the Wiener estimate
``G_k = Num_k / (Den_k + σ²/τ²_k)`` (``τ²_k`` the class's signal power from the previous
iteration times a regularisation factor, as RELION's T), limited to the current rings.
Each half-set gives its own average; their Fourier ring correlation gives the
resolution.
"""

from __future__ import annotations

import math

import torch

from cryoflow.classify2d.basis import PolarBasis, Stage, from_padded, ring_binning, ring_index
from cryoflow.classify2d.em import Accumulator, shift_images


def ring_map(box: int, device=None) -> torch.Tensor:
    """Ring of each rfft2 frequency, ``(B, B//2+1)``, clamped to ``B//2 + 1`` (beyond Nyquist)."""
    return ring_index(box, device).clamp_max(box // 2 + 1)


def wiener_averages(
    sums: list[tuple[Accumulator, torch.Tensor]],
    stage: Stage,
    basis: PolarBasis,
    sigma2: torch.Tensor,
    tau2: torch.Tensor | None,
    K: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class averages from the sums: ``(full (K, B, B), halves (2, K, B, B), ssnr (K, R))``.

    ``ssnr``: spectral signal-to-noise ratio per ring of each class average (RELION's
    data-versus-prior idea): ``Den·|Num/Den|²/σ² - 1``, the noise power of the average
    subtracted; where it falls below 1 the average holds more noise than signal.

    ``sums``: (accumulator, its translation grid ``(T, 2)``) pairs (a full and a local
    search each have their own); ``sigma2`` ``(R,)`` noise per ring; ``tau2`` ``(K, R)``
    signal power per ring (``None``: no regularisation beyond a tiny floor). Frequencies
    beyond ring J are zero.
    """
    box, J = basis.box, stage.J
    dev = sigma2.device
    ky = torch.fft.fftfreq(box, device=dev)[:, None]
    kx = torch.fft.rfftfreq(box, device=dev)[None, :]
    spectra = [0, 0]
    den = 0
    for acc, shifts in sums:
        T = shifts.shape[0]
        phase = 2 * math.pi * (ky * shifts[:, 0, None, None] + kx * shifts[:, 1, None, None])  # undo S_t
        unshift = torch.polar(torch.ones_like(phase), phase)[None]
        for h in (0, 1):
            coeffs = from_padded(acc.num[h], stage)  # (KT, 2C)
            images = basis.image_of(coeffs @ stage.synthesis).view(K, T, box, box)
            spectra[h] = spectra[h] + (torch.fft.rfft2(images, norm="ortho") * unshift).sum(1)  # (K, B, B/2+1)
        den = den + acc.ctf2.view(2, K, T, J + 1).sum(2)  # (2, K, J+1)
    R = basis.n_rings
    den = torch.cat([den, den.new_zeros(2, K, R + 1 - (J + 1))], dim=2)  # pad to R+1 (last: beyond Nyquist)
    rings = ring_map(box, dev)
    valid = rings <= J
    s2 = torch.cat([sigma2, sigma2[-1:]])[rings]  # (B, B/2+1)
    if tau2 is None:
        reg = torch.zeros(K, *rings.shape, device=dev)
    else:
        t2 = torch.cat([tau2, tau2[:, -1:]], dim=1)[:, rings].clamp_min(1e-12)
        reg = s2[None] / t2
    floor = 1e-6 * float(den.max().clamp_min(1e-12))

    def solve(num, d):
        return torch.where(valid, num / (d[:, rings] + reg + floor), torch.zeros_like(num))

    halves = torch.stack([solve(spectra[h], den[h]) for h in (0, 1)])
    full = solve(spectra[0] + spectra[1], den[0] + den[1])
    # spectral SNR per ring of the unregularised average: den·|Num/den|²/σ² - 1 (noise subtracted)
    d = den[0] + den[1]
    raw = (spectra[0] + spectra[1]) / (d[:, rings] + floor)
    power = ((raw.real**2 + raw.imag**2) * valid).reshape(K, -1) @ ring_binning(box, R, dev)
    counts = ring_binning(box, R, dev).sum(0).clamp_min(1)
    ssnr = d[:, :R] * (power / counts) / sigma2[None, :R] - 1
    to_image = lambda s: torch.fft.irfft2(s, s=(box, box), norm="ortho")  # noqa: E731
    return to_image(full), to_image(halves), ssnr


def ring_spectrum(images: torch.Tensor, n_rings: int) -> torch.Tensor:
    """Mean |F|² per ring of ``(K, B, B)`` images: ``(K, n_rings)``."""
    box = images.shape[-1]
    spec = torch.fft.rfft2(images, norm="ortho")
    binning = ring_binning(box, n_rings, images.device)
    power = (spec.real**2 + spec.imag**2).reshape(images.shape[0], -1) @ binning
    counts = binning.sum(0).clamp_min(1)
    return power / counts


def frc(a: torch.Tensor, b: torch.Tensor, n_rings: int) -> torch.Tensor:
    """Fourier ring correlation of image pairs ``(K, B, B)``: ``(K, n_rings)``."""
    box = a.shape[-1]
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    binning = ring_binning(box, n_rings, a.device)
    k = a.shape[0]
    cross = (fa * fb.conj()).real.reshape(k, -1) @ binning
    pa = (fa.abs() ** 2).reshape(k, -1) @ binning
    pb = (fb.abs() ** 2).reshape(k, -1) @ binning
    return cross / torch.sqrt(pa * pb).clamp_min(1e-30)


def resolution_from_frc(curve: torch.Tensor, box: int, pixel_size: float, limit: int, threshold: float = 0.143):
    """Resolution (Å) where each FRC ``(K, R)`` first drops below ``threshold`` (rings 1..limit).

    Returns ``(resolution (K,), ring (K,))``: the last ring above the threshold; a curve
    that stays above up to ``limit`` gives ``limit`` (the resolution is then at least that).
    """
    k = curve.shape[0]
    rings = torch.full((k,), limit, dtype=torch.long)
    below = (curve[:, 1 : limit + 1] < threshold).cpu()
    for i in range(k):
        hit = torch.nonzero(below[i]).squeeze(1)
        if len(hit):
            rings[i] = max(int(hit[0]), 1)  # index in 1.. -> ring = hit (last above is hit)
    res = box * pixel_size / rings.float()
    return res, rings


def centre(images: torch.Tensor, mask: torch.Tensor, min_shift: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each image so the centroid of its positive, masked density sits at the box centre.

    ``images`` ``(K, B, B)``; returns ``(centred, shifts (K, 2) dy, dx px applied)``; shifts
    below ``min_shift`` pixels are not applied.
    """
    box = images.shape[-1]
    c = box // 2
    grid = torch.arange(box, device=images.device, dtype=images.dtype) - c
    w = images.clamp_min(0) * mask
    total = w.sum((1, 2)).clamp_min(1e-12)
    cy = (w.sum(2) * grid).sum(1) / total
    cx = (w.sum(1) * grid).sum(1) / total
    shift = -torch.stack([cy, cx], 1)
    shift = torch.where((shift.norm(dim=1) >= min_shift)[:, None], shift, torch.zeros_like(shift))
    out = torch.stack([shift_images(images[i : i + 1], shift[i : i + 1])[0, 0] for i in range(images.shape[0])])
    return out, shift


def reseed(
    images: torch.Tensor, weights: torch.Tensor, min_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Replace classes holding less than ``min_fraction`` of the particles by a perturbed copy of
    the largest class (which is split in two: both get half its weight).

    ``images`` ``(K, B, B)``, ``weights`` ``(K,)`` fractions. Returns new images, weights and the
    re-seeded class indices.
    """
    images, weights = images.clone(), weights.clone()
    tiny = torch.nonzero(weights < min_fraction).squeeze(1).tolist()
    for k in tiny:
        big = int(weights.argmax())
        noise = torch.randn(images.shape[1:], generator=generator).to(images.device)
        spec = torch.fft.rfft2(noise)
        box = images.shape[-1]
        low = (
            torch.fft.fftfreq(box, device=images.device)[:, None] ** 2
            + torch.fft.rfftfreq(box, device=images.device)[None, :] ** 2
        ) < 0.1**2
        noise = torch.fft.irfft2(spec * low, s=(box, box))
        noise = noise / noise.std().clamp_min(1e-12) * float(images[big].std()) * 0.2
        images[k] = images[big] + noise
        weights[k] = weights[big] / 2
        weights[big] = weights[big] / 2
    return images, weights, tiny
