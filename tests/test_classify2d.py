"""2D classification: accuracy against the simulator's truth on a tiny stack, bad input, the stack simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoflow.errors import CryoflowError


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    """800 particles, box 48 at 3.33 Å/pixel: 7DDO and a globular particle, two views each, 5% junk."""
    from cryoflow.simulate.stack import simulate_stack
    from cryoflow.simulate.structures import procedural_species, reference_species

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is faster on a busy 2-core machine
    apix = 160 / 48
    species = [reference_species(apix, box=48), procedural_species(120.0, apix, seed=12, shape="globular", box=48)]
    folder = tmp_path_factory.mktemp("c2d") / "stack"
    yield simulate_stack(
        folder,
        n=800,
        box=48,
        pixel_size=apix,
        species=species,
        views_per_species=2,
        junk_fraction=0.05,
        snr=(0.1, 0.2),
        particles_per_micrograph=200,
        seed=3,
    )
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tiny_stack, tmp_path_factory):
    from cryoflow.classify2d.run import Settings, run_classify2d

    out = tmp_path_factory.mktemp("c2d_out") / "run"
    settings = Settings(classes=5, iterations=10, full_passes=3, seed=0)
    summary = run_classify2d(tiny_stack.star, out, settings, device="cpu", log=lambda *a: None)
    return out, summary


def test_simulated_stack_follows_the_extract_contract(tiny_stack):
    from cryoflow.io import open_stack, read_table

    star = read_table(tiny_stack.star)
    optics = star.optics.iloc[0]
    assert optics["rlnImageSize"] == 48 and optics["rlnImageDimensionality"] == 2
    assert optics["rlnCtfDataArePhaseFlipped"] == 0 and abs(optics["rlnImagePixelSize"] - 160 / 48) < 1e-6
    table = star.table
    for column in (
        "rlnImageName",
        "rlnMicrographName",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "cfSpecies",
        "cfIsJunk",
        "cfTruePsi",
        "cfTrueOriginXAngst",
    ):
        assert column in table
    assert table["cfIsJunk"].sum() == 40
    number, name = table["rlnImageName"].iloc[0].split("@")
    with open_stack(tiny_stack.path / name) as stack:
        images = stack[:]
    assert images.dtype == np.float32 and images.shape[1:] == (48, 48)
    y, x = np.mgrid[:48, :48] - 24
    ring = np.sqrt(x**2 + y**2) > 22  # background ring: mean 0, std 1
    assert abs(images[:, ring].mean()) < 0.05 and abs(images[:, ring].std() - 1) < 0.1


def test_classes_are_pure_and_angles_right(tiny_run):
    from cryoflow.classify2d.truth import score_classes
    from cryoflow.io import read_blocks, read_table

    out, summary = tiny_run
    table = read_table(out / "particles.star").table
    for column in (
        "rlnClassNumber",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnMaxValueProbDistribution",
        "rlnNormCorrection",
        "cfSpecies",
    ):
        assert column in table
    scores = score_classes(table)
    assert scores["purity"] >= 0.9, scores
    assert scores["angle_error_median"] <= 5.0, scores
    model = read_blocks(out / "model.star")["model_classes"]
    assert len(model) == 5 and abs(model["rlnClassDistribution"].sum() - 1) < 1e-3
    assert model["rlnReferenceImage"].iloc[0] == "000001@classes.mrcs"
    for name in ("classes.mrcs", "report.html", "summary.json", "iterations/it010_classes.mrcs"):
        assert (out / name).exists()
    assert not (out.parent / f".{out.name}.classify2d").exists()  # work folder removed
    assert summary["classes"] == 5


def _copy(stack, tmp_path):
    import shutil

    target = tmp_path / "in"
    shutil.copytree(stack.path, target)
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop_defocus", "missing required column"),
        ("missing_stack", "not found"),
        ("bad_k", "--classes must be between 1"),
        ("huge_k", "--classes must be between 1"),
        ("bad_image_name", "N@stack.mrcs"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(tiny_stack, tmp_path, cli, change, message):
    from cryoflow.io import StarTable, read_table, write_table

    folder = _copy(tiny_stack, tmp_path)
    star = folder / "particles.star"
    args = ["classify2d", "--particles", star, "--out", tmp_path / "out", "--iterations", "2"]
    table = read_table(star)
    if change == "drop_defocus":
        write_table(star, StarTable(table.optics, table.table.drop(columns=["rlnDefocusU"]), "particles"))
    elif change == "missing_stack":
        next((folder / "Particles").glob("*.mrcs")).unlink()
    elif change == "bad_k":
        args += ["--classes", "0"]
    elif change == "huge_k":
        args += ["--classes", "100000"]
    elif change == "bad_image_name":
        t = table.table.copy()
        t.loc[3, "rlnImageName"] = "Particles/mic_0000.mrcs"
        write_table(star, StarTable(table.optics, t, "particles"))
    result = cli(*args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryoflow: error:") and message in lines[0], result.err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_refuses_a_non_empty_out(tiny_stack, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("classify2d", "--particles", tiny_stack.star, "--out", out)
    assert result.code == 2 and "not empty" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_diameter_estimated_without_a_picking_diameter(tiny_stack):
    from cryoflow.classify2d.data import estimate_diameter, read_particles

    particles = read_particles(tiny_stack.star)
    images = particles.read(np.arange(len(particles)))
    true = float(tiny_stack.table["cfDiameter"].iloc[0])
    assert 0.6 * true <= estimate_diameter(images, particles.pixel_size) <= 1.5 * true


def test_basis_rotation_is_a_phase_and_synthesis_inverts():
    from cryoflow.classify2d.basis import PolarBasis

    basis = PolarBasis(32, 12.0, 3.0)
    stage = basis.stage(16)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 32, 32, generator=g)
    spec = torch.fft.rfft2(image) * torch.exp(
        -(torch.fft.fftfreq(32)[:, None] ** 2 + torch.fft.rfftfreq(32) ** 2) / 0.02
    )
    image = torch.fft.irfft2(spec, s=(32, 32)) * basis.mask
    coeffs = basis.pixels_of(image) @ stage.analysis
    back = basis.image_of(coeffs @ stage.synthesis)
    assert float((back - image * basis.mask).norm() / (image * basis.mask).norm()) < 0.02
    rotated = torch.roll(torch.rot90(image, 1, dims=(1, 2)), 1, dims=1)  # 90° about pixel (16, 16)
    c_rot = basis.pixels_of(rotated) @ stage.analysis
    C = stage.C
    z = torch.complex(coeffs[0, :C], coeffs[0, C:])
    z_rot = torch.complex(c_rot[0, :C], c_rot[0, C:])
    m = stage.order.float()
    # rot90 maps out(x, y) = in(-y, x) with x the column: a rotation by α = -90° (counter-clockwise
    # positive in (x, y)), so the coefficients must gain e^{-imα} = e^{+imπ/2}
    expected = z * torch.exp(1j * m * torch.pi / 2)
    assert float((expected - z_rot).abs().norm() / z.abs().norm()) < 0.05


def test_error_names_parameter_not_file():
    from cryoflow.classify2d.run import default_classes

    assert default_classes(20000) == 50 and default_classes(100) == 2 and default_classes(10**7) == 100
    assert str(CryoflowError(None, "x")) == "x"


def test_a_killed_run_resumes(tiny_stack, tmp_path, monkeypatch):
    from cryoflow.classify2d import run as run_module

    out = tmp_path / "run"
    settings = run_module.Settings(classes=2, iterations=3, full_passes=2, seed=0)
    original = run_module.Classifier.iterate

    def killed(self, state, iteration, idx, record=None):
        if iteration == 2:
            raise KeyboardInterrupt
        return original(self, state, iteration, idx, record)

    monkeypatch.setattr(run_module.Classifier, "iterate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_module.run_classify2d(tiny_stack.star, out, settings, log=lambda *a: None)
    assert not out.exists() and (tmp_path / ".run.classify2d" / "state.pt").exists()
    monkeypatch.setattr(run_module.Classifier, "iterate", original)
    messages = []
    summary = run_module.run_classify2d(tiny_stack.star, out, settings, log=messages.append)
    assert any("resuming after iteration 1" in m for m in messages)
    assert (out / "classes.mrcs").exists() and len(summary["history"]) == 4
    assert not (tmp_path / ".run.classify2d").exists()


def test_large_boxes_are_fourier_cropped(tmp_path):
    """Stacks above MAX_BOX are read cropped to it, with the pixel size scaled to keep the field of view."""
    from cryoflow.classify2d.data import MAX_BOX, read_particles
    from cryoflow.simulate import simulate_stack

    simulate_stack(tmp_path / "s", n=8, box=2 * MAX_BOX, pixel_size=1.25, seed=0)
    star = next((tmp_path / "s").glob("*.star"))
    particles = read_particles(star)
    assert particles.box == MAX_BOX and particles.stack_box == 2 * MAX_BOX
    assert particles.pixel_size == pytest.approx(2.5)
    images = particles.read(np.arange(4))
    assert images.shape == (4, MAX_BOX, MAX_BOX) and np.isfinite(images).all()


def test_neighbourhood_purity_counts_mirrored_neighbours_as_antipodal_views():
    """The ASPIRE comparison's scoring: a mirrored neighbour shows the antipodal view."""
    import pandas as pd

    from cryoflow.classify2d.bench import group_purity

    # particles 0-3: one view (rot 30°, tilt 60°); 4-5: the antipodal view; 6: another species; 7: junk
    table = pd.DataFrame(
        {
            "cfSpecies": ["a"] * 6 + ["b", "junk"],
            "cfIsJunk": [0] * 7 + [1],
            "cfTrueRot": [30.0] * 4 + [210.0] * 2 + [30.0, np.nan],
            "cfTrueTilt": [60.0] * 4 + [120.0] * 2 + [60.0, np.nan],
            "cfTruePsi": [0.0] * 7 + [np.nan],
        }
    )
    groups = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [7, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 1, 4, 5, 6]])
    mirrored = np.zeros(groups.shape, dtype=bool)
    plain = group_purity(table, groups[:1], mirrored[:1])
    assert plain["purity"] == pytest.approx(4 / 7)  # antipodal views and the other species are impure
    mirrored[:, [4, 5]] = True  # particles 4 and 5 matched after mirroring
    scored = group_purity(table, groups, mirrored)
    assert scored["groups"] == 2  # the group of a junk particle is left out
    # group 0: 6 of 7 good members pure; group 2: particle 1 twice (mirrored: antipodal, impure),
    # 4 mirrored (pure), 5 plain (antipodal, impure), 6 other species: 5 of 8
    assert scored["purity"] == pytest.approx((6 / 7 + 5 / 8) / 2)
