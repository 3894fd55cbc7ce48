"""The classify2d report: class gallery by size, distribution, convergence, example particles."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoflow.report import Report  # noqa: E402

INTRO = (
    "2D classification sorts the particle images into groups that show the same thing: the same "
    "kind of particle seen from the same direction. Every particle is compared with every class "
    "average at every in-plane rotation and at small shifts, weighing each possibility by how "
    "likely it is given the noise (maximum likelihood, as RELION does); the class averages are then "
    "rebuilt from the particles that belong to them, corrected for the microscope's contrast "
    "transfer function (CTF). Averaging hundreds of noisy images makes the particle visible: "
    "sharp, detailed classes hold good particles; blurry or odd-looking classes gather junk "
    "(ice, contamination, empty picks, overlapping or off-centre particles), which the next step "
    "(class selection) removes."
)


def _gallery_order(counts: np.ndarray) -> np.ndarray:
    return np.argsort(-counts, kind="stable")


def write_report(out: Path, parts, clf, state, rec, summary: dict, model_classes: dict) -> dict:
    """Write report.html, figures and summary.json into ``out``; return the summary."""
    counts = np.asarray(model_classes["cfParticleCount"])
    res = np.asarray(model_classes["rlnEstimatedResolution"], dtype=float)
    acc_rot = np.asarray(model_classes["rlnAccuracyRotations"], dtype=float)
    images = state.images.cpu().numpy()
    K = len(counts)
    history = state.history
    report = Report("2D classification", step="classify2d", intro=INTRO)

    ov = report.section("Overview", "The run in numbers.")
    ov.metric("Particles", summary["particles"], "", "Particle images classified (all of particles.star).")
    ov.metric(
        "Classes",
        K,
        "",
        "Number of class averages (K). Chosen from the number of particles (about one class per 400) "
        "unless --classes was given. More classes separate finer differences of view but each average "
        "then holds fewer particles and is noisier.",
    )
    ov.metric(
        "Iterations",
        summary["iterations"],
        "",
        "Rounds of comparing particles with classes and rebuilding the classes.",
    )
    ov.metric(
        "Mask diameter",
        summary["mask_diameter_angstrom"],
        "Å",
        f"Diameter of the soft circular mask applied to particles and classes ({summary['mask_diameter_source']}). "
        "It hides the noise around the particle.",
    )
    ov.metric(
        "Median class resolution",
        summary["median_resolution_angstrom"] if summary["median_resolution_angstrom"] is not None else float("nan"),
        "Å",
        "The finest detail (in Å) at which a class average still holds more signal than noise (its spectral "
        "signal-to-noise ratio stays above 1; RELION's estimated resolution of a 2D class). Few particles or "
        "particles that do not belong together (junk, mixed views) make it coarser. "
        "Smaller is better; the smallest possible is twice the pixel size "
        f"({2 * summary['pixel_size_angstrom']:.2f} Å).",
    )
    ov.metric(
        "Mean maximum probability",
        summary["mean_max_probability"],
        "",
        "For each particle, the probability of its single best (class, rotation, shift) among all tried "
        "(RELION's rlnMaxValueProbDistribution). Near 1: particles are assigned confidently; near 0: the "
        "data are too noisy to tell (typical of small particles or junk).",
    )
    ov.metric("Time", summary["seconds"], "s", f"Wall-clock time of the whole run on {summary['device']}.")

    order = _gallery_order(counts)
    gal = report.section(
        "Class averages",
        "Sorted by the number of particles, largest first. Captions: class number, particles, resolution.",
    )
    shown = [k for k in order if counts[k] > 0][:100]
    gal.gallery(
        [images[k] for k in shown],
        [f"class {k + 1}: {counts[k]} ptcls, {res[k]:.1f} Å" for k in shown],
        name="classes",
        size=128,
    )

    dist = report.section(
        "Class distribution",
        "How the particles spread over the classes. A few very large blurry classes often gather junk; "
        "empty classes were re-seeded during the run and may stay small.",
    )
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(np.arange(1, K + 1), counts[order], color="#1f6f8b")
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel("particles")
    dist.figure(fig, "Particles per class, largest first.")

    conv = report.section(
        "Convergence",
        "A run has converged when few particles change class between iterations and the log-likelihood "
        "stops rising. The first iterations use random subsets of the particles (mini-batches), the last "
        "ones all of them; the resolution limit rises as the classes sharpen.",
    )
    its = [h["iteration"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    axes[0].plot(its, [h["changed_fraction"] for h in history], "o-", color="#1f6f8b")
    axes[0].set_title("changed class")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylim(0, 1)
    axes[1].plot(its, [h["loglik_per_particle"] for h in history], "o-", color="#c0392b")
    axes[1].set_title("log-likelihood / particle")
    axes[1].set_xlabel("iteration")
    axes[2].plot(its, [h["resolution_limit_angstrom"] for h in history], "o-", label="limit used")
    axes[2].plot(its, [h["median_class_resolution_angstrom"] for h in history], "s-", label="median class")
    axes[2].set_title("resolution (Å)")
    axes[2].set_xlabel("iteration")
    axes[2].legend()
    fig.tight_layout()
    conv.figure(
        fig,
        "Left: fraction of particles whose best class changed since they were last seen. Middle: mean "
        "log-likelihood of a particle (higher is better; it drops when the resolution limit rises, since "
        "more frequencies are compared). Right: resolution limit of the comparison and median class resolution.",
    )
    conv.table(
        [
            {
                "iteration": h["iteration"],
                "particles": h["particles"],
                "limit Å": h["resolution_limit_angstrom"],
                "angles": h["angles"],
                "changed": h["changed_fraction"],
                "log-likelihood": h["loglik_per_particle"],
                "re-seeded": h["reseeded"],
                "seconds": h.get("seconds", float("nan")),
            }
            for h in history
        ]
    )

    if len(shown):
        k = shown[0]
        members = np.flatnonzero(rec.klass == k)
        pick = members[np.argsort(-rec.p_max[members])][:8]
        if len(pick):
            ex = report.section(
                "Example particles",
                f"Eight particles of the largest class ({k + 1}), those assigned most confidently, as extracted "
                "(not rotated). They look like noise: the signal only appears in the average.",
            )
            raw = parts.read(np.sort(pick))
            psi = (np.degrees(-rec.angle[np.sort(pick)]) + 180) % 360 - 180
            ex.gallery(
                [images[k]] + list(raw), ["class average"] + [f"psi {p:.0f}°" for p in psi], name="examples", size=110
            )

    tab = report.section("Classes", "Every class with its numbers (model.star holds the same).")
    tab.table(
        [
            {
                "class": int(k + 1),
                "particles": int(counts[k]),
                "fraction": float(counts[k] / max(counts.sum(), 1)),
                "resolution Å": float(res[k]),
                "rotation accuracy °": float(acc_rot[k]),
            }
            for k in order
        ],
        caption="Rotation accuracy: median spread (circular standard deviation) of a particle's in-plane "
        "angle probability within its class; a few degrees for good classes.",
    )
    report.write(out, summary)
    return summary
