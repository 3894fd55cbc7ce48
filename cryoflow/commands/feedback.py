"""Turn a run's scores into acquisition decisions: squares to continue or skip, holes to acquire, a plan.

Reads RUN/micassess (or RUN/ctf) and RUN/pick, places every micrograph on the grid (EPU or
Leginon file names, SerialEM .mdoc files, a navigator, or your CSV), aggregates the scores
per hole and square, predicts the holes not imaged yet and orders them under a time budget.
Writes feedback.json (schema cryoflow.feedback/1), squares.csv, holes.csv, plan.csv, a
flagged copy of the navigator when --nav is given, report.html and summary.json into --out.

Examples::

    cryoflow feedback --run demo_run --out demo_run/feedback
    cryoflow feedback --run run --out run/feedback --budget 6 --exposure 8 --square-move 90
    # SerialEM: stage positions from the .mdoc files, holes and squares from the navigator;
    # the copy run/feedback/session_cryoflow.nav has Acquire = 1 on the holes to take
    cryoflow feedback --run run --out run/feedback --mdoc frames/ --nav session.nav
    # any other program: a CSV with columns micrograph, square, hole, x_um, y_um
    cryoflow feedback --run run --out run/feedback --locations where.csv --targets holes.csv
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run folder (ctf/, micassess/, pick/ ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--locations", metavar="CSV", help="micrograph locations: micrograph, grid, square, hole, x_um, y_um"
    )
    parser.add_argument("--mdoc", metavar="FILE|DIR", help="SerialEM .mdoc file, or a folder searched for them")
    parser.add_argument(
        "--nav", metavar="FILE", help="SerialEM navigator (.nav, text format): targets, flagged copy written"
    )
    parser.add_argument("--targets", metavar="CSV", help="holes that may be acquired: square, hole, x_um, y_um[, grid]")
    parser.add_argument("--budget", type=float, default=2.0, metavar="HOURS", help="microscope time left, hours")
    parser.add_argument(
        "--exposure", type=float, default=10.0, metavar="S", help="seconds per exposure incl. the hole move"
    )
    parser.add_argument(
        "--square-move", type=float, default=60.0, metavar="S", help="seconds to move to another square"
    )
    parser.add_argument("--grid-move", type=float, default=600.0, metavar="S", help="seconds to change grid")
    parser.add_argument(
        "--min-quality", type=float, default=0.0, metavar="P", help="never plan holes predicted below this P(good)"
    )


def main(args: argparse.Namespace) -> int:
    from cryoflow.errors import CryoflowError
    from cryoflow.feedback import Costs, run_feedback

    if min(args.exposure, args.square_move, args.grid_move) <= 0:
        raise CryoflowError(None, "--exposure, --square-move and --grid-move must be positive seconds")
    costs = Costs(args.exposure, args.square_move, args.grid_move)
    s = run_feedback(
        args.run,
        args.out,
        locations=args.locations,
        mdoc=args.mdoc,
        nav=args.nav,
        targets=args.targets,
        budget_s=args.budget * 3600,
        costs=costs,
        min_quality=args.min_quality,
    )
    print(
        f"feedback: {s['squares_continue']} squares to continue, {s['squares_skip']} to skip; "
        f"{s['planned_exposures']} exposures planned in {s['plan_hours']:.2f} h, "
        f"{s['expected_good']:.0f} expected good -> {args.out}"
    )
    return 0
