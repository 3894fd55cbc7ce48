"""An acquisition simulator: replay a session that follows cryoflow's plan against one that goes in order.

The grid is the simulator's physical grid model
(:func:`cryoflow.simulate.grid_model.plan_session_grid`: ice from blotting gradients, the
grid rim and square-to-square scatter; broken, contaminated and devitrified squares), each
square with its holes (one exposure per hole) and each exposure's truth (good, or the
reason it is bad); ``weights`` selects the former named-quality grids
(:func:`cryoflow.simulate.grid.plan_grid`). No micrograph is rendered: after an exposure the
pipeline's score arrives from :class:`ScoreModel`, a noisy P(good) calibrated to
micassess (about 97% of exposures on the right side of 0.5, as its held-out benchmark).

Two strategies spend the same time budget with the same :class:`~cryoflow.feedback.planner.Costs`:

- **in order**: the squares in the order listed (as an operator selects them in EPU), every
  hole of a square in EPU's order (rows of the foil lattice), then the next square;
- **plan**: online, after each exposure the score comes in, the spatial model updates and
  :meth:`PlanState.next_target` chooses the next hole (it may leave a square, skip it, or
  come back to one).

Reported: good exposures (truth) per hour of microscope time for both, and their ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoflow.feedback.planner import Costs, PlanState
from cryoflow.feedback.spatial import SpatialModel
from cryoflow.simulate.grid import GridPlan, plan_grid
from cryoflow.simulate.grid_model import plan_session_grid

QUALITY_WEIGHTS = {"good": 0.3, "medium": 0.3, "bad": 0.4}  # share of squares of each quality


@dataclass(frozen=True)
class ScoreModel:
    """P(good) of an exposure as micassess reports it: ``logit ~ N(±separation, spread)``.

    The sign is + for a good exposure, - for a bad one. With the defaults, 2.7% of
    exposures fall on the wrong side of 0.5 (micassess: >= 97% accuracy held out).
    """

    separation: float = 2.5
    spread: float = 1.3

    def draw(self, good: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """P(good) for exposures whose truth is ``good`` (bool array)."""
        z = np.where(good, self.separation, -self.separation) + rng.normal(0, self.spread, len(good))
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Replay:
    """One simulated session: exposures taken, good ones (truth), seconds used, squares visited."""

    strategy: str
    exposures: int
    good: int
    seconds: float
    squares_visited: int

    @property
    def good_per_hour(self) -> float:
        """Good exposures per hour of microscope time used."""
        return 3600.0 * self.good / self.seconds if self.seconds > 0 else 0.0


def simulated_grid(
    seed: int,
    n_squares: int = 24,
    holes_per_square: int = 60,
    weights: dict | None = None,
    prep: str = "typical",
) -> GridPlan:
    """A simulated grid of ``n_squares`` squares (seeded).

    By default the squares and holes follow the physical grid model
    (:func:`cryoflow.simulate.grid_model.plan_session_grid` with preparation ``prep``);
    with ``weights`` (share of ``good``/``medium``/``bad`` squares) the named qualities of
    :func:`cryoflow.simulate.grid.plan_grid` instead (fixed bad fractions 5/20/60%).
    """
    if weights is None:
        return plan_session_grid(n_squares, holes_per_square, np.random.default_rng([seed, 8]), prep)
    rng = np.random.default_rng([seed, 8])
    names = list(weights)
    w = np.array([weights[k] for k in names], dtype=float)
    qualities = list(rng.choice(names, size=n_squares, p=w / w.sum()))
    return plan_grid(n_squares * holes_per_square, qualities, rng)


def grid_targets(plan: GridPlan) -> tuple[pd.DataFrame, np.ndarray]:
    """Targets (one per hole, in EPU's acquisition order) and each one's truth (good: True)."""
    rows, truth = [], []
    for shot in plan.shots:
        rows.append(
            {
                "grid": "1",
                "square": str(shot.square.square_id),
                "hole": str(shot.hole.hole_id),
                "x_um": shot.hole.stage_x,
                "y_um": shot.hole.stage_y,
            }
        )
        truth.append(shot.reason == "good")
    return pd.DataFrame(rows), np.array(truth)


def replay_in_order(targets: pd.DataFrame, truth: np.ndarray, costs: Costs, budget_s: float) -> Replay:
    """Visit squares in order and image every hole of each until the budget is spent."""
    t, good, n, current, visited = 0.0, 0, 0, None, set()
    for i, square in enumerate(targets["square"]):
        step = costs.exposure_s + (0.0 if square == current else costs.square_move_s if current else 0.0)
        if t + step > budget_s:
            break
        t += step
        current = square
        visited.add(square)
        n += 1
        good += int(truth[i])
    return Replay("in order", n, good, t, len(visited))


def replay_plan(
    targets: pd.DataFrame,
    truth: np.ndarray,
    scores: np.ndarray,
    costs: Costs,
    budget_s: float,
    model: SpatialModel | None = None,
) -> Replay:
    """Follow cryoflow's plan online: choose, expose, score, update, until the budget is spent."""
    state = PlanState(targets, model=model, costs=costs)
    t, good, n, current, visited = 0.0, 0, 0, None, set()
    first = targets["square"].iloc[0]  # start where the in-order session starts
    while True:
        step = state.next_target(current if current is not None else first, budget_s - t)
        if step is None:
            break
        i, seconds = step
        t += seconds
        current = state.square_of[i]
        visited.add(current)
        n += 1
        good += int(truth[i])
        state.observe(i, scores[i])
    return Replay("plan", n, good, t, len(visited))


def compare(
    seed: int,
    budget_s: float = 2 * 3600.0,
    costs: Costs | None = None,
    n_squares: int = 24,
    holes_per_square: int = 60,
    weights: dict | None = None,
    score_model: ScoreModel | None = None,
    prep: str = "typical",
) -> dict:
    """Both strategies on one simulated grid; returns their figures and the ratio (plan / in order)."""
    costs = costs or Costs()
    plan = simulated_grid(seed, n_squares, holes_per_square, weights, prep)
    targets, truth = grid_targets(plan)
    scores = (score_model or ScoreModel()).draw(truth, np.random.default_rng([seed, 9]))
    ordered = replay_in_order(targets, truth, costs, budget_s)
    planned = replay_plan(targets, truth, scores, costs, budget_s)
    return {
        "seed": seed,
        "squares": {q: sum(1 for s in plan.squares if s.quality.name == q) for q in ("good", "medium", "bad")},
        "in_order": ordered,
        "plan": planned,
        "ratio": planned.good_per_hour / ordered.good_per_hour if ordered.good_per_hour else float("inf"),
    }


def simulated_run(plan: GridPlan, folder, imaged: int, seed: int = 0, score_model: ScoreModel | None = None):
    """Write a run folder as if the first ``imaged`` exposures of ``plan`` (EPU order) had been processed.

    ``folder/micassess/micrographs_good.star`` + ``micrographs_rejected.star`` (P(good) from
    :class:`ScoreModel`, reason: the truth's reason for rejected ones), ``folder/pick/summary.json``
    (picks per micrograph), ``folder/simulate/truth/micrographs_truth.star`` (positions) and
    ``folder/simulate/dataset.json`` (the grid layout). For tests and demonstrations of
    ``cryoflow feedback`` without rendering micrographs. Returns the folder.
    """
    import json
    from pathlib import Path

    from cryoflow.io import StarTable, make_optics, write_table
    from cryoflow.io.atomic import write_text

    folder = Path(folder)
    shots = plan.shots[:imaged]
    truth = np.array([s.reason == "good" for s in shots])
    rng = np.random.default_rng([seed, 10])
    p = (score_model or ScoreModel()).draw(truth, rng)
    names = [f"simulate/{s.name}" for s in shots]
    table = pd.DataFrame(
        {
            "rlnMicrographName": names,
            "rlnOpticsGroup": 1,
            "rlnCtfMaxResolution": np.where(
                truth, rng.uniform(3.0, 5.0, len(shots)), rng.uniform(5.0, 12.0, len(shots))
            ),
            "cryoflowRelativeIceThickness": [round(s.ice_thickness / 100, 3) for s in shots],
            "cryoflowMicassessPGood": np.round(p, 5),
            "cryoflowMicassessReason": [
                "good" if q >= 0.5 else (s.reason if s.reason != "good" else "poor_ctf")
                for q, s in zip(p, shots, strict=True)
            ],
        }
    )
    optics = make_optics(1.0, 300, 2.7, 0.07)
    good = table["cryoflowMicassessReason"] == "good"
    write_table(
        folder / "micassess" / "micrographs_good.star",
        StarTable(optics, table[good].reset_index(drop=True), "micrographs"),
    )
    write_table(
        folder / "micassess" / "micrographs_rejected.star",
        StarTable(optics, table[~good].reset_index(drop=True), "micrographs"),
    )
    picks = {n: int(rng.poisson(60 if t else 8)) for n, t in zip(names, truth, strict=True)}
    write_text(folder / "pick" / "summary.json", json.dumps({"step": "pick", "picks_per_micrograph": picks}))
    positions = pd.DataFrame(
        {
            "rlnMicrographName": [s.name for s in shots],
            "rlnOpticsGroup": 1,
            "cfGridSquare": [s.square.square_id for s in shots],
            "cfFoilHole": [s.hole.hole_id for s in shots],
            "cfStageX": [s.stage_x for s in shots],
            "cfStageY": [s.stage_y for s in shots],
        }
    )
    write_table(folder / "simulate" / "truth" / "micrographs_truth.star", StarTable(optics, positions, "micrographs"))
    grid = {
        "hole_pitch_um": plan.hole_pitch,
        "squares": [
            {
                "cfGridSquare": s.square_id,
                "cfSquareQuality": s.quality.name,
                "cfStageX": s.stage_x,
                "cfStageY": s.stage_y,
            }
            for s in plan.squares
        ],
        "holes": [
            {"hole_id": h.hole_id, "square_index": h.square_index, "stage_x": h.stage_x, "stage_y": h.stage_y}
            for h in plan.holes
        ],
    }
    write_text(folder / "simulate" / "dataset.json", json.dumps({"grid": grid}))
    return folder
