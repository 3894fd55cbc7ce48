"""The dataset layer of the simulator: presets, grid, truth files, the command, the realism report."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cryoflow.io import find_micrographs, read_blocks, read_info, read_micrograph, read_table
from cryoflow.simulate import grid, truth
from cryoflow.simulate.dataset import plan_dataset, resolve_preset, simulate_dataset

REAL_MICROGRAPHS = Path(__file__).parents[1].parent / "shared/data/micrographs"
EPU_NAME = re.compile(r"^GridSquare_(\d+)/Data/FoilHole_(\d+)_Data_(\d+)\.mrc$")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    simulate_dataset(out, "tiny", seed=0, device="cpu", report=False)
    return out


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory) -> Path:
    """The demo preset's grid and defects (30 micrographs, 3 squares) at a small size."""
    out = tmp_path_factory.mktemp("demo_like") / "data"
    simulate_dataset(
        out, "demo", seed=3, device="cpu", report=False, shape=(160, 160), pixel_size=4.0, particles=(4, 8)
    )
    return out


# --- determinism -----------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    again = tmp_path / "again"
    simulate_dataset(again, "tiny", seed=0, device="cpu", report=False)
    first, second = _files(tiny), _files(again)
    assert sorted(first) == sorted(second)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs with the same seed"


def test_other_seed_gives_other_micrographs(tiny, tmp_path):
    other = tmp_path / "other"
    simulate_dataset(other, "tiny", seed=1, device="cpu", report=False)
    a = read_table(tiny / truth.MICROGRAPHS_TRUTH).table
    b = read_table(other / truth.MICROGRAPHS_TRUTH).table
    assert not np.allclose(a["rlnDefocusU"].to_numpy(), b["rlnDefocusU"].to_numpy())
    img_a, _ = read_micrograph(tiny / a["rlnMicrographName"][0])
    img_b, _ = read_micrograph(other / b["rlnMicrographName"][0])
    assert not np.array_equal(img_a, img_b)


def test_micrograph_does_not_depend_on_how_many_are_asked(tiny, tmp_path):
    fewer = tmp_path / "fewer"
    simulate_dataset(fewer, "tiny", seed=0, device="cpu", report=False, n_micrographs=2, squares=("good",))
    more = tmp_path / "more"
    simulate_dataset(more, "tiny", seed=0, device="cpu", report=False, n_micrographs=4, squares=("good",))
    a = read_table(fewer / truth.MICROGRAPHS_TRUTH).table
    b = read_table(more / truth.MICROGRAPHS_TRUTH).table
    # the grid layout changes with the count, but micrograph i's own draws do not
    assert a["rlnDefocusAngle"].tolist() == b["rlnDefocusAngle"].tolist()[:2]


# --- truth files -------------------------------------------------------------------------------
def test_truth_files_have_the_required_columns(tiny):
    mics = read_table(tiny / truth.MICROGRAPHS_TRUTH, kind="micrographs")
    parts = read_table(tiny / truth.PARTICLES_TRUTH, kind="particles")
    for column in truth.REQUIRED_MICROGRAPH_COLUMNS:
        assert column in mics.table, column
    for column in truth.REQUIRED_PARTICLE_COLUMNS:
        assert column in parts.table, column
    assert mics.pixel_size(1) == pytest.approx(3.0)
    assert float(mics.optics["rlnVoltage"][0]) == 300.0
    t = mics.table
    assert len(t) == 6
    assert set(t["cfLabel"]) <= {"good", "bad"}
    assert set(t["cfReason"]) <= set(grid.REASONS)
    assert ((t["cfLabel"] == "good") == (t["cfReason"] == "good")).all()
    # particle counts agree between the two tables, coordinates lie inside the micrographs
    p = parts.table
    per_mic = p[p["cfIsJunk"] == 0].groupby("rlnMicrographName").size()
    for _, row in t.iterrows():
        assert per_mic.get(row["rlnMicrographName"], 0) == row["cfParticleCount"]
    assert p["rlnCoordinateX"].between(0, 255).all() and p["rlnCoordinateY"].between(0, 255).all()
    # per-particle defocus: the micrograph's plus the particle's height in the ice
    merged = p.merge(t[["rlnMicrographName", "rlnDefocusU"]], on="rlnMicrographName", suffixes=("", "_mic"))
    assert np.allclose(merged["rlnDefocusU"] - merged["rlnDefocusU_mic"], merged["cfHeight"], atol=0.02)
    particles = p[p["cfIsJunk"] == 0]
    assert particles["rlnAngleTilt"].between(0, 180).all()
    assert set(particles["cfSpecies"]) <= {"7DDO", "rod120"}


def test_micrographs_star_is_the_next_steps_input(tiny):
    found = find_micrographs(tiny / truth.MICROGRAPHS_STAR)
    assert len(found) == 6
    assert all(p.is_file() for p in found.paths)
    assert "cfLabel" not in found.star.table  # no truth in the pipeline's input
    assert found.star.pixel_size(1) == pytest.approx(3.0)
    # a folder given as input resolves to the same exposures (square images are not micrographs)
    assert sorted(p.resolve() for p in find_micrographs(tiny).paths) == sorted(p.resolve() for p in found.paths)


def test_dataset_json_records_every_parameter(tiny):
    from cryoflow import __version__

    data = json.loads((tiny / truth.DATASET_JSON).read_text())
    assert data["seed"] == 0 and data["preset"] == "tiny"
    assert data["cryoflow_version"] == __version__
    assert data["parameters"]["pixel_size"] == 3.0 and data["parameters"]["shape"] == [256, 256]
    assert len(data["micrographs"]) == 6
    spec = data["micrographs"][0]["spec"]
    for key in ("defocus_u", "defocus_v", "defocus_angle", "dose", "ice_thickness", "seed", "b_factor"):
        assert key in spec
    assert {s["name"] for s in data["species"]} == {"7DDO", "rod120"}


# --- EPU layout --------------------------------------------------------------------------------------
def test_epu_folder_structure(tiny):
    mics = read_table(tiny / truth.MICROGRAPHS_TRUTH).table
    for _, row in mics.iterrows():
        match = EPU_NAME.match(row["rlnMicrographName"])
        assert match, row["rlnMicrographName"]
        assert int(match.group(1)) == row["cfGridSquare"]
        assert int(match.group(2)) == row["cfFoilHole"]
        info = read_info(tiny / row["rlnMicrographName"])
        assert info.shape == (256, 256) and info.pixel_size == pytest.approx(3.0) and info.mode == 2
    squares = read_blocks(tiny / truth.SQUARES_TRUTH)["squares"]
    assert len(squares) == 2
    for _, sq in squares.iterrows():
        image = tiny / f"GridSquare_{sq['cfGridSquare']}" / f"GridSquare_{sq['cfGridSquare']}.mrc"
        assert image.is_file()
        info = read_info(image)
        assert info.pixel_size > 1000  # a low-magnification image: µm-scale pixels
        # exposures of the square sit inside its open area (stage µm)
        sel = mics[mics["cfGridSquare"] == sq["cfGridSquare"]]
        half = (grid.GRID_BAR_PITCH_UM - grid.GRID_BAR_WIDTH_UM) / 2
        assert (np.abs(sel["cfStageX"] - sq["cfStageX"]) < half).all()
        assert (np.abs(sel["cfStageY"] - sq["cfStageY"]) < half).all()


def test_square_image_shows_holes_and_bars():
    plan = grid.plan_grid(4, ("good",), np.random.default_rng(0))
    image = grid.render_square(plan, plan.squares[0], np.random.default_rng(1), size=256, pixel_size_um=0.34)
    assert image.shape == (256, 256) and image.dtype == np.float32
    assert image[:5, :5].mean() < 0.1 * image[100:156, 100:156].mean()  # grid bar is opaque
    # a planned hole (thin ice) is brighter than the foil around it
    hole = plan.holes[0]
    i = int((hole.stage_y - plan.squares[0].stage_y) / 0.34 + 128)
    j = int((hole.stage_x - plan.squares[0].stage_x) / 0.34 + 128)
    assert image[i - 1 : i + 2, j - 1 : j + 2].mean() > 1.2 * image[i - 5 : i + 6, j + 4 : j + 6].mean()


# --- reasons and their clustering by square ------------------------------------------------------------
def test_demo_like_dataset_has_the_reasons(demo_like):
    t = read_table(demo_like / truth.MICROGRAPHS_TRUTH).table
    assert len(t) == 30
    bad = t[t["cfLabel"] == "bad"]
    assert 0.15 <= len(bad) / len(t) <= 0.4
    assert len(set(bad["cfReason"])) >= 5
    # the simulator's truth agrees with what the grid plan asked for
    data = json.loads((demo_like / truth.DATASET_JSON).read_text())
    planned = [m["planned_reason"] for m in data["micrographs"]]
    assert planned == t["cfReason"].tolist()
    # thick ice is above the threshold, everything else below
    thick = t["cfReason"] == "thick_ice"
    assert (t["cfIceThickness"][thick] > 100).all() and (t["cfIceThickness"][~thick] < 100).all()
    assert (t["cfIceThickness"][t["cfReason"] == "empty"] == 0).all()
    assert (t["cfParticleCount"][t["cfReason"].isin(["empty", "no_particles"])] == 0).all()


def test_bad_micrographs_cluster_in_the_bad_square(demo_like):
    t = read_table(demo_like / truth.MICROGRAPHS_TRUTH).table
    squares = read_blocks(demo_like / truth.SQUARES_TRUTH)["squares"].set_index("cfSquareQuality")
    fraction = {
        q: float((t["cfLabel"][t["cfGridSquare"] == squares.loc[q, "cfGridSquare"]] == "bad").mean())
        for q in squares.index
    }
    assert fraction["bad"] >= 0.5
    assert fraction["bad"] > fraction["medium"] > fraction["good"]
    bad_square = t[t["cfGridSquare"] == squares.loc["bad", "cfGridSquare"]]
    assert set(bad_square["cfReason"]) - {"good"} <= set(grid.QUALITIES["bad"].reasons)


def test_plan_grid_allocates_reasons_by_square_quality():
    plan = grid.plan_grid(60, ("good", "medium", "bad"), np.random.default_rng(5), shots_per_hole=2)
    by_square = Counter((s.square.quality.name, s.reason != "good") for s in plan.shots)
    assert by_square[("bad", True)] == 12 and by_square[("medium", True)] == 4 and by_square[("good", True)] == 1
    names = [s.name for s in plan.shots]
    assert len(set(names)) == len(names)  # every exposure has its own file name
    assert all(EPU_NAME.match(n) for n in names)
    assert max(Counter(s.hole.hole_id for s in plan.shots).values()) == 2


def test_presets_resolve_and_plan():
    demo = resolve_preset("demo")
    assert demo.n_micrographs == 30 and demo.shape == (1024, 1024) and demo.pixel_size == 1.5
    assert len(demo.species) == 2 and len(demo.squares) == 3
    plan = plan_dataset(demo, 0)
    bad = sum(s.reason != "good" for s in plan.shots)
    assert 0.2 <= bad / 30 <= 0.3
    realistic = resolve_preset("realistic", n_micrographs=4)
    assert realistic.shape == (4096, 4096) and 0.8 <= realistic.pixel_size <= 1.0 and realistic.n_micrographs == 4


# --- the command -------------------------------------------------------------------------------------
def test_command_refuses_a_non_empty_folder(tmp_path, capsys):
    from cryoflow.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["simulate", "--preset", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cryoflow: error:" in err and "not empty" in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left beside it
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "user data"


def test_command_writes_dataset_and_report(tmp_path, capsys):
    from cryoflow.cli import main

    out = tmp_path / "sim"
    assert (
        main(
            [
                "simulate",
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--seed",
                "2",
                "--n-micrographs",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "micrographs.star" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_micrographs"] == 4 and summary["seed"] == 2 and summary["step"] == "simulate"
    assert sum(summary["reasons"].values()) == 4
    html = (out / "report.html").read_text()
    assert "Why micrographs are bad" in html and "figures/" in html
    assert [p.name for p in tmp_path.iterdir()] == ["sim"]  # the temporary folder was renamed


def test_command_rejects_a_missing_structure(tmp_path, capsys):
    from cryoflow.cli import main

    assert (
        main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "x"), "--structure", str(tmp_path / "none.pdb")])
        == 2
    )
    assert "structure file not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- realism report ------------------------------------------------------------------------------------
@pytest.mark.skipif(not REAL_MICROGRAPHS.is_dir(), reason="real micrographs (../shared/data/micrographs) absent")
def test_realism_report_at_small_size(tmp_path):
    from cryoflow.simulate.realism import write_realism_report

    page = write_realism_report(tmp_path / "realism", REAL_MICROGRAPHS, pattern="epu_falcon_bin4.mrc", max_size=512)
    assert page.is_file()
    summary = json.loads((tmp_path / "realism" / "summary.json").read_text())
    (pair,) = summary["pairs"]
    assert pair["pixel size (Å)"] == pytest.approx(2.6664)
    # the real micrograph's Thon rings are clear, and the same 1-D fit finds the simulated defocus
    assert pair["real: ring fit score"] > 0.5
    assert pair["simulated: fitted defocus (µm)"] == pytest.approx(pair["simulated: true defocus (µm)"], rel=0.03)
    assert len(list((tmp_path / "realism" / "figures").glob("*.png"))) == 2


def test_realism_report_without_real_micrographs(tmp_path):
    from cryoflow.simulate.presets import SpeciesSpec
    from cryoflow.simulate.realism import write_realism_report

    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_realism_report(tmp_path / "r", empty, max_size=192, species=(SpeciesSpec("reference"),))
    assert "No real micrographs" in page.read_text()
    assert len(list((tmp_path / "r" / "figures").glob("*.png"))) == 2
