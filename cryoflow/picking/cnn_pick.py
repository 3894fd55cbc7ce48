"""The CNN picker over a dataset: training images from the blob picker's candidates, then re-scoring.

:func:`rescore` takes the candidates of every micrograph (:class:`pick.MicrographPicks`
with their network input, made by ``pick.candidates(..., cnn_diameter=D)``), the chosen
threshold and ceiling, builds the training set (:mod:`cryoflow.picking.cnn`), trains, and
re-scores every candidate, after moving it to the centre of mass of the density around it
(:func:`cnn.recentre`): a pick is kept when its logit is at least
:func:`cnn.logit_threshold` of the filter's picks' logits, its blob score at least :data:`search.MIN_THRESHOLD` and at
most the ceiling. Given ``train_coordinates`` (a particles STAR, e.g. classassess's
``particles_selected.star``), the particles it lists on these micrographs are the
positives instead of the confident picks; RELION's origin offsets
(rlnOriginXAngst/YAngst), when present, move each coordinate onto the particle's centre.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from cryoflow.errors import CryoflowError
from cryoflow.picking import cnn, search

#: train twice, the second time without the positives the first network finds outliers
PURIFY = False
#: the filter's picks that fail the junk tests (:mod:`cryoflow.picking.pick_junk`) are negatives, never
#: positives (measured on 4 species x 12 simulated micrographs: F1 and junk share within their run-to-run
#: spread, -0.5 to +1.2 points and -0.1 to +0.3 points; off: the tests reject those picks after the CNN anyway)
JUNK_NEGATIVES = False


def to_cnn(p, yx: np.ndarray) -> np.ndarray:
    """Micrograph pixel positions ``(n, 2)`` of micrograph ``p`` to its network input's pixels."""
    return (np.asarray(yx, dtype=np.float64).reshape(-1, 2) + 0.5) * p.cnn_factor - 0.5


def from_cnn(p, yx: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_cnn`."""
    return (np.asarray(yx, dtype=np.float64).reshape(-1, 2) + 0.5) / p.cnn_factor - 0.5


def unique(yx: np.ndarray, logits: np.ndarray, distance: float) -> np.ndarray:
    """Bool ``(n,)``: False for a pick with a better-scored pick closer than ``distance`` (same units as ``yx``)."""
    if len(yx) < 2:
        return np.ones(len(yx), dtype=bool)
    d = np.hypot(*(yx[:, None, :] - yx[None, :, :]).transpose(2, 0, 1))
    order = np.argsort(-logits, kind="stable")
    rank = np.empty(len(yx), dtype=np.int64)
    rank[order] = np.arange(len(yx))
    better_near = (d < distance) & (rank[None, :] < rank[:, None])
    return ~better_near.any(1)


def _key(name: str) -> str:
    return PurePosixPath(str(name).replace("\\", "/")).stem


def read_train_coordinates(path: str | os.PathLike, names: list[str], pixel_sizes) -> dict[str, np.ndarray]:
    """Positions ``{micrograph name: (n, 2) [y, x] micrograph px}`` of the particles listed in the
    STAR ``path`` on micrographs ``names`` (matched by name, else by file stem)."""
    from cryoflow.io import read_blocks

    blocks = read_blocks(path)
    table = next(
        (b for b in blocks.values() if {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(b.columns)),
        None,
    )
    if table is None:
        raise CryoflowError(path, "no table with rlnMicrographName, rlnCoordinateX and rlnCoordinateY")
    by_stem = {_key(n): n for n in names}
    apix = dict(zip(names, pixel_sizes, strict=True))
    out: dict[str, list] = {}
    for mic, rows in table.groupby("rlnMicrographName"):
        name = str(mic) if str(mic) in apix else by_stem.get(_key(str(mic)))
        if name is None:
            continue
        x = rows["rlnCoordinateX"].to_numpy(float)
        y = rows["rlnCoordinateY"].to_numpy(float)
        if "rlnOriginXAngst" in rows and "rlnOriginYAngst" in rows:
            x = x - rows["rlnOriginXAngst"].to_numpy(float) / apix[name]
            y = y - rows["rlnOriginYAngst"].to_numpy(float) / apix[name]
        out.setdefault(name, []).append(np.stack([y, x], 1))
    if not out:
        raise CryoflowError(
            path, "lists no particle on the micrographs being picked (rlnMicrographName does not match)"
        )
    return {k: np.concatenate(v) for k, v in out.items()}


def _training_images(
    picks: list, threshold: float, ceiling: float, given: dict | None, outliers: list | None = None
) -> list[cnn.TrainingImage]:
    kept_scores = np.concatenate([p.scores[(p.scores >= threshold) & (p.scores <= ceiling)] for p in picks])
    lo, hi = (
        np.percentile(kept_scores, cnn.POSITIVE_BAND) if len(kept_scores) else (np.inf, -np.inf)
    )  # the confident band
    chosen = np.unique(np.linspace(0, len(picks) - 1, min(cnn.MAX_MICROGRAPHS, len(picks))).round().astype(int))
    out = []
    for i in chosen:
        p = picks[int(i)]
        if given is not None:
            if p.name not in given:
                continue
            positives = given[p.name]
        else:
            band = (p.scores >= max(lo, threshold)) & (p.scores <= min(hi, ceiling))
            if outliers is not None:
                band &= ~outliers[int(i)]
            positives = p.yx[band]
        negatives = np.concatenate([p.yx[p.scores > ceiling], p.excluded_yx])
        if outliers is not None:
            negatives = np.concatenate([negatives, p.yx[outliers[int(i)]]])
        out.append(
            cnn.TrainingImage(
                image=p.cnn_image.float(),
                positives=to_cnn(p, positives),
                candidates=to_cnn(p, p.yx),
                negatives=to_cnn(p, negatives),
                picks=int(((p.scores >= threshold) & (p.scores <= ceiling)).sum()),
            )
        )
    return out


def rescore(
    picks: list,
    threshold: float,
    ceiling: float,
    seed: int = 0,
    device="cpu",
    train_coordinates: str | os.PathLike | None = None,
    fixed: tuple | None = None,
) -> cnn.Training:
    """Train on ``picks`` and re-decide every pick's ``kept`` (see the module doc); each pick's
    logit goes to ``p.cnn_scores``. Returns the training record (untrained: picks unchanged;
    trained: the network is its ``net`` attribute).

    ``fixed``: ``(net, logit threshold, record)`` of an earlier run (``net`` None when it did not
    train): no training, every pick scored with that network and threshold, so each micrograph
    is decided exactly as in that run (a batch of a scattered pick step)."""
    if fixed is not None:
        net, threshold, record = fixed
        for p in picks:  # as below: the peaks onto the centres of mass, trained or not
            p.yx = from_cnn(p, cnn.recentre(p.cnn_image.float(), to_cnn(p, p.yx)))
        if net is None:
            return record
        _decide(picks, net, threshold, ceiling)
        record.threshold, record.net = threshold, net
        return record
    given = None
    if train_coordinates is not None:
        given = read_train_coordinates(train_coordinates, [p.name for p in picks], [p.pixel_size for p in picks])
    n_cand = sum(len(p.scores) for p in picks)
    n_null = sum(len(p.null) for p in picks)
    n_strong = sum(int((p.scores > ceiling).sum()) for p in picks)
    candidate_prior = float(np.clip(1 - (n_null + n_strong) / max(n_cand, 1), 0.05, 0.95))
    for p in picks:  # the filter's peaks onto the particles' centres of mass (positives included)
        p.yx = from_cnn(p, cnn.recentre(p.cnn_image.float(), to_cnn(p, p.yx)))
    outliers = None
    if JUNK_NEGATIVES:
        # the filter's picks that fail the junk tests are negatives, never positives
        from cryoflow.picking.pick_junk import reject_junk

        before = [p.kept.copy() for p in picks]
        reject_junk(picks)
        outliers = [np.asarray(p.junk != "") if p.junk is not None else np.zeros(len(p.kept), bool) for p in picks]
        for p, k in zip(picks, before, strict=True):
            p.kept, p.junk = k, None
    images = _training_images(picks, threshold, ceiling, given, outliers)
    source = f"given coordinates ({Path(train_coordinates).name})" if given is not None else "confident picks"
    net, record = cnn.train(images, candidate_prior, seed=seed, device=device, positive_source=source)
    if net is None:
        return record
    if given is None and PURIFY:
        # second round: positives the first network ranks as outliers (junk among the confident picks) move to
        # the unlabelled set, and a fresh network trains on the rest
        logits = [cnn.score(net, im.image, im.positives) for im in images]
        cut = cnn.logit_threshold(np.concatenate(logits))
        for im, lg in zip(images, logits, strict=True):
            im.positives = im.positives[lg >= cut]
        first = record
        net, record = cnn.train(images, candidate_prior, seed=seed + 1, device=device, positive_source=source)
        if net is None:
            return first
        record.seconds += first.seconds
        record.rounds = 2
    for p in picks:
        p.cnn_scores = cnn.score(net, p.cnn_image.float(), to_cnn(p, p.yx))
    blob_kept = np.concatenate([p.cnn_scores[p.kept] for p in picks])
    record.threshold = cnn.logit_threshold(blob_kept)
    _decide(picks, net, record.threshold, ceiling, scored=True)
    record.net = net
    return record


def _decide(picks: list, net, threshold: float, ceiling: float, scored: bool = False) -> None:
    """Each pick's logit (unless ``scored``) and ``kept``: logit at least ``threshold``, blob score
    within [:data:`search.MIN_THRESHOLD`, ``ceiling``], no better-scored pick nearer than the duplicate distance."""
    for p in picks:
        if not scored:
            p.cnn_scores = cnn.score(net, p.cnn_image.float(), to_cnn(p, p.yx))
        p.kept = (p.cnn_scores >= threshold) & (p.scores >= search.MIN_THRESHOLD) & (p.scores <= ceiling)
        distance = cnn.DUPLICATE_DISTANCE * cnn.SAMPLES_PER_DIAMETER / p.cnn_factor  # micrograph px
        kept = np.nonzero(p.kept)[0]
        p.kept[kept] = unique(p.yx[kept], p.cnn_scores[kept], distance)
