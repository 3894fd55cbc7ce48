"""The classassess report: class gallery with decisions, score histogram and threshold, evidence."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoflow.report import Report  # noqa: E402

INTRO = (
    "2D class averages show what the particles of each class have in common. Good classes look like "
    "a protein: a compact, centred density with internal detail, sharp at the resolution of the data, "
    "fed by many particles spread over many micrographs, whose in-plane angles and shifts were found "
    "confidently. Bad classes gather junk: empty picks (flat noise), contamination (dark round blobs), "
    "ice or carbon edges (a density running across the box), off-centre or partial particles, and "
    "overlapping particles (aggregates). This step scores each class with a model trained on class "
    "averages whose truth is known (simulated data through the same 2D classification): a score is "
    "the probability that most of the class's particles are true particles. Classes above the "
    "threshold are kept; their particles form particles_selected.star."
)


def write_report(out: Path, cs, scores: dict, sel, evidence: list[str], summary: dict) -> dict:
    p = scores["p_good"]
    counts = cs.table["count"].to_numpy(float)
    has_counts = np.isfinite(counts).any()
    report = Report("2D class selection", step="classassess", intro=INTRO)

    ov = report.section("Overview", "The decision in numbers.")
    ov.metric("Classes", len(cs), "", f"Class averages assessed (source: {cs.source}, {cs.path}).")
    ov.metric(
        "Kept classes", int(sel.keep.sum()), "", "Classes whose score reached the threshold, plus user overrides."
    )
    if summary.get("particles_in"):
        ov.metric(
            "Kept particles",
            summary["particles_kept"],
            "",
            f"Particles of the kept classes, of {summary['particles_in']} in the first round; they are in "
            "particles_selected.star, the others in particles_rejected.star.",
        )
    ov.metric(
        "Threshold",
        sel.threshold,
        "",
        f"Minimum score to keep a class ({sel.threshold_source}). Scores are calibrated probabilities: 0.5 "
        "makes the fewest mistakes; the adaptive rule moves it (within 0.25-0.75) to the emptiest part of "
        "this dataset's score distribution.",
    )
    ov.metric(
        "Features used",
        ", ".join(summary["features_available"]),
        "",
        "What the scores rest on. Class averages alone (a bare stack) give image features only; a "
        "classify2d or RELION folder adds particle counts, resolution, alignment accuracy and how the "
        "particles spread over micrographs.",
    )
    for note in sel.notes:
        ov.text(f"Note: {note}.")

    order = np.argsort(-counts if has_counts else -p, kind="stable")
    gal = report.section(
        "Classes",
        "Every class average, largest first: class number, particles, score and decision. "
        "Green-bordered captions are not available in a static gallery, so the decision is spelled out.",
    )
    images = scores["images"]
    gal.gallery(
        [images[k] for k in order],
        [
            f"#{k + 1} {'' if not has_counts else f'{int(counts[k])} p, '}score {p[k]:.2f} {sel.decision[k]}"
            for k in order
        ],
        name="classes",
        size=110,
    )

    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = np.where(np.isfinite(counts), counts, 1.0)
    bins = np.linspace(0, 1, 21)
    ax.hist(
        [p[sel.keep], p[~sel.keep]],
        bins=bins,
        weights=[w[sel.keep], w[~sel.keep]],
        stacked=True,
        color=["#3a7", "#c55"],
        label=["kept", "rejected"],
    )
    ax.axvline(sel.threshold, color="k", ls="--", label=f"threshold {sel.threshold:.2f}")
    ax.set_xlabel("class score (probability that the class is good)")
    ax.set_ylabel("particles" if has_counts else "classes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    hist = report.section("Scores", "How the scores of this dataset are distributed.")
    hist.figure(
        fig,
        "Class scores weighted by particles. A clean separation (two groups far from the threshold) means "
        "an easy decision; classes near the threshold are the ones to look at.",
        name="scores",
    )
    plt.close(fig)

    ev = report.section(
        "Why",
        "For each class, the evidence that pushed its score most towards its decision (in units of "
        "log-odds: +2 makes a class about 7 times more likely to be good). Look at the rejected "
        "classes first.",
    )
    ev.table(
        [
            {
                "class": int(k + 1),
                "particles": int(counts[k]) if np.isfinite(counts[k]) else "-",
                "score": float(p[k]),
                "decision": sel.decision[k],
                "evidence": evidence[k],
            }
            for k in np.argsort(p)
        ],
        caption="Sorted by score, lowest first.",
    )
    if len(summary["history"]) > 1:
        rs = report.section("Rounds", "Each round reclassifies the kept particles and assesses the new classes.")
        rs.table(
            [
                {
                    "round": h["round"],
                    "classes": h["classes"],
                    "kept classes": h["kept_classes"],
                    "particles": h["particles"],
                    "kept particles": h["kept_particles"],
                    "threshold": h["threshold"],
                }
                for h in summary["history"]
            ]
        )
    report.write(out, summary)
    return summary
