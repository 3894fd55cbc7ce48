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

# every reason of the simulator once per session, plus good ones (320 x 320 frames at 1.4-1.6 Å/px);
# two sessions: other species, doses and detectors
REASONS_SET = ["good"] * 4 + list(DEFECTS)


@pytest.fixture(scope="module")
def model():
    return MicAssessModel.load()


@pytest.fixture(scope="module")
def small_set():
    torch.set_num_threads(2)
    ranges = Ranges(shape=(320, 320), pixel_size=(1.4, 1.6), species_seed_offset=777)
    return [e for s in (0, 1) for e in simulate_session(s, 4242, ranges, reasons=REASONS_SET)]


def _calls(model, examples):
    from cryoflow.micassess.features import REASONS

    p, _, _ = predict_examples(model, examples)
    groups = model.group_proba(p)
    bad = groups.copy()
    bad[:, 0] = -1
    called = np.where(groups[:, 0] >= model.threshold, "good", np.array(REASONS)[bad.argmax(1)])
    return p, called


@pytest.mark.slow
def test_accuracy_on_small_simulated_set(model, small_set):
    """Good/bad accuracy and reasons on 30 micrographs (8 good, every defect twice) of
    sessions never seen in training."""
    p, called = _calls(model, small_set)
    truth = [e.reason for e in small_set]
    fig = figures(model, p, truth)
    misses = [f"{e.name} {e.reason} -> {c}" for e, c in zip(small_set, called, strict=True) if c != GROUP[e.reason]]
    # shipped model (320 px frames, smaller than the training's 512): good/bad 1.0, reasons 0.933
    assert fig["good_bad_accuracy"] >= 0.9, (fig, misses)
    assert fig["reason_accuracy"] >= 0.85, (fig, misses)
    assert fig["recall_per_reason"]["good"] == 1.0, (fig, misses)
    # the defects with a strong signature are always called bad, and all but one for their own
    # reason: these 14 hold calls at ~50/50 between two bad reasons (one model called an empty
    # micrograph no_particles at 0.50 / 0.49, another a crystalline-ice field with bright grains
    # a crack at 0.50 / 0.47), which retraining flips either way; more than one is a regression
    strong = [
        (e.name, e.reason, c)
        for e, c in zip(small_set, called, strict=True)
        if e.reason in ("empty", "thick_ice", "crystalline_ice", "contamination", "carbon", "crack", "aggregation")
    ]
    assert all(c != "good" for _, _, c in strong), strong
    wrong = [s for s in strong if s[2] != GROUP[s[1]]]
    assert len(wrong) <= 1, wrong


def test_density_features_see_crowding_and_clumps():
    """The density statistics on toy CNN images: noise alone occupies nothing, one clump is one
    blob, particles spread over the field are many blobs, overlapping ones merge."""
    from cryoflow.micassess.features import density_statistics

    rng = np.random.default_rng(0)
    h = w = 160
    yy, xx = np.mgrid[:h, :w]
    noise = rng.normal(0, 0.05, (h, w))

    def image(centres, r=6.0):
        img = noise.copy()
        for cy, cx in centres:
            img -= 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        return np.stack([img * 5, img]).astype(np.float16)

    empty = density_statistics(image([]))
    spread = density_statistics(image([(y, x) for y in range(30, 140, 36) for x in range(30, 140, 36)]))
    clump = density_statistics(image([(80 + dy, 80 + dx) for dy in (-12, 0, 12) for dx in (-12, 0, 12)]))
    crowded = density_statistics(image(rng.uniform(0, h, (120, 2))))
    assert empty["occupied_fraction"] < 0.02 and empty["largest_blob_share"] == 0
    assert clump["largest_blob_share"] > 0.9 and spread["largest_blob_share"] < 0.2
    assert crowded["largest_blob_share"] > 0.5 and crowded["occupied_fraction"] > spread["occupied_fraction"]


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


def test_unmeasured_ice_ring_and_out_of_range_features_are_no_evidence(tmp_path):
    """At pixel sizes that cannot see 3.7 Å the ice-ring features are NaN and count 0 (no
    evidence either way); features beyond the training range are clipped to it (binned data
    are not extrapolated); the evidence of each feature is exact (the contributions sum to
    the final log-odds of the call over good, up to the constant terms), with the hinges of
    the piecewise-linear basis bent or not."""
    from cryoflow.micassess.features import tabular_ctf
    from cryoflow.micassess.model import HINGES, Linear, MicCNN

    row = {"rlnCtfFigureOfMerit": 0.2, "rlnCtfMaxResolution": 8.0, "rlnDefocusU": 15000.0, "rlnDefocusV": 14800.0}
    ctf = tabular_ctf(row, 3.4, True)  # no rlnCtfIceRingDensity: unmeasurable at 3.4 Å/px
    assert np.isnan(ctf["ice_ring"]) and np.isnan(ctf["ice_crystallinity"])
    rng = np.random.default_rng(0)
    n_f, n_c = len(FEATURES), 12
    lo, hi = -np.ones(n_f), np.ones(n_f)  # the training range of each raw feature
    n_b = n_f * (1 + 2 * len(HINGES))
    lin = Linear(np.zeros(n_f), np.full(n_f, 0.4), rng.normal(size=(n_c, n_b)), rng.normal(size=n_c), lo, hi, HINGES)
    x = rng.uniform(-0.5, 0.5, (3, n_f))  # z within ±1.25: some features past the first hinge
    x[:, FEATURES.index("ctf_fitted")] = 1.0
    x[0, FEATURES.index("ice_ring")] = np.nan
    x[1, FEATURES.index("log_fit_resolution")] = 50.0  # far beyond the training range: clipped to 1
    z = lin.z(x)
    assert z[0, FEATURES.index("ice_ring")] == 0.0 and np.isfinite(z).all()
    assert z[1, FEATURES.index("log_fit_resolution")] == 2.5  # past the second hinge
    assert lin.basis(x).shape == (3, n_b) and (np.abs(z) > HINGES[0]).any()
    model = MicAssessModel(classes=[f"c{i}" for i in range(n_c)], linear=lin, cnn=MicCNN(n_c))
    model.classes[0] = "good"
    model.stack_lin, model.stack_cnn = rng.normal(size=(n_c, n_c)), rng.normal(size=(n_c, n_c))
    cnn = np.log(rng.dirichlet(np.ones(n_c), 3))
    target = np.array([3, 5, 7])
    p = model.combine(lin.logits(x), cnn)
    contrib = model.contributions(x, lin.logits(x), cnn, target)
    x0 = np.zeros_like(x)  # z = 0: the constant terms alone
    cnn0 = np.zeros_like(cnn)
    p0 = model.combine(lin.logits(x0), cnn0)
    rows = np.arange(3)
    log_odds = np.log(p[rows, target] / p[:, 0]) - np.log(p0[rows, target] / p0[:, 0])
    assert np.allclose(contrib.sum(1), log_odds)
    # a model file of the format before hinges still reads, as a straight line per feature
    import dataclasses

    plain = MicAssessModel(model.classes, dataclasses.replace(lin, coef=lin.coef[:, :n_f], hinges=()), model.cnn)
    state = plain.state()
    state["format"] = "cryoflow-micassess-3"
    del state["linear"]["hinges"]
    torch.save(state, tmp_path / "old.pt")
    old = MicAssessModel.load(tmp_path / "old.pt")
    assert old.linear.hinges == () and np.allclose(old.linear.logits(x), plain.linear.logits(x), atol=1e-5)


def test_relative_thickness_per_acquisition_setting():
    """A set mixing acquisition settings (pixel size, voltage) gets its relative ice thickness
    per setting: another detector's intensities do not make a whole set thick; a setting
    with one fitted micrograph gets 0, one with none NaN; a single setting keeps the CTF
    step's values."""
    from cryoflow.micassess.data import relative_thickness_per_setting

    def row(apix, mean, fitted=True):
        return {
            "_apix": apix,
            "_voltage": 300.0,
            "_fitted": fitted,
            "cryoflowMeanIntensity": mean,
            "cryoflowRelativeIceThickness": 9.0,
        }

    rows = [row(1.0, 100.0), row(1.0, 90.0), row(1.0, 100.0), row(3.4, 60.0, False), row(2.7, 100.0)]
    assert relative_thickness_per_setting(rows)
    values = [r["cryoflowRelativeIceThickness"] for r in rows]
    assert values[0] == pytest.approx(0.0) and values[1] == pytest.approx(np.log(100 / 90))
    assert np.isnan(values[3]) and values[4] == pytest.approx(0.0)  # no fitted micrograph: no evidence
    single = [row(1.0, 100.0), row(1.0, 50.0)]
    assert not relative_thickness_per_setting(single)
    assert [r["cryoflowRelativeIceThickness"] for r in single] == [9.0, 9.0]


def test_tile_augmentations_keep_the_mask_and_scale():
    """Mottling adds smooth large-scale contrast only inside the mask; the spectral filter
    (blur or sharpening) leaves channel 1 standardized by its robust spread; tiles are
    centred; degraded copies (for the stacking) are noisier and keep the mask."""
    from cryoflow.micassess.features import TILE, pad_tile
    from cryoflow.micassess.train import add_mottling, filter_tile

    rng = np.random.default_rng(0)
    part = rng.normal(0, 1, (2, 150, 170)).astype(np.float32)
    part[0] *= 0.25
    tile = pad_tile(part)
    mottled = tile.copy()
    add_mottling(mottled, rng, max_contrast=0.02)
    outside = tile[2] == 0
    assert np.all(mottled[:2][:, outside] == 0)
    diff = (mottled[0] - tile[0])[~outside] / 5.0
    assert 0 < diff.std() <= 0.03
    for _ in range(5):
        filtered = tile.copy()
        filter_tile(filtered, rng)
        vals = filtered[1][tile[2] > 0]
        mad = np.median(np.abs(vals - np.median(vals))) * 1.4826
        assert abs(mad - 1) < 0.05 and np.all(filtered[:2][:, outside] == 0)
    assert tile.shape == (3, TILE, TILE)
    # tiles are centred on their own median (an illumination gradient over a large frame
    # does not offset one tile against another)
    assert abs(np.median(tile[0][~outside])) < 1e-6 and abs(np.median(tile[1][~outside])) < 1e-6
    shifted = pad_tile(part + np.float32(0.3))
    assert np.allclose(shifted, tile, atol=1e-5)
    from cryoflow.micassess.train import degrade_tile

    worse = degrade_tile(tile, rng)
    assert np.all(worse[:2][:, outside] == 0) and np.isfinite(worse).all()
    vals = worse[1][~outside]
    assert abs(np.median(np.abs(vals - np.median(vals))) * 1.4826 - 1) < 0.15
    assert not np.allclose(worse, tile)


def test_spectrum_anisotropy_sees_directional_blur_not_detector_lines():
    """Residual drift (a line blur) raises ``spectrum_anisotropy``; an isotropic image and
    detector row/column patterns (power on the axes, left out) do not."""
    from scipy import ndimage

    from cryoflow.micassess.features import spectrum_anisotropy

    rng = np.random.default_rng(1)
    h = w = 192
    signal = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0)  # 4 Å/px: structure at 12-25 Å
    signal *= 0.05 / signal.std()
    kernel = np.zeros((9, 9))
    kernel[4, :] = 1 / 9  # 9 px = 36 Å along x, rotated below so that no axis is special
    drifted = ndimage.convolve(ndimage.rotate(signal, 30, reshape=False, mode="wrap"), kernel, mode="wrap")
    noise = rng.normal(0, 0.01, (h, w))

    def value(img):
        return spectrum_anisotropy(np.stack([img * 5, img]).astype(np.float16))["spectrum_anisotropy"]

    iso, blurred = value(signal + noise), value(drifted + noise)
    rows = signal + noise + 0.05 * rng.normal(0, 1, (h, 1))  # a gain pattern constant along rows
    assert blurred > iso + 1.0, (iso, blurred)
    assert value(rows) < iso + 0.3, (iso, value(rows))


def test_drift_anisotropy_sees_full_resolution_blur_at_any_frame_size():
    """A line blur of the signal (residual drift, 12 Å at 1.2 Å/px: 10 px) under isotropic
    shot noise raises ``drift_anisotropy``; the same unblurred field reads about 0 whether
    the frame is small (overlapping Welch tiles) or large (25 tiles): noise is discounted."""
    from scipy import ndimage

    from cryoflow.micassess.features import _mean, drift_anisotropy, prepare, welch_independent_tiles, welch_spectrum

    rng = np.random.default_rng(2)
    apix = 1.2

    def value(shape, blur):
        signal = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5)
        signal *= 0.15 / signal.std()
        if blur:
            kernel = np.zeros((11, 11))
            kernel[5, :] = 1 / 11
            signal = ndimage.convolve(ndimage.rotate(signal, 30, reshape=False, mode="wrap"), kernel, mode="wrap")
        image = rng.poisson(40 * (1 + signal)).astype(np.float32)
        x = prepare(image)
        power, k = welch_spectrum(x, apix, _mean(x))
        return drift_anisotropy(power, k, apix, welch_independent_tiles(shape))["drift_anisotropy"]

    small, large, drifted = value((512, 512), False), value((1536, 1536), False), value((512, 512), True)
    assert small < 0.02 and large < 0.02, (small, large)
    assert drifted > 0.05, drifted


def test_relative_ice_thickness_scaled_to_300kv():
    """ln(I95 / I) = Δt / λ_in(V): at 200 kV (shorter mean free path) it is scaled down to
    the 300 kV value of the same extra thickness; no voltage: unscaled."""
    from cryoflow.micassess.features import tabular_ctf
    from cryoflow.simulate.physics import inelastic_mean_free_path

    row = {"cryoflowRelativeIceThickness": 0.3}
    assert tabular_ctf(row, 1.0, True)["relative_ice_thickness"] == pytest.approx(0.3)
    assert tabular_ctf({**row, "_voltage": 300.0}, 1.0, True)["relative_ice_thickness"] == pytest.approx(0.3)
    at200 = tabular_ctf({**row, "_voltage": 200.0}, 1.0, True)["relative_ice_thickness"]
    assert at200 == pytest.approx(0.3 * inelastic_mean_free_path(200.0) / inelastic_mean_free_path(300.0))


def test_ice_thickness_vs_median_per_set_and_setting():
    """The set feature is each micrograph's relative ice thickness over its setting's median of the
    fitted micrographs: an empty (no ice, unfitted) micrograph reads below it, a thick one above,
    and a second acquisition setting gets its own median."""
    from cryoflow.micassess.features import SET_FEATURES, add_set_features, feature_vector

    rel, fit, med = (FEATURES.index(n) for n in ("relative_ice_thickness", "ctf_fitted", "ice_thickness_vs_median"))
    assert SET_FEATURES == ("ice_thickness_vs_median",)
    x = np.zeros((6, len(FEATURES)))
    x[:, rel] = [0.10, 0.12, 0.14, 0.45, 0.00, 1.0]  # three typical, thick, empty; one of another setting
    x[:, fit] = [1, 1, 1, 1, 0, 1]
    add_set_features(x, ["a"] * 5 + ["b"])
    np.testing.assert_allclose(x[:, med], [-0.03, -0.01, 0.01, 0.32, -0.13, 0.0], atol=1e-12)
    assert np.isnan(feature_vector({n: 0.0 for n in FEATURES}, {})[med])  # filled in once the set is known


def test_live_batch_reads_the_session_median():
    """A live batch (cryoflow watch) given the session's earlier intensities gets the same
    ice_thickness_vs_median as the whole session assessed at once."""
    from cryoflow.micassess.data import acquisition_key, add_relative_thickness
    from cryoflow.micassess.features import add_set_features, tabular_ctf
    from cryoflow.micassess.run import _session_thickness

    intensities = [100.0, 97.0, 95.0, 80.0, 101.0, 90.0]

    def rows_of(values):
        return [
            {"cryoflowMeanIntensity": v, "_fitted": True, "_voltage": 200.0, "_apix": 1.0, "rlnCtfFigureOfMerit": 0.2}
            for v in values
        ]

    def features(rows, others=None):
        x = np.zeros((len(rows), len(FEATURES)))
        for row, r in zip(x, rows, strict=True):
            row[FEATURES.index("relative_ice_thickness")] = tabular_ctf(r, 1.0, True)["relative_ice_thickness"]
            row[FEATURES.index("ctf_fitted")] = 1.0
        return add_set_features(x, [acquisition_key(r) for r in rows], others)[
            :, FEATURES.index("ice_thickness_vs_median")
        ]

    whole = rows_of(intensities)
    add_relative_thickness(whole)
    batch = rows_of(intensities[-2:])
    add_relative_thickness(batch)  # its own reference: the median difference does not depend on it
    live = features(batch, _session_thickness(batch, intensities[:-2]))
    np.testing.assert_allclose(live, features(whole)[-2:], atol=1e-9)
    assert not np.allclose(features(batch), features(whole)[-2:])  # the batch alone reads otherwise
