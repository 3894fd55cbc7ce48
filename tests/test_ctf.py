"""CTF estimation against the simulator's truth, quality-metric signatures, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryoflow.ctf import Optics, estimate
from cryoflow.io import read_table, write_mrc
from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph
from cryoflow.simulate.structures import reference_species

APIX = 1.5
OPTICS = Optics(300.0, 2.7, 0.07)


def simulate(size=512, defocus_u=15000.0, defocus_v=14000.0, angle=30.0, seed=0, **kwargs):
    spec = MicrographSpec(
        shape=(size, size),
        pixel_size=APIX,
        defocus_u=defocus_u,
        defocus_v=defocus_v,
        defocus_angle=angle,
        amplitude_contrast=0.07,
        n_particles=kwargs.pop("n_particles", 15),
        seed=seed,
        **kwargs,
    )
    return simulate_micrograph(spec, [reference_species(APIX)])


@pytest.mark.parametrize(
    ("u", "v", "angle"), [(8000.0, 7200.0, 120.0), (21000.0, 20000.0, 35.0), (35000.0, 34800.0, 80.0)]
)
def test_defocus_and_astigmatism_match_truth(u, v, angle):
    sim = simulate(size=768, defocus_u=u, defocus_v=v, angle=angle, seed=int(u))
    result = estimate(torch.from_numpy(sim.image), APIX, OPTICS)
    assert result.ok, result.reason
    fit = result.fit
    truth_mean = (u + v) / 2
    assert abs(fit.defocus - truth_mean) / truth_mean < 0.01
    assert abs(fit.astigmatism - (u - v)) < 150
    if u - v >= 500:
        assert abs((fit.angle - angle + 90) % 180 - 90) < 5
    assert 2 * APIX <= result.resolution < 10


def test_empty_hole_is_reported_not_fitted():
    sim = simulate(defect="empty", n_particles=0)
    result = estimate(torch.from_numpy(sim.image), APIX, OPTICS)
    assert not result.ok
    assert "Thon rings" in result.reason


def test_drift_shows_as_thon_ring_anisotropy():
    good = estimate(torch.from_numpy(simulate(size=768, seed=3).image), APIX, OPTICS)
    drift = simulate(size=768, seed=3, defect="drift", defect_params={"length_A": 10.0, "angle_deg": 30.0})
    drifted = estimate(torch.from_numpy(drift.image), APIX, OPTICS)
    assert drifted.ok and good.ok
    assert drifted.metrics["thon_anisotropy"] > good.metrics["thon_anisotropy"] + 0.2
    # rings are weakest along the drift direction
    assert abs((drifted.metrics["thon_weak_angle"] - 30.0 + 90) % 180 - 90) < 25


def test_crystalline_ice_raises_the_ice_ring():
    spec = dict(size=512, seed=4)
    vitreous = estimate(torch.from_numpy(simulate(**spec).image), APIX * 0 + APIX, OPTICS)
    crystal = estimate(torch.from_numpy(simulate(**spec, defect="crystalline_ice").image), APIX, OPTICS)
    assert crystal.metrics["ice_ring"] > vitreous.metrics["ice_ring"] + 0.2


def test_contamination_raises_dark_fraction():
    clean = estimate(torch.from_numpy(simulate(size=512, seed=5).image), APIX, OPTICS)
    dirty = estimate(torch.from_numpy(simulate(size=512, seed=5, defect="contamination").image), APIX, OPTICS)
    assert dirty.metrics["dark_fraction"] > clean.metrics["dark_fraction"] + 0.02


def test_command_writes_relion_star_and_report(cli, tmp_path):
    mics = tmp_path / "mics"
    truth = {}
    for i, (u, v) in enumerate([(12000.0, 11500.0), (25000.0, 24000.0)]):
        sim = simulate(size=512, defocus_u=u, defocus_v=v, seed=10 + i)
        write_mrc(mics / f"mic_<{i}>.mrc", sim.image, APIX)
        truth[f"mic_<{i}>.mrc"] = (u + v) / 2
    write_mrc(mics / "empty.mrc", simulate(size=512, defect="empty", n_particles=0).image, APIX)
    out = tmp_path / "ctf"
    result = cli("ctf", mics, "--out", out, "--amplitude-contrast", "0.07")
    assert result.code == 0, result.err
    table = read_table(out / "micrographs_ctf.star")
    assert table.pixel_size(1) == APIX and float(table.optics["rlnVoltage"].iloc[0]) == 300
    for column in (
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnCtfMaxResolution",
        "rlnCtfFigureOfMerit",
        "rlnCtfAstigmatism",
    ):
        assert column in table.table
    for _, row in table.table.iterrows():
        name = row["rlnMicrographName"].rsplit("/", 1)[-1]
        assert abs((row["rlnDefocusU"] + row["rlnDefocusV"]) / 2 - truth[name]) / truth[name] < 0.01
        assert (out / row["cryoflowDiagnostic"]).is_file()
    failed = read_table(out / "micrographs_ctf_failed.star")
    assert list(failed.table["rlnMicrographName"].str.rsplit("/", n=1).str[-1]) == ["empty.mrc"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fitted"] == 2 and summary["failed"] == 1
    html = (out / "report.html").read_text()
    assert "mic_&lt;0&gt;" in html and "http" not in html


def test_command_refuses_existing_output_and_bad_parameters(cli, tmp_path):
    mic = write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).normal(size=(64, 64)), 1.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("ctf", mic, "--out", out)
    assert result.code == 2 and "not empty" in result.err
    assert (out / "keep.txt").read_text() == "mine"
    result = cli("ctf", mic, "--out", tmp_path / "o2", "--amplitude-contrast", "2")
    assert result.code == 2 and "amplitude-contrast" in result.err
    assert not (tmp_path / "o2").exists()


def test_real_micrograph_binned_and_crop_agree(shared_data):
    from cryoflow.io import read_micrograph

    fits = []
    for name in ("epu_falcon_bin4.mrc", "epu_falcon_crop1024.mrc"):
        image, apix = read_micrograph(shared_data / "micrographs" / name)
        result = estimate(torch.from_numpy(image.copy()), apix, Optics(300.0, 2.7, 0.1))
        assert result.ok, result.reason
        fits.append(result.fit.defocus)
    assert abs(fits[0] - fits[1]) / fits[0] < 0.02
    assert 15000 < fits[0] < 35000  # EPU: applied -2.2 µm, autofocus 1.8 µm


def test_phase_plate_shift_is_fitted():
    from cryoflow.ctf import Settings

    sim = simulate(size=768, defocus_u=6000.0, defocus_v=5600.0, angle=60.0, seed=21, phase_shift=70.0)
    result = estimate(torch.from_numpy(sim.image), APIX, OPTICS, Settings(phase_plate=True))
    assert result.ok, result.reason
    assert abs(result.fit.phase_shift - 70.0) < 10
    assert abs(result.fit.defocus - 5800.0) / 5800.0 < 0.03


@pytest.mark.parametrize(("u", "v", "angle"), [(8000.0, 7200.0, 120.0), (30000.0, 29000.0, 50.0)])
def test_fast_mode_matches_truth(u, v, angle):
    """The on-the-fly mode of ``cryoflow watch`` (256² spectrum, no tilt fits) still finds defocus and astigmatism."""
    from cryoflow.ctf import Settings

    sim = simulate(size=1024, defocus_u=u, defocus_v=v, angle=angle, seed=int(u) + 1)
    result = estimate(torch.from_numpy(sim.image), APIX, OPTICS, Settings.fast())
    assert result.ok, result.reason
    truth_mean = (u + v) / 2
    assert abs(result.fit.defocus - truth_mean) / truth_mean < 0.01
    assert abs(result.fit.astigmatism - (u - v)) < 200
    assert abs((result.fit.angle - angle + 90) % 180 - 90) < 5
    assert "tilt_angle" not in result.metrics and 2 * APIX <= result.resolution < 10
