"""A micrograph set from files, globs, folders (EPU layout) or a STAR file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoflow.errors import CryoflowError
from cryoflow.io import find_micrographs, make_optics, write_blocks, write_mrc


def mic(path):
    return write_mrc(path, np.zeros((8, 8), np.float32), pixel_size=1.0)


@pytest.fixture
def epu(tmp_path):
    """An EPU-like session: square overviews, hole images, exposures in Data/, movies."""
    root = tmp_path / "Images-Disc1"
    exposures = []
    for square in (1, 2):
        sq = root / f"GridSquare_{square}"
        mic(sq / f"GridSquare_{square}_overview.mrc")
        mic(sq / "FoilHoles" / f"FoilHole_{square}0.mrc")
        for hole in range(2):
            exposures.append(mic(sq / "Data" / f"FoilHole_{square}{hole}_Data_1.mrc"))
            (sq / "Data" / f"FoilHole_{square}{hole}_Data_1_fractions.mrc").write_bytes(b"")
    return root, sorted(exposures)


def test_folder_in_epu_layout_takes_only_exposures(epu):
    root, exposures = epu
    assert find_micrographs(root).paths == exposures


def test_plain_folder_files_and_glob(tmp_path):
    paths = [mic(tmp_path / f"m{i}.mrc") for i in range(3)]
    (tmp_path / ".m9.part.mrc").write_bytes(b"")  # a temporary of an interrupted write
    assert find_micrographs(tmp_path).paths == paths
    assert find_micrographs([paths[2], paths[0], paths[2]]).paths == [paths[2], paths[0]]
    assert find_micrographs(str(tmp_path / "m[01].mrc")).paths == paths[:2]


def test_star_file(tmp_path, monkeypatch):
    (tmp_path / "MotionCorr" / "job002" / "Movies").mkdir(parents=True)
    names = [f"MotionCorr/job002/Movies/m{i}.mrc" for i in range(2)]
    for name in names:
        mic(tmp_path / name)
    star = tmp_path / "MotionCorr" / "job002" / "corrected_micrographs.star"
    write_blocks(
        star,
        {
            "optics": make_optics(0.83, 300, 2.7, 0.1),
            "micrographs": pd.DataFrame(
                {"rlnMicrographName": names, "rlnOpticsGroup": [1, 1], "rlnMicrographMetadata": ["x", "y"]}
            ),
        },
    )
    monkeypatch.chdir(tmp_path / "MotionCorr")  # neither the project folder nor the job folder
    result = find_micrographs(star)
    assert [p.resolve() for p in result.paths] == [(tmp_path / n).resolve() for n in names]
    assert result.star is not None and result.star.pixel_size(1) == 0.83
    with pytest.raises(CryoflowError, match="only micrograph input"):
        find_micrographs([star, tmp_path / names[0]])
