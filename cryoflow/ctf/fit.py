"""Fit defocus U, V and astigmatism angle to a power spectrum.

Method
------
1. Signal: the amplitude spectrum minus a smooth background (:mod:`.spectrum`).
2. Score: the Pearson correlation, over an annulus of frequencies ``[k_min, k_max]``,
   between the signal and ``-cos 2χ`` (equivalently CTF² = sin²χ up to an offset), where χ
   is the CTF phase of the model (:mod:`cryoflow.optics`, RELION conventions).
3. Search: the rotational average is scored against isotropic models over a log-spaced
   grid of defocus values (0.25% steps); the best few peaks are kept. For each, the defocus
   is found in angular sectors of 15° by the same 1D search in a narrow range, and
   ``Δf(φ) = m + a_x cos 2φ + a_y sin 2φ`` is fitted to the sector values by least squares,
   which gives the astigmatism without a brute-force 2D grid.
4. Refinement: ``(m, a_x, a_y)`` (and the phase shift, when asked) are refined on the 2D
   annulus by L-BFGS on the correlation, first to ``k_max`` and then to the resolution the fit
   reaches (see :func:`fit_resolution`).

All of this is a few passes over ~10⁵ spectrum blocks, batched in torch on CPU or CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoflow.ctf.spectrum import Spectrum
from cryoflow.optics import ctf_phase, ctf_phase_isotropic

SECTOR_DEG = 15.0
MAX_REFINE_POINTS = 40000  # spectrum blocks used by one refinement


@dataclass
class Optics:
    """Microscope constants: voltage kV, spherical aberration mm, amplitude contrast fraction."""

    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1


@dataclass
class CtfFit:
    """A fitted CTF, RELION conventions.

    ``defocus_u >= defocus_v`` in Å (positive underfocus), ``angle`` degrees in [0, 180) from
    the x axis to U, ``phase_shift`` degrees, ``score`` the 2D correlation (figure of merit),
    ``k_min``/``k_max`` the frequency range (Å⁻¹) of the final refinement.
    """

    defocus_u: float
    defocus_v: float
    angle: float
    phase_shift: float
    score: float
    k_min: float
    k_max: float
    n_points: int = 0

    @property
    def significance(self) -> float:
        """``score · sqrt(n_points)``: how many noise standard deviations the correlation stands above 0."""
        return self.score * math.sqrt(max(self.n_points, 1))

    @property
    def defocus(self) -> float:
        """Mean defocus (Å)."""
        return (self.defocus_u + self.defocus_v) / 2

    @property
    def astigmatism(self) -> float:
        """``defocus_u - defocus_v`` (Å), >= 0."""
        return self.defocus_u - self.defocus_v

    def chi(self, ky: torch.Tensor, kx: torch.Tensor, optics: Optics) -> torch.Tensor:
        """The CTF phase χ of this fit at frequencies ``(ky, kx)`` (Å⁻¹)."""
        return ctf_phase(
            ky,
            kx,
            self.defocus_u,
            self.defocus_v,
            self.angle,
            optics.voltage,
            optics.cs,
            optics.amplitude_contrast,
            self.phase_shift,
        )


def pearson(x: torch.Tensor, y: torch.Tensor, dim: int = -1, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted Pearson correlation along ``dim``."""
    if weight is None:
        weight = torch.ones_like(x)
    weight = weight / weight.sum(dim=dim, keepdim=True).clamp_min(1e-12)
    mx = (weight * x).sum(dim=dim, keepdim=True)
    my = (weight * y).sum(dim=dim, keepdim=True)
    dx, dy = x - mx, y - my
    cov = (weight * dx * dy).sum(dim=dim)
    return cov / torch.sqrt((weight * dx * dx).sum(dim=dim) * (weight * dy * dy).sum(dim=dim)).clamp_min(1e-20)


def _model(ky, kx, m, ax, ay, optics: Optics, phase_shift) -> torch.Tensor:
    """-cos 2χ for the astigmatism vector parametrisation (broadcasting)."""
    mag = torch.sqrt(ax * ax + ay * ay + 1e-12)
    angle = torch.rad2deg(torch.atan2(ay, ax) / 2)
    chi = ctf_phase(ky, kx, m + mag, m - mag, angle, optics.voltage, optics.cs, optics.amplitude_contrast, phase_shift)
    return -torch.cos(2 * chi)


def radial_profile(values: torch.Tensor, k: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (``(..., M)``) in bins of ``k`` (``(M,)``) given by ``edges``; NaN where empty."""
    index = torch.bucketize(k, edges) - 1
    valid = (index >= 0) & (index < edges.numel() - 1)
    n = edges.numel() - 1
    flat = values[..., valid]
    idx = index[valid]
    sums = torch.zeros(*values.shape[:-1], n, dtype=values.dtype, device=values.device).index_add_(-1, idx, flat)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=values.dtype)
    )
    return sums / counts.clamp_min(1) + torch.where(counts > 0, 0.0, float("nan"))


def _basis(k: torch.Tensor, k_lo: float, k_hi: float, n: int) -> torch.Tensor:
    """Legendre polynomials P_0..P_{n-1} of k mapped to [-1, 1] over [k_lo, k_hi] → ``(K, n)``."""
    x = (2 * (k - k_lo) / max(k_hi - k_lo, 1e-12) - 1).clamp(-1, 1)
    columns = [torch.ones_like(x), x]
    for degree in range(2, n):
        columns.append(((2 * degree - 1) * x * columns[-1] - (degree - 1) * columns[-2]) / degree)
    return torch.stack(columns[:n], dim=-1)


N_BACKGROUND = 7  # smooth background: Legendre degree 0-6 over the fitted range
N_ENVELOPE = 4  # smooth envelope of the rings: degree 0-3


def search_1d(
    profile: torch.Tensor,
    k: torch.Tensor,
    defoci: torch.Tensor,
    optics: Optics,
    phase_shift=0.0,
    return_background: bool = False,
):
    """Score isotropic defocus values against a rotationally averaged *amplitude* profile.

    For each defocus, ``profile(k) ≈ B(k) + E(k)·sin²χ(k)`` is solved by linear least squares,
    B and E smooth (Legendre polynomials over the range): fitting the background jointly
    with the rings keeps a smooth trend from passing for a ring pattern. The score is the
    fraction of the background-only residual explained by the rings (0-1); candidates
    whose envelope comes out negative (rings in anti-phase) score 0.

    ``profile`` ``(K,)`` (NaN bins ignored), ``k`` ``(K,)`` Å⁻¹, ``defoci`` ``(D,)`` Å → ``(D,)``
    scores; with ``return_background`` also the best candidate's B(k) ``(K,)``.
    """
    good = torch.isfinite(profile)
    p, kk = profile[good].double(), k[good].double()
    k_lo, k_hi = float(kk.min()), float(kk.max())
    bg = _basis(kk, k_lo, k_hi, N_BACKGROUND)
    env = _basis(kk, k_lo, k_hi, N_ENVELOPE)
    chi = ctf_phase_isotropic(kk, defoci[:, None], optics.voltage, optics.cs, optics.amplitude_contrast, phase_shift)
    rings = torch.sin(chi) ** 2  # (D, K)
    design = torch.cat([bg.expand(len(defoci), -1, -1), env[None] * rings[..., None]], dim=-1)  # (D, K, nb+ne)
    gram = design.transpose(1, 2) @ design
    gram = (
        gram
        + 1e-9 * torch.eye(gram.shape[-1], dtype=gram.dtype) * gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]
    )
    rhs = design.transpose(1, 2) @ p
    coef = torch.linalg.solve(gram, rhs)
    residual = ((design @ coef[..., None])[..., 0] - p) ** 2
    rss = residual.sum(-1)
    bg_coef = torch.linalg.solve(bg.T @ bg, bg.T @ p[:, None])  # normal equations: tiny and well conditioned
    rss0 = ((bg @ bg_coef)[:, 0] - p).pow(2).sum()
    envelope = (env[None] * 1.0) @ coef[:, N_BACKGROUND:, None]
    positive = envelope[..., 0].mean(-1) > 0
    score = torch.where(positive, 1 - rss / rss0.clamp_min(1e-30), torch.zeros_like(rss))
    if not return_background:
        return score
    best = int(score.argmax())
    background = torch.full_like(profile, float("nan"), dtype=torch.float64)
    background[good] = bg @ coef[best, :N_BACKGROUND]
    return score, background


def _peaks(score: torch.Tensor, n: int) -> list[int]:
    """Indices of the ``n`` highest local maxima of a 1D score."""
    s = score.clone()
    s[torch.isnan(s)] = -2
    is_peak = torch.ones_like(s, dtype=torch.bool)
    is_peak[1:] &= s[1:] >= s[:-1]
    is_peak[:-1] &= s[:-1] >= s[1:]
    idx = torch.nonzero(is_peak).flatten()
    order = torch.argsort(s[idx], descending=True)
    return [int(i) for i in idx[order][:n]]


class JointModel:
    """``amp ≈ B(k) + E(k)·sin²χ`` with B, E smooth in k (Legendre), solved by least squares.

    The bases and the background-only fit depend on the points only, so they are computed
    once; :meth:`residual` then costs one small Gram matrix per evaluation of χ.
    """

    def __init__(self, amp: torch.Tensor, kk: torch.Tensor, k_lo: float, k_hi: float):
        self.amp = amp
        self.bg = _basis(kk, k_lo, k_hi, N_BACKGROUND)
        self.env = _basis(kk, k_lo, k_hi, N_ENVELOPE)
        eye = torch.eye(N_BACKGROUND, dtype=amp.dtype, device=amp.device)
        coef0 = torch.linalg.solve(self.bg.T @ self.bg + 1e-9 * eye, self.bg.T @ amp)
        self.rss0 = ((self.bg @ coef0) - amp).pow(2).sum()

    def residual(self, chi: torch.Tensor):
        """``(rss, rss_background_only, B, E·sin²χ)`` for the CTF phase ``chi`` at the points."""
        rings = torch.sin(chi) ** 2
        design = torch.cat([self.bg, self.env * rings[:, None]], dim=1)
        gram = design.T @ design
        gram = gram + 1e-9 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        coef = torch.linalg.solve(gram, design.T @ self.amp)
        rss = ((design @ coef) - self.amp).pow(2).sum()
        return rss, self.rss0, self.bg @ coef[:N_BACKGROUND], (self.env @ coef[N_BACKGROUND:]) * rings


def _refine(
    amp,
    ky,
    kx,
    k_lo,
    k_hi,
    start,
    optics: Optics,
    fit_phase: bool,
    iterations: int = 40,
    fit_astigmatism: bool = True,
    defocus_range=(0.0, math.inf),
):
    """L-BFGS on (m, ax, ay[, phase]) (µm, µm, µm, 90°) minimising the joint-fit residual (variable projection).

    Returns the parameters (Å, Å, Å, degrees), the figure of merit (the correlation of the
    background-subtracted amplitude with sin²χ, as CTFFIND's) and the fraction of the
    background-only residual the rings explain (what candidates are ranked by). A defocus
    outside ``defocus_range`` (Å) scores -1.
    """
    if amp.numel() > MAX_REFINE_POINTS:  # an even subsample: as precise for a 4-parameter fit, much cheaper
        step = -(-amp.numel() // MAX_REFINE_POINTS)
        amp, ky, kx = amp[::step], ky[::step], kx[::step]
    m0, ax0, ay0, ps0 = start
    scale = 1e4  # Å per µm: keeps the parameters of order one
    params = torch.tensor([m0 / scale, ax0 / scale, ay0 / scale, ps0 / 90.0], dtype=torch.float64, device=amp.device)
    params.requires_grad_(True)
    astig = 1.0 if fit_astigmatism else 0.0
    mask = torch.tensor([1.0, astig, astig, 1.0 if fit_phase else 0.0], dtype=torch.float64, device=amp.device)
    base = params.detach().clone()
    opt = torch.optim.LBFGS(
        [params], lr=1, max_iter=iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12
    )
    a = amp.double()
    kyd, kxd = ky.double(), kx.double()
    joint = JointModel(a, torch.sqrt(kyd**2 + kxd**2), k_lo, k_hi)

    def chi_of(p):
        mag = torch.sqrt(p[1] ** 2 + p[2] ** 2 + 1e-12) * scale
        angle = torch.rad2deg(torch.atan2(p[2], p[1]) / 2)
        m = p[0] * scale
        return ctf_phase(
            kyd, kxd, m + mag, m - mag, angle, optics.voltage, optics.cs, optics.amplitude_contrast, p[3] * 90.0
        )

    def closure():
        opt.zero_grad()
        p = base + (params - base) * mask
        rss, rss0, _, _ = joint.residual(chi_of(p))
        loss = rss / rss0
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        p = (base + (params - base) * mask).cpu()
        chi = chi_of(p)
        rss, rss0, background, _ = joint.residual(chi)
        explained = float(1 - rss / rss0)
        score = float(pearson(a - background, torch.sin(chi) ** 2))
    out = (float(p[0]) * scale, float(p[1]) * scale, float(p[2]) * scale, float(p[3]) * 90.0)
    mag = math.hypot(out[1], out[2])
    if not (defocus_range[0] <= out[0] - mag and out[0] + mag <= defocus_range[1]) or not math.isfinite(score):
        score, explained = -1.0, -1.0
    return out, score, explained


def _to_fit(params, score, k_min, k_max, n_points: int = 0) -> CtfFit:
    m, ax, ay, ps = params
    mag = math.hypot(ax, ay)
    angle = math.degrees(math.atan2(ay, ax) / 2) % 180.0
    return CtfFit(
        defocus_u=m + mag,
        defocus_v=m - mag,
        angle=angle,
        phase_shift=ps % 360.0 if ps else 0.0,
        score=score,
        k_min=k_min,
        k_max=k_max,
        n_points=n_points,
    )


def fit_ctf(
    spectrum: Spectrum,
    optics: Optics,
    defocus_range: tuple[float, float] = (2000.0, 70000.0),
    k_range: tuple[float, float] | None = None,
    phase_shift: float | None = None,
    candidates: int = 3,
) -> tuple[CtfFit, torch.Tensor]:
    """Fit the CTF to a power spectrum; return the fit and the Thon-ring signal it used.

    ``defocus_range``: search range in Å; ``k_range``: frequencies (Å⁻¹) used by the search
    (default 1/30 Å to the smaller of 1/4.5 Å and 0.85 Nyquist); ``phase_shift``: ``None``
    for no phase plate; otherwise the phase shift (degrees) is searched in 10° steps and
    refined. The signal ``(T, T//2)``
    is the amplitude spectrum minus the background fitted jointly with the rings inside
    ``k_range`` and minus a box-smoothed background outside it.
    """
    k = spectrum.k
    nyquist = 0.5 / spectrum.pixel_size
    if k_range is None:
        k_range = (1 / 30.0, min(1 / 4.5, 0.85 * nyquist))
    k_min, k_max = k_range
    amplitude = torch.sqrt(spectrum.power)
    annulus = (k >= k_min) & (k <= k_max)
    ky, kx, amp = spectrum.ky[annulus], spectrum.kx[annulus], amplitude[annulus]
    kk = k[annulus]
    ps0 = float(phase_shift or 0.0)

    # 1. rotational average against isotropic models, background fitted jointly
    edges = torch.arange(k_min, k_max + spectrum.step, spectrum.step, device=k.device)
    centres = ((edges[:-1] + edges[1:]) / 2).double()
    profile = radial_profile(amp, kk, edges).double()
    n = int(math.log(defocus_range[1] / defocus_range[0]) / math.log(1.0025)) + 1
    defoci = torch.logspace(
        math.log10(defocus_range[0]), math.log10(defocus_range[1]), n, dtype=torch.float64, device=k.device
    )
    score = search_1d(profile, centres, defoci, optics, ps0)
    if phase_shift is not None:  # phase plate: the phase shift is searched too, in 10° steps (sin²χ repeats every 180°)
        for trial in range(10, 180, 10):
            trial_score = search_1d(profile, centres, defoci, optics, float(trial))
            if trial_score.max() > score.max():
                score, ps0 = trial_score, float(trial)
    peaks = _peaks(score, candidates)
    # candidates within reach of the best rotational-average score; usually only the best
    starts = [float(defoci[i]) for i in peaks if score[i] >= 0.5 * score[peaks[0]]]

    # 2. sector defoci → astigmatism by least squares; 3. refinement on the 2D annulus
    phi = torch.atan2(ky, kx)
    n_sectors = int(round(180 / SECTOR_DEG))
    sector = ((phi + math.pi / 2) / math.radians(SECTOR_DEG)).long().clamp(0, n_sectors - 1)
    centres_phi = -math.pi / 2 + (torch.arange(n_sectors, dtype=torch.float64) + 0.5) * math.radians(SECTOR_DEG)
    sector_profiles = [radial_profile(amp[sector == s], kk[sector == s], edges).double() for s in range(n_sectors)]
    best = None
    for m0 in starts:
        local = m0 * torch.logspace(math.log10(0.6), math.log10(1.4), 81, dtype=torch.float64, device=k.device)
        sector_defocus = []
        for prof in sector_profiles:
            sc = search_1d(prof, centres, local, optics, ps0)
            sector_defocus.append(float(local[int(torch.nan_to_num(sc, nan=-2).argmax())]))
        d = torch.tensor(sector_defocus, dtype=torch.float64)
        design = torch.stack(
            [torch.ones_like(centres_phi), torch.cos(2 * centres_phi), torch.sin(2 * centres_phi)], dim=1
        )
        coef = torch.linalg.solve(design.T @ design, design.T @ d[:, None]).flatten()
        start = (float(coef[0]), float(coef[1]), float(coef[2]), ps0)
        # a short refinement ranks the candidates; the best is refined fully
        params, sc, explained = _refine(
            amp, ky, kx, k_min, k_max, start, optics, phase_shift is not None, iterations=6, defocus_range=defocus_range
        )
        if best is None or explained > best[2]:
            best = (params, sc, explained)
    params, sc, _ = _refine(
        amp, ky, kx, k_min, k_max, best[0], optics, phase_shift is not None, defocus_range=defocus_range
    )
    fit = _to_fit(params, sc, k_min, k_max, int(annulus.sum()))
    # the background of the final fit, as a radial profile, for the ring signal
    m = fit.defocus
    _, background = search_1d(
        profile, centres, torch.tensor([m], dtype=torch.float64), optics, fit.phase_shift, return_background=True
    )
    return fit, ring_signal(spectrum, centres, background, k_max)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation (np.interp) in torch; NaNs in ``fp`` are skipped."""
    ok = torch.isfinite(fp)
    xp, fp = xp[ok], fp[ok]
    idx = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return fp[idx - 1] * (1 - w) + fp[idx] * w


def ring_signal(spectrum: Spectrum, centres: torch.Tensor, background: torch.Tensor, k_joint: float) -> torch.Tensor:
    """Amplitude minus background: the jointly fitted one up to ``k_joint``, a box-smoothed one beyond."""
    from cryoflow.ctf.spectrum import box_smooth

    amplitude = torch.sqrt(spectrum.power).double()
    k = spectrum.k.double()
    boxed = box_smooth(amplitude, max(5, amplitude.shape[-2] // 16))
    joint = _interp(k.flatten(), centres, background).reshape(k.shape)
    # blend over the last 10% of the joint range
    w = ((k - 0.9 * k_joint) / (0.1 * k_joint)).clamp(0, 1)
    return (amplitude - ((1 - w) * joint + w * boxed)).float()


def refine_ctf(
    spectrum: Spectrum,
    fit: CtfFit,
    optics: Optics,
    k_range: tuple[float, float],
    fit_phase: bool = False,
    fit_astigmatism: bool = True,
    iterations: int = 40,
) -> CtfFit:
    """Local refinement of ``fit`` over another frequency range (Å⁻¹); astigmatism can be held fixed."""
    k = spectrum.k
    annulus = (k >= k_range[0]) & (k <= k_range[1])
    amp = torch.sqrt(spectrum.power)[annulus]
    ky, kx = spectrum.ky[annulus], spectrum.kx[annulus]
    half = fit.astigmatism / 2
    a = math.radians(2 * fit.angle)
    start = (fit.defocus, half * math.cos(a), half * math.sin(a), fit.phase_shift)
    params, sc, _ = _refine(
        amp,
        ky,
        kx,
        k_range[0],
        k_range[1],
        start,
        optics,
        fit_phase,
        iterations=iterations,
        fit_astigmatism=fit_astigmatism,
    )
    return _to_fit(params, sc, *k_range, int(annulus.sum()))
