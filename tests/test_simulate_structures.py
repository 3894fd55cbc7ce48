"""Simulator structures: scattering physics, projection and rotation conventions, species sources."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from cryoflow.errors import CryoflowError
from cryoflow.io import write_mrc
from cryoflow.simulate.rotations import euler_to_matrix, matrix_to_euler, random_rotations, relion_matrix
from cryoflow.simulate.scattering import POTENTIAL_PER_SCATTERING, element_gaussians, rasterize_gaussians
from cryoflow.simulate.structures import (
    PROTEIN_MEAN_POTENTIAL,
    Species,
    particle_envelope,
    procedural_species,
    reference_species,
    species_from_map,
    species_from_pdb,
)

SIGMA_300KV = 0.00073  # rad / (V·Å), interaction constant at 300 kV


def _lowpass(images: torch.Tensor, cutoff: float = 0.35) -> torch.Tensor:
    """Keep spatial frequencies below ``cutoff`` cycles/pixel of ``(..., D, D)`` images."""
    d = images.shape[-1]
    ky, kx = torch.fft.fftfreq(d), torch.fft.rfftfreq(d)
    keep = (ky[:, None] ** 2 + kx[None] ** 2) <= cutoff**2
    return torch.fft.irfft2(torch.fft.rfft2(images) * keep, s=(d, d))


def _blob_species(centres_xyz_px: list[tuple[float, float, float]], box: int = 48, sigma: float = 1.5) -> Species:
    """Gaussian blobs (sigma in voxels) at offsets (x, y, z) voxels from the box centre; pixel size 1 Å."""
    pos = torch.tensor(centres_xyz_px, dtype=torch.float32)
    n = len(pos)
    a = torch.ones((n, 1))
    b = torch.full((n, 1), 8 * math.pi**2 * sigma**2)
    vol = rasterize_gaussians(pos, a, b, box, 1.0)
    return Species("blobs", vol, 1.0, diameter=0.0)


def _peak(image: torch.Tensor) -> tuple[int, int]:
    iy, ix = np.unravel_index(int(image.argmax()), tuple(image.shape))
    return int(iy), int(ix)


# ----------------------------------------------------------------------------- scattering


def test_scattering_factor_integral_is_conserved_at_any_pixel_size():
    a, b = element_gaussians(["C", "N", "O", "S", "ZN"])
    assert a.sum(1)[0] == pytest.approx(2.5088, abs=1e-3)  # carbon f(0), Peng 1996, Å
    pos = torch.tensor([[0.3, -1.2, 2.1], [5.0, 4.0, -3.0], [-6.2, 0.0, 1.0], [0.0, 7.0, 0.0], [2.0, 2.0, 2.0]])
    expected = POTENTIAL_PER_SCATTERING * a.sum()  # V·Å³
    for pixel_size in (0.7, 1.5, 3.0):
        vol = rasterize_gaussians(pos, torch.tensor(a), torch.tensor(b + 30.0), 48, pixel_size)
        assert float(vol.sum()) * pixel_size**3 == pytest.approx(expected, rel=2e-3)


def test_implicit_hydrogens_and_unknown_elements():
    a, _ = element_gaussians(["C", "O"], implicit_hydrogens=True)
    assert a.shape == (2, 10)
    assert a[0, 5:].sum() == pytest.approx(1.25 * 0.5288, abs=1e-3)  # 1.25 H on carbon
    with pytest.warns(UserWarning, match="Xx"):
        element_gaussians(["Xx"])


# ----------------------------------------------------------------------------- projection + rotations


def test_identity_projection_is_the_sum_along_z():
    rng = np.random.default_rng(0)
    sp = _blob_species([tuple(rng.uniform(-12, 12, 3)) for _ in range(12)])
    proj = sp.project(torch.eye(3)[None])[0]
    expected = sp.volume.sum(0) * sp.pixel_size
    assert proj.shape == (48, 48)
    err = (_lowpass(proj) - _lowpass(expected)).norm() / _lowpass(expected).norm()
    assert err < 0.03
    assert float(proj.sum()) == pytest.approx(float(expected.sum()), rel=1e-3)  # DC term exact


def test_rotation_convention_moves_an_off_centre_blob_where_relion_says():
    c = 24
    sp = _blob_species([(8.0, 0.0, 0.0)])  # blob at volume x = +8 voxels: index [z=c, y=c, x=c+8]
    assert _peak(sp.volume.sum(0)) == (c, c + 8)
    # image position = A @ p with A = RELION Euler_angles2matrix(rot, tilt, psi)
    cases = {
        (0.0, 0.0, 0.0): (c, c + 8),
        (90.0, 0.0, 0.0): (c - 8, c),  # A = Rz(-90): (8, 0, 0) -> (0, -8, 0)
        (0.0, 0.0, 90.0): (c - 8, c),
        (0.0, 90.0, 0.0): (c, c),  # A = Ry(-90): (8, 0, 0) -> (0, 0, 8), along the beam
        (180.0, 0.0, 0.0): (c, c - 8),
    }
    angles = torch.tensor(list(cases), dtype=torch.float32)
    images = sp.project(euler_to_matrix(angles))
    for image, (key, where) in zip(images, cases.items(), strict=True):
        assert _peak(image) == where, key
    # and through the matrix form: the blob lands at (A @ p)[:2]
    r, _ = random_rotations(5, torch.Generator().manual_seed(4))
    moved = (r.transpose(1, 2) @ torch.tensor([8.0, 0.0, 0.0]))[:, :2]  # R = A.T
    for image, xy in zip(sp.project(r), moved, strict=True):
        assert _peak(image) == (c + round(float(xy[1])), c + round(float(xy[0])))


def test_projection_agrees_with_torch_fourier_slice():
    from torch_fourier_slice import project_3d_to_2d

    sp = procedural_species(60, 2.0, seed=5)
    r, _ = random_rotations(8, torch.Generator().manual_seed(1))
    ours = _lowpass(sp.project(r))
    theirs = _lowpass(project_3d_to_2d(sp.volume, r) * sp.pixel_size)
    err = (ours - theirs).norm() / theirs.norm()
    assert err < 0.03


def test_euler_matrices_match_relion_and_scipy():
    from scipy.spatial.transform import Rotation

    angles = torch.tensor([[30.0, 50.0, -70.0], [-120.0, 10.0, 160.0]], dtype=torch.float64)
    r = euler_to_matrix(angles)
    scipy_r = Rotation.from_euler("ZYZ", angles.numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(r.numpy(), scipy_r, atol=1e-12)
    # RELION Euler_angles2matrix, third row = viewing direction (cos rot sin tilt, sin rot sin tilt, cos tilt)
    rot, tilt = math.radians(30.0), math.radians(50.0)
    view = [math.cos(rot) * math.sin(tilt), math.sin(rot) * math.sin(tilt), math.cos(tilt)]
    np.testing.assert_allclose(relion_matrix(angles)[0, 2].numpy(), view, atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(r).numpy(), angles.numpy(), atol=1e-9)


def test_random_rotations_are_uniform_seeded_and_consistent():
    n = 20000
    r, angles = random_rotations(n, torch.Generator().manual_seed(0))
    assert r.shape == (n, 3, 3) and angles.shape == (n, 3) and r.dtype == torch.float32
    r2, _ = random_rotations(n, torch.Generator().manual_seed(0))
    assert torch.equal(r, r2)
    eye = torch.eye(3).expand(n, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(n), atol=1e-5)
    assert float(r.mean(0).abs().max()) < 0.03  # Haar measure: E[R] = 0
    assert torch.allclose(euler_to_matrix(angles), r, atol=1e-5)
    # cos(tilt) uniform in [-1, 1]; rot and psi uniform
    hist = torch.histc(torch.cos(torch.deg2rad(angles[:, 1])), bins=10, min=-1, max=1)
    assert float((hist / (n / 10) - 1).abs().max()) < 0.1
    assert float(angles[:, 1].min()) >= 0 and float(angles[:, 1].max()) <= 180
    for col in (0, 2):
        hist = torch.histc(angles[:, col], bins=8, min=-180, max=180)
        assert float((hist / (n / 8) - 1).abs().max()) < 0.1


# ----------------------------------------------------------------------------- reference 7DDO


def test_reference_species_7ddo_physics():
    sp = reference_species(2.0)
    assert sp is reference_species(2.0)  # cached
    assert sp.name == "7DDO"
    assert sp.n_atoms == 6411 + 57  # ATOM + HETATM records (7 atoms in two half-occupied conformations)
    assert 85e3 < sp.mass < 100e3  # Da, hydrogens included
    assert 100 < sp.diameter < 130  # Å
    d = sp.box
    assert sp.volume.shape == (d, d, d) and sp.volume.dtype == torch.float32
    assert d * sp.pixel_size >= 2 * sp.radius
    # total potential = 47.878 V·Å² * sum of f(0) over atoms (+ implicit H)
    total = float(sp.volume.sum()) * sp.pixel_size**3
    assert total == pytest.approx(sp.mass * 9.6, rel=0.1)  # ~9.6 V·Å³ per Da of protein
    # mean inner potential of protein: several volts
    envelope = particle_envelope(sp.volume, sp.pixel_size)
    mip = float(sp.volume[envelope].mean())
    assert 4.0 < mip < 12.0
    assert PROTEIN_MEAN_POTENTIAL == pytest.approx(7.9, abs=0.3)
    # projected phase at the particle centre, 300 kV: of order 0.1-0.5 rad
    r, _ = random_rotations(50, torch.Generator().manual_seed(0))
    proj = sp.project(r)
    centre_phase = SIGMA_300KV * proj[:, d // 2 - 1 : d // 2 + 2, d // 2 - 1 : d // 2 + 2].mean((1, 2))
    assert 0.1 < float(centre_phase.mean()) < 0.5
    assert float(SIGMA_300KV * proj.amax((1, 2)).max()) < 1.0
    # projections conserve the integral (V·Å³ = sum over pixels of V·Å times pixel area)
    integrals = proj.sum((1, 2)) * sp.pixel_size**2
    assert torch.allclose(integrals, torch.full_like(integrals, total), rtol=1e-3)


def test_species_from_pdb_centres_and_sizes(tmp_path):
    path = tmp_path / "two.pdb"
    path.write_text(
        "ATOM      1  CA  GLY A   1      10.000  20.000  30.000  1.00  0.00           C\n"
        "ATOM      2  CA  GLY A   2      10.000  20.000  60.000  1.00  0.00           C\n"
        "END\n"
    )
    sp = species_from_pdb(path, 1.0, b_factor=20.0)
    assert sp.n_atoms == 2 and sp.diameter == pytest.approx(30.0)
    assert sp.radius == pytest.approx(15.0)
    c = sp.box // 2
    # the two atoms sit at z = c -/+ 15 on the centre line, indexed [z, y, x]
    line = sp.volume[:, c, c]
    assert int(line[:c].argmax()) == c - 15 and int(line[c:].argmax()) + c == c + 15


# ----------------------------------------------------------------------------- procedural


@pytest.mark.parametrize(("diameter", "pixel_size"), [(60, 2.0), (150, 3.0), (300, 5.0)])
def test_procedural_globular_diameter(diameter, pixel_size):
    sp = procedural_species(diameter, pixel_size, seed=1)
    assert abs(sp.diameter - diameter) <= 0.15 * diameter
    assert sp.box * pixel_size >= 2 * sp.radius
    # protein-like: mass for its size and a protein mean potential
    total = float(sp.volume.sum()) * pixel_size**3
    assert total == pytest.approx(sp.mass * 9.6, rel=0.1)
    density = sp.mass / (math.pi / 6 * diameter**3)  # Da per Å³ of the enclosing sphere
    assert 0.15 < density < 0.81


@pytest.mark.parametrize("shape", ["elongated", "ring", "multimer"])
def test_procedural_shapes(shape):
    sp = procedural_species(150, 3.0, seed=2, shape=shape)
    assert abs(sp.diameter - 150) <= 0.15 * 150
    assert sp.name == f"{shape}_150A_seed2"
    if shape == "ring":  # a hole in the middle: little potential along the symmetry axis (z)
        c = sp.box // 2
        top = sp.project(torch.eye(3)[None])[0]
        assert float(top[c, c]) < 0.2 * float(top.max())


def test_procedural_is_seeded():
    a = procedural_species(80, 2.5, seed=7)
    b = procedural_species(80, 2.5, seed=7)
    c = procedural_species(80, 2.5, seed=8)
    assert torch.equal(a.volume, b.volume)
    assert a.volume.shape != c.volume.shape or not torch.equal(a.volume, c.volume)


def test_procedural_bad_parameters():
    with pytest.raises(CryoflowError, match="shape"):
        procedural_species(100, 2.0, seed=0, shape="cube")
    with pytest.raises(CryoflowError, match="diameter"):
        procedural_species(5000, 2.0, seed=0)
    with pytest.raises(CryoflowError, match="pixel size"):
        procedural_species(100, 0.0, seed=0)


# ----------------------------------------------------------------------------- maps


def test_species_from_map_round_trip(tmp_path):
    ref = reference_species(2.0)
    path = write_mrc(tmp_path / "7ddo.mrc", ref.volume.numpy(), pixel_size=2.0)
    sp = species_from_map(path)
    assert sp.pixel_size == 2.0 and sp.name == "7ddo"
    assert sp.diameter == pytest.approx(ref.diameter, rel=0.05)
    assert sp.mass == pytest.approx(ref.mass, rel=0.15)
    n = min(sp.box, ref.box)
    a, b = (v[(slice((v.shape[0] - n) // 2, (v.shape[0] - n) // 2 + n),) * 3] for v in (sp.volume, ref.volume))
    corr = float(torch.corrcoef(torch.stack([a.ravel(), b.ravel()]))[0, 1])
    assert corr > 0.99
    assert float((a * b).sum() / (b * b).sum()) == pytest.approx(1.0, abs=0.15)  # protein-like scale back
    # resampled to another pixel size, the integrated potential is unchanged
    coarse = species_from_map(path, pixel_size=3.0, box=48)
    assert coarse.volume.shape == (48, 48, 48)
    assert float(coarse.volume.sum()) * 27.0 == pytest.approx(float(sp.volume.sum()) * 8.0, rel=0.03)
    # a map of arbitrary scale and offset (an EM reconstruction) comes out on the protein scale
    write_mrc(tmp_path / "scaled.mrc", ref.volume.numpy() * 0.01 + 3.0, pixel_size=2.0)
    scaled = species_from_map(tmp_path / "scaled.mrc")
    assert float(scaled.volume.sum()) == pytest.approx(float(sp.volume.sum()), rel=0.02)


# ----------------------------------------------------------------------------- bad input


def test_bad_structure_files_name_the_file(tmp_path):
    with pytest.raises(CryoflowError, match="missing.pdb: file not found"):
        species_from_pdb(tmp_path / "missing.pdb", 1.5)
    text = tmp_path / "notes.pdb"
    text.write_text("this is not a structure\n")
    with pytest.raises(CryoflowError, match="notes.pdb"):
        species_from_pdb(text, 1.5)
    binary = tmp_path / "junk.cif"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CryoflowError, match="junk.cif"):
        species_from_pdb(binary, 1.5)
    with pytest.raises(CryoflowError, match="B-factor"):
        species_from_pdb(text, 1.5, b_factor=-5)


def test_bad_map_files_name_the_file(tmp_path):
    with pytest.raises(CryoflowError, match="nomap.mrc"):
        species_from_map(tmp_path / "nomap.mrc")
    flat = write_mrc(tmp_path / "image.mrc", np.ones((32, 32), np.float32), pixel_size=1.0)
    with pytest.raises(CryoflowError, match="image.mrc.*3D map"):
        species_from_map(flat)
    empty = write_mrc(tmp_path / "empty.mrc", np.zeros((16, 16, 16), np.float32), pixel_size=1.0)
    with pytest.raises(CryoflowError, match="empty.mrc"):
        species_from_map(empty)
    nopix = tmp_path / "nopix.mrc"
    with mrcfile.new(nopix) as mrc:
        mrc.set_data(np.zeros((16, 16, 16), np.float32))
    with pytest.raises(CryoflowError, match="pixel size"):
        species_from_map(nopix)
    pdb = tmp_path / "model.pdb"
    pdb.write_text("ATOM      1  CA  GLY A   1      10.000  20.000  30.000  1.00  0.00           C\n")
    with pytest.raises(CryoflowError, match="model.pdb"):
        species_from_map(pdb)
