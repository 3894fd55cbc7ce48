"""Electron optics shared by the simulator and the CTF step: the CTF in RELION conventions.

Conventions (RELION's): defocus U and V in Å, positive is underfocus, U >= V by
convention but not required; the defocus angle (degrees) is measured from the image x axis
(array columns) to the direction of defocus U; spatial frequencies ``(ky, kx)`` in Å⁻¹
with ky along array rows. The defocus along a frequency direction φ = atan2(ky, kx) is
``(U + V)/2 + (U - V)/2 · cos(2 (φ - angle))``. The CTF is ``-sin(χ)`` with χ the total
phase of torch-ctf (defocus, Cs, amplitude contrast, phase shift): positive at low
frequency for underfocus, as in RELION and torch-ctf. A micrograph, where particles are
dark, is ``-CTF ⊗ projection``; RELION inverts the contrast at extraction so that particles
are white and images are ``CTF ⊗ projection``.
"""

from __future__ import annotations

import math

import torch
from torch_ctf import calculate_relativistic_electron_wavelength, calculate_total_phase_shift


def wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    return float(calculate_relativistic_electron_wavelength(voltage_kv * 1e3)) * 1e10


def astigmatic_defocus(
    ky: torch.Tensor, kx: torch.Tensor, defocus_u: torch.Tensor, defocus_v: torch.Tensor, angle_deg
) -> torch.Tensor:
    """Defocus (Å) seen along each frequency direction, RELION convention.

    ``ky, kx``: frequencies (any shape ``S``); ``defocus_u/v`` (Å) and ``angle_deg`` broadcast
    against them (give them shape ``(P, 1, ...)`` to evaluate ``P`` parameter sets at once).
    Uses ``k² cos 2(φ - a) = (kx² - ky²) cos 2a + 2 kx ky sin 2a`` (no atan2).
    """
    a = torch.deg2rad(torch.as_tensor(angle_deg, dtype=ky.dtype, device=ky.device))
    k2 = (ky * ky + kx * kx).clamp_min(1e-30)
    cos2 = ((kx * kx - ky * ky) * torch.cos(2 * a) + 2 * kx * ky * torch.sin(2 * a)) / k2
    return (defocus_u + defocus_v) / 2 + (defocus_u - defocus_v) / 2 * cos2


def ctf_phase(
    ky: torch.Tensor,
    kx: torch.Tensor,
    defocus_u,
    defocus_v,
    defocus_angle,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    phase_shift: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Total CTF phase χ (radians) at frequencies ``(ky, kx)`` in Å⁻¹; CTF = -sin(χ).

    Units: defocus Å (RELION convention, see module doc), angle and phase shift degrees,
    voltage kV, ``cs`` mm, amplitude contrast a fraction. Broadcasts like
    :func:`astigmatic_defocus`.
    """
    k2 = ky * ky + kx * kx
    defocus = astigmatic_defocus(ky, kx, torch.as_tensor(defocus_u), torch.as_tensor(defocus_v), defocus_angle)
    as_t = lambda v: torch.as_tensor(v, dtype=ky.dtype, device=ky.device)  # noqa: E731
    return calculate_total_phase_shift(
        defocus_um=defocus * 1e-4,
        voltage_kv=as_t(voltage),
        spherical_aberration_mm=as_t(cs),
        phase_shift_degrees=as_t(phase_shift),
        amplitude_contrast_fraction=as_t(amplitude_contrast),
        fftfreq_grid_angstrom_squared=k2,
    )


def ctf_phase_isotropic(
    k: torch.Tensor, defocus, voltage: float, cs: float, amplitude_contrast: float, phase_shift=0.0
) -> torch.Tensor:
    """χ (radians) for an isotropic defocus (Å) at frequencies ``k`` (Å⁻¹); broadcasts ``defocus`` against ``k``."""
    as_t = lambda v: torch.as_tensor(v, dtype=k.dtype, device=k.device)  # noqa: E731
    return calculate_total_phase_shift(
        defocus_um=as_t(defocus) * 1e-4,
        voltage_kv=as_t(voltage),
        spherical_aberration_mm=as_t(cs),
        phase_shift_degrees=as_t(phase_shift),
        amplitude_contrast_fraction=as_t(amplitude_contrast),
        fftfreq_grid_angstrom_squared=k * k,
    )


def ctf_values(
    ky, kx, defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift=0.0, b_factor=0.0
):
    """The CTF (-sin χ, times an optional envelope exp(-B k²/4), B in Å²) at ``(ky, kx)``."""
    ctf = -torch.sin(
        ctf_phase(ky, kx, defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift)
    )
    if b_factor:
        ctf = ctf * torch.exp(-b_factor * (ky * ky + kx * kx) / 4)
    return ctf


def first_zero(defocus: float, voltage: float, cs: float = 2.7, amplitude_contrast: float = 0.1) -> float:
    """Frequency (Å⁻¹) of the first CTF zero for an isotropic defocus in Å, neglecting Cs (fine below ~2 µm⁻¹ ...)."""
    lam = wavelength(voltage)
    # CTF = sin(π λ Δf k² + ac_phase) (Cs neglected): first zero where π λ Δf k² = π - ac_phase
    ac = math.atan(amplitude_contrast / math.sqrt(1 - amplitude_contrast**2))
    return math.sqrt((math.pi - ac) / (math.pi * lam * defocus))
