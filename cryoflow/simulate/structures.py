"""Particle species for the simulator: Coulomb potentials from atomic models, maps or procedures.

A :class:`Species` holds a 3D Coulomb potential (volts, relative to vacuum, no solvent
subtracted: the image-formation step decides how to treat displaced ice) and projects
it in any orientation. Species come from

- :func:`species_from_pdb`: an atomic model (PDB or mmCIF via gemmi), rasterized with the
  electron scattering factors of Peng et al. (1996) and a B-factor
  (:mod:`cryoflow.simulate.scattering`);
- :func:`reference_species`: PDB 7DDO (human ACE2 + SARS-CoV-2-related RBD, ~100 kDa),
  shipped with the package;
- :func:`species_from_map`: any MRC map, resampled and put on a protein-like potential
  scale;
- :func:`procedural_species`: random, protein-like particles of a requested diameter
  (60-300 Å), built from residue-sized pseudo-atoms arranged as helices and sheets
  through the same atomic path.

Conventions
-----------
- Volumes are ``(D, D, D)`` float32 indexed ``[z, y, x]``, particle centre at voxel
  ``D//2`` along each axis; projections are ``(N, D, D)`` indexed ``[y, x]``, centre at
  pixel ``(D//2, D//2)``.
- Rotation matrices and RELION Euler angles: see :mod:`cryoflow.simulate.rotations`
  (``image(x, y) = ∫ V(R @ (x, y, z)) dz``, ``R = Rz(rot) Ry(tilt) Rz(psi)``).
- The *centre* of a species is the centroid of its potential (scattering-weighted atom
  centroid); ``diameter`` is the largest distance between two atom (or pseudo-atom)
  centres; ``radius`` is the largest distance of an atom centre from the centre, so a
  box of ``2 * radius`` holds the particle in every orientation.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cryoflow.errors import CryoflowError
from cryoflow.numerics import fft_friendly
from cryoflow.simulate.rotations import euler_to_matrix, matrix_to_euler, random_rotations, relion_matrix
from cryoflow.simulate.scattering import (
    ATOMIC_MASS,
    AVERAGE_RESIDUE,
    AVERAGE_RESIDUE_MASS,
    IMPLICIT_HYDROGENS,
    POTENTIAL_PER_SCATTERING,
    PROTEIN_DENSITY,
    composite_gaussian,
    element_gaussians,
    normalize_element,
    rasterize_gaussians,
)

__all__ = [
    "PROTEIN_MEAN_POTENTIAL",
    "Species",
    "euler_to_matrix",
    "matrix_to_euler",
    "procedural_species",
    "random_rotations",
    "reference_species",
    "relion_matrix",
    "species_from_map",
    "species_from_pdb",
]

#: Mean Coulomb potential (V) of protein in vacuum in this model: average-residue
#: scattering (hydrogens included) per Da times the protein density 0.81 Da/Å³.
PROTEIN_MEAN_POTENTIAL = (
    POTENTIAL_PER_SCATTERING * composite_gaussian(AVERAGE_RESIDUE)[0] / AVERAGE_RESIDUE_MASS * PROTEIN_DENSITY
)

#: Padding of the volume before its Fourier transform in :meth:`Species.project`, and
#: the largest padded size (memory: P² (P/2+1) complex64 = 130 MB at 320).
MAX_PADDED_SIZE = 320
PAD_FACTOR = 3.0

_REFERENCE_PDB = "7DDO.pdb.gz"


@dataclass(eq=False)
class Species:
    """One kind of particle: its Coulomb potential and how to project it.

    Attributes
    ----------
    name:
        Label, e.g. ``"7DDO"`` or ``"globular_120A_seed3"``.
    volume:
        ``(D, D, D)`` float32 Coulomb potential in V, indexed ``[z, y, x]``, centred at
        ``D//2``; vacuum potential of the particle (zero outside).
    pixel_size:
        Å per voxel.
    diameter:
        Å, maximum extent of the particle (largest distance between two atom centres).
    radius:
        Å, largest distance of an atom centre from the box centre (``2 * radius`` is the
        smallest box that holds the particle in every orientation).
    mass:
        Da, estimated (atoms + implicit hydrogens; for maps, from the particle volume).
    n_atoms:
        Number of atoms (pseudo-atoms for procedural species, 0 for maps).
    source:
        Where the species comes from (file, or procedure and seed).
    """

    name: str
    volume: torch.Tensor
    pixel_size: float
    diameter: float
    radius: float = float("nan")
    mass: float = float("nan")
    n_atoms: int = 0
    source: str = ""
    _dft: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def box(self) -> int:
        """Box size D in voxels."""
        return int(self.volume.shape[-1])

    def _padded_dft(self, device: torch.device) -> torch.Tensor:
        """Fourier transform of the zero-padded volume, prepared for trilinear slicing.

        Returns ``(1, 2, P, P, P//2 + 1)`` float32 (real, imaginary), z and y fftshifted
        (zero frequency at index P//2), x the non-negative rfft half. No sinc² correction
        for the trilinear interpolation: it would make the samples on grid points (the
        zero frequency, every frequency at the identity) wrong by a few %; the 3x
        padding keeps the interpolation error to ~2% within 0.35 cycles/pixel instead.
        """
        key = str(device)
        if key not in self._dft:
            vol = self.volume.to(device=device, dtype=torch.float32)
            d = vol.shape[-1]
            p = max(d, min(int(round(PAD_FACTOR * d)), MAX_PADDED_SIZE))
            p += p % 2
            left = p // 2 - d // 2
            vol = F.pad(vol, [left, p - d - left] * 3)
            dft = torch.fft.rfftn(torch.fft.ifftshift(vol), dim=(-3, -2, -1))
            dft = torch.fft.fftshift(dft, dim=(-3, -2))
            self._dft[key] = torch.stack([dft.real, dft.imag])[None].contiguous()
        return self._dft[key]

    def project(self, rotations: torch.Tensor, max_batch_pixels: int = 4_000_000) -> torch.Tensor:
        """Projected potential of the particle in the given orientations.

        Fourier-slice projection: the central slice of the 3D transform of the volume,
        zero-padded 3x (at most to :data:`MAX_PADDED_SIZE`), is sampled by trilinear
        interpolation at the D x D image frequencies, up to Nyquist (a sphere of radius
        0.5 cycles/pixel, so no orientation gains corner frequencies), and inverse
        transformed. The zero frequency (the integrated potential) is exact in every
        orientation; at the identity the result equals the sum along z up to the
        Nyquist sphere; elsewhere it is within ~2% (rms, below 0.35 cycles/pixel) of
        projecting the atoms exactly. The Fourier volume is computed once per device
        and cached on the species (~0.1-0.6 s).

        Parameters
        ----------
        rotations:
            ``(N, 3, 3)`` rotation matrices ``R`` (``image(x, y) = ∫ V(R @ (x, y, z)) dz``;
            ``R = euler_to_matrix((rot, tilt, psi))``, the transpose of RELION's
            ``Euler_angles2matrix``). The work runs on their device.
        max_batch_pixels:
            Fourier samples per batch (memory bound), batches of particles.

        Returns
        -------
        ``(N, D, D)`` float32 projected potential in V·Å (line integral: the sum along z
        times ``pixel_size`` at the identity), indexed ``[y, x]``, centred at ``D//2``.
        """
        if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
            raise ValueError(f"rotations must be (N, 3, 3), got {tuple(rotations.shape)}")
        device = rotations.device
        dft = self._padded_dft(device)
        p = dft.shape[-2]
        d = self.box
        ky = torch.fft.fftfreq(d, device=device)
        kx = torch.fft.rfftfreq(d, device=device)
        grid = torch.stack(torch.meshgrid(kx, ky, indexing="xy"), dim=-1)  # (d, d//2+1, 2) as (kx, ky)
        grid = torch.cat([grid, torch.zeros_like(grid[..., :1])], dim=-1)  # (d, d//2+1, 3) xyz
        in_band = (grid**2).sum(-1) <= 0.25
        per_batch = max(1, max_batch_pixels // grid[..., 0].numel())
        scale = torch.tensor([2.0 / (p // 2), 2.0 / (p - 1), 2.0 / (p - 1)], device=device)
        offset = torch.tensor([0.0, p // 2, p // 2], device=device)
        out = []
        for start in range(0, rotations.shape[0], per_batch):  # batches of particles
            rot = rotations[start : start + per_batch].to(torch.float32)
            k = torch.einsum("nij,hwj->nhwi", rot, grid)  # (n, d, d//2+1, 3) volume frequencies, xyz
            conj = k[..., 0] < 0
            k = torch.where(conj[..., None], -k, k)
            coords = (k * p + offset) * scale - 1.0  # grid_sample's [-1, 1], order (x, y, z)
            sample = F.grid_sample(dft, coords[None], mode="bilinear", padding_mode="zeros", align_corners=True)
            real, imag = sample[0, 0], sample[0, 1]  # (n, d, d//2+1)
            imag = torch.where(conj, -imag, imag)
            spectrum = torch.complex(real, imag) * in_band
            image = torch.fft.irfftn(spectrum, s=(d, d), dim=(-2, -1))
            out.append(torch.fft.fftshift(image, dim=(-2, -1)))
        return torch.cat(out) * self.pixel_size

    def to(self, device: str | torch.device) -> Species:
        """A copy with the volume on ``device``."""
        return Species(
            self.name,
            self.volume.to(device),
            self.pixel_size,
            self.diameter,
            self.radius,
            self.mass,
            self.n_atoms,
            self.source,
        )


# ----------------------------------------------------------------------------- helpers


def _check_positive(value: float, what: str, path: str | os.PathLike | None = None) -> float:
    if value is None or not np.isfinite(value) or value <= 0:
        raise CryoflowError(path, f"{what} must be a positive number, got {value}")
    return float(value)


def _max_extent(points: np.ndarray) -> float:
    """Largest distance (same unit as ``points``) between two of ``(N, 3)`` points."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 64:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # degenerate (flat) point sets: fall back to a subsample
            pts = pts[np.random.default_rng(0).choice(len(pts), min(len(pts), 4000), replace=False)]
    t = torch.from_numpy(pts)
    return float(torch.cdist(t, t).max())


def _auto_box(radius: float, blur: float, pixel_size: float) -> int:
    """Box (voxels) for a particle of ``radius`` Å whose atoms spread ``blur`` Å."""
    return fft_friendly(max(8.0, (2.0 * (radius + blur)) / pixel_size + 2))


def _species_from_gaussians(
    name: str,
    positions: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    pixel_size: float,
    box: int | None,
    mass: float,
    source: str,
    device: str | torch.device = "cpu",
) -> Species:
    """Centre atoms on their potential centroid, pick the box, rasterize: the one atomic path.

    positions ``(N, 3)`` Å (x, y, z); a ``(N, G)`` Å, b ``(N, G)`` Å² (B-factor included).
    """
    weight = a.sum(axis=1)
    centre = (positions * weight[:, None]).sum(0) / weight.sum()
    pos = positions - centre
    radius = float(np.sqrt((pos**2).sum(1)).max())
    diameter = _max_extent(pos)
    sigma_max = float(np.sqrt(b[a != 0].max() / (8 * math.pi**2)))
    if box is None:
        box = _auto_box(radius, 3.0 * sigma_max, pixel_size)
    else:
        box = int(box)
        if box < 8:
            raise CryoflowError(None, f"box must be at least 8 voxels, got {box}")
        if 2 * radius / pixel_size > box:
            warnings.warn(
                f"{name}: box {box} px ({box * pixel_size:.0f} Å) is smaller than the particle "
                f"({2 * radius:.0f} Å across); its edges are cut",
                stacklevel=3,
            )
    volume = rasterize_gaussians(
        torch.as_tensor(pos, dtype=torch.float32, device=device),
        torch.as_tensor(a, dtype=torch.float32),
        torch.as_tensor(b, dtype=torch.float32),
        box,
        pixel_size,
    )
    return Species(
        name=name,
        volume=volume,
        pixel_size=float(pixel_size),
        diameter=diameter,
        radius=radius,
        mass=float(mass),
        n_atoms=len(pos),
        source=source,
    )


# ----------------------------------------------------------------------------- atomic models


def read_atoms(path: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """Atoms of the first model of a PDB or mmCIF file (gzipped or not).

    Waters are dropped; alternative conformations are all kept (weight them by occupancy).

    Returns ``(positions (N, 3) Å as (x, y, z), elements (N,), occupancies (N,), name)``.
    Raises :class:`CryoflowError` naming the file when it is missing, unreadable or holds
    no atoms.
    """
    import gemmi

    path = Path(path)
    if not path.exists():
        raise CryoflowError(path, "file not found")
    if path.is_dir():
        raise CryoflowError(path, "is a folder, expected a PDB or mmCIF file")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise CryoflowError(path, f"cannot read as a PDB or mmCIF model ({exc})") from None
    st.remove_waters()
    if len(st) == 0:
        raise CryoflowError(path, "holds no atoms; expected a PDB or mmCIF model")
    atoms = [(c.atom.pos.x, c.atom.pos.y, c.atom.pos.z, c.atom.element.name, c.atom.occ) for c in st[0].all()]
    if not atoms:
        raise CryoflowError(path, "holds no atoms; expected a PDB or mmCIF model")
    xyz = np.array([t[:3] for t in atoms], dtype=np.float64)
    elements = [t[3] for t in atoms]
    occupancy = np.array([t[4] for t in atoms], dtype=np.float64)
    occupancy = np.where(occupancy > 0, occupancy, 1.0)  # occupancy 0 in a file usually means "not set"
    if not np.isfinite(xyz).all():
        raise CryoflowError(path, "holds non-finite coordinates")
    name = st.name.strip() or path.name.split(".")[0]
    return xyz, elements, occupancy, name


def species_from_pdb(
    path: str | os.PathLike,
    pixel_size: float,
    b_factor: float = 30.0,
    box: int | None = None,
    *,
    name: str | None = None,
    implicit_hydrogens: bool | None = None,
    device: str | torch.device = "cpu",
) -> Species:
    """Coulomb potential of an atomic model (PDB or mmCIF, optionally gzipped).

    Parameters
    ----------
    path:
        Model file; the first model is used, waters dropped, atoms (alternative
        conformations included) weighted by their occupancy.
    pixel_size:
        Å per voxel of the volume.
    b_factor:
        One B-factor (Å²) applied to every atom (the file's B-factors are ignored: they
        vary in meaning between models). 30 Å² suits a well-ordered particle.
    box:
        Box size in voxels; default: the smallest FFT-friendly even size holding the
        particle (``2 * radius`` plus the atoms' spread) in every orientation.
    name:
        Species name; default the structure's name (e.g. ``"7DDO"``).
    implicit_hydrogens:
        Add the scattering of hydrogens bound to C, N, O, S (united atoms); default:
        when the model holds no hydrogens.
    device:
        Where to rasterize (``"cpu"`` or ``"cuda"``); the volume stays there.

    Returns
    -------
    :class:`Species` centred on the potential centroid. Rasterizing ~6,400 atoms at
    1.5-2 Å/px takes ~0.1 s on 2 CPU cores.
    """
    pixel_size = _check_positive(pixel_size, "pixel size (Å)", None)
    if not np.isfinite(b_factor) or b_factor < 0:
        raise CryoflowError(None, f"B-factor must be >= 0 Å², got {b_factor}")
    xyz, elements, occupancy, file_name = read_atoms(path)
    symbols = [normalize_element(e) for e in elements]
    has_h = any(s == "H" for s in symbols)
    if implicit_hydrogens is None:
        implicit_hydrogens = not has_h
    a, b = element_gaussians(symbols, implicit_hydrogens=implicit_hydrogens)
    a = a * occupancy[:, None]
    b = b + b_factor
    masses = np.array([ATOMIC_MASS.get(s, 12.011) for s in symbols])
    if implicit_hydrogens:
        masses = masses + np.array([IMPLICIT_HYDROGENS.get(s, 0.0) for s in symbols]) * ATOMIC_MASS["H"]
    mass = float((masses * occupancy).sum())
    return _species_from_gaussians(
        name or file_name,
        xyz,
        a,
        b,
        pixel_size,
        box,
        mass,
        source=f"{Path(path).name} (B {b_factor:g} Å²)",
        device=device,
    )


@functools.lru_cache(maxsize=16)
def _reference_species(pixel_size: float, b_factor: float, box: int | None) -> Species:
    with resources.as_file(resources.files("cryoflow.simulate") / "data" / _REFERENCE_PDB) as path:
        return species_from_pdb(path, pixel_size, b_factor=b_factor, box=box, name="7DDO")


def reference_species(pixel_size: float, b_factor: float = 30.0, box: int | None = None) -> Species:
    """PDB 7DDO (human ACE2 + SARS-CoV-2-related RBD, ~100 kDa, 6,468 atoms), shipped.

    Cached per (pixel size, B-factor, box): repeated calls return the same object
    (treat its volume as read-only). See :func:`species_from_pdb` for the parameters.
    """
    pixel_size = _check_positive(pixel_size, "pixel size (Å)")
    return _reference_species(round(float(pixel_size), 6), float(b_factor), box)


# ----------------------------------------------------------------------------- maps


def _fourier_resize(vol: torch.Tensor, n_new: int) -> torch.Tensor:
    """Band-limited resampling of a cubic ``(n, n, n)`` volume to ``(m, m, m)`` (centre kept at n//2 -> m//2).

    Crops or zero-pads the centred spectrum; values (not sums) are preserved.
    """
    n = vol.shape[-1]
    if n_new == n:
        return vol
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    out = torch.zeros((n_new,) * 3, dtype=spec.dtype)
    m = min(n, n_new)
    src = slice(n // 2 - m // 2, n // 2 - m // 2 + m)
    dst = slice(n_new // 2 - m // 2, n_new // 2 - m // 2 + m)
    out[dst, dst, dst] = spec[src, src, src]
    res = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(out))).real
    return (res * (n_new / n) ** 3).to(torch.float32)


def _resample(vol: torch.Tensor, p_in: float, p_out: float) -> torch.Tensor:
    """Resample a cubic volume from ``p_in`` to ``p_out`` Å/voxel (Fourier, then a trilinear trim)."""
    n = vol.shape[-1]
    n1 = max(8, int(round(n * p_in / p_out)))
    vol = _fourier_resize(vol, n1)
    p1 = p_in * n / n1
    if abs(p1 / p_out - 1.0) < 1e-5:
        return vol
    n2 = max(8, int(math.floor(n1 * p1 / p_out)))
    c = (torch.arange(n2, dtype=torch.float32) - n2 // 2) * (p_out / p1) + n1 // 2  # source voxel index
    norm = 2.0 * c / (n1 - 1) - 1.0
    zz, yy, xx = torch.meshgrid(norm, norm, norm, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1)[None]
    return F.grid_sample(vol[None, None], grid, mode="bilinear", align_corners=True)[0, 0]


def _gaussian_blur(vol: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian blur (``sigma_px`` voxels) by FFT of a cubic volume."""
    n = vol.shape[-1]
    f = torch.fft.fftfreq(n)
    g = torch.exp(-2 * (math.pi * sigma_px) ** 2 * f**2)
    rf = torch.fft.rfftfreq(n)
    gr = torch.exp(-2 * (math.pi * sigma_px) ** 2 * rf**2)
    spec = torch.fft.rfftn(vol) * (g[:, None, None] * g[None, :, None] * gr[None, None, :])
    return torch.fft.irfftn(spec, s=vol.shape)


def _fourier_shift(vol: torch.Tensor, shift_zyx: np.ndarray) -> torch.Tensor:
    """Shift a volume by ``shift_zyx`` voxels (sub-voxel, periodic)."""
    n = vol.shape[-1]
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    rf = torch.fft.rfftfreq(n, dtype=torch.float64)
    phase = shift_zyx[0] * f[:, None, None] + shift_zyx[1] * f[None, :, None] + shift_zyx[2] * rf[None, None, :]
    spec = torch.fft.rfftn(vol.to(torch.float64)) * torch.exp(-2j * math.pi * phase)
    return torch.fft.irfftn(spec, s=vol.shape).to(torch.float32)


def _crop_or_pad(vol: torch.Tensor, box: int) -> torch.Tensor:
    """Centred crop or zero-pad of a cubic volume to ``box`` (centre n//2 -> box//2)."""
    n = vol.shape[-1]
    if box == n:
        return vol
    if box < n:
        s = n // 2 - box // 2
        return vol[s : s + box, s : s + box, s : s + box].contiguous()
    left = box // 2 - n // 2
    return F.pad(vol, [left, box - n - left] * 3)


#: Fraction of the 99th percentile of the 3 Å-blurred map at which :func:`species_from_map`
#: draws the particle envelope. Calibrated on 7DDO so the envelope's volume is the
#: protein volume (mass / 0.81 Da/Å³).
MAP_ENVELOPE_LEVEL = 0.45
MAP_ENVELOPE_BLUR = 3.0  # Å


def particle_envelope(volume: torch.Tensor, pixel_size: float) -> torch.Tensor:
    """Boolean ``(D, D, D)`` envelope of the particle in a map (the rule of :func:`species_from_map`).

    The map is blurred by a 3 Å Gaussian and thresholded at ``MAP_ENVELOPE_LEVEL`` times
    its 99th percentile over voxels above 5% of its maximum (the particle's dense
    interior); connected pieces smaller than 5% of the largest are dropped (noise).
    """
    from scipy import ndimage

    smooth = _gaussian_blur(volume, MAP_ENVELOPE_BLUR / pixel_size)
    peak = float(smooth.max())
    if peak <= 0:
        return torch.zeros_like(volume, dtype=torch.bool)
    dense = smooth[smooth > 0.05 * peak]
    level = MAP_ENVELOPE_LEVEL * float(torch.quantile(dense[:16_000_000], 0.99))
    mask = (smooth > level).numpy()
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return torch.from_numpy(mask)


def species_from_map(
    path: str | os.PathLike,
    pixel_size: float | None = None,
    box: int | None = None,
    *,
    map_pixel_size: float | None = None,
    name: str | None = None,
    mean_potential: float | None = None,
) -> Species:
    """A species from any MRC map (EMDB map, a reconstruction, another simulator's volume).

    Steps and the potential rule:

    1. Read the 3D map; its pixel size comes from the header unless ``map_pixel_size``
       is given (missing in both is an error). A non-cubic map is zero-padded to a cube
       after subtracting the background (median of the voxels within 2 of the faces).
    2. Resample to ``pixel_size`` Å/voxel (default: keep the map's): band-limited
       Fourier crop/pad, then trilinear interpolation for the residual (< 1 voxel) scale.
    3. Find the particle envelope (:func:`particle_envelope`), zero the map outside it
       (a 4 Å margin, then a 6 Å cosine edge) and clip negative values (a vacuum
       potential is never negative).
    4. **Potential scale**: multiply the map so that its mean potential inside the
       particle, ``sum(map) * voxel volume / envelope volume``, equals
       ``mean_potential`` (default :data:`PROTEIN_MEAN_POTENTIAL`, ~7.9 V, the value of
       cryoflow's atomic model of protein), i.e. the integrated potential is that of
       protein filling the envelope. A map made by :func:`species_from_pdb` comes back
       on (nearly) its own scale.
    5. Re-centre on the potential centroid (sub-voxel Fourier shift) and crop or pad to
       ``box`` (default: the smallest FFT-friendly even size that holds the envelope in
       every orientation).

    ``mass`` is estimated as envelope volume times 0.81 Da/Å³.
    """
    import mrcfile

    from cryoflow.io import read_info
    from cryoflow.io.mrc import resolve_pixel_size

    path = Path(path)
    info = read_info(path)  # CryoflowError for missing / non-MRC files
    if len(info.shape) != 3 or info.is_stack and path.suffix == ".mrcs":
        raise CryoflowError(path, f"holds data of shape {info.shape}; expected a 3D map (volume)")
    if min(info.shape) < 8:
        raise CryoflowError(path, f"map of shape {info.shape} is too small (at least 8 voxels per side)")
    p_in = resolve_pixel_size(path, info.pixel_size, map_pixel_size)
    p_out = p_in if pixel_size is None else _check_positive(pixel_size, "pixel size (Å)")
    if mean_potential is None:
        mean_potential = PROTEIN_MEAN_POTENTIAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise CryoflowError(path, f"cannot read MRC map ({exc})") from None
    if not np.isfinite(data).all():
        raise CryoflowError(path, "map contains NaN or Inf values")
    vol = torch.from_numpy(np.array(data, dtype=np.float32))
    # background: median of the outer shell
    shell = torch.ones_like(vol, dtype=torch.bool)
    shell[2:-2, 2:-2, 2:-2] = False
    vol = vol - vol[shell].median()
    n = max(vol.shape)
    if len(set(vol.shape)) != 1:
        pads = []
        for s in reversed(vol.shape):
            left = n // 2 - s // 2
            pads += [left, n - s - left]
        vol = F.pad(vol, pads)
    vol = _resample(vol, p_in, p_out)
    mask = particle_envelope(vol, p_out)
    if not bool(mask.any()):
        raise CryoflowError(path, "no particle found in the map (it is empty or flat)")
    from scipy import ndimage

    dist = torch.from_numpy(ndimage.distance_transform_edt(~mask.numpy()) * p_out)
    soft = torch.where(dist <= 4.0, 1.0, 0.5 + 0.5 * torch.cos(math.pi * ((dist - 4.0) / 6.0).clamp(max=1.0)))
    vol = (vol * soft.to(torch.float32)).clamp(min=0.0)
    envelope_volume = float(mask.sum()) * p_out**3
    total = float(vol.sum()) * p_out**3
    if total <= 0:
        raise CryoflowError(path, "map has no positive density inside the particle")
    vol = vol * (mean_potential * envelope_volume / total)
    # centre on the potential centroid
    d = vol.shape[-1]
    idx = torch.arange(d, dtype=torch.float64)
    w = vol.to(torch.float64)
    com = np.array(
        [float((w.sum((1, 2)) * idx).sum()), float((w.sum((0, 2)) * idx).sum()), float((w.sum((0, 1)) * idx).sum())]
    )
    com /= float(w.sum())
    shift = d // 2 - com
    vol = _fourier_shift(vol, shift).clamp(min=0.0)
    mask_pts = torch.nonzero(mask).numpy().astype(np.float64) + shift  # (z, y, x) voxels
    rel = (mask_pts - d // 2) * p_out
    radius = float(np.sqrt((rel**2).sum(1)).max()) if len(rel) else 0.0
    diameter = _max_extent(rel)
    if box is None:
        box = _auto_box(radius, 2.0, p_out)
    vol = _crop_or_pad(vol, int(box))
    return Species(
        name=name or path.name.split(".")[0],
        volume=vol.contiguous(),
        pixel_size=float(p_out),
        diameter=diameter,
        radius=radius,
        mass=envelope_volume * PROTEIN_DENSITY,
        n_atoms=0,
        source=f"{path.name} (map, {p_in:g} Å/px)",
    )


# ----------------------------------------------------------------------------- procedural

#: Spread (Å, rms per axis) of a residue's atoms about its pseudo-atom.
RESIDUE_SPREAD = 1.4
HELIX_SPACING = 10.0  # Å between packed helix axes (hexagonal lattice)
SUBDOMAIN_SIZE = 40.0  # Å, typical size of a folded domain
SHAPES = ("globular", "elongated", "ring", "multimer")


def _random_rotation_np(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3, 3)`` uniform random rotations (numpy, from normalised quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(n, 3, 3)  # fmt: skip


@dataclass
class _Envelope:
    """Union of ellipsoids (centres ``(E, 3)``, orientations ``(E, 3, 3)`` with axes as columns,
    semi-axes ``(E, 3)``), optionally clipped to the wedge |azimuth| <= pi/n about z."""

    centres: np.ndarray
    axes: np.ndarray
    semi: np.ndarray
    wedge: int = 1

    def inside(self, pts: np.ndarray) -> np.ndarray:
        p = torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))
        ok = torch.zeros(len(p), dtype=torch.bool)
        for centre, axes, semi in zip(self.centres, self.axes, self.semi, strict=True):  # a few ellipsoids
            scaled = torch.from_numpy((axes / semi[None, :]).astype(np.float32))  # columns: axis / semi-axis
            local = (p - torch.from_numpy(centre.astype(np.float32))) @ scaled
            ok |= (local * local).sum(1) <= 1.0
        if self.wedge > 1:
            ok &= torch.atan2(p[:, 1], p[:, 0]).abs() <= math.pi / self.wedge
        return ok.numpy()

    def scaled(self, s: float) -> _Envelope:
        return _Envelope(self.centres * s, self.axes, self.semi * s, self.wedge)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.semi.max(1)[:, None]
        return (self.centres - r).min(0), (self.centres + r).max(0)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """About ``n`` uniform points inside (rejection sampling in the bounding box)."""
        lo, hi = self.bounds()
        out = []
        got = 0
        for _ in range(50):  # a few rounds of vectorized rejection sampling
            pts = rng.uniform(lo, hi, size=(max(4 * n, 1000), 3))
            pts = pts[self.inside(pts)]
            out.append(pts)
            got += len(pts)
            if got >= n:
                break
        pts = np.concatenate(out)
        return pts[:n]

    def volume(self, rng: np.random.Generator, n: int = 200_000) -> float:
        lo, hi = self.bounds()
        pts = rng.uniform(lo, hi, size=(n, 3))
        return float(self.inside(pts).mean() * np.prod(hi - lo))


def _symmetry_copies(pts: np.ndarray, n: int) -> np.ndarray:
    """``(N, 3)`` points -> ``(n N, 3)``: the n-fold cyclic copies about z."""
    ang = 2 * math.pi * np.arange(n) / n
    c, s = np.cos(ang), np.sin(ang)
    rz = np.zeros((n, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -s, s, c, 1.0
    return np.einsum("kij,nj->kni", rz, pts).reshape(-1, 3)


def _envelope_for(shape: str, rng: np.random.Generator) -> tuple[_Envelope, int]:
    """Shape of unit-scale asymmetric unit and its cyclic symmetry order."""
    if shape == "globular":
        main = np.array([[1.0, rng.uniform(0.75, 0.95), rng.uniform(0.6, 0.85)]]) * 0.5
        n_lobes = int(rng.integers(2, 7))
        rot = _random_rotation_np(rng, 1 + n_lobes)
        centres = [np.zeros(3)]
        semi = [main[0]]
        dirs = rng.normal(size=(n_lobes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        for k in range(n_lobes):  # a few lobes (domains) on the main body's surface
            size = 0.5 * rng.uniform(0.3, 0.6) * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9)])
            local = dirs[k] @ rot[0]  # direction in the main body's frame
            surf = 1.0 / np.sqrt(((local / main[0]) ** 2).sum())
            centres.append(rot[0] @ local * (surf * rng.uniform(0.8, 1.0)))
            semi.append(size)
        return _Envelope(np.array(centres), rot, np.array(semi)), 1
    if shape == "elongated":
        n_dom = int(rng.integers(2, 5))
        width = rng.uniform(0.16, 0.24)
        lengths = rng.uniform(0.7, 1.3, size=n_dom)
        lengths = lengths / lengths.sum() * 0.5  # semi-lengths summing to 0.5 (unit total length)
        centres, axes, semi = [], [], []
        pos = np.zeros(3)
        direction = np.array([1.0, 0.0, 0.0])
        for k in range(n_dom):  # domains end to end with small kinks
            if k:
                kink = rng.normal(scale=0.25, size=3)
                direction = direction + kink - (kink @ direction) * direction
                direction /= np.linalg.norm(direction)
            centre = pos + direction * lengths[k]
            pos = centre + direction * lengths[k] * 0.85
            x = direction
            y = np.cross(x, rng.normal(size=3))
            y /= np.linalg.norm(y)
            z = np.cross(x, y)
            centres.append(centre)
            axes.append(np.stack([x, y, z], axis=1))
            semi.append([lengths[k] * 1.1, width * rng.uniform(0.85, 1.15), width * rng.uniform(0.7, 1.0)])
        return _Envelope(np.array(centres), np.array(axes), np.array(semi)), 1
    if shape == "ring":
        n = int(rng.integers(5, 9))
        radial = rng.uniform(0.1, 0.15)
        r0 = 0.5 - radial
        tangential = math.pi * r0 / n * 1.25
        height = rng.uniform(0.1, 0.18)
        axes = np.eye(3)[None]
        return _Envelope(np.array([[r0, 0.0, 0.0]]), axes, np.array([[radial, tangential, height]]), wedge=n), n
    if shape == "multimer":
        n = int(rng.integers(2, 5))
        rot = _random_rotation_np(rng, 2)
        s1 = np.array([0.25, rng.uniform(0.18, 0.24), rng.uniform(0.14, 0.2)])
        s2 = s1 * rng.uniform(0.5, 0.7)
        r0 = 0.5 - s1.max()
        c1 = np.array([r0, 0.0, 0.0])
        c2 = c1 + np.array([0.0, 0.0, rng.choice([-1.0, 1.0]) * (s1[2] + 0.5 * s2[2])])
        return _Envelope(np.stack([c1, c2]), rot, np.stack([s1, s2]), wedge=n), n
    raise CryoflowError(None, f"unknown procedural shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _fill_with_residues(env: _Envelope, rng: np.random.Generator) -> np.ndarray:
    """Residue positions (Å) filling an envelope (Å) at protein density, as helices and sheets.

    The envelope is cut into ~40 Å subdomains (Voronoi cells of jittered seeds); each
    has its own orientation and a hexagonal lattice of element axes 10 Å apart. Along
    each axis, 15-35 Å segments separated by 4 Å loops are either alpha helices
    (1.5 Å rise, 100° per residue, radius 2.3 Å) or pairs of beta strands (3.3 Å rise,
    4.8 Å apart, pleated); the helix fraction varies per subdomain (all-alpha to all-beta).
    Random coil residues then top the count up to 0.81 Da/Å³.
    """
    from scipy.spatial import cKDTree

    volume = env.volume(rng)
    n_target = int(round(volume * PROTEIN_DENSITY / AVERAGE_RESIDUE_MASS))
    n_sub = max(1, int(round(volume / SUBDOMAIN_SIZE**3)))
    seeds = env.sample(rng, n_sub)
    if len(seeds) == 0:
        return np.zeros((0, 3))
    rot = _random_rotation_np(rng, len(seeds))  # columns: u (axis) = col 2, sheet direction = col 0
    helix_fraction = rng.uniform(0.0, 1.0, size=len(seeds))
    reach = SUBDOMAIN_SIZE * 1.2 + 10.0
    # hexagonal lattice of element axes in each subdomain's plane (local x, y)
    m = int(math.ceil(reach / HELIX_SPACING)) + 1
    i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    lat = np.stack([(i + 0.5 * j) * HELIX_SPACING, j * HELIX_SPACING * math.sqrt(3) / 2], -1).reshape(-1, 2)
    lat = lat[(lat**2).sum(1) <= reach**2]
    n_lines = len(lat)
    shift = rng.uniform(-0.5, 0.5, size=(len(seeds), 1, 2)) * HELIX_SPACING
    jitter = rng.normal(scale=1.5, size=(len(seeds), n_lines, 2))
    tilt = rng.normal(scale=0.05, size=(len(seeds), n_lines, 2))
    line_xy = lat[None] + shift + jitter  # (S, L, 2)
    # segments along each line: period 19-39 Å, loop gap 4 Å, type helix/strand per segment
    period = rng.uniform(19.0, 39.0, size=(len(seeds), n_lines))
    phase = rng.uniform(0.0, 40.0, size=(len(seeds), n_lines))
    n_seg = int(math.ceil(2 * reach / 19.0)) + 3
    is_helix = rng.uniform(size=(len(seeds), n_lines, n_seg)) < helix_fraction[:, None, None]
    parts = []
    for kind, rise in (("helix", 1.5), ("strand", 3.3)):  # two element types, vectorized over all residues
        t = np.arange(-reach, reach, rise)
        k = np.arange(len(t))
        s_idx, l_idx, t_idx = (
            a.ravel() for a in np.meshgrid(np.arange(len(seeds)), np.arange(n_lines), k, indexing="ij")
        )
        tt = t[t_idx] + rng.uniform(0, rise, size=len(seeds))[s_idx]
        u = tt + phase[s_idx, l_idx]
        seg = np.floor(u / period[s_idx, l_idx]).astype(int)
        in_loop = (u - seg * period[s_idx, l_idx]) > period[s_idx, l_idx] - 4.0
        seg = np.clip(seg, 0, n_seg - 1)
        want = is_helix[s_idx, l_idx, seg] if kind == "helix" else ~is_helix[s_idx, l_idx, seg]
        keep = want & ~in_loop
        s_idx, l_idx, t_idx, tt = s_idx[keep], l_idx[keep], t_idx[keep], tt[keep]
        xy = line_xy[s_idx, l_idx] + tilt[s_idx, l_idx] * tt[:, None]  # element axes tilted ~3°
        if kind == "helix":
            ang = np.deg2rad(100.0) * t_idx + rng.uniform(0, 2 * np.pi, size=(len(seeds), n_lines))[s_idx, l_idx]
            local = np.stack([xy[:, 0] + 2.3 * np.cos(ang), xy[:, 1] + 2.3 * np.sin(ang), tt], -1)
        else:
            pleat = 0.9 * np.where(t_idx % 2 == 0, 1.0, -1.0)
            local = np.stack([xy[:, 0] - 2.4, xy[:, 1] + pleat, tt], -1)
            local = np.concatenate([local, local + np.array([4.8, 0.0, 0.0])])
            s_idx = np.concatenate([s_idx, s_idx])
        parts.append((s_idx, local))
    s_all = np.concatenate([p[0] for p in parts])
    local = np.concatenate([p[1] for p in parts])
    pts = np.einsum("nij,nj->ni", rot[s_all], local) + seeds[s_all]
    # keep residues inside the envelope and in their own subdomain's Voronoi cell
    ok = env.inside(pts)
    pts, s_all = pts[ok], s_all[ok]
    nearest = cKDTree(seeds).query(pts)[1]
    pts = pts[nearest == s_all]
    if len(pts) > n_target:
        pts = pts[rng.choice(len(pts), n_target, replace=False)]
    # loops and coil: random residues up to protein density, kept >= 3.5 Å from all others
    for _ in range(8):
        missing = n_target - len(pts)
        if missing <= 0:
            break
        extra = env.sample(rng, 2 * missing)
        if len(pts):
            extra = extra[cKDTree(pts).query(extra)[0] >= 3.5]
        pairs = cKDTree(extra).query_pairs(3.5, output_type="ndarray") if len(extra) > 1 else np.zeros((0, 2), int)
        extra = np.delete(extra, np.unique(pairs[:, 1]), axis=0)[:missing]
        pts = np.concatenate([pts, extra])
    missing = n_target - len(pts)
    if missing > 0:  # crowded envelope: place the rest anywhere inside
        pts = np.concatenate([pts, env.sample(rng, missing)])
    return pts


def procedural_species(
    diameter: float,
    pixel_size: float,
    seed: int,
    shape: str = "globular",
    *,
    b_factor: float = 30.0,
    box: int | None = None,
    device: str | torch.device = "cpu",
) -> Species:
    """A random protein-like particle of about ``diameter`` Å.

    Residue-sized pseudo-atoms (one per residue, the scattering of an average residue
    with its hydrogens, spread over 1.4 Å rms) fill an envelope at protein density
    (0.81 Da/Å³), arranged as packed alpha helices and beta sheets in ~40 Å subdomains
    (see ``_fill_with_residues``), then go through the same rasterizer as atomic
    models. At 4-10 Å resolution they look like proteins: domains, rods, a protein
    mean potential (~8 V) and a protein-like mass for their size.

    Parameters
    ----------
    diameter:
        Requested maximum extent, Å (60-300 Å is the tested range; 30-600 accepted).
        The result's ``diameter`` attribute holds the measured extent (within ~10%).
    pixel_size:
        Å per voxel.
    seed:
        Random seed: the same (diameter, pixel size, seed, shape) gives the same species.
    shape:
        ``"globular"`` (an ellipsoidal body with 2-6 lobes), ``"elongated"`` (2-4 domains
        end to end, aspect ratio ~3), ``"ring"`` (5-8 subunits with cyclic symmetry
        around a hole) or ``"multimer"`` (compact C2-C4 assembly).
    b_factor:
        Å², added to every pseudo-atom.
    box:
        Box in voxels; default as in :func:`species_from_pdb`.
    """
    diameter = _check_positive(diameter, "diameter (Å)")
    pixel_size = _check_positive(pixel_size, "pixel size (Å)")
    if not 30.0 <= diameter <= 600.0:
        raise CryoflowError(None, f"procedural diameter must be within 30-600 Å, got {diameter:g}")
    if shape not in SHAPES:
        raise CryoflowError(None, f"unknown procedural shape {shape!r}; choose one of {', '.join(SHAPES)}")
    rng = np.random.default_rng([int(seed), SHAPES.index(shape), int(round(diameter * 10))])
    unit, order = _envelope_for(shape, rng)
    # measure the unit shape's extent (all symmetry copies) and scale it to the diameter
    probe = unit.sample(rng, 6000)
    extent = _max_extent(_symmetry_copies(probe, order) if order > 1 else probe)
    env = unit.scaled(diameter / extent)
    pts = _fill_with_residues(env, rng)
    if order > 1:
        pts = _symmetry_copies(pts, order)
    a_res, b_res = composite_gaussian(AVERAGE_RESIDUE)
    a = np.full((len(pts), 1), a_res)
    b = np.full((len(pts), 1), b_res + 8 * math.pi**2 * RESIDUE_SPREAD**2 + b_factor)
    name = f"{shape}_{diameter:.0f}A_seed{seed}"
    return _species_from_gaussians(
        name,
        pts,
        a,
        b,
        pixel_size,
        box,
        mass=len(pts) * AVERAGE_RESIDUE_MASS,
        source=f"procedural {shape}, diameter {diameter:g} Å, seed {seed}",
        device=device,
    )
