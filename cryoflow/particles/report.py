"""Reports of the particle classifier: training (held-out figures) and scoring (clean stack, yield)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoflow.report import Report  # noqa: E402

INTRO_TRAIN = (
    "2D classification judged particles in groups: a particle was kept because its class looked "
    "good. This step teaches a small neural network to make the same call from a single particle "
    "image, using the dataset's own decisions as labels (particles of kept classes against particles "
    "of rejected classes). Once trained it scores new particles directly, so later data need no "
    "2D classification, and it can overrule the class a particle happened to land in: junk hiding in "
    "a good class, or a good particle stuck in a junk class."
)
INTRO_SCORE = (
    "Every particle image gets a score: the classifier's probability that it is a good particle "
    "(what the kept 2D classes held). Particles at or above the threshold form the clean stack "
    "(particles_clean.star with its own .mrcs stacks and a cryoSPARC .cs), ready for 3D work. The "
    "number of good particles per micrograph is the micrograph's yield: the measure of data quality "
    "that matters most downstream, fed back to acquisition."
)


def _hist(ax, values, weights_or_none, label, color):
    ax.hist(values, bins=np.linspace(0, 1, 41), alpha=0.6, label=label, color=color)


def write_train_report(out: Path, model, y_val: np.ndarray, p_val: np.ndarray, x_val, summary: dict) -> dict:
    report = Report("Particle classifier: training", step="particles", intro=INTRO_TRAIN)
    ov = report.section("Overview", "The training in numbers.")
    ov.metric("Images to fit", summary["images_fit"], "", "Particle images the network learned from.")
    ov.metric(
        "Held-out images",
        summary["images_validation"],
        "",
        f"Images of {summary['validation_micrographs']} micrographs never seen in training; the figures below come from them.",
    )
    ov.metric(
        "AUC against the class labels",
        summary["auc_vs_class_labels"],
        "",
        "Probability that a random particle of a kept class scores higher than a random particle of a "
        "rejected class (1: perfect ranking, 0.5: chance). The class labels themselves are imperfect, so "
        "a value near 1 is not expected even for a perfect classifier.",
    )
    ov.metric("Training time", summary["seconds"], "s", "Reading, fitting and validating.")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(np.arange(1, len(summary["losses"]) + 1), summary["losses"], "o-")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss")
    _hist(axes[1], p_val[y_val > 0.5], None, "kept classes", "#3a7")
    _hist(axes[1], p_val[y_val < 0.5], None, "rejected classes", "#c55")
    axes[1].axvline(model.threshold, color="k", ls="--", label="threshold")
    axes[1].set_xlabel("score (held-out micrographs)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    report.section("Learning", "").figure(
        fig,
        "Left: the loss falls as the network learns. Right: scores of held-out particles by the label of "
        "their class; two separated humps mean the network tells them apart.",
        name="training",
    )
    plt.close(fig)
    order = np.argsort(p_val)
    picks = list(order[:8]) + list(order[-8:])
    report.section("Examples", "Held-out particles with the lowest and the highest scores.").gallery(
        [x_val[i, 0].numpy() for i in picks], [f"score {p_val[i]:.2f}" for i in picks], name="examples", size=96
    )
    report.write(out, summary)
    return summary


def write_untrained_report(out: Path, summary: dict) -> dict:
    """Report of a training that had nothing to learn from (one label side empty)."""
    report = Report("Particle classifier: training", step="particles", intro=INTRO_TRAIN)
    ov = report.section("Not trained", summary["reason"] + ".")
    ov.metric("Particles of kept classes", summary["particles_kept_side"], "", "Positives available.")
    ov.metric("Particles of rejected classes", summary["particles_rejected_side"], "", "Negatives available.")
    ov.text(
        "With every particle on one side there is no good/bad contrast to learn. The model file written "
        "is a pass-through: 'cryoflow particles score' keeps every particle with it and says so."
    )
    report.write(out, summary)
    return summary


def write_score_report(out: Path, table, keep, score, threshold, yields, read, summary: dict) -> dict:
    report = Report("Particle classifier: clean stack", step="particles", intro=INTRO_SCORE)
    ov = report.section("Overview", "The clean stack in numbers.")
    ov.metric("Particles scored", summary["particles_in"], "", "Every particle of the input STAR file.")
    ov.metric("Kept particles", summary["particles_kept"], "", "Particles scoring at or above the threshold.")
    ov.metric("Threshold", threshold, "", "Minimum score to keep a particle (the model's own unless --threshold).")
    if summary.get("passed_through"):
        ov.text(f"Not scored: {summary['passed_through']}.")
    ov.metric(
        "Median good particles per micrograph",
        summary["median_good_per_micrograph"],
        "",
        "The yield of a typical micrograph; micrographs_yield.star lists every one.",
    )
    ov.metric("Scoring speed", summary["particles_per_second"] or float("nan"), "particles/s", "Network time only.")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(score[np.isfinite(score)], bins=np.linspace(0, 1, 41), color="#58a")
    axes[0].axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.2f}")
    axes[0].set_xlabel("particle score")
    axes[0].set_ylabel("particles")
    axes[0].legend(fontsize=8)
    axes[1].hist(yields["cfGoodParticles"], bins=30, color="#3a7")
    axes[1].set_xlabel("good particles per micrograph")
    axes[1].set_ylabel("micrographs")
    fig.tight_layout()
    report.section("Scores and yield", "").figure(
        fig,
        "Left: particle scores with the threshold. Right: good particles per micrograph; micrographs far "
        "below the others are worth a look (and tell acquisition where not to collect).",
        name="scores",
    )
    plt.close(fig)
    rng = np.random.default_rng(0)
    kept, rej = np.flatnonzero(keep), np.flatnonzero(~keep)
    for title, idx in (("Kept examples", kept), ("Rejected examples", rej)):
        if len(idx):
            pick = np.sort(rng.choice(idx, min(12, len(idx)), replace=False))
            images = read(pick)
            report.section(title, "Random particles (contrast-stretched).").gallery(
                list(images),
                [f"score {score[i]:.2f}" if np.isfinite(score[i]) else "not scored" for i in pick],
                name=title,
                size=96,
            )
    report.section("Micrographs", "Yield per micrograph, lowest first.").table(
        yields.sort_values("cfGoodParticles").head(50).to_dict("records")
    )
    report.write(out, summary)
    return summary
