"""The learned picker: a small CNN trained positive-unlabelled, per dataset, on the fly.

No user labels: the template-free picker's own confident picks are the positives (or,
when given, the particles of good 2D classes: ``train_coordinates``), as Topaz trains from
a user's clicks. The network (:mod:`cryoflow.picking.cnn_net`) then re-scores every
candidate peak of the blob picker (every local maximum above
:data:`search.MIN_THRESHOLD`, inside the allowed area); candidates whose logit is at
least :func:`logit_threshold` of the filter's picks' logits are kept. Its input (:func:`cnn_input`) is the micrograph
phase-flipped (sign of the CTF), band-passed (20 Å low-pass, ice gradients above two
diameters removed), in standard deviations of the shot noise, Fourier-resampled to
:data:`cnn_net.SAMPLES_PER_DIAMETER` pixels per particle diameter.

Training set, sampled per dataset (at most :data:`MAX_MICROGRAPHS` micrographs spread over
the set, a few thousand patches):

positives (P)
    picks above the chosen threshold and below the score ceiling whose score lies between
    the :data:`POSITIVE_BAND` percentiles of those picks (junk scores at both ends: broken
    particles low, contaminants and aggregates high); or the given coordinates.
unlabelled (U)
    every candidate peak (a share of them particles: one minus the expected noise peaks
    over the candidates, from the white-noise null of :mod:`cryoflow.picking.search`) and
    random locations (a share ``picks x pi (r)^2 / area`` of them within ``r``, a quarter
    diameter, of a particle); ``prior`` is the mixture's share.
negatives (N)
    locations known not to be particle centres: half a diameter off a positive (teaches
    centring: no duplicate picks on one particle), peaks inside the exclusion mask
    (contamination, carbon, holes), picks above the score ceiling, and synthetic broken
    particles (positives with 30-50% replaced by background, :func:`broken_particles`).

Before training, every candidate is moved to the centre of mass of the density around it
(:func:`recentre`); after scoring, picks closer than :data:`DUPLICATE_DISTANCE` diameters
are one particle. The keep threshold is robust (:func:`logit_threshold`): the network's
logits are not calibrated, but particles form one tight mode and junk falls below it.

Measured (``cryoflow bench pick --n 6 --speed-n 1``, 4 species x 6 held-out 1024²
micrographs, diameter searched; CNN against the filter alone, both followed by the junk
tests of :mod:`cryoflow.picking.pick_junk`): F1 0.974/0.952 (7DDO), 0.979/0.967 (globular
150 Å), 0.985/0.838 (elongated 200 Å: re-centring turns the self-template's off-centre
picks into hits), 0.991/0.977 (globular 250 Å); junk picks 1.2% against 2.3% on average.
The network alone leaves more junk (4.3% against 5.2% of picks, measured before the junk
tests): broken particles still look like particles to it, and the threshold's guard caps
what it may reject.
Training takes 4 s (one 4096² micrograph, load 5) to 10-20 s on two cores, minutes under a
load of 10-17.

Loss: non-negative PU risk (:mod:`cryoflow.picking.pu_loss`) plus the negatives' logistic
loss; Adam, :data:`STEPS` mini-batches, random 90° rotations and flips (particles lie in
every orientation). Everything is seeded: the same input and seed give the same picks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cryoflow.picking.cnn_net import PATCH, SAMPLES_PER_DIAMETER, PickerNet
from cryoflow.picking.filters import LOW_PASS, Prepared
from cryoflow.picking.pu_loss import nnpu_loss

#: micrographs (spread over the set) whose patches train the network
MAX_MICROGRAPHS = 40
#: percentiles of the above-threshold picks' scores that make the positives
POSITIVE_BAND = (10.0, 90.0)
#: most patches of each set
MAX_POSITIVES = 1500
MAX_UNLABELLED = 4000
MAX_NEGATIVES = 2000
#: random (background) locations per kept pick in the unlabelled set
RANDOM_PER_PICK = 1.0
#: channels of the network's layers
WIDTH = 16
#: optimisation: steps, batch sizes (P, U, N), learning rate
STEPS = 200
BATCH = (32, 64, 32)
LEARNING_RATE = 3e-3
#: weight of the labelled negatives' loss
NEGATIVE_WEIGHT = 0.5
#: candidates whose logit is more than this many robust standard deviations below the median
#: logit of the filter's picks are rejected (outliers: junk, off-centre and background picks)
LOGIT_SIGMAS = 3.0
#: at most this share of the filter's picks is rejected by the logit threshold (junk is 5-8%
#: of the filter's picks on the simulated datasets)
MAX_REJECTED = 0.08
#: a random location within this many diameters of a particle counts as one (for the prior)
POSITIVE_RADIUS = 0.25
#: the positives are moved this many diameters off centre to make off-centre negatives
OFF_CENTRE = 0.5
#: re-centring: radius of the centroid window (diameters) and iterations
RECENTRE_RADIUS = 0.5
RECENTRE_ITERATIONS = 3
#: after re-centring, picks closer than this many diameters are one particle (the best scored is kept)
DUPLICATE_DISTANCE = 0.4
#: add synthetic broken particles (:func:`broken_particles`) to the negatives
BROKEN_NEGATIVES = True
#: input values are clipped to this many noise standard deviations (contamination is huge)
CLIP = 8.0
#: fewer positives than this: the network is not trained (the blob picker's picks stand)
MIN_POSITIVES = 30


def cnn_input(prep: Prepared, diameter: float) -> tuple[torch.Tensor, float]:
    """The network's input image ``(h', w')`` float32 for micrograph ``prep`` and its scale
    (input pixels per working pixel, <= 1): particles white, noise of unit standard deviation,
    ``SAMPLES_PER_DIAMETER`` pixels per ``diameter`` Å (see the module doc), clipped at :data:`CLIP`."""
    image, scale = density_image(prep, diameter)
    return image.clamp(-CLIP, CLIP), scale


def density_image(prep: Prepared, diameter: float) -> tuple[torch.Tensor, float]:
    """:func:`cnn_input` before clipping (the junk tests of :mod:`cryoflow.picking.pick_junk` measure it)."""
    filt = torch.exp(-0.5 * (prep.k * LOW_PASS) ** 2) * (1 - torch.exp(-((prep.k * 2 * diameter) ** 2)))
    if prep.ctf is not None:
        filt = filt * torch.sign(prep.ctf)
    scale = min(1.0, SAMPLES_PER_DIAMETER * prep.pixel_size / diameter)
    h, w = prep.shape
    nh, nw = max(PATCH, int(round(h * scale))), max(PATCH, int(round(w * scale)))
    nh, nw = min(nh, h), min(nw, w)
    top = nh // 2

    def crop(x: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([x[: nh - top], x[h - top :]]) if top else x[:nh]
        return rows[:, : nw // 2 + 1]

    cropped = crop(-(prep.spectrum * filt))
    image = torch.fft.irfft2(cropped, s=(nh, nw)) * (nh * nw) / (h * w)
    # shot noise after the filter, on the cropped grid (see filters.noise_sigma)
    weight = torch.full((cropped.shape[-1],), 2.0, device=filt.device)
    weight[0] = 1.0
    if nw % 2 == 0:
        weight[-1] = 1.0
    sigma = math.sqrt(float((crop(filt).abs().square() * weight).sum()) * prep.white) / (h * w)
    image = (image - image.median()) / max(sigma, 1e-12)
    return image.float(), nh / h


def crop_patches(image: torch.Tensor, yx: np.ndarray, size: int = PATCH) -> torch.Tensor:
    """Patches ``(n, 1, size, size)`` of ``image`` ``(h, w)`` centred on ``yx`` ``(n, 2)`` (input pixels,
    rounded); beyond the edges the image is mirrored."""
    half = size // 2
    pad = torch.nn.functional.pad(image[None, None], (half + 1,) * 4, mode="reflect")[0, 0]
    yx = np.round(np.asarray(yx, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    h, w = image.shape
    y = np.clip(yx[:, 0], 0, h - 1) + 1
    x = np.clip(yx[:, 1], 0, w - 1) + 1
    offsets = torch.arange(size)
    ys = torch.as_tensor(y)[:, None] + offsets[None]  # (n, size) rows of the padded image
    xs = torch.as_tensor(x)[:, None] + offsets[None]
    return pad[ys[:, :, None], xs[:, None, :]][:, None]


@dataclass
class TrainingImage:
    """One micrograph's share of the training set: its network input and positions (input
    pixels, ``(n, 2)`` [y, x]) of positives, candidates, labelled negatives; ``picks``:
    how many picks it kept (for the prior)."""

    image: torch.Tensor
    positives: np.ndarray
    candidates: np.ndarray
    negatives: np.ndarray
    picks: int


@dataclass
class Training:
    """What training did: the figures written to summary.json and shown in the report."""

    positives: int = 0
    unlabelled: int = 0
    negatives: int = 0
    prior: float = float("nan")
    candidate_prior: float = float("nan")
    random_prior: float = float("nan")
    micrographs: int = 0
    steps: int = 0
    seconds: float = 0.0
    loss: list[float] = field(default_factory=list)
    negative_risk: list[float] = field(default_factory=list)
    positive_source: str = "confident picks"
    trained: bool = False
    reason: str = ""
    threshold: float = float("nan")
    rounds: int = 1

    def to_dict(self) -> dict:
        return {
            "trained": self.trained,
            "logit_threshold": round(self.threshold, 4) if np.isfinite(self.threshold) else None,
            "reason": self.reason,
            "positive_source": self.positive_source,
            "positives": self.positives,
            "unlabelled": self.unlabelled,
            "negatives": self.negatives,
            "prior": round(self.prior, 4),
            "candidate_prior": round(self.candidate_prior, 4),
            "random_prior": round(self.random_prior, 4),
            "micrographs": self.micrographs,
            "steps": self.steps,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 2),
            "loss": [round(v, 4) for v in self.loss],
            "final_loss": round(float(np.mean(self.loss[-20:])), 4) if self.loss else None,
        }


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random one of the 8 rotations/flips of the square, per patch."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    flip = torch.rand(len(x), generator=gen) < 0.5
    out = torch.empty_like(x)
    for r in range(4):
        for f in (False, True):
            sel = (k == r) & (flip == f)
            if sel.any():
                y = torch.rot90(x[sel], r, dims=(-2, -1))
                out[sel] = y.flip(-1) if f else y
    return out


def broken_particles(positives: torch.Tensor, background: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Synthetic junk ``(n, 1, P, P)``: each positive patch cut by a random line 0-30% of a radius
    from its centre, the far side replaced by a background patch (30-50% of the particle
    gone, as the simulator's and real broken particles)."""
    n = min(len(positives), len(background))
    size = positives.shape[-1]
    c = torch.arange(size, dtype=torch.float32) - size // 2
    theta = torch.rand(n, generator=gen) * 2 * math.pi
    offset = torch.rand(n, generator=gen) * 0.3 * SAMPLES_PER_DIAMETER / 2
    signed = (
        c[None, None, :] * torch.cos(theta)[:, None, None] + c[None, :, None] * torch.sin(theta)[:, None, None]
    ) - offset[:, None, None]
    keep = torch.sigmoid(-signed / 0.7)[:, None]
    return positives[:n] * keep + background[:n] * (1 - keep)


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=cap, replace=False) if n > cap else np.arange(n)


def train(
    images: list[TrainingImage],
    candidate_prior: float,
    seed: int = 0,
    device="cpu",
    steps: int | None = None,
    positive_source: str = "confident picks",
) -> tuple[PickerNet | None, Training]:
    """Train a :class:`PickerNet` on ``images`` (see the module doc); ``candidate_prior``: the
    share of candidate peaks that are particles. Returns ``(net or None, Training)``; None when
    there are fewer than :data:`MIN_POSITIVES` positives."""
    t0 = time.perf_counter()
    steps = STEPS if steps is None else steps
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    record = Training(micrographs=len(images), positive_source=positive_source, candidate_prior=candidate_prior)
    r = SAMPLES_PER_DIAMETER * POSITIVE_RADIUS
    pos, cand, neg, rand = [], [], [], []
    area = picks = 0.0
    for im in images:
        h, w = im.image.shape
        area += h * w
        picks += im.picks
        pos.append(crop_patches(im.image, im.positives))
        cand.append(crop_patches(im.image, im.candidates))
        angle = rng.uniform(0, 2 * np.pi, len(im.positives))
        off = OFF_CENTRE * SAMPLES_PER_DIAMETER * np.stack([np.sin(angle), np.cos(angle)], 1)
        shifted = im.positives + off
        inside = (shifted[:, 0] >= 0) & (shifted[:, 0] < h) & (shifted[:, 1] >= 0) & (shifted[:, 1] < w)
        neg.append(crop_patches(im.image, np.concatenate([shifted[inside], im.negatives])))
        n_rand = int(math.ceil(RANDOM_PER_PICK * max(im.picks, 1)))
        rand.append(crop_patches(im.image, rng.uniform((0, 0), (h, w), size=(n_rand, 2))))
    pos, cand, neg, rand = (torch.cat(t) if t else torch.zeros(0, 1, PATCH, PATCH) for t in (pos, cand, neg, rand))
    pos = pos[_sample(len(pos), MAX_POSITIVES, rng)]
    neg = neg[_sample(len(neg), MAX_NEGATIVES, rng)]
    share = len(cand) / max(len(cand) + len(rand), 1)
    n_cand = min(len(cand), int(round(MAX_UNLABELLED * share)))
    n_rand = min(len(rand), MAX_UNLABELLED - n_cand)
    cand, rand = cand[_sample(len(cand), n_cand, rng)], rand[_sample(len(rand), n_rand, rng)]
    unl = torch.cat([cand, rand])
    if BROKEN_NEGATIVES and len(rand) and len(pos):
        take = torch.as_tensor(_sample(len(pos), len(rand), rng))
        neg = torch.cat([neg, broken_particles(pos[take], rand[torch.randperm(len(rand), generator=gen)], gen)])
    record.random_prior = float(min(0.5, picks * math.pi * r * r / max(area, 1.0)))
    record.prior = float(
        np.clip((len(cand) * candidate_prior + len(rand) * record.random_prior) / max(len(unl), 1), 0.01, 0.95)
    )
    record.positives, record.unlabelled, record.negatives = len(pos), len(unl), len(neg)
    if len(pos) < MIN_POSITIVES or len(unl) < MIN_POSITIVES:
        record.reason = f"only {len(pos)} positives (at least {MIN_POSITIVES} needed): blob picks kept"
        record.seconds = time.perf_counter() - t0
        return None, record

    net = PickerNet(WIDTH).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    pos, unl, neg = pos.to(device), unl.to(device), neg.to(device)
    bp, bu, bn = BATCH
    for _ in range(steps):
        ip = torch.randint(0, len(pos), (bp,), generator=gen)
        iu = torch.randint(0, len(unl), (bu,), generator=gen)
        parts = [pos[ip], unl[iu]]
        if len(neg):
            parts.append(neg[torch.randint(0, len(neg), (bn,), generator=gen)])
        batch = _augment(torch.cat(parts).cpu(), gen).to(device)
        logits = net(batch)
        loss, neg_risk = nnpu_loss(
            logits[:bp], logits[bp : bp + bu], record.prior, logits[bp + bu :] if len(neg) else None, NEGATIVE_WEIGHT
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        record.loss.append(loss.item())
        record.negative_risk.append(neg_risk)
    net.eval()
    record.steps, record.trained = steps, True
    record.seconds = time.perf_counter() - t0
    return net, record


def recentre(image: torch.Tensor, yx: np.ndarray, iterations: int | None = None) -> np.ndarray:
    """Positions ``yx`` ``(n, 2)`` (input pixels) moved to the centre of mass of the density around them.

    Mean shift on the network input (particles white): each position moves to the centroid
    of the positive density within :data:`RECENTRE_RADIUS` diameters of it, a few times.
    Measured on the simulated elongated species (200 Å): the filter's self-template picks lie
    50-75 Å (0.25-0.37 diameters) off the particle's centre along its axis; the centroid
    brings them to the centre.
    """
    yx = np.asarray(yx, dtype=np.float64).reshape(-1, 2).copy()
    iterations = RECENTRE_ITERATIONS if iterations is None else iterations
    if len(yx) == 0:
        return yx
    r = RECENTRE_RADIUS * SAMPLES_PER_DIAMETER
    size = 2 * int(math.ceil(r)) + 1
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= r * r
    for _ in range(iterations):
        centre = np.round(yx)
        patches = crop_patches(image, centre, size)[:, 0].double().clamp_min(0) * disk
        mass = patches.sum((1, 2)).clamp_min(1e-9)
        dy = (patches * offsets[None, :, None]).sum((1, 2)) / mass
        dx = (patches * offsets[None, None, :]).sum((1, 2)) / mass
        yx = centre + torch.stack([dy, dx], 1).numpy()
    return yx


def logit_threshold(logits: np.ndarray) -> float:
    """The logit under which a pick is an outlier among ``logits`` (the filter's picks): median
    minus :data:`LOGIT_SIGMAS` robust standard deviations (1.4826 x the median absolute deviation).

    The network's logits are not calibrated probabilities (the PU prior is an estimate), but
    particles form one tight mode; junk, background and off-centre picks fall below it
    (measured on simulated datasets: particles' 10th-90th percentile logits 0.9-1.5,
    contaminants and ice chips about 0).
    """
    if len(logits) == 0:
        return 0.0
    median = float(np.median(logits))
    robust = median - LOGIT_SIGMAS * 1.4826 * float(np.median(np.abs(logits - median)))
    # a network that learned little gives nearly equal logits, and a tiny spread would cut into
    # the particles: never reject more than MAX_REJECTED of the filter's picks
    return min(robust, float(np.quantile(logits, MAX_REJECTED)))


@torch.no_grad()
def score(net: PickerNet, image: torch.Tensor, yx: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Logits ``(n,)`` of the patches of ``image`` centred on ``yx`` ``(n, 2)`` (input pixels)."""
    if len(yx) == 0:
        return np.zeros(0)
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(yx), chunk):
        out.append(net(crop_patches(image, yx[i : i + chunk]).to(device)).double().cpu())
    return torch.cat(out).numpy()
