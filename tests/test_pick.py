"""cryoflow pick: picks measured against the simulator's truth; parameters chosen from the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryoflow.io import read_blocks
from cryoflow.picking import search
from cryoflow.picking.filters import CtfParams, prepare, score_map
from cryoflow.picking.pick import coordinate_file, run_pick
from cryoflow.picking.pick_bench import score_picks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four all-good micrographs of 512² at 2 Å/px: 7DDO and a 120 Å rod (the tiny preset's species)."""
    from cryoflow.simulate import simulate_dataset

    folder = tmp_path_factory.mktemp("pick") / "data"
    return simulate_dataset(
        folder,
        preset="tiny",
        seed=5,
        n_micrographs=4,
        squares=("good",),
        shape=(512, 512),
        pixel_size=2.0,
        particles=(30, 40),
        report=False,
        workers=1,
    ).path


@pytest.fixture(scope="module")
def picked(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pick") / "out"
    summary = run_pick(data / "truth/micrographs_truth.star", out, diameter=115.0, picker="blob")
    return out, summary


def test_picks_match_the_truth(data, picked):
    out, summary = picked
    scores = score_picks(out, data, search.EDGE_MARGIN * 115.0 / 2.0)
    assert scores["f1"] >= 0.85, scores
    assert scores["background_share"] <= 0.10, scores
    assert summary["threshold_source"] == "chosen" and summary["threshold"] >= search.MIN_THRESHOLD


def test_outputs_are_relion_autopick_files(data, picked):
    out, summary = picked
    index = read_blocks(out / "coordinates.star")["coordinate_files"]
    assert len(index) == 4
    total = 0
    for _, row in index.iterrows():
        assert row["rlnMicrographCoordinates"] == coordinate_file(row["rlnMicrographName"])
        table = next(iter(read_blocks(out / row["rlnMicrographCoordinates"]).values()))
        assert {"rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"} <= set(table.columns)
        assert (table["rlnAutopickFigureOfMerit"] >= summary["threshold"]).all()
        margin = search.EDGE_MARGIN * 115.0 / 2.0
        assert table["rlnCoordinateX"].between(margin - 1, 511 - margin + 1).all()
        total += len(table)
    assert total == summary["particles"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["diameter_A"] == 115.0 and saved["diameter_source"] == "given"
    junk = saved["junk_tests"]  # each rejected pick counted under its reason
    assert junk["ran"] and set(junk["rejected"]) == {"light", "heavy", "dense"}
    assert sum(junk["rejected"].values()) == junk["rejected_total"]
    assert saved["flank_peaks"]["kept"] >= 0 and saved["flank_peaks"]["floor"] >= summary["threshold"]
    assert (out / "report.html").is_file()


def test_no_two_picks_closer_than_the_minimum_distance(picked):
    out, summary = picked
    index = read_blocks(out / "coordinates.star")["coordinate_files"]
    for rel in index["rlnMicrographCoordinates"]:
        table = next(iter(read_blocks(out / rel).values()))
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        if len(xy) < 2:
            continue
        d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))  # non-maximum suppression by distance
        np.fill_diagonal(d, np.inf)
        assert d.min() * 2.0 >= summary["min_distance_A"] - 2 * 2.0


def test_diameter_search_finds_the_particle_size(data, tmp_path):
    summary = run_pick(data / "truth/micrographs_truth.star", tmp_path / "out", report=False, picker="blob")
    assert summary["diameter_source"] == "searched"
    # the dataset mixes 7DDO (115 Å) and a 120 Å rod
    assert abs(summary["diameter_A"] / 117.0 - 1) <= 0.25, summary["diameter_A"]


def test_curve_maxima_highest_first():
    """Local maxima of the response curve as particle diameters, the highest first; a symmetric peak stays on its
    grid point; an end of the curve, or a diameter not tried, counts as lower."""
    d = np.array(search.DIAMETERS)
    curve = np.linspace(0.5, 1.0, len(d))  # rising: no maximum of its own
    curve[4:7] = [2.0, 3.0, 2.0]  # a symmetric peak at d[5]
    curve[10:13] = [4.0, 5.0, 4.5]  # the highest, refined towards d[12]
    curve[-3:] = [2.0, 2.5, np.nan]  # rising into a diameter not tried: d[-2] is a maximum
    maxima = search.curve_maxima(curve, d)
    assert len(maxima) == 3
    assert d[11] < maxima[0] * search.SPHERE_CALIBRATION < d[12]
    assert maxima[1] * search.SPHERE_CALIBRATION == pytest.approx(d[5], rel=1e-3)
    assert maxima[2] * search.SPHERE_CALIBRATION == pytest.approx(d[-2], rel=1e-3)
    assert search.choose_diameter([curve], d).diameter == maxima[0]


def test_diameter_search_passes_over_a_maximum_few_picks_bear_out(tmp_path):
    """On few particles (7DDO, 115 Å: two sparse micrographs, 124 particles) the response curve's highest maximum
    lies at 174 Å, where its filter finds 16 strong picks; the next maximum whose filter finds enough is taken, and
    its cores give the diameter."""
    from cryoflow.picking.pick import _Micrographs, search_diameter
    from cryoflow.picking.pick_bench import SPECIES, _dataset

    data = _dataset(tmp_path / "data", SPECIES["7DDO (92 kDa, 115 Å)"], 1000, 2, (2048, 2048), 1.5)
    result, cores = search_diameter(_Micrographs(data / "truth/micrographs_truth.star", None))
    assert abs(result.candidates[0] / 115.0 - 1) > 0.3, result.candidates
    assert result.confirmed and cores.strong >= search.CORE_MIN_COUNT
    assert abs(result.diameter / 115.0 - 1) <= 0.15, result.diameter


def test_unconfirmed_diameter_search_warns(data, tmp_path, monkeypatch, capsys):
    """When no maximum of the curve has enough strong picks, the highest is kept, the summary says it is
    unconfirmed, and a warning asks the user to check it."""
    monkeypatch.setattr(search, "CORE_MIN_COUNT", 10**6)
    summary = run_pick(data / "truth/micrographs_truth.star", tmp_path / "out", report=False, picker="blob")
    evidence = summary["diameter_search"]
    assert evidence["confirmed_by_strong_picks"] is False
    assert summary["diameter_A"] == evidence["candidates_A"][0]
    assert "warning: the diameter search found" in capsys.readouterr().err


def test_scores_are_in_noise_units():
    """On pure noise the filter's score has unit standard deviation, whatever the noise level."""
    gen = torch.Generator().manual_seed(0)
    for level in (10.0, 100.0):
        image = level + np.sqrt(level) * torch.randn((512, 512), generator=gen).numpy()
        prep = prepare(image, 2.0, 1, CtfParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.07))
        assert abs(float(score_map(prep, 120.0).std()) - 1.0) < 0.1


def test_threshold_rule_on_known_scores():
    rng = np.random.default_rng(0)
    null = rng.normal(0, 1, 5000)
    particles = rng.normal(12, 2, 300)
    choice = search.choose_threshold(np.concatenate([particles, rng.normal(0, 1, 5000)]), null)
    assert 3.0 <= choice.threshold <= 4.5
    assert choice.expected_false <= 0.02 * 300 + 1


def test_bad_input(data, tmp_path, cli):
    star = data / "truth/micrographs_truth.star"
    res = cli("pick", "--micrographs", star, "--out", tmp_path / "a", "--diameter", "-5")
    assert res.code == 2 and "--diameter" in res.err and not (tmp_path / "a").exists()
    res = cli("pick", "--micrographs", tmp_path / "missing.star", "--out", tmp_path / "b")
    assert res.code == 2 and "missing.star" in res.err and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    res = cli("pick", "--micrographs", star, "--out", tmp_path / "c", "--diameter", "115")
    assert res.code == 2 and (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_template_matching_with_class_averages(data, tmp_path):
    """The classic loop's last step: clean views of the particles (as 2D class averages show
    them: white, CTF-free) used as templates pick the particles."""
    from cryoflow.io import write_mrc
    from cryoflow.simulate import get_preset, make_species, random_rotations

    species = make_species(get_preset("tiny").species, pixel_size=2.0)
    gen = torch.Generator().manual_seed(0)
    views = []
    for s in species:
        rotations = random_rotations(4, gen)
        rotations = rotations[0] if isinstance(rotations, tuple) else rotations
        images = s.project(rotations)
        pad = (90 - images.shape[-1]) // 2
        views.append(torch.nn.functional.pad(images, (pad, 90 - images.shape[-1] - pad) * 2))
    write_mrc(tmp_path / "classes.mrcs", torch.cat(views).numpy(), 2.0)
    out = tmp_path / "pick"
    summary = run_pick(data / "truth/micrographs_truth.star", out, diameter=115.0, templates=tmp_path / "classes.mrcs")
    assert summary["picker"] == "templates"
    scores = score_picks(out, data, search.EDGE_MARGIN * 115.0 / 2.0)
    assert scores["f1"] >= 0.85, scores
    index = read_blocks(out / "coordinates.star")["coordinate_files"]
    table = next(iter(read_blocks(out / index["rlnMicrographCoordinates"].iloc[0]).values()))
    assert set(table["rlnClassNumber"]) <= set(range(1, 9))
    assert table["rlnAnglePsi"].between(0, 360).all()


def test_self_template_aligns_elongated_cores():
    """Cores of elongated blobs at random angles and offsets average into one blob along x."""
    rng = np.random.default_rng(1)
    r = 20
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(float)
    cores = search.Cores(pixel_size=2.0)
    for _ in range(30):
        angle, dy, dx = rng.uniform(0, np.pi), rng.uniform(-3, 3), rng.uniform(-3, 3)
        u = (xx - dx) * np.cos(angle) + (yy - dy) * np.sin(angle)
        v = -(xx - dx) * np.sin(angle) + (yy - dy) * np.cos(angle)
        cores.patches.append(np.exp(-(u**2) / (2 * 8.0**2) - v**2 / (2 * 3.0**2)))
        cores.angle.append(float(angle))
        cores.offset.append((dy, dx))
        cores.long.append(32.0)
        cores.short.append(12.0)
    template = search.self_template(cores)
    assert np.unravel_index(np.argmax(template), template.shape) == (r, r)
    along_x, along_y = template[r, r + 8], template[r + 8, r]
    assert along_x > 3 * along_y  # the long axis lies along x
    assert cores.elongation == pytest.approx(32 / 12)


def test_filter_diameter_needs_the_diameter(data, tmp_path):
    with pytest.raises(Exception, match="filter diameter"):
        run_pick(data / "truth/micrographs_truth.star", tmp_path / "y", filter_diameter=80.0)
    assert not (tmp_path / "y").exists()


def test_cores_of_another_pixel_size_stay_out_of_the_template():
    """Micrographs at different working pixel sizes: every axis counts, only one size's patches average."""
    a, b = search.Cores(pixel_size=2.0), search.Cores(pixel_size=3.0)
    for cores, size in ((a, 21), (b, 15)):
        cores.long.append(30.0)
        cores.short.append(20.0)
        cores.angle.append(0.0)
        cores.offset.append((0.0, 0.0))
        cores.patches.append(np.ones((size, size)))
    merged = search.Cores()
    merged.extend(a)
    merged.extend(b)
    assert len(merged.long) == 2 and len(merged.patches) == 1 and merged.pixel_size == 2.0
    assert search.self_template(merged).shape == (21, 21)


def test_real_micrographs_of_two_pixel_sizes(shared_data, tmp_path):
    """The two real binned micrographs (2.67 and 3.42 Å/px, dense and sparse particles) pick without
    a diameter given; there is no truth, so only plausibility: each gets tens of picks."""
    from cryoflow.ctf import run_ctf

    mics = [shared_data / "micrographs" / n for n in ("epu_falcon_bin4.mrc", "diamond_epu_bin4.mrc")]
    run_ctf(mics, tmp_path / "ctf")
    summary = run_pick(tmp_path / "ctf" / "micrographs_ctf.star", tmp_path / "pick", report=False)
    assert 80 <= summary["diameter_A"] <= 300
    assert all(n >= 30 for n in summary["picks_per_micrograph"].values()), summary["picks_per_micrograph"]


# --- the learned (CNN) picker -------------------------------------------------------------


@pytest.fixture(scope="module")
def picked_cnn(data, tmp_path_factory):
    """The CNN picker on the fixture (about 10-20 s of training on 2 idle cores)."""
    out = tmp_path_factory.mktemp("pick") / "cnn"
    summary = run_pick(data / "truth/micrographs_truth.star", out, diameter=115.0, picker="cnn", device="cpu")
    return out, summary


def test_cnn_picker_matches_the_truth(data, picked, picked_cnn):
    from cryoflow.picking import cnn

    """Trained on the fly on the filter's confident picks, the CNN keeps most particles and drops junk and
    background: F1, junk and background shares against the truth (measured on this fixture: F1 0.91,
    precision 0.91, junk 6.1%, background 2.6%; a crowded field of two species, where the peaks next to
    stronger ones bring touching particles (recall 0.84 -> 0.91) and junk touching particles alike, and the
    junk tests, calibrated for one species, stay loose)."""
    out, summary = picked_cnn
    assert summary["picker_choice"] == {"requested": "cnn", "ran": "cnn", "why": "given"}
    c = summary["cnn"]
    assert c["trained"] and c["positives"] >= 30 and c["unlabelled"] > c["positives"] and c["negatives"] > 0
    assert 0 < c["prior"] < 1 and len(c["loss"]) == c["steps"] > 0
    assert np.mean(c["loss"][-10:]) < np.mean(c["loss"][:10])  # it learned something
    margin = search.EDGE_MARGIN * 115.0 / 2.0
    mine, blob = score_picks(out, data, margin), score_picks(picked[0], data, margin)
    assert mine["f1"] >= 0.85 and mine["precision"] >= blob["precision"] - 0.01, (mine, blob)
    assert mine["junk_share"] <= 0.07 and mine["background_share"] <= 0.05, mine
    # the threshold's guard, on the CNN's decision (the junk tests remove picks after it)
    after_cnn = c["kept"] + (summary["junk_tests"] or {}).get("rejected_total", 0)
    assert after_cnn >= (1 - cnn.MAX_REJECTED) * c["blob_picks"] - 2
    index = read_blocks(out / "coordinates.star")["coordinate_files"]
    table = next(iter(read_blocks(out / index["rlnMicrographCoordinates"].iloc[0]).values()))
    assert (table["rlnAutopickFigureOfMerit"] >= c["logit_threshold"] - 1e-3).all()  # the CNN's logit
    assert (table["cfBlobScore"] >= search.MIN_THRESHOLD).all()
    assert "Learned picker (CNN)" in (out / "report.html").read_text()
    assert (out / "figures" / "cnn_loss.png").is_file() or any((out / "figures").glob("cnn_loss*"))


def test_cnn_trains_on_given_coordinates(data, tmp_path):
    """Particles of 'good 2D classes' (here: the truth's particles) as positives, RELION origin offsets applied."""
    import pandas as pd

    from cryoflow.io import write_blocks
    from cryoflow.picking import cnn
    from cryoflow.picking.cnn_pick import read_train_coordinates
    from cryoflow.simulate import read_truth

    _, parts = read_truth(data)
    good = parts.table[parts.table["cfIsJunk"] == 0]
    table = pd.DataFrame(
        {
            "rlnMicrographName": good["rlnMicrographName"].to_numpy(),
            "rlnCoordinateX": good["rlnCoordinateX"].to_numpy(float) + 3.0,
            "rlnCoordinateY": good["rlnCoordinateY"].to_numpy(float),
            "rlnOriginXAngst": np.full(len(good), 6.0),  # 3 px at 2 Å/px: back onto the centre
            "rlnOriginYAngst": np.zeros(len(good)),
        }
    )
    star = tmp_path / "particles_selected.star"
    write_blocks(star, {"particles": table})
    names = sorted(set(table["rlnMicrographName"]))
    given = read_train_coordinates(star, names, [2.0] * len(names))
    first = good[good["rlnMicrographName"] == names[0]]
    assert np.allclose(given[names[0]][:, 1], first["rlnCoordinateX"].to_numpy(float))

    steps, cnn.STEPS = cnn.STEPS, 100  # clean positives: a shorter training suffices
    try:
        summary = run_pick(
            data / "truth/micrographs_truth.star",
            tmp_path / "out",
            diameter=115.0,
            picker="cnn",
            train_coordinates=star,
            report=False,
        )
    finally:
        cnn.STEPS = steps
    assert summary["cnn"]["positive_source"].startswith("given coordinates")
    scores = score_picks(tmp_path / "out", data, search.EDGE_MARGIN * 115.0 / 2.0)
    assert scores["f1"] >= 0.85 and scores["junk_share"] <= 0.07, scores  # measured: F1 0.93, junk 6.0%


def test_pu_loss_is_non_negative_risk():
    from cryoflow.picking.pu_loss import nnpu_loss

    p = torch.tensor([2.0, 3.0])
    u = torch.tensor([-2.0, 2.5, 1.0, 2.0])
    loss, risk = nnpu_loss(p, u, 0.5)
    sp = torch.nn.functional.softplus
    expected_risk = sp(u).mean() - 0.5 * sp(p).mean()
    assert risk == pytest.approx(float(expected_risk)) and risk > 0
    assert float(loss) == pytest.approx(float(0.5 * sp(-p).mean() + expected_risk))
    # unlabelled scored negative although the prior says most are positives: the negative risk goes below
    # zero (the model is memorising) and the loss pushes it back up
    loss, risk = nnpu_loss(p, torch.tensor([-5.0, -6.0]), 0.9)
    assert risk < 0 and float(loss) == pytest.approx(-risk)


def test_cnn_input_is_in_noise_units_at_16_pixels_per_diameter():
    from cryoflow.picking.cnn import cnn_input, crop_patches
    from cryoflow.picking.cnn_net import PATCH, SAMPLES_PER_DIAMETER, PickerNet

    gen = torch.Generator().manual_seed(0)
    image = 100 + 10 * torch.randn((512, 512), generator=gen).numpy()
    prep = prepare(image, 2.0, 2, CtfParams(15000.0, 15000.0))
    x, scale = cnn_input(prep, 150.0)
    assert scale == pytest.approx(SAMPLES_PER_DIAMETER * 4.0 / 150.0, rel=0.02)
    assert x.shape[0] == round(256 * scale) and abs(float(x.std()) - 1) < 0.1
    patches = crop_patches(x, np.array([[0.0, 0.0], [40.0, 30.0]]))
    assert patches.shape == (2, 1, PATCH, PATCH)
    assert torch.equal(patches[1, 0, PATCH // 2, PATCH // 2], x[40, 30])
    assert PickerNet(16)(patches).shape == (2,)


def test_picker_options_are_checked(data, tmp_path, cli):
    star = data / "truth/micrographs_truth.star"
    res = cli("pick", "--micrographs", star, "--out", tmp_path / "a", "--picker", "blob", "--train-coordinates", star)
    assert res.code == 2 and "--train-coordinates" in res.err and not (tmp_path / "a").exists()
    res = cli("pick", "--micrographs", star, "--out", tmp_path / "b", "--train-coordinates", tmp_path / "none.star")
    assert res.code == 2 and "none.star" in res.err and not (tmp_path / "b").exists()


def test_touching_particles_keep_both_peaks():
    """A weaker particle touching a stronger one (one diameter apart, diagonally) keeps its peak, flagged as on the
    stronger one's flank; peaks closer than the minimum distance are one; the margin applies to refined positions."""
    from cryoflow.picking.peaks import find_peaks

    d = 20.0  # particle diameter, pixels
    yy, xx = np.mgrid[0:128, 0:128].astype(float)

    def blob(y, x, height):
        return height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (0.25 * d) ** 2))

    off = d / np.sqrt(2)
    z = torch.as_tensor(blob(50, 50, 30.0) + blob(50 + off, 50 + off, 16.0) + blob(100, 30, 20.0), dtype=torch.float32)
    yx, values, flank = find_peaks(z, 0.7 * d, 0.5 * d, floor=3.0, flanks=True)
    assert len(yx) == 3 and values[0] == pytest.approx(30.0, rel=0.01)
    weak = np.argmin(np.hypot(*(yx - [50 + off, 50 + off]).T))
    assert np.hypot(*(yx[weak] - [50 + off, 50 + off])) < 1.0 and flank[weak] and flank.sum() == 1
    yx_isolated, _ = find_peaks(z, 0.7 * d, 0.5 * d, floor=3.0)  # without flanks: the weaker one is dropped
    assert len(yx_isolated) == 2
    z = torch.as_tensor(blob(50, 50, 30.0) + blob(50, 60, 25.0), dtype=torch.float32)  # half a diameter apart
    assert len(find_peaks(z, 0.7 * d, 0.5 * d, floor=3.0, flanks=True)[0]) == 1
    z = torch.as_tensor(blob(64, 10.4, 10.0), dtype=torch.float32)  # its centre 10.9 px from the map's edge
    assert len(find_peaks(z, 0.7 * d, 10.0, floor=3.0)[0]) == 1 and len(find_peaks(z, 0.7 * d, 11.5, floor=3.0)[0]) == 0


def test_suppress_is_greedy_non_maximum_suppression():
    from cryoflow.picking.peaks import suppress

    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(0, 40))
        yx, values, distance = rng.uniform(0, 40, (n, 2)), rng.normal(size=n), rng.uniform(1, 12)
        expected = np.zeros(n, dtype=bool)
        for i in np.argsort(-values, kind="stable"):
            expected[i] = not any(expected[j] and np.hypot(*(yx[i] - yx[j])) < distance for j in range(n))
        assert np.array_equal(suppress(yx, values, distance), expected)


def test_junk_tests_reject_light_heavy_and_dense_picks():
    """Forty identical particles and three junk objects on a density image (16 px per diameter, unit noise):
    a broken particle (45% cut away) is light, a clump of two is heavy, a small dense ball of about the same mass is
    dense; no particle is rejected."""
    from cryoflow.picking.pick import MicrographPicks
    from cryoflow.picking.pick_junk import reject_junk

    gen = np.random.default_rng(0)
    size, r = 400, 7.2  # particle radius 0.45 diameters
    yy, xx = np.mgrid[0:size, 0:size].astype(float)

    def ball(y, x, radius, height, cut=None):
        out = height * np.sqrt(np.clip(1 - ((yy - y) ** 2 + (xx - x) ** 2) / radius**2, 0, None))
        return out * ((xx - x) < cut) if cut is not None else out

    centres = [(24 + 32 * (i // 11), 24 + 32 * (i % 11)) for i in range(44)]
    image = gen.normal(size=(size, size))
    for y, x in centres[:40]:
        image += ball(y, x, r, 4.0)
    (by, bx), (hy, hx), (dy, dx) = centres[40:43]
    image += ball(by, bx, r, 4.0, cut=0.1 * r)  # broken
    image += ball(hy, hx, r, 4.0) + ball(hy + 0.6 * 16, hx, r, 4.0)  # a clump of two, overlapping
    image += ball(dy, dx, 0.2 * 16, 3.4 * (r / (0.2 * 16)) ** 2)  # small and dense: 85% of the mass
    yx = np.array(centres[:43], dtype=float)
    p = MicrographPicks("m", yx, np.ones(43), np.zeros(0), {}, (size, size), 1.0)
    p.density, p.cnn_factor, p.kept = torch.as_tensor(image, dtype=torch.float16), 1.0, np.ones(43, dtype=bool)
    record = reject_junk([p])
    assert record.ran and p.kept[:40].all() and not p.kept[40:].any()
    assert list(p.junk[40:]) == ["light", "heavy", "dense"] and record.rejected == {"light": 1, "heavy": 1, "dense": 1}
    assert record.to_dict()["rejected_total"] == 3
