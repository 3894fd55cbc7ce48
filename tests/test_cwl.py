"""CWL tools and workflows: valid CWL v1.0, arguments as arrays, and they run with cwltool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
CWLTOOL = [sys.executable, "-c", "import sys; from cwltool.main import run; sys.exit(run(sys.argv[1:]))"]
CWL_FILES = sorted((ROOT / "tools").glob("*.cwl")) + sorted((ROOT / "workflows").glob("*.cwl"))


def cwltool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", CRYOFLOW_QUIET="1"
    )
    # not `python -m cwltool`: its __main__ drops the exit status (an invalid file would pass)
    return subprocess.run([*CWLTOOL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("path", CWL_FILES, ids=lambda p: p.name)
def test_cwl_conventions(path):
    doc = YAML(typ="safe").load(path.read_text())
    assert doc["cwlVersion"] == "v1.0"
    requirements = {r if isinstance(r, str) else r.get("class") for r in doc.get("requirements", {})}
    assert "ShellCommandRequirement" not in requirements and "InlineJavascriptRequirement" not in requirements
    assert "DockerRequirement" not in requirements  # a hint only, so --no-container works
    inputs = doc["inputs"]
    for name, spec in inputs.items():
        assert isinstance(spec, dict) and spec.get("label"), f"{path.name}: input {name} has no label"
    if doc["class"] == "CommandLineTool":
        assert doc["baseCommand"][0] == "cryoflow"
        assert "DockerRequirement" in doc["hints"]
        for name, spec in inputs.items():
            assert spec.get("doc"), f"{path.name}: input {name} has no doc"
    else:
        for section in ("inputs", "outputs", "steps"):
            for name, spec in doc[section].items():
                assert "sbg:x" in spec and "sbg:y" in spec, f"{path.name}: {section}/{name} has no layout"


def test_cwl_files_validate():
    for path in CWL_FILES:
        result = cwltool("--validate", str(path))
        assert result.returncode == 0, f"{path.name}: {result.stderr[-2000:]}"


@pytest.mark.slow
def test_workflow_runs_on_tiny_dataset(tmp_path):
    result = cwltool(
        "--no-container",
        "--outdir",
        str(tmp_path / "out"),
        str(ROOT / "workflows" / "simulate_inspect.cwl"),
        str(ROOT / "workflows" / "simulate_inspect.job.yml"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    dataset = Path(outputs["dataset"]["path"])
    inventory = Path(outputs["inventory"]["path"])
    summary = json.loads((inventory / "summary.json").read_text())
    truth = json.loads((dataset / "summary.json").read_text())
    # the inventory found exactly the micrographs the simulator made
    assert summary["micrographs"] == truth["n_micrographs"] > 0


def test_job_files_name_the_workflows_inputs():
    """Every example job file fills only inputs its workflow declares, and every required one."""
    for job in sorted((ROOT / "workflows").glob("*.job.yml")):
        workflow = YAML(typ="safe").load(job.with_name(job.name.replace(".job.yml", ".cwl")).read_text())
        values = YAML(typ="safe").load(job.read_text())
        declared = workflow["inputs"]
        assert set(values) <= set(declared), f"{job.name}: {set(values) - set(declared)} not inputs"
        required = {
            name for name, spec in declared.items() if "default" not in spec and not str(spec["type"]).endswith("?")
        }
        assert required <= set(values), f"{job.name}: required inputs {required - set(values)} missing"


# --- pick and extract tools, the screening workflow: a tiny job through each --------------------

DIAMETER = 115.0  # Å, about the tiny preset's particles (7DDO and a 120 Å rod)


@pytest.fixture(scope="module")
def good_tiny(tmp_path_factory) -> Path:
    """Three all-good micrographs of the tiny preset (256² px at 3 Å/px), with ground truth."""
    from cryoflow.simulate import simulate_dataset

    folder = tmp_path_factory.mktemp("cwl") / "data"
    return simulate_dataset(
        folder, preset="tiny", seed=2, n_micrographs=3, squares=("good",), report=False, workers=1
    ).path


def pick_scores(pick_dir: Path, data: Path, diameter: float) -> dict:
    """Precision/recall/F1 of a pick folder against the truth, micrographs matched by base name

    (a step in CWL sees the micrographs under a staging path, so its names may differ in front).
    """
    from cryoflow.io import read_blocks
    from cryoflow.picking import search
    from cryoflow.picking.pick_bench import score_coordinates
    from cryoflow.simulate import read_truth

    truth = read_truth(data)
    by_base = {Path(name).name: name for name in truth[0].table["rlnMicrographName"]}
    picks = {}
    for _, row in read_blocks(pick_dir / "coordinates.star")["coordinate_files"].iterrows():
        table = next(iter(read_blocks(pick_dir / row["rlnMicrographCoordinates"]).values()))
        picks[by_base[Path(row["rlnMicrographName"]).name]] = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(
            float
        )
    apix = float(truth[0].optics["rlnMicrographPixelSize"].iloc[0])
    return score_coordinates(picks, data, search.EDGE_MARGIN * diameter / apix / 2, truth_tables=truth)


@pytest.mark.slow
def test_pick_and_extract_tools_run(good_tiny, tmp_path):
    """pick.cwl, then extract.cwl on its folder: micrographs found through --images, picks right."""
    from cryoflow.io import read_blocks, read_info

    star = good_tiny / "truth" / "micrographs_truth.star"  # micrographs with their (true) CTF
    common = ["--micrographs", str(star), "--images", str(good_tiny), "--device", "cpu"]
    result = cwltool(
        "--no-container",
        "--outdir",
        str(tmp_path / "out"),
        str(ROOT / "tools" / "pick.cwl"),
        *common,
        "--diameter",
        str(DIAMETER),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    picked = json.loads(result.stdout)
    pick_dir = Path(picked["out_dir"]["path"])
    assert picked["coordinates"]["path"] == str(pick_dir / "coordinates.star")
    assert Path(picked["report"]["path"]).is_file() and picked["report"]["format"].endswith("format_2331")
    summary = json.loads(Path(picked["summary"]["path"]).read_text())
    scores = pick_scores(pick_dir, good_tiny, DIAMETER)
    assert scores["f1"] >= 0.8, scores
    assert summary["stage"] == {"micrographs": 3, "particles": scores["picks"]}

    result = cwltool(
        "--no-container",
        "--outdir",
        str(tmp_path / "out"),
        str(ROOT / "tools" / "extract.cwl"),
        *common,
        "--coordinates",
        str(pick_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    extracted = json.loads(result.stdout)
    out = Path(extracted["out_dir"]["path"])
    summary = json.loads(Path(extracted["summary"]["path"]).read_text())
    # the box came from the pick folder's diameter; every pick extracted unless its box left the micrograph
    assert summary["diameter_A"] == DIAMETER and summary["box"] >= 1.5 * DIAMETER / summary["pixel_size"]
    particles = read_blocks(Path(extracted["particles"]["path"]))["particles"]
    assert len(particles) == summary["stage"]["particles"] == scores["picks"] - summary["dropped_at_edges"] > 0
    # particles.star names N@stack relative to the step folder, each stack holds its particles
    stacks = particles["rlnImageName"].str.split("@").str[1].value_counts()
    for stack, count in stacks.items():
        assert read_info(out / stack).shape == (count, summary["box"], summary["box"])
    assert Path(extracted["particles_cs"]["path"]).stat().st_size > 0


@pytest.mark.slow
def test_screening_workflow_runs(good_tiny, tmp_path):
    """workflows/screening.cwl on the tiny all-good micrographs: CTF in two batches (split.cwl,
    ctf.cwl per batch, merge.cwl), micassess, pick (a parameter search on the good micrographs,
    pick.cwl per batch with its parameters, merge.cwl), extract per batch and merged, quick 2D,
    class selection, feedback.cwl."""
    from cryoflow.commands.demo import job_inputs

    job = tmp_path / "job.json"
    inputs = job_inputs(ROOT / "workflows" / "screening.cwl", good_tiny)  # micrographs + optics
    job.write_text(json.dumps({**inputs, "diameter": DIAMETER, "batch_size": 2, "iterations": 4}))
    result = cwltool(
        "--no-container", "--outdir", str(tmp_path / "out"), str(ROOT / "workflows" / "screening.cwl"), str(job)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    folders = ("ctf", "micassess", "pick", "extract", "classify2d", "classassess", "feedback")
    assert [Path(outputs[f"{k}_dir"]["path"]).name for k in folders] == list(folders)
    out = {k: Path(outputs[f"{k}_dir"]["path"]) for k in folders}
    summary = {k: json.loads((out[k] / "summary.json").read_text()) for k in folders}
    # the CTF step ran as two batch jobs, merged into one folder over all three micrographs
    assert [b["batch"] for b in summary["ctf"]["merged_from"]] == ["batch_001", "batch_002"]
    assert summary["ctf"]["fitted"] == 3 and (out["ctf"] / "batches" / "batch_002" / "report.html").is_file()
    assert summary["micassess"]["good"] == summary["pick"]["micrographs"] == 3  # the good ones went to picking
    scores = pick_scores(out["pick"], good_tiny, DIAMETER)
    assert scores["f1"] >= 0.8, scores
    # picking and extraction ran as two batch jobs each, with the search's parameters and one box
    for step in ("pick", "extract"):
        assert [b["batch"] for b in summary[step]["merged_from"]] == ["batch_001", "batch_002"]
    assert summary["pick"]["search"]["micrographs"] == 3 and (out["pick"] / "search" / "report.html").is_file()
    assert summary["pick"]["fixed"]["threshold"] == summary["pick"]["threshold"]
    assert summary["extract"]["n_particles"] == scores["picks"] - summary["extract"]["dropped_at_edges"]
    assert Path(outputs["coordinates"]["path"]) == out["pick"] / "coordinates.star"
    # a quick 2D of the extracted particles, the good classes selected
    assert summary["classify2d"]["stage"]["particles"] == summary["extract"]["stage"]["particles"] > 0
    assert 0 < summary["classassess"]["particles_kept"] <= summary["classify2d"]["particles"]
    # the feedback placed the three micrographs in their holes by their EPU names (the folder is
    # not named simulate, so no simulated stage positions or lattice: the imaged holes are the targets)
    feedback = json.loads(Path(outputs["feedback_json"]["path"]).read_text())
    assert feedback["grid"]["micrographs"] == 3 and {"p_good", "picks", "names"} <= set(feedback["sources"])
    assert summary["feedback"]["holes_imaged"] == 3 and summary["feedback"]["squares"] == 1


def test_split_names_batches_by_folder(tmp_path):
    """cryoflow split: batches in order, names <folder>/<path inside>, one optics group per pixel size."""
    from cryoflow.batches import split_micrographs
    from cryoflow.io import read_table, write_mrc

    data = tmp_path / "Images-Disc1"
    for i, apix in enumerate([1.0, 1.0, 1.5, 1.0, 1.5]):
        write_mrc(data / f"GridSquare_1/Data/FoilHole_{i}_Data_1.mrc", np.zeros((8, 8), np.float32), apix)
    s = split_micrographs(data, tmp_path / "batches", batch_size=2)
    assert s["micrographs"] == 5 and s["batches"] == ["batch_001.star", "batch_002.star", "batch_003.star"]
    tables = [read_table(tmp_path / "batches" / name) for name in s["batches"]]
    names = [n for t in tables for n in t.table["rlnMicrographName"]]
    assert names == [f"Images-Disc1/GridSquare_1/Data/FoilHole_{i}_Data_1.mrc" for i in range(5)]
    assert [g for t in tables for g in t.table["rlnOpticsGroup"]] == [1, 1, 2, 1, 2]
    for t in tables:  # every batch carries the whole set's optics groups
        assert t.optics["rlnMicrographPixelSize"].tolist() == [1.0, 1.5]
    # the name the next jobs stage the folder under (a runner may have staged it under another)
    split_micrographs(data, tmp_path / "renamed", batch_size=5, folder_name="micrographs")
    names = read_table(tmp_path / "renamed" / "batch_001.star").table["rlnMicrographName"]
    assert names.str.startswith("micrographs/GridSquare_1/Data/").all()


def test_split_and_merge_errors_are_one_line(tmp_path, cli):
    result = cli("split", tmp_path, "--out", tmp_path / "b", "--batch-size", "0")
    assert result.code == 2 and "--batch-size must be at least 1" in result.err
    (tmp_path / "pick").mkdir()
    result = cli("merge", tmp_path / "pick", "--out", tmp_path / "m")
    assert result.code == 2 and "not a ctf, pick or extract step folder" in result.err and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_merged_ctf_batches_equal_one_run(good_tiny, tmp_path, monkeypatch):
    """ctf on two batches + cryoflow merge gives the table of one ctf run over the folder, the
    dataset-relative ice thickness included (recomputed over all micrographs)."""
    from cryoflow.batches import merge_step_folders, split_micrographs
    from cryoflow.ctf import run_ctf
    from cryoflow.io import read_table

    run_ctf(good_tiny, tmp_path / "whole")
    split_micrographs(good_tiny, tmp_path / "batches", batch_size=2)
    monkeypatch.chdir(good_tiny.parent)  # where the folder lies under its own name
    for name in ("batch_001", "batch_002"):
        run_ctf(tmp_path / "batches" / f"{name}.star", tmp_path / "ctf_batches" / name)
    summary = merge_step_folders(sorted((tmp_path / "ctf_batches").iterdir()), tmp_path / "merged")
    whole = read_table(tmp_path / "whole" / "micrographs_ctf.star").table
    merged = read_table(tmp_path / "merged" / "micrographs_ctf.star").table
    assert [Path(n).name for n in merged["rlnMicrographName"]] == [Path(n).name for n in whole["rlnMicrographName"]]
    assert merged["rlnMicrographName"].str.startswith(f"{good_tiny.name}/").all()
    for column in whole.columns.drop(["rlnMicrographName", "cryoflowDiagnostic"]):
        np.testing.assert_allclose(merged[column].to_numpy(float), whole[column].to_numpy(float), rtol=1e-6)
    assert all((tmp_path / "merged" / d).is_file() for d in merged["cryoflowDiagnostic"])
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["micrographs"] == whole_summary["micrographs"] == 3
    assert summary["median_defocus_um"] == pytest.approx(whole_summary["median_defocus_um"], rel=1e-6)
    assert (tmp_path / "merged" / "report.html").is_file()


@pytest.mark.slow
def test_classify2d_tool_runs(tmp_path):
    """classify2d.cwl on a folder (particles.star + its stacks, as extract writes): classes, model, stage."""
    from cryoflow.io import read_blocks, read_info
    from cryoflow.simulate import simulate_stack

    simulate_stack(tmp_path / "stack", n=120, box=32, pixel_size=5.0, particles_per_micrograph=60, seed=1)
    result = cwltool(
        "--no-container",
        "--outdir",
        str(tmp_path / "out"),
        str(ROOT / "tools" / "classify2d.cwl"),
        "--particles",
        str(tmp_path / "stack"),
        "--classes",
        "2",
        "--iterations",
        "4",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    out = Path(outputs["out_dir"]["path"])
    assert outputs["class_averages"]["path"] == str(out / "classes.mrcs")
    assert read_info(out / "classes.mrcs").shape == (2, 32, 32)
    assert len(read_blocks(Path(outputs["model"]["path"]))["model_classes"]) == 2
    assert len(read_blocks(Path(outputs["particles_classified"]["path"]))["particles"]) == 120
    assert outputs["report"]["format"].endswith("format_2331")
    summary = json.loads(Path(outputs["summary"]["path"]).read_text())
    assert summary["stage"] == {"micrographs": 2, "particles": 120} and summary["classes"] == 2


# --- cwl_utils: the parser loads every file, its static checker and ours find no type error ----


def _norm_type(t):
    """A CWL type (cwl_utils object, string or list) in a plain form that compares by structure."""
    from cwl_utils.parser import save

    if isinstance(t, list):
        return frozenset(x for alt in t for x in _norm_type(alt))
    if not isinstance(t, str):
        t = save(t)
    if isinstance(t, str):
        if t.endswith("?"):
            return frozenset({t[:-1], "null"})
        return frozenset({t})
    kind = t.get("type")
    if kind == "enum":
        return frozenset({("enum", tuple(sorted(s.rsplit("/", 1)[-1] for s in t["symbols"])))})
    if kind == "array":
        return frozenset({("array", _norm_type(t["items"]))})
    if kind == "record":
        fields = tuple(sorted((f["name"].rsplit("/", 1)[-1], _norm_type(f["type"])) for f in t.get("fields", [])))
        return frozenset({("record", fields)})
    return _norm_type(kind)


def _short(uri: str) -> str:
    return uri.rsplit("#", 1)[-1].rsplit("/", 1)[-1]


def step_type_errors(workflow) -> list[str]:
    """Source/sink type mismatches of a cwl_utils Workflow, and required tool inputs left unfed.

    cwl_utils' static_checker matches a step input to its tool's input by the full fragment
    ("wf/step/port" against "tool/port"), which never matches for a tool in its own file, so it
    takes every step input as Any; here the tool's inputs are matched by port name instead.
    """
    from cwl_utils.parser.utils import load_step, type_for_source

    errors = []
    for step in workflow.steps:
        tool_inputs = {_short(p.id): p for p in load_step(step).inputs}
        scattered = {_short(s) for s in ([step.scatter] if isinstance(step.scatter, str) else step.scatter or [])}
        fed = set()
        for sink in step.in_:
            port = _short(sink.id)
            if sink.source or sink.default is not None or sink.valueFrom:
                fed.add(port)
            if port not in tool_inputs:
                errors.append(f"step {_short(step.id)}: no input {port} in the tool it runs")
                continue
            if not sink.source or sink.valueFrom:
                continue
            src = _norm_type(type_for_source(workflow, "v1.0", sink.source))
            if port in scattered:  # each job gets one item of the array
                src = frozenset(x for t in src for x in (t[1] if isinstance(t, tuple) and t[0] == "array" else {t}))
            dst = _norm_type(tool_inputs[port].type_)
            if "Any" not in src | dst and not (src - {"null"}) <= dst:
                errors.append(
                    f"step {_short(step.id)}: {port} gets {set(src)} from {_short(sink.source)}, wants {set(dst)}"
                )
        for port, param in tool_inputs.items():
            if port not in fed and param.default is None and "null" not in _norm_type(param.type_):
                errors.append(f"step {_short(step.id)}: required input {port} has no source, default or valueFrom")
    for out in workflow.outputs:
        src = _norm_type(type_for_source(workflow, "v1.0", out.outputSource))
        dst = _norm_type(out.type_)
        if "Any" not in src | dst and not (src - {"null"}) <= dst:
            errors.append(
                f"output {_short(out.id)}: gets {set(src)} from {_short(out.outputSource)}, declared {set(dst)}"
            )
    return errors


def cwl_utils_check(path: Path) -> list[str]:
    """Load with cwl_utils' parser; for a workflow run its static checker and the step check above."""
    from cwl_utils.parser import cwl_v1_0, load_document_by_uri
    from cwl_utils.parser.utils import static_checker

    doc = load_document_by_uri(path)
    assert isinstance(doc, cwl_v1_0.Process), f"{path.name}: parsed as {type(doc).__module__}, not CWL v1.0"
    if isinstance(doc, cwl_v1_0.Workflow):
        static_checker(doc)  # raises ValidationException on a type error
        return step_type_errors(doc)
    return []


@pytest.mark.parametrize("path", CWL_FILES, ids=lambda p: p.name)
def test_cwl_utils_static_checker(path):
    assert cwl_utils_check(path) == []


def test_type_checks_catch_a_miswired_workflow(tmp_path):
    """A File wired into a Directory input is caught by the check above and by cwltool --validate."""
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    (tmp_path / "workflows").mkdir()
    broken = tmp_path / "workflows" / "broken.cwl"
    text = (ROOT / "workflows" / "simulate_inspect.cwl").read_text()
    assert "micrographs: simulate/dataset" in text
    broken.write_text(text.replace("micrographs: simulate/dataset", "micrographs: simulate/summary"))
    errors = cwl_utils_check(broken)
    assert any("micrographs gets" in e and "Directory" in e for e in errors), errors
    result = cwltool("--validate", str(broken))
    assert result.returncode != 0 and "incompatible" in result.stdout + result.stderr


# --- Toil: the same workflow on the single-machine batch system (the scale-out runner) ---------


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("toil-cwl-runner", path=str(Path(sys.executable).parent)) is None, reason="toil[cwl] not installed"
)
def test_preprocess_runs_under_toil(good_tiny, tmp_path):
    """workflows/preprocess.cwl, the demo's workflow, under Toil (the scale-out runner) on the
    tiny micrographs: CTF, picking and extraction scattered over two batches, every step down to
    the clean stack and the feedback."""
    from cryoflow.commands.demo import job_inputs

    toil = Path(sys.executable).parent / "toil-cwl-runner"
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", CRYOFLOW_QUIET="1"
    )
    job = tmp_path / "job.json"
    inputs = job_inputs(ROOT / "workflows" / "preprocess.cwl", good_tiny)
    job.write_text(json.dumps({**inputs, "diameter": DIAMETER, "batch_size": 2, "iterations": 4}))
    result = subprocess.run(
        [
            str(toil),
            "--no-container",
            "--batchSystem",
            "single_machine",
            "--maxCores",
            "2",
            "--jobStore",
            str(tmp_path / "jobstore"),
            "--workDir",
            str(tmp_path),
            "--outdir",
            str(tmp_path / "out"),
            "--logLevel",
            "WARNING",
            str(ROOT / "workflows" / "preprocess.cwl"),
            str(job),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    ctf = json.loads((Path(outputs["ctf_dir"]["path"]) / "summary.json").read_text())
    assert len(ctf["merged_from"]) == 2 and ctf["fitted"] == 3
    extract = json.loads((Path(outputs["extract_dir"]["path"]) / "summary.json").read_text())
    assert len(extract["merged_from"]) == 2
    clean = json.loads((Path(outputs["particles_dir"]["path"]) / "summary.json").read_text())
    selected = json.loads((Path(outputs["classassess_dir"]["path"]) / "summary.json").read_text())
    # every classified particle scored, or (one label side empty) the selected ones passed through
    assert clean["particles_in"] == (
        selected["particles_in"] if clean["rescued"] is not None else selected["particles_kept"]
    )
    assert 0 < clean["particles_kept"] <= clean["particles_in"]
    assert Path(outputs["particles_clean"]["path"]).read_text().count("@CleanParticles/") == clean["particles_kept"]
    feedback = json.loads(Path(outputs["feedback_json"]["path"]).read_text())
    assert feedback["grid"]["micrographs"] == 3 and "good_particles" in feedback["sources"]


# --- cryoflow run: the thin layer over cwltool ---------------------------------------------------


def test_run_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from cryoflow.cli import main

    assert (
        main(["run", str(tmp_path / "nothing.yml"), "--workflow", str(ROOT / "workflows" / "simulate_inspect.cwl")])
        == 2
    )
    assert "nothing.yml: no such job file" in capsys.readouterr().err
    job = tmp_path / "job.yml"
    job.write_text("preset: tiny\n")
    assert main(["run", str(job), "--workflow", str(tmp_path / "nothing.cwl")]) == 2
    assert "nothing.cwl: no such workflow file" in capsys.readouterr().err
    assert main(["run", str(job)]) == 2  # no workflow named like the job file
    assert "give --workflow" in capsys.readouterr().err
    (tmp_path / "list.job.yml").write_text("- 1\n- 2\n")
    assert (
        main(["run", str(tmp_path / "list.job.yml"), "--workflow", str(ROOT / "workflows" / "simulate_inspect.cwl")])
        == 2
    )
    assert "maps the workflow's input names" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("preset: huge\n")
    assert (
        main(
            [
                "run",
                str(bad),
                "--workflow",
                str(ROOT / "workflows" / "simulate_inspect.cwl"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "workflow failed (cwltool exit status 1" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    wf = str(ROOT / "workflows" / "simulate_inspect.cwl")
    assert main(["run", str(job), "--workflow", wf, "--container", "--out", str(tmp_path / "o")]) == 2
    assert "no container engine found" in capsys.readouterr().err


def test_run_validate_finds_the_workflow_by_job_name(capsys):
    from cryoflow.cli import main

    assert main(["run", str(ROOT / "workflows" / "simulate_inspect.job.yml"), "--validate"]) == 0
    assert "are valid" in capsys.readouterr().out


@pytest.mark.slow
def test_run_on_tiny_dataset(tmp_path, capsys):
    """simulate + info on the tiny preset (the first steps of simulate_inspect.cwl, without the slower ones)."""
    from cryoflow.cli import main

    doc = YAML(typ="safe").load((ROOT / "workflows" / "simulate_inspect.cwl").read_text())
    doc["steps"] = {name: doc["steps"][name] for name in ("simulate", "info")}
    doc["outputs"] = {k: v for k, v in doc["outputs"].items() if v["outputSource"].split("/")[0] in doc["steps"]}
    for step in doc["steps"].values():
        step["run"] = str((ROOT / "workflows" / step["run"]).resolve())
    workflow = tmp_path / "quick.cwl"
    with workflow.open("w") as fh:
        YAML(typ="safe").dump(doc, fh)
    job = tmp_path / "job.yml"
    job.write_text("preset: tiny\nseed: 3\n")
    out = tmp_path / "run"
    assert main(["run", str(job), "--workflow", str(workflow), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"inventory: {out / 'info'}" in printed
    outputs = json.loads((out / "outputs.json").read_text())
    assert Path(outputs["dataset"]["path"]).parent == out.resolve()
    truth = json.loads((out / "simulate" / "summary.json").read_text())
    assert json.loads((out / "info" / "summary.json").read_text())["micrographs"] == truth["n_micrographs"] > 0
    # a second run finds every step in the cache and redoes nothing
    assert main(["run", str(job), "--workflow", str(workflow), "--out", str(out)]) == 0
    assert (out / ".cwl-cache").is_dir()
