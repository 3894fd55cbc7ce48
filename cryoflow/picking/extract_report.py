"""The extract report: counts per micrograph, particles dropped at edges, the box chosen and why, a gallery."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoflow.report import Report  # noqa: E402

INTRO = (
    "Extraction cuts a square box around every picked particle, so that the next steps (2D "
    "classification, 3D) work on small images instead of whole micrographs. Each box has its "
    "contrast inverted (particles white, as RELION and cryoSPARC expect), is optionally binned "
    "(Fourier cropping: fewer pixels, same field of view) and phase flipped, and is normalized so "
    "that the background around the particle has mean 0 and standard deviation 1. Particles whose "
    "box would leave the micrograph are dropped."
)


def write_report(out: Path, summary: dict, gallery: list, captions: list[str], average: np.ndarray) -> dict:
    """Write report.html, figures and summary.json into ``out``; return ``summary``."""
    s = summary
    report = Report("Particle extraction", step="extract", intro=INTRO)
    ov = report.section("Overview", "What was extracted and how fast.")
    ov.metric("Particles", s["n_particles"], "", "Particle images written to the stacks and particles.star.")
    ov.metric("Micrographs", s["micrographs_with_particles"], "", "Micrographs that gave at least one particle.")
    ov.metric(
        "Dropped at edges",
        s["dropped_at_edges"],
        "",
        f"Picks closer than half a box ({s['window'] // 2} micrograph pixels) to an edge: their box would "
        "leave the micrograph, so they are dropped (as RELION does).",
    )
    if s["unmatched_coordinates"]:
        ov.metric(
            "Coordinates without micrograph",
            s["unmatched_coordinates"],
            "",
            "Picks whose micrograph is not in the micrographs STAR file (for example rejected by micassess); skipped.",
        )
    if s["skipped_no_ctf"]:
        ov.metric(
            "Skipped (no CTF fit)",
            s["skipped_no_ctf"],
            "",
            "Micrographs without a CTF fit: 2D classification, phase flipping and 3D need the defocus.",
        )
    ov.metric(
        "Particles per second",
        s["particles_per_second"],
        "/s",
        f"Reading, cutting, processing, writing on {s['device']}.",
    )

    box = report.section(
        "Box and binning",
        "The box must hold the particle and the signal the CTF spreads around it, while staying small enough to be fast.",
    )
    box.metric("Box", s["box"], "px", f"Output image size. Rule: {s['box_rule']}.")
    box.metric("Binning", s["bin"], "x", "Fourier binning factor (1: none).")
    box.metric("Window", s["window"], "px", "Micrograph pixels cut around each particle before binning.")
    box.metric("Pixel size", s["pixel_size"], "Å", "Pixel size of the particle images (rlnImagePixelSize).")
    if s.get("diameter_A"):
        box.metric("Particle diameter", s["diameter_A"], "Å", f"From {s['diameter_source'] or 'the input'}.")
    box.metric(
        "Background radius",
        s["bg_radius_px"],
        "px",
        "Pixels farther than this from the centre (a circle of 0.75 x box, RELION's default) are the background: "
        + ("a fitted plane is subtracted, then " if s["ramp_removed"] else "")
        + "they are scaled to mean 0, standard deviation 1.",
    )
    box.metric(
        "Phase flipped",
        "yes" if s["phase_flipped"] else "no",
        "",
        "Phase flipping multiplies each image's Fourier transform by the sign of its CTF, so that all "
        "frequencies have positive contrast (rlnCtfDataArePhaseFlipped).",
    )
    box.metric(
        "Stored as",
        s.get("dtype", "float32"),
        "",
        "Number type of the stacks: float32 (MRC mode 2) for every program; float16 (mode 12) takes half the disk "
        "and is read by RELION 4+ and cryoSPARC 4+, not RELION 3.1.",
    )

    counts = report.section("Particles per micrograph", "Extracted and dropped particles of every micrograph.")
    per = s["per_micrograph"]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    idx = np.arange(len(per))
    ax.bar(idx, [r["extracted"] for r in per], color="#1f6f8b", label="extracted")
    ax.bar(
        idx,
        [r["dropped_at_edges"] for r in per],
        bottom=[r["extracted"] for r in per],
        color="#c0392b",
        label="dropped at edges",
    )
    ax.set_xlabel("micrograph")
    ax.set_ylabel("particles")
    ax.legend()
    counts.figure(fig, "Particles per micrograph: extracted (blue) and dropped at the edges (red).")
    counts.table(per, columns=["micrograph", "picked", "extracted", "dropped_at_edges", "skipped"])

    gal = report.section(
        "Gallery",
        "A few extracted particles (white on a grey background after inversion) and the average of all of them: "
        "centred picks give a bright, round average; a dark or off-centre one means a wrong contrast or offset.",
    )
    gal.gallery([average], [f"average of {s['n_particles']} particles"], name="average", size=192)
    if gallery:
        gal.gallery(list(gallery), captions, name="particles", size=96)
    report.write(out, summary=summary)
    return summary
