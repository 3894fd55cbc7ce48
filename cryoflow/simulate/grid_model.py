"""A whole grid's square and hole qualities from how the grid was made (for acquisition planning).

:func:`cryoflow.simulate.grid.plan_grid` lays out exposures over squares whose quality is
named (``good``/``medium``/``bad``) with fixed bad fractions (5%, 20%, 60%): a fine test
fixture, but far more uniform than real grids. :func:`plan_session_grid` draws every
square's and hole's outcome from the physical causes instead, following what is
published about real grids:

- **Most of the grid is not worth imaging, and a minority of squares holds most of the
  good holes.** A single-particle dataset typically covers 2-5% of the grid's area, and
  micrograph quality varies both locally (within µm-sized areas of a square) and globally
  (across the grid); even after operators chose where to image, only ~50% of the
  exposures of one lab (2019-2021) had CTF fits better than 6 Å (Fan et al., cryoRL,
  eLife 2023, doi:10.7554/eLife.88640). SmartScope (Bouvette et al., Nat Commun 2022),
  Smart Leginon and Ptolemy (Cheng et al., Kim et al., IUCrJ 2023) exist because squares
  must be sorted into usable and unusable ones (cracked/broken, dry, contaminated, thick)
  before any hole is imaged.
- **Ice thickness is set by blotting and is not uniform.** The filter paper's fibres
  leave liquid films of irregular thickness from region to region of the same grid
  (Armstrong et al., Biophys J 2020, doi:10.1016/j.bpj.2019.12.017); blotting from one
  side leaves a gradient across the grid, from dry (empty holes) on one side to thick on
  the other, and the liquid held by the grid's rim leaves the outer squares thicker.
  Per-exposure ice thickness measured during collection (Rice et al., J Struct Biol
  2018, doi:10.1016/j.jsb.2018.06.007) spans from empty holes to far beyond 100 nm
  within one session. Modelled here as a log-thickness per square: the preparation's
  median, a linear gradient along a random blotting direction, a rim term and a
  log-normal square-to-square scatter; within a square the ice thickens towards the
  grid bars (the meniscus on the bars) with a small hole-to-hole scatter.
- **Thickness decides most outcomes.** Ice thinner than ~10 nm is a dry or broken film
  (``empty``); ice thinner than the particle (here 10-20 nm) pushes the particles out
  (``no_particles``, more often the thinner it is; Noble et al., eLife 2018: particles
  sit at the air-water interfaces, so films thinner than the particle exclude them);
  above the thick-ice threshold the exposure is ``thick_ice``.
- **Square-wide accidents.** Some squares are cracked or broken in handling and clipping
  (most holes ``empty`` or ``crack``), some carry ethane or ice contamination
  (``contamination``), some are partly devitrified (``crystalline_ice``); the
  preparation gives the share of each.
- Other defects (``drift``, ``astigmatism``, ``aggregation``, ``crowding``, ``carbon``,
  ``no_particles``) hit any exposure at a low rate.

The parameters of each preparation (:data:`PREPARATIONS`) are round numbers within the
ranges above, not fitted to any planner's result. Units: µm for positions, nm for ice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cryoflow.simulate.grid import (
    GRID_BAR_PITCH_UM,
    GRID_BAR_WIDTH_UM,
    GRID_RADIUS_UM,
    GridPlan,
    Hole,
    Shot,
    Square,
    SquareQuality,
    _square_positions,
    expose_square,
)

DRY_NM = 10.0  # thinner than this: no ice left in the hole (empty)
PARTICLE_NM = 20.0  # thinner than the particle: particles pushed out (no_particles)
OTHER_DEFECTS = {"drift": 1.0, "astigmatism": 1.0, "aggregation": 1.0, "crowding": 0.7, "carbon": 0.7}
CONDITIONS = ("intact", "broken", "contaminated", "crystalline")


@dataclass(frozen=True)
class GridPreparation:
    """How a grid was made: ice thickness across it and the share of square-wide accidents.

    ``ice_median_nm``: median ice thickness of a square at the grid centre (nm);
    ``gradient``: change of log thickness from the centre to ``GRID_RADIUS_UM`` along the
    blotting direction (0.9: ×2.5 thicker on one side, ×0.4 on the other); ``rim``: extra
    log thickness at ``GRID_RADIUS_UM`` (rises as r⁴); ``square_sigma``: square-to-square
    log-normal scatter; ``hole_sigma``: hole-to-hole scatter within a square;
    ``bar_thickening``: relative extra thickness at the corners of the open area;
    ``broken``, ``contaminated``, ``crystalline``: share of squares with that accident;
    ``defect_rate``: share of exposures with another defect (drift, astigmatism ...).
    """

    name: str
    ice_median_nm: float = 50.0
    gradient: float = 0.9
    rim: float = 0.6
    square_sigma: float = 0.4
    hole_sigma: float = 0.15
    bar_thickening: float = 0.6
    broken: float = 0.1
    contaminated: float = 0.08
    crystalline: float = 0.04
    defect_rate: float = 0.08


PREPARATIONS: dict[str, GridPreparation] = {
    "well blotted": GridPreparation(
        "well blotted", ice_median_nm=45.0, gradient=0.6, rim=0.4, square_sigma=0.3, broken=0.06, contaminated=0.05
    ),
    "typical": GridPreparation("typical"),
    "poorly blotted": GridPreparation(
        "poorly blotted", ice_median_nm=65.0, gradient=1.2, rim=0.8, square_sigma=0.5, broken=0.15, contaminated=0.1
    ),
}


def square_ice(prep: GridPreparation, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ice thickness (nm) at the centre of squares at stage positions ``xy`` ``(S, 2)`` µm."""
    angle = rng.uniform(0, 2 * math.pi)  # the blotting direction
    u = np.array([math.cos(angle), math.sin(angle)])
    along = xy @ u / GRID_RADIUS_UM
    r = np.hypot(xy[:, 0], xy[:, 1]) / GRID_RADIUS_UM
    log_t = (
        math.log(prep.ice_median_nm)
        + prep.gradient * along
        + prep.rim * r**4
        + rng.normal(0, prep.square_sigma, len(xy))
    )
    return np.exp(log_t)


def hole_reasons(
    ice: np.ndarray,
    condition: str,
    prep: GridPreparation,
    thick_ice_threshold: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """What each hole of a square shows (``good`` or a bad reason), from its ice (nm) and the square's condition."""
    n = len(ice)
    out = np.array(["good"] * n, dtype=object)
    names = list(OTHER_DEFECTS)
    w = np.array([OTHER_DEFECTS[k] for k in names])
    other = rng.uniform(size=n) < prep.defect_rate
    out[other] = rng.choice(names, size=int(other.sum()), p=w / w.sum())
    thin = rng.uniform(size=n) < np.clip((PARTICLE_NM - ice) / (PARTICLE_NM - DRY_NM), 0, 1)
    out[thin] = "no_particles"
    out[ice >= thick_ice_threshold] = "thick_ice"
    out[ice < DRY_NM] = "empty"
    if condition != "intact":
        hit = rng.uniform(size=n) < rng.uniform(0.5, 0.95)
        if condition == "broken":
            out[hit] = np.where(rng.uniform(size=int(hit.sum())) < 0.7, "empty", "crack")
        else:
            out[hit] = "contamination" if condition == "contaminated" else "crystalline_ice"
    return out


def quality_name(good_fraction: float) -> str:
    """``good`` (>= 70% good holes), ``medium`` (>= 35%) or ``bad``: the names :mod:`grid` uses."""
    return "good" if good_fraction >= 0.7 else "medium" if good_fraction >= 0.35 else "bad"


def plan_session_grid(
    n_squares: int,
    holes_per_square: int,
    rng: np.random.Generator,
    prep: GridPreparation | str = "typical",
    hole_diameter: float = 2.0,
    hole_pitch: float = 3.0,
    thick_ice_threshold: float = 100.0,
    field_of_view: float = 0.2,
) -> GridPlan:
    """``n_squares`` squares of ``holes_per_square`` holes (one exposure each) drawn from ``prep``.

    Squares are listed in the order drawn (random over the grid, as an operator picks
    them on the atlas); holes of a square in EPU's order (rows of the foil lattice). Each
    square's :class:`SquareQuality` carries its ice (``ice_mean`` at the centre,
    ``ice_edge`` extra at the corners, nm), its realised bad fraction and reasons, a name
    from :func:`quality_name` and its ``condition``. ``plan.extra`` holds the preparation's
    name, each square's centre ice and condition.
    """
    if isinstance(prep, str):
        prep = PREPARATIONS[prep]
    if n_squares < 1 or holes_per_square < 1:
        raise ValueError("n_squares and holes_per_square must be at least 1")
    xy = np.array(_square_positions(n_squares, rng), dtype=float)
    ice_centre = square_ice(prep, xy, rng)
    p_cond = np.array([0.0, prep.broken, prep.contaminated, prep.crystalline])
    p_cond[0] = max(0.0, 1.0 - p_cond[1:].sum())
    conditions = rng.choice(CONDITIONS, size=n_squares, p=p_cond / p_cond.sum())

    open_half = (GRID_BAR_PITCH_UM - GRID_BAR_WIDTH_UM) / 2 - hole_pitch
    lattice = np.arange(-open_half, open_half + 1e-9, hole_pitch)
    gx, gy = np.meshgrid(lattice, lattice)
    cells = np.stack([gx.ravel(), gy.ravel()], axis=1)
    base_id = int(rng.integers(1_000_000, 9_000_000))
    hole_id = int(rng.integers(10_000_000, 40_000_000))
    squares: list[Square] = []
    holes: list[Hole] = []
    shots: list[Shot] = []
    for i in range(n_squares):
        picked = cells[np.sort(rng.choice(len(cells), size=min(holes_per_square, len(cells)), replace=False))]
        picked = picked[np.lexsort((picked[:, 0], picked[:, 1]))]
        r = np.hypot(picked[:, 0], picked[:, 1]) / (open_half * math.sqrt(2))
        ice = ice_centre[i] * (1 + prep.bar_thickening * r**2) * np.exp(rng.normal(0, prep.hole_sigma, len(picked)))
        reasons = hole_reasons(ice, str(conditions[i]), prep, thick_ice_threshold, rng)
        bad = reasons != "good"
        counts = {k: float((reasons == k).sum()) for k in sorted(set(reasons[bad]))}
        quality = SquareQuality(
            quality_name(1.0 - bad.mean()),
            ice_mean=round(float(ice_centre[i]), 2),
            ice_spread=round(float(ice_centre[i] * prep.hole_sigma), 2),
            ice_edge=round(float(ice_centre[i] * prep.bar_thickening), 2),
            bad_fraction=round(float(bad.mean()), 4),
            reasons=counts,
            contamination_density=2.5 if conditions[i] == "contaminated" else 0.3,
            condition=str(conditions[i]),
        )
        square = Square(i, base_id + int(rng.integers(1, 400)) * 10 + i, quality, float(xy[i, 0]), float(xy[i, 1]))
        squares.append(square)
        ice_kept = np.where(reasons == "thick_ice", ice, np.minimum(ice, 0.9 * thick_ice_threshold))
        square_holes, square_shots, hole_id = expose_square(
            square,
            picked,
            ice_kept,
            reasons,
            1,
            hole_id,
            len(shots),
            rng,
            hole_diameter=hole_diameter,
            field_of_view=field_of_view,
            thick_ice_threshold=thick_ice_threshold,
            redraw_thick=False,
        )
        holes.extend(square_holes)
        shots.extend(square_shots)
    extra = {
        "preparation": prep.name,
        "square_ice_nm": [round(float(t), 2) for t in ice_centre],
        "square_condition": [str(c) for c in conditions],
    }
    return GridPlan(squares, holes, shots, hole_diameter, hole_pitch, thick_ice_threshold, extra)
