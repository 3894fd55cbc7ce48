"""Bad-micrograph detection: accuracy against the simulator's truth, the command, bad input, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import starfile
import torch

from cryoflow.micassess import FEATURES, MicAssessModel
from cryoflow.micassess.data import Ranges, simulate_session
from cryoflow.micassess.features import GROUP
from cryoflow.micassess.train import figures, predict_examples
from cryoflow.simulate.defects import DEFECTS

# every reason of the simulator once, plus good ones (320 x 320 frames at 1.4-1.6 Å/px)
REASONS_SET = ["good"] * 4 + list(DEFECTS)


@pytest.fixture(scope="module")
def model():
    return MicAssessModel.load()


@pytest.fixture(scope="module")
def small_set():
    torch.set_num_threads(2)
    ranges = Ranges(shape=(320, 320), pixel_size=(1.4, 1.6), species_seed_offset=777)
    return simulate_session(0, 4242, ranges, reasons=REASONS_SET)


@pytest.mark.slow
def test_accuracy_on_small_simulated_set(model, small_set):
    p, _, _ = predict_examples(model, small_set)
    truth = [e.reason for e in small_set]
    fig = figures(model, p, truth)
    assert fig["good_bad_accuracy"] >= 0.85, fig
    groups = model.group_proba(p)
    from cryoflow.micassess.features import REASONS

    called = np.where(groups[:, 0] >= model.threshold, "good", np.array(REASONS)[np.argmax(groups[:, 1:], 1) + 1])
    for e, c in zip(small_set, called, strict=True):
        if e.reason in ("empty", "thick_ice", "contamination"):
            assert c == GROUP[e.reason], f"{e.reason} called {c}"


@pytest.fixture(scope="module")
def ctf_run(tmp_path_factory):
    """A tiny simulated dataset through `cryoflow ctf` (both STAR files)."""
    from cryoflow.cli import main
    from cryoflow.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("micassess")
    simulate_dataset(
        root / "data", preset="tiny", seed=3, n_micrographs=6, report=False, shape=(320, 320), pixel_size=1.6
    )
    assert main(["ctf", str(root / "data" / "micrographs.star"), "--out", str(root / "ctf"), "--no-tilt"]) == 0
    return root


@pytest.mark.slow
def test_command_end_to_end(cli, ctf_run, tmp_path):
    star = ctf_run / "ctf" / "micrographs_ctf.star"
    result = cli("micassess", "--micrographs", star, "--out", tmp_path / "ma", "--device", "cpu")
    assert result.code == 0, result.err
    n_fitted = len(starfile.read(star, always_dict=True)["micrographs"])
    failed = ctf_run / "ctf" / "micrographs_ctf_failed.star"
    n_failed = len(starfile.read(failed, always_dict=True)["micrographs"]) if failed.exists() else 0
    good = starfile.read(tmp_path / "ma" / "micrographs_good.star", always_dict=True)
    rejected = starfile.read(tmp_path / "ma" / "micrographs_rejected.star", always_dict=True)
    assert "optics" in good and "optics" in rejected
    tables = [t["micrographs"] for t in (good, rejected) if "micrographs" in t]
    assert sum(len(t) for t in tables) == n_fitted + n_failed == 6
    for t in tables:
        assert {"rlnMicrographName", "cryoflowMicassessPGood", "cryoflowMicassessReason"} <= set(t.columns)
        assert t["cryoflowMicassessPGood"].between(0, 1).all()
    summary = json.loads((tmp_path / "ma" / "summary.json").read_text())
    assert summary["good"] + summary["rejected"] == 6
    assert sum(summary["counts_per_reason"].values()) == 6
    assert (tmp_path / "ma" / "report.html").exists()
    # a threshold of 0.99 rejects at least as many
    strict = cli("micassess", "--micrographs", star, "--out", tmp_path / "ma2", "--threshold", "0.99")
    assert strict.code == 0, strict.err
    assert json.loads((tmp_path / "ma2" / "summary.json").read_text())["rejected"] >= summary["rejected"]


def test_bad_input(cli, tmp_path):
    from cryoflow.io import make_optics, write_blocks

    star = tmp_path / "in.star"
    import pandas as pd

    write_blocks(
        star,
        {
            "optics": make_optics(1.5, 300, 2.7, 0.1),
            "micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnOpticsGroup": [1]}),
        },
    )
    r = cli("micassess", "--micrographs", star, "--out", tmp_path / "out")
    assert r.code == 2
    assert "rlnCtfFigureOfMerit" in r.err and str(star) in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    r = cli("micassess", "--micrographs", star, "--out", tmp_path / "full")
    assert r.code == 2 and "not empty" in r.err
    r = cli("micassess", "--micrographs", star, "--out", tmp_path / "o2", "--threshold", "2")
    assert r.code == 2 and "threshold" in r.err


def test_shipped_model_loads_weights_only():
    from cryoflow.models import model_path

    path = model_path("micassess.pt")
    assert path.stat().st_size <= 20 * 2**20
    state = torch.load(path, weights_only=True)
    assert list(state["features"]) == list(FEATURES)
    assert (model_path("micassess.md")).exists()


@pytest.mark.slow
def test_training_smoke_runs_and_fine_tunes(ctf_run, tmp_path):
    """A few steps on simulated data, then fine-tuning from it on user labels (STAR with a label column)."""
    from cryoflow.micassess.train import TrainSettings, train, user_examples

    ranges = Ranges(shape=(256, 256), pixel_size=(1.5, 1.5), per_session=3)
    settings = TrainSettings(n_sessions=1, epochs=1, max_steps=2, batch=4)
    base = train(tmp_path / "sim.pt", settings, ranges=ranges, cache=tmp_path / "cache", log=lambda *_: None)
    loaded = MicAssessModel.load(tmp_path / "sim.pt")
    assert loaded.classes == base.classes
    # user labels: the CTF STAR with the simulator's truth as a label column
    truth = starfile.read(ctf_run / "data" / "truth" / "micrographs_truth.star", always_dict=True)["micrographs"]
    blocks = starfile.read(ctf_run / "ctf" / "micrographs_ctf.star", always_dict=True)
    table = blocks["micrographs"]
    reasons = dict(zip(truth["rlnMicrographName"].map(lambda s: s.split("/")[-1]), truth["cfReason"], strict=True))
    table["cfReason"] = table["rlnMicrographName"].map(lambda s: reasons[s.split("/")[-1]])
    labelled = ctf_run / "ctf" / "labelled.star"
    starfile.write(blocks, labelled)
    user = user_examples(labelled)
    assert len(user) == len(table)
    tuned = train(
        tmp_path / "tuned.pt",
        TrainSettings(n_sessions=0, epochs=1, max_steps=2),
        user=user,
        base=loaded,
        log=lambda *_: None,
    )
    assert tuned.meta["fine_tuned"]
    state = torch.load(tmp_path / "tuned.pt", weights_only=True)
    assert state["format"].startswith("cryoflow-micassess")
    p, _, _ = predict_examples(MicAssessModel.load(tmp_path / "tuned.pt"), user)
    assert np.allclose(p.sum(1), 1)
