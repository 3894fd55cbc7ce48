"""Template matching: picking with class averages as references (the blob -> 2D -> templates loop).

Each template (a class average: particles white, CTF-corrected, as ``classify2d`` and
RELION write them) is resampled to the working pixel size, rotated in-plane to
:data:`ROTATIONS` angles, masked to a circle, made zero-mean and unit-norm, and seen
through the micrograph's CTF: the matched filter of template ``T`` is
``-CTF(k) · conj(T(k))`` (after a 20 Å low-pass; templates cut to a circle of
:data:`MASK_FACTOR` times the particle diameter), since the micrograph shows the particle
dark and CTF-modulated. Every filter's response is in standard deviations of the shot
noise (:func:`filters.noise_sigma`), so the score is comparable across templates and the
threshold follows from the same noise null as the blob picker's; each pixel keeps the best
template and angle (written as rlnClassNumber and rlnAnglePsi, as RELION's reference-based
autopicking does).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cryoflow.errors import CryoflowError
from cryoflow.picking.filters import LOW_PASS, Prepared, noise_sigma

#: in-plane angles tried per template (15° apart)
ROTATIONS = 24
#: templates are cut to a circle of this many particle diameters
MASK_FACTOR = 1.2
#: filters evaluated at once (memory: each is one micrograph-sized spectrum)
CHUNK = 32


def read_templates(path: str | os.PathLike, classes: list[int] | None = None) -> tuple[np.ndarray, float]:
    """Templates ``(K, B, B)`` float32 and their pixel size (Å) from a stack (``classes.mrcs``)
    or a ``classify2d`` output folder (its ``classes.mrcs``); ``classes``: 1-based indices to keep."""
    from cryoflow.io import open_stack

    path = Path(path)
    if path.is_dir():
        path = path / "classes.mrcs"
    if not path.is_file():
        raise CryoflowError(path, "template stack not found (give a .mrcs stack or a classify2d folder)")
    with open_stack(path) as stack:
        images = stack[:] if len(stack) else np.zeros((0, 1, 1), np.float32)
        pixel_size = float(stack.pixel_size)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if classes:
        bad = [c for c in classes if not 1 <= c <= len(images)]
        if bad:
            raise CryoflowError(path, f"has {len(images)} images; no class {bad[0]}")
        images = images[[c - 1 for c in classes]]
    if len(images) == 0:
        raise CryoflowError(path, "holds no templates")
    return images, pixel_size


class TemplateBank:
    """Rotated, resampled templates ready to score micrographs (see the module doc).

    ``templates``: ``(K, B, B)`` white particles; ``pixel_size``: their Å/pixel;
    ``classes``: the class number of each template (written with the picks);
    ``mask_diameter``: Å, the circle each template is cut to (default: its box), so that the
    neighbours and ice in the corners of a class average do not count.
    """

    def __init__(
        self,
        templates: np.ndarray,
        pixel_size: float,
        classes: list[int] | None = None,
        rotations=ROTATIONS,
        mask_diameter: float | None = None,
    ):
        self.mask_diameter = mask_diameter
        self.templates = torch.as_tensor(np.asarray(templates, dtype=np.float32))
        self.pixel_size = float(pixel_size)
        self.classes = list(classes) if classes else list(range(1, len(self.templates) + 1))
        self.angles = torch.arange(rotations, dtype=torch.float32) * (360.0 / rotations)
        self._cache: dict = {}

    @property
    def diameter(self) -> float:
        """Diameter (Å) of the templates' box: the largest particle they can hold."""
        return self.templates.shape[-1] * self.pixel_size

    def _kernels(self, pixel_size: float, device) -> torch.Tensor:
        """``(K * R, b, b)`` rotated templates at ``pixel_size``, masked, zero-mean, unit-norm."""
        key = (round(pixel_size, 4), str(device))
        if key in self._cache:
            return self._cache[key]
        t = self.templates.to(device)
        k, box, _ = t.shape
        size = max(8, int(round(box * self.pixel_size / pixel_size)) // 2 * 2)
        t = F.interpolate(t[:, None], size=(size, size), mode="area" if size < box else "bilinear", align_corners=None)
        theta = torch.deg2rad(self.angles).to(device)
        cos, sin = torch.cos(theta), torch.sin(theta)
        affine = torch.zeros(len(theta), 2, 3, device=device)
        affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(affine, (len(theta), 1, size, size), align_corners=False)
        rotated = torch.cat(
            [F.grid_sample(t[i : i + 1].expand(len(theta), -1, -1, -1), grid, align_corners=False) for i in range(k)]
        )
        rotated = rotated[:, 0]  # (K * R, size, size), template-major
        r = torch.arange(size, device=device, dtype=torch.float32) - size / 2 + 0.5
        radius = size / 2 if self.mask_diameter is None else min(size / 2, self.mask_diameter / 2 / pixel_size)
        inside = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2
        rotated = torch.where(inside, rotated, 0.0)
        rotated = rotated - (rotated.sum((1, 2), keepdim=True) / inside.sum()) * inside
        rotated = rotated / rotated.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        self._cache[key] = rotated
        return rotated

    def filters(self, prep: Prepared, start: int, stop: int) -> torch.Tensor:
        """Fourier filters ``(n, h, w//2+1)`` of kernels ``start:stop`` for ``prep``."""
        kernels = self._kernels(prep.pixel_size, prep.image.device)[start:stop]
        h, w = prep.shape
        size = kernels.shape[-1]
        padded = torch.zeros(len(kernels), h, w, device=kernels.device)
        padded[:, :size, :size] = kernels
        padded = torch.roll(padded, shifts=(-(size // 2), -(size // 2)), dims=(1, 2))  # centre at the origin
        filt = torch.conj(torch.fft.rfft2(padded)) * torch.exp(-0.5 * (prep.k * LOW_PASS) ** 2)
        if prep.ctf is not None:
            filt = filt * prep.ctf
        return -filt

    def __len__(self) -> int:
        return len(self.templates) * len(self.angles)

    def score(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, best)``: the best template score per pixel in noise standard deviations, and the
        index (template * R + angle) that gave it, both ``(h, w)``."""
        h, w = prep.shape
        best = torch.full((h, w), -math.inf, device=prep.image.device)
        which = torch.zeros((h, w), dtype=torch.long, device=prep.image.device)
        for start in range(0, len(self), CHUNK):
            filt = self.filters(prep, start, min(start + CHUNK, len(self)))
            maps = torch.fft.irfft2(prep.spectrum[None] * filt, s=(h, w))
            sigma = torch.tensor([noise_sigma(prep, f) for f in filt], device=maps.device)
            maps = maps / sigma.clamp_min(1e-12)[:, None, None]
            value, index = maps.max(0)
            better = value > best
            best = torch.where(better, value, best)
            which = torch.where(better, index + start, which)
        return best - best.median(), which

    def class_and_angle(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class numbers and in-plane angles (degrees) of kernel indices."""
        index = np.asarray(index, dtype=int)
        classes = np.asarray(self.classes)[index // len(self.angles)]
        return classes, self.angles.numpy()[index % len(self.angles)]
