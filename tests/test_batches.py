"""Picking and extraction scattered over batches of micrographs give the unscattered run's results.

The workflows (workflows/preprocess.cwl, workflows/screening.cwl) search pick's parameters once
(on sample.star of ``cryoflow split --sample``), pick every batch with them
(``cryoflow pick --parameters``), extract every batch, and ``cryoflow merge`` each step's
batch folders. The coordinates, particles.star, the stacks and particles.cs must be those of one
pick + extract over all micrographs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

#: a short CNN training: the test checks that batches reproduce a run, not the CNN's accuracy
CNN_STEPS = 10


@pytest.fixture(scope="module")
def four_tiny(tmp_path_factory) -> Path:
    """Four all-good micrographs of the tiny preset (256² px at 3 Å/px): enough picks (> 30) that
    the CNN picker trains and the junk tests run, so every per-dataset decision is exercised."""
    from cryoflow.simulate import simulate_dataset

    folder = tmp_path_factory.mktemp("batches") / "data"
    return simulate_dataset(
        folder, preset="tiny", seed=2, n_micrographs=4, squares=("good",), report=False, workers=1
    ).path


def coordinates(folder: Path) -> dict:
    from cryoflow.io import read_blocks

    index = read_blocks(folder / "coordinates.star")["coordinate_files"]
    return {
        row["rlnMicrographName"]: next(iter(read_blocks(folder / row["rlnMicrographCoordinates"]).values()))
        for _, row in index.iterrows()
    }


def assert_same_picks(merged: Path, whole: Path) -> None:
    a, b = coordinates(merged), coordinates(whole)
    assert list(a) == list(b)
    for name in b:
        assert a[name].equals(b[name]), name
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (merged, whole))
    assert sa["picks_per_micrograph"] == sb["picks_per_micrograph"]
    assert sa["particles"] == sb["particles"] and sa["stage"] == sb["stage"]


def assert_same_particles(merged: Path, whole: Path) -> None:
    from cryoflow.io import read_table

    a, b = read_table(merged / "particles.star"), read_table(whole / "particles.star")
    assert a.optics.equals(b.optics)
    assert a.table.equals(b.table)
    for stack in b.table["rlnImageName"].str.split("@").str[1].unique():
        assert (merged / stack).read_bytes() == (whole / stack).read_bytes(), stack
    cs_a, cs_b = np.load(merged / "particles.cs"), np.load(whole / "particles.cs")
    assert cs_a.dtype == cs_b.dtype and all(np.array_equal(cs_a[f], cs_b[f]) for f in cs_b.dtype.names)
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (merged, whole))
    for key in ("micrographs", "n_particles", "stage", "box", "pixel_size", "dropped_at_edges", "diameter_A"):
        assert sa[key] == sb[key], key
    assert (merged / "report.html").is_file()


@pytest.mark.slow
def test_scattered_pick_and_extract_equal_one_run(four_tiny, tmp_path, monkeypatch):
    """split (batches of 3 and 1, sample = the whole set), pick per batch with the search's
    parameters, extract per batch, merge: the same picks, particles, stacks and .cs as one pick +
    extract over the set; a batch without picks extracts to empty outputs; with a sample of 3
    micrographs, the same picks as one pick over the set with that search's parameters."""
    import cryoflow.picking.cnn as cnn
    from cryoflow.batches import merge_step_folders, split_micrographs
    from cryoflow.errors import CryoflowError
    from cryoflow.io import read_blocks, read_table, write_blocks
    from cryoflow.picking.extract import run_extract
    from cryoflow.picking.pick import run_pick

    monkeypatch.setattr(cnn, "STEPS", CNN_STEPS)
    star = four_tiny / "truth" / "micrographs_truth.star"  # micrographs with their (true) CTF
    split = split_micrographs(star, tmp_path / "split", batch_size=3, sample=40)
    assert split["batches"] == ["batch_001.star", "batch_002.star"] and split["sample"] == "sample.star"
    search = run_pick(tmp_path / "split" / "sample.star", tmp_path / "search", images=four_tiny, report=False)
    # every per-dataset decision was taken (and is what the batches reuse)
    assert search["picker_choice"]["ran"] == "cnn" and search["junk_tests"]["ran"], search["cnn"]
    assert (tmp_path / "search" / "picker_state.pt").is_file()
    for name in ("batch_001", "batch_002"):
        batch = tmp_path / "split" / f"{name}.star"
        report = name == "batch_001"  # one batch with its reports (the merged folder links them), one without
        run_pick(
            batch, tmp_path / "pick_batches" / name, images=four_tiny, parameters=tmp_path / "search", report=report
        )
        run_extract(
            batch,
            tmp_path / "pick_batches" / name,
            tmp_path / "extract_batches" / name,
            images=four_tiny,
            report=report,
        )
    pick = merge_step_folders(
        sorted((tmp_path / "pick_batches").iterdir()), tmp_path / "pick", search=tmp_path / "search"
    )
    merge_step_folders(sorted((tmp_path / "extract_batches").iterdir()), tmp_path / "extract")
    # the search ran on every micrograph: it is the unscattered pick step
    assert_same_picks(tmp_path / "pick", tmp_path / "search")
    assert pick["micrographs"] == 4 and [b["batch"] for b in pick["merged_from"]] == ["batch_001", "batch_002"]
    assert (tmp_path / "pick" / "search" / "summary.json").is_file() and (tmp_path / "pick" / "report.html").is_file()
    assert (tmp_path / "pick" / "batches" / "batch_001" / "report.html").is_file()
    run_extract(star, tmp_path / "search", tmp_path / "extract_whole", images=four_tiny, report=False)
    assert_same_particles(tmp_path / "extract", tmp_path / "extract_whole")

    # a batch without any pick (empty holes that passed micassess): empty outputs, not a failed workflow
    empty = tmp_path / "pick_empty"
    shutil.copytree(tmp_path / "pick_batches" / "batch_002", empty)
    for path in (empty / "coordinates").rglob("*.star"):
        write_blocks(path, {"": next(iter(read_blocks(path).values())).iloc[:0]})
    with pytest.raises(CryoflowError, match="no particle could be extracted"):
        run_extract(tmp_path / "split" / "batch_002.star", empty, tmp_path / "x_fail", images=four_tiny)
    summary = run_extract(
        tmp_path / "split" / "batch_002.star", empty, tmp_path / "x_empty", images=four_tiny, allow_empty=True
    )
    assert summary["n_particles"] == 0 and (tmp_path / "x_empty" / "particles.cs").is_file()
    merge_step_folders([tmp_path / "extract_batches" / "batch_001", tmp_path / "x_empty"], tmp_path / "x_merged")
    first = read_table(tmp_path / "extract_batches" / "batch_001" / "particles.star")
    merged = read_table(tmp_path / "x_merged" / "particles.star")
    assert merged.table.equals(first.table) and merged.optics.equals(first.optics)
    with pytest.raises(CryoflowError, match="no particle was extracted"):
        merge_step_folders([tmp_path / "x_empty"], tmp_path / "x_none")

    # a search on a sample (3 of the 4 micrographs): batches pick as one job over all with its parameters
    split_micrographs(star, tmp_path / "split3", batch_size=3, sample=3)
    run_pick(tmp_path / "split3" / "sample.star", tmp_path / "search3", images=four_tiny, report=False)
    run_pick(star, tmp_path / "whole3", images=four_tiny, parameters=tmp_path / "search3", report=False)
    for name in ("batch_001", "batch_002"):
        run_pick(
            tmp_path / "split3" / f"{name}.star",
            tmp_path / "pick3_batches" / name,
            images=four_tiny,
            parameters=tmp_path / "search3",
            report=False,
        )
    merge_step_folders(sorted((tmp_path / "pick3_batches").iterdir()), tmp_path / "pick3", search=tmp_path / "search3")
    assert_same_picks(tmp_path / "pick3", tmp_path / "whole3")


def test_sample_spreads_over_the_set(tmp_path):
    from cryoflow.batches import sample_rows, split_micrographs
    from cryoflow.io import read_table, write_mrc

    assert sample_rows(10, 4).tolist() == [0, 3, 6, 9] and sample_rows(3, 40).tolist() == [0, 1, 2]
    data = tmp_path / "mics"
    for i in range(5):
        write_mrc(data / f"m{i}.mrc", np.zeros((8, 8), np.float32), 1.0)
    split_micrographs(data, tmp_path / "split", batch_size=2, sample=3)
    names = read_table(tmp_path / "split" / "sample.star").table["rlnMicrographName"].tolist()
    assert names == ["mics/m0.mrc", "mics/m2.mrc", "mics/m4.mrc"]


def test_merge_refuses_batches_picked_apart(tmp_path, cli):
    """Batches picked with different parameters cannot be merged (their picks would depend on the batching)."""
    for name, threshold in (("batch_001", 5.0), ("batch_002", 6.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "coordinates.star").write_text(
            "data_coordinate_files\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographCoordinates #2\n"
        )
        (folder / "summary.json").write_text(json.dumps({"fixed": {"threshold": threshold}}))
    result = cli("merge", tmp_path / "batch_001", tmp_path / "batch_002", "--out", tmp_path / "m")
    assert result.code == 2 and "other parameters" in result.err and not (tmp_path / "m").exists()
    result = cli("merge", tmp_path / "batch_001", "--search", tmp_path, "--out", tmp_path / "m2", "--seed", "1")
    assert result.code == 2 and not (tmp_path / "m2").exists()
