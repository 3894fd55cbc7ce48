"""Run a 2D classification: schedule, iterations, checkpoints, outputs.

:func:`run_classify2d` reads ``particles.star`` (see :mod:`~cryoflow.classify2d.data`),
iterates E-step (:mod:`~cryoflow.classify2d.em`) and M-step
(:mod:`~cryoflow.classify2d.averages`) and writes into ``out`` (built in a temporary
folder and renamed when complete):

- ``classes.mrcs``: the K class averages (masked, centred), in class order;
- ``model.star``: ``data_model_general`` and ``data_model_classes`` (rlnReferenceImage
  ``k@classes.mrcs``, rlnClassDistribution, cfParticleCount, rlnEstimatedResolution (Å,
  where the class's spectral SNR falls below 1, RELION's definition for 2D classes),
  cfHalfSetResolution (Å, FRC 0.143 of half-set averages; optimistic, both halves are
  aligned to one reference), rlnAccuracyRotations (degrees), rlnAccuracyTranslationsAngst);
- ``particles.star``: the input columns plus rlnClassNumber (1-based), rlnAnglePsi
  (degrees), rlnOriginXAngst/YAngst, rlnMaxValueProbDistribution, rlnNormCorrection
  (1: extract normalizes the particles), rlnLogLikeliContribution;
- ``iterations/it###_classes.mrcs`` (the averages of every iteration),
  ``summary.json``, ``report.html`` + ``figures/``.

Schedule (defaults need no tuning): K = N/400 within 2-100; iteration 0 averages random
subsets at random angles; the first iterations use random mini-batches of
``max(100 K, 2000)`` particles (VDAM / cryoSPARC-like: early iterations need not see every
particle), the last ``full_passes`` see all; the resolution limit starts at 30 Å and
grows 2 rings beyond where the classes' spectral SNR falls below 1 (the last iteration
runs to Nyquist, so the final averages and their half-set FRC are not capped); rotations are sampled
as finely as the current limit resolves (``2(M+1)`` angles); translations on a 1-pixel
disk of radius ``max(2, B/20)`` pixels with a Gaussian prior; classes holding under
20% of their share are re-seeded from the largest class (not in the last 3 iterations).

Resuming: each iteration saves ``state.pt`` into the work folder ``.<out>.classify2d``
beside ``out``; a new run with the same input and options continues from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoflow.classify2d.averages import centre, frc, reseed, resolution_from_frc, ring_spectrum, wiener_averages
from cryoflow.classify2d.basis import PolarBasis
from cryoflow.classify2d.data import BatchPreparer, ParticleSet, estimate_diameter, known_diameter, read_particles
from cryoflow.classify2d.em import Accumulator, build_references, expectation, translation_grid
from cryoflow.errors import CryoflowError

STATE = "state.pt"


@dataclass
class Settings:
    """Options of a run (``None``: chosen from the data; see the module doc)."""

    classes: int | None = None
    iterations: int = 25
    mask_diameter: float | None = None  # Å
    seed: int = 0
    minibatch: int | None = None  # particles per early iteration
    full_passes: int = 5
    start_resolution: float = 30.0  # Å
    search_radius: float | None = None  # pixels
    tau2_fudge: float = 2.0
    max_memory_mb: float = 400.0  # of the largest E-step temporaries


def default_classes(n: int) -> int:
    """K from the number of particles: one class per ~400 particles, 2 to 100."""
    return int(min(100, max(2, round(n / 400))))


def work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.classify2d"


@dataclass
class State:
    """What an iteration leaves for the next (and what a resumed run reloads)."""

    iteration: int
    images: torch.Tensor  # (K, B, B)
    pi: torch.Tensor  # (K,)
    sigma2: torch.Tensor  # (R,)
    tau2: torch.Tensor | None  # (K, R)
    J: int
    resolution: torch.Tensor  # (K,) Å
    history: list = field(default_factory=list)
    klass: np.ndarray | None = None  # (N,) last class per particle, -1 unseen
    offsets: np.ndarray | None = None  # (N, 2) float32 (dy, dx) px: particle centre from the box centre
    known: np.ndarray | None = None  # (N,) bool: offsets estimated (local translation search)


def _fingerprint(particles: ParticleSet, settings: Settings, K: int, mask_diameter: float) -> str:
    text = json.dumps(
        {
            "star": str(particles.path.resolve()),
            "n": len(particles),
            "K": K,
            "mask": round(mask_diameter, 3),
            **asdict(settings),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_state(work: Path, state: State, fingerprint: str) -> None:
    from cryoflow.io import atomic_path

    with atomic_path(work / STATE) as tmp:
        torch.save({"fingerprint": fingerprint, **state.__dict__}, tmp)


def _load_state(work: Path, fingerprint: str) -> State | None:
    path = work / STATE
    if not path.exists():
        return None
    try:
        data = torch.load(path, weights_only=False)
    except Exception:
        return None
    if data.pop("fingerprint", None) != fingerprint:
        return None
    return State(**data)


def _minibatch(n: int, size: int, seed: int, iteration: int) -> np.ndarray:
    """A random subset of ``size`` particle indices (sorted, for sequential reads), reproducible."""
    rng = np.random.default_rng([seed, iteration + 1, 7])
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def _n_angles(M: int) -> int:
    return int(max(16, 4 * math.ceil(2 * (M + 1) / 4)))


_LIBC = None


def release_freed_memory() -> None:
    """Return freed heap pages to the system (glibc ``malloc_trim``; a no-op elsewhere).

    The E-step allocates and frees temporaries of many sizes (per sub-batch, per class);
    glibc keeps freed blocks below its (adaptive, up to 32 MB) mmap threshold in the heap,
    where fragmentation leaves them resident. Trimming once per batch of 1,024 particles
    (a few ms) keeps the resident memory near what one batch needs: peak anonymous memory
    of a 5,000-particle run 1.44 -> 1.32 GB, same CPU time within noise."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _group_ctf(preparer: BatchPreparer, particles: ParticleSet, idx: np.ndarray, device) -> torch.Tensor:
    """CTF of particles ``idx`` on the rfft2 grid, optics group by group: ``(n, B, B//2+1)``."""
    defocus = torch.from_numpy(particles.defocus[idx]).to(device)
    groups = particles.group[idx]
    box = particles.box
    out = torch.empty(len(idx), box, box // 2 + 1, device=device)
    for g in np.unique(groups):
        sel = torch.from_numpy(np.flatnonzero(groups == g)).to(device)
        out[sel] = preparer.ctf(defocus[sel], particles.optics[g])
    return out


class Classifier:
    """One classification run over a :class:`ParticleSet` (construct, then :meth:`run`)."""

    def __init__(self, particles: ParticleSet, settings: Settings, device, log=print):
        self.p = particles
        self.s = settings
        self.device = torch.device(device)
        self.log = log
        n = len(particles)
        self.K = settings.classes if settings.classes is not None else default_classes(n)
        if not isinstance(self.K, int) or self.K < 1 or self.K > n:
            raise CryoflowError(None, f"--classes must be between 1 and the number of particles ({n}), got {self.K}")
        if settings.iterations < 1:
            raise CryoflowError(None, f"--iterations must be at least 1, got {settings.iterations}")
        box, apix = particles.box, particles.pixel_size
        self.diameter_source = "given (--mask-diameter)"
        diameter = settings.mask_diameter
        if diameter is None:
            known = known_diameter(particles)
            if known is not None:
                diameter, self.diameter_source = known * 1.1, "picking diameter (cfDiameter or summary.json) + 10%"
            else:
                sample = np.sort(np.random.default_rng(settings.seed).choice(n, min(n, 2000), replace=False))
                diameter = estimate_diameter(particles.read(sample), apix) * 1.1
                self.diameter_source = "estimated from the particles' variance profile + 10%"
        if not np.isfinite(diameter) or diameter <= 0:
            raise CryoflowError(None, f"--mask-diameter must be a positive number of Å, got {diameter}")
        self.mask_diameter = float(min(diameter, (box - 4) * apix))
        radius_px = max(self.mask_diameter / apix / 2, 4.0)
        self.basis = PolarBasis(box, radius_px, width=3.0, device=self.device)
        self.preparer = BatchPreparer(self.basis, apix)
        radius = settings.search_radius if settings.search_radius is not None else max(2.0, box / 20)
        self.shifts = translation_grid(radius, self.device)
        self.local_shifts = translation_grid(1.5, self.device)  # 9 points around the last estimate
        self.shift_sigma = max(1.0, radius / 2)
        self.half = torch.from_numpy(np.random.default_rng([settings.seed, 3]).integers(0, 2, n)).to(self.device)
        self.minibatch = settings.minibatch or max(100 * self.K, 2000)
        self.fingerprint = _fingerprint(particles, settings, self.K, self.mask_diameter)
        self.J_start = int(max(4, min(box // 2, round(box * apix / settings.start_resolution))))

    # ------------------------------------------------------------------ helpers
    def subset(self, iteration: int) -> np.ndarray:
        n, s = len(self.p), self.s
        full_from = s.iterations - s.full_passes + 1
        if iteration >= full_from or n <= 1.5 * self.minibatch:
            return np.arange(n)
        return _minibatch(n, self.minibatch, s.seed, iteration)

    def _chunks(self, idx: np.ndarray, size: int = 1024):
        """Batches of ``size`` particles read from the stacks: ``(rows, images, ctf)``.

        Before each batch the memory freed by the previous one is given back to the system
        (:func:`release_freed_memory`), so the resident memory of a pass does not creep up
        with the number of batches, i.e. with N."""
        for start in range(0, len(idx), size):
            release_freed_memory()
            part = idx[start : start + size]
            images = torch.from_numpy(self.p.read(part)).to(self.device)
            ctf = _group_ctf(self.preparer, self.p, part, self.device)
            yield part, images, ctf

    def initial_sigma2(self) -> torch.Tensor:
        """Noise per ring from the power of (masked) particles: signal is a small part of it."""
        idx = _minibatch(len(self.p), 2000, self.s.seed, -1)
        stage = self.basis.stage(1)
        total = torch.zeros(self.basis.n_rings, device=self.device)
        for _part, images, ctf in self._chunks(idx):
            total += self.preparer(images, ctf, stage).power.sum(0)
        return (total / (len(idx) * self.basis.ring_counts.clamp_min(1))).clamp_min(1e-8)

    # ------------------------------------------------------------------ one iteration
    def iterate(self, state: State, iteration: int, idx: np.ndarray, record=None) -> tuple[State, dict]:
        K = self.K
        # the last iteration compares and averages up to Nyquist: full-resolution class averages
        # and a resolution estimate not capped by the comparison limit
        last = iteration == self.s.iterations and iteration > 0
        stage = self.basis.stage(self.basis.n_rings - 1 if last else state.J)
        A = _n_angles(stage.M)
        forced_start = iteration == 0
        log_pi = torch.log(state.pi.clamp_min(1e-8))
        images = torch.zeros(K, self.p.box, self.p.box, device=self.device) if forced_start else state.images
        grids = {"full": self.shifts, "local": self.local_shifts}
        refs, accs = {}, {}  # built when a batch first needs the grid (the last passes search locally only)

        def references(name: str):
            if name not in refs:
                refs[name] = build_references(
                    images, grids[name], self.basis, stage, state.sigma2, log_pi, self.shift_sigma, A
                )
                accs[name] = Accumulator.empty(refs[name], stage, self.basis.n_rings, self.device)
            return refs[name]

        gen = torch.Generator().manual_seed(int(self.s.seed) * 1000 + 17)
        changed = seen = 0
        use_local = iteration >= self.s.iterations - self.s.full_passes + 2  # after one full pass on the full grid
        for part, imgs, ctf in self._chunks(idx):
            local = state.known[part] & use_local
            for name, sel in (("full", ~local), ("local", local)):
                if not sel.any():
                    continue
                rows_all = part[sel]
                sel_t = torch.from_numpy(np.flatnonzero(sel)).to(self.device)
                offsets = torch.from_numpy(state.offsets[rows_all]).to(self.device) if name == "local" else None
                prep = self.preparer(imgs[sel_t], ctf[sel_t], stage, offsets)
                T = grids[name].shape[0]
                sub = int(max(16, min(1024, self.s.max_memory_mb * 1e6 / 4 / 3 / (min(4, K) * T * A + K * T * 40))))
                for s0 in range(0, len(rows_all), sub):
                    sl = slice(s0, s0 + sub)
                    rows = rows_all[sl]
                    forced = None
                    if forced_start:
                        b = len(rows)
                        forced = torch.stack(
                            [torch.randint(0, K, (b,), generator=gen), torch.randint(0, A, (b,), generator=gen)], 1
                        ).to(self.device)
                    res = expectation(
                        prep.coeffs[sl],
                        prep.ctf2[sl],
                        prep.power[sl],
                        self.half[torch.from_numpy(rows).to(self.device)],
                        references(name),
                        stage,
                        grids[name],
                        state.sigma2,
                        accs[name],
                        forced,
                    )
                    klass = res.klass.cpu().numpy()
                    before = state.klass[rows]
                    was = before >= 0
                    changed += int((before[was] != klass[was]).sum())
                    seen += int(was.sum())
                    state.klass[rows] = klass
                    # particle centre: previous estimate + the rotated translation found now
                    a = res.angle.double().cpu().numpy()
                    dy, dx = res.shift_mean.double().cpu().numpy().T
                    moved = np.stack([dx * np.sin(a) + dy * np.cos(a), dx * np.cos(a) - dy * np.sin(a)], 1)
                    base = state.offsets[rows] if name == "local" else 0.0
                    if not forced_start:
                        state.offsets[rows] = (base + moved).astype(np.float32)
                        state.known[rows] = True
                    if record is not None:
                        record(rows, res, base)
        # ---- M-step
        sums = [(accs[n], grids[n]) for n in grids if n in accs and accs[n].n]
        full, halves, ssnr = wiener_averages(sums, stage, self.basis, state.sigma2, state.tau2, K)
        n_total = sum(acc.n for acc, _ in sums)
        weights = sum(acc.weight for acc, _ in sums) / max(n_total, 1)
        R = self.basis.n_rings
        sigma2 = state.sigma2.clone()
        if not forced_start:
            sigma2 = self._noise(state, stage, refs, accs, n_total)
        # resolution from the half-set averages
        curve = frc(halves[0] * self.basis.mask, halves[1] * self.basis.mask, R)
        halfset_res, rings = resolution_from_frc(curve, self.p.box, self.p.pixel_size, stage.J)
        counts_k = weights * n_total
        big = counts_k >= max(10.0, 0.5 * float(counts_k.mean()))
        # next resolution limit: 2 rings beyond where the spectral SNR of the typical class falls
        # below 1 (the half-set FRC is optimistic: both halves are aligned to one reference), at
        # most 3 rings more per iteration
        below = (ssnr[:, 1 : stage.J + 1] < 1).cpu()
        first = torch.where(below.any(1), below.float().argmax(1), torch.full((K,), stage.J))  # last ring >= 1
        res = self.p.box * self.p.pixel_size / first.clamp_min(1).float()  # RELION's class resolution
        j_data = int(torch.quantile(first[big.cpu()].float(), 0.5)) if big.any() else stage.J
        J_next = int(min(self.basis.n_rings - 1, max(state.J, min(j_data + 2, state.J + 3))))
        # centring, re-seeding, masking
        full, applied = centre(full, self.basis.mask)
        pi = weights.clamp_min(1e-8)
        reseeded: list[int] = []
        if iteration < self.s.iterations - 3 and K > 1:
            rgen = torch.Generator().manual_seed(int(self.s.seed) * 7919 + iteration)
            full, pi, reseeded = reseed(full, pi, 0.2 / K, rgen)
        pi = pi / pi.sum()
        images = full * self.basis.mask
        tau2 = self.s.tau2_fudge * ring_spectrum(images, R).clamp_min(1e-12)
        loglik = sum(acc.loglik for acc, _ in sums)
        info = {
            "iteration": iteration,
            "particles": int(n_total),
            "rings": int(stage.J),
            "resolution_limit_angstrom": self.p.box * self.p.pixel_size / stage.J,
            "angles": int(A),
            "local_search_fraction": accs["local"].n / max(n_total, 1) if "local" in accs else 0.0,
            "loglik_per_particle": loglik / max(n_total, 1) if not forced_start else float("nan"),
            "changed_fraction": changed / seen if seen else float("nan"),
            "median_class_resolution_angstrom": float(res[big.cpu()].median()) if big.any() else float("nan"),
            "reseeded": len(reseeded),
            "mean_centring_shift_px": float(applied.norm(dim=1).mean()),
        }
        new = State(
            iteration,
            images,
            pi,
            sigma2,
            tau2,
            J_next,
            res,
            state.history + [info],
            state.klass,
            state.offsets,
            state.known,
        )
        self.last = {"halves": halves, "frc": curve, "rings": rings, "ssnr": ssnr, "halfset_resolution": halfset_res}
        return new, info

    def _noise(self, state: State, stage, refs: dict, accs: dict, n_total: int) -> torch.Tensor:
        """Noise power per ring from the expected residual |x - CTF·R S G|² of the particles seen."""
        from cryoflow.classify2d.basis import to_padded

        J1, M1 = stage.J + 1, stage.M + 1
        lam = torch.where(torch.arange(M1, device=self.device) == 0, 1.0, 2.0)[:, None, None]
        omega = self.basis.ring_counts[:J1] / state.sigma2[:J1]
        cross = torch.zeros(J1, device=self.device)
        norm = torch.zeros(J1, device=self.device)
        power = torch.zeros(J1, device=self.device)
        for name, acc in sorted(accs.items()):  # a fixed order ("full", "local"), however they were built
            if not acc.n:
                continue
            num = acc.num[0] + acc.num[1]  # (M+1, KT, 2J1)
            g = to_padded(refs[name].coeffs, stage)
            cross += (lam * (num[..., :J1] * g[..., :J1] + num[..., J1:] * g[..., J1:])).sum((0, 1))
            norm += ((acc.ctf2[0] + acc.ctf2[1]) * (refs[name].power / omega)).sum(0)
            power += acc.power[:J1]
        counts = self.basis.ring_counts[:J1]
        resid = (power - 2 * counts * cross + counts * norm) / (n_total * counts.clamp_min(1))
        sigma2 = state.sigma2.clone()
        ok = torch.isfinite(resid) & (resid > 0)
        sigma2[:J1] = torch.where(ok, resid.clamp_min(1e-3 * state.sigma2[:J1]), state.sigma2[:J1])
        return sigma2

    # ------------------------------------------------------------------ the run
    def run(self, work: Path, record_final) -> State:
        work.mkdir(parents=True, exist_ok=True)
        (work / "iterations").mkdir(exist_ok=True)
        state = _load_state(work, self.fingerprint)
        if state is not None:
            self.log(f"classify2d: resuming after iteration {state.iteration} from {work}")
        else:
            for old in (work / "iterations").glob("*"):
                old.unlink()
            sigma2 = self.initial_sigma2()
            state = State(
                -1,
                torch.zeros(1),
                torch.full((self.K,), 1.0 / self.K, device=self.device),
                sigma2,
                None,
                self.J_start,
                torch.full((self.K,), float("nan")),
                [],
                np.full(len(self.p), -1, dtype=np.int64),
                np.zeros((len(self.p), 2), dtype=np.float32),
                np.zeros(len(self.p), dtype=bool),
            )
        from cryoflow.io import write_mrc
        from cryoflow.progress import progress

        first = state.iteration + 1
        for it in progress(range(first, self.s.iterations + 1), desc="classify2d", unit="iter"):
            t0 = time.perf_counter()
            last = it == self.s.iterations
            state, info = self.iterate(state, it, self.subset(it), record_final if last else None)
            info["seconds"] = time.perf_counter() - t0
            write_mrc(work / "iterations" / f"it{it:03d}_classes.mrcs", state.images.cpu().numpy(), self.p.pixel_size)
            if not last:
                _save_state(work, state, self.fingerprint)
            self.log(
                f"classify2d: iteration {it}/{self.s.iterations}: {info['particles']} particles, "
                f"limit {info['resolution_limit_angstrom']:.1f} Å, {info['angles']} angles, "
                f"log-likelihood {info['loglik_per_particle']:.4g}, changed {info['changed_fraction']:.3f}, "
                f"{info['seconds']:.1f} s"
            )
        return state


class Recorder:
    """Collects the per-particle results of the final pass into ``(N,)`` arrays."""

    def __init__(self, n: int):
        self.klass = np.full(n, -1, dtype=np.int64)
        self.angle = np.zeros(n)
        self.shift = np.zeros((n, 2))
        self.p_max = np.zeros(n)
        self.loglik = np.zeros(n)
        self.angle_sd = np.zeros(n)
        self.shift_sd = np.zeros(n)

    def __call__(self, rows: np.ndarray, res, base) -> None:
        """Store a batch: ``base`` ``(n, 2)`` (or 0) the centre estimate the images were shifted by."""
        a = res.angle.cpu().double().numpy()
        dy, dx = res.shift_mean.cpu().double().numpy().T
        self.klass[rows] = res.klass.cpu().numpy()
        self.angle[rows] = a
        self.shift[rows] = np.stack([dx * np.sin(a) + dy * np.cos(a), dx * np.cos(a) - dy * np.sin(a)], 1) + base
        self.p_max[rows] = res.p_max.cpu().double().numpy()
        self.loglik[rows] = res.loglik.cpu().double().numpy()
        self.angle_sd[rows] = res.angle_sd.cpu().double().numpy()
        self.shift_sd[rows] = res.shift_sd.cpu().double().numpy()

    def relion_pose(self, pixel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RELION's rlnAnglePsi (degrees) and rlnOriginXAngst/YAngst (Å) of every particle.

        The model is particle ≈ R_α S_t G (shift by t, then rotate by α counter-clockwise
        in (x = column, y = row)), so the particle's centre sits at ``R_α t`` (plus the
        centre estimate a local search started from): RELION's origin is minus that, and
        its psi is ``-α`` (RELION rotates the reference by ``A(psi)``).
        """
        psi = (np.degrees(-self.angle) + 180.0) % 360.0 - 180.0
        return psi, -self.shift[:, 1] * pixel_size, -self.shift[:, 0] * pixel_size


def run_classify2d(
    particles: str | os.PathLike,
    out: str | os.PathLike,
    settings: Settings | None = None,
    device: torch.device | str = "cpu",
    log=print,
) -> dict:
    """Classify the particles of a STAR file into ``out`` (see the module doc); returns the summary."""
    from cryoflow.io import StarTable, atomic_dir, write_blocks, write_mrc, write_table

    settings = settings or Settings()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    t0 = time.perf_counter()
    parts = read_particles(particles)
    clf = Classifier(parts, settings, device, log=log)
    work = work_folder(out)
    rec = Recorder(len(parts))
    state = clf.run(work, rec)
    seconds = time.perf_counter() - t0

    K, apix = clf.K, parts.pixel_size
    psi, ox, oy = rec.relion_pose(apix)
    counts = np.bincount(rec.klass[rec.klass >= 0], minlength=K)
    acc_rot = np.array([np.degrees(np.median(rec.angle_sd[rec.klass == k])) if counts[k] else np.nan for k in range(K)])
    acc_tr = np.array([np.median(rec.shift_sd[rec.klass == k]) * apix if counts[k] else np.nan for k in range(K)])
    res = state.resolution.cpu().numpy().astype(float)
    res[counts == 0] = np.nan
    halfset = clf.last["halfset_resolution"].cpu().numpy().astype(float)
    halfset[counts == 0] = np.nan
    table = parts.table.table.copy()
    table["rlnClassNumber"] = rec.klass + 1
    table["rlnAnglePsi"] = psi.round(3)
    table["rlnOriginXAngst"] = ox.round(4)
    table["rlnOriginYAngst"] = oy.round(4)
    table["rlnMaxValueProbDistribution"] = rec.p_max.round(5)
    table["rlnNormCorrection"] = 1.0
    table["rlnLogLikeliContribution"] = rec.loglik.round(3)
    classes = state.images.cpu().numpy()
    model_classes = {
        "rlnReferenceImage": [f"{k + 1:06d}@classes.mrcs" for k in range(K)],
        "rlnClassDistribution": (counts / max(counts.sum(), 1)).round(6),
        "cfParticleCount": counts,
        "rlnEstimatedResolution": np.round(res, 3),
        "cfHalfSetResolution": np.round(halfset, 3),
        "rlnAccuracyRotations": np.round(acc_rot, 3),
        "rlnAccuracyTranslationsAngst": np.round(acc_tr, 3),
    }
    import pandas as pd

    general = pd.DataFrame(
        [
            {
                "rlnReferenceDimensionality": 2,
                "rlnNrClasses": K,
                "rlnOriginalImageSize": parts.box,
                "rlnPixelSize": apix,
                "rlnCurrentResolution": float(np.nanmedian(res)) if np.isfinite(res).any() else np.nan,
                "rlnParticleDiameter": clf.mask_diameter,
                "rlnNrIterations": settings.iterations,
            }
        ]
    )
    summary = {
        "particles": int(len(parts)),
        # what leaves the step, for the run's index: micrographs with particles, particles
        "stage": {
            "micrographs": int(table["rlnMicrographName"].nunique()) if "rlnMicrographName" in table else None,
            "particles": int(len(parts)),
        },
        "classes": int(K),
        "iterations": int(settings.iterations),
        "box": int(parts.box),
        "pixel_size_angstrom": apix,
        "mask_diameter_angstrom": clf.mask_diameter,
        "mask_diameter_source": clf.diameter_source,
        "seconds": seconds,
        "device": str(clf.device),
        "class_counts": counts.tolist(),
        "class_resolution_angstrom": res.tolist(),
        "median_resolution_angstrom": float(np.nanmedian(res)) if np.isfinite(res).any() else None,
        "mean_max_probability": float(rec.p_max.mean()),
        "history": state.history,
    }
    with atomic_dir(out) as tmp:
        write_mrc(tmp / "classes.mrcs", classes, apix, stack=True)
        write_blocks(tmp / "model.star", {"model_general": general, "model_classes": pd.DataFrame(model_classes)})
        write_table(tmp / "particles.star", StarTable(parts.table.optics, table, "particles"))
        shutil.copytree(work / "iterations", tmp / "iterations")
        from cryoflow.classify2d.report import write_report

        write_report(tmp, parts, clf, state, rec, summary, model_classes)
    shutil.rmtree(work, ignore_errors=True)
    return summary
