"""CTF estimation of one micrograph: spectrum, fit, fit resolution and quality metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cryoflow.ctf.fit import CtfFit, Optics, fit_ctf, refine_ctf
from cryoflow.ctf.metrics import (
    EquiphaseProfile,
    dark_bright_fractions,
    defocus_plane,
    envelope_bfactor,
    equiphase_profile,
    fit_resolution,
    ice_ring,
    thon_anisotropy,
)
from cryoflow.ctf.spectrum import power_spectrum

MIN_SIGNIFICANCE = 8.0  # figure of merit x sqrt(points fitted): below, no Thon rings were found (noise alone gives up to ~4-5 after the search)
MAX_FIT_RESOLUTION = 20.0  # Å; a fit that holds only below this frequency is not a fit
TILT_GRID = 3  # regions per side for the defocus-gradient (tilt) estimate


@dataclass
class Settings:
    """Fit settings. Defocus range in Å; resolution limits in Å (``None``: adapt to the pixel size).

    ``spectrum_size``: side of the block-averaged spectrum that is fitted; ``tilt``: the 3x3
    local fits that measure specimen tilt; ``refine_iterations``: L-BFGS iterations of the
    refinement out to the resolution the rings reach. The defaults are ``cryoflow ctf``'s;
    :meth:`fast` is the opt-in on-the-fly mode of ``cryoflow watch``.
    """

    defocus_min: float = 2000.0
    defocus_max: float = 70000.0
    low_resolution: float = 30.0
    high_resolution: float | None = None
    phase_plate: bool = False
    spectrum_size: int = 512
    tilt: bool = True
    refine_iterations: int = 20

    @classmethod
    def fast(cls, **changes) -> Settings:
        """The on-the-fly mode: a 256² spectrum (4x fewer points to fit), no tilt fits, 10 refinement iterations.

        Measured with ``cryoflow bench ctf --fast`` (see :mod:`cryoflow.ctf.bench`): the
        defocus accuracy stays within the bench's targets; about 3-4x less time per 4096²
        micrograph. Tilt is not measured (NaN columns are left out).
        """
        values = {"spectrum_size": 256, "tilt": False, "refine_iterations": 10}
        values.update(changes)
        return cls(**values)


@dataclass
class CtfResult:
    """Everything measured on one micrograph.

    ``ok`` tells whether a fit was possible; if not, ``reason`` says why and the CTF
    numbers are NaN. ``metrics`` holds the quality metrics by name (see :data:`METRIC_DOCS`).
    """

    ok: bool
    reason: str
    fit: CtfFit | None
    resolution: float
    metrics: dict[str, float] = field(default_factory=dict)
    profile: EquiphaseProfile | None = None
    signal: np.ndarray | None = None  # (T, T//2) background-subtracted amplitude, for diagnostics
    model: np.ndarray | None = None  # (T, T//2) fitted -cos 2χ
    k: np.ndarray | None = None  # (T, T//2) |k| of each spectrum block, Å⁻¹


# What each metric means: shown in the report, kept beside the code that computes it.
METRIC_DOCS = {
    "defocus": "Mean of defocus U and V (µm). Underfocus of 0.5-3 µm is typical; more defocus gives more low-resolution contrast and faster-fading Thon rings.",
    "astigmatism": "Defocus U minus defocus V (Å): how elliptical the Thon rings are. Under ~500 Å is usual; over ~1500 Å suggests a badly corrected objective stigmator.",
    "fit_resolution": "Resolution (Å) to which the fitted CTF still matches the Thon rings (rlnCtfMaxResolution): the sliding-window correlation of the ring-averaged spectrum with the model stays above 0.5. Lower is better; it bounds the resolution the micrograph can contribute.",
    "figure_of_merit": "Correlation between the spectrum and the fitted CTF over the fitting range (rlnCtfFigureOfMerit). Near 0 means no Thon rings were found.",
    "ice_ring": "Power near 3.7 Å relative to the bands around it, minus 1 (rlnCtfIceRingDensity-like). Around 0 for thin vitreous ice; clearly above 0 for crystalline ice. NaN when the pixel size is too large to see 3.4 Å.",
    "ice_crystallinity": "Strongest 10° sector of the 3.7 Å band over the median sector, minus 1: hexagonal-ice spots make it large.",
    "envelope_b": "B-factor (Å²) of the fading of the Thon rings: higher for thicker ice, drift or charging.",
    "thon_anisotropy": "Spread of the ring strength with direction, 0 (even) to 1 (gone along one direction): drift or vibration blurs the image along one direction and kills the rings there.",
    "thon_weak_angle": "Direction (degrees from x) in which the rings are weakest, the drift direction when anisotropy is high.",
    "mean_intensity": "Mean pixel value (counts). Across a dataset at the same dose, thicker ice scatters more electrons out of the beam and gives lower intensity; empty holes give the highest.",
    "dark_fraction": "Fraction of the area at least 15% darker than the typical ice (the 90th percentile of the image low-passed to 100 Å): contamination, ethane or ice balls, thick ice, aggregates.",
    "bright_fraction": "Fraction of the area at least 10% brighter than the typical ice: cracks or holes in the ice.",
    "tilt_angle": "Specimen tilt (degrees) from the defocus gradient across the micrograph (3 x 3 local fits); a few degrees is common for bent or tilted grids.",
    "tilt_axis": "Direction (degrees from x) in which defocus increases across the micrograph.",
}


def _no_fit(reason: str, metrics: dict[str, float]) -> CtfResult:
    return CtfResult(ok=False, reason=reason, fit=None, resolution=float("nan"), metrics=metrics)


def estimate(image: torch.Tensor, pixel_size: float, optics: Optics, settings: Settings | None = None) -> CtfResult:
    """Estimate the CTF and quality metrics of one micrograph ``(H, W)`` (any torch device).

    ``pixel_size`` in Å. Returns a :class:`CtfResult`; a micrograph without a usable fit (no
    Thon rings: empty hole, pure noise) is returned with ``ok=False`` and a reason.
    """
    settings = settings or Settings()
    nyquist = 0.5 / pixel_size
    mean = float(image.float().mean())
    dark, bright = dark_bright_fractions(image, pixel_size)
    metrics: dict[str, float] = {"mean_intensity": mean, "dark_fraction": dark, "bright_fraction": bright}
    spectrum = power_spectrum(image, pixel_size, target=settings.spectrum_size)
    spectrum = _to_cpu(spectrum)
    metrics["ice_ring"], metrics["ice_crystallinity"] = ice_ring(spectrum)

    k_min = 1.0 / settings.low_resolution
    k_max = min(1.0 / settings.high_resolution if settings.high_resolution else 1 / 4.5, 0.85 * nyquist)
    if k_max <= k_min * 1.5:
        return _no_fit(f"pixel size {pixel_size:.3g} Å too large for a fit from {settings.low_resolution:g} Å", metrics)
    fit, signal = fit_ctf(
        spectrum,
        optics,
        defocus_range=(settings.defocus_min, settings.defocus_max),
        k_range=(k_min, k_max),
        phase_shift=0.0 if settings.phase_plate else None,
    )
    metrics["figure_of_merit"] = fit.score
    if not fit.significance >= MIN_SIGNIFICANCE:
        return _no_fit(
            f"no Thon rings found (figure of merit {fit.score:.3f} is {fit.significance:.1f} noise levels, needs {MIN_SIGNIFICANCE:g})",
            metrics,
        )
    profile = equiphase_profile(spectrum, signal, fit, optics)
    resolution = fit_resolution(profile, k_min)
    # extend the fit to the resolution the rings reach (up to 0.95 Nyquist), then re-measure
    k_far = min(0.95 * nyquist, 1.0 / resolution) if math.isfinite(resolution) else k_max
    if k_far > k_max * 1.05 and not settings.high_resolution:
        fit = refine_ctf(
            spectrum, fit, optics, (k_min, k_far), fit_phase=settings.phase_plate, iterations=settings.refine_iterations
        )
        profile = equiphase_profile(spectrum, signal, fit, optics)
        resolution = fit_resolution(profile, k_min)
    metrics["figure_of_merit"] = fit.score
    if not resolution <= MAX_FIT_RESOLUTION:
        return _no_fit(f"Thon rings not followed beyond {resolution:.3g} Å (figure of merit {fit.score:.3f})", metrics)
    metrics["fit_resolution"] = resolution
    metrics["envelope_b"] = envelope_bfactor(profile, resolution)
    metrics["thon_anisotropy"], metrics["thon_weak_angle"] = thon_anisotropy(spectrum, signal, fit, optics, resolution)
    if settings.tilt:
        metrics["tilt_angle"], metrics["tilt_axis"] = local_tilt(image, pixel_size, optics, fit, resolution, settings)
    chi = fit.chi(spectrum.ky, spectrum.kx, optics)
    return CtfResult(
        ok=True,
        reason="",
        fit=fit,
        resolution=resolution,
        metrics=metrics,
        profile=profile,
        signal=signal.numpy(),
        model=(-torch.cos(2 * chi)).float().numpy(),
        k=spectrum.k.numpy(),
    )


def _to_cpu(spectrum):
    """Fits run on the CPU in float64 (small problems); the FFT can run on any device."""
    from dataclasses import replace

    return replace(spectrum, power=spectrum.power.cpu(), ky=spectrum.ky.cpu(), kx=spectrum.kx.cpu())


def local_tilt(
    image: torch.Tensor, pixel_size: float, optics: Optics, fit: CtfFit, resolution: float, settings: Settings
):
    """Tilt from the mean defocus of a 3 x 3 grid of regions (astigmatism held at the global value).

    Each region's spectrum is averaged along the global fit's elliptical rings (equiphase
    average) and its defocus found by the joint background + rings search of
    :func:`cryoflow.ctf.fit.search_1d` within ±15% of the global value (0.05% steps).
    """
    from cryoflow.ctf.fit import radial_profile, search_1d
    from cryoflow.optics import astigmatic_defocus

    height, width = image.shape[-2:]
    rh, rw = height // TILT_GRID, width // TILT_GRID
    k_min = fit.k_min
    k_max = min(max(1.0 / resolution, fit.k_max), 0.9 * 0.5 / pixel_size)
    candidates = fit.defocus * torch.linspace(0.85, 1.15, 601, dtype=torch.float64)
    positions, defoci = [], []
    for i in range(TILT_GRID):
        for j in range(TILT_GRID):
            region = image[i * rh : (i + 1) * rh, j * rw : (j + 1) * rw]
            spectrum = _to_cpu(power_spectrum(region, pixel_size, target=256))
            along = astigmatic_defocus(
                spectrum.ky, spectrum.kx, torch.tensor(fit.defocus_u), torch.tensor(fit.defocus_v), fit.angle
            )
            k_eq = spectrum.k * torch.sqrt(along / fit.defocus)
            edges = torch.arange(k_min, k_max, spectrum.step / 2, dtype=torch.float32)
            profile = radial_profile(torch.sqrt(spectrum.power).flatten(), k_eq.float().flatten(), edges).double()
            centres = ((edges[:-1] + edges[1:]) / 2).double()
            score = search_1d(profile, centres, candidates, optics, fit.phase_shift)
            best = int(torch.nan_to_num(score, nan=-1).argmax())
            positions.append(((j + 0.5) * rw, (i + 0.5) * rh))
            # an edge of the search window or no rings explained: no reliable local defocus
            reliable = 0 < best < len(candidates) - 1 and float(score[best]) > 0.05
            defoci.append(float(candidates[best]) if reliable else float("nan"))
    return defocus_plane(np.array(positions), np.array(defoci), pixel_size)
