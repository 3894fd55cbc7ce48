"""Rabix Composer: every tool and workflow loads in Composer's model (cwlts), graphs render.

``rabix/check.js`` (node) validates each CWL file against cwlts' v1.0 schema and builds it
with cwlts' factories, as Composer 1.5 does; ``rabix/render/render.js`` draws each workflow
with cwl-svg in headless Chromium. The node packages are installed here by ``npm ci`` from the
committed lock files when missing; without node the check is skipped, without Chromium the
render is (it is a developer command: its PNGs are committed under docs/graphs/).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RABIX = ROOT / "rabix"
RENDER = RABIX / "render"
CWL_FILES = sorted((ROOT / "tools").glob("*.cwl")) + sorted((ROOT / "workflows").glob("*.cwl"))
WORKFLOWS = sorted((ROOT / "workflows").glob("*.cwl"))
NODE = shutil.which("node")
NPM = shutil.which("npm")
CHROMIUM = "/usr/bin/chromium"


def npm_ci(folder: Path, marker: str) -> None:
    """Install the folder's node packages from its lock file unless ``node_modules/marker`` is there."""
    if not NODE or not NPM:
        pytest.skip("node/npm not installed (apt-get install nodejs npm)")
    if (folder / "node_modules" / marker).is_dir():
        return
    result = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"npm ci in {folder} failed:\n{result.stderr[-3000:]}"


def check(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(RABIX / "check.js"), *map(str, files)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.fixture(scope="module")
def cwlts():
    npm_ci(RABIX, "cwlts")


def test_composer_loads_every_cwl_file(cwlts):
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    for path in CWL_FILES:
        assert f"ok   {path.relative_to(ROOT)}" in result.stdout


def write_broken(tmp_path: Path, name: str, source: Path, old: str, new: str) -> Path:
    """A copy of a CWL file with one edit, placed so its relative `run:` paths still resolve."""
    text = source.read_text()
    assert old in text, f"{source.name} no longer contains {old!r}; update this test"
    folder = tmp_path / source.parent.name
    folder.mkdir(exist_ok=True)
    if source.parent.name == "workflows" and not (tmp_path / "tools").exists():
        shutil.copytree(ROOT / "tools", tmp_path / "tools")
    path = folder / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "source, old, new, message",
    [
        ("tools/info.cwl", "cwlVersion: v1.0", "cwlVersion: v1.2", "Composer 1.5 edits v1.0 only"),
        ("tools/info.cwl", "\ninputs:", "\ninputz:", "should have required property 'inputs'"),
        ("tools/info.cwl", "type: Directory", "type: Drectory", 'unknown type "Drectory"'),
        ("tools/info.cwl", "baseCommand: [cryoflow, info]", "baseCommand: [cryoflow, info", "not readable as YAML"),
        ("workflows/simulate_inspect.cwl", "run: ../tools/info.cwl", "run: ../tools/nothing.cwl", "no such file"),
        (
            "workflows/simulate_inspect.cwl",
            "micrographs: simulate/dataset",
            "micrographz: simulate/dataset",
            "micrographz",
        ),
        ("workflows/simulate_inspect.cwl", "outputSource: ctf/out_dir", "outputSource: ctf/nothing", "unknown source"),
        ("workflows/simulate_inspect.cwl", "    sbg:x: 850\n    sbg:y: 300", "    sbg:y: 300", "no sbg:x/sbg:y"),
        ("workflows/simulate_inspect.cwl", "    label: CTF\n", "", "give it a short label"),
        (
            "workflows/simulate_inspect.cwl",
            "    sbg:x: 850\n    sbg:y: 150",
            "    sbg:x: 850\n    sbg:y: 50",
            "overlap",
        ),
    ],
    ids=["version", "schema", "type", "yaml", "run-missing", "port", "source", "layout", "label", "overlap"],
)
def test_composer_check_rejects_broken_cwl(cwlts, tmp_path, source, old, new, message):
    broken = write_broken(tmp_path, "broken.cwl", ROOT / source, old, new)
    result = check(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and message in result.stderr, result.stderr


def test_every_workflow_has_a_committed_graph():
    readme = (ROOT / "README.md").read_text()
    for workflow in WORKFLOWS:
        png = ROOT / "docs" / "graphs" / f"{workflow.stem}.png"
        assert png.is_file(), f"{png.relative_to(ROOT)} missing: run `node rabix/render/render.js`"
        assert f"docs/graphs/{workflow.stem}.png" in readme, f"README does not show {png.name}"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium (apt-get install chromium); render is a developer command"
)
def test_render_draws_every_workflow(tmp_path):
    npm_ci(RENDER, "cwl-svg")
    result = subprocess.run(
        [NODE, str(RENDER / "render.js"), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for workflow in WORKFLOWS:
        width, height = png_size(tmp_path / f"{workflow.stem}.png")
        # a graph of a few nodes, cropped to the drawing: wider than tall, not a blank sliver
        assert 600 < width <= 2 * 1400 and 200 < height < width
