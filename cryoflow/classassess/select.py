"""From class scores to a decision: threshold, floors, overrides.

Threshold (:func:`adaptive_threshold`): the scores are calibrated probabilities, so 0.5 is
the decision that makes the fewest mistakes; within 0.5 ± 0.25 the threshold moves to
the emptiest part of *this* dataset's score distribution (particle-weighted), so a class
sitting in a gap between the good and the bad mode is not decided by a hair. With
``--min-score P`` the user's P is used as it is.

Floors: at least ``min_classes`` classes and ``min_particles`` of the particles are kept
(the best-scoring classes are added until both hold; a run that would keep nothing is a
run whose model disagrees with the data, and the report says so). Overrides: ``keep``
and ``reject`` class numbers win over everything. A class that no particle ended in (the
counts are known and zero) is rejected whatever its average looks like: it has nothing to
keep, and its average is an artefact of the last iteration (or a re-seeded class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryoflow.errors import CryoflowError

WINDOW = 0.25
BANDWIDTH = 0.05


@dataclass
class Selection:
    """``keep`` (K,) bool; ``decision`` (K,) text; ``threshold``; ``threshold_source``; notes."""

    keep: np.ndarray
    decision: list[str]
    threshold: float
    threshold_source: str
    notes: list[str] = field(default_factory=list)


def adaptive_threshold(p: np.ndarray, counts: np.ndarray) -> float:
    """The emptiest point of the particle-weighted score density within 0.5 ± :data:`WINDOW`
    (ties: the point nearest 0.5)."""
    w = np.where(np.isfinite(counts) & (counts > 0), counts, 1.0)
    grid = np.round(np.arange(0.5 - WINDOW, 0.5 + WINDOW + 1e-9, 0.0125), 4)
    density = np.array([(w * np.exp(-0.5 * ((p - t) / BANDWIDTH) ** 2)).sum() for t in grid])
    best = density.min()
    ties = grid[density <= best * 1.02 + 1e-12]
    return float(ties[np.argmin(np.abs(ties - 0.5))])


def parse_ids(text: str | None, k: int, what: str) -> list[int]:
    """``"1,3,7-9"`` -> [1, 3, 7, 8, 9]; numbers must be class numbers 1..k."""
    if not text:
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out += list(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise CryoflowError(None, f"{what}: {part!r} is not a class number or a range like 3-7") from None
    bad = [i for i in out if not 1 <= i <= k]
    if bad:
        raise CryoflowError(None, f"{what}: class number(s) {bad} outside 1..{k}")
    return sorted(set(out))


def select(
    p: np.ndarray,
    counts: np.ndarray,
    min_score: float | None = None,
    keep: list[int] = (),
    reject: list[int] = (),
    min_classes: int = 1,
    min_particles: float = 0.05,
) -> Selection:
    """Decide which classes to keep (see the module doc). ``counts`` may be NaN (bare stack)."""
    k = len(p)
    both = set(keep) & set(reject)
    if both:
        raise CryoflowError(None, f"class(es) {sorted(both)} are both in --keep and --reject")
    if min_score is not None:
        if not 0 <= min_score <= 1:
            raise CryoflowError(None, f"--min-score must be within 0-1, got {min_score}")
        threshold, source = float(min_score), "given (--min-score)"
    else:
        threshold, source = adaptive_threshold(p, counts), "adaptive (emptiest score near 0.5)"
    w = np.where(np.isfinite(counts), counts, 1.0)
    empty = w <= 0
    chosen = (p >= threshold) & ~empty
    decision = [
        "rejected (no particles)" if e else "kept" if c else "rejected" for c, e in zip(chosen, empty, strict=True)
    ]
    notes = []
    order = np.argsort(-p)
    for i in order:
        enough = chosen.sum() >= min(min_classes, k) and w[chosen].sum() >= min_particles * w.sum()
        if enough:
            break
        if not chosen[i] and not empty[i] and (i + 1) not in reject:
            chosen[i] = True
            decision[i] = "kept (floor)"
    if any(d == "kept (floor)" for d in decision):
        notes.append(
            f"the threshold kept too little (floor: {min_classes} class(es), {min_particles:.0%} of the particles); "
            "the best-scoring classes were added"
        )
    for i in keep:
        chosen[i - 1] = True
        decision[i - 1] = "kept (user)"
    for i in reject:
        chosen[i - 1] = False
        decision[i - 1] = "rejected (user)"
    return Selection(chosen, decision, threshold, source, notes)
