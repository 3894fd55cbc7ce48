"""Image-formation physics of the micrograph simulator: CTF, ice, dose, detector.

Everything here is a small pure function of explicit physical parameters; the
simulator (:mod:`cryoflow.simulate.micrograph`) strings them together.

Conventions
-----------
- Images are ``[y, x]`` (row, column); frequency grids are those of ``rfft2`` of an
  ``(H, W)`` image: shape ``(H, W // 2 + 1)``, ``ky`` along rows, ``kx`` along columns.
- Spatial frequency ``k`` in cycles/Å (Å⁻¹); ``f`` in cycles/pixel.
- Defocus in Å, positive is underfocus (RELION ``rlnDefocusU/V``); the astigmatism angle
  (RELION ``rlnDefocusAngle``, degrees) is the angle of the ``DefocusU`` axis measured from
  the x axis (columns) towards +y (increasing row index), as RELION's
  ``CTF::getCTF`` uses ``atan2(Y, X) - azimuth``.
- The weak-phase image is ``I = I0 · T · (1 + c)`` with the contrast
  ``ĉ(k) = -2 [sin γ(k) · Φ̂_R(k) + cos γ(k) · Φ̂_I(k)]`` where ``sin γ`` is the CTF of
  torch-ctf (amplitude contrast and phase shift included, ``γ = -χ``), ``Φ̂_R`` the
  Fourier transform of the projected phase (rad) seen at the reference defocus and
  ``Φ̂_I`` its quadrature part created by a height offset (see
  :func:`height_propagation`). Positive potential in underfocus appears dark.

Phase in radians = interaction constant σ (rad V⁻¹ Å⁻¹) × projected potential (V·Å).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# --- physical constants -------------------------------------------------------------
ELECTRON_REST_ENERGY_EV = 510998.95  # m0 c², eV
POTENTIAL_PER_SCATTERING_FACTOR = 47.878  # V·Å³ of potential per Å of electron scattering factor (h²/2πm0e)
WATER_NUMBER_DENSITY = 0.0314  # molecules / Å³ (vitreous ice, 0.94 g/cm³)
CARBON_NUMBER_DENSITY = 0.100  # atoms / Å³ (amorphous carbon, 2.0 g/cm³)
ICE_MEAN_INNER_POTENTIAL = 4.0  # V (vitreous ice, reported 3.5-4.5 V)
CARBON_MEAN_INNER_POTENTIAL = 9.0  # V (amorphous carbon, reported 8-10 V)
ICE_INELASTIC_MFP_300KV_NM = 350.0  # nm, mean free path for inelastic scattering in ice at 300 kV
CARBON_INELASTIC_MFP_300KV_NM = 180.0  # nm, same for amorphous carbon

# Peng et al. (1996) elastic electron scattering factors, f(s) = Σ a_i exp(-b_i s²),
# s = sin θ / λ = k / 2 in Å⁻¹, f in Å.
_PENG = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
}

# Reflections of crystalline ice (d spacing Å, relative power). Hexagonal ice Ih:
# (100) 3.90, (002) 3.67, (101) 3.44, (102) 2.67, (110) 2.25; cubic ice Ic: (111) 3.67,
# (220) 2.25.
ICE_REFLECTIONS = {
    "hexagonal": ((3.90, 1.0), (3.67, 0.75), (3.44, 0.6), (2.67, 0.2), (2.25, 0.25)),
    "cubic": ((3.67, 1.0), (2.25, 0.4)),
}


# --- electron optics ----------------------------------------------------------------
def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    from cryoflow.optics import wavelength

    return wavelength(voltage_kv)


def interaction_constant(voltage_kv: float) -> float:
    """Interaction constant σ in rad/(V·Å): phase per unit projected potential.

    σ = 2π / (λ V) · (m0c² + eV) / (2 m0c² + eV); 6.53e-4 rad/(V·Å) at 300 kV.
    """
    v = voltage_kv * 1e3
    lam = electron_wavelength(voltage_kv)
    return 2.0 * math.pi / (lam * v) * (ELECTRON_REST_ENERGY_EV + v) / (2.0 * ELECTRON_REST_ENERGY_EV + v)


def _beta_squared(voltage_kv: float) -> float:
    gamma = 1.0 + voltage_kv * 1e3 / ELECTRON_REST_ENERGY_EV
    return 1.0 - 1.0 / gamma**2


def inelastic_mean_free_path(voltage_kv: float, material: str = "ice") -> float:
    """Inelastic mean free path in nm, scaled from its 300 kV value by β² (Bethe).

    ``material``: ``"ice"`` (350 nm at 300 kV, ~280 nm at 200 kV) or ``"carbon"``.
    """
    base = {"ice": ICE_INELASTIC_MFP_300KV_NM, "carbon": CARBON_INELASTIC_MFP_300KV_NM}[material]
    return base * _beta_squared(voltage_kv) / _beta_squared(300.0)


def transmission(thickness_nm: float | torch.Tensor, voltage_kv: float, material: str = "ice"):
    """Zero-loss transmitted fraction exp(-t / λ_in) for a thickness in nm (energy filter)."""
    lam = inelastic_mean_free_path(voltage_kv, material)
    if isinstance(thickness_nm, torch.Tensor):
        return torch.exp(-thickness_nm / lam)
    return math.exp(-thickness_nm / lam)


# --- frequency grids ------------------------------------------------------------------
def rfft_freqs(shape: tuple[int, int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies (cycles/pixel) of an ``rfft2`` of an ``(H, W)`` image.

    Returns ``fy`` of shape ``(H, 1)`` and ``fx`` of shape ``(1, W // 2 + 1)``.
    """
    h, w = shape
    fy = torch.fft.fftfreq(h, device=device).reshape(-1, 1)
    fx = torch.fft.rfftfreq(w, device=device).reshape(1, -1)
    return fy, fx


def rfft2(x: torch.Tensor) -> torch.Tensor:
    """``rfft2`` over the last two axes (scipy's pocketfft with all threads on CPU)."""
    if x.device.type == "cpu":
        import scipy.fft

        return torch.from_numpy(scipy.fft.rfft2(x.numpy(), workers=torch.get_num_threads()))
    return torch.fft.rfft2(x)


def irfft2(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft2` to a real ``(..., H, W)`` array."""
    if x.device.type == "cpu":
        import scipy.fft

        return torch.from_numpy(scipy.fft.irfft2(x.numpy(), s=shape, workers=torch.get_num_threads()))
    return torch.fft.irfft2(x, s=shape)


# --- CTF ------------------------------------------------------------------------------
def relion_to_torch_ctf(defocus_u: float, defocus_v: float, defocus_angle: float) -> tuple[float, float, float]:
    """RELION DefocusU/V (Å), DefocusAngle (deg) -> torch-ctf (defocus µm, astigmatism µm, angle deg).

    torch-ctf takes the mean defocus ``(U + V) / 2`` and the half difference ``(U - V) / 2``
    in µm, and its angle places ``defocus_u`` at that angle from the x axis (columns)
    towards +y (rows) on its ``(ky, kx)`` grid -- the same axis as RELION's DefocusAngle
    (checked against RELION's formula in the tests; torch-ctf's docstring saying "0 places
    defocus_u along the y-axis" does not match its code). torch-ctf takes the square root
    of the astigmatism, so ``U < V`` is expressed as ``V > U`` rotated by 90°.
    """
    if defocus_u < defocus_v:
        defocus_u, defocus_v, defocus_angle = defocus_v, defocus_u, defocus_angle + 90.0
    mean_um = (defocus_u + defocus_v) / 2.0 * 1e-4
    astig_um = (defocus_u - defocus_v) / 2.0 * 1e-4
    return mean_um, astig_um, defocus_angle % 180.0


def ctf_transfer(
    shape: tuple[int, int],
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    defocus_u: float,
    defocus_v: float,
    defocus_angle: float,
    phase_shift: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Complex ``exp(-iχ)`` on the ``rfft2`` grid of an ``(H, W)`` image, from torch-ctf.

    Its imaginary part is the CTF ``sin γ`` (amplitude contrast and ``phase_shift`` in
    degrees included), its real part ``cos γ``. Units: pixel size Å, voltage kV, Cs mm,
    defocus Å (positive underfocus, RELION), angle degrees. Shape ``(H, W // 2 + 1)``.
    """
    from torch_ctf import calculate_ctf_2d

    mean_um, astig_um, angle = relion_to_torch_ctf(defocus_u, defocus_v, defocus_angle)
    return calculate_ctf_2d(
        defocus=torch.tensor(mean_um, device=device),
        astigmatism=astig_um,
        astigmatism_angle=angle,
        voltage=voltage,
        spherical_aberration=cs,
        amplitude_contrast=amplitude_contrast,
        phase_shift=phase_shift,
        pixel_size=pixel_size,
        image_shape=shape,
        rfft=True,
        fftshift=False,
        return_complex_ctf=True,
    )


def ctf_sin_cos(
    shape: tuple[int, int],
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    defocus_u: float,
    defocus_v: float,
    defocus_angle: float,
    phase_shift: float = 0.0,
    device: torch.device | str = "cpu",
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin γ, cos γ)`` on the ``rfft2`` grid of an ``(H, W)`` image: the CTF and its quadrature.

    ``method="torch_ctf"``: :func:`ctf_transfer` (``torch_ctf.calculate_ctf_2d``).
    ``method="phase"``: :func:`cryoflow.optics.ctf_phase` (torch-ctf's phase formula fed with
    the astigmatic defocus of each frequency in RELION's convention, shared with the CTF
    step): the same values (tested to 2e-4, float32 rounding) at less than half the cost,
    which matters on 4096² frames.
    ``"auto"``: ``phase`` above 1024² pixels, else ``torch_ctf``. Units as
    :func:`ctf_transfer`; two ``(H, W // 2 + 1)`` float32 tensors.
    """
    h, w = shape
    if method == "auto":
        method = "phase" if h * w > 1024 * 1024 else "torch_ctf"
    if method == "torch_ctf":
        c = ctf_transfer(
            shape, pixel_size, voltage, cs, amplitude_contrast, defocus_u, defocus_v, defocus_angle, phase_shift, device
        )
        return c.imag, c.real
    if method != "phase":
        raise ValueError(f"unknown CTF method {method!r}")
    from cryoflow.optics import ctf_phase

    fy, fx = rfft_freqs(shape, device=device)
    chi = ctf_phase(
        fy / pixel_size,
        fx / pixel_size,
        defocus_u,
        defocus_v,
        defocus_angle,
        voltage,
        cs,
        amplitude_contrast,
        phase_shift,
    )
    return torch.sin(chi).neg_(), torch.cos(chi)


def ctf_1d(
    k: np.ndarray,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    defocus: float,
    phase_shift: float = 0.0,
) -> np.ndarray:
    """Reference isotropic CTF ``sin γ(k)`` (numpy) at spatial frequencies ``k`` (Å⁻¹).

    γ = π λ Δf k² - π/2 Cs λ³ k⁴ + phase_shift + arcsin(A); defocus Å (underfocus > 0),
    Cs mm, voltage kV, phase shift degrees. Used for ring positions in tests and benchmarks.
    """
    lam = electron_wavelength(voltage)
    k2 = np.asarray(k, dtype=np.float64) ** 2
    gamma = (
        math.pi * lam * defocus * k2
        - 0.5 * math.pi * cs * 1e7 * lam**3 * k2**2
        + math.radians(phase_shift)
        + math.asin(amplitude_contrast)
    )
    return np.sin(gamma)


def ctf_zeros(
    n: int, voltage: float, cs: float, amplitude_contrast: float, defocus: float, phase_shift: float = 0.0
) -> np.ndarray:
    """Spatial frequencies (Å⁻¹) of the first ``n`` zeros of :func:`ctf_1d` (γ = jπ, j ≥ 1)."""
    lam = electron_wavelength(voltage)
    c4 = 0.5 * math.pi * cs * 1e7 * lam**3
    c2 = math.pi * lam * defocus
    c0 = math.radians(phase_shift) + math.asin(amplitude_contrast)
    out = []
    j = 1
    while len(out) < n:
        target = j * math.pi - c0
        # solve c2 u - c4 u² = target for u = k² (smaller root)
        disc = c2 * c2 - 4 * c4 * target
        if disc < 0:
            break
        u = (c2 - math.sqrt(disc)) / (2 * c4) if c4 > 0 else target / c2
        out.append(math.sqrt(u))
        j += 1
    return np.array(out)


def envelope(k2: torch.Tensor, b_factor: float) -> torch.Tensor:
    """Amplitude envelope exp(-B k² / 4) for a B-factor in Å² and ``k2`` in Å⁻²."""
    return torch.exp(-0.25 * b_factor * k2)


def height_propagation(k2: torch.Tensor, dz: torch.Tensor, voltage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the extra CTF phase ``a = π λ dz k²`` of an object ``dz`` Å more underfocus.

    ``sin(γ0 + a) = sin γ0 cos a + cos γ0 sin a``, so an object at height ``dz`` (Å, its
    defocus is the micrograph's + dz) contributes ``Φ̂ cos a`` to the phase channel and
    ``Φ̂ sin a`` to the quadrature channel of :mod:`physics`' image model, both real in
    real space. ``k2`` (Å⁻²) and ``dz`` broadcast.
    """
    a = math.pi * electron_wavelength(voltage) * dz * k2
    return torch.cos(a), torch.sin(a)


# --- specimen spectra -----------------------------------------------------------------
def scattering_factor(element: str, k: torch.Tensor) -> torch.Tensor:
    """Elastic electron scattering factor (Å) of ``element`` at spatial frequency ``k`` (Å⁻¹)."""
    a, b = _PENG[element]
    s2 = (k / 2.0) ** 2
    out = torch.zeros_like(k)
    for ai, bi in zip(a, b, strict=True):
        out = out + ai * torch.exp(-bi * s2)
    return out


def water_form_factor_sq(k: torch.Tensor) -> torch.Tensor:
    """|F(k)|² (Å²) of one water molecule (Debye formula over O and two H), ``k`` in Å⁻¹."""
    fo = scattering_factor("O", k)
    fh = scattering_factor("H", k)
    q = 2 * math.pi * k
    j_oh = torch.sinc(q * 0.957 / math.pi)  # torch.sinc(x) = sin(πx)/(πx)
    j_hh = torch.sinc(q * 1.514 / math.pi)
    return fo * fo + 2 * fh * fh + 4 * fo * fh * j_oh + 2 * fh * fh * j_hh


def amorphous_ice_structure_factor(k: torch.Tensor) -> torch.Tensor:
    """O-O structure factor S(k) of vitreous (low-density amorphous) ice, ``k`` in Å⁻¹.

    An empirical curve: S(0) ≈ 0.06 (compressibility, the low-frequency solvent noise),
    rising to the first sharp peak at 1/3.7 Å⁻¹ (Q = 1.7 Å⁻¹, height ≈ 2.4, the broad ring
    seen near 3.7 Å in real power spectra), a minimum near 1/2.7 Å⁻¹ and a second peak
    near 1/2.1 Å⁻¹, tending to 1.
    """
    s0 = 0.06
    base = s0 + (1 - s0) * (1 - torch.exp(-((k / 0.25) ** 4)))
    peak1 = 1.7 * torch.exp(-0.5 * ((k - 1 / 3.7) / 0.014) ** 2)
    dip = -0.4 * torch.exp(-0.5 * ((k - 0.37) / 0.03) ** 2)
    peak2 = 0.25 * torch.exp(-0.5 * ((k - 0.48) / 0.04) ** 2)
    return base + peak1 + dip + peak2


def crystalline_ice_structure_factor(k: torch.Tensor, kind: str = "hexagonal", width: float = 0.003) -> torch.Tensor:
    """Powder-ring structure factor of crystalline ice: sharp Gaussian rings on the low-k base.

    ``kind``: ``"hexagonal"`` (rings at 3.90, 3.67, 3.44, 2.67, 2.25 Å) or ``"cubic"``
    (3.67, 2.25 Å); ``width`` (Å⁻¹) is the ring's standard deviation, ~1/crystallite size.
    Ring heights are ~20x the amorphous peak: the same scattering concentrated in rings.
    """
    s0 = 0.06
    out = s0 + (1 - s0) * (1 - torch.exp(-((k / 0.25) ** 4)))
    for d, w in ICE_REFLECTIONS[kind]:
        out = out + 40.0 * w * torch.exp(-0.5 * ((k - 1.0 / d) / width) ** 2)
    return out


def ice_phase_psd(
    k: torch.Tensor,
    thickness_nm: float,
    pixel_size: float,
    voltage: float,
    structure_factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Power spectral density of the projected-phase fluctuations of an ice layer.

    Per Fourier mode, normalised as a per-pixel variance (rad²): a white field of
    per-pixel variance v has PSD v. For N molecules per pixel column, randomly placed
    with structure factor S(k): PSD = n t / a · (σ · 47.88 · F(k))² · S(k), with n the
    number density (Å⁻³), t thickness (Å), a pixel area (Å²), F the molecular scattering
    factor (Å). ``k`` in Å⁻¹, any shape. ``structure_factor`` defaults to amorphous ice.
    """
    if thickness_nm <= 0:
        return torch.zeros_like(k)
    s = amorphous_ice_structure_factor(k) if structure_factor is None else structure_factor
    sigma = interaction_constant(voltage) * POTENTIAL_PER_SCATTERING_FACTOR
    n_per_area = WATER_NUMBER_DENSITY * thickness_nm * 10.0 / pixel_size**2
    return n_per_area * sigma**2 * water_form_factor_sq(k) * s


def carbon_phase_std(thickness_nm: float, pixel_size: float, voltage: float) -> float:
    """Per-pixel standard deviation (rad) of the phase of an amorphous carbon film.

    White-noise model (S ≈ 1 at the frequencies that matter): variance n t / a (σ 47.88 f_C)².
    """
    sigma = interaction_constant(voltage) * POTENTIAL_PER_SCATTERING_FACTOR * 2.509  # f_C(0) = 2.51 Å
    return math.sqrt(CARBON_NUMBER_DENSITY * thickness_nm * 10.0 / pixel_size**2) * sigma


# --- detector -------------------------------------------------------------------------
# name -> (DQE at zero frequency, Gaussian charge/localisation blur sigma in px)
DETECTORS = {
    "ideal": (1.0, 0.0),
    "counting": (0.85, 0.3),
    "falcon4": (0.85, 0.3),
    "k3": (0.80, 0.35),
}


def detector_mtf(fy: torch.Tensor, fx: torch.Tensor, detector: str) -> torch.Tensor | None:
    """MTF of a counting detector (``None`` for ``"ideal"``), ``fy``, ``fx`` in cycles/px.

    Pixel aperture ``sinc(fy) sinc(fx)`` (0.64 at Nyquist on each axis) times a Gaussian
    of the event-localisation error. Counted events are Poisson in each pixel, so the
    noise stays white and DQE(f) = DQE(0) · MTF(f)².
    """
    dqe0, blur = DETECTORS[detector]
    if detector == "ideal":
        return None
    mtf = torch.sinc(fy) * torch.sinc(fx)
    if blur > 0:
        mtf = mtf * torch.exp(-2 * math.pi**2 * blur**2 * (fy**2 + fx**2))
    return mtf


def drift_filter(fy: torch.Tensor, fx: torch.Tensor, length_px: float, angle_deg: float) -> torch.Tensor:
    """Transfer function of a uniform linear drift of ``length_px`` along ``angle_deg``.

    The angle is measured from the x axis towards +y. A box (line) kernel along the drift
    direction: ``sinc(L f·u)`` with ``f`` in cycles/px; it damps Thon rings along the drift
    direction only.
    """
    a = math.radians(angle_deg)
    fu = fx * math.cos(a) + fy * math.sin(a)
    return torch.sinc(length_px * fu)
