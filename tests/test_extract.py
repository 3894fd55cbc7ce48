"""cryoflow extract: particles cut at the simulator's true positions, measured against the truth."""

from __future__ import annotations

import json
import math

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryoflow.errors import CryoflowError
from cryoflow.io import StarTable, make_optics, open_stack, read_table, write_blocks, write_mrc, write_table
from cryoflow.numerics import fft_friendly
from cryoflow.picking.extract import run_extract, stack_name
from cryoflow.picking.extract_bench import centre_offset, expected_drops
from cryoflow.picking.particle_images import BG_DIAMETER_FRACTION, auto_box, background_mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cryoflow.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny") / "data", preset="tiny", seed=2).path


@pytest.fixture(scope="module")
def truth_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract") / "out"
    summary = run_extract(
        tiny / "truth/micrographs_truth.star", tiny / "truth/particles_truth.star", out, diameter=120, phase_flip=True
    )
    return out, summary


def _images(out):
    table = read_table(out / "particles.star", "particles").table
    stacks = {}
    for rel in {n.split("@", 1)[1] for n in table["rlnImageName"]}:
        with open_stack(out / rel) as s:
            stacks[rel] = s[:]
    index = table["rlnImageName"].str.split("@", n=1)
    images = np.stack([stacks[p][int(i) - 1] for i, p in zip(index.str[0], index.str[1], strict=True)])
    return table, images


def test_fft_friendly_box_rule():
    assert [fft_friendly(n) for n in (7, 61, 98, 161, 257)] == [8, 64, 100, 162, 270]
    assert auto_box(120, 3.0) == 60  # 1.5 x 40 px
    assert auto_box(150, 0.83) == 288  # 271.1 -> 288 = 2^5 3^2


def test_truth_extraction_quality(tiny, truth_run):
    out, summary = truth_run
    truth = read_table(tiny / "truth/particles_truth.star", "particles").table
    table, images = _images(out)
    box = summary["box"]
    assert box == 60 and images.shape[1:] == (box, box) and images.dtype == np.float32
    # every truth row is either extracted or dropped at an edge, exactly as geometry says
    expected = expected_drops(truth, summary["window"], (256, 256))
    assert summary["dropped_at_edges"] == expected > 0
    assert summary["n_particles"] == len(truth) - expected == len(table)
    # background ring: mean 0, std 1 per particle
    bg = images[:, background_mask(box, BG_DIAMETER_FRACTION * box / 2).numpy()]
    assert np.abs(bg.mean(1)).max() < 1e-4
    assert np.abs(bg.std(1, ddof=3) - 1).max() < 1e-3
    # truth columns carried; the average of one species is centred and white in the middle
    assert {"cfSpecies", "cfIsJunk", "cfDiameter"} <= set(table.columns)
    species = (table["cfSpecies"] == "7DDO") & (table["cfIsJunk"] == 0)
    assert species.sum() >= 10
    average = images[species.to_numpy()].mean(0)
    assert centre_offset(average) < 1.0
    c = box // 2
    assert average[c - 3 : c + 4, c - 3 : c + 4].mean() > 0.3  # particles white, well above the background (0)
    assert summary["phase_flipped"] and summary["diameter_A"] == 120


def test_star_roundtrip_and_stacks(truth_run):
    out, summary = truth_run
    star = read_table(out / "particles.star", "particles")
    optics = star.optics.iloc[0]
    assert optics["rlnImageSize"] == summary["box"] and optics["rlnImageDimensionality"] == 2
    assert optics["rlnImagePixelSize"] == pytest.approx(3.0) and optics["rlnCtfDataArePhaseFlipped"] == 1
    for column in ("rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        assert column in star.optics
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCoordinateX"):
        assert column in star.table
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert set(blocks) == {"optics", "particles"} and len(blocks["particles"]) == summary["n_particles"]
    first = star.table["rlnImageName"].iloc[0]
    assert first.startswith("000001@Particles/") and first.endswith(".mrcs")
    assert first.split("@")[1] == stack_name(star.table["rlnMicrographName"].iloc[0])
    with mrcfile.open(out / first.split("@")[1]) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.voxel_size.x == pytest.approx(3.0)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_particles"] == summary["n_particles"] and (out / "report.html").is_file()


def test_report_average_is_the_mean_of_every_particle(tiny, tmp_path, monkeypatch):
    """The average shown in the report is summed chunk by chunk in the workers: it must equal the stacks' mean."""
    import cryoflow.picking.extract_report as extract_report
    from cryoflow.picking import particle_images

    seen = {}
    real = extract_report.write_report

    def spy(out, summary, gallery, captions, average):
        seen["average"] = average
        return real(out, summary, gallery, captions, average)

    monkeypatch.setattr(extract_report, "write_report", spy)
    monkeypatch.setattr(particle_images, "CHUNK_PIXELS", 3 * 60**2)  # box 60 (diameter 120 Å at 3 Å/px): chunks of 3
    out = tmp_path / "out"
    summary = run_extract(tiny / "truth/micrographs_truth.star", tiny / "truth/particles_truth.star", out, diameter=120)
    _, images = _images(out)
    assert summary["box"] == 60 and len(images) > 3 * summary["micrographs"]  # several chunks per micrograph
    np.testing.assert_allclose(seen["average"], images.astype(np.float64).mean(0), atol=1e-5)


def test_numba_and_torch_normalization_write_the_same_stacks(tiny, tmp_path, monkeypatch):
    """On the CPU chunks are normalized by numba (cpu_kernels, which also gives the header's sums), on a GPU by
    torch (normalize_background): the torch path, forced onto the CPU, writes the same particles, and every
    stack's header holds its data's min, max, mean and rms (as mrcfile computes them)."""
    from cryoflow.picking import particle_images

    args = (tiny / "truth/micrographs_truth.star", tiny / "truth/particles_truth.star")
    run_extract(*args, tmp_path / "numba", diameter=120, report=False)
    monkeypatch.setattr(particle_images, "NUMBA_DEVICES", ())
    run_extract(*args, tmp_path / "torch", diameter=120, report=False)
    _, fused = _images(tmp_path / "numba")
    _, reference = _images(tmp_path / "torch")
    np.testing.assert_allclose(fused, reference, atol=1e-4)
    for path in sorted((tmp_path / "numba").rglob("*.mrcs")) + sorted((tmp_path / "torch").rglob("*.mrcs")):
        with mrcfile.open(path) as mrc:
            data = mrc.data.astype(np.float64)
            expected = (data.min(), data.max(), data.mean(), data.std())
            stored = [float(mrc.header[f]) for f in ("dmin", "dmax", "dmean", "rms")]
            np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_cryosparc_export(truth_run, shared_data):
    out, summary = truth_run
    cs = np.load(out / "particles.cs")
    star = read_table(out / "particles.star", "particles").table
    assert len(cs) == len(star) and len(np.unique(cs["uid"])) == len(cs)
    real = np.load(shared_data / "star/empiar_10076_7.cs")
    extracted = np.load(shared_data / "star/cryosparc_P12_J24_001_particles.cs")
    for reference in (real, extracted):
        for name in reference.dtype.names:
            if name.startswith(("blob/", "ctf/")) and name != "blob/import_sig" or name == "uid":
                assert name in cs.dtype.names, name
                ours, theirs = cs.dtype[name], reference.dtype[name]
                assert ours.kind == theirs.kind and ours.shape == theirs.shape, name
                if ours.kind != "S":
                    assert ours == theirs, name
    assert "blob/import_sig" in cs.dtype.names
    assert np.array_equal(cs["blob/idx"], star["rlnImageName"].str.split("@").str[0].astype(int) - 1)
    assert np.allclose(cs["ctf/df_angle_rad"], np.deg2rad(star["rlnDefocusAngle"]), atol=1e-6)
    assert np.allclose(cs["ctf/df1_A"], star["rlnDefocusU"]) and np.all(cs["blob/shape"] == summary["box"])
    assert np.allclose(cs["location/center_x_frac"] * 256, star["rlnCoordinateX"], atol=1e-3)
    assert cs["blob/path"][0].decode() == star["rlnImageName"].iloc[0].split("@")[1]


def test_binning_halves_box_and_keeps_field(tiny, tmp_path):
    mics, picks = tiny / "truth/micrographs_truth.star", tiny / "truth/particles_truth.star"
    full = run_extract(mics, picks, tmp_path / "b1", box=64, report=False)
    half = run_extract(mics, picks, tmp_path / "b2", box=32, binning=2, report=False)
    assert half["window"] == full["window"] == 64 and half["box"] == 32
    assert half["pixel_size"] == pytest.approx(6.0) and full["pixel_size"] == pytest.approx(3.0)
    with mrcfile.open(next((tmp_path / "b2/Particles").rglob("*.mrcs"))) as mrc:
        assert mrc.voxel_size.x == pytest.approx(6.0)
    table, a = _images(tmp_path / "b1")
    _, b = _images(tmp_path / "b2")
    assert a.shape[0] == b.shape[0] and b.shape[1:] == (32, 32)
    # the binned image is the unbinned one sampled every other pixel, once both are low-passed. The
    # binned box is centred on the coordinate rounded at the binned scale: its centre lies at micrograph
    # pixel 2 round(c / 2), up to one micrograph pixel (half a binned pixel) from round(c), the unbinned
    # box's centre; sample the unbinned box there
    from scipy.ndimage import gaussian_filter

    def offset(c):  # micrograph pixels from the unbinned box centre to the binned one's
        return 2 * np.floor(c / 2 + 0.5).astype(int) - np.floor(c + 0.5).astype(int)

    dx, dy = offset(table["rlnCoordinateX"].to_numpy()), offset(table["rlnCoordinateY"].to_numpy())
    assert np.abs(dx).max() <= 1 and np.abs(dy).max() <= 1 and (dx != 0).any()
    smooth = gaussian_filter(a, (0, 2.0, 2.0), mode="wrap")
    grid = 2 * np.arange(32)
    n = np.arange(len(a))[:, None, None]
    smooth_a = smooth[n, (grid[None, :, None] + dy[:, None, None]) % 64, (grid[None, None, :] + dx[:, None, None]) % 64]
    smooth_b = gaussian_filter(b, (0, 1.0, 1.0), mode="wrap")
    r = [np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(smooth_a, smooth_b, strict=True)]
    assert np.median(r) > 0.95
    assert centre_offset(b.mean(0)) < 1.0  # still centred within a binned pixel


def _synthetic(tmp_path, n_side=5, size=320, apix=2.0, defocus=12000.0, noise=1e-4):
    """A micrograph of Gaussian blobs (positive density) imaged as RELION's model says: -CTF ⊗ blobs, particles dark,
    plus Gaussian noise of standard deviation ``noise`` (the blobs' CTF fringes fade below float32's resolution of
    the background: without noise the background ring is constant, and normalization gives zeros)."""
    from cryoflow.optics import ctf_values

    centres = [(40 + 60 * i + 0.0, 40 + 60 * j + 0.0) for i in range(n_side) for j in range(n_side)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    density = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2)) for x, y in centres)
    ky = torch.fft.fftfreq(size, d=apix, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(size, d=apix, dtype=torch.float64)[None, :]
    ctf = ctf_values(ky, kx, defocus, defocus - 300, 30.0, 300.0, 2.7, 0.07).numpy()
    image = 10.0 - np.fft.irfft2(np.fft.rfft2(density) * ctf, s=(size, size))
    image += np.random.default_rng(0).normal(0.0, noise, image.shape)
    write_mrc(tmp_path / "mic.mrc", image.astype(np.float32), apix)
    mics = pd.DataFrame(
        {"rlnMicrographName": ["mic.mrc"], "rlnOpticsGroup": [1], "rlnDefocusU": [defocus]}
        | {"rlnDefocusV": [defocus - 300], "rlnDefocusAngle": [30.0]}
    )
    write_table(tmp_path / "mics.star", StarTable(make_optics(apix, 300, 2.7, 0.07), mics, "micrographs"))
    coords = pd.DataFrame({"rlnCoordinateX": [c[0] for c in centres], "rlnCoordinateY": [c[1] for c in centres]})
    write_blocks(tmp_path / "mic_coords.star", {"": coords})
    index = pd.DataFrame({"rlnMicrographName": ["mic.mrc"], "rlnMicrographCoordinates": ["mic_coords.star"]})
    write_blocks(tmp_path / "coordinates.star", {"coordinate_files": index})
    return ctf


def test_phase_flip_makes_spectrum_positive(tmp_path):
    from cryoflow.optics import ctf_values

    _synthetic(tmp_path)
    spectra = {}
    for flip in (False, True):
        run_extract(tmp_path / "mics.star", tmp_path, tmp_path / f"out{flip}", box=64, phase_flip=flip, report=False)
        _, images = _images(tmp_path / f"out{flip}")
        assert len(images) == 25
        average = images.mean(0)
        spectra[flip] = np.fft.rfft2(np.fft.ifftshift(average)).real  # centred at box // 2: real spectrum
    ky = torch.fft.fftfreq(64, d=2.0, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(64, d=2.0, dtype=torch.float64)[None, :]
    ctf = ctf_values(ky, kx, 12000.0, 11700.0, 30.0, 300.0, 2.7, 0.07).numpy()
    k = np.sqrt(ky.numpy() ** 2 + kx.numpy() ** 2)
    band = (np.abs(ctf) > 0.5) & (k > 0.02) & (k < 0.12)  # clear of zeros, below the blob's fall-off
    assert (ctf[band] < 0).sum() > 20 and (ctf[band] > 0).sum() > 20
    signed = np.sign(spectra[False][band]) * np.sign(ctf[band])
    assert (signed > 0).mean() > 0.95  # unflipped: the spectrum follows the CTF (images are CTF ⊗ particle)
    assert (spectra[True][band] > 0).mean() > 0.95  # flipped: positive everywhere


def test_pick_folder_names_and_auto_box(tmp_path, capsys):
    _synthetic(tmp_path)
    # a pick folder: coordinates.star naming the micrograph by base name only, an unknown micrograph, diameter_A
    folder = tmp_path / "pick"
    folder.mkdir()
    coords = starfile.read(tmp_path / "mic_coords.star")
    coords["rlnAutopickFigureOfMerit"] = np.linspace(0, 1, len(coords))
    coords["cfScore"] = 1.0
    write_blocks(folder / "m.star", {"": coords})
    write_blocks(folder / "other.star", {"": coords.iloc[:3]})
    index = pd.DataFrame(
        {
            "rlnMicrographName": ["Movies/mic.tiff", "Movies/unknown.tiff"],
            "rlnMicrographCoordinates": ["m.star", "other.star"],
        }
    )
    write_blocks(folder / "coordinates.star", {"coordinate_files": index})
    (folder / "summary.json").write_text(json.dumps({"diameter_A": 60.0}))
    s = run_extract(tmp_path / "mics.star", folder, tmp_path / "out", report=False)
    assert s["box"] == 48 and s["diameter_A"] == 60.0  # 1.5 x 30 px = 45 -> 48
    assert s["unmatched_coordinates"] == 3 and "unknown" in capsys.readouterr().err
    table = read_table(tmp_path / "out/particles.star", "particles").table
    assert len(table) == 25 and np.allclose(table["rlnAutopickFigureOfMerit"], coords["rlnAutopickFigureOfMerit"])
    assert (table["cfScore"] == 1.0).all()


@pytest.mark.parametrize(
    "case, message",
    [
        ("odd_box", "even number"),
        ("bin", "--bin"),
        ("no_diameter", "no box size"),
        ("no_match", "no coordinate matches"),
        ("missing_column", "rlnDefocusU"),
        ("nonempty_out", "not empty"),
        ("huge_box", "larger than"),
    ],
)
def test_bad_input(cli, tmp_path, case, message):
    _synthetic(tmp_path)
    mics, out = tmp_path / "mics.star", tmp_path / "out"
    args = ["extract", "--micrographs", mics, "--coordinates", tmp_path, "--out", out, "--box", "64"]
    if case == "odd_box":
        args[-1] = "63"
    elif case == "bin":
        args += ["--bin", "0.5"]
    elif case == "no_diameter":
        args = args[:-2]
    elif case == "huge_box":
        args[-1] = "400"
    elif case == "no_match":
        index = pd.DataFrame({"rlnMicrographName": ["x.mrc"], "rlnMicrographCoordinates": ["mic_coords.star"]})
        write_blocks(tmp_path / "coordinates.star", {"coordinate_files": index})
    elif case == "missing_column":
        star = read_table(mics, "micrographs")
        write_table(mics, StarTable(star.optics, star.table.drop(columns=["rlnDefocusU"]), "micrographs"))
    elif case == "nonempty_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    result = cli(*args)
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1
    if case == "nonempty_out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left


def test_deterministic_cs(tmp_path):
    _synthetic(tmp_path)
    for name in ("a", "b"):
        run_extract(tmp_path / "mics.star", tmp_path, tmp_path / name, box=64, report=False, seed=5)
    a, b = np.load(tmp_path / "a/particles.cs"), np.load(tmp_path / "b/particles.cs")
    assert a.tobytes() == b.tobytes()
    assert (tmp_path / "a/particles.star").read_bytes() == (tmp_path / "b/particles.star").read_bytes()
    assert math.isclose(float(a["blob/psize_A"][0]), 2.0)


def _cut(*args, **kwargs) -> torch.Tensor:
    """All of particle_chunks' images in one tensor (each chunk is a reused buffer: copied)."""
    from cryoflow.picking.particle_images import particle_chunks

    return torch.cat([chunk.images.clone() for chunk in particle_chunks(*args, **kwargs)])


def test_whole_micrograph_binning_matches_per_window_binning(tmp_path):
    """Binning the micrograph once and cutting boxes from it agrees with binning each window (the old path)
    away from the box edges, where only the per-window path wraps around; coordinates on the binned grid
    (multiples of the factor) so that both centre the particle on the same micrograph pixel."""
    from cryoflow.picking import particle_images as pim

    rng = np.random.default_rng(3)
    size, window, box = 330, 96, 48  # 330: padded to 360, a multiple of 4 with factors 2, 3, 5
    density = np.zeros((size, size))
    centres = np.array([(64, 64), (64, 170), (170, 110), (250, 250), (120, 262), (266, 60)], dtype=float)
    yy, xx = np.mgrid[0:size, 0:size]
    for y, x in centres:
        density += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0**2))
    image = torch.from_numpy((5 - density + 0.05 * rng.standard_normal((size, size))).astype(np.float32))
    y, x = torch.from_numpy(centres[:, 0]), torch.from_numpy(centres[:, 1])
    sign = pim.ctf_sign(box, 2.0, 15000.0, 14500.0, 20.0, 300.0, 2.7, 0.07)[0]
    bg = BG_DIAMETER_FRACTION * box / 2
    for flip in (None, sign):
        whole = _cut(image, x, y, box, window, bg, flip)
        windows = pim.gather_boxes(image, pim.box_starts(y, window), pim.box_starts(x, window), window)
        full_flip = None
        if flip is not None:
            full_flip = pim.ctf_sign(window, 1.0, 15000.0, 14500.0, 20.0, 300.0, 2.7, 0.07)
        per = pim.process_boxes(windows, box, bg, full_flip)
        assert whole.shape == per.shape == (len(centres), box, box)
        c = slice(box // 4, 3 * box // 4)  # the central half
        difference = (whole - per)[:, c, c].abs().max() / per[:, c, c].std()
        # Gibbs ringing from the window's edges (per window; the flip spreads it further) reaches the
        # centre a little: measured 8 % (flip 18 %) of the std at most, 1.6 % (flip 3.9 %) on average
        assert difference < 0.25, float(difference)
        mean_difference = (whole - per)[:, c, c].abs().mean() / per[:, c, c].std()
        assert mean_difference < 0.06, float(mean_difference)
        r = np.corrcoef(whole.numpy().ravel(), per.numpy().ravel())[0, 1]
        assert r > 0.99, r
        # processed in chunks: the same images
        chunked = _cut(image, x, y, box, window, bg, flip, max_pixels=2 * box * box)
        assert torch.allclose(chunked, whole, atol=1e-3)  # float32 sums in another order (values up to ~40)


def test_binned_starts_and_padding():
    from cryoflow.picking import particle_images as pim

    c = torch.tensor([144.0, 145.0, 146.4, 147.5, 4000.2])
    assert pim.binned_starts(c, 288, 288).tolist() == pim.box_starts(c, 288).tolist()
    assert pim.binned_starts(c, 72, 288).tolist() == [0, 0, 1, 1, 964]  # round(c / 4) - 36
    assert pim.padded_size(4096, 144, 288) == 4096 and pim.padded_size(4092, 144, 288) == 4096
    assert pim.padded_size(330, 48, 96) == 360 and pim.padded_size(100, 100, 150) % 6 == 0


def test_micrograph_without_ctf_fit_is_skipped_and_counted(tmp_path):
    """micassess may call a micrograph good on its looks although the CTF fit failed: its picks
    carry no defocus, which 2D classification needs, so they are skipped and counted (with
    --allow-empty an empty stack; without, a one-line error)."""
    _synthetic(tmp_path, defocus=float("nan"))
    with pytest.raises(CryoflowError, match="no particle could be extracted"):
        run_extract(tmp_path / "mics.star", tmp_path, tmp_path / "out", box=64, report=False)
    assert not (tmp_path / "out").exists()
    s = run_extract(tmp_path / "mics.star", tmp_path, tmp_path / "out2", box=64, report=False, allow_empty=True)
    assert s["n_particles"] == 0 and s["skipped_no_ctf"] == 25


@pytest.mark.parametrize(
    ("binning", "where", "value", "float16"),
    [
        (1.0, (42, 39), np.nan, False),  # in the particle (within the background circle)
        (1.0, (54, 100), np.inf, False),  # in the background ring of the particle at (100, 40)
        (1.0, (40, 220), -np.inf, True),  # a particle's centre, stacks in float16
        (2.0, (300, 300), np.nan, False),  # binned: outside every box
    ],
)
def test_nan_in_a_micrograph_is_an_error_naming_it(tmp_path, binning, where, value, float16):
    """A NaN or Inf inside a particle's box (binned: anywhere in the micrograph, here outside every
    box) fails the step with one line naming the micrograph, and leaves no output folder; a NaN no
    box touches is no error without binning."""
    _synthetic(tmp_path)
    path = tmp_path / "mic.mrc"
    with mrcfile.open(path, mode="r+") as mrc:
        data = mrc.data.copy()
        data[where] = value
        mrc.set_data(data)
    out = tmp_path / "out"
    with pytest.raises(CryoflowError, match="NaN or Inf") as error:
        run_extract(tmp_path / "mics.star", tmp_path, out, box=32, binning=binning, float16=float16, report=False)
    assert error.value.path == str(path) and not out.exists()
    if binning == 1.0:  # the same NaN at (300, 300), outside the 32 px boxes: extracted
        data[where], data[300, 300] = 10.0, np.nan
        with mrcfile.open(path, mode="r+") as mrc:
            mrc.set_data(data)
        assert run_extract(tmp_path / "mics.star", tmp_path, out, box=32, report=False)["n_particles"] == 25


def test_buffers_kept_between_extractions_change_nothing(tmp_path, monkeypatch):
    """A later extraction in the same process takes the buffers of the earlier ones (``cryoflow watch``
    extracts batch after batch): after extractions with other boxes, binning, flipping and float16,
    the first extraction again gives the same stacks bit for bit, from the same buffers."""
    from cryoflow.picking import extract

    _synthetic(tmp_path)
    monkeypatch.setattr(extract, "_SPARE_WORKSPACES", [])
    args = (tmp_path / "mics.star", tmp_path)
    run_extract(*args, tmp_path / "a", box=48, report=False)
    kept = [id(w) for w in extract._SPARE_WORKSPACES]
    assert kept
    run_extract(*args, tmp_path / "b", box=32, binning=2.0, phase_flip=True, report=False)
    run_extract(*args, tmp_path / "c", box=48, float16=True, report=False)
    run_extract(*args, tmp_path / "d", box=64, report=False)
    run_extract(*args, tmp_path / "again", box=48, report=False)
    assert sorted(id(w) for w in extract._SPARE_WORKSPACES) == sorted(kept)
    (_, first), (_, again) = _images(tmp_path / "a"), _images(tmp_path / "again")
    assert np.array_equal(first, again)


def test_float16_overflow_is_an_error_saying_so(tmp_path):
    """Particles in 64 px boxes with almost no noise (1e-6 beside a background of 10) have an almost
    constant background ring, so normalized values pass float16's 65,504: the step fails naming the
    micrograph and the cause (not NaN in the data), and leaves no output; float32 stacks of the same
    boxes are written."""
    _synthetic(tmp_path, noise=1e-6)
    args = (tmp_path / "mics.star", tmp_path)
    with pytest.raises(CryoflowError, match="exceed the range of float16") as error:
        run_extract(*args, tmp_path / "out", box=64, float16=True, report=False)
    assert error.value.path == str(tmp_path / "mic.mrc") and not (tmp_path / "out").exists()
    run_extract(*args, tmp_path / "out32", box=64, report=False)
    _, images = _images(tmp_path / "out32")
    assert np.abs(images).max() > 65504 and np.isfinite(images).all()


def test_extract_device_auto_is_the_cpu(tmp_path, monkeypatch):
    """Extraction's CPU path outran its CUDA path on a GPU machine (see cryoflow.picking.extract), so
    `cryoflow extract --device auto` stays on the CPU where other steps would take the GPU."""
    import torch

    from cryoflow.cli import main as cli_main
    from cryoflow.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("auto", gpu_when_auto=False).type == "cpu"
    _synthetic(tmp_path)
    args = ["extract", "--micrographs", str(tmp_path / "mics.star"), "--coordinates", str(tmp_path)]
    assert cli_main([*args, "--out", str(tmp_path / "out"), "--box", "48"]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["device"] == "cpu"


def test_float16_stacks_match_float32(tmp_path):
    """--float16 writes MRC mode 12 stacks holding the float32 particles to half precision, the same
    particles.star, and the summary and merged folders say so."""
    from cryoflow.cli import main as cli_main

    _synthetic(tmp_path)
    s32 = run_extract(tmp_path / "mics.star", tmp_path, tmp_path / "f32", box=48, binning=2.0, report=False)
    assert (
        cli_main(
            [
                "extract",
                "--micrographs",
                str(tmp_path / "mics.star"),
                "--coordinates",
                str(tmp_path),
                "--out",
                str(tmp_path / "f16"),
                "--box",
                "48",
                "--bin",
                "2",
                "--float16",
            ]
        )
        == 0
    )
    s16 = json.loads((tmp_path / "f16" / "summary.json").read_text())
    assert (s32["dtype"], s16["dtype"]) == ("float32", "float16") and s16["n_particles"] == s32["n_particles"] == 9
    a = read_table(tmp_path / "f32" / "particles.star", "particles").table
    b = read_table(tmp_path / "f16" / "particles.star", "particles").table
    pd.testing.assert_frame_equal(a, b)
    rel = a["rlnImageName"].iloc[0].split("@", 1)[1]
    with mrcfile.open(tmp_path / "f32" / rel) as m32, mrcfile.open(tmp_path / "f16" / rel) as m16:
        assert (m32.header.mode, m16.header.mode) == (2, 12)
        assert m16.data.dtype == np.float16
        np.testing.assert_allclose(m16.data.astype(np.float32), m32.data, rtol=1e-3, atol=2e-3)


def _least_squares_normalized(images: np.ndarray, bg_radius: float, ramp: bool) -> np.ndarray:
    """``-(image - fit) / std`` of each image's background (numpy, float64): the plane (or mean) fitted by
    least squares to the pixels farther than ``bg_radius`` from the centre, the std of its residual there."""
    n, box, _ = images.shape
    r = np.arange(box) - box // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    mask = background_mask(box, bg_radius).numpy()
    design = np.stack([np.ones(mask.sum()), xx[mask], yy[mask]], 1) if ramp else np.ones((mask.sum(), 1))
    full = np.stack([np.ones(box * box), xx.ravel(), yy.ravel()], 1)[:, : design.shape[1]]
    expected = []
    for image in images.astype(np.float64):
        coef, *_ = np.linalg.lstsq(design, image[mask], rcond=None)
        residual = image - (full @ coef).reshape(box, box)
        dof = mask.sum() - design.shape[1]
        expected.append(-residual / np.sqrt((residual[mask] ** 2).sum() / dof))
    return np.stack(expected)


def _particles_on_ramps(n: int, box: int, offset: float, seed: int = 4) -> np.ndarray:
    """Noise (std 1.5) on a tilted background at ``offset``, a bright disk inside the background circle (no weight)."""
    rng = np.random.default_rng(seed)
    r = np.arange(box) - box // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    images = rng.normal(0, 1.5, (n, box, box)) + offset + 0.4 * xx - 0.25 * yy
    images += 50.0 * ((yy**2 + xx**2) < 10**2)
    return images.astype(np.float32)


@pytest.mark.parametrize("ramp", [True, False])
def test_background_normalization_matches_least_squares(ramp):
    """Each image minus its background's least-squares plane (or mean), over the residual's standard deviation,
    computed independently with numpy; the bright disk inside the background circle has no weight."""
    from cryoflow.picking.particle_images import normalize_background

    images, bg_radius = _particles_on_ramps(5, 48, 30.0), 18.0
    expected = _least_squares_normalized(images, bg_radius, ramp)
    batch = torch.tensor(images)
    result = normalize_background(batch, bg_radius, ramp=ramp, scale=-1.0).numpy()
    np.testing.assert_allclose(result, expected, atol=2e-4)
    in_place = normalize_background(batch, bg_radius, ramp=ramp, scale=-1.0, out=batch).numpy()
    np.testing.assert_allclose(in_place, result, atol=1e-6)
    blank = normalize_background(torch.zeros(2, 48, 48), bg_radius, ramp=ramp)  # a flat background: zeros
    assert torch.equal(blank, torch.zeros(2, 48, 48))


@pytest.mark.parametrize("ramp", [True, False])
@pytest.mark.parametrize("offset", [30.0, 1e4])
def test_cpu_normalization_matches_least_squares(ramp, offset):
    """The CPU's two-pass normalization (numba, variance from moments) gives the least-squares result,
    also on a background far from zero (1e4 beside noise of 1.5: the moments are taken about the box's
    first pixel, not zero); it adds the images to the running total and sums their values and squares."""
    from cryoflow.picking import cpu_kernels

    images, bg_radius = _particles_on_ramps(5, 48, offset), 18.0
    expected = _least_squares_normalized(images, bg_radius, ramp)
    total, sums = np.ones((48, 48), np.float32), np.zeros(2)
    result = cpu_kernels.normalize_chunk(images, cpu_kernels.background_fit(48, bg_radius, ramp), -1.0, total, sums)
    assert result is images  # in place
    np.testing.assert_allclose(result, expected, atol=2e-4)
    np.testing.assert_allclose(total, 1 + result.sum(0), atol=1e-4)
    np.testing.assert_allclose(
        sums, [result.astype(np.float64).sum(), (result.astype(np.float64) ** 2).sum()], rtol=1e-5
    )


def test_cpu_normalization_of_flat_and_non_finite_boxes():
    """A flat background gives zeros (as normalize_background); a NaN or Inf anywhere in a box, inside the
    circle too, makes that whole image NaN and reaches the total and the sums; the other boxes are untouched."""
    from cryoflow.picking import cpu_kernels

    fit = cpu_kernels.background_fit(32, 12.0)
    images = _particles_on_ramps(4, 32, 5.0)
    images[0] = 7.0  # flat
    images[1, 16, 16] = np.nan  # inside the circle: no weight in the fit, still NaN
    images[2, 0, 5] = np.inf  # on the background ring
    expected = _least_squares_normalized(images[3:], 12.0, True)
    total, sums = np.zeros((32, 32), np.float32), np.zeros(2)
    cpu_kernels.normalize_chunk(images, fit, -1.0, total, sums)
    assert (images[0] == 0).all()
    assert np.isnan(images[1]).all() and np.isnan(images[2]).all()
    np.testing.assert_allclose(images[3], expected[0], atol=2e-4)
    assert np.isnan(total).all() and np.isnan(sums).all()


@pytest.mark.parametrize(
    ("shape", "box", "window"),
    [
        ((96, 128), 16, 32),  # by 2, even sides: halve
        ((128, 96), 16, 64),  # by 4
        ((90, 120), 32, 48),  # by 1.5
        ((63, 70), 16, 32),  # by 2, an odd side: padded with the mean
        ((160, 96), 16, 32),  # by 2, blocks of 64 rows and a last one of 32
    ],
)
@pytest.mark.parametrize("numba_split", [True, False])
def test_bin_micrograph_is_a_separable_fourier_crop(shape, box, window, numba_split, monkeypatch):
    """Binning agrees with numpy in float64: pad with the mean to padded_size, then along each axis
    irfft(rfft(x)[: m // 2 + 1], m) * m / n (the new Nyquist keeps the real part). Halving splits the
    rows into even and odd samples with numba on the CPU, with torch's copies on a GPU (forced here)."""
    from cryoflow.picking import particle_images as pim

    if not numba_split:
        monkeypatch.setattr(pim, "NUMBA_DEVICES", ())

    rng = np.random.default_rng(4)
    image = (3 + rng.standard_normal(shape)).astype(np.float32)
    hp, wp = pim.padded_size(shape[0], box, window), pim.padded_size(shape[1], box, window)
    expected = np.full((hp, wp), image.astype(np.float64).mean())
    expected[: shape[0], : shape[1]] = image
    for axis in (1, 0):
        n = expected.shape[axis]
        m = n * box // window
        spectrum = np.take(np.fft.rfft(expected, axis=axis), np.arange(m // 2 + 1), axis=axis)
        expected = np.fft.irfft(spectrum, n=m, axis=axis) * (m / n)
    binned = pim.bin_micrograph(torch.from_numpy(image), box, window).numpy()
    assert binned.shape == expected.shape
    assert np.abs(binned - expected).max() < 1e-5 * np.abs(expected).max()


def test_fourier_crop_of_boxes_is_the_same_separable_crop():
    """Per-box binning (extraction's process_boxes, 2D classification's reader) crops as the whole
    micrograph is binned: numpy's irfft(rfft(x)[: m // 2 + 1], m) along each axis."""
    from cryoflow.classify2d.data import fourier_crop as crop_images
    from cryoflow.picking import particle_images as pim

    images = np.random.default_rng(5).standard_normal((3, 48, 48)).astype(np.float32)
    expected = images.astype(np.float64)
    for axis in (2, 1):
        spectrum = np.take(np.fft.rfft(expected, axis=axis), np.arange(32 // 2 + 1), axis=axis)
        expected = np.fft.irfft(spectrum, n=32, axis=axis) * (32 / 48)
    spectrum = torch.fft.rfft2(torch.from_numpy(images))
    cropped = torch.fft.irfft2(pim.fourier_crop(spectrum, 48, 32), s=(32, 32)).numpy()
    assert np.abs(cropped - expected).max() < 1e-5
    assert np.abs(crop_images(images, 32) - expected).max() < 1e-5


def test_bench_extract_runs_every_configuration(capsys):
    """`cryoflow bench extract` at a tiny size: every configuration (in memory and from disk) runs,
    drops what geometry says and normalizes the background to mean 0, std 1."""
    from cryoflow.picking.extract_bench import CONFIGS, main

    figures = main(["--size", "512", "--micrographs", "1", "--repeat", "2", "--runs", "1", "--diameter", "60"])
    assert list(figures["configs"]) == [label for label, _, _ in CONFIGS]
    counts = {row["n_particles"] for row in figures["configs"].values()}
    assert len(counts) == 1 and counts.pop() > 0
    for row in figures["configs"].values():
        assert row["dropped_at_edges"] == row["expected_dropped"]
        assert abs(row["bg_mean"]) < 0.05 and abs(row["bg_std"] - 1) < 0.05
        assert row["particles_per_second"] > 0 and row["micrograph_MB_per_second"] > 0
        assert row["user_s_per_1000"] >= 0 and row["system_s_per_1000"] >= 0
    # CPU time is counted in clock ticks (10 ms): one tiny run may show none, all of them together do
    assert sum(row["user_s_per_1000"] for row in figures["configs"].values()) > 0
    assert "from disk" in capsys.readouterr().out
