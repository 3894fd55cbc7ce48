"""Simulate one motion-corrected micrograph with complete ground truth.

Image formation (weak-phase approximation, linear in the projected potential; the
physics lives in :mod:`cryoflow.simulate.physics`, defects and junk in
:mod:`cryoflow.simulate.defects`):

1. Objects (particles, junk) are placed without overlap (or with, for ``crowding``),
   each at a height ``z`` in the ice; their projections (``Species.project``, V·Å) times
   the interaction constant give phases (rad) in small boxes, batched over objects. In
   each box the object's height is applied as a Fresnel propagation (``cos``/``sin`` of
   ``π λ z k²``, see :func:`physics.height_propagation`) together with its sub-pixel shift,
   and the two real results are added into two full-frame channels.
2. Vitreous ice is a weak phase object whose Fourier coefficients are drawn directly in
   Fourier space from its physical spectrum (water molecules' scattering factor × the
   structure factor of amorphous ice: low-frequency solvent noise, the broad 3.7 Å ring),
   with the defocus spread through the ice thickness (rings damped at high frequency in
   thick ice). Crystalline ice adds powder rings / spots.
3. One micrograph-wide CTF (torch-ctf: defocus U/V/angle, Cs, voltage, amplitude
   contrast, phase shift), a B-factor envelope, the detector MTF and, for ``drift``, a
   line-kernel blur multiply the two channels: ``ĉ = -2 (sin γ Φ̂_R + cos γ Φ̂_I)``.
4. The expected counts are ``dose · a² · T(x) · (1 + c(x))`` with the zero-loss
   transmission ``T = exp(-t / λ_in)`` of the local ice (and carbon, contamination,
   cracks); shot noise is Poisson (scaled by the detector's DQE(0)).

Cost: three full-frame FFTs (two ``rfft2``, one ``irfft2``), one CTF evaluation, the
random fields and the Poisson draw; particle boxes are small and batched.

Coordinates: ``x`` is the column, ``y`` the row of the returned ``image`` (0-based pixel
centres), as RELION's rlnCoordinateX/Y. Heights ``z`` in Å from the middle of the ice,
positive towards the electron source; a particle's defocus is the micrograph's + z (the
micrograph defocus is that of the ice's mid-plane).
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cryoflow.errors import CryoflowError
from cryoflow.simulate import defects as _defects
from cryoflow.simulate import physics

DETECTOR_NAMES = tuple(physics.DETECTORS)
PARTICLE_COLUMNS = (
    "x",
    "y",
    "rot",
    "tilt",
    "psi",
    "species",
    "z",
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "is_junk",
    "junk_kind",
    "diameter",
    "n_members",
)

# random streams: each part of the simulation draws from its own generator, so changing
# e.g. the dose does not move the particles
_STREAM_DEFECT, _STREAM_OBJECTS, _STREAM_ICE, _STREAM_NOISE, _STREAM_FIELDS = range(5)


@dataclass
class MicrographSpec:
    """Every parameter of one simulated micrograph (units in the names' comments).

    Attributes
    ----------
    shape: (H, W) in pixels.
    pixel_size: Å/pixel (the species must have the same).
    voltage: kV. cs: mm. amplitude_contrast: fraction (0.07 typical).
    defocus_u, defocus_v: Å, positive is underfocus (RELION rlnDefocusU/V), of the ice's
        mid-plane. defocus_angle: degrees, RELION rlnDefocusAngle (U axis from x towards +y).
    phase_shift: degrees (phase plate), 0 for none.
    b_factor: Å², amplitude envelope exp(-B k²/4).
    dose: e/Å² over the exposure (the whole motion-corrected sum).
    ice_thickness: nm.
    detector: ``"ideal"`` (MTF 1, DQE 1), ``"counting"``/``"falcon4"``/``"k3"`` (pixel
        aperture and event-localisation MTF, DQE(0) 0.8-0.85).
    energy_filter: True: zero-loss image (inelastically scattered electrons removed);
        False: they arrive as a contrast-less background.
    n_particles: objects to place (particles and junk); fewer are placed if they do not fit.
    species_weights: relative abundance of each species (default equal).
    min_distance: Å between object centres; None: objects touch at most ((d_i + d_j)/2);
        0: overlap allowed.
    edge_margin: pixels from the border for object centres; None: each object's radius.
    junk_fraction: fraction of the objects that are junk.
    junk_kinds: relative weights of ``broken``, ``ice_chip``, ``contaminant``, ``aggregate``
        (default equal).
    defect: None or one of :data:`defects.DEFECTS`; defect_params override
        :data:`defects.DEFECT_DEFAULTS`.
    ice_contrast: scale of the ice's phase spectrum (1: the physical estimate).
    thickness_variation: relative std of the ice thickness across the field (smooth,
        correlation length ~1500 Å): slow intensity variations as in real holes.
    solvent: subtract the displaced ice from the species' vacuum potential (inside the
        particle envelope), so particles have their contrast in ice.
    noise: False gives the expected counts (no shot noise), for tests.
    shot_noise: ``"poisson"`` (exact draws), ``"auto"`` (exact where fewer than
        :data:`GAUSSIAN_ABOVE` counts are expected, elsewhere the rounded normal
        approximation with the same mean and variance: 4x faster on 4096² frames).
    keep_expected: also return the noise-free expected counts.
    seed: random seed (same spec and seed give the same micrograph on a device).
    """

    shape: tuple[int, int] = (256, 256)
    pixel_size: float = 1.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_u: float = 15000.0
    defocus_v: float = 15000.0
    defocus_angle: float = 0.0
    phase_shift: float = 0.0
    b_factor: float = 60.0
    dose: float = 40.0
    ice_thickness: float = 30.0
    detector: str = "ideal"
    energy_filter: bool = True
    n_particles: int = 20
    species_weights: tuple[float, ...] | None = None
    min_distance: float | None = None
    edge_margin: float | None = None
    junk_fraction: float = 0.0
    junk_kinds: dict[str, float] | None = None
    defect: str | None = None
    defect_params: dict | None = None
    ice_contrast: float = 1.0
    thickness_variation: float = 0.03
    solvent: bool = True
    noise: bool = True
    shot_noise: str = "auto"
    keep_expected: bool = False
    seed: int = 0

    def replace(self, **changes) -> MicrographSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out

    def validate(self) -> None:
        """Raise :class:`CryoflowError` naming the first bad parameter."""

        def bad(msg: str):
            raise CryoflowError(None, f"micrograph spec: {msg}")

        if len(self.shape) != 2 or min(self.shape) < 16:
            bad(f"shape must be (H, W) of at least 16 pixels, got {self.shape}")
        for name in ("pixel_size", "voltage"):
            if not getattr(self, name) > 0:
                bad(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("cs", "b_factor", "dose", "ice_thickness", "n_particles"):
            if getattr(self, name) < 0:
                bad(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.amplitude_contrast < 1:
            bad(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")
        if not 0 <= self.junk_fraction <= 1:
            bad(f"junk_fraction must be in [0, 1], got {self.junk_fraction}")
        if self.shot_noise not in ("auto", "poisson"):
            bad(f"shot_noise must be auto or poisson, got {self.shot_noise!r}")
        if self.detector not in physics.DETECTORS:
            bad(f"unknown detector {self.detector!r} (one of {', '.join(physics.DETECTORS)})")
        if self.defect is not None and self.defect not in _defects.DEFECTS:
            bad(f"unknown defect {self.defect!r} (one of {', '.join(_defects.DEFECTS)})")
        for kind in self.junk_kinds or {}:
            if kind not in _defects.JUNK_KINDS:
                bad(f"unknown junk kind {kind!r} (one of {', '.join(_defects.JUNK_KINDS)})")
        if self.defocus_u < 0 or self.defocus_v < 0:
            bad("defocus_u and defocus_v must be underfocus (positive Å)")


@dataclass
class SimulatedMicrograph:
    """One simulated micrograph and its truth.

    image: float32 ``(H, W)`` ``[y, x]``, electron counts per pixel of the summed movie.
    particles: one row per placed object, columns :data:`PARTICLE_COLUMNS`: x, y (px,
        x = column), rot/tilt/psi (deg, RELION; NaN for objects that are not a species
        projection), species (name, "" for ice chips and contaminants), z (Å), defocus_u/v
        (Å, the micrograph's + z), defocus_angle (deg), is_junk, junk_kind ("" or
        broken|ice_chip|contaminant|aggregate), diameter (Å), n_members (particles in it).
    truth: micrograph-level truth (see :func:`simulate_micrograph`).
    rotations: float32 ``(N, 3, 3)`` matrices given to ``Species.project`` per row (NaN
        where none).
    expected: noise-free expected counts ``(H, W)`` if ``spec.keep_expected``.
    timings: seconds spent per stage.
    """

    image: np.ndarray
    particles: pd.DataFrame
    truth: dict
    rotations: np.ndarray
    expected: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


# --- helpers --------------------------------------------------------------------------
def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _random_rotations(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random rotations: ``structures.random_rotations`` when available."""
    try:
        from cryoflow.simulate.structures import random_rotations
    except ImportError:  # stand-in until the structures module exists
        return _euler_rotations(n, gen)
    return random_rotations(n, gen)


def _euler_rotations(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform rotations as RELION Euler angles (rot, tilt, psi; deg) and their matrices (n,3,3)."""
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    rot = u[:, 0] * 2 * math.pi
    tilt = torch.arccos(1 - 2 * u[:, 1])
    psi = u[:, 2] * 2 * math.pi
    ca, sa, cb, sb, cg, sg = rot.cos(), rot.sin(), tilt.cos(), tilt.sin(), psi.cos(), psi.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = torch.stack(
        [
            torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            torch.stack([sc, ss, cb], -1),
        ],
        -2,
    )
    eul = torch.stack([rot, tilt, psi], -1).rad2deg()
    return m.float(), eul.float()


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.t = time.perf_counter()
        self.out: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.out[name] = self.out.get(name, 0.0) + now - self.t
        self.t = now


# --- objects and their placement -----------------------------------------------------------
@dataclass
class _Objects:
    kind: list[str]  # "particle" or a junk kind
    species: torch.Tensor  # (n,) long, -1 for none
    radius: torch.Tensor  # (n,) px, float64
    size_A: torch.Tensor  # (n,) Å: diameter of the object (junk) or species
    members: torch.Tensor  # (n,) long
    offsets: torch.Tensor  # (n, m, 2) px member offsets of aggregates (NaN padded)


def _draw_objects(spec: MicrographSpec, plan, species: list, gen: torch.Generator) -> _Objects:
    apix = spec.pixel_size
    diam = torch.tensor([float(s.diameter) for s in species], dtype=torch.float64)
    weights = torch.tensor(spec.species_weights or [1.0] * len(species), dtype=torch.float64)
    if len(weights) != len(species):
        raise CryoflowError(None, f"micrograph spec: {len(weights)} species weights for {len(species)} species")
    n = plan.n_objects
    if plan.reason == "crowding" and n > 0:
        r_mean = float((diam * weights).sum() / weights.sum()) / apix / 2
        n = max(n, int(plan.details["coverage"] * spec.shape[0] * spec.shape[1] / (math.pi * r_mean**2)))
        n = min(n, 20000)
    if n == 0 or not species:
        z = torch.zeros(0)
        return _Objects([], z.long(), z.double(), z.double(), z.long(), torch.zeros(0, 1, 2, dtype=torch.float64))
    n_junk = int(round(spec.junk_fraction * n))
    junk_w = spec.junk_kinds or {k: 1.0 for k in _defects.JUNK_KINDS}
    junk_names = [k for k in _defects.JUNK_KINDS if junk_w.get(k, 0) > 0]
    kinds = ["particle"] * (n - n_junk)
    if n_junk and junk_names:
        # numbers in proportion to the weights (largest remainder, random tie-breaks)
        jw = torch.tensor([junk_w[k] for k in junk_names], dtype=torch.float64)
        share = jw / jw.sum() * n_junk
        counts = share.floor().long()
        rest = share - counts + 1e-6 * torch.rand(len(jw), generator=gen, dtype=torch.float64)
        counts[torch.argsort(rest, descending=True)[: n_junk - int(counts.sum())]] += 1
        kinds += [name for name, c in zip(junk_names, counts.tolist(), strict=True) for _ in range(c)]
    # aggregation: most particles go into clumps (one object per clump)
    sizes = torch.ones(len(kinds), dtype=torch.long)
    if plan.reason == "aggregation":
        n_part = kinds.count("particle")
        lo, hi = plan.details["size"]
        mean_size = (lo + hi) / 2
        n_agg = int(round(plan.details["fraction"] * n_part / mean_size))
        n_single = n_part - int(round(plan.details["fraction"] * n_part))
        kinds = ["aggregate"] * n_agg + ["particle"] * max(n_single, 0) + [k for k in kinds if k != "particle"]
        sizes = torch.ones(len(kinds), dtype=torch.long)
        sizes[:n_agg] = torch.randint(lo, hi + 1, (n_agg,), generator=gen)
    is_agg = torch.tensor([k == "aggregate" for k in kinds])
    if plan.reason != "aggregation":
        n_small = int(is_agg.sum())
        sizes[is_agg] = torch.randint(2, 6, (n_small,), generator=gen)
    sp = torch.multinomial(weights, len(kinds), replacement=True, generator=gen)
    no_species = torch.tensor([k in ("ice_chip", "contaminant") for k in kinds])
    sp[no_species] = -1
    mean_d = float((diam * weights).sum() / weights.sum())
    size_A = torch.where(sp >= 0, diam[sp.clamp_min(0)], torch.zeros(len(kinds), dtype=torch.float64))
    u = torch.rand(len(kinds), generator=gen, dtype=torch.float64)
    is_chip = torch.tensor([k == "ice_chip" for k in kinds])
    is_cont = torch.tensor([k == "contaminant" for k in kinds])
    size_A = torch.where(is_chip, mean_d * (0.5 + u), size_A)
    size_A = torch.where(is_cont, mean_d * (0.2 + 0.4 * u), size_A)
    radius = size_A / apix / 2
    offsets = _defects.aggregate_offsets(len(kinds), sizes, 1.0, gen)  # unit spacing, scaled below
    offsets = offsets * (0.9 * size_A / apix).reshape(-1, 1, 1)
    offsets[~is_agg, 1:] = float("nan")
    offsets[~is_agg, 0] = 0.0
    extent = torch.nan_to_num(offsets.norm(dim=-1), nan=0.0).amax(1)
    radius = torch.where(is_agg, extent + radius, radius)
    size_A = torch.where(is_agg, 2 * radius * apix, size_A)
    return _Objects(kinds, sp, radius, size_A, sizes, offsets)


def _candidate_weights(yx: torch.Tensor, plan, spec: MicrographSpec, radius: torch.Tensor) -> torch.Tensor | None:
    """Relative density of object centres at candidate points ``yx`` (..., 2) or None (uniform)."""
    if plan.reason == "carbon":
        d = plan.details
        cy, cx = d["hole_centre_yx"]
        r = torch.sqrt((yx[..., 0] - cy) ** 2 + (yx[..., 1] - cx) ** 2)
        inside = d["hole_radius_px"] - r  # > 0 on the ice side
        band = (inside > 0) & (inside < 4 * radius)
        frac = d["edge_fraction"]
        # uniform density 1 in the hole, boosted band so that ~edge_fraction sit in it,
        # few on the carbon
        w = torch.where(inside > 0, torch.ones_like(r), torch.full_like(r, 0.1))
        return torch.where(band, w * (1 + 30 * frac / (1 - frac + 1e-6)), w)
    if plan.reason == "crack":
        w = torch.ones(yx.shape[:-1], dtype=torch.float64)
        for c in plan.details["cracks"]:
            a = math.radians(c["angle_deg"])
            py, px = c["point_yx"]
            across = -(yx[..., 1] - px) * math.sin(a) + (yx[..., 0] - py) * math.cos(a)
            w = torch.where(across.abs() < c["width_px"] + c["wobble_px"] + radius, torch.zeros_like(w), w)
        return w + 1e-6
    return None


def _independent_set(adj: torch.Tensor, prio: torch.Tensor) -> torch.Tensor:
    """Greedy maximal independent set in priority order (rounds of Luby's algorithm)."""
    m = adj.shape[0]
    alive = torch.ones(m, dtype=torch.bool)
    chosen = torch.zeros(m, dtype=torch.bool)
    neg = torch.tensor(-1.0, dtype=prio.dtype)
    while bool(alive.any()):
        nb = torch.where(adj & alive[None, :], prio[None, :], neg).amax(1)
        sel = alive & (prio > nb)
        chosen |= sel
        alive &= ~(sel | (adj & sel[None, :]).any(1))
    return chosen


def _place(objs: _Objects, spec: MicrographSpec, plan, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (n, 2) y, x in px and a mask of the objects that found room."""
    n = len(objs.kind)
    h, w = spec.shape
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    margin = objs.radius if spec.edge_margin is None else torch.full((n,), float(spec.edge_margin), dtype=torch.float64)
    margin = torch.minimum(margin, torch.tensor(min(h, w) / 2 - 1.0, dtype=torch.float64))
    k = 1 if plan.overlap else max(2, min(12, 2000 // n))  # candidates per object
    pool = 8
    u = torch.rand(n, k, pool, 2, generator=gen, dtype=torch.float64)
    lo = margin.reshape(n, 1, 1)
    cand = torch.stack([lo + u[..., 0] * (h - 1 - 2 * lo), lo + u[..., 1] * (w - 1 - 2 * lo)], -1)
    wts = _candidate_weights(cand, plan, spec, objs.radius.reshape(n, 1, 1))
    if wts is None:
        cand = cand[:, :, 0]
    else:
        pick = torch.multinomial(wts.reshape(n * k, pool), 1, generator=gen).reshape(n, k)
        cand = torch.gather(cand, 2, pick.reshape(n, k, 1, 1).expand(n, k, 1, 2))[:, :, 0]
    if plan.overlap:
        return cand[:, 0], torch.ones(n, dtype=torch.bool)
    flat = cand.reshape(n * k, 2)
    owner = torch.arange(n).repeat_interleave(k)
    r = objs.radius[owner]
    if spec.min_distance is None:
        thr = r[:, None] + r[None, :]
    else:
        thr = torch.full((n * k, n * k), spec.min_distance / spec.pixel_size, dtype=torch.float64)
    adj = (torch.cdist(flat, flat) < thr) | (owner[:, None] == owner[None, :])
    adj.fill_diagonal_(False)
    chosen = _independent_set(adj, torch.rand(n * k, generator=gen, dtype=torch.float64))
    placed = torch.zeros(n, dtype=torch.bool)
    pos = torch.full((n, 2), float("nan"), dtype=torch.float64)
    idx = chosen.nonzero()[:, 0]
    placed[owner[idx]] = True
    pos[owner[idx]] = flat[idx]
    return pos, placed


# --- rendering ------------------------------------------------------------------------------
def _box_size(d: int, pad: int) -> int:
    """An even FFT-friendly box size of at least ``d + 2 pad + 2``."""
    import scipy.fft

    b = scipy.fft.next_fast_len(d + 2 * pad + 2, real=True)
    while b % 2:
        b = scipy.fft.next_fast_len(b + 1, real=True)
    return b


def _render_boxes(
    images: torch.Tensor,
    yx: torch.Tensor,
    dz: torch.Tensor,
    spec: MicrographSpec,
    frames: torch.Tensor,
    pad_frame: int,
    chunk: int = 64,
) -> None:
    """Add phase boxes into the two padded channels ``frames`` (2, H + 2P, W + 2P) in place.

    images: (n, D, D) projected potential (V·Å) centred at D//2; yx: (n, 2) float px
    centres in the micrograph; dz: (n,) Å height (extra underfocus) of each object.
    """
    n, d = images.shape[0], images.shape[-1]
    if n == 0:
        return
    dev = frames.device
    apix = spec.pixel_size
    sigma = physics.interaction_constant(spec.voltage)
    lam = physics.electron_wavelength(spec.voltage)
    spread = lam * float(dz.abs().max()) / (2 * apix * apix)  # px a height offset spreads a Nyquist feature
    b = _box_size(d, int(math.ceil(spread)) + 2)
    off = b // 2 - d // 2
    fy, fx = physics.rfft_freqs((b, b), device=dev)
    k2 = (fy**2 + fx**2) / apix**2
    wp = frames.shape[-1]
    ar = torch.arange(b, device=dev)
    fyv, fxv = fy[:, 0], fx[0]
    for s in range(0, n, chunk):
        img = images[s : s + chunk].to(dev, torch.float32) * sigma
        m = img.shape[0]
        box = torch.zeros(m, b, b, device=dev)
        box[:, off : off + d, off : off + d] = img
        pos = yx[s : s + chunk].to(dev)
        base = torch.floor(pos)
        frac = (pos - base).float()
        # shift by +frac: separable phase ramp exp(-2πi (fy dy + fx dx))
        ramp_y = torch.exp(-2j * math.pi * fyv[None, :] * frac[:, :1])
        ramp_x = torch.exp(-2j * math.pi * fxv[None, :] * frac[:, 1:])
        cos_a, sin_a = physics.height_propagation(
            k2[None], dz[s : s + chunk].to(dev).float()[:, None, None], spec.voltage
        )
        spec_box = physics.rfft2(box).mul_(ramp_y[:, :, None]).mul_(ramp_x[:, None, :])
        both = physics.irfft2(torch.stack([spec_box * cos_a, spec_box * sin_a]), (b, b))  # (2, m, b, b)
        top = base[:, 0].long() - b // 2 + pad_frame
        left = base[:, 1].long() - b // 2 + pad_frame
        idx = (top[:, None, None] + ar[None, :, None]) * wp + (left[:, None, None] + ar[None, None, :])
        for c in range(2):
            frames[c].view(-1).index_add_(0, idx.reshape(-1), both[c].reshape(-1))


def _species_images(species, rotations: torch.Tensor) -> torch.Tensor:
    if rotations.shape[0] == 0:
        d = species.volume.shape[-1]
        return torch.zeros(0, d, d)
    return species.project(rotations)


GAUSSIAN_ABOVE = 25.0  # counts per pixel above which "auto" shot noise uses the normal approximation


def shot_noise(lam: torch.Tensor, gen: torch.Generator, mode: str = "auto") -> torch.Tensor:
    """Counts drawn around the expected counts ``lam`` (any shape, ≥ 0).

    ``"poisson"``: exact Poisson draws. ``"auto"``: exact Poisson where ``lam`` <
    :data:`GAUSSIAN_ABOVE`, elsewhere ``round(lam + √lam · N(0, 1))`` (mean lam, variance
    lam + 1/12, skewness 0 instead of lam^-1/2 ≤ 0.2): integer counts either way.
    """
    if mode == "poisson":
        return torch.poisson(lam, generator=gen)
    out = torch.randn(lam.shape, generator=gen, device=lam.device)
    out.mul_(torch.sqrt(lam)).add_(lam).round_().clamp_(min=0.0)
    low = lam < GAUSSIAN_ABOVE
    if bool(low.any()):
        out[low] = torch.poisson(lam[low], generator=gen)
    return out


def _ice_amplitudes(spec: MicrographSpec, plan, k2: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor):
    """Standard deviations of the real and imaginary parts of the ice's two channels.

    The ice's phase spectrum (rad² per mode, :func:`physics.ice_phase_psd`) is split
    between the phase channel (``(1 + sinc(λ t k²)) / 2``) and the quadrature channel
    (``(1 - sinc) / 2``): the average of ``cos²`` and ``sin²`` of ``π λ z k²`` over heights
    ``z`` uniform through the thickness ``t`` (ice at different depths is independent).
    Radial parts come from a fine 1D table looked up by ``k²``, so the cost is a few
    full-grid operations. Returns two ``(H, W//2+1)`` tensors (0 at k = 0).
    """
    h, w = spec.shape
    dev = k2.device
    ice_nm = plan.ice_thickness
    n_tab = min(1 << 17, 32 * max(h, w))  # table uniform in k² (no square root over the grid)
    k2_max = float(k2.max()) * 1.0001
    k_tab = torch.sqrt(torch.linspace(0.0, k2_max, n_tab, device=dev, dtype=torch.float64))
    d = plan.details
    s_tab = physics.amorphous_ice_structure_factor(k_tab)
    if plan.reason == "crystalline_ice":
        f = d["fraction"]
        s_tab = (1 - f) * s_tab + f * physics.crystalline_ice_structure_factor(k_tab, d["kind"])
    psd = spec.ice_contrast * physics.ice_phase_psd(k_tab, ice_nm, spec.pixel_size, spec.voltage, s_tab)
    damp = torch.sinc(physics.electron_wavelength(spec.voltage) * ice_nm * 10.0 * k_tab**2)
    var = psd * (h * w / 4.0)  # E|X|² = N · psd, split over real and imaginary parts
    tab_r = torch.sqrt(var * (1 + damp) / 2).float()
    tab_i = torch.sqrt(torch.clamp(var * (1 - damp) / 2, min=0.0)).float()
    idx = (k2 * ((n_tab - 1) / k2_max)).round_().long()
    amp_r, amp_i = tab_r[idx], tab_i[idx]
    if plan.reason == "crystalline_ice" and d["crystal_angles_deg"]:
        spots = _defects.crystal_spots_psd(fy, fx, spec.pixel_size, d["crystal_angles_deg"])
        spot_var = 400.0 * d["fraction"] * spots * (tab_r[idx] ** 2 + tab_i[idx] ** 2) / s_tab.float()[idx]
        amp_r = torch.sqrt(amp_r**2 + spot_var / 2)
        amp_i = torch.sqrt(amp_i**2 + spot_var / 2)
    amp_r[0, 0] = 0.0  # the mean phase of the ice gives no contrast
    amp_i[0, 0] = 0.0
    return amp_r, amp_i


_SOLVENT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BROKEN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
N_BROKEN_VARIANTS = 4


def _in_solvent(species):
    """The species with the displaced ice subtracted (its potential relative to the ice).

    ``structures.Species`` hold vacuum potentials; inside the particle envelope
    (``structures.particle_envelope``) the ice's mean inner potential
    (:data:`physics.ICE_MEAN_INNER_POTENTIAL`) is subtracted. Species that say
    ``solvent_subtracted = True`` (e.g. :class:`BlobSpecies`) are used as they are.
    Cached per species object (the projection's Fourier volume is reused).
    """
    if getattr(species, "solvent_subtracted", False):
        return species
    try:
        return _SOLVENT_CACHE[species]
    except (KeyError, TypeError):
        pass
    from cryoflow.simulate.structures import particle_envelope

    vol = species.volume
    env = particle_envelope(vol.cpu(), float(species.pixel_size)).to(vol.device, vol.dtype)
    # soften the envelope by one voxel so the step does not ring
    env = torch.nn.functional.avg_pool3d(env[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    out = dataclasses.replace(species, volume=vol - physics.ICE_MEAN_INNER_POTENTIAL * env)
    try:
        _SOLVENT_CACHE[species] = out
    except TypeError:
        pass
    return out


def _broken_variant(species, variant: int):
    """One of :data:`N_BROKEN_VARIANTS` broken copies of ``species`` (cached, fixed seeds)."""
    try:
        cache = _BROKEN_CACHE.setdefault(species, {})
    except TypeError:
        cache = {}
    if variant not in cache:
        cache[variant] = _defects.broken_species(species, torch.Generator().manual_seed(7919 * (variant + 1)))
    return cache[variant]


# --- the simulator ----------------------------------------------------------------------------
def simulate_micrograph(spec: MicrographSpec, species: list, device: str | torch.device = "cpu") -> SimulatedMicrograph:
    """Simulate one micrograph of ``spec`` with particles of ``species`` (see the module doc).

    Parameters
    ----------
    spec: all parameters, units documented in :class:`MicrographSpec`.
    species: ``structures.Species`` (name, volume (D,D,D) V, pixel_size Å, diameter Å,
        ``project(rotations (N,3,3)) -> (N,D,D)`` V·Å); pixel size must equal the spec's.
    device: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns
    -------
    :class:`SimulatedMicrograph`. ``truth`` holds: ``defocus_u/v`` (Å), ``defocus_angle``
    (deg), ``phase_shift`` (deg), ``ice_thickness`` (nm), ``transmission`` (zero-loss
    fraction through the nominal ice), ``mean_counts`` (expected counts per pixel there:
    dose · a² · T), ``label`` ("good"/"bad"), ``reason`` (good or one of
    :data:`defects.DEFECTS`), ``defect`` (name or None), ``defect_details`` (drift angle
    and length in Å, carbon hole centre/radius and edge line, contamination centres/radii
    in px, crack lines, crystal orientations ...), ``n_requested``/``n_placed``/``n_junk``,
    ``masks`` (bool ``(H, W)`` numpy arrays: ``carbon``, ``contamination``, ``crack``,
    ``vacuum`` where relevant), and the optics (pixel_size, voltage, cs,
    amplitude_contrast, b_factor, dose, detector).
    """
    spec.validate()
    dev = _resolve_device(device)
    timer = _Timer(dev)
    h, w = spec.shape
    apix = spec.pixel_size
    for s in species:
        if abs(float(s.pixel_size) - apix) > 1e-3 * apix:
            raise CryoflowError(None, f"species {s.name!r} has pixel size {s.pixel_size} Å, the micrograph {apix} Å")

    plan = _defects.plan_defect(spec, _generator(spec.seed, _STREAM_DEFECT))
    ice_nm = plan.ice_thickness
    ice_A = ice_nm * 10.0
    g_obj = _generator(spec.seed, _STREAM_OBJECTS)

    # --- objects: what, where, how high, which orientation
    objs = _draw_objects(spec, plan, species, g_obj)
    pos, placed = _place(objs, spec, plan, g_obj)
    n_all = len(objs.kind)
    keep = placed.nonzero()[:, 0]
    kinds = [objs.kind[i] for i in keep.tolist()]
    n = len(kinds)
    sp_idx = objs.species[keep]
    radius_A = objs.size_A[keep] / 2
    pos = pos[keep]
    members = objs.members[keep]
    offsets = objs.offsets[keep]
    if plan.reason == "good" and not any(k == "particle" or k == "broken" for k in kinds):
        plan.reason = "no_particles"  # nothing to pick (no species given, or none fitted)
    half_room = torch.clamp(ice_A / 2 - radius_A, min=0.0)
    z = (torch.rand(n, generator=g_obj, dtype=torch.float64) * 2 - 1) * half_room
    timer("place")

    # render items: one per particle, broken particle or aggregate member; junk images
    mvalid = ~torch.isnan(offsets[..., 0])  # (n, m)
    item_obj = mvalid.nonzero()[:, 0]
    item_yx = pos[item_obj] + offsets[mvalid]
    item_yx = torch.stack([item_yx[:, 0].clamp(0, h - 1), item_yx[:, 1].clamp(0, w - 1)], 1)
    item_sp = sp_idx[item_obj]
    item_kind = [kinds[i] for i in item_obj.tolist()]
    item_z = z[item_obj] + torch.where(
        members[item_obj] > 1, 0.3 * radius_A[item_obj], torch.zeros_like(z[item_obj])
    ) * (torch.rand(len(item_obj), generator=g_obj, dtype=torch.float64) * 2 - 1)
    is_species_item = item_sp >= 0
    n_rot = int(is_species_item.sum())
    rot_m, eul = _random_rotations(n_rot, g_obj)
    item_rot = torch.full((len(item_obj), 3, 3), float("nan"))
    item_eul = torch.full((len(item_obj), 3), float("nan"))
    item_rot[is_species_item] = rot_m.float()
    item_eul[is_species_item] = eul.float()

    fy, fx = physics.rfft_freqs((h, w), device=dev)
    pad_frame = 0
    frames = None
    groups = []  # (images, yx, dz)
    is_broken = torch.tensor([k == "broken" for k in item_kind], dtype=torch.bool)
    variant = torch.randint(0, N_BROKEN_VARIANTS, (len(item_kind),), generator=g_obj)
    for si, s in enumerate(species):
        sel = (item_sp == si) & ~is_broken
        if bool(sel.any()):
            src = _in_solvent(s) if spec.solvent else s
            groups.append((_species_images(src, item_rot[sel].to(s.volume.device)), item_yx[sel], item_z[sel]))
        for v in range(N_BROKEN_VARIANTS):
            sel = (item_sp == si) & is_broken & (variant == v)
            if bool(sel.any()):
                src = _broken_variant(_in_solvent(s) if spec.solvent else s, v)
                groups.append((_species_images(src, item_rot[sel].to(s.volume.device)), item_yx[sel], item_z[sel]))
    for kind in ("ice_chip", "contaminant"):
        sel = torch.tensor([k == kind for k in item_kind], dtype=torch.bool)
        if not bool(sel.any()):
            continue
        size = objs.size_A[keep][item_obj[sel]]
        box = int(math.ceil(float(size.max()) / apix)) + 8
        box += box % 2
        if kind == "ice_chip":
            imgs = _defects.ice_chip_images(int(sel.sum()), box, apix, size.float(), g_obj, dev)
            dz = torch.full((int(sel.sum()),), ice_A / 2, dtype=torch.float64)  # on the top surface
        else:
            imgs = _defects.contaminant_images(int(sel.sum()), box, apix, size.float(), dev)
            dz = item_z[sel]
        groups.append((imgs, item_yx[sel], dz))
    timer("project")
    if groups:
        lam = physics.electron_wavelength(spec.voltage)
        max_d = max(g[0].shape[-1] for g in groups)
        max_dz = max(float(g[2].abs().max()) for g in groups)
        pad_frame = _box_size(max_d, int(math.ceil(lam * max_dz / (2 * apix * apix))) + 2) // 2 + 2
        frames = torch.zeros(2, h + 2 * pad_frame, w + 2 * pad_frame, device=dev)
        for imgs, yx, dz in groups:
            _render_boxes(imgs, yx, dz, spec, frames, pad_frame)
        frames = frames[:, pad_frame : pad_frame + h, pad_frame : pad_frame + w]
    timer("render")

    # --- real-space fields: carbon, contamination, cracks, thickness
    g_fields = _generator(spec.seed, _STREAM_FIELDS)
    gdev = _device_generator(g_fields, dev)
    sigma = physics.interaction_constant(spec.voltage)
    masks: dict[str, np.ndarray] = {}
    lam_ice = physics.inelastic_mean_free_path(spec.voltage)
    if ice_nm > 0:  # zero-loss transmission of the ice, its thickness varying slowly
        ripple = spec.thickness_variation * _defects.smooth_field((h, w), 1500.0 / apix, g_fields, dev)
        trans = torch.exp(-ice_nm * (1.0 + ripple) / lam_ice)
    else:
        trans = torch.ones(h, w, device=dev)
        masks["vacuum"] = np.ones((h, w), dtype=bool)
    extra_phase = None
    d = plan.details
    if plan.reason == "crack" and ice_nm > 0:
        crack = _defects.crack_mask((h, w), d, dev)
        trans = torch.lerp(trans, torch.ones_like(trans), crack)  # no ice in the gap
        extra_phase = -crack * min(sigma * physics.ICE_MEAN_INNER_POTENTIAL * ice_A, math.pi / 2)
        masks["crack"] = masks["vacuum"] = (crack > 0.5).cpu().numpy()
    if plan.reason == "contamination":
        t_cont = _defects.contamination_thickness((h, w), d, dev)
        trans = trans * torch.exp(-t_cont / lam_ice)
        extra_phase = torch.clamp(sigma * physics.ICE_MEAN_INNER_POTENTIAL * t_cont * 10.0, max=math.pi / 2)
        masks["contamination"] = (t_cont > 0).cpu().numpy()
    if plan.reason == "carbon":
        cmask = _defects.carbon_mask((h, w), d, dev)
        t_c = d["thickness_nm"]
        trans = trans * torch.exp(-cmask * t_c / physics.inelastic_mean_free_path(spec.voltage, "carbon"))
        noise_c = torch.randn(h, w, generator=gdev, device=dev) * physics.carbon_phase_std(t_c, apix, spec.voltage)
        extra_phase = cmask * (sigma * physics.CARBON_MEAN_INNER_POTENTIAL * t_c * 10.0 + noise_c)
        masks["carbon"] = (cmask > 0.5).cpu().numpy()
    if plan.reason == "crystalline_ice":  # diffraction contrast: grains scatter out of the aperture
        grains = _defects.crystal_grains((h, w), d["grain_size_A"] / apix, g_fields, dev)
        trans = trans * torch.clamp(1 + d["grain_contrast"] * grains, min=0.3)
    if extra_phase is not None:
        if frames is None:
            frames = torch.zeros(2, h, w, device=dev)
        frames[0] += extra_phase
    timer("fields")

    # --- Fourier space: object channels + ice, CTF, envelopes
    k2 = (fy**2 + fx**2) / apix**2  # (H, W//2+1) Å⁻²
    if frames is not None:
        chan_r = physics.rfft2(frames[0].contiguous())
        chan_i = physics.rfft2(frames[1].contiguous())
    else:
        chan_r = torch.zeros(h, w // 2 + 1, dtype=torch.complex64, device=dev)
        chan_i = torch.zeros_like(chan_r)
    timer("fft")
    if ice_nm > 0 and spec.ice_contrast > 0:
        g_ice = _device_generator(_generator(spec.seed, _STREAM_ICE), dev)
        amp_r, amp_i = _ice_amplitudes(spec, plan, k2, fy, fx)
        for chan, amp in ((chan_r, amp_r), (chan_i, amp_i)):
            # complex normal with variance 1/2 per part, scaled to amp per part
            white = torch.randn(amp.shape, generator=g_ice, device=dev, dtype=torch.complex64)
            chan.add_(white.mul_(amp.mul_(math.sqrt(2.0))))
            del white
        del amp_r, amp_i
    timer("ice")
    sin_g, cos_g = physics.ctf_sin_cos(
        (h, w),
        apix,
        spec.voltage,
        spec.cs,
        spec.amplitude_contrast,
        plan.defocus_u,
        plan.defocus_v,
        plan.defocus_angle,
        spec.phase_shift,
        device=dev,
    )
    timer("ctf")
    filt = physics.envelope(k2, spec.b_factor).mul_(-2.0)
    mtf = physics.detector_mtf(fy, fx, spec.detector)
    if mtf is not None:
        filt = filt * mtf
    if plan.reason == "drift":
        filt = filt * physics.drift_filter(fy, fx, d["length_A"] / apix, d["angle_deg"])
    contrast_hat = chan_r.mul_(sin_g).add_(chan_i.mul_(cos_g)).mul_(filt)
    del chan_r, chan_i, sin_g, cos_g, filt
    contrast = physics.irfft2(contrast_hat, (h, w)).to(dev)
    del contrast_hat
    timer("ifft")

    # --- counts
    n0 = spec.dose * apix * apix
    expected = trans * (1.0 + contrast)
    if not spec.energy_filter:
        expected = expected + 0.9 * (1.0 - trans)  # inelastic electrons: counts without contrast
    expected = torch.clamp(expected * n0, min=0.0)
    dqe0 = physics.DETECTORS[spec.detector][0]
    if spec.noise:
        g_noise = _device_generator(_generator(spec.seed, _STREAM_NOISE), dev)
        image = shot_noise(expected * dqe0, g_noise, spec.shot_noise)
        if dqe0 != 1.0:
            image = image / dqe0
    else:
        image = expected
    timer("noise")

    # --- truth
    m_rot = torch.full((n, 3, 3), float("nan"))
    m_eul = torch.full((n, 3), float("nan"))
    first = torch.zeros(len(item_obj), dtype=torch.bool)
    if len(item_obj):
        first[0] = True
        first[1:] = item_obj[1:] != item_obj[:-1]
    single = first & (members[item_obj] == 1)
    m_rot[item_obj[single]] = item_rot[single]
    m_eul[item_obj[single]] = item_eul[single]
    names = [s.name for s in species]
    du = plan.defocus_u + z.numpy()
    dv = plan.defocus_v + z.numpy()
    table = pd.DataFrame(
        {
            "x": pos[:, 1].numpy(),
            "y": pos[:, 0].numpy(),
            "rot": m_eul[:, 0].numpy().astype(np.float64),
            "tilt": m_eul[:, 1].numpy().astype(np.float64),
            "psi": m_eul[:, 2].numpy().astype(np.float64),
            "species": [names[i] if i >= 0 else "" for i in sp_idx.tolist()],
            "z": z.numpy(),
            "defocus_u": du,
            "defocus_v": dv,
            "defocus_angle": np.full(n, plan.defocus_angle),
            "is_junk": np.array([k != "particle" for k in kinds], dtype=bool),
            "junk_kind": ["" if k == "particle" else k for k in kinds],
            "diameter": (2 * radius_A).numpy(),
            "n_members": members.numpy().astype(np.int64),
        },
        columns=list(PARTICLE_COLUMNS),
    )
    t_nominal = physics.transmission(ice_nm, spec.voltage)
    truth = {
        "label": "good" if plan.reason == "good" else "bad",
        "reason": plan.reason,
        "defect": spec.defect,
        "defect_details": plan.details,
        "defocus_u": plan.defocus_u,
        "defocus_v": plan.defocus_v,
        "defocus_angle": plan.defocus_angle,
        "phase_shift": spec.phase_shift,
        "ice_thickness": ice_nm,
        "transmission": t_nominal,
        "mean_counts": n0 * t_nominal,
        "n_requested": n_all,
        "n_placed": n,
        "n_junk": int(table["is_junk"].sum()),
        "pixel_size": apix,
        "voltage": spec.voltage,
        "cs": spec.cs,
        "amplitude_contrast": spec.amplitude_contrast,
        "b_factor": spec.b_factor,
        "dose": spec.dose,
        "detector": spec.detector,
        "masks": masks,
    }
    out = SimulatedMicrograph(
        image=image.to("cpu", torch.float32).numpy(),
        particles=table,
        truth=truth,
        rotations=m_rot.numpy(),
        expected=expected.to("cpu", torch.float32).numpy() if spec.keep_expected else None,
    )
    timer("truth")
    out.timings = timer.out
    return out


# --- a stand-in species and the benchmark -------------------------------------------------------
@dataclass
class BlobSpecies:
    """A protein-like cluster of 3D Gaussians, projected analytically (fast, exact).

    Same interface as ``structures.Species``: ``volume`` (D,D,D) V ``[z,y,x]`` centred
    D//2, ``pixel_size`` Å, ``diameter`` Å, ``project(rotations (N,3,3)) -> (N,D,D)``
    V·Å ``[y,x]`` centred D//2. Rotations act on (x, y, z) column vectors; the projection
    is along z. For tests and benchmarks that must not depend on the structures module.
    """

    name: str
    volume: torch.Tensor
    pixel_size: float
    diameter: float
    centres: torch.Tensor  # (B, 3) x, y, z in Å
    sigma: float  # Å
    amplitude: float  # V at a blob's centre
    solvent_subtracted: bool = True  # its potential is already relative to the ice

    def project(self, rotations: torch.Tensor) -> torch.Tensor:
        d = self.volume.shape[-1]
        c = (torch.arange(d, dtype=torch.float32, device=rotations.device) - d // 2) * self.pixel_size
        rc = torch.einsum("nij,bj->nbi", rotations.float(), self.centres.to(rotations.device))  # (N, B, 3)
        gy = torch.exp(-0.5 * ((c[None, None, :] - rc[..., 1:2]) / self.sigma) ** 2)  # (N, B, D)
        gx = torch.exp(-0.5 * ((c[None, None, :] - rc[..., 0:1]) / self.sigma) ** 2)
        line = self.amplitude * self.sigma * math.sqrt(2 * math.pi)  # ∫ along z, V·Å
        return line * torch.einsum("nby,nbx->nyx", gy, gx)


def blob_species(diameter: float, pixel_size: float, seed: int = 0, n_blobs: int = 24, name: str | None = None):
    """A :class:`BlobSpecies` of ``diameter`` Å at ``pixel_size`` Å/px (~3 V above the ice inside)."""
    gen = torch.Generator().manual_seed(seed)
    r = diameter / 2
    v = torch.randn(n_blobs, 3, generator=gen)
    v = v / v.norm(dim=1, keepdim=True) * (torch.rand(n_blobs, 1, generator=gen) ** (1 / 3)) * 0.6 * r
    sigma = 0.22 * r
    d = int(math.ceil(1.3 * diameter / pixel_size))
    d += d % 2
    c = (torch.arange(d, dtype=torch.float32) - d // 2) * pixel_size
    g = torch.exp(-0.5 * ((c[None, :, None] - v[:, None, :]) / sigma) ** 2)  # (B, D, 3): 1D Gaussians per axis
    vol = torch.einsum("bz,by,bx->zyx", g[..., 2], g[..., 1], g[..., 0])  # separable sum of 3D Gaussians
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    inside = r2 < r * r
    amplitude = 3.0 / float(vol[inside].mean())
    return BlobSpecies(name or f"blob{int(diameter)}", vol * amplitude, pixel_size, diameter, v, sigma, amplitude)


def benchmark(
    shape: tuple[int, int] = (4096, 4096),
    n_particles: int = 300,
    pixel_size: float = 0.83,
    repeats: int = 3,
    device: str = "cpu",
    species: list | None = None,
    **spec_changes,
) -> dict:
    """Time :func:`simulate_micrograph` (after one warm-up run); the figure of ``cryoflow bench simulate``.

    Species default to ``structures.reference_species`` and a 180 Å procedural one when the
    structures module is present, else two :class:`BlobSpecies`. Returns a dict:
    ``seconds`` (median wall time over ``repeats``), ``seconds_min`` (the fastest run: the
    best estimate on a machine shared with other work), ``runs`` (all), ``cpu_seconds`` (process
    CPU time of each run, all threads: tells a busy machine from a slow simulator), ``stages`` (seconds per stage of
    the last run), ``n_placed``, ``shape``, ``pixel_size``, ``device``, ``torch_threads``.
    """
    if species is None:
        try:
            from cryoflow.simulate.structures import procedural_species, reference_species

            species = [reference_species(pixel_size), procedural_species(180.0, pixel_size, seed=1)]
        except ImportError:
            species = [blob_species(110.0, pixel_size, 0), blob_species(180.0, pixel_size, 1)]
    spec = MicrographSpec(
        shape=tuple(shape),
        pixel_size=pixel_size,
        n_particles=n_particles,
        junk_fraction=0.05,
        detector="falcon4",
        dose=50.0,
        ice_thickness=40.0,
        **spec_changes,
    )
    out = simulate_micrograph(spec.replace(seed=1000), species, device)
    runs, cpu = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = simulate_micrograph(spec.replace(seed=i), species, device)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "seconds": float(np.median(runs)),
        "seconds_min": float(np.min(runs)),
        "runs": runs,
        "cpu_seconds": cpu,
        "stages": out.timings,
        "n_placed": out.truth["n_placed"],
        "shape": list(shape),
        "pixel_size": pixel_size,
        "device": str(_resolve_device(device)),
        "torch_threads": torch.get_num_threads(),
    }
