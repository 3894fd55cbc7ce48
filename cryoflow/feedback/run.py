"""``cryoflow feedback``: scores of a run folder turned into acquisition decisions.

Reads a run folder (:mod:`cryoflow.feedback.scores`), places every micrograph on the grid
(:mod:`cryoflow.feedback.locations`), aggregates to holes and squares
(:mod:`cryoflow.feedback.aggregate`), predicts the holes not yet imaged
(:mod:`cryoflow.feedback.spatial`) and plans the rest of the session under a time budget
(:mod:`cryoflow.feedback.planner`).

Outputs in ``out`` (built in a temporary folder beside it and renamed when complete):
``feedback.json`` (schema ``cryoflow.feedback/1``, :mod:`cryoflow.feedback.schema`),
``squares.csv``, ``holes.csv``, ``plan.csv``, ``<navigator>_cryoflow.nav`` when a
navigator was given (points flagged Acquire 1/0), ``report.html`` + ``figures/``, ``summary.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from cryoflow.errors import CryoflowError
from cryoflow.feedback.aggregate import per_grid, per_hole, per_micrograph, per_square
from cryoflow.feedback.locations import UNPLACED, locate
from cryoflow.feedback.planner import Costs, PlanState, best_visit
from cryoflow.feedback.schema import HOLE, PLAN, SCHEMA, SQUARE
from cryoflow.feedback.scores import read_scores
from cryoflow.feedback.spatial import SpatialModel


def _square_table(
    state: PlanState, squares: pd.DataFrame, seen: pd.DataFrame, plan: pd.DataFrame, rate_star: float, current
):
    c = state.costs
    seen = seen.set_index("square") if len(seen) else seen
    rows = []
    for _, sq in squares.iterrows():
        s = sq["square"]
        if s not in state.members:
            continue
        idx, p = state.ranked(s)
        move = 0.0 if s == current else c.square_move_s
        rate, _ = best_visit(p, move, c.exposure_s, len(p))
        remaining = int(state.remaining[state.members[s]].sum())
        planned = int((plan["square"] == s).sum())
        mu = state.square_mean[s]
        row = {k: sq[k] for k in ("grid", "square", "x_um", "y_um")}
        stats = seen.loc[s] if len(seen) and s in seen.index else None
        for k in ("micrographs", "good"):
            row[k] = int(stats[k]) if stats is not None else 0
        row["good_fraction"] = float(stats["good_fraction"]) if stats is not None else float("nan")
        row["quality"] = round(mu, 4)
        for k in ("ctf_resolution_A", "ice", "picks_per_micrograph", "good_particles_per_micrograph"):
            row[k] = float(stats[k]) if stats is not None else float("nan")
        row["main_reason"] = stats["main_reason"] if stats is not None else ""
        row["holes_imaged"] = int(stats["holes_imaged"]) if stats is not None else 0
        row["holes_remaining"] = remaining
        row["holes_planned"] = planned
        row["expected_good_per_min"] = round(60 * rate, 3)
        if s == UNPLACED:
            row["decision"], row["reason"] = "done", "micrographs with no location: counted for the grid, not placed"
        elif remaining == 0:
            row["decision"], row["reason"] = "done", "no target left"
        elif planned:
            row["decision"] = "continue"
            row["reason"] = f"{planned} of {remaining} remaining holes in the plan; predicted P(good) {mu:.2f}"
        else:
            row["decision"] = "skip"
            if not row["micrographs"]:
                why = f"not imaged yet; the budget is spent on squares known to be better (prior P(good) {mu:.2f})"
            else:
                why = f"predicted P(good) {mu:.2f}: {60 * rate:.2f} good/min, below what the plan gets elsewhere"
                if rate_star > 0:
                    why += f" (exploring: {60 * rate_star:.2f} good/min)"
            if row["main_reason"]:
                why += f"; mostly {row['main_reason']}"
            row["reason"] = why
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(SQUARE))
    table = table.sort_values(["quality", "micrographs"], ascending=[False, False], kind="stable").reset_index(
        drop=True
    )
    table["rank"] = np.arange(1, len(table) + 1)
    return table[list(SQUARE)]


def _hole_table(state: PlanState, holes: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    t = state.targets.copy()
    seen = holes.set_index(["square", "hole"])
    key = list(zip(t["square"], t["hole"], strict=True))
    t["imaged"] = [k in seen.index for k in key]
    t["micrographs"] = [int(seen.loc[k, "micrographs"]) if k in seen.index else 0 for k in key]
    t["quality"] = [float(seen.loc[k, "quality"]) if k in seen.index else float("nan") for k in key]
    t["predicted_quality"] = np.round(state.p, 4)
    order = {(s, h): int(o) for s, h, o in zip(plan["square"], plan["hole"], plan["order"], strict=True)}
    t["plan_order"] = [order.get(k) for k in key]
    t["decision"] = np.where(t["imaged"], "done", np.where(t["plan_order"].notna(), "acquire", "skip"))
    if "nav_label" not in t:
        t["nav_label"] = ""
    return t[list(HOLE)]


def run_feedback(
    run: str | os.PathLike,
    out: str | os.PathLike,
    locations: str | os.PathLike | None = None,
    mdoc: str | os.PathLike | None = None,
    nav: str | os.PathLike | None = None,
    targets: str | os.PathLike | None = None,
    budget_s: float = 2 * 3600.0,
    costs: Costs | None = None,
    min_quality: float = 0.0,
    model: SpatialModel | None = None,
    report: bool = True,
) -> dict:
    """Aggregate, predict, plan and write every output into ``out`` (must not exist or be empty).

    ``budget_s``: microscope time left for the session, seconds. ``min_quality``: holes
    predicted below this P(good) are never planned. ``report``: False writes summary.json
    without report.html and its figures (``cryoflow watch`` between report refreshes).
    Returns the summary.
    """
    from cryoflow import __version__
    from cryoflow.feedback.navigator import flag_items, nav_text, read_nav
    from cryoflow.io import atomic_dir
    from cryoflow.report.builder import write_summary

    run, out = Path(run), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CryoflowError(out, "output folder exists and is not empty; choose another --out (nothing was written)")
    if budget_s <= 0:
        raise CryoflowError(None, f"--budget must be positive, got {budget_s / 3600:g} h")
    if not 0 <= min_quality < 1:
        raise CryoflowError(None, f"--min-quality must be in [0, 1), got {min_quality}")
    costs = costs or Costs()
    scores, sources = read_scores(run)
    navigator = read_nav(nav) if nav else None
    layout = locate(scores, run, locations, mdoc, navigator, targets)
    sources.update(layout.sources)
    mics = per_micrograph(scores, layout.micrographs)
    holes = per_hole(mics)
    seen_squares = per_square(mics)

    state = PlanState(layout.targets, model=model, costs=costs, min_quality=min_quality)
    index = {(s, h): i for i, (s, h) in enumerate(zip(state.targets["square"], state.targets["hole"], strict=True))}
    for s, h, q in zip(holes["square"], holes["hole"], holes["quality"], strict=True):
        state.observe(index[(s, h)], q, refresh=False)
    state.refresh()
    placed = mics["square"][mics["square"] != UNPLACED]
    current = str(placed.iloc[-1]) if len(placed) else UNPLACED  # where the stage is now
    rate_star = state.long_run_rate()
    plan = state.plan(current, budget_s)
    squares = _square_table(state, layout.squares, seen_squares, plan, rate_star, current)
    hole_table = _hole_table(state, holes, plan)
    grid = per_grid(mics)
    doc = {
        "schema": SCHEMA,
        "cryoflow_version": __version__,
        "run": str(run),
        "sources": sources,
        "quality": "probability that an exposure there is good (micassess P(good); CTF-based without micassess)",
        "costs": asdict(costs),
        "budget_s": float(budget_s),
        "long_run_rate_per_min": round(60 * rate_star, 4),
        "grid": grid,
        "squares": squares.to_dict("records"),
        "holes": hole_table.to_dict("records"),
        "plan": plan[list(PLAN)].to_dict("records"),
    }
    counts = squares["decision"].value_counts()
    summary = {
        "squares": len(squares),
        "squares_continue": int(counts.get("continue", 0)),
        "squares_skip": int(counts.get("skip", 0)),
        "holes_imaged": int(hole_table["imaged"].sum()),
        "holes_remaining": int((~hole_table["imaged"]).sum()),
        "planned_exposures": len(plan),
        "expected_good": round(float(plan["predicted_quality"].sum()), 1),
        "plan_hours": round(float(plan["elapsed_s"].iloc[-1]) / 3600, 3) if len(plan) else 0.0,
        "budget_hours": budget_s / 3600,
        "micrographs": grid["micrographs"],
        "good_fraction": grid["good_fraction"],
        "stage": {"micrographs": grid["micrographs"]},
        "schema": SCHEMA,
        "outputs": {"feedback": "feedback.json", "squares": "squares.csv", "holes": "holes.csv", "plan": "plan.csv"},
    }
    with atomic_dir(out) as tmp:
        write_summary(tmp / "feedback.json", doc)
        squares.to_csv(tmp / "squares.csv", index=False, float_format="%.6g")
        hole_table.to_csv(tmp / "holes.csv", index=False, float_format="%.6g")
        plan.to_csv(tmp / "plan.csv", index=False, float_format="%.6g")
        if navigator is not None:
            decisions = {}
            for r in hole_table.itertuples():
                if r.nav_label:
                    note = f"{r.decision}, P(good) {r.predicted_quality:.2f}" + (
                        f", #{int(r.plan_order)}" if r.decision == "acquire" else ""
                    )
                    decisions[r.nav_label] = (r.decision == "acquire", note)
            name = f"{Path(nav).stem}_cryoflow.nav"
            (tmp / name).write_text(nav_text(flag_items(navigator, decisions)), encoding="utf-8")
            summary["outputs"]["navigator"] = name
        if report:
            from cryoflow.feedback.report import write_report

            write_report(tmp, doc, mics, squares, hole_table, plan, summary)
        else:
            write_summary(tmp / "summary.json", {"step": "feedback", **summary})
    return json.loads(json.dumps(summary, default=str))
