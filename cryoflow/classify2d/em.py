"""The E-step: posteriors over class, translation and in-plane rotation, as batched matrix multiplies.

Model: a particle's masked, CTF-multiplied image ``x̃`` is compared with every class ``k``
shifted by ``t`` (a small grid of translations) and rotated by ``α`` (``A`` angles)::

    log p(k, t, α | x) = Re⟨x̃, R_α S_t G_k⟩_ω - ½ Σ_j ω_j ctf²(j) P_kt(j) + log π_k + log p(t) + const

with ``ω_j = n_j / σ²_j`` (per-ring noise), ``P_kt(j)`` the ring power of the shifted
reference and ``ctf²(j)`` the particle's ring-averaged CTF² (astigmatism is exact in the
cross term, averaged over the ring in the norm term). In the basis (see
:mod:`~cryoflow.classify2d.basis`) the cross term over all ``α`` is
``Σ_m λ_m Re(h_m e^{imα})`` with ``h_m = Σ_j ω_j c_jm g*_jm``: one batched matmul over ``m``
(``(M+1, b, 2J) @ (M+1, 2J, 2KT)``), then one matmul with a cos/sin table for all angles.
The M-step sums ``Σ_α p(α) e^{imα}`` (a matmul with the transposed table) times the
particle coefficients (a batched matmul over ``m``), per half-set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoflow.classify2d.basis import PolarBasis, Stage, rotation_tables, to_padded


def translation_grid(radius: float, device=None) -> torch.Tensor:
    """Integer shifts ``(dy, dx)`` within ``radius`` pixels (a disk, 1-pixel steps): ``(T, 2)``, (0, 0) first."""
    r = int(math.floor(radius))
    pts = [(0.0, 0.0)] + [
        (float(dy), float(dx))
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if (dy or dx) and dy * dy + dx * dx <= radius * radius + 1e-6
    ]
    return torch.tensor(pts, device=device)


def shift_images(images: torch.Tensor, shifts: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Fourier-shift ``(K, B, B)`` images by each of ``shifts`` ``(T, 2)`` (dy, dx) pixels: ``(K, T, B, B)``.

    ``sign=+1`` moves the content by ``+t``; ``-1`` moves it back.
    """
    box = images.shape[-1]
    ky = torch.fft.fftfreq(box, device=images.device)[:, None]
    kx = torch.fft.rfftfreq(box, device=images.device)[None, :]
    phase = -2 * math.pi * sign * (ky * shifts[:, 0, None, None] + kx * shifts[:, 1, None, None])  # (T, B, B/2+1)
    spec = torch.fft.rfft2(images)[:, None] * torch.polar(torch.ones_like(phase), phase)[None]
    return torch.fft.irfft2(spec, s=(box, box))


@dataclass
class References:
    """Everything the E-step needs about the current classes at one resolution stage.

    ``coeffs`` ``(KT, 2C)`` masked coefficients of shifted references (unweighted);
    ``by_class`` ``(K, M+1, 2(J+1), 2T)`` per class the matrix ``[[p, -q], [q, p]]`` of
    ``ω``-weighted coefficients (rows: Re and Im of a particle's coefficient over j;
    columns: the T translations' Re and Im parts); ``coarse`` ``(m_c+1, 2(J+1), 2 K T_c)``
    its orders ``m <= m_c`` at the ``T_c`` translations of ``coarse_shifts`` for all
    classes (columns: Re parts of every (class, translation), then Im parts), what the
    coarse class search multiplies by; ``power`` ``(KT, J+1)`` ``ω``-weighted ring powers
    ``ω_j P_kt(j)``; ``log_prior`` ``(KT,)``; ``score`` / ``back`` rotation tables; ``K``,
    ``T``, ``A``.
    """

    coeffs: torch.Tensor
    by_class: torch.Tensor
    coarse: torch.Tensor
    coarse_shifts: torch.Tensor
    power: torch.Tensor
    log_prior: torch.Tensor
    score: torch.Tensor
    back: torch.Tensor
    K: int
    T: int
    A: int


def ring_power(coeffs: torch.Tensor, stage: Stage, n_rings: int) -> torch.Tensor:
    """``Σ_m λ_m |c_jm|²`` per ring: ``(n, 2C)`` -> ``(n, n_rings)`` (rings beyond J zero)."""
    C = stage.C
    lam = torch.where(stage.order == 0, 1.0, 2.0).to(coeffs.device)
    p = (coeffs[:, :C] ** 2 + coeffs[:, C:] ** 2) * lam
    out = coeffs.new_zeros(coeffs.shape[0], n_rings)
    out.index_add_(1, stage.ring.to(coeffs.device), p)
    return out


def build_references(
    images: torch.Tensor,
    shifts: torch.Tensor,
    basis: PolarBasis,
    stage: Stage,
    sigma2: torch.Tensor,
    log_pi: torch.Tensor,
    shift_sigma: float,
    n_angles: int,
    coarse_m: int = 16,
) -> References:
    """References for the E-step from class images ``(K, B, B)`` (real space, centred).

    ``sigma2`` ``(R,)`` noise power per ring (per full-plane frequency); ``log_pi`` ``(K,)``;
    ``shift_sigma`` pixels (Gaussian prior on translations); ``n_angles`` rotations;
    ``coarse_m`` the highest order of the coarse class search (:func:`_coarse_classes`).
    The matrices are written in place, once each: at Nyquist with K = 50 and 37
    translations ``by_class`` alone is ~100 MB.
    """
    K, T, J = images.shape[0], shifts.shape[0], stage.J
    M1, J1 = stage.M + 1, J + 1
    shifted = shift_images(images, shifts).reshape(K * T, basis.box, basis.box)
    coeffs = basis.pixels_of(shifted) @ stage.analysis  # (KT, 2C)
    del shifted
    omega = basis.ring_counts[:J1] / sigma2[:J1]  # (J+1,)
    padded = to_padded(coeffs, stage).view(M1, K, T, 2, J1)  # [Re c | Im c] over j
    p = (padded[..., 0, :] * omega).permute(1, 0, 3, 2)  # (K, M+1, J+1, T)
    q = (padded[..., 1, :] * omega).permute(1, 0, 3, 2)
    del padded
    # rows [Re c (J+1) | Im c (J+1)] of a particle, columns [Re part (T) | Im part (T)]
    by_class = coeffs.new_empty(K, M1, 2, J1, 2, T)
    by_class[:, :, 0, :, 0] = p
    by_class[:, :, 0, :, 1] = -q
    by_class[:, :, 1, :, 0] = q
    by_class[:, :, 1, :, 1] = p
    del p, q
    power = ring_power(coeffs, stage, J1) * omega  # (KT, J+1)
    log_pt = -(shifts**2).sum(1) / (2 * shift_sigma**2)
    log_pt = log_pt - torch.logsumexp(log_pt, 0)
    log_prior = (log_pi[:, None] + log_pt[None, :]).reshape(K * T)
    score, back = rotation_tables(stage.M, n_angles, images.device)
    even = ((shifts.round().long() % 2) == 0).all(1)
    sub = torch.nonzero(even).squeeze(1) if T > 9 else torch.arange(T, device=shifts.device)
    mc1 = min(coarse_m, stage.M) + 1
    coarse = by_class.view(K, M1, 2 * J1, 2, T)[:, :mc1, :, :, sub].permute(1, 2, 3, 0, 4)
    coarse = coarse.reshape(mc1, 2 * J1, 2 * K * sub.numel())
    by_class = by_class.view(K, M1, 2 * J1, 2 * T)
    return References(coeffs, by_class, coarse, sub, power, log_prior, score, back, K, T, n_angles)


@dataclass
class Accumulator:
    """Sums over particles for the M-step and the noise model, per half-set ``h``.

    ``num`` ``(2, M+1, KT, 2(J+1))`` back-rotated CTF-weighted coefficients;
    ``ctf2`` ``(2, KT, J+1)`` ``Σ p ctf²``; ``power`` ``(R,)`` ring power of masked particles;
    ``weight`` ``(K,)`` ``Σ p_k``; ``n`` particles; ``loglik`` sum of log-likelihoods.
    """

    num: torch.Tensor
    ctf2: torch.Tensor
    power: torch.Tensor
    weight: torch.Tensor
    n: int = 0
    loglik: float = 0.0

    @classmethod
    def empty(cls, refs: References, stage: Stage, n_rings: int, device) -> Accumulator:
        KT, J1, M1 = refs.K * refs.T, stage.J + 1, stage.M + 1
        return cls(
            torch.zeros(2, M1, KT, 2 * J1, device=device),
            torch.zeros(2, KT, J1, device=device),
            torch.zeros(n_rings, device=device),
            torch.zeros(refs.K, device=device),
        )


@dataclass
class Assignment:
    """Per-particle results of one E-step batch (``(n,)`` each).

    ``klass`` (0-based), ``shift`` index, ``angle`` (radians, refined between grid points),
    ``shift_mean`` ``(n, 2)`` posterior mean translation (dy, dx) px within the best class,
    ``p_max`` (largest posterior over the grid), ``loglik``, ``angle_sd`` (radians) and
    ``shift_sd`` (px): posterior spreads within the best class.
    """

    klass: torch.Tensor
    shift: torch.Tensor
    angle: torch.Tensor
    shift_mean: torch.Tensor
    p_max: torch.Tensor
    loglik: torch.Tensor
    angle_sd: torch.Tensor
    shift_sd: torch.Tensor


def _coarse_classes(
    padded: torch.Tensor, refs: References, offset: torch.Tensor, keep: int, coarse_m: int
) -> torch.Tensor:
    """The ``keep`` most likely classes per particle from a coarse search: ``(b, keep)``.

    Uses only the angular orders ``m <= coarse_m`` (the score blurred over ~360/(2 coarse_m)
    degrees, sampled at ``2 (coarse_m + 1)`` angles) and ranks classes by the log-sum over
    translations of the best coarse angle: RELION's adaptive oversampling idea, as two
    small matmuls. ``padded`` ``(M+1, b, 2(J+1))``; ``offset`` ``(b, KT)`` prior minus norm.
    Particles go through in pieces of ``piece``: the scores of a piece take ``piece · 2K·T_c ·
    2(m_c+1)`` floats (three copies of ~60 MB for 1,024 particles at K = 50).
    """
    b, K, T = padded.shape[1], refs.K, refs.T
    mc = min(coarse_m, padded.shape[0] - 1, refs.coarse.shape[0] - 1)
    sub = refs.coarse_shifts  # translations on a 2-pixel lattice (all of a small grid)
    Tc = sub.numel()
    cols = (torch.arange(K, device=padded.device)[:, None] * T + sub[None, :]).reshape(-1)  # (K·Tc,)
    table, _ = rotation_tables(mc, max(8, 2 * (mc + 1)), padded.device)
    piece = max(16, int(2**23 // (2 * K * Tc * (mc + 1))))  # ~32 MB of scores at a time
    out = []
    for s0 in range(0, b, piece):
        n = min(piece, b - s0)
        h = torch.bmm(padded[: mc + 1, s0 : s0 + n], refs.coarse[: mc + 1])  # (mc+1, n, 2K·Tc)
        h = h.view(mc + 1, n, 2, K * Tc).permute(1, 3, 2, 0).reshape(n, K * Tc, 2 * (mc + 1))
        best = (h @ table).amax(2) + offset[s0 : s0 + n, cols]  # (n, K·Tc)
        out.append(torch.logsumexp(best.view(n, K, Tc), 2).topk(keep, dim=1).indices)
    return torch.cat(out)


def expectation(
    coeffs: torch.Tensor,
    ctf2: torch.Tensor,
    power: torch.Tensor,
    half: torch.Tensor,
    refs: References,
    stage: Stage,
    shifts: torch.Tensor,
    sigma2: torch.Tensor,
    acc: Accumulator | None,
    forced: torch.Tensor | None = None,
    keep: int = 4,
    coarse_m: int = 16,
) -> Assignment:
    """E-step for one batch, adding its M-step sums to ``acc`` (if given).

    ``coeffs`` ``(b, 2C)``, ``ctf2`` / ``power`` ``(b, R)``, ``half`` ``(b,)`` 0/1.
    A coarse search (:func:`_coarse_classes`) keeps the ``keep`` most likely classes per
    particle; for those, every translation of the grid and every angle is scored at full
    resolution (a batched matmul per class); the posterior of the other classes is taken
    as zero. ``forced`` ``(b, 2)`` long (class, angle index) replaces the posterior by a
    one-hot at translation 0 (used for the random start).
    """
    b, K, T, A = coeffs.shape[0], refs.K, refs.T, refs.A
    M1, J1 = stage.M + 1, stage.J + 1
    piece = 256  # particles per matmul of one class: bounds the per-class temporaries
    dev = coeffs.device
    rows = torch.arange(b, device=dev)
    # halves contiguous: particles of half 0 first (the M-step sums are per half)
    order = torch.argsort(half, stable=True)
    coeffs, ctf2, power, half = coeffs[order], ctf2[order], power[order], half[order]
    padded = to_padded(coeffs, stage)  # (M+1, b, 2(J+1))
    rows_first = padded.transpose(0, 1).contiguous()  # (b, M+1, 2(J+1)): fast gathers of particles
    offset = refs.log_prior[None, :] - 0.5 * ctf2[:, :J1] @ refs.power.T  # (b, KT)
    if forced is not None:
        forced = forced[order]
        cand = forced[:, :1]
        L = 1
        post = torch.zeros(b, 1, T, A, device=dev)
        post[rows, 0, 0, forced[:, 1]] = 1.0
        best = post.view(b, -1).argmax(1)
        slot_best, t_best, a = best // (T * A), (best // A) % T, best % A
        delta = torch.zeros(b, device=dev)
        p_max = torch.ones(b, device=dev)
        loglik = torch.zeros(b, device=dev)
    else:
        L = min(keep, K)
        cand = _coarse_classes(padded, refs, offset, L, coarse_m) if K > L else torch.arange(K, device=dev).expand(b, K)
        del padded
        post = torch.full((b, L, T, A), -torch.inf, device=dev)  # the log posterior first, in place below
        for k in torch.unique(cand).tolist():
            who_k, slot_k = torch.nonzero(cand == k, as_tuple=True)
            for p0 in range(0, who_k.numel(), piece):  # pieces: a class may be a candidate of every particle
                who, slot = who_k[p0 : p0 + piece], slot_k[p0 : p0 + piece]
                h = torch.bmm(rows_first[who].transpose(0, 1), refs.by_class[k])  # (M+1, n, 2T)
                h = h.view(M1, -1, 2, T).permute(1, 3, 2, 0).reshape(-1, T, 2 * M1)
                post[who, slot] = h @ refs.score + offset[who, k * T : (k + 1) * T, None]
        mx, best = post.view(b, -1).max(1)
        slot_best, t_best, a = best // (T * A), (best // A) % T, best % A
        # refine the angle by a parabola through the log posterior at a-1, a, a+1
        l0 = post[rows, slot_best, t_best, a]
        lm = post[rows, slot_best, t_best, (a - 1) % A]
        lp = post[rows, slot_best, t_best, (a + 1) % A]
        denom = lm - 2 * l0 + lp
        delta = torch.where(denom < -1e-6, 0.5 * (lm - lp) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
        post.sub_(mx[:, None, None, None]).exp_()
        total = post.view(b, -1).sum(1)
        post /= total[:, None, None, None]
        p_max = 1.0 / total
        quad = 0.5 * (power[:, :J1] / sigma2[:J1]).sum(1)
        loglik = mx + torch.log(total) - quad - math.log(A)
    klass = cand.gather(1, slot_best[:, None]).squeeze(1)
    step = 2 * math.pi / A
    angle = (a.float() + delta) * step
    # spreads within the best class
    in_class = post[rows, slot_best]  # (b, T, A)
    mass = in_class.sum((1, 2)).clamp_min(1e-30)
    p_t = in_class.sum(2) / mass[:, None]  # (b, T)
    shift_mean = p_t @ shifts  # (b, 2)
    shift_sd = torch.sqrt(((shifts[None] - shift_mean[:, None]) ** 2).sum(2).mul(p_t).sum(1).clamp_min(0))
    p_a = in_class.sum(1) / mass[:, None]  # (b, A)
    alphas = torch.arange(A, device=dev).float() * step
    resultant = torch.sqrt((p_a @ torch.cos(alphas)) ** 2 + (p_a @ torch.sin(alphas)) ** 2).clamp(1e-12, 1.0)
    angle_sd = torch.sqrt(-2 * torch.log(resultant))
    if acc is not None:
        p_slot = post.sum(3)  # (b, L, T)
        for k in torch.unique(cand).tolist():
            who_k, slot_k = torch.nonzero(cand == k, as_tuple=True)  # who sorted: half 0 first
            n0 = int((half[who_k] == 0).sum())
            cols = slice(k * T, (k + 1) * T)
            for h_, (lo, hi) in enumerate(((0, n0), (n0, who_k.numel()))):
                for p0 in range(lo, hi, piece):
                    who, slot = who_k[p0 : min(hi, p0 + piece)], slot_k[p0 : min(hi, p0 + piece)]
                    n = who.numel()
                    pk = post[who, slot]  # (n, T, A)
                    z = (pk.reshape(n * T, A) @ refs.back).view(n, T, 2, M1)
                    # Σ_i z_i0 [Re, Im]_i + z_i1 [-Im, Re]_i: one matmul with the particles' rows, then
                    # the second part's halves swapped (no copy of the particles in the rotated form)
                    zh = z.permute(3, 2, 1, 0).reshape(M1, 2 * T, n)
                    r = torch.bmm(zh, rows_first[who].transpose(0, 1)).view(M1, 2, T, 2 * J1)
                    acc.num[h_][:, cols] += r[:, 0] + torch.cat([-r[:, 1, :, J1:], r[:, 1, :, :J1]], dim=2)
                    acc.ctf2[h_][cols] += p_slot[who, slot].T @ ctf2[who, :J1]
                    acc.weight[k] += pk.sum()
        acc.power += power.sum(0)
        acc.n += b
        acc.loglik += float(loglik.sum())
    inverse = torch.argsort(order)
    return Assignment(
        klass=klass[inverse],
        shift=t_best[inverse],
        angle=angle[inverse],
        shift_mean=shift_mean[inverse],
        p_max=p_max[inverse],
        loglik=loglik[inverse],
        angle_sd=angle_sd[inverse],
        shift_sd=shift_sd[inverse],
    )
