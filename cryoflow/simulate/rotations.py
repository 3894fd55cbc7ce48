"""Rotations: RELION Euler angles, the matrices :meth:`Species.project` takes, uniform sampling.

Convention (the one used everywhere in :mod:`cryoflow.simulate`)
----------------------------------------------------------------
RELION's ``Euler_angles2matrix(rot, tilt, psi)`` (ZYZ, degrees) builds the matrix ``A``
that maps a point ``p`` of the reference volume (Å, ``(x, y, z)`` column vector about
the volume centre) to the particle image frame: ``p_image = A @ p``; the image is the
projection along the image z axis, so the point lands at image position
``(A @ p)[:2]`` = ``(x, y)``. With active rotations ``Rz``, ``Ry`` (counter-clockwise
for positive angles)::

    A = Rz(-psi) @ Ry(-tilt) @ Rz(-rot)

The *rotation matrices* used by :func:`euler_to_matrix`, :func:`random_rotations` and
:meth:`cryoflow.simulate.structures.Species.project` are ``R = A.T``
``= Rz(rot) @ Ry(tilt) @ Rz(psi)``: ``R`` maps image-frame coordinates into the volume,
``image(x, y) = ∫ V(R @ (x, y, z)) dz``. That is the torch-fourier-slice convention
(``project_3d_to_2d(volume, R)``, matrices that left-multiply xyz column vectors), and
the same as ``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi],
degrees=True).as_matrix()``. The viewing direction (the volume direction projected
along) is ``R[:, 2] = (cos rot sin tilt, sin rot sin tilt, cos tilt)``.

Angle ranges returned: rot and psi in (-180, 180], tilt in [0, 180].
"""

from __future__ import annotations

import torch


def _rz(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(*angle.shape, 3, 3)


def _ry(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).reshape(*angle.shape, 3, 3)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles -> rotation matrices for :meth:`Species.project`.

    Parameters
    ----------
    angles:
        ``(..., 3)`` (rot, tilt, psi) in degrees, RELION ZYZ convention.

    Returns
    -------
    ``(..., 3, 3)`` matrices ``R = Rz(rot) Ry(tilt) Rz(psi)``, the transpose of RELION's
    ``Euler_angles2matrix`` (see the module docstring). Same dtype and device as ``angles``.
    """
    rad = torch.deg2rad(angles)
    return _rz(rad[..., 0]) @ _ry(rad[..., 1]) @ _rz(rad[..., 2])


def relion_matrix(angles: torch.Tensor) -> torch.Tensor:
    """RELION's ``Euler_angles2matrix``: ``(..., 3)`` degrees -> ``(..., 3, 3)`` ``A``
    (volume -> image frame); ``A = euler_to_matrix(angles).transpose(-1, -2)``."""
    return euler_to_matrix(angles).transpose(-1, -2)


def matrix_to_euler(rotations: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (the :func:`euler_to_matrix` kind) -> RELION (rot, tilt, psi).

    Parameters
    ----------
    rotations:
        ``(..., 3, 3)`` proper rotation matrices ``R``.

    Returns
    -------
    ``(..., 3)`` degrees: rot, psi in (-180, 180], tilt in [0, 180]. At tilt 0 or 180
    (gimbal lock) rot is set to 0 and psi carries the in-plane angle, as RELION does.
    """
    r = rotations.to(torch.float64)
    cos_tilt = r[..., 2, 2].clamp(-1.0, 1.0)
    tilt = torch.arccos(cos_tilt)
    sin_tilt = torch.sqrt(r[..., 0, 2] ** 2 + r[..., 1, 2] ** 2)
    rot = torch.atan2(r[..., 1, 2], r[..., 0, 2])
    psi = torch.atan2(r[..., 2, 1], -r[..., 2, 0])
    locked = sin_tilt < 1e-6
    # tilt 0: R = Rz(rot + psi); tilt 180: R = Rz(rot) Ry(180) Rz(psi) = Ry(180) Rz(psi - rot)
    in_plane = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    psi_locked = torch.where(cos_tilt > 0, in_plane, torch.atan2(r[..., 1, 0], -r[..., 0, 0]))
    rot = torch.where(locked, torch.zeros_like(rot), rot)
    psi = torch.where(locked, psi_locked, psi)
    angles = torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))
    angles = torch.where(angles <= -180.0, angles + 360.0, angles)
    return angles.to(rotations.dtype)


def random_rotations(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rotations drawn uniformly from SO(3) (Haar measure).

    rot and psi are uniform in (-180, 180], cos(tilt) is uniform in [-1, 1].

    Parameters
    ----------
    n:
        Number of rotations.
    generator:
        Seeded ``torch.Generator``; results are on its device.

    Returns
    -------
    rotations:
        ``(n, 3, 3)`` float32 matrices for :meth:`Species.project` (``R = A.T``, see the
        module docstring).
    angles:
        ``(n, 3)`` float32 RELION (rot, tilt, psi) in degrees: ``rlnAngleRot``,
        ``rlnAngleTilt``, ``rlnAnglePsi``; ``euler_to_matrix(angles)`` gives ``rotations``.
    """
    device = generator.device
    u = torch.rand((n, 3), generator=generator, device=device, dtype=torch.float64)
    rot = 180.0 - 360.0 * u[:, 0]  # (-180, 180]
    tilt = torch.rad2deg(torch.arccos(1.0 - 2.0 * u[:, 1]))
    psi = 180.0 - 360.0 * u[:, 2]
    angles = torch.stack([rot, tilt, psi], dim=-1)
    rotations = euler_to_matrix(angles)
    return rotations.to(torch.float32), angles.to(torch.float32)


def angle_between(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees) of ``r1.T @ r2``: ``(..., 3, 3)`` x2 -> ``(...)``."""
    rel = r1.transpose(-1, -2) @ r2
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


__all__ = ["angle_between", "euler_to_matrix", "matrix_to_euler", "random_rotations", "relion_matrix"]
