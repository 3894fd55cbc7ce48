"""Particles in: the STAR table, the stacks (streamed in batches), the CTF of every particle.

:func:`read_particles` checks the input (required columns, stacks present, image numbers
within their stacks, one box size and pixel size) and raises a one-line
:class:`~cryoflow.errors.CryoflowError` naming the file otherwise. :class:`ParticleSet`
reads any subset of particles: stacks are opened memory-mapped per batch and closed
again, so resident memory does not grow with the number of particles read.
:func:`prepare_batch` turns a batch into what the E-step needs: CTF-multiplied, masked
basis coefficients, the ring-averaged CTF² and the ring power of the masked image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoflow.classify2d.basis import PolarBasis, Stage, ring_binning
from cryoflow.errors import CryoflowError
from cryoflow.optics import ctf_values

REQUIRED = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
OPTICS_REQUIRED = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


#: stacks with larger images are Fourier-cropped to this box (pixels) for classification
MAX_BOX = 96


@dataclass
class ParticleSet:
    """A particle STAR file and its stacks.

    ``table``: the :class:`~cryoflow.io.StarTable`; ``files``: stack paths; ``file_index``
    / ``slice_index`` ``(N,)``: stack and 0-based image of every particle; ``box`` (pixels),
    ``pixel_size`` (Å); ``defocus`` ``(N, 4)`` float32: U, V (Å), angle, phase shift (deg);
    ``group`` ``(N,)`` optics-group row; ``optics`` per group ``(voltage kV, Cs mm, amplitude
    contrast, phase flipped)``; ``stack_box``: the stacks' image size. Stacks larger than
    :data:`MAX_BOX` are Fourier-cropped to it as they are read (``box`` and ``pixel_size``
    are then the cropped ones): 2D classification does not need finer sampling, and its
    cost grows steeply with the box.
    """

    table: object
    path: Path
    files: list[Path]
    file_index: np.ndarray
    slice_index: np.ndarray
    box: int
    pixel_size: float
    defocus: np.ndarray
    group: np.ndarray
    optics: list[tuple[float, float, float, bool]]
    stack_box: int = 0

    def __len__(self) -> int:
        return len(self.file_index)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images of particles ``indices`` (any order) as float32 ``(n, B, B)``."""
        from cryoflow.io import open_stack

        indices = np.asarray(indices)
        size = self.stack_box or self.box
        out = np.empty((len(indices), size, size), dtype=np.float32)
        files = self.file_index[indices]
        for f in np.unique(files):
            where = np.flatnonzero(files == f)
            slices = self.slice_index[indices[where]]
            order = np.argsort(slices, kind="stable")
            with open_stack(self.files[f], pixel_size=self.pixel_size * self.box / size) as stack:
                out[where[order]] = stack[np.sort(slices)]
        if size == self.box:
            return out
        return fourier_crop(out, self.box)


def fourier_crop(images: np.ndarray, box: int) -> np.ndarray:
    """``(n, S, S)`` images Fourier-cropped to ``(n, box, box)`` (same field of view, mean kept; see
    :func:`cryoflow.picking.particle_images.fourier_crop`)."""
    from cryoflow.picking.particle_images import fourier_crop as crop_spectrum

    spectrum = torch.fft.rfft2(torch.from_numpy(images))
    return torch.fft.irfft2(crop_spectrum(spectrum, images.shape[-1], box), s=(box, box)).numpy()


def _parse_image_names(names, star_path: Path, images: Path | None = None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    from cryoflow.io import find_image

    files: dict[str, int] = {}
    file_index = np.empty(len(names), dtype=np.int64)
    slice_index = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        text = str(name)
        if "@" not in text:
            raise CryoflowError(star_path, f"rlnImageName {text!r} (row {i + 1}) is not of the form N@stack.mrcs")
        number, stack = text.split("@", 1)
        try:
            n = int(number)
        except ValueError:
            raise CryoflowError(
                star_path, f"rlnImageName {text!r} (row {i + 1}) has no image number before @"
            ) from None
        if n < 1:
            raise CryoflowError(star_path, f"rlnImageName {text!r} (row {i + 1}): image numbers start at 1")
        file_index[i] = files.setdefault(stack, len(files))
        slice_index[i] = n - 1
    bases: list[Path] = []
    paths = [find_image(s, star_path, images, bases) for s in files]
    return paths, file_index, slice_index


def read_particles(path: str | os.PathLike, images: str | os.PathLike | None = None) -> ParticleSet:
    """Read and check a particle STAR file (RELION 3.0 or 3.1+) and the headers of its stacks.

    Stack names resolve as RELION does, else under ``images`` (a folder holding the stacks,
    e.g. the extract step's), else in sibling folders of the STAR file's folder
    (:func:`cryoflow.io.find_image`)."""
    from cryoflow.io import read_info, read_table, require_columns

    path = Path(path)
    star = read_table(path, "particles")
    table = star.table
    if len(table) == 0:
        raise CryoflowError(path, "data_particles holds no particles")
    require_columns(table, REQUIRED, path, "particles")
    require_columns(star.optics, OPTICS_REQUIRED, path, "optics")
    sizes = np.unique(np.asarray(star.pixel_size(), dtype=float).round(5))
    if len(sizes) != 1 or not np.isfinite(sizes[0]) or sizes[0] <= 0:
        raise CryoflowError(path, f"particles must share one positive pixel size, found {sizes.tolist()} Å")
    pixel_size = float(sizes[0])
    files, file_index, slice_index = _parse_image_names(table["rlnImageName"], path, Path(images) if images else None)
    box = None
    for f, stack in enumerate(files):
        if not stack.exists():
            raise CryoflowError(stack, f"particle stack named in {path.name} (rlnImageName) not found")
        info = read_info(stack)
        n_images, shape = info.n_images, info.shape[-2:]
        if shape[0] != shape[1]:
            raise CryoflowError(stack, f"images are {shape[1]}x{shape[0]}; 2D classification needs square images")
        if box is None:
            box = int(shape[0])
        elif shape[0] != box:
            raise CryoflowError(stack, f"images are {shape[0]} pixels wide, other stacks {box}: one box size expected")
        used = slice_index[file_index == f]
        if used.max() >= n_images:
            raise CryoflowError(stack, f"holds {n_images} images but {path.name} names image {int(used.max()) + 1}")
    if box < 16:
        raise CryoflowError(path, f"box of {box} pixels is too small for 2D classification (16 or more)")
    stack_box = box
    if box > MAX_BOX:
        pixel_size, box = pixel_size * box / MAX_BOX, MAX_BOX
    columns = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    values = table[columns].apply(lambda c: c.astype(float)).to_numpy()
    phase = table["rlnPhaseShift"].astype(float).to_numpy() if "rlnPhaseShift" in table else np.zeros(len(table))
    defocus = np.column_stack([values, phase]).astype(np.float32)
    if not np.isfinite(defocus).all():
        bad = int(np.flatnonzero(~np.isfinite(defocus).all(1))[0]) + 1
        raise CryoflowError(path, f"particle {bad} has a missing or non-numeric defocus (rlnDefocusU/V/Angle)")
    groups = star.optics["rlnOpticsGroup"].tolist()
    row_of = {g: i for i, g in enumerate(groups)}
    group = np.array([row_of[g] for g in table["rlnOpticsGroup"]], dtype=np.int64)
    optics = []
    for _, row in star.optics.iterrows():
        flipped = bool(int(row.get("rlnCtfDataArePhaseFlipped", 0) or 0))
        optics.append(
            (
                float(row["rlnVoltage"]),
                float(row["rlnSphericalAberration"]),
                float(row["rlnAmplitudeContrast"]),
                flipped,
            )
        )
    return ParticleSet(
        star, path, files, file_index, slice_index, box, pixel_size, defocus, group, optics, stack_box=stack_box
    )


def known_diameter(particles: ParticleSet) -> float | None:
    """The particle diameter (Å) the picking step knew: a ``cfDiameter`` column, or a
    ``diameter``-like key of a ``summary.json`` beside the STAR file; ``None`` if neither."""
    table = particles.table.table
    if "cfDiameter" in table:
        values = table["cfDiameter"].astype(float)
        values = values[np.isfinite(values) & (values > 0)]
        if len(values):
            return float(values.median())
    summary = particles.path.parent / "summary.json"
    if summary.exists():
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            return None
        for key in ("diameter_angstrom", "particle_diameter_angstrom", "diameter_A", "diameter"):
            value = data.get(key) if isinstance(data, dict) else None
            if isinstance(value, int | float) and value > 0:
                return float(value)
    return None


def estimate_diameter(images: np.ndarray, pixel_size: float) -> float:
    """Particle diameter (Å) from the excess variance of centred particles over the background.

    ``images`` ``(n, B, B)``, normalized particles (a few hundred to thousands). The
    radial profile of the per-pixel variance (low-passed to 0.25 cycles/pixel) rises above
    the background where particles are; the diameter is twice the radius where the excess
    falls below 10% of its peak. Clipped to 30-90% of the box.
    """
    x = torch.from_numpy(images).float()
    box = x.shape[-1]
    spec = torch.fft.rfft2(x)
    keep = (torch.fft.fftfreq(box)[:, None] ** 2 + torch.fft.rfftfreq(box)[None, :] ** 2) <= 0.25**2
    x = torch.fft.irfft2(spec * keep, s=(box, box))
    var = x.var(0)
    c = box // 2
    y = torch.arange(box, dtype=torch.float32) - c
    r = torch.sqrt(y[:, None] ** 2 + y[None, :] ** 2).round().long()
    n_r = box // 2
    prof = torch.zeros(n_r).index_add_(0, r[r < n_r], var[r < n_r]) / torch.zeros(n_r).index_add_(
        0, r[r < n_r], torch.ones_like(var[r < n_r])
    )
    background = float(prof[int(0.8 * n_r) :].median())
    excess = (prof - background).clamp_min(0)
    peak = float(excess[: int(0.6 * n_r)].max())
    if peak <= 0:
        return 0.7 * box * pixel_size
    above = torch.nonzero(excess >= 0.1 * peak).squeeze(1)
    radius = float(above.max()) + 1 if len(above) else 0.35 * box
    radius = min(max(radius, 0.15 * box), 0.45 * box)
    return 2 * radius * pixel_size


@dataclass
class Prepared:
    """A batch ready for the E-step: ``coeffs`` ``(n, 2C)`` basis coefficients of the masked,
    CTF-multiplied images; ``ctf2`` ``(n, R)`` ring means of CTF²; ``power`` ``(n, R)`` ring sums
    of |F|² of the masked images (R = B//2 + 1 rings)."""

    coeffs: torch.Tensor
    ctf2: torch.Tensor
    power: torch.Tensor


class BatchPreparer:
    """Precomputed grids to turn image batches into :class:`Prepared` (on ``basis.device``)."""

    def __init__(self, basis: PolarBasis, pixel_size: float):
        self.basis = basis
        box = basis.box
        dev = basis.device
        self.ky = (torch.fft.fftfreq(box, device=dev) / pixel_size)[:, None].expand(box, box // 2 + 1)
        self.kx = (torch.fft.rfftfreq(box, device=dev) / pixel_size)[None, :].expand(box, box // 2 + 1)
        self.fy = torch.fft.fftfreq(box, device=dev)[:, None]  # cycles/pixel
        self.fx = torch.fft.rfftfreq(box, device=dev)[None, :]
        self.binning = ring_binning(box, basis.n_rings, dev)  # (npix, R)
        self.ring_mean = self.binning / basis.ring_counts.clamp_min(1)[None, :]

    def ctf(self, defocus: torch.Tensor, optics: tuple[float, float, float, bool]) -> torch.Tensor:
        """CTF on the rfft2 grid, ``(n, B, B//2+1)``; ``defocus`` ``(n, 4)`` (U, V Å, angle, phase deg)."""
        voltage, cs, ac, flipped = optics
        d = defocus[:, :, None, None]
        ctf = ctf_values(self.ky, self.kx, d[:, 0], d[:, 1], d[:, 2], voltage, cs, ac, d[:, 3])
        return ctf.abs() if flipped else ctf

    def __call__(
        self, images: torch.Tensor, ctf: torch.Tensor, stage: Stage, offsets: torch.Tensor | None = None
    ) -> Prepared:
        """``images`` ``(n, B, B)`` and their ``ctf`` ``(n, B, B//2+1)`` -> :class:`Prepared`.

        ``offsets`` ``(n, 2)`` (dy, dx) pixels: where each particle's centre is believed to be
        (from an earlier iteration); the images are shifted by minus that first, so a
        small local translation search suffices.
        """
        n, box = images.shape[0], self.basis.box
        if offsets is not None:
            phase = 2 * torch.pi * (self.fy * offsets[:, 0, None, None] + self.fx * offsets[:, 1, None, None])
            spec = torch.fft.rfft2(images) * torch.polar(torch.ones_like(phase), phase)
            images = torch.fft.irfft2(spec, s=(box, box))
        spec = torch.fft.rfft2(images, norm="ortho")
        flat_ctf2 = (ctf * ctf).reshape(n, -1)
        ctf2 = flat_ctf2 @ self.ring_mean
        filtered = torch.fft.irfft2(spec * ctf, s=(box, box), norm="ortho")
        coeffs = self.basis.pixels_of(filtered) @ stage.analysis
        masked = torch.fft.rfft2(images * self.basis.mask, norm="ortho")
        power = (masked.real**2 + masked.imag**2).reshape(n, -1) @ self.binning
        return Prepared(coeffs, ctf2, power)
