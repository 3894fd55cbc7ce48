"""``cryoflow particles train``: learn this dataset's particles from its own 2D class decisions.

Labels: particles of kept classes (``particles_selected.star`` of ``classassess``) are
positives, particles of rejected classes (``particles_rejected.star``) negatives. The
labels are noisy on purpose-free data: a few junk images sit in good classes and some true
particles in junk classes; a CNN trained on thousands of them learns what the majority of
each side looks like, so it can overrule the class a particle happened to land in.

Split: 20% of the micrographs are held out (never trained on); the figures (AUC against
the labels) and the decision threshold come from them. Training is bounded (at most
``max_particles`` images, balanced between the labels; AdamW with a one-cycle schedule;
90° rotations, flips, small shifts and noise as augmentation). The number of passes is
chosen for about :data:`STEPS` optimizer steps (at least 6 passes), so a small dataset
is not under-trained: 6 passes over 3,000 images left empty picks scored as particles 30%
of the time, 20 passes 8%. About a minute on 2 CPU cores per network.

Expert knowledge the labels lack: a particle overlapping a neighbour, or far off centre,
is a bad pick even when 2D classification put it in a good class (the particle in the
middle matched the class). :func:`bad_picks_from` makes such images from the positives
(:data:`BAD_PICKS` of them) and adds them as negatives.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from cryoflow.errors import CryoflowError
from cryoflow.particles.model import ParticleCNN, ParticleModel, prepare

VALIDATION_FRACTION = 0.2
#: overlapping and off-centre particles made from the positives, as a share of the positives
BAD_PICKS = 0.3
#: optimizer steps (batches of :data:`BATCH`) that the default number of passes aims at
STEPS, BATCH = 800, 128


def default_epochs(n_images: int) -> int:
    """Passes over ``n_images`` that make about :data:`STEPS` steps (6 to 60)."""
    per_epoch = max(1, -(-n_images // BATCH))
    return int(min(60, max(6, round(STEPS / per_epoch))))


def label_counts(selected, rejected) -> dict[str, int]:
    """Particles on each side of the labels, ``{"kept": n, "rejected": m}`` (STAR rows only)."""
    from cryoflow.io import read_table

    return {
        side: len(read_table(Path(path), "particles").table)
        for side, path in (("kept", selected), ("rejected", rejected))
    }


def _write_untrained(out: Path, selected, rejected, counts: dict[str, int], seconds: float, log) -> dict:
    """One label side is empty (e.g. 2D classification kept every class): nothing to learn.

    Writes a pass-through model (``meta["trained"] = False``; ``particles score`` keeps every
    particle with it, unscored), summary.json with ``trained: false`` and the reason, and a
    report saying so, so that a pipeline goes on with the selected particles unchanged.
    """
    from cryoflow.io import atomic_dir
    from cryoflow.particles.report import write_untrained_report

    empty = "rejected" if counts["rejected"] == 0 else "kept"
    reason = (
        f"no {empty} particles ({counts['kept']} kept, {counts['rejected']} rejected by the 2D class "
        "selection): the classifier needs both to learn from; scoring passes every particle through"
    )
    model = ParticleModel(ParticleCNN(), threshold=0.0)
    model.meta = {"trained": False, "reason": reason, "selected": str(selected), "rejected": str(rejected), **counts}
    summary = {
        "trained": False,
        "reason": reason,
        "particles_kept_side": counts["kept"],
        "particles_rejected_side": counts["rejected"],
        "stage": {"particles": counts["kept"] + counts["rejected"]},
        "seconds": seconds,
    }
    with atomic_dir(out) as tmp:
        model.save(tmp / "particle_model.pt")
        write_untrained_report(tmp, summary)
    log(f"particles train: not trained, {reason}")
    return summary


def load_labelled(selected, rejected, max_particles: int, seed: int, images: str | os.PathLike | None = None):
    """``(images (n, SIZE, SIZE) prepared, labels (n,), micrographs (n,))`` of a balanced sample."""
    from cryoflow.classify2d.data import read_particles

    rng = np.random.default_rng(seed)
    xs, ys, mics = [], [], []
    sets = [(read_particles(selected, images), 1.0), (read_particles(rejected, images), 0.0)]
    per_side = max_particles // 2
    for ps, label in sets:
        n = len(ps)
        idx = np.sort(rng.choice(n, min(n, per_side), replace=False))
        x = torch.cat([prepare(ps.read(idx[s : s + 2048])) for s in range(0, len(idx), 2048)])
        xs.append(x)
        ys.append(np.full(len(idx), label, np.float32))
        table = ps.table.table
        names = table["rlnMicrographName"].astype(str).to_numpy() if "rlnMicrographName" in table else np.full(n, "-")
        mics.append(names[idx])
    return torch.cat(xs), np.concatenate(ys), np.concatenate(mics)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, (-2, -1))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.flip(-1)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    x = torch.roll(x, (dy, dx), (-2, -1))
    return x + 0.2 * torch.rand(len(x), 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Images ``(n, 1, S, S)`` moved by ``(dy, dx)`` pixels (a Fourier phase ramp: what leaves
    one edge comes back at the other, as background noise would)."""
    s = x.shape[-1]
    k = torch.fft.fftfreq(s)
    ramp = torch.exp(-2j * torch.pi * (dy[:, None, None, None] * k[:, None] + dx[:, None, None, None] * k[None, :]))
    return torch.fft.ifft2(torch.fft.fft2(x) * ramp).real


def _renormalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).clamp(-5, 5)


def bad_picks_from(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` images of the two bad picks every expert rejects, made from good particles ``x``:
    a particle with a neighbour whose centre is 0.3-0.6 of the box away (overlapping or
    touching: extract's box is 1.5-2x the diameter), and a particle 0.3-0.5 of the box off
    centre. The neighbour is low-passed so the image does not carry twice the noise."""
    m = len(x)
    a = x[torch.randint(0, m, (n,), generator=gen)]
    size = x.shape[-1]
    angle = torch.rand(n, generator=gen) * 2 * torch.pi
    neighbour = torch.rand(n, generator=gen) < 0.6
    r = torch.where(neighbour, 0.3 + 0.3 * torch.rand(n, generator=gen), 0.3 + 0.2 * torch.rand(n, generator=gen))
    dy, dx = r * size * torch.sin(angle), r * size * torch.cos(angle)
    b = x[torch.randint(0, m, (n,), generator=gen)]
    k = torch.fft.fftfreq(size)
    low = torch.exp(-((k[:, None] ** 2 + k[None, :] ** 2) / (2 * 0.08**2)))
    b = torch.fft.ifft2(torch.fft.fft2(b) * low).real
    added = a + _shift(b, dy, dx)
    moved = _shift(a, dy, dx)
    return _renormalize(torch.where(neighbour[:, None, None, None], added, moved))


def split_by_micrograph(mics: np.ndarray, seed: int) -> np.ndarray:
    """Boolean ``(n,)``: in the validation micrographs."""
    rng = np.random.default_rng(seed)
    unique = np.unique(mics)
    n_val = max(1, int(round(VALIDATION_FRACTION * len(unique)))) if len(unique) > 1 else 0
    val = rng.choice(unique, n_val, replace=False) if n_val else []
    return np.isin(mics, val)


def with_bad_picks(x: torch.Tensor, y: np.ndarray, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``x, y`` plus :data:`BAD_PICKS` synthetic bad picks made from the positives, as negatives."""
    positives = x[torch.from_numpy(y > 0.5)]
    n_bad = int(BAD_PICKS * len(positives))
    if not n_bad or len(positives) < 2:
        return x, y
    bad = bad_picks_from(positives, n_bad, torch.Generator().manual_seed(seed))
    return torch.cat([x, bad]), np.concatenate([y, np.zeros(n_bad, np.float32)])


def fit(
    x: torch.Tensor, y: np.ndarray, epochs: int = 6, seed: int = 0, device="cpu", log=print
) -> tuple[ParticleCNN, list[float]]:
    from cryoflow.models.fit import fit_binary

    cnn, losses = fit_binary(
        ParticleCNN,
        x,
        y,
        _augment,
        epochs,
        lr=3e-3,
        batch=BATCH,
        seed=seed,
        device=device,
        log=log,
        name="particles train",
    )
    return cnn.cpu(), losses


def train_particles(
    selected: str | os.PathLike,
    rejected: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int | None = None,
    max_particles: int = 20000,
    seed: int = 0,
    device="cpu",
    images: str | os.PathLike | None = None,
    log=print,
) -> dict:
    """Train on the labelled particles, write ``particle_model.pt``, ``summary.json`` and the
    report into ``out``; returns the summary."""
    from sklearn.metrics import roc_auc_score

    from cryoflow.io import atomic_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    if (epochs is not None and epochs < 1) or max_particles < 100:
        raise CryoflowError(None, f"need --epochs >= 1 and --max-particles >= 100 (got {epochs}, {max_particles})")
    t0 = time.perf_counter()
    counts = label_counts(selected, rejected)
    if min(counts.values()) == 0:
        return _write_untrained(out, selected, rejected, counts, time.perf_counter() - t0, log)
    x, y, mics = load_labelled(selected, rejected, max_particles, seed, images)
    val = split_by_micrograph(mics, seed)
    if not val.any() or val.all():
        val = np.random.default_rng(seed).random(len(y)) < VALIDATION_FRACTION
    log(f"particles train: {int((~val).sum())} images to fit, {int(val.sum())} of held-out micrographs to validate")
    x_fit, y_fit = x[~val], y[~val]
    if epochs is None:
        epochs = default_epochs(int(len(y_fit) * (1 + BAD_PICKS / 2)))
    cnn, losses = fit(*with_bad_picks(x_fit, y_fit, seed), epochs, seed, device, log)
    model = ParticleModel(cnn)
    p_val = 1 / (1 + np.exp(-model.logits(x[val], device).astype(float)))
    auc = float(roc_auc_score(y[val], p_val)) if 0 < y[val].mean() < 1 else float("nan")
    # threshold: 0.5 of the class-balanced training (equal weight to both kinds of mistakes)
    model.threshold = 0.5
    agree = float(((p_val >= model.threshold) == (y[val] > 0.5)).mean())
    model.meta = {
        "trained": True,
        "selected": str(selected),
        "rejected": str(rejected),
        "images_fit": int((~val).sum()),
        "images_validation": int(val.sum()),
        "validation_micrographs": int(len(np.unique(mics[val]))),
        "validation_micrograph_names": sorted(set(mics[val].tolist())),
        "auc_vs_class_labels": auc,
        "agreement_vs_class_labels": agree,
        "epochs": epochs,
        "losses": [float(v) for v in losses],
        "seconds": time.perf_counter() - t0,
    }
    summary = {"stage": {"micrographs": int(len(np.unique(mics))), "particles": int(len(y))}, **model.meta}
    with atomic_dir(out) as tmp:
        model.save(tmp / "particle_model.pt")
        from cryoflow.particles.report import write_train_report

        write_train_report(tmp, model, y[val], p_val, x[val], summary)
    log(f"particles train: AUC against the class labels on held-out micrographs {auc:.3f}")
    return summary
