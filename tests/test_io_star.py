"""STAR files: RELION 3.1/5 round trips, 3.0 upgrade, optics groups, path resolution."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cryoflow.errors import CryoflowError
from cryoflow.io import make_optics, read_blocks, read_table, resolve_star_path, write_blocks, write_table
from cryoflow.io.star import StarTable

REAL_STAR = ["relion31.star", "relion31.v2.star", "relion31.6opticsgroups.star", "relion5.star", "empiar_10076_7.star"]


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for column in a.columns:
        x, y = a[column].to_numpy(), b[column].to_numpy()
        if np.issubdtype(x.dtype, np.number):
            np.testing.assert_allclose(x.astype(float), y.astype(float), rtol=1e-9, err_msg=column)
        else:
            assert [str(v) for v in x] == [str(v) for v in y], column


@pytest.mark.parametrize("name", REAL_STAR)
def test_real_files_round_trip_losslessly(shared_data, tmp_path, name):
    path = shared_data / "star" / name
    original = read_blocks(path)
    out = write_blocks(tmp_path / name, original)
    again = read_blocks(out)
    assert list(again) == list(original)
    for block in original:
        assert_frames_equal(original[block], again[block])


@pytest.mark.parametrize("name", REAL_STAR)
def test_real_files_as_tables(shared_data, tmp_path, name):
    table = read_table(shared_data / "star" / name)
    assert table.kind == "particles"
    assert (table.pixel_size() > 0).all()
    # written as RELION 3.1+ and read back: same rows, same columns, same optics
    again = read_table(write_table(tmp_path / name, table))
    assert not again.upgraded
    assert_frames_equal(table.table, again.table)
    assert_frames_equal(table.optics, again.optics)


def test_multiple_optics_groups(shared_data):
    table = read_table(shared_data / "star" / "relion31.6opticsgroups.star")
    assert len(table.optics) == 6
    sizes = table.pixel_size()
    groups = table.table["rlnOpticsGroup"].to_numpy()
    for group in np.unique(groups):
        assert np.all(sizes[groups == group] == table.pixel_size(int(group)))


def test_relion30_is_upgraded(shared_data):
    table = read_table(shared_data / "star" / "empiar_10076_7.star")
    assert table.upgraded
    assert "rlnVoltage" in table.optics and "rlnVoltage" not in table.table
    assert "rlnOpticsGroup" in table.table
    # pixel size from magnification and detector pixel size, as RELION 3.0 computed it
    raw = read_blocks(shared_data / "star" / "empiar_10076_7.star")[""]
    expected = raw["rlnDetectorPixelSize"] * 1e4 / raw["rlnMagnification"]
    np.testing.assert_allclose(table.pixel_size(), expected, rtol=1e-6)


def test_relion30_several_optics_and_unknown_columns(tmp_path):
    df = pd.DataFrame(
        {
            "rlnMicrographName": ["a.mrc", "b.mrc", "c.mrc"],
            "rlnVoltage": [300.0, 300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1, 0.1],
            "rlnMicrographPixelSize": [1.0, 1.0, 1.2],
            "myFacilityScore": [0.5, 0.25, 0.125],
        }
    )
    write_blocks(tmp_path / "old.star", {"": df})
    table = read_table(tmp_path / "old.star")
    assert table.kind == "micrographs" and len(table.optics) == 2
    assert list(table.table["rlnOpticsGroup"]) == [1, 1, 2]
    np.testing.assert_allclose(table.pixel_size(), [1.0, 1.0, 1.2])
    again = read_table(write_table(tmp_path / "new.star", table))
    np.testing.assert_allclose(again.table["myFacilityScore"], df["myFacilityScore"])


def test_missing_block_and_columns(tmp_path):
    write_blocks(tmp_path / "x.star", {"optics": make_optics(1.0, 300, 2.7, 0.1), "other": pd.DataFrame({"a": [1]})})
    with pytest.raises(CryoflowError, match="x.star: has no data_micrographs"):
        read_table(tmp_path / "x.star", kind="micrographs")
    optics = make_optics(1.0, 300, 2.7, 0.1)
    table = StarTable(optics, pd.DataFrame({"rlnMicrographName": ["a"], "rlnOpticsGroup": [3]}), "micrographs")
    write_table(tmp_path / "bad_group.star", table)
    with pytest.raises(CryoflowError, match="optics group"):
        read_table(tmp_path / "bad_group.star")


def test_not_a_star_file(tmp_path):
    (tmp_path / "junk.star").write_bytes(b"\x00\x01binary garbage")
    with pytest.raises(CryoflowError, match="junk.star"):
        read_blocks(tmp_path / "junk.star")


def test_relative_paths_resolve_like_relion(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "MotionCorr" / "job002" / "Movies").mkdir(parents=True)
    mic = project / "MotionCorr" / "job002" / "Movies" / "m1.mrc"
    mic.write_bytes(b"")
    star = project / "MotionCorr" / "job002" / "corrected_micrographs.star"
    # run from elsewhere: the name is found relative to the project (two levels above the STAR file)
    monkeypatch.chdir(tmp_path)
    assert resolve_star_path("MotionCorr/job002/Movies/m1.mrc", star) == mic
    # run from the project folder, as RELION does: the working directory wins
    monkeypatch.chdir(project)
    assert resolve_star_path("MotionCorr/job002/Movies/m1.mrc", star) == type(mic)("MotionCorr/job002/Movies/m1.mrc")
    assert resolve_star_path(f"12@{os.fspath(mic)}", star) == mic
