"""Automatic picking parameters: particle diameter and score threshold, with their evidence.

Diameter (when the user gives none)
    A scale space: each of :data:`DIAMETERS` is tried as the filter's diameter on a few
    micrographs, binned for each diameter to about :data:`SEARCH_SAMPLES` pixels across a
    particle (so every scale costs about the same); the response curve is the mean score of the
    strongest quarter of the peaks (peaks at least ``MIN_DISTANCE x D`` apart). A filter
    matched to the particles gives the strongest peaks, a smaller one catches only their
    cores, a larger one averages particles with the ice around them. The diameter is the
    curve's maximum, refined by a parabola in log(D).

    The sphere filter sees a rotationally averaged particle, so it underestimates elongated
    or flat particles. The diameter is therefore refined from the particles themselves: the
    strong picks at the provisional diameter are cut from the phase-flipped, 20 Å low-passed
    micrograph, each pick's dense core is the connected region above half its central
    value, and its long axis (4 sqrt of the largest eigenvalue of the region's second
    moments, the full length of a uniform ellipse) is measured. Projections in random
    orientations show an elongated particle at every length between its width and its
    length, so the diameter is the :data:`CORE_PERCENTILE` th percentile of the long axes
    divided by a calibration that depends on the cores' elongation (:func:`core_calibration`):
    the half-maximum contour of a projected sphere lies at sqrt(3)/2 = 0.87 of its diameter,
    while a rod's reaches nearly its ends, so one constant (0.96 before) underestimated
    globular particles and overestimated elongated ones (simulated, seeds 1000-1007: 7DDO
    -6% -> -3%, globular 150 Å -7% -> +1%, elongated 150/200/260 Å +7/+15/-10% -> +4/+6/-5%,
    ring 180 Å +13% -> +10%; a multimer of 170 Å stays at -30%: its subunits are measured
    as separate cores).

    A filter matched to the particles finds many strong picks; on few particles (a sparse
    micrograph or two) the curve's maximum may instead lie where a few contaminants or ice
    and carbon features decide it, or at a size whose filter the particles only half match,
    and there a filter finds few strong picks. So the curve's local maxima are tried, highest
    first (:func:`curve_maxima`), and the first whose filter finds at least
    :data:`CORE_MIN_COUNT` strong picks (score above :data:`CORE_MIN_SCORE`) is taken; when
    none does, the highest is kept and the search is marked unconfirmed (a warning; the report
    says so). A maximum with enough strong picks whose cores cannot be measured (big particles
    on small micrographs: a core's patch must lie whole inside) is still taken, as before.
    Simulated 7DDO (115 Å) on few particles, at 1.5 Å/px: 2 micrographs of 2048² (124
    particles): 174 Å (16 strong picks) -> 113 Å; one of 2048² (69 particles): 595 Å (the
    maximum at the curve's large end, 2 strong picks) -> 94 Å; one of 1024² (64 particles):
    295 -> 92 Å (too few cores to refine the last two). The benchmark's datasets keep their
    maxima and their figures.

Threshold
    Scores are in standard deviations of the shot noise after the filter, so pure noise
    has a known distribution of peak heights: each micrograph's filter is run over white
    noise of the micrograph's measured noise power (same size, same peak finder), which
    gives the expected number of noise peaks above any threshold (the *null*). The
    threshold is the lowest at which the expected noise picks are at most
    :data:`FALSE_PICK_RATE` of the picks above it (pooled over the dataset).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cryoflow.picking.filters import Prepared, blob_filter, filtered, sphere_filter
from cryoflow.picking.peaks import find_peaks

#: candidate diameters of the search, Å
DIAMETERS = tuple(float(d) for d in np.geomspace(40.0, 500.0, 19).round(1))
#: the search curve peaks at this fraction of a globular particle's diameter (measured on
#: simulated globular species of 120-250 Å: 0.71-0.76)
SPHERE_CALIBRATION = 0.73
#: percentile of the picks' core long axes taken as the particle's length
CORE_PERCENTILE = 80
#: that percentile over the particle's largest extent for round cores (median long/short axis
#: <= ROUND_ELONGATION; simulated globular species: 0.85-0.89) and for rod-like ones
#: (>= ROD_ELONGATION; simulated elongated species: 1.02-1.10), linear in between
CORE_CALIBRATION = {"round": 0.88, "rod": 1.04}
ROUND_ELONGATION, ROD_ELONGATION = 1.2, 2.2
#: strong picks (score above this) whose cores are measured
CORE_MIN_SCORE = 6.0
#: fewer measured cores than this: the sphere filter's estimate is kept; fewer strong picks than this at a maximum
#: of the response curve: the next maximum is tried
CORE_MIN_COUNT = 20
#: local maxima of the response curve tried at most, highest first
MAX_CANDIDATES = 5
#: cores this elongated (median long/short axis) are picked with an oriented self-template
ELONGATED = 1.5
#: a diameter is tried only where this many fit across the micrograph's shorter side
MIN_ACROSS = 6
#: and where its filter finds at least this many peaks (the strongest quarter is averaged)
MIN_PEAKS = 12
#: pixels across a particle in the diameter search
SEARCH_SAMPLES = 12.0
#: picks closer than this many diameters are duplicates (touching particles are 1 apart; the
#: distance between peaks, in any direction: :func:`peaks.find_peaks`)
MIN_DISTANCE = 0.7
#: picks whose centre is closer than this many diameters to the micrograph edge are dropped
EDGE_MARGIN = 0.5
#: accepted share of expected noise picks among the picks above the threshold
FALSE_PICK_RATE = 0.02
#: the threshold is never below this (noise standard deviations)
MIN_THRESHOLD = 3.0
#: picks scoring above this many times the median pick are junk (ice crystals, dense
#: contaminants: on simulated data they score 2-5x the median particle, particles rarely 2x)
MAX_RELATIVE_SCORE = 2.0
#: a peak on a stronger peak's flank (:func:`peaks.find_peaks`) is a candidate only when it scores at
#: least this many times the median pick: particles touching a stronger one score like particles, the
#: bumps a crowded field leaves between particles a few noise standard deviations (simulated
#: 150-250 Å species: 3-4.5 against a median pick of 15-25)
FLANK_MIN_RELATIVE_SCORE = 0.5
#: threshold grid searched, noise standard deviations
THRESHOLDS = tuple(float(t) for t in np.arange(MIN_THRESHOLD, 30.0, 0.1).round(2))


@dataclass
class DiameterSearch:
    """Evidence of the diameter search: ``curve[i]`` is the response of the sphere filter of
    ``diameters[i]`` Å; ``candidates`` the sphere diameters of the curve's local maxima, the
    highest first (:func:`curve_maxima`); ``sphere_diameter`` the one taken (the first whose
    filter finds at least :data:`CORE_MIN_COUNT` strong picks, else the highest: ``confirmed``
    False); ``core_axes`` the long axes (Å) of its strong picks' cores; ``diameter`` the result."""

    diameters: list[float]
    curve: list[float]
    diameter: float
    micrographs: int
    candidates: list[float] = field(default_factory=list)
    sphere_diameter: float = float("nan")
    core_axes: list[float] = field(default_factory=list)
    elongation: float = float("nan")
    confirmed: bool = False

    def to_dict(self) -> dict:
        return {
            "diameter_A": self.diameter,
            "sphere_filter_diameter_A": self.sphere_diameter,
            "candidates_A": self.candidates,
            "confirmed_by_strong_picks": self.confirmed,
            "diameters_A": self.diameters,
            "response": self.curve,
            "core_long_axes_A": [round(a, 1) for a in self.core_axes],
            "core_elongation": round(self.elongation, 3) if np.isfinite(self.elongation) else None,
            "micrographs": self.micrographs,
        }


@dataclass
class Cores:
    """The dense cores of strong picks: per core its long and short axes (Å), the long axis's
    angle (radians, from the x axis towards y), the core's centroid relative to the patch
    centre (pixels, (y, x)), and the pick's patch of the phase-flipped,
    low-passed micrograph (particles positive) ``(n, 2r+1, 2r+1)`` at ``pixel_size`` Å.
    ``long``/``short`` hold every core; ``angle``/``offset``/``patches`` only those measured at
    ``pixel_size`` (micrographs of another pixel size cannot be averaged into one template);
    ``strong`` counts the strong picks, measurable or not (away from the edges by the usual
    margin)."""

    long: list[float] = field(default_factory=list)
    short: list[float] = field(default_factory=list)
    angle: list[float] = field(default_factory=list)
    offset: list[tuple[float, float]] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)
    pixel_size: float = float("nan")
    strong: int = 0

    def extend(self, other: Cores) -> None:
        self.strong += other.strong
        self.long += other.long
        self.short += other.short
        if not self.patches:
            self.pixel_size = other.pixel_size
        if other.pixel_size == self.pixel_size:
            self.angle += other.angle
            self.offset += other.offset
            self.patches += other.patches

    @property
    def elongation(self) -> float:
        """Median long/short axis ratio (1 for round cores)."""
        if not self.long:
            return float("nan")
        return float(np.median(np.asarray(self.long) / np.maximum(np.asarray(self.short), 1e-9)))


def measure_cores(prep: Prepared, diameter: float, min_score: float = CORE_MIN_SCORE) -> Cores:
    """The cores of the strong picks of ``prep`` at ``diameter`` Å (see the module doc)."""
    from scipy import ndimage

    d_px = diameter / prep.pixel_size
    z = filtered(prep, blob_filter(prep, diameter))
    r = int(np.ceil(2 * d_px))
    yx, _ = find_peaks(z, MIN_DISTANCE * d_px, r + 0.5, floor=min_score)  # whole patches of radius r
    strong, _ = find_peaks(z, MIN_DISTANCE * d_px, EDGE_MARGIN * d_px, floor=min_score)
    low = torch.exp(-0.5 * (prep.k * 20.0) ** 2)
    if prep.ctf is not None:
        low = low * torch.sign(prep.ctf)
    density = -torch.fft.irfft2(prep.spectrum * low, s=prep.shape)  # particles positive
    density = (density - density.median()).cpu().numpy()
    cores = Cores(pixel_size=prep.pixel_size, strong=len(strong))
    for y, x in np.round(yx).astype(int):
        patch = density[y - r : y + r + 1, x - r : x + r + 1]
        if patch.shape != (2 * r + 1, 2 * r + 1):
            continue
        centre = patch[r - 1 : r + 2, r - 1 : r + 2].mean()
        if centre <= 0:
            continue
        labels, _ = ndimage.label(patch > 0.5 * centre)
        core = labels == labels[r, r]
        if labels[r, r] == 0 or core[0].any() or core[-1].any() or core[:, 0].any() or core[:, -1].any():
            continue  # no core, or one running into the neighbours
        yy, xx = np.nonzero(core)
        if len(yy) < 5:
            continue
        values, vectors = np.linalg.eigh(np.cov(np.stack([yy, xx]).astype(float)))
        cores.long.append(4 * np.sqrt(max(float(values[-1]), 0.0)) * prep.pixel_size)
        cores.short.append(4 * np.sqrt(max(float(values[0]), 0.0)) * prep.pixel_size)
        cores.angle.append(float(np.arctan2(vectors[0, -1], vectors[1, -1])))
        cores.offset.append((float(yy.mean() - r), float(xx.mean() - r)))
        cores.patches.append(patch.copy())
    return cores


def self_template(cores: Cores) -> np.ndarray:
    """The average of the cores' patches, each centred on its core and rotated so its long
    axis lies along x: an oriented template of the particle ``(2r+1, 2r+1)`` (white) for
    template matching."""
    import torch.nn.functional as F

    patches = torch.as_tensor(np.stack(cores.patches), dtype=torch.float32)[:, None]
    theta = torch.as_tensor(cores.angle, dtype=torch.float32)
    cos, sin = torch.cos(theta), torch.sin(theta)
    affine = torch.zeros(len(theta), 2, 3)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
    size = patches.shape[-1]
    offset = torch.as_tensor(cores.offset, dtype=torch.float32) * (2.0 / size)  # pixels -> normalized
    affine[:, 0, 2], affine[:, 1, 2] = offset[:, 1], offset[:, 0]
    grid = F.affine_grid(affine, tuple(patches.shape), align_corners=False)
    aligned = F.grid_sample(patches, grid, align_corners=False)[:, 0]
    average = aligned.mean(0)
    return ((average + average.flip(0).flip(1)) / 2).numpy()  # the long axis has no direction


def core_calibration(elongation: float) -> float:
    """The :data:`CORE_PERCENTILE` th percentile of the core long axes over the particle's
    largest extent, for cores of this median elongation (see :data:`CORE_CALIBRATION`)."""
    if not np.isfinite(elongation):
        elongation = ROUND_ELONGATION
    return float(
        np.interp(elongation, [ROUND_ELONGATION, ROD_ELONGATION], [CORE_CALIBRATION["round"], CORE_CALIBRATION["rod"]])
    )


def diameter_from_cores(axes: list[float], elongation: float = float("nan")) -> float | None:
    """The particle diameter (Å) from the picks' core long axes (Å) and their median elongation,
    or None when too few were measured."""
    if len(axes) < CORE_MIN_COUNT:
        return None
    return float(round(np.percentile(axes, CORE_PERCENTILE) / core_calibration(elongation), 1))


def scale_response(prepare_binned, pixel_size: float, diameters=DIAMETERS) -> np.ndarray:
    """Response of one micrograph at each diameter (mean of its strongest quarter of peaks).

    ``prepare_binned(bin)`` gives the micrograph prepared at a bin factor (cached by the
    caller); ``pixel_size``: Å per micrograph pixel.
    """
    out = []
    for d in diameters:
        prep = prepare_binned(max(1, int(d / SEARCH_SAMPLES / pixel_size)))
        h, w = prep.shape
        d_px = d / prep.pixel_size
        if d_px * MIN_ACROSS > min(h, w):
            out.append(np.nan)  # too few particles of this size fit: a few ice or carbon features would decide
            continue
        z = filtered(prep, sphere_filter(prep, d))
        _, values = find_peaks(z, MIN_DISTANCE * d_px, EDGE_MARGIN * d_px)
        out.append(float(np.mean(values[: len(values) // 4])) if len(values) >= MIN_PEAKS else np.nan)
    return np.array(out)


def choose_diameter(curves: list[np.ndarray], diameters=DIAMETERS) -> DiameterSearch:
    """The diameter at the maximum of the mean response curve (parabola-refined in log D), and the curve's other
    local maxima as candidates (:func:`curve_maxima`)."""
    stack = np.stack(curves)
    counts = np.isfinite(stack).sum(0)
    curve = np.where(counts > 0, np.nansum(stack, 0) / np.maximum(counts, 1), np.nan)
    if not np.isfinite(curve).any():
        raise ValueError("no diameter could be tried on these micrographs (too small?)")
    candidates = curve_maxima(curve, diameters)
    return DiameterSearch(
        diameters=[float(d) for d in diameters],
        curve=[float(v) if np.isfinite(v) else None for v in curve],
        diameter=candidates[0],
        micrographs=len(curves),
        candidates=candidates,
    )


def curve_maxima(curve: np.ndarray, diameters=DIAMETERS) -> list[float]:
    """The particle diameters (Å) of the response curve's local maxima, the highest first.

    Each maximum is refined by a parabola through it and its neighbours in log D and divided by
    :data:`SPHERE_CALIBRATION`; an end of the curve (or a neighbour not tried) counts as lower.
    """
    curve = np.asarray(curve, dtype=float)
    padded = np.concatenate([[-np.inf], np.where(np.isfinite(curve), curve, -np.inf), [-np.inf]])
    logd = np.log(np.asarray(diameters, dtype=float))
    found = []
    for i in np.flatnonzero(np.isfinite(curve)):
        a, b, c = padded[i], padded[i + 1], padded[i + 2]
        if not (b > a and b >= c):
            continue
        best = logd[i]
        if np.isfinite(a) and np.isfinite(c) and a - 2 * b + c < 0:
            step = 0.5 * (a - c) / (a - 2 * b + c)
            best = logd[i] + float(np.clip(step, -0.5, 0.5)) * (logd[i + 1] - logd[i])
        found.append((b, float(round(math.exp(best) / SPHERE_CALIBRATION, 1))))
    return [d for _, d in sorted(found, key=lambda item: -item[0])]


def noise_like(prep: Prepared, seed: int = 0) -> Prepared:
    """``prep`` with its image replaced by white noise of its measured shot-noise power."""
    h, w = prep.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((h, w), generator=gen).to(prep.image.device) * math.sqrt(prep.white / (h * w))
    return dataclasses.replace(prep, image=noise, spectrum=torch.fft.rfft2(noise))


def null_peaks(prep: Prepared, score, min_distance: float, margin: float, seed: int = 0) -> np.ndarray:
    """Peak scores of the picking filter run over white noise of the micrograph's noise power.

    ``score(prep) -> (h, w)`` is the picker's score map; same size, same filter, same peak
    finder (``min_distance``, ``margin`` in working pixels) as the real picks: the scores
    pure noise would give (see the module doc).
    """
    _, values = find_peaks(score(noise_like(prep, seed)), min_distance, margin)
    return values


@dataclass
class ThresholdChoice:
    """The chosen threshold and the curves behind it (counts above each grid threshold)."""

    threshold: float
    thresholds: list[float]
    picks_above: list[int]
    noise_above: list[float]
    rule: str
    expected_false: float = field(default=0.0)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "expected_noise_picks": self.expected_false,
            "thresholds": self.thresholds,
            "picks_above": self.picks_above,
            "noise_peaks_above": self.noise_above,
        }


def choose_threshold(scores: np.ndarray, null: np.ndarray, rate: float = FALSE_PICK_RATE) -> ThresholdChoice:
    """The lowest threshold where expected noise picks <= ``rate`` x picks above it.

    ``scores``: every candidate peak's score (the dataset); ``null``: the noise peaks' scores
    over the same micrographs.
    """
    grid = np.asarray(THRESHOLDS)
    picks = np.searchsorted(np.sort(scores), grid, side="right")
    picks = len(scores) - picks
    noise = len(null) - np.searchsorted(np.sort(null), grid, side="right")
    ok = noise <= rate * np.maximum(picks, 1)
    i = int(np.argmax(ok)) if ok.any() else len(grid) - 1
    return ThresholdChoice(
        threshold=float(grid[i]),
        thresholds=[float(t) for t in grid],
        picks_above=[int(p) for p in picks],
        noise_above=[int(n) for n in noise],
        rule=f"lowest threshold with expected noise picks <= {rate:.0%} of picks (noise from white-noise runs "
        "of each micrograph's filter)",
        expected_false=float(noise[i]),
    )
