"""Class selection and the particle classifier against the simulator's truth, other programs' classes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryoflow.errors import CryoflowError


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """1,500 picks (30% junk of every kind) of 7DDO and a globular particle, box 48, classified into 12 classes."""
    from cryoflow.classify2d.run import Settings, run_classify2d
    from cryoflow.simulate.stack import simulate_stack
    from cryoflow.simulate.structures import procedural_species, reference_species

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    apix = 160 / 48
    species = [reference_species(apix, box=48), procedural_species(110.0, apix, seed=21, shape="globular", box=48)]
    root = tmp_path_factory.mktemp("ca")
    stack = simulate_stack(
        root / "extract",
        n=1500,
        box=48,
        pixel_size=apix,
        species=species,
        views_per_species=3,
        junk_fraction=0.3,
        snr=(0.06, 0.12),
        particles_per_micrograph=100,
        seed=5,
    )
    c2d = root / "classify2d"
    run_classify2d(stack.star, c2d, Settings(classes=12, iterations=12, full_passes=3, seed=0), log=lambda *a: None)
    torch.set_num_threads(threads)
    return root, stack, c2d


@pytest.fixture(scope="module")
def assessed(classified):
    from cryoflow.classassess.run import run_classassess

    root, _, c2d = classified
    summary = run_classassess(c2d, root / "classassess", log=lambda *a: None)
    return root / "classassess", summary


def test_class_decisions_match_the_truth(classified, assessed):
    from cryoflow.classassess.examples import class_truth
    from cryoflow.classassess.inputs import read_classes

    _, _, c2d = classified
    out, summary = assessed
    truth = class_truth(read_classes(c2d))
    keep = np.array(summary["history"][-1]["keep"], bool)
    big = truth["particles"].to_numpy() >= 20
    accuracy = (keep[big] == truth["good"].to_numpy()[big]).mean()
    assert accuracy >= 0.9, (accuracy, truth, keep)
    # the kept particles are cleaner than the input
    from cryoflow.io import read_table

    kept = read_table(out / "particles_selected.star").table
    rejected = read_table(out / "particles_rejected.star").table
    assert len(kept) + len(rejected) == 1500
    assert kept["cfIsJunk"].mean() < 0.15 < rejected["cfIsJunk"].mean()
    assert summary["variant"] == "full" and "resolution" in summary["features_available"]
    rows = json.loads((out / "summary.json").read_text())
    assert rows["kept_classes"] == keep.sum()
    # kept particle names resolve from the output folder (images for the particle classifier)
    from cryoflow.classify2d.data import read_particles

    assert len(read_particles(out / "particles_selected.star")) == len(kept)


def test_particle_classifier_separates_junk(classified, assessed, tmp_path):
    from sklearn.metrics import roc_auc_score

    from cryoflow.io import open_stack, read_table
    from cryoflow.particles.score import score_particles
    from cryoflow.particles.train import train_particles

    _, stack, _ = classified
    out, _ = assessed
    train_particles(
        out / "particles_selected.star", out / "particles_rejected.star", tmp_path / "model", epochs=4, log=print
    )
    summary = score_particles(stack.star, tmp_path / "model", tmp_path / "clean", log=print)
    clean = read_table(tmp_path / "clean" / "particles_clean.star").table
    rejected = read_table(tmp_path / "clean" / "particles_rejected.star").table
    every = np.concatenate([clean["cfParticleScore"], rejected["cfParticleScore"]])
    good = np.concatenate([clean["cfIsJunk"], rejected["cfIsJunk"]]) == 0
    auc = roc_auc_score(good, every)
    assert auc >= 0.9, auc
    assert clean["cfIsJunk"].mean() < 0.15
    # the clean stack holds its own images, the yield table accounts for every particle
    name = clean["rlnImageName"].iloc[0]
    number, path = name.split("@")
    with open_stack(tmp_path / "clean" / path) as s:
        assert s.shape[-1] == 48 and int(number) <= len(s)
    yields = read_table(tmp_path / "clean" / "micrographs_yield.star", "micrographs").table
    assert yields["cfGoodParticles"].sum() == len(clean) == summary["particles_kept"]
    assert (tmp_path / "clean" / "particles_clean.cs").is_file()
    # the default clean path: kept classes cleaned, confident particles of rejected classes taken back
    both = score_particles(
        out / "particles_selected.star",
        tmp_path / "model",
        tmp_path / "rescue",
        rescue=out / "particles_rejected.star",
        log=print,
    )
    n_sel = len(read_table(out / "particles_selected.star").table)
    n_rej = len(read_table(out / "particles_rejected.star").table)
    assert both["particles_in"] == n_sel + n_rej and 0 <= both["rescued"] <= n_rej
    clean = read_table(tmp_path / "rescue" / "particles_clean.star").table
    assert len(clean) == both["particles_kept"] and clean["cfIsJunk"].mean() < 0.15
    taken = clean["rlnClassNumber"].isin(read_table(out / "particles_rejected.star").table["rlnClassNumber"])
    assert taken.sum() == both["rescued"]


def _as_relion(c2d, folder):
    """The classify2d folder rewritten as a RELION 3.1 Class2D job (iteration 12)."""
    import shutil

    from cryoflow.io import read_blocks, read_table, write_blocks, write_table

    folder.mkdir()
    blocks = read_blocks(c2d / "model.star")
    model = blocks["model_classes"].drop(columns=["cfParticleCount", "cfHalfSetResolution"])
    model["rlnReferenceImage"] = [f"{k + 1:06d}@Class2D/job008/run_it012_classes.mrcs" for k in range(len(model))]
    write_blocks(folder / "run_it012_model.star", {"model_general": blocks["model_general"], "model_classes": model})
    shutil.copy(c2d / "classes.mrcs", folder / "run_it012_classes.mrcs")
    star = read_table(c2d / "particles.star")
    write_table(folder / "run_it012_data.star", star)
    (folder / "run_it011_model.star").write_text("data_model_classes\nloop_\n_rlnReferenceImage #1\n")


def test_relion_and_bare_stack_inputs(classified, assessed, tmp_path):
    from cryoflow.classassess.inputs import read_classes
    from cryoflow.classassess.run import run_classassess

    _, _, c2d = classified
    job = tmp_path / "job008"
    _as_relion(c2d, job)
    ours, relion = read_classes(c2d), read_classes(job)
    assert relion.source == "relion" and relion.path.name == "run_it012_model.star"
    for col in ("count", "resolution", "accuracy_rotation", "max_probability"):
        np.testing.assert_allclose(relion.table[col], ours.table[col], rtol=1e-6)
    s_relion = run_classassess(job, tmp_path / "ca_relion", log=lambda *a: None)
    _, s_ours = assessed
    assert s_relion["history"][-1]["keep"] == s_ours["history"][-1]["keep"]
    s_stack = run_classassess(c2d / "classes.mrcs", tmp_path / "ca_stack", log=lambda *a: None)
    assert s_stack["variant"] == "image" and s_stack["particles_kept"] is None
    agree = np.mean(np.array(s_stack["history"][0]["keep"]) == np.array(s_ours["history"][0]["keep"]))
    assert agree >= 0.75


def test_overrides_floors_and_threshold(classified, tmp_path, cli):
    from cryoflow.classassess.select import adaptive_threshold, select

    _, _, c2d = classified
    r = cli(
        "classassess", "--classes", c2d, "--out", tmp_path / "a", "--keep", "1-2", "--reject", "3", "--min-score", "0.6"
    )
    assert r.code == 0, r.err
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    keep = s["history"][0]["keep"]
    assert keep[0] == keep[1] == 1 and keep[2] == 0 and s["threshold"] == 0.6
    # a floor keeps the best classes when nothing passes
    sel = select(np.array([0.1, 0.3, 0.2]), np.array([100.0, 50, 50]), min_score=0.9)
    assert sel.keep.tolist() == [False, True, False] and sel.notes
    # a class no particle ended in is rejected however good its average looks, and no floor adds it
    sel = select(np.array([0.9, 0.95, 0.2]), np.array([100.0, 0, 50]))
    assert sel.keep.tolist() == [True, False, False] and sel.decision[1] == "rejected (no particles)"
    assert select(np.array([0.1, 0.95]), np.array([10.0, 0]), min_score=0.9).keep.tolist() == [True, False]
    # bare stacks (counts unknown) are judged on their images alone
    assert select(np.array([0.9, 0.1]), np.array([np.nan, np.nan])).keep.tolist() == [True, False]
    # the adaptive threshold sits in the gap of a bimodal distribution
    p = np.r_[np.full(10, 0.05), np.full(10, 0.68), np.full(3, 0.3)]
    t = adaptive_threshold(p, np.ones(len(p)))
    assert 0.4 <= t <= 0.6


def test_bad_input(classified, tmp_path, cli):
    _, _, c2d = classified
    r = cli("classassess", "--classes", tmp_path / "missing", "--out", tmp_path / "o")
    assert r.code == 2 and "not found" in r.err and not (tmp_path / "o").exists()
    (tmp_path / "empty").mkdir()
    r = cli("classassess", "--classes", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.code == 2 and "no classes found" in r.err and not (tmp_path / "o").exists()
    r = cli("classassess", "--classes", c2d, "--out", tmp_path / "o", "--keep", "99")
    assert r.code == 2 and "outside 1..12" in r.err and not (tmp_path / "o").exists()
    r = cli("classassess", "--classes", c2d, "--out", tmp_path / "o", "--keep", "2", "--reject", "2")
    assert r.code == 2 and "both" in r.err
    r = cli("particles", "score", "--particles", c2d / "particles.star", "--model", tmp_path, "--out", tmp_path / "o")
    assert r.code == 2 and "particle model not found" in r.err and not (tmp_path / "o").exists()
    with pytest.raises(CryoflowError, match="model file not found"):
        from cryoflow.classassess.model import ClassScorer

        ClassScorer.load(tmp_path / "nothing.pt")


def test_two_rounds_reclassify_the_kept_particles(classified, assessed, tmp_path):
    from cryoflow.classassess.run import run_classassess
    from cryoflow.io import read_table

    _, _, c2d = classified
    _, first = assessed
    summary = run_classassess(c2d, tmp_path / "r2", rounds=2, log=lambda *a: None)
    assert summary["rounds"] == 2 and summary["final_classes_path"] == "rounds/round_2/classify2d"
    h1, h2 = summary["history"]
    assert h1["keep"] == first["history"][0]["keep"] and h2["particles"] == h1["kept_particles"]
    kept = read_table(tmp_path / "r2" / "particles_selected.star").table
    rejected = read_table(tmp_path / "r2" / "particles_rejected.star").table
    assert len(kept) + len(rejected) == 1500 and len(kept) == summary["particles_kept"] <= h1["kept_particles"]
    assert kept["cfIsJunk"].mean() <= 0.15


def test_training_smoke_run_learns_from_truth_and_decisions(classified, assessed, tmp_path, cli):
    """`classassess train` on a simulated classification (truth labels) and a classassess output
    (its decisions as labels); the model it writes loads and scores."""
    from cryoflow.classassess.model import ClassScorer

    _, _, c2d = classified
    out, _ = assessed
    model = tmp_path / "mine.pt"
    card = tmp_path / "mine.md"
    r = cli("classassess", "train", "--out", model, "--datasets", "0", "--labels", c2d, "--labels", out,
            "--epochs", "2", "--card", card)  # fmt: skip
    assert r.code == 0, r.err
    scorer = ClassScorer.load(model)
    assert set(scorer.variants) == {"full", "image"} and scorer.meta["datasets"] == 2
    assert "Validation" in card.read_text()
    r = cli("classassess", "--classes", c2d, "--out", tmp_path / "a", "--model", model)
    assert r.code == 0, r.err
    r = cli("classassess", "train", "--out", tmp_path / "x.pt", "--datasets", "0", "--labels", c2d)
    assert r.code == 2 and "at least 2" in r.err


def test_every_class_rejected_gives_an_empty_clean_stack(classified, tmp_path, cli):
    """A user who rejects every class gets a pass-through particle model and an empty clean
    stack with a yield of 0 per micrograph (what feedback needs), not an error."""
    from cryoflow.io import read_table

    _, stack, c2d = classified
    r = cli("classassess", "--classes", c2d, "--out", tmp_path / "ca", "--reject", "1-12")
    assert r.code == 0, r.err
    ca = tmp_path / "ca"
    r = cli("particles", "train", "--selected", ca / "particles_selected.star",
            "--rejected", ca / "particles_rejected.star", "--out", tmp_path / "pm")  # fmt: skip
    assert r.code == 0, r.err
    r = cli("particles", "score", "--particles", ca / "particles_selected.star",
            "--rejected", ca / "particles_rejected.star", "--model", tmp_path / "pm" / "particle_model.pt",
            "--out", tmp_path / "ps")  # fmt: skip
    assert r.code == 0, r.err
    out = tmp_path / "ps"
    assert len(read_table(out / "particles_clean.star", "particles").table) == 0
    assert len(read_table(out / "particles_rejected.star", "particles").table) == 1500
    yields = read_table(out / "micrographs_yield.star", "micrographs").table
    assert yields["cfPicks"].sum() == 1500 and (yields["cfGoodParticles"] == 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["particles_kept"] == 0 and summary["passed_through"]


def test_particle_statistics_of_classes(classified):
    """The per-class statistics of the particles (fit, shift, unsure assignments) are there
    for every class with particles, say "junk" where the truth does, and read the same from
    RELION 3.0 offsets in pixels."""
    from cryoflow.classassess.examples import class_truth
    from cryoflow.classassess.features import FEATURES, class_features
    from cryoflow.classassess.inputs import _class_table, read_classes

    _, _, c2d = classified
    cs = read_classes(c2d)
    truth = class_truth(cs)
    used = truth["particles"].to_numpy() > 0
    t = cs.table
    for col in ("log_likelihood", "shift", "low_probability"):
        assert np.isfinite(t[col].to_numpy()[used]).all(), col
    assert ((t["low_probability"] >= 0) & (t["low_probability"] <= 1)).to_numpy()[used].all()
    good = truth["good"].to_numpy() & used
    junk = ~truth["good"].to_numpy() & used
    w = truth["particles"].to_numpy(float)
    wmean = lambda col, m: np.average(t[col].to_numpy()[m], weights=w[m])  # noqa: E731
    assert wmean("shift", junk) > wmean("shift", good)
    assert wmean("low_probability", junk) > wmean("low_probability", good)
    feats, _, _ = class_features(cs)
    assert np.isfinite(feats[used][:, FEATURES.index("shift_rms")]).all()
    # RELION 3.0 gives the offsets in pixels
    p = cs.particles.table.copy()
    p["rlnOriginX"] = p.pop("rlnOriginXAngst") / cs.pixel_size
    p["rlnOriginY"] = p.pop("rlnOriginYAngst") / cs.pixel_size
    t30 = _class_table(len(cs), None, p, c2d, cs.pixel_size)
    np.testing.assert_allclose(t30["shift"], t["shift"], rtol=1e-6)


def test_a_model_made_before_new_features_still_loads(tmp_path):
    """A model file names its features per variant: one trained before features were added
    loads and scores with the features it knows; one naming an unknown feature is refused."""
    from cryoflow.classassess.features import FEATURES
    from cryoflow.classassess.model import ClassCNN, ClassScorer, Linear, Variant

    old = FEATURES[:10]
    n = len(old)
    lin = Linear(np.zeros(n), np.ones(n), np.full(n, 0.1), 0.0)
    scorer = ClassScorer({"full": Variant(tuple(old), lin), "image": Variant(tuple(old), lin)}, ClassCNN())
    scorer.save(tmp_path / "old.pt")
    back = ClassScorer.load(tmp_path / "old.pt")
    assert back.variants["full"].features == tuple(old)
    x = np.random.default_rng(0).normal(size=(3, len(FEATURES)))
    np.testing.assert_allclose(back.variants["full"].linear.logit(x[:, back.variants["full"].columns()]),
                               x[:, :10].sum(1) * 0.1, rtol=1e-5)  # fmt: skip
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    state["variants"]["full"]["features"] = list(old[:-1]) + ["no_such_feature"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CryoflowError, match="no_such_feature"):
        ClassScorer.load(tmp_path / "bad.pt")


def test_twin_classes_counts_rotated_copies_not_other_projections():
    """A class whose average is an in-plane rotation of another's (the same view split over two
    classes) has a twin; a different projection, and an empty class, do not count."""
    from scipy import ndimage

    from cryoflow.classassess.features import SIZE, rotational_similarity, twin_classes

    y, x = np.mgrid[:SIZE, :SIZE] - SIZE // 2

    def blob(cy, cx, s):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))

    view = blob(0, -8, 4) + 0.7 * blob(3, 7, 3)  # a two-lobed projection
    other = blob(0, 0, 9) - 0.5 * blob(0, 0, 3)  # a ring-like one
    images = np.stack([view, ndimage.rotate(view, 73, reshape=False, order=1), other, view]).astype(np.float32)
    s = rotational_similarity(images, radius=24)
    assert s[0, 1] > 0.95 and s[0, 2] < 0.9
    tw = twin_classes(images, 24, np.array([100.0, 80, 90, 0]))  # class 4 is empty: no twin
    assert tw[0] > 0.5 and tw[1] > 0.5 and tw[2] < 0.2
    assert abs(tw[0] - np.log1p(np.exp(-(1 - s[0, 1:3]) / 0.05).sum())) < 1e-9
