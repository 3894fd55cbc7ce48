"""The feedback report: grid map coloured by quality, ranked squares, the plan."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cryoflow.report import Report  # noqa: E402

INTRO = (
    "Where on the grid are the good micrographs, and where should the microscope go next? "
    "Every micrograph's score (the probability that it is good, from micassess) is placed on the "
    "grid from its file name or the acquisition metadata, averaged per hole and per square, and "
    "used to predict the holes not imaged yet (nearby holes and the square's own record count most). "
    "A plan then orders the remaining holes under the time budget, trading the expected number of "
    "good micrographs against the time spent moving between squares. feedback.json holds the same "
    "decisions for an acquisition program."
)
CMAP = "RdYlGn"


def _grid_map(squares: pd.DataFrame, holes: pd.DataFrame, plan: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 6))
    norm = matplotlib.colors.Normalize(0, 1)
    cmap = plt.get_cmap(CMAP)
    pitch = 58.0  # µm of open area drawn per square (300 mesh)
    for r in squares.itertuples():
        if not np.isfinite(r.x_um):
            continue
        ax.add_patch(
            plt.Rectangle(
                (r.x_um - pitch / 2, r.y_um - pitch / 2), pitch, pitch, color=cmap(norm(r.quality)), alpha=0.35, lw=0
            )
        )
        edge = {"continue": "#1a7f37", "skip": "#b42318", "done": "#555555"}[r.decision]
        ax.add_patch(plt.Rectangle((r.x_um - pitch / 2, r.y_um - pitch / 2), pitch, pitch, fill=False, ec=edge, lw=1.5))
    todo = holes[~holes["imaged"]]
    ax.scatter(todo["x_um"], todo["y_um"], c=todo["predicted_quality"], cmap=CMAP, norm=norm, s=3, alpha=0.5, lw=0)
    done = holes[holes["imaged"]]
    sc = ax.scatter(done["x_um"], done["y_um"], c=done["quality"], cmap=CMAP, norm=norm, s=14, ec="k", lw=0.3)
    if len(plan):
        centres = plan.drop_duplicates("square", keep="first")
        ax.plot(centres["x_um"], centres["y_um"], "-", color="#1f3b73", lw=1, alpha=0.7)
        for k, r in enumerate(centres.itertuples(), start=1):
            ax.annotate(str(k), (r.x_um, r.y_um), fontsize=8, color="#1f3b73", weight="bold")
    fig.colorbar(sc, ax=ax, label="quality (P(good))")
    ax.set_aspect("equal")
    ax.set_xlabel("stage x (µm)")
    ax.set_ylabel("stage y (µm)")
    ax.invert_yaxis()
    return fig


def write_report(
    out: Path, doc: dict, mics, squares: pd.DataFrame, holes: pd.DataFrame, plan: pd.DataFrame, summary: dict
):
    """Write report.html, figures and summary.json into ``out``."""
    report = Report("Feedback to acquisition", step="feedback", intro=INTRO)
    grid = doc["grid"]
    ov = report.section("Overview", "What has been collected and what the plan proposes.")
    ov.metric("Micrographs", grid["micrographs"], "", "Micrographs with scores in the run folder.")
    ov.metric("Good fraction", grid["good_fraction"], "", "Share of micrographs micassess calls good.")
    ov.metric("Squares to continue", summary["squares_continue"], "", "Squares with holes in the plan.")
    ov.metric(
        "Squares to skip",
        summary["squares_skip"],
        "",
        "Squares with holes left that the plan does not visit: better use of the time exists elsewhere.",
    )
    ov.metric(
        "Planned exposures", summary["planned_exposures"], "", f"Within the budget of {doc['budget_s'] / 3600:.3g} h."
    )
    ov.metric(
        "Expected good micrographs", summary["expected_good"], "", "Sum of the predicted P(good) of the planned holes."
    )
    ov.metric(
        "Long-run rate",
        doc["long_run_rate_per_min"],
        "good/min",
        "What exploring unvisited squares is expected to give, moves included; a square is left when its next hole is worth less.",
    )
    ov.text("Sources: " + "; ".join(f"{k}: {v}" for k, v in doc["sources"].items()))
    m = report.section(
        "Grid map",
        "Squares (shaded by their predicted quality; outlined green: continue, red: skip, grey: done), imaged holes "
        "(outlined dots, their observed quality) and remaining holes (small dots, predicted). The line links the "
        "squares in the order the plan visits them.",
    )
    m.figure(_grid_map(squares, holes, plan), "Grid map coloured by quality.")
    s = report.section("Squares", "Ranked by predicted quality, with the decision and why.")
    s.table(
        squares[
            [
                "rank",
                "square",
                "decision",
                "quality",
                "micrographs",
                "good",
                "holes_remaining",
                "holes_planned",
                "expected_good_per_min",
                "main_reason",
                "reason",
            ]
        ],
        caption="expected_good_per_min: good micrographs per minute from a visit now, the move included.",
    )
    p = report.section("Plan", "The remaining holes in the order to acquire them, within the time budget.")
    if len(plan):
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.plot(plan["elapsed_s"] / 60, np.cumsum(plan["predicted_quality"]), color="#1f6f8b")
        ax.set_xlabel("minutes from now")
        ax.set_ylabel("expected good micrographs")
        p.figure(fig, "Expected good micrographs along the plan.")
        p.table(plan, caption="The first exposures of the plan (all of them in plan.csv).", max_rows=60)
    else:
        p.text("Nothing to plan: no remaining target is worth its time, or none is known (give --nav or --targets).")
    h = report.section("Holes", "The remaining holes predicted best, and the imaged holes that did worst.")
    todo = holes[~holes["imaged"]].sort_values("predicted_quality", ascending=False)
    h.table(todo, caption="Remaining holes, best predicted first (all in holes.csv).", max_rows=30)
    worst = holes[holes["imaged"]].sort_values("quality")
    h.table(worst, caption="Imaged holes, worst first.", max_rows=30)
    from cryoflow.feedback.schema import describe

    report.section("feedback.json", "The schema of the machine-readable decisions.").text(describe())
    report.write(out, summary=summary)
