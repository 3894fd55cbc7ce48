"""Automatic picking parameters: particle diameter and score threshold, with their evidence.

Diameter (when the user gives none)
    A scale space: each of :data:`DIAMETERS` is tried as the filter's diameter on a few
    micrographs, binned for each diameter to about :data:`SEARCH_SAMPLES` pixels across a
    particle (so every scale costs about the same); the response curve is the mean score of the
    strongest quarter of the peaks (peaks at least ``MIN_DISTANCE x D`` apart). A filter
    matched to the particles gives the strongest peaks, a smaller one catches only their
    cores, a larger one averages particles with the ice around them. The diameter is the
    curve's maximum, refined by a parabola in log(D).

Threshold
    Scores are in standard deviations of the shot noise after the filter, so pure noise
    has a known distribution of peak heights: each micrograph's filter is run over white
    noise of the micrograph's measured noise power (same size, same peak finder), which
    gives the expected number of noise peaks above any threshold (the *null*). The
    threshold is the lowest at which the expected noise picks are at most
    :data:`FALSE_PICK_RATE` of the picks above it (pooled over the dataset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cryoflow.picking.filters import Prepared, blob_filter, filtered, noise_sigma
from cryoflow.picking.peaks import find_peaks

#: candidate diameters of the search, Å
DIAMETERS = tuple(float(d) for d in np.geomspace(60.0, 600.0, 19).round(1))
#: pixels across a particle in the diameter search
SEARCH_SAMPLES = 12.0
#: picks closer than this many diameters are duplicates (touching particles are 1 apart)
MIN_DISTANCE = 0.7
#: picks whose centre is closer than this many diameters to the micrograph edge are dropped
EDGE_MARGIN = 0.5
#: accepted share of expected noise picks among the picks above the threshold
FALSE_PICK_RATE = 0.02
#: the threshold is never below this (noise standard deviations)
MIN_THRESHOLD = 3.0
#: threshold grid searched, noise standard deviations
THRESHOLDS = tuple(float(t) for t in np.arange(MIN_THRESHOLD, 30.0, 0.1).round(2))


@dataclass
class DiameterSearch:
    """Evidence of the diameter search: ``curve[i]`` is the response at ``diameters[i]`` Å."""

    diameters: list[float]
    curve: list[float]
    diameter: float
    micrographs: int

    def to_dict(self) -> dict:
        return {
            "diameter_A": self.diameter,
            "diameters_A": self.diameters,
            "response": self.curve,
            "micrographs": self.micrographs,
        }


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
        if 2 * EDGE_MARGIN * d_px >= min(h, w) / 2:
            out.append(np.nan)
            continue
        z = filtered(prep, blob_filter(prep, d))
        _, values = find_peaks(z, MIN_DISTANCE * d_px, EDGE_MARGIN * d_px)
        out.append(float(np.mean(values[: max(3, len(values) // 4)])) if len(values) else np.nan)
    return np.array(out)


def choose_diameter(curves: list[np.ndarray], diameters=DIAMETERS) -> DiameterSearch:
    """The diameter at the maximum of the mean response curve (parabola-refined in log D)."""
    stack = np.stack(curves)
    counts = np.isfinite(stack).sum(0)
    curve = np.where(counts > 0, np.nansum(stack, 0) / np.maximum(counts, 1), np.nan)
    valid = np.isfinite(curve)
    if not valid.any():
        raise ValueError("no diameter could be tried on these micrographs (too small?)")
    i = int(np.nanargmax(curve))
    logd = np.log(np.asarray(diameters))
    best = logd[i]
    if 0 < i < len(curve) - 1 and valid[i - 1] and valid[i + 1]:
        a, b, c = curve[i - 1], curve[i], curve[i + 1]
        denom = a - 2 * b + c
        if denom < 0:
            step = 0.5 * (a - c) / denom
            best = logd[i] + float(np.clip(step, -0.5, 0.5)) * (logd[i + 1] - logd[i])
    return DiameterSearch(
        diameters=[float(d) for d in diameters],
        curve=[float(v) if np.isfinite(v) else None for v in curve],
        diameter=float(round(math.exp(best), 1)),
        micrographs=len(curves),
    )


def null_peaks(prep: Prepared, diameter: float, seed: int = 0) -> np.ndarray:
    """Peak scores of the picking filter run over white noise of the micrograph's noise power.

    Same size, same filter, same peak finder as the real picks: the scores pure noise would
    give (see the module doc).
    """
    h, w = prep.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((h, w), generator=gen).to(prep.image.device) * math.sqrt(prep.white / (h * w))
    filt = blob_filter(prep, diameter)
    z = torch.fft.irfft2(torch.fft.rfft2(noise) * filt, s=(h, w)) / max(noise_sigma(prep, filt), 1e-12)
    d_px = diameter / prep.pixel_size
    _, values = find_peaks(z, MIN_DISTANCE * d_px, EDGE_MARGIN * d_px)
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
