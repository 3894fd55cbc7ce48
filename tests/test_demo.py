"""cryoflow demo: simulate + workflows/preprocess.cwl through cwltool into one run folder, the index.

Fast tests cover the parts (cwltool log timings, output placement, the index over any set of
step folders, errors); the slow ones run the demo on the tiny preset through cwltool, re-run it
(everything from cache), and open the index and every step report in headless Chromium: every
image loads, no console error, no request leaves the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cryoflow.cli import main
from cryoflow.cwl.runner import parse_log
from cryoflow.report import write_index
from cryoflow.report.index import stage_counts

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "rabix" / "render"
NODE = shutil.which("node")
CHROMIUM = Path("/usr/bin/chromium")

LOG = """\
\x1b[32m[2026-11-22 04:33:36]\x1b[0m \x1b[1;30mINFO\x1b[0m [workflow ] start
[2026-11-22 04:33:36] INFO [step ctf] start
[2026-11-22 04:33:36] INFO [job ctf] Output of job will be cached in /c/b75a
[2026-11-22 04:33:45] INFO [job ctf] Max memory used: 467MiB
[2026-11-22 04:33:45] INFO [job ctf] completed success
[2026-11-22 04:33:45] INFO [step ctf] completed success
[2026-11-22 04:33:45] INFO [step pick] start
[2026-11-22 04:33:45] INFO [job pick_2] Using cached output in /c/eedd
[2026-11-22 04:33:46] INFO [step pick] completed success
[2026-11-22 04:33:46] INFO [step extract] start
[2026-11-22 04:34:06] WARNING [step extract] completed permanentFail
"""


def test_step_timings_from_cwltool_log():
    steps = parse_log(LOG.splitlines())
    assert list(steps) == ["ctf", "pick", "extract"]
    assert steps["ctf"]["seconds"] == 9 and steps["ctf"]["status"] == "success"
    assert steps["ctf"]["max_memory_mib"] == 467
    assert steps["pick"]["status"] == "cached"  # a scattered job (pick_2) counts for its step
    assert steps["extract"] == {**steps["extract"], "seconds": 20, "status": "failed"}


def test_scattered_step_timed_from_its_first_job():
    """A scattered step logs a start per job: its time runs from the first to its completion."""
    log = """\
[2026-11-22 04:33:30] INFO [step ctf_batches] start
[2026-11-22 04:33:30] INFO [job ctf_batches] Output of job will be cached in /c/1
[2026-11-22 04:33:32] INFO [job ctf_batches] Max memory used: 300MiB
[2026-11-22 04:33:32] INFO [step ctf_batches] start
[2026-11-22 04:33:32] INFO [job ctf_batches_2] Output of job will be cached in /c/2
[2026-11-22 04:33:35] INFO [job ctf_batches_2] Max memory used: 310MiB
[2026-11-22 04:33:35] INFO [step ctf_batches] completed success
[2026-11-22 04:33:35] INFO [step ctf] start
[2026-11-22 04:33:36] INFO [step ctf] completed success
"""
    steps = parse_log(log.splitlines())
    assert list(steps) == ["ctf_batches", "ctf"]
    assert steps["ctf_batches"]["seconds"] == 5 and steps["ctf_batches"]["max_memory_mib"] == 310
    assert steps["ctf_batches"]["status"] == "success" and steps["ctf"]["seconds"] == 1


def test_stage_counts():
    assert stage_counts({"stage": {"micrographs": 12, "particles": 3400}, "good": 1}) == (12, 3400)
    assert stage_counts({"n_micrographs": 30, "n_particles": 900}) == (30, 900)
    assert stage_counts({"micrographs": 30, "fitted": 29}) == (29, None)
    assert stage_counts({"micrographs": 30, "good": 22, "rejected": 8}) == (22, None)
    assert stage_counts({"error": "x"}) == (None, None)


def fake_step(run: Path, folder: str, summary: dict) -> None:
    (run / folder).mkdir(parents=True)
    (run / folder / "report.html").write_text(f"<!doctype html><title>{folder}</title><p>{folder}</p>")
    (run / folder / "summary.json").write_text(json.dumps({"step": folder, **summary}))


def test_index_lists_whatever_steps_exist(tmp_path):
    """A step the index has never heard of (classify2d here) is listed like the others, with its time."""
    run = tmp_path / "run"
    fake_step(run, "simulate", {"n_micrographs": 30, "n_particles": 1200})
    fake_step(run, "micassess", {"micrographs": 30, "good": 22})
    fake_step(run, "classify2d", {"stage": {"particles": 950}, "classes": 20})
    (run / "run.json").write_text(
        json.dumps(
            {
                "workflow": "preprocess",
                "engine": "no container",
                "steps": {
                    "simulate": {"seconds": 40, "status": "success"},
                    "micassess": {"seconds": 12.4, "status": "cached", "max_memory_mib": 385.0},
                    "classify2d": {"seconds": 125, "status": "success", "max_memory_mib": 1500.0},
                    "feedback": {"seconds": 3, "status": "failed"},
                },
            }
        )
    )
    html = write_index(run).read_text()
    for folder in ("simulate", "micassess", "classify2d"):
        assert f'href="{folder}/report.html"' in html
    assert html.index("simulate/report.html") < html.index("micassess/report.html") < html.index("classify2d/")
    assert ">950<" in html and ">22<" in html and ">1200<" in html
    assert "12 s (cached)" in html and "2 min 05 s" in html and "1500 MiB" in html
    assert "feedback" in html and "(failed)" in html  # timed, no report: still shown
    # the workflow's picture (docs/graphs/preprocess.png) is copied beside the index and shown
    assert (run / "pipeline.png").read_bytes() == (ROOT / "docs" / "graphs" / "preprocess.png").read_bytes()
    assert 'src="pipeline.png"' in html


def test_index_folds_a_scattered_step_into_its_folder(tmp_path):
    """ctf_split and ctf_batches (no report of their own) count in the row of ctf, the merged folder;
    the particle classifier's two folders (one step name in their summaries) are told apart."""
    run = tmp_path / "run"
    fake_step(run, "ctf", {"micrographs": 30, "fitted": 29})
    fake_step(run, "particles_model", {"step": "particles", "trained": True})
    fake_step(run, "particles", {"stage": {"particles": 300}})
    timings = {
        "ctf_split": {"seconds": 5, "status": "success", "max_memory_mib": 200.0},
        "ctf_batches": {"seconds": 100, "status": "success", "max_memory_mib": 500.0},
        "ctf": {"seconds": 15, "status": "success", "max_memory_mib": 300.0},
        "particles_model": {"seconds": 30, "status": "success"},
        "particles": {"seconds": 12, "status": "success"},
    }
    (run / "run.json").write_text(json.dumps({"steps": timings}))
    html = write_index(run).read_text()
    assert "2 min 00 s (ctf_split 5 s, ctf_batches 1 min 40 s, ctf 15 s)" in html and "500 MiB" in html
    assert "no report" not in html
    assert html.index("particles_model/report.html") < html.index("particles/report.html")
    assert "<td>particles_model</td>" in html and "<td>particles</td>" in html and ">30 s<" in html


def test_index_without_run_record(tmp_path):
    fake_step(tmp_path, "ctf", {"micrographs": 3, "fitted": 3})
    html = write_index(tmp_path).read_text()
    assert "ctf/report.html" in html and "<img" not in html


def test_place_outputs_moves_step_folders(tmp_path):
    from cryoflow.commands.demo import place_outputs

    staging, run = tmp_path / "staging", tmp_path / "run"
    (staging / "pick").mkdir(parents=True)
    (staging / "pick" / "coordinates.star").write_text("data_\n")
    (staging / "coordinates.star").write_text("data_\n")
    (staging / "extra.txt").write_text("x")
    (run / "pick").mkdir(parents=True)
    (run / "pick" / "stale.txt").write_text("from an earlier run")
    entry = {"class": "File", "basename": "coordinates.star", "checksum": "sha1$1"}
    outputs = {
        "pick_dir": {
            "class": "Directory",
            "basename": "pick",
            "path": str(staging / "pick"),
            "listing": [{**entry, "path": str(staging / "pick" / "coordinates.star")}],
        },
        "coordinates": {**entry, "path": str(staging / "coordinates.star")},
        "extra": {"class": "File", "basename": "extra.txt", "checksum": "sha1$2", "path": str(staging / "extra.txt")},
        "nothing": None,
    }
    placed = place_outputs(outputs, run)
    assert placed == {"pick_dir": "pick", "coordinates": "pick/coordinates.star", "extra": "extra.txt", "nothing": None}
    assert (run / "pick" / "coordinates.star").is_file() and not (run / "pick" / "stale.txt").exists()
    assert (run / "extra.txt").read_text() == "x"


def test_demo_errors_are_one_line(tmp_path, cli, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("x")
    result = cli("demo", "--out", afile)
    assert result.code == 2 and "--out exists and is not a folder" in result.err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = cli("demo", "--out", tmp_path / "run", "--container", "podman")
    assert result.code == 2 and "no container engine found" in result.err
    assert not (tmp_path / "run").exists()  # nothing done before the check
    monkeypatch.undo()
    fake_step(tmp_path / "run", "simulate", {"preset": "demo", "seed": 0})
    result = cli("demo", "--out", tmp_path / "run", "--preset", "tiny")
    assert result.code == 2 and "not --preset tiny --seed 0; give another --out" in result.err
    assert len(result.err.strip().splitlines()) == 1


# --- the demo through cwltool, and its index in Chromium ----------------------------------------


# the step folders of workflows/preprocess.cwl, each with report.html and summary.json
STEP_FOLDERS = (
    "ctf",
    "micassess",
    "pick",
    "extract",
    "classify2d",
    "classassess",
    "particles_model",
    "particles",
    "feedback",
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(run)]) == 0
    return run


@pytest.mark.slow
def test_demo_runs_the_workflow_and_resumes(demo_run, capsys):
    run = demo_run
    info = json.loads((run / "run.json").read_text())
    assert info["workflow"] == "preprocess" and info["engine"] == "no container"
    truth = json.loads((run / "simulate" / "summary.json").read_text())
    ctf = json.loads((run / "ctf" / "summary.json").read_text())
    micassess = json.loads((run / "micassess" / "summary.json").read_text())
    # every micrograph simulated went through both steps of the workflow
    assert ctf["micrographs"] == micassess["micrographs"] == truth["n_micrographs"] == 6
    assert micassess["good"] + micassess["rejected"] == truth["n_micrographs"]
    # the good micrographs were picked, the picks extracted (those whose box fits the micrograph)
    pick = json.loads((run / "pick" / "summary.json").read_text())
    extract = json.loads((run / "extract" / "summary.json").read_text())
    assert pick["micrographs"] == micassess["good"] and pick["stage"]["particles"] > 0
    assert extract["n_picked"] == pick["stage"]["particles"]
    assert extract["stage"]["particles"] == extract["n_picked"] - extract["dropped_at_edges"] > 0
    particles = (run / "extract" / "particles.star").read_text()
    assert particles.count("@Particles/") == extract["stage"]["particles"]
    # the whole stack was classified
    classify2d = json.loads((run / "classify2d" / "summary.json").read_text())
    assert classify2d["stage"] == extract["stage"] and classify2d["classes"] >= 2
    # the good classes were selected, their particles kept
    classassess = json.loads((run / "classassess" / "summary.json").read_text())
    assert classassess["classes"] == classify2d["classes"] and classassess["particles_in"] == classify2d["particles"]
    assert 0 < classassess["stage"]["particles"] == classassess["particles_kept"] <= classify2d["particles"]
    # the particle classifier learned from those decisions and scored every classified particle
    # (taking back confident ones of rejected classes), or, with one side empty, passed the
    # selected particles through, saying so; the clean stack has its own stacks and a .cs
    model = json.loads((run / "particles_model" / "summary.json").read_text())
    clean = json.loads((run / "particles" / "summary.json").read_text())
    if model.get("trained", True):
        assert clean["particles_in"] == classify2d["particles"] and clean["rescued"] is not None
        assert 0 < clean["particles_kept"] <= clean["particles_in"]
    else:
        assert model["reason"] and clean["passed_through"] and clean["rescued"] is None
        assert clean["particles_kept"] == classassess["particles_kept"]  # those of rejected classes stay out
        assert clean["particles_in"] == classify2d["particles"]
    clean_star = (run / "particles" / "particles_clean.star").read_text()
    assert clean_star.count("@CleanParticles/") == clean["particles_kept"]
    assert (run / "particles" / "particles_clean.cs").stat().st_size > 0
    # the feedback read every step folder it knows, the simulated stage positions and lattice
    feedback = json.loads((run / "feedback" / "feedback.json").read_text())
    assert {"p_good", "picks", "good_particles", "simulated", "targets"} <= set(feedback["sources"])
    assert feedback["grid"]["micrographs"] == truth["n_micrographs"]
    # one run folder, one sub-folder per step, the outputs listed where they now lie
    outputs = json.loads((run / "outputs.json").read_text())
    assert outputs["ctf_dir"] == "ctf" and outputs["micrographs_good"] == "micassess/micrographs_good.star"
    assert outputs["pick_dir"] == "pick" and outputs["extract_dir"] == "extract"
    assert outputs["particles_extracted"] == "extract/particles.star"
    assert outputs["classify2d_dir"] == "classify2d" and outputs["class_averages"] == "classify2d/classes.mrcs"
    assert outputs["particles_selected"] == "classassess/particles_selected.star"
    assert outputs["particles_clean"] == "particles/particles_clean.star"
    assert outputs["feedback_json"] == "feedback/feedback.json"
    for name in STEP_FOLDERS + ("ctf_split", "ctf_batches"):
        assert info["steps"][name]["status"] == "success" and info["steps"][name]["seconds"] > 0
    html = (run / "index.html").read_text()
    for folder in ("simulate",) + STEP_FOLDERS:
        assert f'href="{folder}/report.html"' in html
    assert f">{extract['stage']['particles']}<" in html  # particles leaving extract, from its "stage"
    assert (run / "pipeline.png").is_file()

    # as if interrupted during micassess: its cache entry, its folder and the index are gone;
    # a re-run redoes micassess, not the steps before it
    cached = re.search(r"\[job micassess\] Output of job will be cached in (\S+)", (run / "cwltool.log").read_text())
    shutil.rmtree(cached.group(1))
    Path(cached.group(1) + ".status").unlink()
    shutil.rmtree(run / "micassess")
    (run / "index.html").unlink()
    capsys.readouterr()
    assert main(["demo", "--preset", "tiny", "--out", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "index.html")
    again = json.loads((run / "run.json").read_text())
    assert again["status"] == "success"
    assert [again["steps"][s]["status"] for s in ("simulate", "ctf", "micassess")] == ["cached", "cached", "success"]
    # the steps after it ran again or came from cache (cwltool's cache key holds input paths)
    assert {again["steps"][s]["status"] for s in ("pick", "extract", "classify2d")} <= {"cached", "success"}
    # cached steps keep the time they took when they ran
    assert again["steps"]["ctf"]["seconds"] == info["steps"]["ctf"]["seconds"]
    assert (run / "micassess" / "micrographs_good.star").is_file() and (run / "index.html").is_file()
    redone = json.loads((run / "micassess" / "summary.json").read_text())
    assert {**redone, "seconds_per_micrograph": 0} == {**micassess, "seconds_per_micrograph": 0}  # same result


def check_pages(*pages: Path, follow: bool = False) -> tuple[int, dict]:
    from test_rabix import npm_ci

    npm_ci(RENDER, "playwright-core")
    args = [NODE, str(RENDER / "check_page.js"), *map(str, pages)] + (["--follow"] if follow else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


needs_chromium = pytest.mark.skipif(
    NODE is None or not CHROMIUM.exists(), reason="needs node and Chromium (apt-get install nodejs npm chromium)"
)


@pytest.mark.slow
@needs_chromium
def test_index_in_chromium(demo_run):
    code, report = check_pages(demo_run / "index.html", follow=True)
    assert code == 0, json.dumps(report, indent=2)
    pages = {Path(p["page"]).relative_to(demo_run).as_posix(): p for p in report["pages"]}
    # the index and every step report it links to were opened, each with its images
    assert set(pages) == {"index.html", "simulate/report.html"} | {f"{s}/report.html" for s in STEP_FOLDERS}
    assert pages["index.html"]["images"] == 1  # the pipeline graph
    # every report shows its figures (a classifier that had nothing to learn from has none)
    trained = json.loads((demo_run / "particles_model" / "summary.json").read_text()).get("trained", True)
    assert all(p["images"] > 0 for name, p in pages.items() if trained or name != "particles_model/report.html")


@pytest.mark.slow
@needs_chromium
def test_page_check_catches_problems(tmp_path):
    """The check itself: a broken image, a console error and a request to the web are each caught."""
    (tmp_path / "ok.png").write_bytes((ROOT / "docs" / "graphs" / "preprocess.png").read_bytes())
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><title>bad</title><img src='ok.png'><img src='missing.png'>"
        "<img src='http://example.invalid/x.png'><a href='nowhere.html'>x</a>"
        "<script>console.error('boom')</script>"
    )
    code, report = check_pages(page)
    problems = "\n".join(report["pages"][0]["problems"])
    assert code == 1
    assert "missing.png" in problems and "console error: boom" in problems
    assert "request leaving the machine refused: http://example.invalid/x.png" in problems
    assert "link to a missing file" in problems and "nowhere.html" in problems
