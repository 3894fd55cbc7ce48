"""Per-pick junk tests: each pick's density against the median pick's, with a countable reason.

Every intact particle of a dataset carries the same protein, so, seen through the same
filter, every view of it holds about the same density; junk does not. The tests measure
each pick on the density image (:func:`cryoflow.picking.cnn.density_image`: phase-flipped,
band-passed, in noise standard deviations, :data:`cnn_net.SAMPLES_PER_DIAMETER` pixels per
particle diameter, not clipped) and compare it with the median pick of its micrograph (the
filter's gain depends on the defocus and the ice):

``mass``
    the positive density within the particle's radius. Measured on simulated species of
    115-250 Å (4 x 12 held-out micrographs), the particles' mass relative to the median lies
    within 0.84-1.18 (0.5-99.5th percentile, a robust standard deviation of 4.5-8% in log);
    ice chips and dense contaminants hold 1.2-6.6 times the median, a piece of a particle
    (broken) 0.65-1.0, an aggregate's member 1.0-1.6 (its neighbours reach into the radius).
``peak``
    the highest density within a quarter diameter of the centre: a contaminant (ethane, ice
    or metal balls: denser than protein) peaks at 1.7-2.6 times the median pick, 99% of the
    particles below 1.7.

A pick is rejected when its log mass lies more than :data:`MASS_SIGMAS` robust standard
deviations (1.4826 x the median absolute deviation over the dataset's picks) from its
micrograph's median (``light``: a broken particle or a fragment; ``heavy``: an aggregate, an ice
chip, a contaminant), or its log peak more than :data:`PEAK_SIGMAS` above it (``dense``).
On 4 simulated species x 12 micrographs (not the benchmark's), after the filter and the CNN,
these tests took the picks on junk from 4.7% to 1.4% on average (8.4% to 2.6% for the
elongated species), losing 3 of 1762 particles. What they leave is mostly broken particles
whose remaining piece holds nearly a whole particle's density, and members of aggregates.
A dataset of several species (or an elongated one seen end-on and side-on) widens the spread,
and the limits, which scale with it, loosen: the tests stay conservative rather than cut
into one species (on the tests' two-species fixture, limits 0.57-1.75 x the median mass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cryoflow.picking.cnn_net import SAMPLES_PER_DIAMETER

#: radius (particle diameters) within which a pick's mass is summed
MASS_RADIUS = 0.5
#: radius (particle diameters) within which a pick's peak density is taken
PEAK_RADIUS = 0.25
#: a pick's log mass this many robust standard deviations from its micrograph's median: light or heavy
MASS_SIGMAS = 3.0
#: a pick's log peak density this many robust standard deviations above its micrograph's median: dense
PEAK_SIGMAS = 3.5
#: a micrograph with fewer picks than this is compared with the dataset's median pick instead of its own
MIN_PICKS = 10
#: below this many picks in all, the tests are not run (no reliable median)
MIN_TOTAL = 30
#: the reasons, in the order they are tested
REASONS = ("light", "heavy", "dense")


def measure(density: torch.Tensor, yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mass, peak)`` ``(n,)`` of the picks at ``yx`` ``(n, 2)`` (pixels of ``density``, the
    :func:`cnn.density_image` of their micrograph); mass in noise standard deviations x diameters²."""
    from cryoflow.picking.cnn import crop_patches

    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2)
    if len(yx) == 0:
        return np.zeros(0), np.zeros(0)
    half = int(np.ceil(MASS_RADIUS * SAMPLES_PER_DIAMETER))
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    r = torch.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2) / SAMPLES_PER_DIAMETER
    patches = crop_patches(density.float(), yx, 2 * half + 1)[:, 0]
    mass = (patches.clamp_min(0) * (r <= MASS_RADIUS)).sum((1, 2)) / SAMPLES_PER_DIAMETER**2
    peak = torch.where(r <= PEAK_RADIUS, patches, torch.full_like(patches, -torch.inf)).amax((1, 2))
    return mass.double().numpy(), peak.double().numpy()


@dataclass
class JunkTests:
    """What the tests did: the robust spreads, the limits and the picks rejected per reason."""

    ran: bool = False
    reason: str = ""
    picks: int = 0
    mass_sigma: float = float("nan")
    peak_sigma: float = float("nan")
    #: the dataset's median log mass and log peak density (the reference of sparse micrographs)
    mass_pooled: float = float("nan")
    peak_pooled: float = float("nan")
    rejected: dict[str, int] = field(default_factory=lambda: {k: 0 for k in REASONS})

    def to_dict(self) -> dict:
        finite = lambda v: round(float(v), 4) if np.isfinite(v) else None  # noqa: E731
        return {
            "ran": self.ran,
            "reason": self.reason,
            "rule": (
                f"log mass within {MASS_SIGMAS:g} robust standard deviations of its micrograph's median pick "
                f"(light: broken particles, fragments; heavy: aggregates, ice chips, contaminants), log peak "
                f"density at most {PEAK_SIGMAS:g} above it (dense: contaminants)"
            ),
            "picks_tested": self.picks,
            "log_mass_sigma": finite(self.mass_sigma),
            "log_peak_sigma": finite(self.peak_sigma),
            "mass_limits_relative": [
                finite(np.exp(-MASS_SIGMAS * self.mass_sigma)),
                finite(np.exp(MASS_SIGMAS * self.mass_sigma)),
            ],
            "peak_limit_relative": finite(np.exp(PEAK_SIGMAS * self.peak_sigma)),
            "rejected": dict(self.rejected),
            "rejected_total": int(sum(self.rejected.values())),
        }

    def fixed(self) -> dict:
        """What a later run needs to test its picks exactly as these were (``reject_junk(fixed=...)``),
        at full precision: whether the tests ran, the spreads and the dataset's medians."""
        value = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        return {
            "ran": self.ran,
            "reason": self.reason,
            "mass_sigma": value(self.mass_sigma),
            "peak_sigma": value(self.peak_sigma),
            "mass_pooled": value(self.mass_pooled),
            "peak_pooled": value(self.peak_pooled),
        }


def _pooled(values: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate(values))) if values else 0.0


def _relative(values: list[np.ndarray], pooled: float) -> list[np.ndarray]:
    """Each micrograph's log values minus its median (``pooled``, the dataset's median, for sparse micrographs)."""
    return [v - (np.median(v) if len(v) >= MIN_PICKS else pooled) for v in values]


def _robust_sigma(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def reject_junk(picks: list, fixed: dict | None = None) -> JunkTests:
    """Run the tests on the kept picks of ``picks`` (:class:`pick.MicrographPicks` with their
    ``density``); rejected picks are no longer ``kept`` and their reason goes to ``p.junk``.

    ``fixed``: an earlier run's :meth:`JunkTests.fixed` (the whole dataset's, or a sample's):
    its spreads and medians instead of those of ``picks``, so each micrograph is tested
    exactly as in that run whatever else ``picks`` holds (a batch of a scattered pick step)."""
    record = JunkTests()
    kept = [np.nonzero(p.kept)[0] for p in picks]
    record.picks = int(sum(len(k) for k in kept))
    if any(p.density is None for p in picks):
        record.reason = "no density image"
        return record
    if fixed is not None and not fixed["ran"]:
        record.reason = f"not run on the parameter search's picks: {fixed['reason']}"
        return record
    if fixed is None and record.picks < MIN_TOTAL:
        record.reason = f"only {record.picks} picks (at least {MIN_TOTAL} needed for the median pick)"
        return record
    masses, peaks = [], []
    for p, k in zip(picks, kept, strict=True):
        mass, peak = measure(p.density, p.to_density(p.yx[k]))
        masses.append(np.log(np.maximum(mass, 1e-6)))
        peaks.append(np.log(np.maximum(peak, 1e-6)))
    if fixed is None:
        record.mass_pooled, record.peak_pooled = _pooled(masses), _pooled(peaks)
    else:
        record.mass_pooled, record.peak_pooled = fixed["mass_pooled"], fixed["peak_pooled"]
    masses, peaks = _relative(masses, record.mass_pooled), _relative(peaks, record.peak_pooled)
    if fixed is None:
        record.mass_sigma = _robust_sigma(np.concatenate(masses))
        record.peak_sigma = _robust_sigma(np.concatenate(peaks))
    else:
        record.mass_sigma, record.peak_sigma = fixed["mass_sigma"], fixed["peak_sigma"]
    record.ran = True
    for p, k, m, q in zip(picks, kept, masses, peaks, strict=True):
        tests = {
            "light": m < -MASS_SIGMAS * record.mass_sigma,
            "heavy": m > MASS_SIGMAS * record.mass_sigma,
            "dense": q > PEAK_SIGMAS * record.peak_sigma,
        }
        reason = np.full(len(k), "", dtype=object)
        for name in REASONS:
            reason[(reason == "") & tests[name]] = name
        for name in REASONS:
            record.rejected[name] += int((reason == name).sum())
        p.junk = np.full(len(p.kept), "", dtype=object)
        p.junk[k] = reason
        p.kept[k[reason != ""]] = False
    return record
