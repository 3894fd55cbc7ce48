"""The container image: docker/build.sh builds cryoflow:cpu with podman (a debootstrap base, no
registry, the CPU torch wheel) and a CWL tool runs inside it through ``cwltool --podman``.

The build is cached by content (docker/build.sh labels the image with a hash of what goes into
it and rebuilds only when that changes; the dependency layer is reused while the dependency list
is unchanged), so this test pays for a full build only on a fresh machine. It is skipped where
podman or debootstrap is missing (.ci/run installs them: apt-get install podman runc debootstrap)
or without root (the base image is made with debootstrap, podman runs rootful).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "docker" / "build.sh"
IMAGE = "cryoflow:cpu"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the base image is made with debootstrap and podman runs rootful"
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install podman runc debootstrap; .ci/run does)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]


@pytest.fixture(scope="module")
def image():
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and not Path("/etc/containers/containers.conf").exists():
        env["CONTAINERS_CONF"] = str(ROOT / "docker" / "containers.conf")
    result = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == IMAGE
    return env


def podman(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=300)


def test_image_is_labelled_with_its_sources_and_has_cpu_torch(image):
    label = podman(image, "image", "inspect", "--format", '{{ index .Labels "org.cryoflow.source-hash" }}', IMAGE)
    expected = subprocess.run(["bash", str(BUILD), "--hash"], capture_output=True, text=True, env=image, timeout=300)
    assert label.stdout.strip() == expected.stdout.strip() != ""
    probe = podman(image, "run", "--rm", IMAGE, "python", "-c", "import torch, cryoflow; print(torch.__version__)")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().endswith("+cpu")


def test_tool_runs_in_the_image_through_cwltool(image, tmp_path, monkeypatch):
    from cryoflow.cli import main
    from cryoflow.cwl.runner import container_setup, cwltool_env, run_cwltool

    for key in ("CONTAINERS_CONF",):
        if key in image:
            monkeypatch.setenv(key, image[key])
    assert main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "sim")]) == 0
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"micrographs": {"class": "Directory", "path": str(tmp_path / "sim")}}))
    # rootful podman: cwltool's --userns=keep-id is dropped by the wrapper put first on PATH
    flags, extra_path = container_setup("podman", tmp_path / "bin")
    assert flags == ["--podman"] and (tmp_path / "bin" / "podman").is_file()
    # a PATH without the venv's cryoflow, so the tool can only have run in the image
    env = cwltool_env(extra_path)
    venv = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and p != venv)
    assert shutil.which("cryoflow", path=env["PATH"]) is None
    code, stdout, _ = run_cwltool(
        [*flags, "--outdir", str(tmp_path / "out"), str(ROOT / "tools" / "info.cwl"), str(job)],
        env=env,
        log=tmp_path / "cwltool.log",
    )
    log = (tmp_path / "cwltool.log").read_text()
    assert code == 0, log[-4000:]
    assert "podman" in log and IMAGE in log
    outputs = json.loads(stdout)
    summary = json.loads(Path(outputs["summary"]["path"]).read_text())
    truth = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["micrographs"] == truth["n_micrographs"] == 6
