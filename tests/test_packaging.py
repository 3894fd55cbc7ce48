"""Packaging: every sub-package is listed in pyproject.toml; templates and CWL files ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cryoflow").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.mark.slow
def test_wheel_holds_templates_and_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cryoflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("step.html.j2", "index.html.j2", "base.html.j2", "style.css"):
        assert f"cryoflow/templates/{template}" in names
    # the CWL files side by side (so `run: ../tools/x.cwl` resolves) and the workflow pictures
    for path in sorted((ROOT / "tools").glob("*.cwl")):
        assert f"cryoflow/cwl/tools/{path.name}" in names
    for path in sorted((ROOT / "workflows").glob("*")):
        assert f"cryoflow/cwl/workflows/{path.name}" in names
    for path in sorted((ROOT / "docs" / "graphs").glob("*.png")):
        assert f"cryoflow/cwl/graphs/{path.name}" in names

    # installed (not from this checkout), cryoflow finds its workflows and they validate there
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys; from cryoflow import cwl; from cwltool.main import run; "
        "w = cwl.workflow('preprocess'); print(w); print(cwl.graph('preprocess')); "
        "sys.exit(run(['--validate', str(w)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(target)),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    workflow, graph = result.stdout.splitlines()[:2]
    assert workflow == str(target / "cryoflow" / "cwl" / "workflows" / "preprocess.cwl")
    assert graph == str(target / "cryoflow" / "cwl" / "graphs" / "preprocess.png")
