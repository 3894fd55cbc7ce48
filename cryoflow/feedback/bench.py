"""``cryoflow bench feedback``: good micrographs per hour, following cryoflow's plan vs visiting squares in order.

On simulated grids (:mod:`cryoflow.feedback.acquisition`: squares and holes drawn from the
physical grid model :mod:`cryoflow.simulate.grid_model`, one exposure per hole, scores
with micassess-like noise) both strategies spend the same budget with the same costs.
Printed per grid preparation (well blotted, typical, poorly blotted): each seed's ratio
plan / in order, then good micrographs per hour of each strategy over the seeds (mean ±
standard deviation), the ratio (target >= 1.5), and the ceiling: an oracle that knows
every square's true good fraction and visits the best squares first, every hole.
``--legacy`` runs the former grids instead (named square qualities good/medium/bad with
fixed bad fractions 5/20/60%, mixed as in :data:`COMPOSITIONS`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from cryoflow.feedback.acquisition import compare, grid_targets, replay_in_order, simulated_grid
from cryoflow.feedback.planner import Costs
from cryoflow.simulate.grid_model import PREPARATIONS

COMPOSITIONS = {
    "even": {"good": 1 / 3, "medium": 1 / 3, "bad": 1 / 3},
    "typical": {"good": 0.3, "medium": 0.3, "bad": 0.4},
    "mostly bad": {"good": 0.15, "medium": 0.15, "bad": 0.7},
}


def oracle(
    seed: int, costs: Costs, budget_s: float, n_squares: int, holes: int, weights: dict | None, prep: str = "typical"
) -> float:
    """Good per hour when every square's true good fraction is known: best squares first, every hole."""
    plan = simulated_grid(seed, n_squares, holes, weights, prep)
    targets, truth = grid_targets(plan)
    frac = pd.Series(truth).groupby(targets["square"].to_numpy()).mean()
    order = np.argsort(-frac.reindex(targets["square"]).to_numpy(), kind="stable")
    return replay_in_order(targets.iloc[order].reset_index(drop=True), truth[order], costs, budget_s).good_per_hour


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cryoflow bench feedback", description=__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="simulated grids per composition")
    parser.add_argument("--budget", type=float, default=2.0, metavar="HOURS", help="microscope time, hours")
    parser.add_argument("--squares", type=int, default=24, help="squares per grid")
    parser.add_argument("--holes", type=int, default=60, help="holes per square")
    parser.add_argument(
        "--exposure", type=float, default=10.0, metavar="S", help="seconds per exposure incl. hole move"
    )
    parser.add_argument("--square-move", type=float, default=60.0, metavar="S", help="seconds per square move")
    parser.add_argument("--prep", choices=list(PREPARATIONS), action="append", help="grid preparation; default: all")
    parser.add_argument("--legacy", action="store_true", help="the former named-quality grids (compositions)")
    parser.add_argument(
        "--composition", choices=list(COMPOSITIONS), action="append", help="with --legacy; default: all"
    )
    args = parser.parse_args(argv)
    costs = Costs(args.exposure, args.square_move)
    budget = args.budget * 3600
    figures: dict = {
        "budget_h": args.budget,
        "costs": {"exposure_s": costs.exposure_s, "square_move_s": costs.square_move_s},
        "squares": args.squares,
        "holes_per_square": args.holes,
        "compositions": {},
    }
    print(
        f"acquisition simulator: {args.squares} squares x {args.holes} holes, budget {args.budget:g} h, "
        f"exposure {costs.exposure_s:g} s, square move {costs.square_move_s:g} s, {args.seeds} seeds"
    )
    print(f"{'grid':32s} {'in order /h':>14s} {'plan /h':>14s} {'ratio':>12s} {'oracle /h':>10s} {'ratio':>6s}")
    t0 = time.perf_counter()
    cases = (
        [
            (
                f"{n} ({COMPOSITIONS[n]['good']:.2f}/{COMPOSITIONS[n]['medium']:.2f}/{COMPOSITIONS[n]['bad']:.2f})",
                COMPOSITIONS[n],
                "typical",
            )
            for n in args.composition or list(COMPOSITIONS)
        ]
        if args.legacy
        else [(n, None, n) for n in args.prep or list(PREPARATIONS)]
    )
    for label, w, prep in cases:
        rows = [compare(seed, budget, costs, args.squares, args.holes, w, prep=prep) for seed in range(args.seeds)]
        ordered = np.array([r["in_order"].good_per_hour for r in rows])
        planned = np.array([r["plan"].good_per_hour for r in rows])
        ratio = planned / ordered
        best = np.array([oracle(s, costs, budget, args.squares, args.holes, w, prep) for s in range(args.seeds)])
        print(
            f"{label:32s} {ordered.mean():7.1f} ± {ordered.std():4.1f} {planned.mean():7.1f} ± {planned.std():4.1f} "
            f"{ratio.mean():5.2f} ± {ratio.std():4.2f} {best.mean():10.1f} {(best / ordered).mean():6.2f}"
        )
        print(
            f"{'':32s} per seed: plan/in order {' '.join(f'{r:.2f}' for r in ratio)}; "
            f"oracle/in order {' '.join(f'{r:.2f}' for r in best / ordered)}"
        )
        figures["compositions"][label] = {
            "weights": w,
            "preparation": None if w else prep,
            "in_order_good_per_hour": {"mean": float(ordered.mean()), "std": float(ordered.std())},
            "plan_good_per_hour": {"mean": float(planned.mean()), "std": float(planned.std())},
            "ratio": {"mean": float(ratio.mean()), "std": float(ratio.std()), "min": float(ratio.min())},
            "ratio_per_seed": [round(float(r), 3) for r in ratio],
            "oracle_good_per_hour": float(best.mean()),
            "oracle_ratio": float((best / ordered).mean()),
            "target_ratio": 1.5,
        }
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"target: plan >= 1.5x in order; oracle: knows each square's truth (the ceiling). {figures['seconds']} s")
    return figures
