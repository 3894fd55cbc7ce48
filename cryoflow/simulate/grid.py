"""A simulated grid: squares, holes and exposures with EPU names and stage positions.

Real grids are not uniformly good or bad: ice thickness varies from square to square
(blotting leaves a gradient across the grid) and within a square (thicker near the grid
bars), and contamination or crystalline ice usually hits a whole square. The plan here
reproduces that, so acquisition feedback (scores aggregated per hole and per square) can
be tested against known truth:

- each square has a *quality* (``good``, ``medium``, ``bad``; see
  :class:`SquareQuality`) with its mean ice thickness, its fraction of bad exposures and
  the defects that occur in it;
- holes sit on the foil lattice (Quantifoil-like, ``hole_diameter`` and ``hole_pitch`` in
  µm) inside the square's open area; ice is thicker towards the bars;
- exposures are named as EPU names them,
  ``GridSquare_<n>/Data/FoilHole_<m>_Data_<k>.mrc`` (square ``n``, hole ``m``, exposure
  template ``k``), with stage positions in µm (x, y of the exposure's centre).

Exposures meant to show the carbon film (reason ``carbon``) are placed on the hole's
edge; thick-ice exposures take the holes nearest the bars.

Units: stage positions and distances in µm, ice thickness in nm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cryoflow.simulate.defects import DEFECTS

# Reasons an exposure is bad (the simulator's ``truth["reason"]``); "good" is the rest.
BAD_REASONS = DEFECTS
REASONS = ("good",) + BAD_REASONS

GRID_BAR_PITCH_UM = 84.7  # 300 mesh: 84.7 µm from one square to the next
GRID_BAR_WIDTH_UM = 26.0  # leaves ~58 µm of open square
GRID_RADIUS_UM = 1200.0  # squares are chosen within this radius of the grid centre


@dataclass(frozen=True)
class SquareQuality:
    """How good a grid square is.

    ``ice_mean`` and ``ice_spread`` (nm): mean ice thickness at the square's centre and
    its hole-to-hole standard deviation; ``ice_edge`` (nm): extra thickness at the edge of
    the open area (ice is thicker near the bars). ``bad_fraction``: fraction of the
    square's exposures that are bad. ``reasons``: relative weight of each bad reason.
    ``contamination_density``: ice/ethane balls per 100 µm² on the low-magnification image.
    ``condition``: a square-wide accident (``intact``, ``broken``, ``contaminated``,
    ``crystalline``; see :mod:`cryoflow.simulate.grid_model`).
    """

    name: str
    ice_mean: float
    ice_spread: float
    ice_edge: float
    bad_fraction: float
    reasons: dict[str, float]
    contamination_density: float = 0.5
    condition: str = "intact"


QUALITIES: dict[str, SquareQuality] = {
    "good": SquareQuality(
        "good",
        ice_mean=35.0,
        ice_spread=5.0,
        ice_edge=15.0,
        bad_fraction=0.05,
        reasons={"drift": 1.0, "astigmatism": 1.0, "no_particles": 0.5},
        contamination_density=0.2,
    ),
    "medium": SquareQuality(
        "medium",
        ice_mean=50.0,
        ice_spread=8.0,
        ice_edge=25.0,
        bad_fraction=0.2,
        reasons={
            "carbon": 1.0,
            "drift": 1.0,
            "aggregation": 1.0,
            "crowding": 1.0,
            "astigmatism": 0.7,
            "no_particles": 0.7,
            "crack": 0.5,
        },
        contamination_density=0.6,
    ),
    "bad": SquareQuality(
        "bad",
        ice_mean=75.0,
        ice_spread=15.0,
        ice_edge=60.0,
        bad_fraction=0.6,
        reasons={"thick_ice": 2.0, "crystalline_ice": 1.2, "contamination": 1.2, "empty": 0.8, "crack": 0.6},
        contamination_density=2.5,
    ),
}


@dataclass(frozen=True)
class Square:
    """A grid square: EPU id, quality and the stage position of its centre (µm)."""

    index: int
    square_id: int
    quality: SquareQuality
    stage_x: float
    stage_y: float

    @property
    def folder(self) -> str:
        return f"GridSquare_{self.square_id}"


@dataclass(frozen=True)
class Hole:
    """A foil hole: EPU id, its square, stage position (µm), ice thickness (nm)."""

    hole_id: int
    square_index: int
    stage_x: float
    stage_y: float
    ice_thickness: float
    broken: bool = False  # no ice at all (an "empty" hole)


@dataclass(frozen=True)
class Shot:
    """One exposure: where it is on the grid, its planned ice thickness and reason.

    ``reason`` is what the exposure is made to show (``good`` or one of
    :data:`BAD_REASONS`); the simulator's own truth is what gets written.
    """

    index: int
    square: Square
    hole: Hole
    template: int  # EPU's exposure template number within the hole (the ``k`` of Data_<k>)
    stage_x: float
    stage_y: float
    ice_thickness: float
    reason: str

    @property
    def name(self) -> str:
        """Path relative to the dataset folder, as EPU writes it."""
        return f"{self.square.folder}/Data/FoilHole_{self.hole.hole_id}_Data_{self.template}.mrc"


@dataclass
class GridPlan:
    """Squares, holes and exposures of a simulated grid session."""

    squares: list[Square]
    holes: list[Hole]
    shots: list[Shot]
    hole_diameter: float
    hole_pitch: float
    thick_ice_threshold: float
    extra: dict = field(default_factory=dict)

    def holes_of(self, square: Square) -> list[Hole]:
        return [h for h in self.holes if h.square_index == square.index]


def _allocate(weights: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` reasons in proportion to ``weights`` (largest remainder, seeded tie-breaks)."""
    if n <= 0 or not weights:
        return []
    names = list(weights)
    w = np.array([weights[k] for k in names], dtype=float)
    w = w / w.sum() * n
    counts = np.floor(w).astype(int)
    remainder = w - counts + rng.uniform(0, 1e-6, len(w))  # random tie-breaks
    for i in np.argsort(-remainder)[: n - counts.sum()]:
        counts[i] += 1
    out = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    rng.shuffle(out)
    return out


def _square_positions(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Stage positions (µm) of ``n`` distinct squares on a 300-mesh grid."""
    k = int(GRID_RADIUS_UM // GRID_BAR_PITCH_UM)
    cells = [
        (i, j)
        for i in range(-k, k + 1)
        for j in range(-k, k + 1)
        if math.hypot(i, j) * GRID_BAR_PITCH_UM <= GRID_RADIUS_UM
    ]
    chosen = rng.choice(len(cells), size=n, replace=False)
    return [(cells[c][0] * GRID_BAR_PITCH_UM, cells[c][1] * GRID_BAR_PITCH_UM) for c in chosen]


def plan_grid(
    n_micrographs: int,
    qualities: list[str] | tuple[str, ...],
    rng: np.random.Generator,
    shots_per_hole: int = 1,
    hole_diameter: float = 2.0,
    hole_pitch: float = 3.0,
    thick_ice_threshold: float = 100.0,
    field_of_view: float = 0.2,
) -> GridPlan:
    """Lay out ``n_micrographs`` exposures over squares of the given qualities.

    Parameters
    ----------
    n_micrographs: total number of exposures, spread evenly over the squares (the first
        squares take one more when it does not divide).
    qualities: one name of :data:`QUALITIES` per square, e.g. ``("good", "medium", "bad")``.
    rng: the random generator (the plan is a function of its state only).
    shots_per_hole: exposures per hole (EPU's template positions around the hole centre).
    hole_diameter, hole_pitch: foil geometry in µm (R2/1: 2 and 3).
    thick_ice_threshold: ice thicker than this (nm) is labelled ``thick_ice``; other
        exposures are kept below 90% of it.
    field_of_view: width of an exposure in µm (shots of a hole are spaced by it).
    """
    if n_micrographs < 1:
        raise ValueError("n_micrographs must be at least 1")
    if not qualities:
        raise ValueError("at least one square is needed")
    unknown = [q for q in qualities if q not in QUALITIES]
    if unknown:
        raise ValueError(f"unknown square quality {unknown[0]!r} (one of {', '.join(QUALITIES)})")
    n_squares = len(qualities)
    per_square = [n_micrographs // n_squares + (1 if i < n_micrographs % n_squares else 0) for i in range(n_squares)]
    positions = _square_positions(n_squares, rng)
    base_id = int(rng.integers(1_000_000, 9_000_000))
    squares = []
    for i, (quality, (x, y)) in enumerate(zip(qualities, positions, strict=True)):
        squares.append(Square(i, base_id + int(rng.integers(1, 400)) * 10 + i, QUALITIES[quality], x, y))

    holes: list[Hole] = []
    shots: list[Shot] = []
    open_half = (GRID_BAR_PITCH_UM - GRID_BAR_WIDTH_UM) / 2 - hole_pitch  # keep holes off the bars
    lattice = np.arange(-open_half, open_half + 1e-9, hole_pitch)
    hole_id = int(rng.integers(10_000_000, 40_000_000))
    for square, n in zip(squares, per_square, strict=True):
        if n == 0:
            continue
        q = square.quality
        n_holes = math.ceil(n / shots_per_hole)
        gx, gy = np.meshgrid(lattice, lattice)
        cells = np.stack([gx.ravel(), gy.ravel()], axis=1)
        picked = cells[np.sort(rng.choice(len(cells), size=min(n_holes, len(cells)), replace=False))]
        # EPU acquires hole by hole along rows: sort by y then x
        picked = picked[np.lexsort((picked[:, 0], picked[:, 1]))]
        r = np.hypot(picked[:, 0], picked[:, 1]) / (open_half * math.sqrt(2))
        ice = q.ice_mean + q.ice_edge * r**2 + rng.normal(0, q.ice_spread, len(picked))
        ice = np.clip(ice, 10.0, 0.9 * thick_ice_threshold)

        # which exposures are bad, and why
        n_bad = int(round(q.bad_fraction * n))
        reasons = _allocate(q.reasons, n_bad, rng)
        shot_hole = np.repeat(np.arange(len(picked)), shots_per_hole)[:n]
        shot_reason = np.array(["good"] * n, dtype=object)
        # thick ice: the holes with most ice (nearest the bars); then the other reasons at random
        n_thick = reasons.count("thick_ice")
        order_thick = np.argsort(-ice[shot_hole], kind="stable")
        thick_idx = order_thick[:n_thick]
        shot_reason[thick_idx] = "thick_ice"
        rest = [i for i in rng.permutation(n) if i not in set(thick_idx.tolist())]
        for idx, reason in zip(rest, [x for x in reasons if x != "thick_ice"], strict=False):
            shot_reason[idx] = reason

        hole_objs, square_shots, hole_id = expose_square(
            square,
            picked,
            ice,
            shot_reason,
            shots_per_hole,
            hole_id,
            len(shots),
            rng,
            hole_diameter=hole_diameter,
            field_of_view=field_of_view,
            thick_ice_threshold=thick_ice_threshold,
        )
        holes.extend(hole_objs)
        shots.extend(square_shots)
    return GridPlan(squares, holes, shots, hole_diameter, hole_pitch, thick_ice_threshold)


def expose_square(
    square: Square,
    picked: np.ndarray,
    ice: np.ndarray,
    shot_reason: np.ndarray,
    shots_per_hole: int,
    hole_id: int,
    first_shot: int,
    rng: np.random.Generator,
    hole_diameter: float,
    field_of_view: float,
    thick_ice_threshold: float,
    redraw_thick: bool = True,
) -> tuple[list[Hole], list[Shot], int]:
    """The holes and exposures of one square: ``(holes, shots, next hole id)``.

    ``picked`` ``(H, 2)``: hole centres relative to the square's centre (µm), in EPU's
    order; ``ice`` ``(H,)``: each hole's ice thickness (nm); ``shot_reason`` ``(N,)``: what
    each exposure shows (exposure ``s`` lies in hole ``s // shots_per_hole``). A hole with
    a ``thick_ice`` exposure gets a thickness of 1.25-2x the threshold when
    ``redraw_thick`` (else its own, at least 1.25x); one with an ``empty`` exposure is
    broken. Exposure ids start at ``first_shot``.
    """
    n = len(shot_reason)
    shot_hole = np.repeat(np.arange(len(picked)), shots_per_hole)[:n]
    hole_objs = []
    for j, (hx, hy) in enumerate(picked):
        reasons_here = set(shot_reason[shot_hole == j])
        thickness = float(ice[j])
        if "thick_ice" in reasons_here:
            if redraw_thick:
                thickness = float(thick_ice_threshold * rng.uniform(1.25, 2.0))
            else:
                thickness = max(thickness, 1.25 * thick_ice_threshold)
        hole = Hole(
            hole_id=hole_id,
            square_index=square.index,
            stage_x=round(float(square.stage_x + hx), 3),
            stage_y=round(float(square.stage_y + hy), 3),
            ice_thickness=round(thickness, 2),
            broken="empty" in reasons_here,
        )
        hole_id += int(rng.integers(1, 60))
        hole_objs.append(hole)

    shots: list[Shot] = []
    template: dict[int, int] = {}
    for s in range(n):
        hole = hole_objs[shot_hole[s]]
        k = template.get(hole.hole_id, 0)
        template[hole.hole_id] = k + 1
        reason = str(shot_reason[s])
        if reason == "carbon":  # straddle the hole's edge
            angle = rng.uniform(0, 2 * math.pi)
            dist = hole_diameter / 2
        elif shots_per_hole == 1:
            angle, dist = 0.0, 0.0
        else:  # template positions on a ring inside the hole
            angle = 2 * math.pi * k / shots_per_hole + math.pi / 4
            dist = min(hole_diameter / 2 - field_of_view / 2, field_of_view * 0.75)
        thickness = 0.0 if reason == "empty" else hole.ice_thickness
        if reason != "thick_ice" and reason != "empty":
            thickness = float(np.clip(thickness + rng.normal(0, 1.0), 10.0, 0.9 * thick_ice_threshold))
        shots.append(
            Shot(
                index=first_shot + s,
                square=square,
                hole=hole,
                template=k + 1,
                stage_x=round(hole.stage_x + dist * math.cos(angle), 3),
                stage_y=round(hole.stage_y + dist * math.sin(angle), 3),
                ice_thickness=round(thickness, 2),
                reason=reason,
            )
        )
    return hole_objs, shots, hole_id


def render_square(
    plan: GridPlan,
    square: Square,
    rng: np.random.Generator,
    size: int = 512,
    pixel_size_um: float = 0.17,
    dose: float = 300.0,
) -> np.ndarray:
    """A low-magnification image of ``square`` (float32 ``(size, size)``, counts).

    The image is centred on the square's stage position, ``pixel_size_um`` µm per pixel,
    x to the right and y down as stored (row ``i`` is stage ``y = centre + (i - size/2) *
    pixel``). It shows the grid bars (opaque), the carbon foil, the holes of the foil
    lattice (brighter; darker where the ice is thicker; bright where the hole is broken,
    dark speckled where the ice is crystalline), ice/ethane contamination balls and shot
    noise (``dose`` counts per pixel through vacuum).
    """
    half = size * pixel_size_um / 2
    coords = (np.arange(size) + 0.5) * pixel_size_um - half
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    q = square.quality
    inelastic = 350.0  # nm: mean free path of 300 kV electrons in ice (with an objective aperture)
    # foil: thin carbon plus the square's background ice; thicker towards the bars
    open_half = (GRID_BAR_PITCH_UM - GRID_BAR_WIDTH_UM) / 2
    r2 = (np.maximum(np.abs(xx), np.abs(yy)) / open_half) ** 2
    foil_ice = q.ice_mean + q.ice_edge * r2
    transmission = 0.55 * np.exp(-foil_ice / inelastic)
    # the foil lattice: every lattice hole has ice of the square's kind; the planned holes
    # carry their own thickness
    lattice = np.arange(-open_half, open_half + 1e-9, plan.hole_pitch)
    radius = plan.hole_diameter / 2
    hx, hy = np.meshgrid(lattice, lattice)
    planned = {
        (round(h.stage_x - square.stage_x, 2), round(h.stage_y - square.stage_y, 2)): h for h in plan.holes_of(square)
    }
    for x0, y0 in zip(hx.ravel(), hy.ravel(), strict=True):
        hole = planned.get((round(float(x0), 2), round(float(y0), 2)))
        if hole is not None:
            t = 0.0 if hole.broken else hole.ice_thickness
        else:
            rr = (x0 / open_half) ** 2 + (y0 / open_half) ** 2
            t = max(5.0, q.ice_mean + q.ice_edge * rr / 2 + rng.normal(0, q.ice_spread))
            if rng.uniform() < 0.02 * q.bad_fraction:
                t = 0.0  # an occasional broken hole
        i0, i1 = int((y0 - radius + half) / pixel_size_um), int((y0 + radius + half) / pixel_size_um) + 2
        j0, j1 = int((x0 - radius + half) / pixel_size_um), int((x0 + radius + half) / pixel_size_um) + 2
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, size), min(j1, size)
        if i0 >= i1 or j0 >= j1:
            continue
        sub = (xx[i0:i1, j0:j1] - x0) ** 2 + (yy[i0:i1, j0:j1] - y0) ** 2
        inside = 1.0 / (1.0 + np.exp((np.sqrt(sub) - radius) / (0.3 * pixel_size_um)))
        value = np.exp(-t / inelastic)
        block = transmission[i0:i1, j0:j1]
        transmission[i0:i1, j0:j1] = block * (1 - inside) + value * inside
    # grid bars (opaque, soft edge)
    bar = np.maximum(np.abs(xx), np.abs(yy)) - open_half
    transmission *= 1.0 / (1.0 + np.exp(bar / (1.5 * pixel_size_um)))
    # contamination balls: round, dark, 0.5-4 µm
    area = (2 * open_half) ** 2
    n_balls = rng.poisson(q.contamination_density * area / 100.0)
    for _ in range(n_balls):
        cx, cy = rng.uniform(-half, half, 2)
        rad = rng.uniform(0.25, 2.0)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / rad**2
        transmission *= 1.0 - 0.95 * np.exp(-(d2**2))
    # a little illumination falloff, then shot noise
    transmission *= 1.0 - 0.15 * (xx**2 + yy**2) / (2 * half**2)
    counts = rng.poisson(np.clip(transmission, 0, None) * dose).astype(np.float32)
    return counts
