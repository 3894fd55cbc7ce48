"""Per-micrograph quality metrics from the power spectrum, the CTF fit and the image.

Each function documents what its number means; the report repeats it for newcomers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cryoflow.ctf.fit import CtfFit, Optics, pearson, radial_profile
from cryoflow.ctf.spectrum import Spectrum
from cryoflow.optics import astigmatic_defocus, ctf_phase_isotropic, wavelength

FIT_CC_THRESHOLD = 0.5  # local correlation below which the fit no longer holds
ICE_BAND = (3.55, 3.85)  # Å: the hexagonal-ice (100)/(002)/(101) reflections 3.90/3.67/3.44 Å sit around it
ICE_FLANKS = ((3.0, 3.35), (4.1, 4.6))  # Å: reference bands on either side


@dataclass
class EquiphaseProfile:
    """Equiphase average of the Thon-ring signal and the fitted model on the same grid.

    ``k`` (Å⁻¹, bin centres), ``data`` and ``model`` (-cos 2χ for the mean defocus), ``cc``
    the correlation of data and model in a sliding window one ring period wide.
    """

    k: np.ndarray
    data: np.ndarray
    model: np.ndarray
    cc: np.ndarray


def equiphase_profile(spectrum: Spectrum, signal: torch.Tensor, fit: CtfFit, optics: Optics) -> EquiphaseProfile:
    """Average the signal along the fitted (elliptical) rings, as CTFFIND's equiphase average.

    Every block's frequency k is mapped to the isotropic frequency with the same defocus
    phase, ``k·sqrt(Δf(φ)/Δf_mean)``, then averaged in rings of one block width.
    """
    k = spectrum.k
    defocus_phi = astigmatic_defocus(
        spectrum.ky, spectrum.kx, torch.tensor(fit.defocus_u), torch.tensor(fit.defocus_v), fit.angle
    )
    k_eq = k * torch.sqrt(defocus_phi / fit.defocus)
    nyquist = 0.5 / spectrum.pixel_size
    edges = torch.arange(fit.k_min, nyquist, spectrum.step / 2, dtype=torch.float32)
    data = radial_profile(signal.float().flatten(), k_eq.float().flatten(), edges).numpy()
    centres = ((edges[:-1] + edges[1:]) / 2).double()
    chi = ctf_phase_isotropic(
        centres, fit.defocus, optics.voltage, optics.cs, optics.amplitude_contrast, fit.phase_shift
    )
    model = (-torch.cos(2 * chi)).numpy()
    kc = centres.numpy()
    lam = wavelength(optics.voltage)
    cc = _sliding_correlation(data, model, kc, lam * fit.defocus, 3 * spectrum.step)
    return EquiphaseProfile(k=kc, data=data, model=model, cc=cc)


def _sliding_correlation(data: np.ndarray, model: np.ndarray, k: np.ndarray, lam_df: float, min_half: float):
    """Pearson correlation of ``data`` and ``model`` (both ``(K,)`` on the bins ``k``, Å⁻¹) in a
    window around each bin: ``|k - k_i| <= max(half a Thon-ring period at k_i, min_half)``, the
    period being ``1 / (λ Δf k_i)`` (``lam_df`` = λ·Δf in Å²); NaN data left out; NaN where
    fewer than 5 bins or a flat window. All windows at once (a ``(K, K)`` mask): the same
    numbers as ``np.corrcoef`` per window (up to the order of the sums), ~20x faster.
    """
    data, model = np.asarray(data, dtype=np.float64), np.asarray(model, dtype=np.float64)  # as np.corrcoef computes
    finite = np.isfinite(data)
    half = np.maximum(0.5 / np.maximum(lam_df * k, 1e-9), min_half)
    sel = (np.abs(k[None, :] - k[:, None]) <= half[:, None]) & finite[None, :]
    n = sel.sum(1)
    d = np.where(sel, np.where(finite, data, 0.0)[None, :], 0.0)
    m = np.where(sel, model[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dc = np.where(sel, d - (d.sum(1) / n)[:, None], 0.0)
        mc = np.where(sel, m - (m.sum(1) / n)[:, None], 0.0)
        sxx, syy, sxy = (dc * dc).sum(1), (mc * mc).sum(1), (dc * mc).sum(1)
        ok = (n >= 5) & (np.sqrt(syy / n) > 1e-6) & (np.sqrt(sxx / n) > 0)
        f = n - 1.0  # np.corrcoef's normalisation (cancels, kept for the same rounding)
        cc = (sxy / f) / np.sqrt(sxx / f) / np.sqrt(syy / f)
    return np.where(ok, np.clip(cc, -1, 1), np.nan)


def fit_resolution(profile: EquiphaseProfile, k_min: float) -> float:
    """Resolution (Å) to which the fit holds: ``rlnCtfMaxResolution``.

    Method: the sliding-window correlation of the equiphase average with the fitted model
    (window of about one Thon-ring period) is followed outwards from where it first reaches 0.5
    (the lowest frequencies can be spoiled by the background); the fit holds up to the last
    frequency before it drops below 0.5 for good (three windows in a row). Infinite when
    it never reaches 0.5.
    """
    cc = np.nan_to_num(profile.cc, nan=-1.0)
    k = profile.k
    good = np.nonzero((cc >= FIT_CC_THRESHOLD) & (k >= k_min))[0]
    if good.size == 0:
        return float("inf")
    last_good = good[0]
    run = 0
    for i in range(good[0], len(k)):
        if cc[i] < FIT_CC_THRESHOLD:
            run += 1
            if run >= 3:
                break
        else:
            run = 0
            last_good = i
    return float(1.0 / k[last_good])


def envelope_bfactor(profile: EquiphaseProfile, resolution: float) -> float:
    """Decay of the Thon-ring amplitude as a B-factor (Å²), fitted up to the fit resolution.

    The ring amplitude in each window (projection of the data onto the model) falls as
    ``exp(-B k²/4)``; thicker ice, drift and a poorer microscope raise B. NaN if too few rings.
    """
    k, data, model = profile.k, profile.data, profile.model
    sel = np.isfinite(data) & (k <= 1.0 / resolution) & (k > 0)
    if sel.sum() < 10:
        return float("nan")
    ks, d, m = k[sel], data[sel], model[sel]
    # amplitude per window of 8 bins: least-squares scale of model to data
    amps, kk = [], []
    for i in range(0, len(ks) - 8, 4):
        mm, dd = m[i : i + 8] - m[i : i + 8].mean(), d[i : i + 8] - d[i : i + 8].mean()
        denom = float((mm * mm).sum())
        if denom > 1e-6:
            a = float((mm * dd).sum()) / denom
            if a > 0:
                amps.append(a)
                kk.append(ks[i : i + 8].mean())
    if len(amps) < 3:
        return float("nan")
    slope = np.polyfit(np.square(kk), np.log(amps), 1)[0]
    return float(-4 * slope)


def ice_ring(spectrum: Spectrum) -> tuple[float, float]:
    """Ice-ring strength and crystallinity from the power near 3.7 Å.

    Returns ``(density, crystallinity)``. ``density`` (like RELION's rlnCtfIceRingDensity,
    relative): mean power in the 3.55-3.85 Å band over the mean power in the flanking bands,
    minus 1; about 0 for thin vitreous ice, clearly positive for crystalline ice. The
    crystallinity is the strongest 10° sector of the band over the median sector, minus 1:
    hexagonal-ice spots make it large. Both NaN when the pixel size does not reach 3.35 Å
    resolution (Nyquist = 2 x pixel size).
    """
    res = 1.0 / spectrum.k.clamp_min(1e-9)
    power = spectrum.power
    band = (res >= ICE_BAND[0]) & (res <= ICE_BAND[1])
    flanks = torch.zeros_like(band)
    for lo, hi in ICE_FLANKS:
        flanks |= (res >= lo) & (res <= hi)
    if 2 * spectrum.pixel_size > ICE_FLANKS[0][1] or band.sum() < 10 or flanks.sum() < 10:
        return float("nan"), float("nan")
    density = float(power[band].mean() / power[flanks].mean() - 1.0)
    phi = torch.rad2deg(spectrum.angle[band]) % 180
    sectors = (phi / 10).long().clamp(0, 17)
    sums = torch.zeros(18).index_add_(0, sectors, power[band].float())
    counts = torch.zeros(18).index_add_(0, sectors, torch.ones_like(power[band].float()))
    sector_mean = sums / counts.clamp_min(1)
    crystallinity = float(sector_mean.max() / sector_mean.median() - 1.0)
    return density, crystallinity


def thon_anisotropy(
    spectrum: Spectrum, signal: torch.Tensor, fit: CtfFit, optics: Optics, resolution: float
) -> tuple[float, float]:
    """How unevenly the Thon rings fade with direction (drift, vibration), and the weakest direction.

    The correlation of the signal with the fitted model is computed in 12 sectors of 15° over
    the outer half of the fitted frequency range and ``c0 + c·cos 2(φ - φ_strong)`` is fitted to
    them. Returns ``(anisotropy, angle)``: ``c / c0`` (0 for even rings, 1 when rings vanish along
    one direction) and the direction in degrees (from x) where they are weakest, the drift
    direction for directional blur.
    """
    k = spectrum.k
    k_hi = min(1.0 / resolution if math.isfinite(resolution) else fit.k_max, 0.5 / spectrum.pixel_size)
    k_lo = fit.k_min + 0.5 * max(k_hi - fit.k_min, 0.0)
    sel = (k >= k_lo) & (k <= k_hi)
    if sel.sum() < 200:
        return float("nan"), float("nan")
    ky, kx, sig = spectrum.ky[sel], spectrum.kx[sel], signal[sel]
    chi = fit.chi(ky, kx, optics)
    model = -torch.cos(2 * chi)
    phi = torch.rad2deg(torch.atan2(ky, kx)) % 180
    sector = (phi / 15).long().clamp(0, 11)
    ccs = []
    for s in range(12):
        m = sector == s
        ccs.append(float(pearson(sig[m].double(), model[m].double())) if m.sum() > 20 else float("nan"))
    ccs = np.array(ccs)
    centres = np.radians((np.arange(12) + 0.5) * 15.0)
    ok = np.isfinite(ccs)
    if ok.sum() < 6:
        return float("nan"), float("nan")
    # ring strength against direction: c0 + c1 cos 2φ + c2 sin 2φ (least squares over the sectors)
    design = np.c_[np.ones(ok.sum()), np.cos(2 * centres[ok]), np.sin(2 * centres[ok])]
    c0, c1, c2 = np.linalg.lstsq(design, ccs[ok], rcond=None)[0]
    amplitude = math.hypot(c1, c2)
    if c0 <= 0:
        return float("nan"), float("nan")
    anisotropy = float(min(amplitude / c0, 1.0))
    strongest = math.degrees(math.atan2(c2, c1) / 2)
    return anisotropy, float((strongest + 90.0) % 180.0)


DARK_DROP = 0.15  # 15% fewer electrons than the typical ice: ~50 nm more ice at 300 kV, or contamination
BRIGHT_RISE = 0.10  # 10% more electrons than the typical ice: a crack or a hole in the ice


def dark_bright_fractions(image: torch.Tensor, pixel_size: float, scale: float = 100.0) -> tuple[float, float]:
    """Fractions of the micrograph area much darker or brighter than its typical ice.

    The image is low-passed to ``scale`` Å (so single particles average out); the typical ice
    is its 90th percentile (robust when contamination covers most of the field). Darker by
    more than 15% counts as dark (contamination, ethane and ice balls, thick ice, aggregates),
    brighter by more than 10% as bright (cracks, holes in the ice).
    """
    b = max(1, int(round(scale / 4 / pixel_size)))
    small = F.avg_pool2d(image[None, None].float(), b, b)[0, 0]
    sigma_px = max(1.0, scale / (pixel_size * b) / 2.355)
    radius = int(3 * sigma_px)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=small.device)
    g = torch.exp(-(x**2) / (2 * sigma_px**2))
    g /= g.sum()
    blurred = F.conv2d(F.pad(small[None, None], (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))[0, 0]
    typical = torch.quantile(blurred.flatten(), 0.9)
    if typical <= 0:
        return float("nan"), float("nan")
    dark = float((blurred < (1 - DARK_DROP) * typical).float().mean())
    bright = float((blurred > (1 + BRIGHT_RISE) * typical).float().mean())
    return dark, bright


def defocus_plane(positions: np.ndarray, defoci: np.ndarray, pixel_size: float) -> tuple[float, float]:
    """Specimen tilt from local defocus: fit ``Δf = a + b·x + c·y`` (x, y in Å).

    ``positions`` ``(n, 2)`` region centres as (x, y) pixels; ``defoci`` (Å). Returns
    ``(tilt_deg, axis_deg)``: the tilt angle, atan of the defocus gradient, and the direction
    (degrees from x) in which defocus increases. NaN with fewer than 3 regions.
    """
    ok = np.isfinite(defoci)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    xy = positions[ok] * pixel_size
    design = np.c_[np.ones(ok.sum()), xy]
    coef, *_ = np.linalg.lstsq(design, defoci[ok], rcond=None)
    gradient = math.hypot(coef[1], coef[2])
    return math.degrees(math.atan(gradient)), math.degrees(math.atan2(coef[2], coef[1])) % 360
