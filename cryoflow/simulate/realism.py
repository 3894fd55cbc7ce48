"""Realism report: simulated micrographs beside real ones, images and power spectra.

For every real micrograph found (by default ``../shared/data/micrographs/``, the project's
small set of real EPU micrographs; any folder can be given), a micrograph is simulated at
the same pixel size and shape, at 300 kV, with the defocus of the real one (its Thon
rings fitted in 1-D, see :func:`fit_defocus`; the microscope's nominal value when the fit
is poor). The report shows, side by side:

- the two images (contrast-stretched the same way) and their 2-D power spectra;
- their radial power spectra with the theoretical CTF zeros marked (for the real one at
  the fitted defocus, for the simulated one at its true defocus);
- a table of statistics that tell micrographs apart at a glance: normalised variance
  (std / mean of the counts), Thon-ring strength (correlation of the background-
  subtracted radial spectrum with sin²γ), the power of the 3.7 Å ice ring relative to
  its surroundings, and the spectral fall-off between 1/20 and 1/5 Å⁻¹.

A missing folder of real micrographs is not an error: the report then shows the
simulated ones only and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoflow.simulate.presets import SpeciesSpec

#: Where the project keeps its real micrographs, relative to the repository's parent.
DEFAULT_REAL_DIR = Path("shared/data/micrographs")

#: What is known of the project's real micrographs (by file-name prefix): nominal defocus
#: (µm, underfocus, from the EPU headers) and the particle density seen (particles per Å²),
#: so the simulated partner looks like the same kind of sample.
KNOWN_MICROGRAPHS = {
    "epu_falcon": {"defocus_um": 2.0, "density": 8e-5},  # applied -2.2 µm, autofocus 1.815 µm; dense
    "diamond_epu": {"defocus_um": 0.8, "density": 1.5e-5},  # applied -0.8 µm; isolated particles
}
DEFAULT_DENSITY = 2.5e-5  # particles per Å² (~60 in a 1536 Å field)
#: Species of the simulated partners: sizes like those of the real samples (~100-150 Å).
REALISM_SPECIES = (
    SpeciesSpec("reference", weight=0.6),
    SpeciesSpec("procedural", weight=0.4, diameter=130.0, shape="multimer", seed=2, name="multimer130"),
)
MIN_RING_SCORE = 0.3  # below this the 1-D fit is not trusted and the nominal defocus is used
VOLTAGE = 300.0
CS = 2.7
AMPLITUDE_CONTRAST = 0.07


def default_real_dir() -> Path | None:
    """The first existing of ``../shared/data/micrographs`` from the working directory or the repository."""
    here = Path(__file__).resolve()
    for base in (Path.cwd().parent, Path.cwd(), *here.parents):
        candidate = base / DEFAULT_REAL_DIR
        if candidate.is_dir():
            return candidate
    return None


# --- spectra ---------------------------------------------------------------------------------
def power_spectrum(image: np.ndarray, tile: int = 512) -> np.ndarray:
    """Welch power spectrum ``(tile, tile)``, zero frequency at the centre.

    Overlapping tiles (half a tile apart), each mean-subtracted and Hann-windowed; the
    tile is shrunk to the image's smaller side (even) when the image is smaller.
    """
    image = np.asarray(image, dtype=np.float64)
    tile = min(tile, (min(image.shape) // 2) * 2)
    window = np.outer(np.hanning(tile), np.hanning(tile))
    step = tile // 2
    acc = np.zeros((tile, tile))
    n = 0
    for y in range(0, image.shape[0] - tile + 1, step):
        for x in range(0, image.shape[1] - tile + 1, step):
            patch = image[y : y + tile, x : x + tile]
            patch = (patch - patch.mean()) * window
            acc += np.abs(np.fft.fft2(patch)) ** 2
            n += 1
    return np.fft.fftshift(acc / max(n, 1))


def radial_profile(ps: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotational average of a centred square power spectrum: ``(k Å⁻¹, power)`` up to Nyquist."""
    n = ps.shape[0]
    c = n // 2
    yy, xx = np.indices(ps.shape)
    r = np.hypot(yy - c, xx - c)
    idx = np.round(r).astype(int)
    sums = np.bincount(idx.ravel(), ps.ravel())
    counts = np.bincount(idx.ravel())
    prof = sums[: c + 1] / np.maximum(counts[: c + 1], 1)
    k = np.arange(c + 1) / (n * pixel_size)
    return k[1:], prof[1:]


def _background_subtracted(k: np.ndarray, p: np.ndarray, window: float = 0.012) -> np.ndarray:
    """log power minus its running mean over ``window`` Å⁻¹ (keeps the rings, drops the fall-off)."""
    logp = np.log(np.maximum(p, 1e-30))
    dk = k[1] - k[0]
    half = max(2, int(round(window / dk / 2)))
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    padded = np.pad(logp, half, mode="reflect")
    return logp - np.convolve(padded, kernel, mode="valid")


def fit_band(pixel_size: float) -> tuple[float, float]:
    """Frequency band (Å⁻¹) used to fit and score Thon rings: 1/40 Å⁻¹ to 0.85 Nyquist or 1/4.2 Å⁻¹."""
    return 1 / 40.0, min(0.85 / (2 * pixel_size), 1 / 4.2)


def _ring_inputs(k: np.ndarray, p: np.ndarray, pixel_size: float):
    """Band selection and the background-subtracted log spectrum in it (or None if too few points)."""
    lo, hi = fit_band(pixel_size)
    sel = (k >= lo) & (k <= hi) & (np.abs(k - 1 / 3.7) > 0.02)
    if sel.sum() < 8:
        return None
    return sel, _background_subtracted(k, p)[sel]


def _ring_scores(k: np.ndarray, sel: np.ndarray, r: np.ndarray, defoci: np.ndarray) -> np.ndarray:
    """Correlation of ``r`` with the background-subtracted sin²γ for each defocus (vectorised)."""
    from scipy.ndimage import uniform_filter1d

    from cryoflow.simulate.physics import ctf_1d

    ks = k[sel]
    m = ctf_1d(ks[None, :], VOLTAGE, CS, AMPLITUDE_CONTRAST, defoci[:, None]) ** 2
    half = max(2, int(round(0.012 / (k[1] - k[0]) / 2)))
    m = m - uniform_filter1d(m, 2 * half + 1, axis=1, mode="reflect")
    m = m - m.mean(axis=1, keepdims=True)
    rc = r - r.mean()
    denom = np.sqrt((m**2).sum(axis=1) * (rc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (m @ rc) / denom, np.nan)


def ring_score(k: np.ndarray, p: np.ndarray, defocus: float, pixel_size: float) -> float:
    """Correlation of the background-subtracted radial spectrum with sin²γ in :func:`fit_band`.

    ``k`` (Å⁻¹, evenly spaced) and ``p`` from :func:`radial_profile`; ``defocus`` in Å.
    The 3.7 Å ice ring is left out.
    """
    inputs = _ring_inputs(k, p, pixel_size)
    if inputs is None:
        return float("nan")
    return float(_ring_scores(k, *inputs, np.array([float(defocus)]))[0])


def fit_defocus(
    k: np.ndarray, p: np.ndarray, pixel_size: float, lo: float = 3000.0, hi: float = 50000.0
) -> tuple[float, float]:
    """Defocus (Å) whose sin²γ best matches the radial spectrum's rings, and that correlation.

    A grid search in 25 Å steps between ``lo`` and ``hi`` Å (astigmatism ignored: a
    rotational average). For display and for choosing the simulated defocus only;
    cryoflow's CTF step does the real fit.
    """
    inputs = _ring_inputs(k, p, pixel_size)
    if inputs is None:
        return float("nan"), float("nan")
    grid = np.arange(lo, hi, 25.0)
    scores = _ring_scores(k, *inputs, grid)
    if not np.isfinite(scores).any():
        return float("nan"), float("nan")
    i = int(np.nanargmax(scores))
    return float(grid[i]), float(scores[i])


@dataclass
class Stats:
    """Statistics that tell micrographs apart (see the module docstring)."""

    relative_std: float
    ring_score: float
    ice_ring: float
    falloff: float


def image_stats(image: np.ndarray, k: np.ndarray, p: np.ndarray, defocus: float, pixel_size: float) -> Stats:
    mean = float(np.mean(image))
    rel = float(np.std(image) / mean) if mean != 0 else float("nan")
    ice = float("nan")
    if 1 / 3.7 < 0.95 / (2 * pixel_size):
        ring = np.abs(k - 1 / 3.7) < 0.006
        around = (np.abs(k - 1 / 3.7) > 0.015) & (np.abs(k - 1 / 3.7) < 0.04)
        if ring.any() and around.any():
            ice = float(p[ring].mean() / p[around].mean())
    fall = float("nan")
    k1, k2 = 1 / 20.0, min(1 / 5.0, 0.95 / (2 * pixel_size))
    if k2 > k1 * 1.5:
        a = np.abs(k - k1) < 0.004
        b = np.abs(k - k2) < 0.004
        if a.any() and b.any():
            fall = float(np.log10(p[a].mean() / p[b].mean()))
    return Stats(rel, ring_score(k, p, defocus, pixel_size), ice, fall)


# --- simulation matched to a real micrograph ---------------------------------------------------
def simulate_like(
    shape: tuple[int, int],
    pixel_size: float,
    defocus: float,
    seed: int = 0,
    device: str = "cpu",
    species_specs=None,
    particle_density: float = 2.5e-5,
    ice_thickness: float = 35.0,
    dose: float = 40.0,
):
    """A good micrograph of ``shape`` at ``pixel_size`` Å and ``defocus`` Å (300 kV, Cs 2.7 mm).

    ``particle_density``: particles per Å² of field (2.5e-5: ~60 per 1536 Å field).
    Species default to :data:`REALISM_SPECIES` (7DDO and a 130 Å procedural multimer,
    sizes like the real samples'), with few junk objects.
    """
    from cryoflow.simulate.dataset import make_species
    from cryoflow.simulate.micrograph import MicrographSpec, simulate_micrograph

    specs = tuple(species_specs or REALISM_SPECIES)
    species = make_species(specs, pixel_size, device)
    rng = np.random.default_rng([int(seed), 7])
    astig = rng.uniform(0, 300)
    area = shape[0] * shape[1] * pixel_size**2
    spec = MicrographSpec(
        shape=tuple(shape),
        pixel_size=pixel_size,
        voltage=VOLTAGE,
        cs=CS,
        amplitude_contrast=AMPLITUDE_CONTRAST,
        defocus_u=defocus + astig / 2,
        defocus_v=defocus - astig / 2,
        defocus_angle=float(rng.uniform(0, 180)),
        b_factor=60.0,
        dose=dose,
        ice_thickness=ice_thickness,
        detector="falcon4",
        n_particles=max(1, int(round(particle_density * area))),
        species_weights=tuple(float(s.weight) for s in specs),
        junk_fraction=0.02,
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    return simulate_micrograph(spec, species, device)


def _known(name: str) -> tuple[float, float]:
    """(nominal defocus Å, particle density per Å²) of a real micrograph, by its name."""
    for key, value in KNOWN_MICROGRAPHS.items():
        if name.startswith(key):
            return value["defocus_um"] * 1e4, value["density"]
    return 1.5e4, DEFAULT_DENSITY


def _crop(image: np.ndarray, max_size: int | None) -> np.ndarray:
    if not max_size:
        return image
    h, w = image.shape
    th, tw = min(h, max_size), min(w, max_size)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    return image[y0 : y0 + th, x0 : x0 + tw]


# --- the report ---------------------------------------------------------------------------------
def write_realism_report(
    out_dir: str | os.PathLike,
    real_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    species=None,
    pattern: str = "*.mrc",
    max_size: int | None = 1024,
) -> Path:
    """Write ``report.html`` + ``summary.json`` comparing simulated and real micrographs.

    ``real_dir``: folder of real micrographs (default :func:`default_real_dir`); absent or
    empty gives a report of simulated micrographs only. ``pattern``: which files of it.
    ``max_size``: real micrographs larger than this are cropped (centre) to it, pixels.
    ``species``: :class:`presets.SpeciesSpec` tuple (default: :data:`REALISM_SPECIES`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoflow.io import read_micrograph
    from cryoflow.report import Report
    from cryoflow.report.builder import contrast_stretch

    out = Path(out_dir)
    folder = Path(real_dir) if real_dir else default_real_dir()
    files = sorted(folder.glob(pattern)) if folder and folder.is_dir() else []
    report = Report(
        "Simulator realism",
        step="simulate-realism",
        intro=(
            "Simulated micrographs beside real ones at the same pixel size, shape, voltage (300 kV) and "
            "defocus. If the simulator is realistic, the pairs are hard to tell apart at thumbnail scale "
            "and their power spectra show the same Thon rings, ice ring and fall-off."
        ),
    )
    summary: dict = {"real_dir": str(folder) if folder else None, "pairs": []}
    if not files:
        report.section(
            "No real micrographs",
            f"No real micrographs were found ({folder or DEFAULT_REAL_DIR} is absent or empty); "
            "the simulated micrograph below is shown alone. Pass a folder of real micrographs to compare.",
        )
        size = min(1024, max_size or 1024)
        files_info = [("simulated only", None, 1.5, (size, size))]
    else:
        files_info = []
        for path in files:
            image, apix = read_micrograph(path)
            image = _crop(image, max_size)
            files_info.append((path.name, image, apix, image.shape))

    rows = []
    for name, real, apix, shape in files_info:
        nominal, density = _known(name)
        fitted, score = float("nan"), float("nan")
        if real is not None:
            ps_real = power_spectrum(real)
            k_r, p_r = radial_profile(ps_real, apix)
            # search within 1.5 µm of the nominal value (EPU's is good to a few tenths of a µm)
            fitted, score = fit_defocus(k_r, p_r, apix, lo=max(2000.0, nominal - 15000.0), hi=nominal + 15000.0)
        use = fitted if np.isfinite(score) and score > MIN_RING_SCORE else nominal
        sim = simulate_like(shape, apix, use, seed=seed, device=device, species_specs=species, particle_density=density)
        truth_def = (sim.truth["defocus_u"] + sim.truth["defocus_v"]) / 2
        ps_sim = power_spectrum(sim.image)
        k_s, p_s = radial_profile(ps_sim, apix)
        sim_fit, _ = fit_defocus(k_s, p_s, apix)
        st_sim = image_stats(sim.image, k_s, p_s, truth_def, apix)

        s = report.section(
            f"{name} at {apix:g} Å/px",
            f"Left: the real micrograph ({shape[1]}x{shape[0]} px); right: simulated at the same pixel size "
            f"and a defocus of {use / 1e4:.2f} µm. Below: power spectra.",
        )
        fig, axes = plt.subplots(
            2, 2 if real is not None else 1, figsize=(9 if real is not None else 4.6, 9), squeeze=False
        )
        panels = [("simulated", sim.image, ps_sim)]
        if real is not None:
            panels.insert(0, ("real", real, ps_real))
        for col, (label, img, ps) in enumerate(panels):
            axes[0][col].imshow(contrast_stretch(_display(img)), cmap="gray")
            axes[0][col].set_title(f"{label}: {name}" if label == "real" else "simulated", fontsize=9)
            logps = np.log(ps + 1e-12)
            lo, hi = np.percentile(logps, [5, 99.7])
            axes[1][col].imshow(logps, cmap="gray", vmin=lo, vmax=hi)
            axes[1][col].set_title(f"{label} power spectrum (Nyquist {2 * apix:.2f} Å at the edge)", fontsize=9)
            for a in (axes[0][col], axes[1][col]):
                a.set_xticks([])
                a.set_yticks([])
        fig.tight_layout()
        s.figure(fig, f"{name}: real (left) and simulated (right) micrograph and power spectrum", name=f"pair_{name}")

        fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        curves = [("simulated", k_s, p_s, truth_def, "tab:orange")]
        if real is not None:
            curves.insert(0, ("real", k_r, p_r, use, "tab:blue"))
        for label, k, p, dz, color in curves:
            norm = np.median(p[(k > 1 / 20) & (k < 1 / 8)]) if ((k > 1 / 20) & (k < 1 / 8)).any() else np.median(p)
            axes[0].semilogy(k, p / norm, color=color, lw=1, label=label)
            axes[1].plot(k, _background_subtracted(k, p), color=color, lw=1, label=label)
            from cryoflow.simulate.physics import ctf_zeros

            zeros = ctf_zeros(400, VOLTAGE, CS, AMPLITUDE_CONTRAST, dz)
            zeros = zeros[zeros < k.max()]
            # real zeros on the upper panel, simulated ones on the lower (they coincide when
            # the simulated defocus is the fitted one)
            a = axes[0] if label == "real" else axes[1]
            for j, z in enumerate(zeros):
                a.axvline(
                    z, color=color, ls=":", lw=0.7, label=f"CTF zeros ({label}, {dz / 1e4:.2f} µm)" if j == 0 else None
                )
        axes[1].axvline(1 / 3.7, color="gray", lw=0.8, ls="--", label="3.7 Å (ice)")
        axes[0].set_ylabel("power (normalised)")
        axes[1].set_ylabel("log power minus its running mean")
        axes[1].set_xlabel("spatial frequency (1/Å)")
        axes[0].legend(fontsize=7, ncol=2)
        axes[1].legend(fontsize=7, ncol=2)
        axes[1].set_xlim(0, k_s.max())
        top = axes[0].secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
        ticks = [t for t in (1 / 30, 1 / 15, 1 / 10, 1 / 7, 1 / 5, 1 / 4, 1 / 3, 1 / 2.5, 1 / 2) if t < k_s.max()]
        top.set_xticks(ticks)
        top.set_xticklabels([f"{1 / t:.3g} Å" for t in ticks], fontsize=7)
        fig.tight_layout()
        s.figure(fig, f"{name}: radial power spectra with the theoretical CTF zeros (dotted)", name=f"radial_{name}")

        row = {
            "micrograph": name,
            "pixel size (Å)": apix,
            "nominal defocus (µm)": nominal / 1e4,
            "real: fitted defocus (µm)": fitted / 1e4,
            "real: ring fit score": score,
            "simulated: true defocus (µm)": truth_def / 1e4,
            "simulated: fitted defocus (µm)": sim_fit / 1e4,
            "sim std/mean": st_sim.relative_std,
            "sim ring score": st_sim.ring_score,
            "sim ice ring": st_sim.ice_ring,
            "sim fall-off (log10)": st_sim.falloff,
        }
        if real is not None:
            st_real = image_stats(real, k_r, p_r, use, apix)
            row.update(
                {
                    "real std/mean": st_real.relative_std,
                    "real ring score": st_real.ring_score,
                    "real ice ring": st_real.ice_ring,
                    "real fall-off (log10)": st_real.falloff,
                }
            )
            trusted = "used" if use == fitted else f"not trusted (below {MIN_RING_SCORE}), the nominal value is used"
            s.metric(
                "Fitted defocus of the real micrograph",
                fitted / 1e4,
                "µm",
                f"Nominal (EPU header): {nominal / 1e4:.2f} µm; ring fit correlation {score:.2f}, {trusted}.",
            )
        s.metric(
            "Simulated: true / fitted defocus",
            f"{truth_def / 1e4:.3f} / {sim_fit / 1e4:.3f}",
            "µm",
            "The same 1-D fit on the simulated spectrum recovers the true defocus if the rings sit where the CTF formula puts them.",
        )
        rows.append(row)

    s = report.section(
        "Statistics side by side",
        "std/mean: normalised contrast of the counts (shot noise and specimen contrast; real detectors "
        "record in arbitrary gain, so only the ratio is compared). Ring score: correlation of the "
        "background-subtracted radial spectrum with sin²γ between 1/40 Å⁻¹ and 1/4.2 Å⁻¹ (how strong and "
        "regular the Thon rings are). Ice ring: power at 3.7 Å over its surroundings (1 = no ring). "
        "Fall-off: log10 of the power ratio between 1/20 and 1/5 Å⁻¹ (envelope and detector MTF).",
    )
    s.table([{k: v for k, v in r.items()} for r in rows])
    summary["pairs"] = rows
    return report.write(out, summary=summary)


def _display(image: np.ndarray, size: int = 512) -> np.ndarray:
    """Block-average to about ``size`` pixels across, as a thumbnail is seen."""
    f = max(1, image.shape[1] // size)
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    return image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


__all__ = [
    "default_real_dir",
    "fit_defocus",
    "power_spectrum",
    "radial_profile",
    "ring_score",
    "simulate_like",
    "write_realism_report",
]
