"""Training: simulated sessions and/or user-labelled micrographs -> a micassess model file.

Steps (:func:`train`):

1. Examples: ``n_sessions`` simulated sessions (:mod:`cryoflow.micassess.data`, cached in
   ``cache``) at 0.8-2.0 Å/px, plus ``wide_fraction`` x as many at 1.8-4.2 Å/px (binned data:
   :data:`~cryoflow.micassess.data.WIDE`, seed + 1), plus user labels
   (:func:`user_examples`: a folder per class, or a STAR file with a label column). Sessions
   are split by session into training (80%) and validation (20%), so validation micrographs
   come from sessions never seen.
2. Linear part: scikit-learn ``LogisticRegression`` (multinomial, L2, balanced class
   weights) on standardized features. When fine-tuning, its training set is the base
   model's stored features plus the user's (user examples weighted up).
3. CNN: AdamW, random tiles with flips/rotations, contrast, noise, illumination gradients,
   mottling and detector colour (:func:`add_mottling`, :func:`filter_tile`: what real
   micrographs have and the simulator's do not), class-balanced cross-entropy. When
   fine-tuning, starts from the base model's weights with a lower learning rate.
4. Combination: a multinomial logistic regression (stacking) on the linear logits and the
   CNN log-probabilities, fitted on the validation split (log-loss: calibrated).
5. Validation figures (good/bad accuracy, recall per reason) go into the model's
   ``meta`` and are printed; the stacking seen by each validation session is fitted on
   the other validation sessions (5-fold by session), so they are held out; the model is
   saved to ``out``.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoflow.errors import CryoflowError
from cryoflow.micassess.data import WIDE, WIDE_TAG, Example, Ranges, simulate_examples
from cryoflow.micassess.features import FEATURES, FINE, FITTED_ONLY, GROUP, REASONS, TILE, pad_tile, tiles
from cryoflow.micassess.model import HINGES, Linear, MicAssessModel, MicCNN, hinge_basis, standardize


@dataclass
class TrainSettings:
    """Training parameters (see the module docstring)."""

    n_sessions: int = 40
    seed: int = 0
    wide_fraction: float = 1 / 3  # extra sessions at 1.8-4.2 Å/px (data.WIDE, seed + 1), per session of n_sessions
    stack_c: float | None = None  # inverse L2 strength of the stacking; None: chosen from STACK_C by cross-fitting
    epochs: int = 30
    batch: int = 32
    lr: float = 2e-3
    c: float = 1.0  # inverse L2 strength of the logistic part (on the hinge basis)
    val_fraction: float = 0.2
    user_weight: float = 3.0
    ctf_dropout: float = 0.3  # good micrographs also seen as CTF failures (weak rings), for the linear part
    cnn_spectrum: bool = False  # the CNN also reads the radial spectrum (see MicCNN)
    weak_particles: float = 1.0  # good micrographs also seen with fainter particles (extra noise), linear part
    max_steps: int | None = None  # stop the CNN after this many steps (smoke runs)
    stack_degraded: bool = True  # the stacking also sees the CNN on degraded copies of the validation tiles


def _label_index(reason: str) -> int:
    if reason in FINE:
        return FINE.index(reason)
    if reason == "poor_ctf":
        return FINE.index("astigmatism")
    raise ValueError(reason)


def class_weights(y: np.ndarray) -> np.ndarray:
    """Per fine class: good weighs as much as all bad classes together, and the bad classes
    equally among themselves (so P(good) is not swamped by the many bad classes)."""
    counts = np.bincount(y, minlength=len(FINE)).astype(float)
    good = FINE.index("good")
    bad = [k for k in range(len(FINE)) if k != good and counts[k] > 0]
    w = np.zeros(len(FINE))
    if counts[good]:
        w[good] = len(y) / (2 * counts[good])
    for k in bad:
        w[k] = len(y) / (2 * len(bad) * counts[k]) if counts[good] else len(y) / (len(bad) * counts[k])
    return w


def fit_linear(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, c: float, seed: int, hinges: tuple[float, ...] = HINGES
) -> Linear:
    """Standardize, expand (:func:`~cryoflow.micassess.model.hinge_basis`) and fit a
    multinomial logistic regression; classes absent from ``y`` get a very negative intercept
    (never predicted)."""
    from sklearn.linear_model import LogisticRegression

    mean = np.nanmean(x, 0)
    scale = np.nanstd(x, 0)
    mean[~np.isfinite(mean)] = 0.0
    scale[~np.isfinite(scale) | (scale < 1e-6)] = 1.0
    lo, hi = np.nanmin(x, 0), np.nanmax(x, 0)
    lo[~np.isfinite(lo)], hi[~np.isfinite(hi)] = -np.inf, np.inf
    basis = hinge_basis(standardize(x, mean, scale), hinges)
    cw = class_weights(y)
    sw = cw[y] * (weights if weights is not None else 1.0)
    clf = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    clf.fit(basis, y, sample_weight=sw)
    coef = np.zeros((len(FINE), basis.shape[1]))
    intercept = np.full(len(FINE), -30.0)
    coef[clf.classes_] = clf.coef_
    intercept[clf.classes_] = clf.intercept_
    return Linear(mean, scale, coef, intercept, lo, hi, tuple(hinges))


def as_ctf_failure(x: np.ndarray) -> np.ndarray:
    """Copies of feature rows as if the CTF step had found no Thon rings (what it writes to
    micrographs_ctf_failed.star): real good micrographs with weak rings exist (few particles,
    thin ice, low defocus), and a failed fit alone must not mean "bad"."""
    from cryoflow.micassess.features import tabular_ctf

    out = x.copy()
    i = {n: FEATURES.index(n) for n in FEATURES}
    for row in out:
        failed = tabular_ctf({"rlnCtfFigureOfMerit": row[i["figure_of_merit"]] * 0.5}, 1.0, False)
        for name in ("ctf_fitted", "figure_of_merit", *FITTED_ONLY):
            row[i[name]] = failed[name]
    return out


def as_weak_particles(examples: list[Example], rng: np.random.Generator) -> np.ndarray:
    """Feature rows of ``examples`` with their :data:`DENSITY_FEATURES` measured after adding
    white noise of 0.5-3x the image's robust spread to the CNN image: the simulator's
    particles stand out more from the noise than real ones (on the real micrographs of
    ../shared/data the density statistics look like a simulated good micrograph's with noise
    of about 2x its spread), and faint particles alone must not mean "bad"."""
    from cryoflow.micassess.features import DENSITY_FEATURES, density_statistics

    cols = [FEATURES.index(n) for n in DENSITY_FEATURES]
    out = np.stack([e.features for e in examples]) if examples else np.zeros((0, len(FEATURES)))
    for row, e in zip(out, examples, strict=True):
        cnn = e.cnn.astype(np.float32)
        rel = cnn[0] / 5.0
        spread = float(np.median(np.abs(rel - np.median(rel)))) * 1.4826
        cnn[0] = np.clip((rel + rng.normal(0.0, rng.uniform(0.5, 3.0) * spread, rel.shape)) * 5.0, -5, 5)
        stats = density_statistics(cnn)
        row[cols] = [stats[n] for n in DENSITY_FEATURES]
    return out


def add_gradient(tile: np.ndarray, rng: np.random.Generator, max_contrast: float = 0.04) -> None:
    """Add in place an illumination gradient to a training tile ``(3, TILE, TILE)``: a plane
    in a random direction whose contrast ``I/mean - 1`` spans up to ±``max_contrast``
    across the tile (real micrographs have such gradients and mottling, the simulator's
    do not); channel 1 gets it on its own (robust-spread) scale."""
    mask = tile[2] > 0
    if mask.sum() < 16:
        return
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:TILE, :TILE] / TILE - 0.5
    plane = rng.uniform(0, max_contrast) * 2 * (yy * np.sin(angle) + xx * np.cos(angle))
    scale = float(tile[1][mask].std() / max(tile[0][mask].std() / 5.0, 1e-6))
    tile[0] = np.where(mask, np.clip(tile[0] + 5.0 * plane, -5, 5), 0)
    tile[1] = np.where(mask, np.clip(tile[1] + scale * plane, -5, 5), 0)


@functools.lru_cache(maxsize=4)
def _radial_k2(n: int) -> np.ndarray:
    """|k|² (cycles/px, squared) on the rfft2 grid of an ``n``² tile."""
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    return ky**2 + kx**2


def add_mottling(tile: np.ndarray, rng: np.random.Generator, max_contrast: float = 0.02) -> None:
    """Add in place a smooth random field to a training tile ``(3, TILE, TILE)``: Gaussian
    noise low-passed to a correlation length of 25-150 px (100-600 Å at 4 Å/px) with a
    contrast ``I/mean - 1`` of std up to ``max_contrast``. Real micrographs have such
    mottling (ice-thickness waves, uneven illumination, gain residue) without any crystal;
    the simulator's ice is flat except for crystalline ice's grains, so without this the CNN
    read any large-scale intensity change as grains (the real Diamond micrograph of
    ../shared/data: crystalline ice at P 0.6-0.9 on tiles whose low-passed contrast is 0.5%).
    Grains keep what tells them apart: sharp boundaries between flat areas, 5-15% steps."""
    mask = tile[2] > 0
    if mask.sum() < 16:
        return
    k2 = _radial_k2(TILE)
    length = rng.uniform(25.0, 150.0)
    white = np.fft.rfft2(rng.standard_normal((TILE, TILE)))
    field = np.fft.irfft2(white * np.exp(-2 * (np.pi * length / 4) ** 2 * k2), s=(TILE, TILE))
    field *= rng.uniform(0.002, max_contrast) / max(float(field.std()), 1e-9)
    scale = float(tile[1][mask].std() / max(tile[0][mask].std() / 5.0, 1e-6))
    tile[0] = np.where(mask, np.clip(tile[0] + 5.0 * field, -5, 5), 0)
    tile[1] = np.where(mask, np.clip(tile[1] + scale * field, -5, 5), 0)


def filter_tile(tile: np.ndarray, rng: np.random.Generator) -> None:
    """Change in place the tile's spectral colour as detectors and binning do: a Gaussian
    blur of σ 0-0.7 px (a detector MTF, binned data) or a mild sharpening (the inverse,
    up to +50% at Nyquist) of both image channels; channel 1 is then standardized again by
    its robust spread, as :func:`~cryoflow.micassess.features.cnn_image` does for a real
    image. Without it the CNN read a slightly blurred image of any kind as crystalline ice."""
    mask = tile[2] > 0
    if mask.sum() < 16:
        return
    k2 = _radial_k2(TILE)
    if rng.random() < 0.7:
        sigma = rng.uniform(0.2, 0.7)
        gain = np.exp(-2 * (np.pi * sigma) ** 2 * k2)
    else:
        gain = 1 + rng.uniform(0.0, 0.5) * k2 / 0.5
    for ch in (0, 1):
        x = np.fft.irfft2(np.fft.rfft2(np.where(mask, tile[ch], 0)) * gain, s=(TILE, TILE))
        if ch == 1:
            vals = x[mask]
            med = np.median(vals)
            x = (x - med) / (np.median(np.abs(vals - med)) * 1.4826 + 1e-6)
        tile[ch] = np.where(mask, np.clip(x, -5, 5), 0)


def _random_tile(cnn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w = cnn.shape
    y = int(rng.integers(0, h - TILE + 1)) if h > TILE else 0
    x = int(rng.integers(0, w - TILE + 1)) if w > TILE else 0
    t = pad_tile(cnn[:, y : y + TILE, x : x + TILE].astype(np.float32))
    if rng.random() < 0.5:
        t = t[:, :, ::-1]
    # robustness to other detectors and doses: contrast scale and extra noise on the image channels
    mask = t[2:3]
    t = t.copy()
    t[0] = np.clip(t[0] * rng.uniform(0.7, 1.4) + rng.normal(0, rng.uniform(0, 0.4), t[0].shape) * mask[0], -5, 5)
    t[1] = np.clip(t[1] + rng.normal(0, rng.uniform(0, 0.4), t[1].shape) * mask[0], -5, 5)
    if rng.random() < 0.3:
        add_shot_noise(t, rng)
    if rng.random() < 0.3:
        filter_tile(t, rng)
    if rng.random() < 0.5:
        add_gradient(t, rng)
    if rng.random() < 0.5:
        add_mottling(t, rng)
    return np.ascontiguousarray(np.rot90(t, int(rng.integers(4)), axes=(1, 2)))


def train_cnn(
    examples: list[Example],
    labels: np.ndarray,
    settings: TrainSettings,
    init: MicCNN | None = None,
    device="cpu",
    log=print,
) -> MicCNN:
    """Train the CNN on random tiles (class-balanced cross-entropy)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    net = MicCNN(len(FINE), spectrum=settings.cnn_spectrum if init is None else init.spectrum is not None)
    if init is not None:
        net.load_state_dict(init.state_dict())
    net.to(device).train()
    lr = settings.lr if init is None else settings.lr / 4
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    weights = class_weights(labels)
    for hard in ("aggregation", "crowding"):  # the classes the image alone must find
        weights[FINE.index(hard)] *= 2.0
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    steps_per_epoch = max(1, math.ceil(len(examples) / settings.batch))
    total = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 2))
    spectra = np.stack([e.spectrum for e in examples]).astype(np.float32)
    step = 0
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        order = rng.permutation(len(examples))
        running = 0.0
        for s in range(0, len(order), settings.batch):
            idx = order[s : s + settings.batch]
            x = torch.from_numpy(np.stack([_random_tile(examples[i].cnn, rng) for i in idx])).to(device)
            sp = torch.from_numpy(spectra[idx]).to(device)
            y = torch.from_numpy(labels[idx]).long().to(device)
            loss = loss_fn(net(x, sp), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            step += 1
            if step >= total:
                break
        log(f"  cnn epoch {epoch + 1}: loss {running / len(order):.3f} ({time.perf_counter() - t0:.0f} s)")
        if step >= total:
            break
    return net.eval()


def add_shot_noise(tile: np.ndarray, rng: np.random.Generator, factor: tuple[float, float] = (0.5, 2.0)) -> None:
    """Add in place white noise of ``factor`` x the tile's robust spread to the contrast and
    standardize both channels again (as :func:`~cryoflow.micassess.features.cnn_image` and
    ``pad_tile`` do for a real image): fainter particles, lower dose or a poorer detector.
    Real particles stand out less from the noise than the simulator's (see
    :func:`as_weak_particles`); without it the CNN read the sparse, faint particles of the
    real Diamond micrograph as an empty hole."""
    mask = tile[2] > 0
    if mask.sum() < 16:
        return
    rel = tile[0] / 5.0
    v = rel[mask]
    spread = float(np.median(np.abs(v - np.median(v)))) * 1.4826 + 1e-6
    rel = rel + rng.normal(0.0, rng.uniform(*factor) * spread, rel.shape)
    v = rel[mask]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826 + 1e-6
    tile[0] = np.where(mask, np.clip((rel - med) * 5.0, -5, 5), 0)
    tile[1] = np.where(mask, np.clip((rel - med) / mad, -5, 5), 0)


def degrade_tile(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of a CNN tile ``(3, TILE, TILE)`` made less like the simulator's: white noise of
    0.5-2x its robust spread (fainter particles, as real ones are: see
    :func:`as_weak_particles`), then :func:`filter_tile`, :func:`add_mottling` and
    :func:`add_gradient`; both channels re-standardized as :func:`cnn_image` would."""
    t = tile.copy()
    if (t[2] > 0).sum() < 16:
        return t
    add_shot_noise(t, rng)
    filter_tile(t, rng)
    add_mottling(t, rng)
    add_gradient(t, rng)
    return t


def degraded_cnn_log_proba(model: MicAssessModel, examples: list[Example], seed: int, device="cpu") -> np.ndarray:
    """The CNN's per-micrograph log-probabilities ``(N, C)`` on degraded copies of the
    examples' tiles (:func:`degrade_tile`)."""
    rng = np.random.default_rng([seed, 11])
    sets = [np.stack([degrade_tile(t, rng) for t in tiles(e.cnn.astype(np.float32))]) for e in examples]
    return model.cnn_log_proba(sets, np.stack([e.spectrum for e in examples]), device)


def fit_stack(
    lin: np.ndarray, cnn: np.ndarray, labels: np.ndarray, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stacking ``(W_lin (C, C), W_cnn (C, C), bias (C,))``: a multinomial logistic
    regression (L2, inverse strength ``c``, unweighted: calibrated to the validation mix) on
    the linear logits and the CNN log-probabilities; classes absent from ``labels`` get a
    very negative bias (never predicted)."""
    from sklearn.linear_model import LogisticRegression

    n = lin.shape[1]
    clf = LogisticRegression(C=c, max_iter=5000)
    clf.fit(np.hstack([lin, cnn]), labels)
    w = np.zeros((n, 2 * n))
    bias = np.full(n, -30.0)
    w[clf.classes_] = clf.coef_
    bias[clf.classes_] = clf.intercept_
    return w[:, :n], w[:, n:], bias


STACK_C = (0.1, 0.3, 1.0)  # candidate inverse L2 strengths of the stacking


def fit_combination(
    model: MicAssessModel,
    lin_v: np.ndarray,
    cnn_v: np.ndarray,
    y_val: np.ndarray,
    val: list[Example],
    c: float | None = None,
    log=print,
    cnn_extra: np.ndarray | None = None,
) -> tuple[np.ndarray | None, float]:
    """Fit ``model``'s stacking on the validation examples (in place). ``c`` None: the
    candidate of :data:`STACK_C` with the lowest cross-fitted log-loss (5-fold by session).
    ``cnn_extra``: the CNN's log-probabilities of the same examples from degraded tiles
    (:func:`degraded_cnn_log_proba`), fitted on as more examples (same labels, same
    sessions), so the combination learns how far to trust a CNN reading of an image less
    like the simulator's; the figures and the log-loss are those of the examples as they are.
    Returns the cross-fitted probabilities of the validation examples (None when there are
    too few sessions to cross-fit) and the ``c`` used."""
    groups = [e.name.split("_")[0] if not e.name.startswith("user_") else e.name for e in val]
    candidates = STACK_C if c is None else (c,)
    best = None
    for cand in candidates:
        p = cross_fitted(lin_v, cnn_v, y_val, groups, cand, cnn_extra=cnn_extra)
        loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-12, 1)))) if p is not None else 0.0
        if len(candidates) > 1:
            log(f"  stacking C={cand}: cross-fitted log-loss {loss:.4f}")
        if best is None or loss < best[0]:
            best = (loss, cand, p)
    _, c, p_val = best
    if cnn_extra is not None:
        model.stack_lin, model.stack_cnn, model.stack_bias = fit_stack(
            np.concatenate([lin_v, lin_v]), np.concatenate([cnn_v, cnn_extra]), np.concatenate([y_val, y_val]), c
        )
    else:
        model.stack_lin, model.stack_cnn, model.stack_bias = fit_stack(lin_v, cnn_v, y_val, c)
    return p_val, c


def cross_fitted(
    lin: np.ndarray,
    cnn: np.ndarray,
    labels: np.ndarray,
    groups: list[str],
    c: float = 1.0,
    folds: int = 5,
    cnn_extra: np.ndarray | None = None,
) -> np.ndarray | None:
    """Fine-class probabilities ``(N, C)`` of each example from a stacking fitted without
    its group (session): ``folds``-fold by group. None with fewer than ``folds`` groups.
    ``cnn_extra``: more CNN readings of the same examples, fitted on too (see
    :func:`fit_combination`)."""
    names = sorted(set(groups))
    if len(names) < folds:
        return None
    order = np.random.default_rng(0).permutation(len(names))
    fold_of = {names[j]: k % folds for k, j in enumerate(order)}
    fold = np.array([fold_of[g] for g in groups])
    out = np.zeros_like(lin)
    for k in range(folds):
        test = fold == k
        if cnn_extra is not None:
            wl, wc, b = fit_stack(
                np.concatenate([lin[~test], lin[~test]]),
                np.concatenate([cnn[~test], cnn_extra[~test]]),
                np.concatenate([labels[~test], labels[~test]]),
                c,
            )
        else:
            wl, wc, b = fit_stack(lin[~test], cnn[~test], labels[~test], c)
        logits = lin[test] @ wl.T + cnn[test] @ wc.T + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        out[test] = p / p.sum(1, keepdims=True)
    return out


def evaluate(model: MicAssessModel, examples: list[Example], device="cpu") -> dict:
    """Good/bad accuracy and recall per reason group (and per fine reason) on ``examples``."""
    p, _, _ = predict_examples(model, examples, device)
    return figures(model, p, [e.reason for e in examples])


def predict_examples(model: MicAssessModel, examples: list[Example], device="cpu"):
    x = np.stack([e.features for e in examples])
    lin = model.linear.logits(x)
    cnn = model.cnn_log_proba(
        [tiles(e.cnn.astype(np.float32)) for e in examples], np.stack([e.spectrum for e in examples]), device
    )
    return model.combine(lin, cnn), lin, cnn


def figures(model: MicAssessModel, p: np.ndarray, truth: list[str], threshold: float | None = None) -> dict:
    """Accuracy figures of fine-class probabilities ``p`` against true reasons."""
    threshold = model.threshold if threshold is None else threshold
    groups = model.group_proba(p)
    p_good = groups[:, REASONS.index("good")]
    called_good = p_good >= threshold
    bad_groups = groups.copy()
    bad_groups[:, REASONS.index("good")] = -1
    reason = np.where(called_good, "good", np.array(REASONS)[bad_groups.argmax(1)])
    true_group = np.array([GROUP[t] for t in truth])
    good_true = true_group == "good"
    out = {
        "micrographs": len(truth),
        "good_bad_accuracy": float(np.mean(called_good == good_true)),
        "reason_accuracy": float(np.mean(reason == true_group)),
        "recall_per_reason": {},
        "bad_called_bad_per_fine_reason": {},
        "counts": {},
    }
    for g in REASONS:
        sel = true_group == g
        if sel.any():
            out["recall_per_reason"][g] = float(np.mean(reason[sel] == g))
            out["counts"][g] = int(sel.sum())
    for f in sorted(set(truth)):
        sel = np.array(truth) == f
        out["bad_called_bad_per_fine_reason"][f] = float(np.mean(called_good[sel] == (f == "good")))
    return out


def train(
    out: str | os.PathLike,
    settings: TrainSettings | None = None,
    ranges: Ranges | None = None,
    cache: str | os.PathLike | None = None,
    user: list[Example] | None = None,
    base: MicAssessModel | None = None,
    device="cpu",
    log=print,
) -> MicAssessModel:
    """Train a model (see the module docstring) and save it to ``out``; returns it."""
    settings = settings or TrainSettings()
    user = user or []
    t0 = time.perf_counter()
    sim = simulate_examples(settings.n_sessions, settings.seed, ranges, cache=cache) if settings.n_sessions else []
    n_wide = round(settings.wide_fraction * settings.n_sessions)
    if n_wide and ranges is None:
        sim += simulate_examples(n_wide, settings.seed + 1, WIDE, cache=cache, tag=WIDE_TAG)
    log(
        f"micassess train: {len(sim)} simulated micrographs, {len(user)} user-labelled ({time.perf_counter() - t0:.0f} s)"
    )
    if not sim and not user:
        raise CryoflowError(None, "no training examples: give --sessions > 0 or labelled micrographs")
    rng = np.random.default_rng(settings.seed)
    sessions = sorted({e.name.split("_")[0] for e in sim})
    n_val = max(1, round(settings.val_fraction * len(sessions))) if len(sessions) > 1 else 0
    val_sessions = set(rng.permutation(sessions)[:n_val].tolist()) if n_val else set()
    train_sim = [e for e in sim if e.name.split("_")[0] not in val_sessions]
    val = [e for e in sim if e.name.split("_")[0] in val_sessions]
    if user:
        u = rng.permutation(len(user))
        n_uval = len(user) // 5 if len(user) >= 10 else 0
        val += [user[i] for i in u[:n_uval]]
        train_user = [user[i] for i in u[n_uval:]]
    else:
        train_user = []
    train_set = train_sim + train_user
    held_out = bool(val)
    if not val:
        val = train_set  # tiny runs: evaluate on the training set (said in meta), keep the base calibration
    y_train = np.array([_label_index(e.reason) for e in train_set])
    y_val = np.array([_label_index(e.reason) for e in val])

    # linear part
    x = np.stack([e.features for e in train_set])
    w = np.array([1.0] * len(train_sim) + [settings.user_weight] * len(train_user))
    if base is not None and base.train_features is not None and len(base.train_features):
        x = np.concatenate([base.train_features, x])
        y_lin = np.concatenate([[_label_index(r) for r in base.train_labels], y_train])
        w = np.concatenate([np.ones(len(base.train_features)), w])
    else:
        y_lin = y_train
    x_fit, y_fit, w_fit = x, y_lin, w
    if settings.ctf_dropout > 0:
        good = np.flatnonzero(y_lin == FINE.index("good"))
        pick = rng.choice(good, size=int(settings.ctf_dropout * len(good)), replace=False) if len(good) else good
        x_fit = np.concatenate([x, as_ctf_failure(x[pick])])
        y_fit = np.concatenate([y_lin, y_lin[pick]])
        w_fit = np.concatenate([w, w[pick]])
    if settings.weak_particles > 0:
        good = [i for i, e in enumerate(train_set) if e.reason == "good"]
        pick = rng.choice(good, size=int(settings.weak_particles * len(good)), replace=False) if good else []
        x_fit = np.concatenate([x_fit, as_weak_particles([train_set[i] for i in pick], rng)])
        y_fit = np.concatenate([y_fit, y_train[pick]])
        w_fit = np.concatenate([w_fit, w[len(x) - len(train_set) + np.asarray(pick, dtype=int)]])
    linear = fit_linear(x_fit, y_fit, w_fit, settings.c, settings.seed)
    log(f"  linear part fitted on {len(x)} micrographs")

    # CNN
    reps = max(1, round(settings.user_weight)) if train_user else 1
    cnn_set = train_sim + train_user * reps
    y_cnn = np.array([_label_index(e.reason) for e in cnn_set])
    cnn = train_cnn(cnn_set, y_cnn, settings, init=base.cnn if base is not None else None, device=device, log=log)

    model = MicAssessModel(classes=list(FINE), linear=linear, cnn=cnn.cpu())
    _, lin_v, cnn_v = predict_examples(model, val)
    p_val = None
    if held_out:
        cnn_extra = degraded_cnn_log_proba(model, val, settings.seed, device) if settings.stack_degraded else None
        p_val, stack_c = fit_combination(model, lin_v, cnn_v, y_val, val, settings.stack_c, log, cnn_extra)
    elif base is not None:
        model.stack_lin, model.stack_cnn = base.stack_lin.copy(), base.stack_cnn.copy()
        model.stack_bias = base.stack_bias.copy()
    model.train_features = x
    model.train_labels = [FINE[i] for i in y_lin]
    cross = p_val is not None
    val_figures = figures(model, p_val if cross else model.combine(lin_v, cnn_v), [e.reason for e in val])
    val_figures["stacking_cross_fitted"] = cross
    if held_out:
        val_figures["stacking_c"] = stack_c
    model.meta = {
        "trained": time.strftime("%Y-%m-%d"),
        "simulated_micrographs": len(sim),
        "simulated_sessions": len(sessions),
        "wide_sessions": len([s for s in sessions if s.startswith(WIDE_TAG)]),
        "validation_sessions": sorted(val_sessions),
        "user_micrographs": len(user),
        "validation_held_out": held_out,
        "fine_tuned": base is not None,
        "settings": {k: v for k, v in vars(settings).items() if v is not None},
        "validation": val_figures,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    model.save(out)
    log(
        f"  validation ({val_figures['micrographs']} micrographs of held-out sessions): good/bad accuracy "
        f"{val_figures['good_bad_accuracy']:.3f}, reason accuracy {val_figures['reason_accuracy']:.3f}"
    )
    for g, r in val_figures["recall_per_reason"].items():
        log(f"    recall {g:<16} {r:.3f}  (n={val_figures['counts'][g]})")
    log(
        f"  stacking ({'cross-fitted figures' if cross else 'figures in-sample'}): weight on the linear logits "
        f"{np.abs(model.stack_lin).sum():.1f}, on the CNN {np.abs(model.stack_cnn).sum():.1f} -> {out}"
    )
    return model


# --- user labels --------------------------------------------------------------------------
ACCEPTED = sorted(set(FINE) | set(REASONS))


def _check_label(label: str, where) -> str:
    label = str(label).strip()
    if label not in ACCEPTED:
        raise CryoflowError(where, f"unknown label {label!r}; use one of {', '.join(ACCEPTED)}")
    return label


def user_examples(source: str | os.PathLike, label_column: str = "cfReason", device="cpu") -> list[Example]:
    """Labelled micrographs from a folder per class (``DIR/<reason>/*.mrc``) or a STAR file
    with a label column (and, if it is a CTF-step output, its metric columns).

    Micrographs without CTF columns (folders, plain STAR files) go through
    :func:`cryoflow.ctf.estimate` first (300 kV, Cs 2.7 mm, amplitude contrast 0.1 unless
    the STAR's optics say otherwise).
    """
    from cryoflow.io import find_image, read_micrograph, read_table

    source = Path(source)
    bases: list[Path] = []
    items = []  # (path, label, row or None, pixel size or None, optics)
    if source.is_dir():
        for sub in sorted(p for p in source.iterdir() if p.is_dir()):
            label = _check_label(sub.name, sub)
            for f in sorted(sub.rglob("*.mrc")):
                items.append((f, label, None, None, (300.0, 2.7, 0.1)))
        if not items:
            raise CryoflowError(source, "no labelled micrographs: expected sub-folders named by reason holding *.mrc")
    elif source.suffix == ".star":
        star = read_table(source, "micrographs")
        if label_column not in star.table:
            raise CryoflowError(source, f"data_micrographs has no label column {label_column} (see --label-column)")
        optics = star.optics_for_rows()
        sizes = star.pixel_size()
        for i, row in star.table.iterrows():
            o = optics.loc[i]
            items.append(
                (
                    find_image(str(row["rlnMicrographName"]), source, None, bases),
                    _check_label(row[label_column], source),
                    row.to_dict() if "rlnCtfFigureOfMerit" in star.table else None,
                    float(sizes[i]),
                    (
                        float(o.get("rlnVoltage", 300)),
                        float(o.get("rlnSphericalAberration", 2.7)),
                        float(o.get("rlnAmplitudeContrast", 0.1)),
                    ),
                )
            )
    else:
        raise CryoflowError(source, "labels must be a folder of class sub-folders or a STAR file")
    from cryoflow.ctf import Optics, Settings, estimate
    from cryoflow.ctf.run import COLUMNS
    from cryoflow.micassess.data import add_relative_thickness
    from cryoflow.micassess.features import add_set_features, feature_vector, inputs_from_image, tabular_ctf

    rows, inputs, sizes_used = [], [], []
    for path, label, row, apix, optics in items:
        image, apix = read_micrograph(path, pixel_size=apix)
        if row is None:
            r = estimate(torch.from_numpy(image), apix, Optics(*optics), Settings(tilt=False))
            row = {c: r.metrics[m] for m, c in COLUMNS.items() if m in r.metrics}
            if r.ok:
                row.update(rlnDefocusU=r.fit.defocus_u, rlnDefocusV=r.fit.defocus_v)
            row["_fitted"] = bool(r.ok)
        else:
            row = dict(row)
            row["_fitted"] = "cryoflowCtfFailure" not in row or not str(row.get("cryoflowCtfFailure") or "").strip()
        row["_label"] = label
        row.setdefault("_voltage", optics[0])  # the relative ice thickness is scaled to 300 kV
        rows.append(row)
        inputs.append(inputs_from_image(image, apix, device))
        sizes_used.append(apix)
    if any("cryoflowRelativeIceThickness" not in r for r in rows):
        add_relative_thickness(rows)
    x = np.stack(
        [
            feature_vector(tabular_ctf(r, a, r["_fitted"]), i["stats"])
            for r, i, a in zip(rows, inputs, sizes_used, strict=True)
        ]
    )
    add_set_features(x, [(round(a, 2), r["_voltage"]) for r, a in zip(rows, sizes_used, strict=True)])
    return [
        Example(f"user_{Path(path).stem}", row["_label"], features, inp["cnn"], inp["spectrum"])
        for (path, *_), row, inp, features in zip(items, rows, inputs, x, strict=True)
    ]


def model_card(model: MicAssessModel, command: str) -> str:
    """The model card (Markdown) of a trained model: data, parameters, validation per class."""
    from dataclasses import asdict

    from cryoflow.micassess.bench import HELD_OUT
    from cryoflow.micassess.features import DENSITY_FEATURES, FEATURE_DOCS

    m = model.meta
    v = m.get("validation", {})
    ranges = asdict(Ranges())
    st = m.get("settings", {})
    lines = [
        "# micassess: bad-micrograph detection model",
        "",
        f"Trained {m.get('trained')} with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Training data",
        "",
        f"- {m.get('simulated_micrographs')} simulated micrographs in {m.get('simulated_sessions')} sessions "
        f"(`cryoflow.micassess.data`): {m.get('simulated_sessions', 0) - m.get('wide_sessions', 0)} sessions of seed "
        f"{st.get('seed')} at the ranges below, and {m.get('wide_sessions', 0)} sessions of seed {st.get('seed', 0) + 1} "
        f"at pixel sizes {WIDE.pixel_size} Å (binned data, `data.WIDE`; otherwise the same ranges); "
        f"{m.get('user_micrographs')} user-labelled.",
        "- Per session: one pixel size, dose, detector (falcon4, k3, counting), voltage (300 kV, 20% 200 kV) and one or two "
        "species (PDB 7DDO or procedural globular/elongated/ring/multimer particles); per micrograph its own defocus, "
        "astigmatism, B-factor, ice thickness, particle density, junk fraction and, for about 55%, one simulator defect "
        "(every one of: " + ", ".join(FINE[1:]) + "; aggregation: 85% of the particles in aggregates of 6-16, "
        "at least one in the field, see `cryoflow.simulate.defects`).",
        "- Ranges: "
        + ", ".join(f"{k} {val}" for k, val in ranges.items() if k not in ("balanced", "species_seed_offset")),
        "- Each micrograph went through `cryoflow.ctf.estimate` (tilt skipped) and the same feature code as prediction.",
        f"- Validation: the sessions {', '.join(m.get('validation_sessions', []))} were held out of training and used to "
        "fit the combination (stacking + calibration); their figures are below"
        + (
            ", each session's from a stacking fitted on the other validation sessions (5-fold by session)."
            if v.get("stacking_cross_fitted")
            else " (the stacking fitted on them too: optimistic)."
        ),
        "",
        "## Model",
        "",
        f"- Linear part: scikit-learn LogisticRegression (multinomial, L2 C={st.get('c')}, class "
        f"weights: good as heavy as all bad classes together, bad classes equal) on {len(FEATURES)} standardized features "
        f"({len(DENSITY_FEATURES)} of them local particle-density statistics of the 4 Å/px image), each with hinges at "
        f"±{', ±'.join(f'{h:g}' for h in model.linear.hinges) or '(none)'} standard deviations (a piecewise-linear "
        "additive model: a feature's evidence may grow faster in its tails; its contribution stays exact); "
        f"{int(st.get('ctf_dropout', 0) * 100)}% of the good micrographs added again as CTF failures and "
        f"{int(st.get('weak_particles', 0) * 100)}% with fainter particles (noise added before the density statistics, "
        "`as_weak_particles`). At prediction each feature is clipped to its training range (no extrapolation) and "
        "then to ±4 standard deviations; an unmeasured feature (the ice ring beyond Nyquist) counts 0 (no evidence).",
        f"- CNN: {sum(p.numel() for p in model.cnn.parameters())} parameters; input tiles of 192 px at 4 Å/px (contrast, "
        "standardized image, mask) through four stride-2 blocks (receptive field 132 Å) and two context layers "
        "(516 Å: clumps, how the field is filled)"
        + (
            ", and the radial power spectrum on a fixed 1/Å grid; "
            if model.cnn.spectrum is not None
            else " (no spectrum branch: see `MicCNN`); "
        )
        + f"{st.get('epochs')} epochs, AdamW, one-cycle learning rate {st.get('lr')}; "
        "random tiles, flips, rotations, contrast, noise, illumination-gradient, mottling (smooth random fields of "
        "100-600 Å, `add_mottling`) and detector-colour (blur or sharpening, `filter_tile`) augmentation; "
        "aggregation and crowding weighted x2.",
        "- Combination (stacking): a multinomial LogisticRegression (L2 C="
        f"{v.get('stacking_c', st.get('stack_c'))}, chosen among {STACK_C} by cross-fitted log-loss; unweighted, "
        "so calibrated) on the linear part's class-centred logits and the CNN's "
        "log-probabilities, softmax(W_lin logits_linear + W_cnn log p_cnn + bias), fitted on the validation sessions; "
        "each class takes its evidence where it is (aggregation from the CNN, thick ice and poor CTF from the "
        "features) and the result stays linear in the features (exact per-feature evidence); "
        f"weight |W_lin| {np.abs(model.stack_lin).sum():.1f}, |W_cnn| {np.abs(model.stack_cnn).sum():.1f}; "
        f"threshold on P(good) {model.threshold}.",
        f"- Classes (fine): {', '.join(model.classes)}; reported reasons: {', '.join(REASONS)} "
        "(crack, drift, aggregation and crowding under contamination; astigmatism under poor_ctf).",
        "",
        f"## Validation ({v.get('micrographs')} micrographs of held-out sessions)",
        "",
        f"- good/bad accuracy: {v.get('good_bad_accuracy', float('nan')):.3f}",
        f"- reason accuracy: {v.get('reason_accuracy', float('nan')):.3f}",
        "",
        "| reason | micrographs | recall |",
        "|---|---|---|",
    ]
    for g, r in v.get("recall_per_reason", {}).items():
        lines.append(f"| {g} | {v['counts'][g]} | {r:.3f} |")
    lines += [
        "",
        "| fine reason (truth) | fraction called correctly good/bad |",
        "|---|---|",
    ]
    for f, r in v.get("bad_called_bad_per_fine_reason", {}).items():
        lines.append(f"| {f} | {r:.3f} |")
    lines += [
        "",
        "## Features",
        "",
        *[f"- `{k}`: {d}" for k, d in FEATURE_DOCS.items()],
        "",
        "## Limits",
        "",
        "- Trained on simulated micrographs only; real data differ (detector noise, gain, ice). Fine-tune on a few "
        "dozen labelled micrographs of your own (`cryoflow micassess train --labels DIR_OR_STAR --out mine.pt --sessions 0`).",
        f"- Held-out benchmark ranges (`cryoflow bench micassess`): {asdict(HELD_OUT)}.",
    ]
    return "\n".join(lines) + "\n"
