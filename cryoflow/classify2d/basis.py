"""The steerable basis: angular Fourier coefficients of an image's 2D DFT on polar rings.

For an image ``f`` (``(B, B)``, centre at pixel ``B//2``) the coefficient of ring ``j``
(radius ``r_j = j / B`` cycles/pixel) and angular order ``m >= 0`` is::

    c[j, m] = 1/Θ Σ_l F(r_j, θ_l) e^{-i m θ_l},    F(k) = 1/B Σ_x f(x) e^{-2πi k·(x - centre)}

(``F`` is the orthonormal DFT evaluated exactly at the polar points, so no
interpolation error; equivalently a Fourier-Bessel expansion, ``c ∝ J_m(2π r ρ)``
weights). Three properties make everything a matrix multiply:

- **Rotation is a phase**: rotating ``f`` by ``α`` (counter-clockwise in (x = column,
  y = row)) multiplies ``c[j, m]`` by ``e^{-i m α}``.
- **Inner products are sums**: ``Σ_k F(k) G*(k) ≈ Σ_j n_j Σ_{m=-M}^{M} c_m g_m*``
  ``= Σ_j n_j (c_0 g_0* + 2 Re Σ_{m>0} c_m g_m*)`` with ``n_j`` the number of Cartesian
  frequencies in ring ``j`` (``c_{-m} = (-1)^m conj(c_m)`` for real images).
- **Truncation is resolution**: ring ``j`` needs orders up to ``M_j ≈ 2π r_j ρ`` for an
  image supported within radius ``ρ`` pixels; a resolution limit keeps rings
  ``j <= J``, a prefix of the compact coefficient order (sorted by ring, then order).

Only pixels within the mask's outer radius enter; the analysis matrix for particles
carries the soft mask. :meth:`PolarBasis.stage` gives the matrices of one resolution
limit: analysis ``(P, 2C)`` (real and imaginary parts), the least-squares synthesis
``(2C, P)``, and the scatter index into the padded ``(M+1, J+1)`` layout used by the
batched correlations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def ring_index(box: int, device=None) -> torch.Tensor:
    """Ring of each rfft2 frequency, ``round(|k| B)``: ``(B, B//2 + 1)`` long (``> B//2`` beyond Nyquist)."""
    ky = torch.fft.fftfreq(box, device=device) * box
    kx = torch.fft.rfftfreq(box, device=device) * box
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()


def rfft_multiplicity(box: int, device=None) -> torch.Tensor:
    """How many full-plane frequencies each rfft2 sample stands for (1 or 2): ``(B, B//2 + 1)``."""
    w = torch.full((box, box // 2 + 1), 2.0, device=device)
    w[:, 0] = 1.0
    if box % 2 == 0:
        w[:, -1] = 1.0
    return w


def ring_binning(box: int, n_rings: int, device=None) -> torch.Tensor:
    """``(B·(B//2+1), n_rings)`` matrix summing an rfft2 power map into full-plane ring sums."""
    rings = ring_index(box, device).flatten()
    mult = rfft_multiplicity(box, device).flatten()
    keep = rings < n_rings
    out = torch.zeros(rings.numel(), n_rings, device=device)
    out[torch.nonzero(keep).squeeze(1), rings[keep]] = mult[keep]
    return out


def soft_mask(box: int, radius: float, width: float, device=None) -> torch.Tensor:
    """Circular mask ``(B, B)``: 1 within ``radius`` px of the centre, raised cosine to 0 over ``width`` px."""
    c = box // 2
    y = torch.arange(box, device=device, dtype=torch.float32) - c
    r = torch.sqrt(y[:, None] ** 2 + y[None, :] ** 2)
    t = ((r - radius) / max(width, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


@dataclass
class Stage:
    """Matrices for one resolution limit (rings ``0..J``).

    ``analysis`` ``(P, 2C)``: masked pixels -> [Re c, Im c]; ``analysis_plain`` the same
    without the soft mask; ``synthesis`` ``(2C, P)``: coefficients -> pixels (weighted
    least squares); ``pad_index`` ``(C,)``: position ``m·(J+1) + j`` of each coefficient in
    the padded ``(M+1, J+1)`` grid; ``ring`` / ``order`` ``(C,)``; ``M``, ``J``.
    """

    J: int
    M: int
    C: int
    analysis: torch.Tensor
    synthesis: torch.Tensor
    pad_index: torch.Tensor
    ring: torch.Tensor
    order: torch.Tensor


class PolarBasis:
    """Polar-Fourier (Fourier-Bessel) coefficients of ``(B, B)`` images within a circle.

    Parameters
    ----------
    box: image size B, pixels.
    mask_radius: radius (pixels) where the soft mask starts falling; ``width``: its fall-off, pixels.
        Pixels within ``mask_radius + width`` (at most ``B/2 - 1``) enter the basis.
    device: where the matrices live.
    """

    def __init__(self, box: int, mask_radius: float, width: float = 3.0, device="cpu"):
        self.box = int(box)
        self.device = torch.device(device)
        outer = min(mask_radius + width, box / 2 - 1)
        self.outer = float(outer)
        mask = soft_mask(box, mask_radius, outer - mask_radius, self.device)
        c = box // 2
        yy, xx = torch.meshgrid(
            torch.arange(box, dtype=torch.float64) - c, torch.arange(box, dtype=torch.float64) - c, indexing="ij"
        )
        inside = (yy**2 + xx**2).sqrt() <= outer
        self.pixels = torch.nonzero(inside.flatten()).squeeze(1).to(self.device)  # (P,)
        self.mask_pixels = mask.flatten()[self.pixels]  # (P,)
        self.mask = mask
        self.n_rings = box // 2 + 1  # j = 0 .. B//2
        j = torch.arange(self.n_rings)
        self.m_max = torch.where(j == 0, 0, torch.ceil(2 * math.pi * j / box * outer).long() + 2)
        counts = torch.zeros(self.n_rings)
        rings = ring_index(box).flatten()
        mult = rfft_multiplicity(box).flatten()
        counts.index_add_(0, rings[rings < self.n_rings], mult[rings < self.n_rings])
        self.ring_counts = counts.to(self.device)  # n_j, full-plane frequencies per ring
        ring_of, order_of = [], []
        for jj in range(self.n_rings):
            for m in range(int(self.m_max[jj]) + 1):
                ring_of.append(jj)
                order_of.append(m)
        self.ring = torch.tensor(ring_of, device=self.device)
        self.order = torch.tensor(order_of, device=self.device)
        self.prefix = [int((self.ring <= jj).sum()) for jj in range(self.n_rings)]  # C for J = jj
        self._a_re, self._a_im = self._analysis_matrix(xx.flatten()[inside.flatten()], yy.flatten()[inside.flatten()])
        self._stages: dict[int, Stage] = {}  # the most recently used stages (see stage())

    def _analysis_matrix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact DFT at polar points, angular FFT: ``(C, P)`` real and imaginary parts (float32)."""
        mmax = int(self.m_max.max())
        theta_n = 1 << math.ceil(math.log2(2 * mmax + 32))
        theta = torch.arange(theta_n, dtype=torch.float64) * (2 * math.pi / theta_n)
        # projection of every pixel on every direction, cycles (float64 for the phase, then float32)
        proj = (torch.cos(theta)[:, None] * x[None, :] + torch.sin(theta)[:, None] * y[None, :]) / self.box
        rows_re, rows_im = [], []
        for jj in range(self.n_rings):
            arg = (-2 * math.pi * jj) * proj  # (Θ, P)
            e = torch.complex(torch.cos(arg).float(), torch.sin(arg).float()) / self.box
            coef = torch.fft.fft(e, dim=0)[: int(self.m_max[jj]) + 1] / theta_n  # (m, P)
            rows_re.append(coef.real)
            rows_im.append(coef.imag)
        return torch.cat(rows_re).to(self.device), torch.cat(rows_im).to(self.device)

    def weights(self, J: int) -> torch.Tensor:
        """Quadrature weight of each coefficient up to ring J, ``n_j · (1 if m == 0 else 2)``: ``(C,)``."""
        C = self.prefix[J]
        lam = torch.where(self.order[:C] == 0, 1.0, 2.0)
        return self.ring_counts[self.ring[:C]] * lam

    def _full_synthesis(self) -> torch.Tensor:
        """Weighted least-squares synthesis of the full basis, ``(2C_full, P)`` (computed once).

        Solves ``min_x Σ w |A x - c|² + λ |x|²`` (``w`` the quadrature weights, ``λ`` 0.1% of
        the mean diagonal). A lower resolution limit uses its rows with the higher rings
        zero: the same solution for a coefficient set that is zero beyond ring J.
        """
        if getattr(self, "_synthesis", None) is None:
            a = torch.cat([self._a_re, self._a_im])  # (2C, P)
            w = self.weights(self.n_rings - 1).repeat(2)
            aw = a.T * w  # (P, 2C)
            normal = aw @ a  # (P, P)
            normal.diagonal().add_(1e-3 * float(normal.diagonal().mean()))
            chol = torch.linalg.cholesky(normal)
            self._synthesis = torch.cholesky_solve(aw, chol).T.contiguous()  # (2C, P)
        return self._synthesis

    #: stages kept in the cache. Each holds a pixels -> coefficients and a coefficients ->
    #: pixels matrix, ~80 MB at Nyquist for box 64; a run moves through ~15 resolution limits,
    #: and keeping them all made the memory of a run grow with how far its resolution got.
    STAGES_KEPT = 2

    def stage(self, J: int) -> Stage:
        """Matrices for rings ``0..J`` (the last :attr:`STAGES_KEPT` used are cached)."""
        J = int(min(max(J, 1), self.n_rings - 1))
        if J in self._stages:
            self._stages[J] = self._stages.pop(J)  # most recently used last
            return self._stages[J]
        while len(self._stages) >= self.STAGES_KEPT:
            del self._stages[next(iter(self._stages))]
        C, C_full = self.prefix[J], self.prefix[-1]
        a = torch.cat([self._a_re[:C], self._a_im[:C]])  # (2C, P)
        full = self._full_synthesis()
        synthesis = torch.cat([full[:C], full[C_full : C_full + C]])
        M = int(self.m_max[J])
        stage = Stage(
            J=J,
            M=M,
            C=C,
            analysis=(a * self.mask_pixels[None, :]).T.contiguous(),
            synthesis=synthesis.contiguous(),
            pad_index=(self.order[:C] * (J + 1) + self.ring[:C]).contiguous(),
            ring=self.ring[:C],
            order=self.order[:C],
        )
        self._stages[J] = stage
        return stage

    def pixels_of(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, B, B)`` -> ``(n, P)`` the pixels within the basis circle."""
        return images.reshape(images.shape[0], -1)[:, self.pixels]

    def image_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(n, P)`` -> ``(n, B, B)`` (zero outside the circle)."""
        out = torch.zeros(pixels.shape[0], self.box * self.box, device=pixels.device, dtype=pixels.dtype)
        out[:, self.pixels] = pixels
        return out.reshape(-1, self.box, self.box)


def to_padded(coeffs: torch.Tensor, stage: Stage) -> torch.Tensor:
    """Compact ``(n, 2C)`` [Re, Im] -> padded ``(M+1, n, 2(J+1))`` with [Re over j, Im over j] per order m."""
    n = coeffs.shape[0]
    J1, M1 = stage.J + 1, stage.M + 1
    out = coeffs.new_zeros(n, 2, M1 * J1)
    out[:, 0, stage.pad_index] = coeffs[:, : stage.C]
    out[:, 1, stage.pad_index] = coeffs[:, stage.C :]
    return out.view(n, 2, M1, J1).permute(2, 0, 1, 3).reshape(M1, n, 2 * J1)


def from_padded(padded: torch.Tensor, stage: Stage) -> torch.Tensor:
    """Padded ``(M+1, n, 2(J+1))`` -> compact ``(n, 2C)`` (inverse of :func:`to_padded`)."""
    M1, n, _ = padded.shape
    J1 = stage.J + 1
    flat = padded.view(M1, n, 2, J1).permute(1, 2, 0, 3).reshape(n, 2, M1 * J1)
    return torch.cat([flat[:, 0, stage.pad_index], flat[:, 1, stage.pad_index]], dim=1)


def rotation_tables(M: int, n_angles: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase tables for ``n_angles`` rotations ``α_a = 2π a / n_angles``.

    Returns ``score`` ``(2(M+1), A)``: rows ``λ_m cos mα`` then ``-λ_m sin mα`` (λ_0 = 1, else 2),
    so ``[Re h, Im h] @ score = Σ_m λ_m Re(h_m e^{imα})``; and ``back`` ``(A, 2(M+1))``:
    columns ``cos mα`` then ``sin mα``, so ``p @ back = [Re, Im] Σ_α p(α) e^{imα}``.
    """
    alpha = torch.arange(n_angles, dtype=torch.float64, device=device) * (2 * math.pi / n_angles)
    m = torch.arange(M + 1, dtype=torch.float64, device=device)
    lam = torch.where(m == 0, 1.0, 2.0)
    arg = m[:, None] * alpha[None, :]
    score = torch.cat([lam[:, None] * torch.cos(arg), -lam[:, None] * torch.sin(arg)]).to(torch.float32)
    back = torch.cat([torch.cos(arg), torch.sin(arg)]).T.to(torch.float32).contiguous()
    return score.contiguous(), back
