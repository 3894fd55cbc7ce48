"""Every bad input gives `cryoflow: error: <file>: <problem>`, exit 2, and no partial output."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryoflow.io import find_micrographs, make_optics, write_blocks, write_mrc


def good_mrc(path, pixel_size=1.0):
    return write_mrc(path, np.random.default_rng(0).normal(size=(64, 64)), pixel_size=pixel_size)


def truncated(path):
    good_mrc(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def not_mrc(path):
    path.write_text("this is a text file, not an image\n" * 40)
    return path


def unsupported_mode(path):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((16, 16), np.complex64))  # mode 4
        mrc.voxel_size = 1.0
    return path


def with_nan(path):
    data = np.zeros((16, 16), np.float32)
    data[2, 2] = np.inf
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 1.0
    return path


def zero_pixel(path):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((16, 16), np.float32))
    return path


def star_missing_column(path):
    write_blocks(
        path,
        {
            "optics": make_optics(1.0, 300, 2.7, 0.1),
            "micrographs": pd.DataFrame({"rlnDefocusU": [1.0], "rlnOpticsGroup": [1]}),
        },
    )
    return path


CASES = {
    "missing file": (lambda p: p, "file not found"),
    "not an MRC": (not_mrc, "not a valid MRC"),
    "truncated MRC": (truncated, "truncated"),
    "unsupported mode": (unsupported_mode, "unsupported MRC mode 4"),
    "NaN or Inf": (with_nan, "NaN or Inf"),
    "pixel size zero": (zero_pixel, "pixel size missing or zero"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_micrograph(cli, tmp_path, case):
    make, message = CASES[case]
    path = make(tmp_path / "bad <name>.mrc")
    out = tmp_path / "report"
    result = cli("info", path, "--out", out)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"cryoflow: error: {path}: ")
    assert message in lines[0]
    assert not out.exists()  # nothing half-written


def test_star_missing_required_column(cli, tmp_path):
    path = star_missing_column(tmp_path / "micrographs.star")
    result = cli("info", path)
    assert result.code == 2
    assert (
        result.err.strip()
        == f"cryoflow: error: {path}: data_micrographs is missing required column(s): rlnMicrographName"
    )


def test_empty_folder_and_folder_without_mrc(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("info", empty)
    assert result.code == 2 and result.err.strip() == f"cryoflow: error: {empty}: folder holds no MRC files (*.mrc)"
    other = tmp_path / "tiffs"
    other.mkdir()
    (other / "movie.tiff").write_bytes(b"II*\x00")
    (other / "sub").mkdir()
    result = cli("info", other)
    assert result.code == 2 and "folder holds no MRC files" in result.err


def test_empty_micrograph_set(cli, tmp_path):
    result = cli("info", str(tmp_path / "nothing_*.mrc"))
    assert result.code == 2 and "pattern matches no files" in result.err
    star = tmp_path / "empty.star"
    write_blocks(
        star,
        {
            "optics": make_optics(1.0, 300, 2.7, 0.1),
            "micrographs": pd.DataFrame({"rlnMicrographName": [], "rlnOpticsGroup": []}),
        },
    )
    from cryoflow.errors import CryoflowError

    with pytest.raises(CryoflowError, match="lists no micrographs"):
        find_micrographs(star)


def test_pixel_size_given_rescues_missing_header(cli, tmp_path):
    path = zero_pixel(tmp_path / "m.mrc")
    result = cli("info", path, "--pixel-size", "1.06")
    assert result.code == 0 and "1.06" in result.out
    result = cli("info", path, "--pixel-size", "-1")
    assert result.code == 2 and "positive" in result.err
