"""Physics of the micrograph simulator: CTF rings, dose, particle positions, defect signatures.

Each test measures a property of the simulated image against the simulator's own truth
or the textbook formula (ring zeros, Poisson statistics, cross-correlation peaks, power
at ice reflections, anisotropy of drift ...). Particles are the analytic stand-in
:class:`BlobSpecies` (fast); one test runs a ``structures`` species end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoflow.errors import CryoflowError
from cryoflow.simulate import physics
from cryoflow.simulate.defects import DEFECTS, THICK_ICE_NM
from cryoflow.simulate.micrograph import (
    PARTICLE_COLUMNS,
    MicrographSpec,
    blob_species,
    shot_noise,
    simulate_micrograph,
)


@pytest.fixture(scope="module")
def blobs2():
    """Two stand-in species at 2 Å/px."""
    return [blob_species(80.0, 2.0, seed=0, name="small"), blob_species(120.0, 2.0, seed=1, name="large")]


# --- measurement helpers ------------------------------------------------------------------
def _psd2(img: np.ndarray) -> np.ndarray:
    """2D power spectrum (per-pixel variance units), rfft layout (H, W//2+1)."""
    x = img.astype(np.float64) - img.mean()
    return np.abs(np.fft.rfft2(x)) ** 2 / x.size


def _kgrid(shape, apix):
    ky = np.fft.fftfreq(shape[0])[:, None] / apix
    kx = np.fft.rfftfreq(shape[1])[None, :] / apix
    return ky, kx


def _radial(img: np.ndarray, apix: float, nbins: int, mask: np.ndarray | None = None):
    """Radial average of the power spectrum in ``nbins`` bins up to Nyquist: (k Å⁻¹, power)."""
    p = _psd2(img)
    ky, kx = _kgrid(img.shape, apix)
    k = np.sqrt(ky**2 + kx**2)
    sel = (k < 0.5 / apix) & (k > 0) if mask is None else mask & (k < 0.5 / apix) & (k > 0)
    edges = np.linspace(0, 0.5 / apix, nbins + 1)
    idx = np.digitize(k[sel], edges) - 1
    s = np.bincount(idx, p[sel], nbins)
    n = np.bincount(idx, None, nbins)
    sk = np.bincount(idx, k[sel], nbins)
    ok = n > 0
    return sk[ok] / n[ok], s[ok] / n[ok]


def _minimum_near(k, p, k0, half_window):
    """Sub-bin position of the minimum of ``p(k)`` within ``k0 ± half_window`` (parabola)."""
    sel = np.flatnonzero(np.abs(k - k0) <= half_window)
    i = sel[np.argmin(p[sel])]
    if 0 < i < len(p) - 1:
        a, b, c = p[i - 1], p[i], p[i + 1]
        denom = a - 2 * b + c
        off = 0.5 * (a - c) / denom if denom > 0 else 0.0
        return k[i] + off * (k[i + 1] - k[i - 1]) / 2
    return k[i]


def _ring_amplitude(img, apix, defocus, band, voltage=300.0, cs=2.7, ac=0.07, nbins=300):
    """Thon-ring modulation in a band: coefficient of -cos 2γ(k) in the radial PSD / its mean."""
    k, p = _radial(img, apix, nbins)
    sel = (k >= band[0]) & (k <= band[1])
    k, p = k[sel], p[sel]
    lam = physics.electron_wavelength(voltage)
    gamma = math.pi * lam * defocus * k**2 - 0.5 * math.pi * cs * 1e7 * lam**3 * k**4 + math.asin(ac)
    design = np.stack([np.ones_like(k), k, k**2, -np.cos(2 * gamma)], 1)
    coef = np.linalg.lstsq(design, p, rcond=None)[0]
    return coef[3] / p.mean()


def _ice_spec(**kw) -> MicrographSpec:
    base = dict(
        shape=(512, 512),
        pixel_size=1.0,
        n_particles=0,
        defocus_u=15000.0,
        defocus_v=15000.0,
        b_factor=20.0,
        dose=400.0,
        ice_thickness=30.0,
        seed=1,
    )
    base.update(kw)
    return MicrographSpec(**base)


# --- CTF conventions ----------------------------------------------------------------------
def _relion_ctf(shape, apix, u, v, angle, voltage=300.0, cs=2.7, ac=0.1):
    """RELION's CTF::getCTF on the rfft grid (numpy): defocus(φ) = ū + Δ cos 2(φ - angle), φ = atan2(ky, kx)."""
    ky, kx = _kgrid(shape, apix)
    k2 = ky**2 + kx**2
    phi = np.arctan2(ky, kx)
    df = (u + v) / 2 + (u - v) / 2 * np.cos(2 * (phi - np.deg2rad(angle)))
    lam = physics.electron_wavelength(voltage)
    gamma = np.pi * lam * df * k2 - np.pi / 2 * cs * 1e7 * lam**3 * k2**2 + np.arcsin(ac)
    return np.sin(gamma)


@pytest.mark.parametrize("method", ["torch_ctf", "phase"])
@pytest.mark.parametrize("u,v,angle", [(21000.0, 15000.0, 30.0), (15000.0, 21000.0, 120.0), (18000.0, 18000.0, 0.0)])
def test_ctf_matches_relion_convention(u, v, angle, method):
    shape, apix = (128, 96), 1.2
    sin_g, cos_g = physics.ctf_sin_cos(shape, apix, 300.0, 2.7, 0.1, u, v, angle, method=method)
    assert np.abs(sin_g.numpy() - _relion_ctf(shape, apix, u, v, angle)).max() < 2e-3
    assert np.allclose(sin_g**2 + cos_g**2, 1.0, atol=1e-5)


def test_fast_ctf_equals_torch_ctf():
    args = ((512, 384), 0.83, 300.0, 2.7, 0.07, 16000.0, 13500.0, 63.0, 20.0)
    a = physics.ctf_sin_cos(*args, method="phase")
    b = physics.ctf_sin_cos(*args, method="torch_ctf")
    for x, y in zip(a, b, strict=True):
        assert (x - y).abs().max() < 5e-4


def test_ctf_zero_formula():
    zeros = physics.ctf_zeros(6, 300.0, 2.7, 0.07, 15000.0)
    assert np.allclose(physics.ctf_1d(zeros, 300.0, 2.7, 0.07, 15000.0), 0.0, atol=1e-9)
    assert np.all(np.diff(zeros) > 0)


# --- Thon rings -----------------------------------------------------------------------------
def test_thon_ring_zeros_where_the_formula_puts_them():
    defocus = 15000.0
    m = simulate_micrograph(_ice_spec(shape=(1024, 1024), dose=2000.0, defocus_u=defocus, defocus_v=defocus), [])
    k, p = _radial(m.image, 1.0, 512)
    zeros = physics.ctf_zeros(10, 300.0, 2.7, 0.07, defocus)[2:]
    for j, k0 in enumerate(zeros, start=3):
        spacing = k0 / (2 * j)  # γ grows ~k²: rings get closer as k/(2j)
        found = _minimum_near(k, p, k0, 0.35 * spacing)
        assert abs(found - k0) / k0 < 0.01, (j, found, k0)


def test_astigmatic_rings_follow_defocus_u_along_its_angle():
    u, v, angle = 20000.0, 12000.0, 30.0
    m = simulate_micrograph(
        _ice_spec(shape=(1024, 1024), dose=2000.0, defocus_u=u, defocus_v=v, defocus_angle=angle), []
    )
    ky, kx = _kgrid(m.image.shape, 1.0)
    phi = np.degrees(np.arctan2(ky, kx))
    for df, direction in ((u, angle), (v, angle + 90.0)):
        dphi = (phi - direction + 90.0) % 180.0 - 90.0  # both halves of the sector (Friedel)
        k, p = _radial(m.image, 1.0, 400, mask=np.abs(dphi) < 6.0)
        for j, k0 in enumerate(physics.ctf_zeros(6, 300.0, 2.7, 0.07, df)[2:], start=3):
            found = _minimum_near(k, p, k0, 0.3 * k0 / (2 * j))
            assert abs(found - k0) / k0 < 0.015, (df, j, found, k0)


# --- dose and counts --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["poisson", "auto"])
def test_empty_hole_counts_are_poisson_at_the_dose(mode):
    spec = _ice_spec(defect="empty", dose=30.0, pixel_size=1.3, shot_noise=mode)
    m = simulate_micrograph(spec, [])
    expected = 30.0 * 1.3**2
    assert m.truth["reason"] == "empty" and m.truth["label"] == "bad"
    assert abs(m.image.mean() / expected - 1) < 0.01
    assert abs(m.image.var() / m.image.mean() - 1) < 0.03
    assert np.all(m.image == np.round(m.image))  # integer counts
    assert m.truth["masks"]["vacuum"].all()


def test_mean_counts_follow_dose_times_transmission():
    for t in (20.0, 80.0):
        spec = _ice_spec(ice_thickness=t, ice_contrast=0.0, dose=50.0, shot_noise="poisson")
        m = simulate_micrograph(spec, [])
        expected = 50.0 * math.exp(-t / physics.inelastic_mean_free_path(300.0))
        assert m.truth["mean_counts"] == pytest.approx(expected)
        assert abs(m.image.mean() / expected - 1) < 0.01
        assert abs(m.image.var() / m.image.mean() - 1) < 0.05  # only the 3% thickness ripple adds


def test_shot_noise_auto_matches_poisson_moments():
    lam = torch.cat([torch.full((200_000,), 3.0), torch.full((200_000,), 60.0)])
    out = shot_noise(lam, torch.Generator().manual_seed(0), "auto")
    for sl, v in ((slice(0, 200_000), 3.0), (slice(200_000, None), 60.0)):
        assert abs(float(out[sl].mean()) / v - 1) < 0.01
        assert abs(float(out[sl].var()) / v - 1) < 0.02


def test_inelastic_mean_free_path_scales_with_voltage():
    assert physics.inelastic_mean_free_path(300.0) == pytest.approx(350.0)
    assert 250 < physics.inelastic_mean_free_path(200.0) < 300
    assert physics.interaction_constant(300.0) == pytest.approx(6.526e-4, rel=2e-3)
    assert physics.electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-4)


# --- particles -------------------------------------------------------------------------------
def _template_peak(image, species, rotation, x, y, defocus, spec, search=6):
    """Cross-correlate the micrograph with the CTF-filtered projection; peak (x, y) near the truth."""
    proj = species.project(torch.as_tensor(rotation)[None].float())[0].numpy()
    d = proj.shape[0]
    h, w = image.shape
    frame = np.zeros((h, w))
    frame[:d, :d] = proj
    frame = np.roll(frame, (-(d // 2), -(d // 2)), axis=(0, 1))  # centre at the origin
    ctf = physics.ctf_transfer(
        (h, w), spec.pixel_size, spec.voltage, spec.cs, spec.amplitude_contrast, defocus, defocus, 0.0
    )
    tmpl_hat = -np.fft.rfft2(frame) * ctf.imag.numpy()
    corr = np.fft.irfft2(np.fft.rfft2(image - image.mean()) * np.conj(tmpl_hat), s=(h, w))
    iy, ix = int(round(y)), int(round(x))
    win = corr[iy - search : iy + search + 1, ix - search : ix + search + 1]
    py, px = np.unravel_index(np.argmax(win), win.shape)
    # parabolic refinement
    fy = 0.5 * (win[py - 1, px] - win[py + 1, px]) / (win[py - 1, px] - 2 * win[py, px] + win[py + 1, px])
    fx = 0.5 * (win[py, px - 1] - win[py, px + 1]) / (win[py, px - 1] - 2 * win[py, px] + win[py, px + 1])
    return ix - search + px + fx, iy - search + py + fy


def test_particles_are_where_the_truth_says(blobs2):
    spec = MicrographSpec(
        shape=(384, 384),
        pixel_size=2.0,
        n_particles=8,
        dose=60.0,
        ice_thickness=25.0,
        defocus_u=12000.0,
        defocus_v=12000.0,
        seed=4,
    )
    m = simulate_micrograph(spec, blobs2)
    parts = m.particles
    assert list(parts.columns) == list(PARTICLE_COLUMNS)
    assert len(parts) >= 5 and not parts["is_junk"].any()
    by_name = {s.name: s for s in blobs2}
    for i, row in parts.iterrows():
        x, y = _template_peak(m.image, by_name[row.species], m.rotations[i], row.x, row.y, row.defocus_u, spec)
        assert math.hypot(x - row.x, y - row.y) < 1.0, (i, x, y, row.x, row.y)


def test_particle_heights_and_defocus(blobs2):
    spec = MicrographSpec(
        shape=(256, 256),
        pixel_size=2.0,
        n_particles=12,
        ice_thickness=50.0,
        defocus_u=14000.0,
        defocus_v=13000.0,
        seed=2,
    )
    m = simulate_micrograph(spec, blobs2)
    p = m.particles
    assert np.allclose(p.defocus_u, 14000.0 + p.z) and np.allclose(p.defocus_v, 13000.0 + p.z)
    assert np.all(np.abs(p.z) + p.diameter / 2 <= 250.0 + 1e-6)
    assert p.z.std() > 10  # heights are spread through the ice
    # no overlaps by default: centres at least (d_i + d_j) / 2 apart
    xy = p[["x", "y"]].to_numpy() * 2.0
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(p)) * 1e9
    assert np.all(dist >= (p.diameter.to_numpy()[:, None] + p.diameter.to_numpy()[None]) / 2 - 1e-6)


def test_height_offset_equals_a_defocus_change(blobs2):
    """A particle at height z renders as the same particle at the mid-plane with defocus + z."""
    s = blobs2[0]
    base = dict(shape=(192, 192), pixel_size=2.0, n_particles=1, noise=False, b_factor=0.0, thickness_variation=0.0)
    spec = MicrographSpec(**base, ice_thickness=0.0, defocus_u=10000.0, defocus_v=10000.0)
    # in ice 150 nm thick (no ice contrast), a seed where the particle sits far from the mid-plane
    for seed in range(50):
        spec_z = spec.replace(ice_thickness=150.0, ice_contrast=0.0, seed=seed)
        mz = simulate_micrograph(spec_z, [s])
        z = float(mz.particles.z.iloc[0])
        if abs(z) > 200:
            break
    m0 = simulate_micrograph(spec.replace(seed=seed), [s])  # no ice: at the mid-plane, same place
    assert m0.particles.z.iloc[0] == 0.0 and m0.particles.x.iloc[0] == mz.particles.x.iloc[0]
    ref = simulate_micrograph(spec.replace(seed=seed, defocus_u=10000.0 + z, defocus_v=10000.0 + z), [s])
    # compare the contrast above 1/300 Å⁻¹ (the ice's slow thickness ripple removed)
    keep = np.hypot(*_kgrid((192, 192), 2.0)) > 1 / 300

    def contrast(img):
        return np.fft.irfft2(np.fft.rfft2(img / img.mean()) * keep, s=img.shape)

    a, b = contrast(mz.image), contrast(ref.image)
    err = np.abs(a - b).max()
    assert err < 0.03 * np.abs(b).max()
    # much closer than the same particle rendered at the mid-plane
    assert err < 0.25 * np.abs(contrast(m0.image) - b).max()


def test_structures_species_end_to_end():
    structures = pytest.importorskip("cryoflow.simulate.structures")
    sp = structures.procedural_species(80.0, 2.5, seed=0)
    spec = MicrographSpec(shape=(256, 256), pixel_size=2.5, n_particles=10, junk_fraction=0.4, dose=50.0, seed=5)
    m = simulate_micrograph(spec, [sp])
    assert m.image.shape == (256, 256) and m.image.dtype == np.float32
    p = m.particles
    assert set(p.junk_kind[p.is_junk]) <= {"broken", "ice_chip", "contaminant", "aggregate"}
    assert (p.species[~p.is_junk] == sp.name).all()
    # in ice, a particle is seen against the displaced water: darker (underfocus) at low resolution
    lowpass = np.fft.irfft2(np.fft.rfft2(m.image) * (np.hypot(*_kgrid(m.image.shape, 2.5)) < 1 / 40), s=m.image.shape)
    good = p[~p.is_junk]
    vals = lowpass[good.y.round().astype(int), good.x.round().astype(int)]
    assert np.mean(vals < np.median(lowpass)) > 0.7


def test_junk_kinds_are_labelled(blobs2):
    spec = MicrographSpec(shape=(384, 384), pixel_size=2.0, n_particles=24, junk_fraction=0.5, seed=6)
    m = simulate_micrograph(spec, blobs2)
    p = m.particles
    junk = p[p.is_junk]
    assert set(junk.junk_kind) == {"broken", "ice_chip", "contaminant", "aggregate"}
    assert (p.junk_kind[~p.is_junk] == "").all()
    assert (junk.n_members[junk.junk_kind == "aggregate"] >= 2).all()
    assert junk.species[junk.junk_kind.isin(["ice_chip", "contaminant"])].eq("").all()
    assert junk.rot[junk.junk_kind.isin(["ice_chip", "contaminant", "aggregate"])].isna().all()
    assert p.rot[~p.is_junk].notna().all()
    assert m.truth["n_junk"] == len(junk)


def test_deterministic_and_streams_independent(blobs2):
    spec = MicrographSpec(shape=(128, 128), pixel_size=2.0, n_particles=5, seed=11)
    a, b = simulate_micrograph(spec, blobs2), simulate_micrograph(spec, blobs2)
    assert np.array_equal(a.image, b.image) and a.particles.equals(b.particles)
    c = simulate_micrograph(spec.replace(dose=80.0), blobs2)  # the particles do not move with the dose
    assert np.allclose(a.particles[["x", "y", "z"]], c.particles[["x", "y", "z"]])
    d = simulate_micrograph(spec.replace(seed=12), blobs2)
    assert not np.array_equal(a.image, d.image)


# --- defects ---------------------------------------------------------------------------------
@pytest.mark.parametrize("defect", DEFECTS)
def test_every_defect_is_labelled(defect, blobs2):
    spec = MicrographSpec(shape=(192, 192), pixel_size=2.0, n_particles=8, seed=7, defect=defect)
    m = simulate_micrograph(spec, blobs2)
    assert m.truth["reason"] == defect and m.truth["label"] == "bad"
    assert np.isfinite(m.image).all() and (m.image >= 0).all()


def test_good_is_good_and_derived_reasons(blobs2):
    spec = MicrographSpec(shape=(128, 128), pixel_size=2.0, n_particles=4, seed=7)
    assert simulate_micrograph(spec, blobs2).truth["label"] == "good"
    assert simulate_micrograph(spec.replace(n_particles=0), blobs2).truth["reason"] == "no_particles"
    assert simulate_micrograph(spec.replace(ice_thickness=THICK_ICE_NM + 20), blobs2).truth["reason"] == "thick_ice"
    assert (
        simulate_micrograph(spec.replace(defocus_u=20000.0, defocus_v=14000.0), blobs2).truth["reason"] == "astigmatism"
    )


def test_crystalline_ice_has_power_at_3_67_A():
    amorph = simulate_micrograph(_ice_spec(dose=100.0), [])
    cryst = simulate_micrograph(_ice_spec(dose=100.0, defect="crystalline_ice"), [])

    def ring_power(img, d):
        k, p = _radial(img, 1.0, 256)
        ring = np.abs(k - 1 / d) < 0.004
        return p[ring].mean() / np.median(p[(k > 0.3) & (k < 0.45)])

    assert ring_power(cryst.image, 3.67) > 3 * ring_power(amorph.image, 3.67)
    assert ring_power(cryst.image, 3.90) > 3 * ring_power(amorph.image, 3.90)
    assert ring_power(cryst.image, 4.5) < 1.5 * ring_power(amorph.image, 4.5)  # only at the reflections


def test_amorphous_ice_ring_near_3_7_A():
    m = simulate_micrograph(_ice_spec(dose=1000.0, b_factor=0.0, ice_thickness=60.0), [])
    k, p = _radial(m.image, 1.0, 200)
    band = (k > 0.2) & (k < 0.4)
    assert 3.4 < 1 / k[band][np.argmax(p[band])] < 4.0


def test_drift_damps_rings_along_its_direction():
    angle = 35.0
    m = simulate_micrograph(_ice_spec(defect="drift", defect_params={"length_A": 20.0, "angle_deg": angle}), [])
    assert m.truth["defect_details"]["angle_deg"] == angle
    assert m.truth["defect_details"]["length_A"] == 20.0
    ref = simulate_micrograph(_ice_spec(), [])
    ky, kx = _kgrid(m.image.shape, 1.0)
    k = np.hypot(ky, kx)
    phi = np.degrees(np.arctan2(ky, kx))
    band = (k > 0.06) & (k < 0.2)

    def power(img, direction):
        dphi = (phi - direction + 90.0) % 180.0 - 90.0
        sel = band & (np.abs(dphi) < 15)
        return _psd2(img)[sel].mean()

    along, across = power(m.image, angle), power(m.image, angle + 90)
    assert along < 0.6 * across
    ref_along, ref_across = power(ref.image, angle), power(ref.image, angle + 90)
    assert 0.8 < ref_along / ref_across < 1.25  # isotropic without drift


def test_thick_ice_fewer_counts_and_weaker_rings():
    thin = simulate_micrograph(_ice_spec(ice_thickness=30.0, dose=200.0, b_factor=0.0), [])
    thick = simulate_micrograph(_ice_spec(defect="thick_ice", dose=200.0, b_factor=0.0), [])
    t = thick.truth["ice_thickness"]
    assert t > THICK_ICE_NM and thick.truth["reason"] == "thick_ice"
    assert thick.image.mean() / thin.image.mean() == pytest.approx(
        math.exp(-(t - 30.0) / physics.inelastic_mean_free_path(300.0)), rel=0.02
    )
    band = (0.2, 0.33)
    a_thin = _ring_amplitude(thin.image, 1.0, 15000.0, band)
    a_thick = _ring_amplitude(thick.image, 1.0, 15000.0, band)
    assert a_thin > 0.1 and a_thick < 0.5 * a_thin


def test_empty_has_no_rings_ice_has():
    empty = simulate_micrograph(_ice_spec(defect="empty"), [])
    ice = simulate_micrograph(_ice_spec(), [])
    a_empty = _ring_amplitude(empty.image, 1.0, 15000.0, (0.05, 0.25))
    a_ice = _ring_amplitude(ice.image, 1.0, 15000.0, (0.05, 0.25))
    assert abs(a_empty) < 0.05 and a_ice > 0.3
    assert empty.image.mean() > ice.image.mean() * 1.05  # vacuum: no inelastic loss


def test_contamination_dark_blobs(blobs2):
    spec = MicrographSpec(shape=(384, 384), pixel_size=2.0, n_particles=6, dose=40.0, seed=8)
    good = simulate_micrograph(spec, blobs2)
    bad = simulate_micrograph(spec.replace(defect="contamination"), blobs2)
    mask = bad.truth["masks"]["contamination"]
    det = bad.truth["defect_details"]
    assert len(det["centres_yx"]) == len(det["radii_px"]) >= 2 and mask.mean() > 0.02

    def dark(img):
        smooth = np.fft.irfft2(np.fft.rfft2(img) * (np.hypot(*_kgrid(img.shape, 2.0)) < 1 / 60), s=img.shape)
        return smooth < 0.7 * np.median(smooth)

    assert dark(good.image).mean() < 0.005
    d = dark(bad.image)
    assert d.mean() > 0.01 and mask[d].mean() > 0.9  # the dark pixels are the balls


def test_carbon_side_has_stronger_rings_and_particles_at_the_edge(blobs2):
    spec = MicrographSpec(
        shape=(512, 512),
        pixel_size=2.0,
        n_particles=30,
        dose=60.0,
        seed=9,
        defect="carbon",
        defect_params={"coverage": 0.4},
    )
    m = simulate_micrograph(spec, blobs2)
    carbon = m.truth["masks"]["carbon"]
    assert 0.3 < carbon.mean() < 0.5
    # power in Thon-ring band per region, from 64 px tiles fully inside one region
    tiles = {True: [], False: []}
    for i in range(0, 512, 64):
        for j in range(0, 512, 64):
            block = carbon[i : i + 64, j : j + 64]
            if block.all() or not block.any():
                img = m.image[i : i + 64, j : j + 64]
                p = _psd2(img / img.mean())
                k = np.hypot(*_kgrid(img.shape, 2.0))
                tiles[bool(block.all())].append(p[(k > 0.03) & (k < 0.2)].mean())
    assert np.mean(tiles[True]) > 2 * np.mean(tiles[False])
    # crowding along the edge: particles per area within one large diameter of the edge vs
    # the rest of the hole
    det = m.truth["defect_details"]
    cy, cx = det["hole_centre_yx"]
    p = m.particles
    band = 60.0  # px, the large species' diameter
    inside = det["hole_radius_px"] - np.hypot(p.y - cy, p.x - cx)
    yy, xx = np.mgrid[0:512, 0:512]
    area = det["hole_radius_px"] - np.hypot(yy - cy, xx - cx)
    in_band = ((inside > 0) & (inside < band)).sum() / ((area > 0) & (area < band)).sum()
    beyond = (inside >= band).sum() / (area >= band).sum()
    assert in_band > 2 * beyond
    assert (inside < 0).mean() < 0.15  # few on the carbon


def test_crack_is_a_bright_gap():
    m = simulate_micrograph(_ice_spec(defect="crack", dose=40.0, ice_thickness=60.0), [])
    crack = m.truth["masks"]["crack"]
    assert 0.001 < crack.mean() < 0.3
    assert m.image[crack].mean() > 1.1 * m.image[~crack].mean()


def test_aggregation_and_crowding(blobs2):
    spec = MicrographSpec(shape=(384, 384), pixel_size=2.0, n_particles=20, seed=10)
    agg = simulate_micrograph(spec.replace(defect="aggregation"), blobs2).particles
    members = agg.n_members.to_numpy()
    assert members[agg.junk_kind == "aggregate"].min() >= 3
    assert members[agg.junk_kind == "aggregate"].sum() > 0.6 * members.sum()
    crowd = simulate_micrograph(spec.replace(defect="crowding"), blobs2).particles
    assert len(crowd) > 2 * spec.n_particles
    xy = crowd[["x", "y"]].to_numpy() * 2.0
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(crowd)) * 1e9
    overlap = dist < (crowd.diameter.to_numpy()[:, None] + crowd.diameter.to_numpy()[None]) / 2
    assert overlap.any(axis=1).mean() > 0.5


def test_extreme_astigmatism(blobs2):
    spec = MicrographSpec(shape=(128, 128), pixel_size=2.0, n_particles=3, seed=10, defect="astigmatism")
    t = simulate_micrograph(spec, blobs2).truth
    assert abs(t["defocus_u"] - t["defocus_v"]) >= 3000.0
    assert (t["defocus_u"] + t["defocus_v"]) / 2 == pytest.approx(15000.0)


def test_counting_detector_mtf_damps_high_frequencies():
    ideal = simulate_micrograph(_ice_spec(noise=False), [])
    counting = simulate_micrograph(_ice_spec(noise=False, detector="falcon4"), [])
    k, p_i = _radial(ideal.image, 1.0, 64)
    _, p_c = _radial(counting.image, 1.0, 64)
    ratio = p_c / p_i
    assert ratio[:4].mean() > 0.9 and ratio[-4:].mean() < 0.45


# --- inputs ------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(blobs2):
    with pytest.raises(CryoflowError, match="pixel size"):
        simulate_micrograph(MicrographSpec(pixel_size=1.0), blobs2)
    with pytest.raises(CryoflowError, match="unknown defect"):
        simulate_micrograph(MicrographSpec(defect="dirty"), [])
    with pytest.raises(CryoflowError, match="detector"):
        simulate_micrograph(MicrographSpec(detector="film"), [])
    with pytest.raises(CryoflowError, match="species weights"):
        simulate_micrograph(MicrographSpec(pixel_size=2.0, species_weights=(1.0,)), blobs2)
