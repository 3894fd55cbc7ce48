"""CWL tools and workflows: valid CWL v1.0, arguments as arrays, and they run with cwltool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
CWL_FILES = sorted((ROOT / "tools").glob("*.cwl")) + sorted((ROOT / "workflows").glob("*.cwl"))


def cwltool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", CRYOFLOW_QUIET="1"
    )
    return subprocess.run(
        [sys.executable, "-m", "cwltool", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


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
