"""cryoflow feedback: name parsers, aggregation and ranking on simulated grids, the plan vs in order, exports, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryoflow.feedback.acquisition import compare, simulated_run
from cryoflow.feedback.names import micrograph_key, parse_epu, parse_leginon, parse_name
from cryoflow.feedback.navigator import make_nav, nav_text, read_nav
from cryoflow.feedback.schema import SCHEMA, validate
from cryoflow.simulate.grid import plan_grid

QUALITIES = ["good", "bad", "medium", "good", "bad", "medium"]


@pytest.fixture(scope="module")
def grid_plan():
    return plan_grid(len(QUALITIES) * 20, QUALITIES, np.random.default_rng(3))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, grid_plan):
    return simulated_run(grid_plan, tmp_path_factory.mktemp("run"), imaged=len(grid_plan.shots), seed=1)


def test_epu_names():
    loc = parse_epu("/data/Images-Disc2/GridSquare_1327859/Data/FoilHole_34398455_Data_1_2_20240101_101010.mrc")
    assert (loc.grid, loc.square, loc.hole, loc.convention) == ("2", "1327859", "34398455", "epu")
    assert parse_epu("GridSquare_7\\Data\\FoilHole_12_Data_3.mrc").square == "7"
    assert parse_epu("micrograph_001.mrc") is None
    assert micrograph_key("/tmp/x/GridSquare_7/Data/FoilHole_12_Data_3.mrc") == "FoilHole_12_Data_3"


def test_leginon_names():
    loc = parse_leginon("24jan01a_00002gr_00005sq_v01_00008hl_00003ex.mrc")
    assert loc.square == "24jan01a_00002gr_00005sq"
    assert loc.hole == "24jan01a_00002gr_00005sq_v01_00008hl"
    assert loc.grid == "24jan01a_00002gr"
    other = parse_leginon("24jan01a_00002gr_00005sq_v01_00009hl_00001ex.mrc")
    assert other.square == loc.square and other.hole != loc.hole
    assert parse_leginon("24jan01a_00002gr_00005sq.mrc") is None  # a square image, no hole
    assert parse_name("24jan01a_00005sq_00008hl_00003en.mrc").convention == "leginon"


def test_feedback_ranks_bad_squares_below_good(cli, run_dir, grid_plan, tmp_path):
    out = tmp_path / "fb"
    r = cli("feedback", "--run", run_dir, "--out", out, "--budget", "1")
    assert r.code == 0, r.err
    doc = json.loads((out / "feedback.json").read_text())
    assert doc["schema"] == SCHEMA and validate(doc) == []
    quality = {str(s.square_id): s.quality.name for s in grid_plan.squares}
    rank = {s["square"]: s["rank"] for s in doc["squares"]}
    good = [rank[s] for s, q in quality.items() if q == "good"]
    bad = [rank[s] for s, q in quality.items() if q == "bad"]
    assert max(good) < min(bad)
    decision = {s["square"]: s["decision"] for s in doc["squares"]}
    assert all(decision[s] == "skip" for s, q in quality.items() if q == "bad")
    assert any(decision[s] == "continue" for s, q in quality.items() if q == "good")
    assert doc["plan"] and doc["plan"][-1]["elapsed_s"] <= 3600
    squares = pd.read_csv(out / "squares.csv", dtype={"square": str})
    assert set(squares["square"]) == set(quality)
    holes = pd.read_csv(out / "holes.csv")
    assert holes["imaged"].sum() == len(grid_plan.holes)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == "feedback" and summary["stage"]["micrographs"] == len(grid_plan.shots)
    assert (out / "report.html").exists()


def test_plan_beats_in_order():
    """On the physical grid model: the plan beats going in order and gets most of what an oracle gets."""
    from cryoflow.feedback.bench import oracle
    from cryoflow.feedback.planner import Costs

    rows = [compare(seed, budget_s=5400, n_squares=20, holes_per_square=40) for seed in range(3)]
    ratios = [r["ratio"] for r in rows]
    assert np.mean(ratios) > 1.1, ratios
    assert min(ratios) > 1.0, ratios
    best = [oracle(seed, Costs(), 5400, 20, 40, None) for seed in range(3)]
    assert all(r["plan"].good_per_hour > 0.75 * b for r, b in zip(rows, best, strict=True)), (rows, best)


def test_grid_model_is_uneven_like_real_grids():
    """Squares of a simulated grid: a minority holds most good holes; ice follows the blotting gradient."""
    from cryoflow.simulate.grid_model import plan_session_grid

    share, good_frac = [], []
    for seed in range(4):
        plan = plan_session_grid(24, 30, np.random.default_rng(seed), "typical")
        assert len(plan.squares) == 24 and len(plan.shots) == 24 * 30
        g = np.array(
            [np.mean([s.reason == "good" for s in plan.shots if s.square.index == q.index]) for q in plan.squares]
        )
        top = np.sort(g)[::-1]
        share.append(top[: len(top) // 4].sum() / top.sum())
        good_frac.append(g.mean())
        # every square's outcome follows its ice: squares with thick centres are mostly thick_ice
        for q in plan.squares:
            reasons = [s.reason for s in plan.shots if s.square.index == q.index]
            if q.quality.ice_mean > 130 and q.quality.condition == "intact":
                assert reasons.count("thick_ice") > len(reasons) / 2
            if q.quality.condition == "broken":
                assert reasons.count("empty") + reasons.count("crack") > len(reasons) / 3
    assert 0.35 < np.mean(good_frac) < 0.7  # about half the exposures of a session are good (cryoRL)
    assert np.mean(share) > 0.35  # the best quarter of the squares holds well over a quarter of the good holes
    a = plan_session_grid(6, 5, np.random.default_rng(7))
    b = plan_session_grid(6, 5, np.random.default_rng(7))
    assert [s.name for s in a.shots] == [s.name for s in b.shots] and [s.reason for s in a.shots] == [
        s.reason for s in b.shots
    ]


def test_square_belief_learns_from_a_few_holes():
    from cryoflow.feedback import belief

    pi = belief.prior(np.array([0.05, 0.05, 0.9, 0.85]))
    bad = belief.posterior(pi, np.array([0.05, 0.1]))
    good = belief.posterior(pi, np.array([0.95, 0.9]))
    assert bad @ belief.Q < 0.25 < 0.75 < good @ belief.Q


def test_navigator_flags(cli, run_dir, grid_plan, tmp_path):
    squares = [(f"sq{s.square_id}", s.stage_x, s.stage_y) for s in grid_plan.squares]
    rng = np.random.default_rng(0)
    holes = [
        (f"h{h.hole_id}", f"sq{grid_plan.squares[h.square_index].square_id}", h.stage_x, h.stage_y)
        for h in grid_plan.holes
    ]
    for s in grid_plan.squares:  # holes not imaged yet, near the square centre
        for k in range(5):
            holes.append(
                (
                    f"n{s.square_id}_{k}",
                    f"sq{s.square_id}",
                    s.stage_x + rng.uniform(-20, 20),
                    s.stage_y + rng.uniform(-20, 20),
                )
            )
    nav_path = tmp_path / "session.nav"
    nav_path.write_text(nav_text(make_nav(squares, holes)))
    out = tmp_path / "fb"
    r = cli("feedback", "--run", run_dir, "--out", out, "--nav", nav_path, "--budget", "0.05")
    assert r.code == 0, r.err
    flagged = read_nav(out / "session_cryoflow.nav")
    acquire = {i.label: i.fields.get("Acquire") for i in flagged.points()}
    assert len(acquire) == len(holes)
    assert all(acquire[f"h{h.hole_id}"] == "0" for h in grid_plan.holes)  # imaged already
    planned = [label for label, a in acquire.items() if a == "1"]
    assert planned
    quality = {f"sq{s.square_id}": s.quality.name for s in grid_plan.squares}
    square_of = {label: sq for label, sq, _, _ in holes}
    assert all(quality[square_of[label]] != "bad" for label in planned)


def test_mdoc_positions(tmp_path):
    from cryoflow.feedback.mdoc import read_mdocs

    (tmp_path / "a_001.tif.mdoc").write_text(
        "PixelSpacing = 0.83\nImageFile = a_001.tif\n\n[ZValue = 0]\nStagePosition = 105.3 -20.7\nNavigatorLabel = 12\n"
    )
    df = read_mdocs(tmp_path)
    assert df.iloc[0].to_dict() == {"key": "a_001", "x_um": 105.3, "y_um": -20.7, "nav_label": "12"}


def test_bad_inputs(cli, run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    r = cli("feedback", "--run", empty, "--out", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "micassess" in r.err
    assert not out.exists()
    # a micassess table without the P(good) column
    broken = tmp_path / "broken"
    (broken / "micassess").mkdir(parents=True)
    text = (run_dir / "micassess" / "micrographs_good.star").read_text()
    (broken / "micassess" / "micrographs_good.star").write_text(text.replace("cryoflowMicassessPGood", "somethingElse"))
    r = cli("feedback", "--run", broken, "--out", out)
    assert r.code == 2 and "cryoflowMicassessPGood" in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    # an output folder that is not empty is never touched
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("feedback", "--run", run_dir, "--out", out)
    assert r.code == 2 and (out / "keep.txt").read_text() == "mine"


def test_particle_yield_reaches_the_squares(cli, run_dir, grid_plan, tmp_path):
    """A particles step's micrographs_yield.star is read: good particles per micrograph per square."""
    import shutil

    from cryoflow.feedback.scores import read_scores
    from cryoflow.io import write_blocks

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    scores, _ = read_scores(run)
    good = {str(s.square_id): s.quality.name == "good" for s in grid_plan.squares}
    # a yield that follows the truth: 50 good particles on good micrographs, 2 on bad ones
    yields = pd.DataFrame(
        {"rlnMicrographName": scores["name"], "cfGoodParticles": np.where(scores["reason"] == "good", 50, 2)}
    )
    write_blocks(run / "particles" / "micrographs_yield.star", {"micrographs": yields})
    scores, sources = read_scores(run)
    assert sources["good_particles"] == "particles/micrographs_yield.star"
    assert scores["good_particles"].notna().all()
    r = cli("feedback", "--run", run, "--out", tmp_path / "fb", "--budget", "1")
    assert r.code == 0, r.err
    doc = json.loads((tmp_path / "fb" / "feedback.json").read_text())
    assert validate(doc) == []
    per = {s["square"]: s["good_particles_per_micrograph"] for s in doc["squares"]}
    assert min(per[s] for s, g in good.items() if g) > max(per[s] for s, g in good.items() if not g)


def test_micrographs_without_a_location_are_counted_not_placed(cli, run_dir, tmp_path):
    """Plain names (no EPU/Leginon pattern, no CSV/mdoc/nav) do not stop feedback: they form the
    square "unplaced", count for the grid, and the placed squares are planned as before."""
    import re
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "simulate" / "truth")  # the simulated stage positions would place them
    renamed = 0
    for star in (run / "micassess").glob("*.star"):
        text = star.read_text()
        # every third micrograph of the good table loses its EPU name
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "FoilHole_" in line and i % 3 == 0:
                lines[i] = re.sub(r"\S*FoilHole_(\d+)_Data\S*\.mrc", r"plain/mic_\1.mrc", line)
                renamed += 1
        star.write_text("\n".join(lines) + "\n")
    assert renamed
    r = cli("feedback", "--run", run, "--out", tmp_path / "fb", "--budget", "1")
    assert r.code == 0, r.err
    doc = json.loads((tmp_path / "fb" / "feedback.json").read_text())
    assert validate(doc) == []
    assert str(renamed) in doc["sources"]["unplaced"]
    squares = {s["square"]: s for s in doc["squares"]}
    assert squares["unplaced"]["micrographs"] == renamed and squares["unplaced"]["holes_planned"] == 0
    assert doc["grid"]["micrographs"] == sum(s["micrographs"] for s in doc["squares"])
    assert len(doc["plan"]) and all(p["square"] != "unplaced" for p in doc["plan"])
