"""Electron scattering factors and the rasterization of atoms into a Coulomb potential.

Physics
-------
The elastic electron scattering factor of a neutral atom is the 5-Gaussian fit of
Peng, Ren, Dudarev & Whelan (1996), Acta Cryst. A52, 257-276 (table for 0 <= s <= 2 Å⁻¹)::

    f(s) = sum_i a_i exp(-b_i s²)        f in Å, s = sin(θ)/λ = q/2 in Å⁻¹, b_i in Å²

The Coulomb potential of the isolated atom is its Fourier transform times
h²/(2π m0 e) = 47.878 V·Å² (the independent-atom model)::

    V(r) = 47.878 · sum_i a_i (4π/b_i)^{3/2} exp(-4π² r² / b_i)          volts

A B-factor (Debye-Waller, Å²) multiplies f by exp(-B s²), i.e. replaces b_i by b_i + B.
Each term is a normalised 3D Gaussian of variance σ² = b/(8π²) per axis carrying the
integrated potential 47.878·a_i V·Å³, so an atom integrates to 47.878·f(0) V·Å³
(carbon: 120 V·Å³).

Rasterization puts the *voxel average* of that potential in each voxel (exact integral
of each Gaussian over the voxel, separable into erf differences along x, y and z), so
the sum of a volume times the voxel volume is the integrated potential whatever the
pixel size, and a projection summed over z times the pixel size is the line integral
in V·Å averaged over each pixel.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

#: h² / (2π m0 e) in V·Å²: converts a scattering factor (Å) integral into potential.
POTENTIAL_PER_SCATTERING = 47.878

#: Peng et al. (1996) elastic 5-Gaussian parameters: element -> (a_1..a_5 in Å, b_1..b_5 in Å²).
PENG_1996: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "F": ((0.1083, 0.3175, 0.6487, 0.5846, 0.1421), (0.2057, 1.3439, 4.2788, 11.3932, 28.7881)),
    "Na": ((0.2142, 0.6853, 0.7692, 1.6589, 1.4482), (0.3334, 2.3446, 10.0830, 48.3037, 138.2700)),
    "Mg": ((0.2314, 0.6866, 0.9677, 2.1882, 1.1339), (0.3278, 2.2720, 10.9241, 39.2898, 101.9748)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "Cl": ((0.2443, 0.5397, 1.3919, 2.0197, 0.6621), (0.2468, 1.5242, 6.1537, 16.6687, 42.3086)),
    "K": ((0.4115, 1.4031, 2.2784, 2.6742, 2.2162), (0.3703, 3.3874, 13.1029, 68.9592, 194.4329)),
    "Ca": ((0.4054, 1.3880, 2.1602, 3.7532, 2.2063), (0.3499, 3.0991, 11.9608, 53.9353, 142.3892)),
    "Mn": ((0.3796, 1.2094, 1.7815, 2.5420, 1.5937), (0.2699, 2.0455, 7.4726, 31.0604, 91.5622)),
    "Fe": ((0.3946, 1.2725, 1.7031, 2.3140, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    "Co": ((0.4118, 1.3161, 1.6493, 2.1930, 1.2830), (0.2742, 2.0372, 7.7205, 29.9680, 84.9383)),
    "Ni": ((0.3860, 1.1765, 1.5451, 2.0730, 1.3814), (0.2478, 1.7660, 6.3107, 25.2204, 74.3146)),
    "Cu": ((0.4314, 1.3208, 1.5236, 1.4671, 0.8562), (0.2694, 1.9223, 7.3474, 28.9892, 90.6246)),
    "Zn": ((0.4288, 1.2646, 1.4472, 1.8294, 1.0934), (0.2593, 1.7998, 6.7500, 25.5860, 73.5284)),
    "Mo": ((0.6773, 1.4798, 3.1788, 3.0824, 1.8384), (0.2920, 2.0606, 8.1129, 30.5336, 100.0658)),
    "Cd": ((0.6364, 1.4247, 2.7802, 2.5973, 1.7886), (0.2407, 1.6823, 5.6588, 20.7219, 69.1109)),
    "I": ((0.7047, 1.9484, 2.5940, 4.1526, 1.5057), (0.2455, 1.8638, 6.7639, 21.8007, 56.4395)),
    "W": ((0.9853, 2.1167, 3.3570, 3.7981, 2.2798), (0.2569, 1.6745, 7.0098, 26.9234, 81.3910)),
    "Pt": ((0.9148, 1.8096, 3.2134, 3.2953, 1.5754), (0.2263, 1.3813, 5.3243, 17.5987, 60.0171)),
    "Au": ((0.9674, 1.8916, 3.3993, 3.0524, 1.2607), (0.2358, 1.4712, 5.6758, 18.7119, 61.5286)),
    "Hg": ((1.0033, 1.9469, 3.4396, 3.1548, 1.4180), (0.2413, 1.5298, 5.8009, 19.4520, 60.5753)),
    "Pb": ((1.0891, 2.1867, 3.6160, 3.8031, 1.8994), (0.2552, 1.7174, 6.5131, 23.9170, 74.7039)),
    "U": ((1.3382, 3.2043, 5.4558, 5.4839, 3.6342), (0.2838, 2.2452, 10.2519, 41.7251, 124.9023)),
}

#: Hydrogens bound on average to a heavy atom of a protein (from the mean amino-acid
#: composition, about C5 H7.8 N1.4 O1.5 S0.04 per residue). Used for "united atoms" when
#: a model holds no explicit hydrogens (cryo-EM and most X-ray models): hydrogens carry
#: about 19% of a protein's integrated potential, too much to leave out.
IMPLICIT_HYDROGENS: dict[str, float] = {"C": 1.25, "N": 1.0, "O": 0.1, "S": 0.4}

#: Average residue of a protein, as element counts (hydrogens included), mass 112 Da.
AVERAGE_RESIDUE: dict[str, float] = {"C": 5.0, "H": 7.8, "N": 1.37, "O": 1.5, "S": 0.04}
AVERAGE_RESIDUE_MASS = 112.0  # Da

#: Protein mass density (Da/Å³); 1.35 g/cm³.
PROTEIN_DENSITY = 0.81

ATOMIC_MASS: dict[str, float] = {
    "H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "Na": 22.990, "Mg": 24.305,
    "P": 30.974, "S": 32.06, "Cl": 35.45, "K": 39.098, "Ca": 40.078, "Mn": 54.938, "Fe": 55.845,
    "Co": 58.933, "Ni": 58.693, "Cu": 63.546, "Zn": 65.38, "Mo": 95.95, "Cd": 112.41, "I": 126.90,
    "W": 183.84, "Pt": 195.08, "Au": 196.97, "Hg": 200.59, "Pb": 207.2, "U": 238.03,
}  # fmt: skip


def normalize_element(symbol: str) -> str:
    """``"ZN"``/``"zn"`` -> ``"Zn"``; deuterium ``"D"`` -> ``"H"``."""
    s = symbol.strip().capitalize()
    return "H" if s == "D" else s


def element_gaussians(elements: list[str], implicit_hydrogens: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian terms of the scattering factor of each atom.

    Parameters
    ----------
    elements:
        ``N`` element symbols (any case). Elements missing from :data:`PENG_1996` are
        treated as carbon, with one warning naming them.
    implicit_hydrogens:
        Add :data:`IMPLICIT_HYDROGENS` hydrogen scattering terms to each C, N, O and S.

    Returns
    -------
    a, b:
        ``(N, G)`` float64 arrays: amplitudes a (Å) and widths b (Å²); G = 5, or 10 with
        implicit hydrogens (zero amplitude where an element carries none).
    """
    names = [normalize_element(e) for e in elements]
    unknown = sorted({n for n in names if n not in PENG_1996})
    if unknown:
        warnings.warn(f"no scattering factors for elements {unknown}; treated as carbon", stacklevel=2)
    table_a = {k: np.asarray(v[0]) for k, v in PENG_1996.items()}
    table_b = {k: np.asarray(v[1]) for k, v in PENG_1996.items()}
    keys = [n if n in PENG_1996 else "C" for n in names]
    uniq, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    a_u = np.stack([table_a[k] for k in uniq]) if len(uniq) else np.zeros((0, 5))
    b_u = np.stack([table_b[k] for k in uniq]) if len(uniq) else np.zeros((0, 5))
    if implicit_hydrogens:
        n_h = np.array([IMPLICIT_HYDROGENS.get(k, 0.0) for k in uniq])
        a_u = np.concatenate([a_u, n_h[:, None] * table_a["H"][None]], axis=1)
        b_u = np.concatenate([b_u, np.broadcast_to(table_b["H"], (len(uniq), 5))], axis=1)
    return a_u[inverse], b_u[inverse]


def composite_gaussian(composition: dict[str, float]) -> tuple[float, float]:
    """One Gaussian ``(a, b)`` (Å, Å²) standing for a group of atoms at one point.

    ``a`` is the summed f(0) of the group; ``b`` matches the second moment of the summed
    scattering factor at low resolution (``b = sum a_i b_i / sum a_i``), exact to first
    order in s². Used for residue-sized pseudo-atoms.
    """
    a_sum = 0.0
    ab_sum = 0.0
    for element, count in composition.items():
        a, b = (np.asarray(x) for x in PENG_1996[normalize_element(element)])
        a_sum += count * a.sum()
        ab_sum += count * (a * b).sum()
    return a_sum, ab_sum / a_sum


def rasterize_gaussians(
    positions: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    box: int,
    pixel_size: float,
    chunk_voxels: int = 8_000_000,
) -> torch.Tensor:
    """Voxel-averaged potential of a set of Gaussian atoms.

    Parameters
    ----------
    positions:
        ``(N, 3)`` atom positions in Å, columns ``(x, y, z)``, relative to the box centre
        (voxel ``D//2`` along each axis).
    a, b:
        ``(N, G)`` scattering-factor Gaussians: amplitudes a (Å) and widths b (Å², any
        B-factor already added). Zero amplitudes are allowed.
    box:
        Box size D (voxels).
    pixel_size:
        Å per voxel.
    chunk_voxels:
        Work in chunks of about this many patch voxels (memory bound).

    Returns
    -------
    ``(D, D, D)`` float32 potential in V, indexed ``[z, y, x]``, on the device of
    ``positions``. Contributions falling outside the box are dropped.
    """
    device = positions.device
    d = int(box)
    out = torch.zeros(d * d * d, dtype=torch.float32, device=device)
    if positions.shape[0] == 0:
        return out.reshape(d, d, d)
    pos = positions.to(torch.float32)
    a = a.to(device=device, dtype=torch.float32)
    b = b.to(device=device, dtype=torch.float32)
    sigma = torch.sqrt(b / (8 * math.pi**2))  # Å, per axis
    sigma_max = float(sigma[a != 0].max()) if bool((a != 0).any()) else float(sigma.max())
    half = int(math.ceil(4.0 * sigma_max / pixel_size + 0.5))
    offsets = torch.arange(-half, half + 1, device=device, dtype=torch.float32)  # (K,)
    k = offsets.numel()
    amp = POTENTIAL_PER_SCATTERING * a / pixel_size**3  # V per unit voxel weight
    inv = 1.0 / (sigma * math.sqrt(2.0))  # (N, G)
    per_chunk = max(1, chunk_voxels // (k**3))
    for start in range(0, pos.shape[0], per_chunk):  # chunks of atoms, not a per-atom loop
        sl = slice(start, start + per_chunk)
        p = pos[sl] / pixel_size + d // 2  # (n, 3) voxel coordinates (x, y, z)
        centre = torch.round(p)
        idx = centre[:, :, None] + offsets  # (n, 3, K) voxel index along each axis
        lo = (idx - 0.5 - p[:, :, None]) * pixel_size  # Å, voxel edges relative to atom
        hi = lo + pixel_size
        s = inv[sl][:, :, None, None]  # (n, G, 1, 1)
        w = 0.5 * (torch.erf(hi[:, None] * s) - torch.erf(lo[:, None] * s))  # (n, G, 3, K)
        valid = (idx >= 0) & (idx < d)  # (n, 3, K): voxels outside the box get no weight
        w = w * valid[:, None].to(w.dtype)
        idx = idx.clamp(0, d - 1).long()
        # patch[n, z, y, x] = sum_g amp[n, g] wz[n, g, z] wy[n, g, y] wx[n, g, x]
        wzy = (amp[sl][:, :, None, None] * w[:, :, 2, :, None]) * w[:, :, 1, None, :]  # (n, G, K, K)
        n_at, n_g = wzy.shape[:2]
        patch = torch.bmm(wzy.reshape(n_at, n_g, k * k).transpose(1, 2), w[:, :, 0])  # (n, K*K, K)
        flat = (idx[:, 2, :, None, None] * d + idx[:, 1, None, :, None]) * d + idx[:, 0, None, None, :]
        out.index_add_(0, flat.reshape(-1), patch.reshape(-1))
    return out.reshape(d, d, d)
