"""A simulated particle stack as the extract step writes it, with the truth in extra columns.

:func:`simulate_stack` writes ``particles.star`` + ``Particles/*.mrcs`` in the extract
contract (RELION 3.1: ``data_optics`` with rlnImagePixelSize, rlnImageSize,
rlnImageDimensionality 2, rlnCtfDataArePhaseFlipped 0; ``data_particles`` with
rlnImageName ``N@Particles/mic_XXXX.mrcs`` relative to the STAR file, rlnMicrographName,
rlnCoordinateX/Y, rlnDefocusU/V (Å), rlnDefocusAngle and rlnPhaseShift (degrees),
rlnOpticsGroup, rlnAutopickFigureOfMerit). Images are float32, particles white
(``CTF ⊗ projection``, RELION's sign after contrast inversion), normalized to mean 0 and
standard deviation 1 in the background ring (outside the particle circle), not CTF-corrected.

Image formation per particle: the projected potential of a species
(:meth:`Species.project`, exact orientation including a continuous in-plane angle),
shifted by a small random translation, multiplied by the CTF
(:func:`cryoflow.optics.ctf_values`, per-micrograph defocus plus a per-particle height
offset, small astigmatism, B-factor envelope), plus white Gaussian noise at a per-pixel
SNR drawn from ``snr`` (variance of the noiseless image inside the particle circle over
the noise variance).

Orientations: ``views_per_species`` well-separated viewing directions per species (at
least 40° apart, the preferred orientations of a real grid), each particle jittered by
``view_jitter`` degrees about its view; ``None`` draws directions uniformly.

Junk (a fraction ``junk_fraction`` of the picks, kinds weighted by ``junk_kinds``):
``noise`` (an empty pick: noise only), ``blob`` (a few bright or dark Gaussian lumps:
contamination), ``ice`` (a soft edge across the box with texture: ice crystal or carbon
edge), ``offcentre`` (a particle 35-50% of the box off centre: a partial particle),
``aggregate`` (2-3 overlapping particles).

Truth columns: ``cfSpecies`` (species name, ``junk`` for junk without a species),
``cfIsJunk`` (0/1), ``cfJunkKind`` (``none`` for particles), ``cfView`` (view index
within the species, -1 if none), ``cfTrueRot``/``cfTrueTilt``/``cfTruePsi`` (degrees,
RELION ZYZ; NaN where no single projection), ``cfTrueOriginXAngst``/``YAngst`` (RELION
origin: minus the particle's displacement from the box centre, Å), ``cfSNR``,
``cfDiameter`` (Å, the picking diameter: the largest species diameter).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoflow.errors import CryoflowError
from cryoflow.optics import ctf_values

JUNK_KINDS = ("noise", "blob", "ice", "offcentre", "aggregate")
DEFAULT_JUNK = {"noise": 1.0, "blob": 1.0, "ice": 1.0, "offcentre": 1.0, "aggregate": 1.0}
STAR_NAME = "particles.star"


@dataclass
class SimulatedStack:
    """What :func:`simulate_stack` wrote: ``path`` (folder), ``star`` (particles.star),
    ``table`` (the data_particles table, truth included), ``species`` names, ``seconds``."""

    path: Path
    star: Path
    table: pd.DataFrame
    species: list[str]
    seconds: float


def default_species(pixel_size: float, box: int) -> list:
    """7DDO plus two asymmetric procedural particles of ~120-130 Å (an elongated and a globular one).

    No symmetric species: a cyclic particle seen down its axis has no defined in-plane angle."""
    from cryoflow.simulate.structures import procedural_species, reference_species

    return [
        reference_species(pixel_size, box=box),
        procedural_species(130.0, pixel_size, seed=11, shape="elongated", box=box),
        procedural_species(120.0, pixel_size, seed=12, shape="globular", box=box),
    ]


def _separated_directions(n: int, min_deg: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors at least ``min_deg`` apart (greedy from uniform candidates): ``(n, 3)``."""
    chosen: list[np.ndarray] = []
    cos_min = math.cos(math.radians(min_deg))
    for _ in range(20000):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        if all(float(v @ c) < cos_min for c in chosen):
            chosen.append(v)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        raise CryoflowError(None, f"cannot place {n} views {min_deg:g}° apart; ask for fewer views per species")
    return np.stack(chosen)


def _direction_to_rot_tilt(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Viewing direction(s) ``(..., 3)`` -> RELION (rot, tilt) in degrees."""
    tilt = np.degrees(np.arccos(np.clip(v[..., 2], -1, 1)))
    rot = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    return rot, tilt


def _jitter_directions(centres: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Tilt each direction ``(n, 3)`` by a random angle (Rayleigh, scale ``degrees``) in a random direction."""
    n = len(centres)
    if degrees <= 0:
        return centres.copy()
    helper = np.where(np.abs(centres[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(centres, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(centres, e1)
    ang = np.radians(rng.rayleigh(degrees, size=n))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    v = np.cos(ang)[:, None] * centres + np.sin(ang)[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _frequency_grid(box: int, pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 frequencies ``(ky, kx)`` in Å⁻¹, each ``(box, box//2 + 1)``."""
    ky = torch.fft.fftfreq(box) / pixel_size
    kx = torch.fft.rfftfreq(box) / pixel_size
    return torch.meshgrid(ky, kx, indexing="ij")


def _radius_map(box: int) -> torch.Tensor:
    """Distance of each pixel from the box centre ``(box//2, box//2)``, pixels: ``(box, box)``."""
    y, x = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32), indexing="ij")
    return torch.sqrt((y - box // 2) ** 2 + (x - box // 2) ** 2)


def _blobs(n: int, box: int, gen: torch.Generator) -> torch.Tensor:
    """Contamination-like lumps: 1-4 anisotropic Gaussians each, ``(n, box, box)``, unit peak scale."""
    y, x = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32), indexing="ij")
    out = torch.zeros(n, box, box)
    for _ in range(4):
        on = (torch.rand(n, generator=gen) < 0.6).float()
        cy, cx = (torch.rand(2, n, generator=gen) * 0.8 + 0.1) * box
        sy, sx = torch.rand(2, n, generator=gen) * box * 0.15 + box * 0.04
        amp = (torch.rand(n, generator=gen) * 1.5 + 0.5) * torch.where(torch.rand(n, generator=gen) < 0.7, 1.0, -1.0)
        g = torch.exp(
            -((y - cy[:, None, None]) ** 2) / (2 * sy[:, None, None] ** 2)
            - (x - cx[:, None, None]) ** 2 / (2 * sx[:, None, None] ** 2)
        )
        out += (on * amp)[:, None, None] * g
    return out


def _ice_edges(n: int, box: int, gen: torch.Generator) -> torch.Tensor:
    """A soft step across the box at a random angle and offset, with a fine texture: ``(n, box, box)``."""
    y, x = torch.meshgrid(torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32), indexing="ij")
    theta = torch.rand(n, generator=gen) * 2 * math.pi
    offset = (torch.rand(n, generator=gen) - 0.5) * box * 0.6
    d = (x - box / 2) * torch.cos(theta)[:, None, None] + (y - box / 2) * torch.sin(theta)[:, None, None]
    step = torch.sigmoid((d - offset[:, None, None]) / 1.5)
    texture = torch.randn(n, box, box, generator=gen)
    texture = torch.fft.irfft2(torch.fft.rfft2(texture) * torch.exp(-_kk(box) / (2 * 0.08**2)), s=(box, box))
    return 2.0 * step + 8.0 * texture * step


def _kk(box: int) -> torch.Tensor:
    """Squared rfft2 frequency (cycles/pixel)², ``(box, box//2 + 1)``."""
    ky, kx = _frequency_grid(box, 1.0)
    return ky**2 + kx**2


def simulate_stack(
    out_dir: str | os.PathLike,
    n: int = 2000,
    box: int = 64,
    pixel_size: float = 2.5,
    *,
    species: list | None = None,
    views_per_species: int | None = 5,
    view_jitter: float = 3.0,
    junk_fraction: float = 0.1,
    junk_kinds: dict[str, float] | None = None,
    snr: tuple[float, float] = (0.03, 0.08),
    defocus: tuple[float, float] = (8000.0, 25000.0),
    astigmatism: float = 400.0,
    b_factor: float = 60.0,
    shift_sigma: float = 1.0,
    particles_per_micrograph: int = 500,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    seed: int = 0,
) -> SimulatedStack:
    """Write a simulated ``particles.star`` + ``.mrcs`` stacks into ``out_dir`` (see the module doc).

    Parameters
    ----------
    out_dir: output folder; must not exist or be empty (built in a temporary folder, renamed).
    n: number of picks (particles + junk). box: image size, pixels. pixel_size: Å/pixel.
    species: :class:`~cryoflow.simulate.structures.Species` list (default :func:`default_species`);
        their volumes should be ``box`` wide (species made with ``box=box``).
    views_per_species: preferred viewing directions per species (``None``: uniform directions).
    view_jitter: Rayleigh scale (degrees) of the scatter of directions about their view.
    junk_fraction: fraction of picks that are junk. junk_kinds: weights of :data:`JUNK_KINDS`.
    snr: per-pixel SNR range (uniform per particle). defocus: range, Å (per micrograph; particles
        get ±150 Å height offsets). astigmatism: U - V, Å. b_factor: CTF envelope, Å².
    shift_sigma: standard deviation of the particle's displacement from the box centre, pixels
        (clipped at 3 sigma).
    particles_per_micrograph: picks per stack file (one stack per simulated micrograph).
    voltage (kV), cs (mm), amplitude_contrast (fraction): optics.
    seed: the same arguments and seed write the same bytes.
    """
    import time

    from cryoflow.io import StarTable, atomic_dir, make_optics, write_mrc, write_table
    from cryoflow.simulate.rotations import euler_to_matrix

    t0 = time.perf_counter()
    if n < 1 or box < 16 or pixel_size <= 0:
        raise CryoflowError(None, f"need n >= 1, box >= 16 and a positive pixel size (got {n}, {box}, {pixel_size})")
    if not 0 <= junk_fraction <= 1:
        raise CryoflowError(None, f"junk_fraction must be within 0-1, got {junk_fraction}")
    kinds = dict(DEFAULT_JUNK if junk_kinds is None else junk_kinds)
    unknown = set(kinds) - set(JUNK_KINDS)
    if unknown:
        raise CryoflowError(None, f"unknown junk kind(s) {sorted(unknown)}; choose from {', '.join(JUNK_KINDS)}")
    species = species if species is not None else default_species(pixel_size, box)
    for s in species:
        if s.box != box:
            raise CryoflowError(None, f"species {s.name} is {s.box} voxels wide; make it with box={box}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))

    # --- what each pick is
    n_junk = int(round(junk_fraction * n))
    is_junk = np.zeros(n, dtype=bool)
    is_junk[rng.choice(n, n_junk, replace=False)] = True
    junk_kind = np.array(["none"] * n, dtype=object)
    if n_junk and kinds:
        names = list(kinds)
        weights = np.array([kinds[k] for k in names], dtype=float)
        junk_kind[is_junk] = rng.choice(names, n_junk, p=weights / weights.sum())
    n_species = len(species)
    species_index = rng.integers(0, n_species, size=n)
    has_projection = ~is_junk | np.isin(junk_kind, ["offcentre", "aggregate"])
    species_index[~has_projection] = -1

    # --- orientations
    view = np.full(n, -1)
    directions = np.zeros((n, 3))
    for s in range(n_species):
        idx = np.flatnonzero(species_index == s)
        if views_per_species:
            centres = _separated_directions(views_per_species, 40.0, rng)
            view[idx] = rng.integers(0, views_per_species, size=len(idx))
            directions[idx] = _jitter_directions(centres[view[idx]], view_jitter, rng)
        else:
            v = rng.normal(size=(len(idx), 3))
            directions[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
    rot, tilt = _direction_to_rot_tilt(directions)
    psi = rng.uniform(-180.0, 180.0, size=n)
    angles = np.stack([rot, tilt, psi], axis=1)
    shifts = np.clip(rng.normal(0, shift_sigma, size=(n, 2)), -3 * shift_sigma, 3 * shift_sigma)  # (dy, dx) px
    off = junk_kind == "offcentre"
    if off.any():
        phi = rng.uniform(0, 2 * np.pi, off.sum())
        r = rng.uniform(0.35, 0.5, off.sum()) * box
        shifts[off] = np.stack([r * np.sin(phi), r * np.cos(phi)], axis=1)

    # --- micrographs and CTF parameters
    n_mics = max(1, math.ceil(n / particles_per_micrograph))
    mic = np.arange(n) // particles_per_micrograph
    mic_defocus = rng.uniform(defocus[0], defocus[1], size=n_mics)
    mic_angle = rng.uniform(-90, 90, size=n_mics)
    dfu = mic_defocus[mic] + rng.uniform(-150, 150, size=n) + astigmatism / 2
    dfv = dfu - astigmatism
    snr_i = np.exp(rng.uniform(math.log(snr[0]), math.log(snr[1]), size=n))
    coords = rng.uniform(box, 4096 - box, size=(n, 2))

    # --- images, in batches
    radius_px = max(s.diameter for s in species) / 2 / pixel_size
    rmap = _radius_map(box)
    inside = rmap <= min(radius_px, box / 2 - 1)
    background = rmap > min(radius_px + 2, box / 2 - 4)
    ky, kx = _frequency_grid(box, pixel_size)
    shift_phase_y = torch.fft.fftfreq(box)[:, None]
    shift_phase_x = torch.fft.rfftfreq(box)[None, :]
    images = np.empty((n, box, box), dtype=np.float32)
    batch = 1024
    rotations_all = euler_to_matrix(torch.tensor(angles, dtype=torch.float32))
    for start in range(0, n, batch):
        sl = slice(start, min(n, start + batch))
        m = sl.stop - sl.start
        clean = torch.zeros(m, box, box)
        idx = np.arange(sl.start, sl.stop)
        for s in range(n_species):
            sel = np.flatnonzero(species_index[idx] == s)
            if len(sel):
                clean[sel] = species[s].project(rotations_all[idx[sel]])
        agg = np.flatnonzero(junk_kind[idx] == "aggregate")
        if len(agg):  # add 1-2 neighbours at 0.3-0.55 box from the centre
            for _ in range(2):
                nb_species = rng.integers(0, n_species, size=len(agg))
                nb_rot = euler_to_matrix(
                    torch.tensor(
                        np.stack(
                            [
                                rng.uniform(-180, 180, len(agg)),
                                np.degrees(np.arccos(rng.uniform(-1, 1, len(agg)))),
                                rng.uniform(-180, 180, len(agg)),
                            ],
                            1,
                        ),
                        dtype=torch.float32,
                    )
                )
                phi = rng.uniform(0, 2 * np.pi, len(agg))
                r = rng.uniform(0.3, 0.55, len(agg)) * box
                nb_shift = torch.tensor(np.stack([r * np.sin(phi), r * np.cos(phi)], 1), dtype=torch.float32)
                for s in range(n_species):
                    sel = np.flatnonzero(nb_species == s)
                    if len(sel):
                        proj = species[s].project(nb_rot[sel])
                        spec = torch.fft.rfft2(proj) * torch.exp(
                            -2j
                            * math.pi
                            * (
                                shift_phase_y * nb_shift[sel, 0, None, None]
                                + shift_phase_x * nb_shift[sel, 1, None, None]
                            )
                        )
                        clean[agg[sel]] += torch.fft.irfft2(spec, s=(box, box))
        scale = float(clean[clean.abs().sum((1, 2)) > 0].std()) if (clean.abs().sum() > 0) else 1.0
        kinds_here = junk_kind[idx]
        for kind, maker in (("blob", _blobs), ("ice", _ice_edges)):
            sel = np.flatnonzero(kinds_here == kind)
            if len(sel):
                clean[sel] = maker(len(sel), box, gen) * scale
        # shift + CTF in one Fourier step (the ice edge gets no shift; it has no centre)
        sh = torch.tensor(shifts[idx], dtype=torch.float32)
        spec = torch.fft.rfft2(clean)
        phase = torch.exp(-2j * math.pi * (shift_phase_y * sh[:, 0, None, None] + shift_phase_x * sh[:, 1, None, None]))
        ctf = ctf_values(
            ky,
            kx,
            torch.tensor(dfu[idx], dtype=torch.float32)[:, None, None],
            torch.tensor(dfv[idx], dtype=torch.float32)[:, None, None],
            torch.tensor(mic_angle[mic[idx]], dtype=torch.float32)[:, None, None],
            voltage,
            cs,
            amplitude_contrast,
            0.0,
            b_factor,
        )
        signal = torch.fft.irfft2(spec * phase * ctf, s=(box, box))
        # noise: per-pixel SNR = var(signal inside the particle circle) / noise variance
        ref_var = signal[:, inside].var(dim=1)
        has_signal = ref_var > 1e-12
        fallback = float(ref_var[has_signal].median()) if has_signal.any() else 1.0
        ref_var = torch.where(has_signal, ref_var, torch.full_like(ref_var, fallback))
        noise_sd = torch.sqrt(ref_var / torch.tensor(snr_i[idx], dtype=torch.float32))
        noisy = signal + noise_sd[:, None, None] * torch.randn(m, box, box, generator=gen)
        bg = noisy[:, background]
        noisy = (noisy - bg.mean(1)[:, None, None]) / bg.std(1).clamp_min(1e-12)[:, None, None]
        images[sl] = noisy.numpy()

    # --- tables
    origin = -shifts[:, ::-1] * pixel_size  # (x, y), Å
    no_pose = ~has_projection | (junk_kind == "aggregate") | (junk_kind == "offcentre")
    true_angles = angles.copy()
    true_angles[no_pose] = np.nan
    origin = origin.copy()
    origin[~has_projection | (junk_kind == "ice")] = np.nan
    species_names = np.array([s.name for s in species] + ["junk"], dtype=object)
    fom = np.where(is_junk, rng.normal(0.3, 0.15, n), rng.normal(0.6, 0.15, n)).clip(0, 1)
    stack_names = [f"Particles/mic_{i:04d}.mrcs" for i in range(n_mics)]
    within = np.arange(n) - mic * particles_per_micrograph
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{w + 1:06d}@{stack_names[m]}" for w, m in zip(within, mic, strict=True)],
            "rlnMicrographName": [f"Micrographs/mic_{m:04d}.mrc" for m in mic],
            "rlnCoordinateX": coords[:, 0].round(1),
            "rlnCoordinateY": coords[:, 1].round(1),
            "rlnDefocusU": dfu.round(2),
            "rlnDefocusV": dfv.round(2),
            "rlnDefocusAngle": mic_angle[mic].round(3),
            "rlnPhaseShift": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnAutopickFigureOfMerit": fom.round(4),
            "cfSpecies": species_names[species_index],
            "cfIsJunk": is_junk.astype(int),
            "cfJunkKind": junk_kind,
            "cfView": np.where(no_pose, -1, view),
            "cfTrueRot": true_angles[:, 0].round(4),
            "cfTrueTilt": true_angles[:, 1].round(4),
            "cfTruePsi": true_angles[:, 2].round(4),
            "cfTrueOriginXAngst": origin[:, 0].round(4),
            "cfTrueOriginYAngst": origin[:, 1].round(4),
            "cfSNR": snr_i.round(5),
            "cfDiameter": np.full(n, round(2 * radius_px * pixel_size, 1)),
        }
    )
    optics = make_optics(
        pixel_size,
        voltage,
        cs,
        amplitude_contrast,
        kind="particles",
        rlnMicrographOriginalPixelSize=float(pixel_size),
        rlnImageSize=int(box),
        rlnCtfDataArePhaseFlipped=0,
    )
    optics = optics[
        [
            "rlnOpticsGroup",
            "rlnOpticsGroupName",
            "rlnVoltage",
            "rlnSphericalAberration",
            "rlnAmplitudeContrast",
            "rlnMicrographOriginalPixelSize",
            "rlnImagePixelSize",
            "rlnImageSize",
            "rlnImageDimensionality",
            "rlnCtfDataArePhaseFlipped",
        ]
    ]
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CryoflowError(out_dir, "output folder exists and is not empty (nothing was written)")
    with atomic_dir(out_dir) as tmp:
        for i, name in enumerate(stack_names):
            write_mrc(tmp / name, images[mic == i], pixel_size, stack=True)
        write_table(tmp / STAR_NAME, StarTable(optics, table, "particles"))
    return SimulatedStack(out_dir, out_dir / STAR_NAME, table, [s.name for s in species], time.perf_counter() - t0)
