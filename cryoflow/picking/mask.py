"""Where not to pick: contamination, carbon, thick ice, holes (a per-micrograph mask).

Such regions change how many electrons get through: contamination, carbon and thick ice
are darker than the ice around the particles, a hole or crack in the ice brighter. The
micrograph's intensity relative to its median, averaged over a particle-sized Gaussian,
marks them: below ``1 - DARK`` or above ``1 + BRIGHT``; the marked area is widened by one
particle radius, so a particle touching such a region is not picked either. Particles
themselves change the local intensity by a few percent at most.
"""

from __future__ import annotations

import math

import torch

from cryoflow.picking.filters import Prepared
from cryoflow.picking.peaks import max_filter

#: relative intensity drop that marks contamination, carbon or thick ice
DARK = 0.08
#: relative intensity rise that marks a hole or crack in the ice
BRIGHT = 0.08


def local_intensity(prep: Prepared, diameter: float) -> torch.Tensor:
    """Intensity relative to the micrograph's median, Gaussian-averaged over ``diameter`` Å ``(h, w)``."""
    sigma = 0.5 * diameter
    gauss = torch.exp(-2 * math.pi**2 * sigma**2 * prep.k.square())
    smooth = torch.fft.irfft2(prep.spectrum * gauss, s=prep.shape)
    rel = 1 + prep.contrast * smooth
    return rel / rel.median()


def exclusion_mask(prep: Prepared, diameter: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``(allowed, fractions)``: ``(h, w)`` bool, True where picking is allowed, and the
    fraction of the micrograph excluded as ``dark`` and ``bright``."""
    rel = local_intensity(prep, diameter)
    dark = rel < 1 - DARK
    bright = rel > 1 + BRIGHT
    radius = max(1, int(round(0.5 * diameter / prep.pixel_size)))
    dark = max_filter(dark.float(), radius) > 0
    bright = max_filter(bright.float(), radius) > 0
    return ~(dark | bright), {"dark": float(dark.float().mean()), "bright": float(bright.float().mean())}
