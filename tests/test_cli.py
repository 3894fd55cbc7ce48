"""The command line: version, help, info on real data, the index report."""

from __future__ import annotations

import json

import numpy as np

import cryoflow
from cryoflow.cli import COMMANDS
from cryoflow.io import write_mrc


def test_version_and_help(cli, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        cli("--version")
    assert exit_info.value.code == 0
    assert cryoflow.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli("--help")
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text


def test_info_real_micrographs(cli, shared_data):
    result = cli("info", shared_data / "micrographs", "--json")
    assert result.code == 0
    entries = {e["file"].rsplit("/", 1)[-1]: e for e in json.loads(result.out)}
    assert entries["epu_falcon_crop1024.mrc"]["pixel_size_A"] == 0.6666
    assert entries["diamond_epu_bin4.mrc"]["shape"] == [959, 927]
    assert all(e["type"] == "micrograph" and e["mode"] == "2 (float32)" for e in entries.values())


def test_info_real_star_files(cli, shared_data):
    star = shared_data / "star"
    result = cli(
        "info", star / "relion31.6opticsgroups.star", star / "relion5.star", star / "empiar_10076_7.star", "--json"
    )
    assert result.code == 0
    six, r5, r30 = json.loads(result.out)
    assert six["optics_groups"] == 6 and six["particles"] == 139
    assert r5["particles"] == 17 and "rlnAutopickFigureOfMerit" in r5["columns"]
    assert r30["relion_30_upgraded"] and r30["particles"] == 7
    result = cli("info", star / "cryosparc_P12_J24_001_particles.cs", "--json")
    assert result.code == 0 and json.loads(result.out)[0]["rows"] > 0


def test_info_stack_statistics(cli, tmp_path):
    data = np.random.default_rng(1).normal(3.0, 2.0, size=(300, 24, 24)).astype(np.float32)
    path = write_mrc(tmp_path / "p.mrcs", data, pixel_size=1.2)
    (entry,) = json.loads(cli("info", path, "--json").out)
    assert entry["type"] == "stack" and entry["images"] == 300
    assert np.isclose(entry["mean"], data.mean(), atol=1e-4) and np.isclose(entry["std"], data.std(), rtol=1e-4)
    assert entry["min"] == data.min() and entry["max"] == data.max()


def test_info_report_and_index(cli, shared_data, tmp_path):
    run = tmp_path / "run"
    result = cli("info", shared_data / "micrographs", "--out", run / "info")
    assert result.code == 0
    html = (run / "info" / "report.html").read_text()
    assert html.count("<img") == 4 and "epu_falcon_bin4.mrc" in html
    assert json.loads((run / "info" / "summary.json").read_text())["micrographs"] == 4
    assert cli("report", run).code == 0
    assert 'href="info/report.html"' in (run / "index.html").read_text()


def test_progress_is_quiet_off_a_terminal(capsys, monkeypatch):
    from cryoflow.progress import progress, show_progress

    monkeypatch.delenv("CRYOFLOW_QUIET", raising=False)
    assert not show_progress()  # pytest captures stderr: not a terminal
    assert list(progress(range(5), desc="x")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""
