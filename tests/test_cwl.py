"""CWL tools and workflows: valid CWL v1.0, arguments as arrays, and they run with cwltool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
def test_workflow_runs_under_toil(tmp_path):
    toil = Path(sys.executable).parent / "toil-cwl-runner"
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", CRYOFLOW_QUIET="1"
    )
    result = subprocess.run(
        [
            str(toil),
            "--no-container",
            "--batchSystem",
            "single_machine",
            "--jobStore",
            str(tmp_path / "jobstore"),
            "--workDir",
            str(tmp_path),
            "--outdir",
            str(tmp_path / "out"),
            "--logLevel",
            "WARNING",
            str(ROOT / "workflows" / "simulate_inspect.cwl"),
            str(ROOT / "workflows" / "simulate_inspect.job.yml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout)
    inventory = json.loads((Path(outputs["inventory"]["path"]) / "summary.json").read_text())
    truth = json.loads((Path(outputs["dataset"]["path"]) / "summary.json").read_text())
    assert inventory["micrographs"] == truth["n_micrographs"] > 0
    ctf = Path(outputs["ctf_dir"]["path"])
    assert (ctf / "micrographs_ctf.star").is_file() and (ctf / "summary.json").is_file()


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
