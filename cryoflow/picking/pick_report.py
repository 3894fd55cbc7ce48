"""The pick report: picks over micrographs, picks per micrograph, scores and threshold, the diameter search."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cryoflow.picking.search import (  # noqa: E402
    CORE_CALIBRATION,
    CORE_MIN_COUNT,
    CORE_PERCENTILE,
    SPHERE_CALIBRATION,
    core_calibration,
)
from cryoflow.report import Report  # noqa: E402
from cryoflow.report.builder import contrast_stretch  # noqa: E402

INTRO = (
    "Picking finds the particles on each micrograph. Every parameter a user would otherwise set by eye "
    "is chosen from the data here, and this page shows the evidence: the particle diameter (from how "
    "strongly particles of each size answer a size-tuned filter), the score threshold (from how high pure "
    "noise scores), the distance under which two picks count as one particle, the margin at the edges, "
    "and where not to pick at all (contamination, carbon, holes, thick ice). Scores are in standard "
    "deviations of the noise: a score of 10 means the particle stands out ten times above what noise "
    "alone gives."
)


def _overlay(ax, p, diameter: float) -> None:
    ax.imshow(contrast_stretch(p.thumbnail), cmap="gray", vmin=0, vmax=1)
    b = p.thumbnail_bin
    r = diameter / 2 / (p.pixel_size * b)
    for (y, x), keep in zip(p.yx, p.kept, strict=True):
        colour = "#2ecc40" if keep else "#ff851b"
        ax.add_patch(plt.Circle(((x + 0.5) / b - 0.5, (y + 0.5) / b - 0.5), r, fill=False, lw=0.8, color=colour))
    ax.set_axis_off()
    ax.set_title(f"{Path(p.name).name}: {int(p.kept.sum())} picks", fontsize=7)


def _cnn_section(report, s: dict, picks: list) -> None:
    """Training evidence of the learned picker: what it trained on, the loss curve, the logits."""
    c = s["cnn"]
    ran = s["picker_choice"]["ran"] == "cnn"
    sec = report.section(
        "Learned picker (CNN)",
        "A small convolutional network was trained on this dataset alone, positive-unlabelled (as Topaz trains from "
        "a user's picks, but with no user): the positives are "
        + (
            "the confident picks of the filter (scores inside the middle of the kept picks' range, away from the weak "
            "and the excessively strong, where junk lies)"
            if c["positive_source"] == "confident picks"
            else c["positive_source"]
        )
        + "; the unlabelled set, every candidate peak and random locations, a known share of them particles (the "
        "prior); known negatives are locations half a diameter off a positive (so one particle gets one pick), "
        "peaks on contamination, carbon or holes and above the score ceiling, and synthetic broken particles "
        "(positives with a part replaced by background). Every candidate is first moved to the centre of mass of "
        "the density around it, then re-scored; "
        "those whose logit is not an outlier below the filter's picks (median minus 3 robust standard deviations: "
        f"{c['logit_threshold']}) are kept." + ("" if ran else f" It did not run here: {c['reason']}"),
    )
    sec.metric("Picks (filter alone)", c["blob_picks"], "", "What the filter's threshold and ceiling keep.")
    sec.metric("Picks (CNN)", c["kept"], "", "Candidates the network keeps.")
    sec.metric(
        "Training patches",
        f"{c['positives']} P / {c['unlabelled']} U / {c['negatives']} N",
        "",
        f"From {c['micrographs']} micrographs. Prior (share of particles in the unlabelled set): {c['prior']:.3f}.",
    )
    sec.metric("Training time", c["seconds"], "s", f"{c['steps']} steps of Adam; seed {c['seed']}.")
    if not ran:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    loss = np.asarray(c["loss"], dtype=float)
    ax.plot(loss, lw=0.6, alpha=0.5, label="mini-batch")
    if len(loss) >= 10:
        ax.plot(np.convolve(loss, np.ones(10) / 10, mode="valid"), lw=1.5, label="running mean (10)")
    ax.set_xlabel("step")
    ax.set_ylabel("nnPU loss")
    ax.legend(fontsize=8)
    sec.figure(fig, "Training loss (non-negative PU risk plus the negatives' logistic loss).", name="cnn_loss")
    logits = [p.cnn_scores for p in picks if p.cnn_scores is not None]
    if logits:
        logits = np.concatenate(logits)
        blob = np.concatenate([p.scores >= s["threshold"] for p in picks if p.cnn_scores is not None])
        fig, ax = plt.subplots(figsize=(5, 3))
        bins = np.linspace(np.percentile(logits, 0.5), np.percentile(logits, 99.5), 60)
        ax.hist(logits[blob], bins=bins, alpha=0.7, label="above the filter's threshold")
        ax.hist(logits[~blob], bins=bins, alpha=0.6, label="below it")
        ax.axvline(c["logit_threshold"], color="C3", ls="--", label=f"kept from {c['logit_threshold']:.2f}")
        ax.set_xlabel("CNN logit")
        ax.set_ylabel("candidates")
        ax.legend(fontsize=8)
        sec.figure(fig, "The network's score of every candidate peak.", name="cnn_scores")


def write_pick_report(out: Path, summary: dict, picks: list, evidence, choice) -> Path:
    """Write report.html, figures and summary.json into ``out``."""
    s = summary
    report = Report("Particle picking", step="pick", intro=INTRO)
    ov = report.section("Overview")
    ov.metric("Particles picked", s["particles"], "", "Picks above the threshold, outside excluded regions.")
    ov.metric("Micrographs", s["micrographs"], "")
    counts = np.array(list(s["picks_per_micrograph"].values()) or [0])
    ov.metric(
        "Picks per micrograph (median)",
        float(np.median(counts)),
        "",
        "Few picks on a micrograph that "
        "looked good may mean thick ice or aggregation; many more than the others, junk or crowding.",
    )
    ov.metric("Seconds per micrograph (median)", s["seconds"]["per_micrograph_median"], "s")

    par = report.section(
        "Parameters chosen",
        "Each value below was chosen from the data unless it says 'given'.",
    )
    if s.get("templates"):
        t = s["templates"]
        why = (
            "The particles' cores are elongated, so a round filter would split them: the strong picks, centred on "
            "their cores and turned so their long axes align, were averaged into one oriented template. "
            if s["picker"] == "self-template"
            else ""
        )
        par.metric(
            "Picker",
            "template matching" if s["picker"] == "templates" else "self-template (elongated particles)",
            "",
            f"{why}{t['count']} template(s) from {t['source']}, each at {t['rotations']} in-plane angles, seen "
            "through each micrograph's CTF; each pick records the best template (rlnClassNumber) and angle "
            "(rlnAnglePsi).",
        )
    else:
        par.metric(
            "Picker",
            "blob (template-free)",
            "",
            "A size-tuned centre-surround filter after CTF phase flipping; no reference needed. Once 2D classes exist, "
            "picking again with the good classes as templates (--templates) is the classic next round.",
        )
    par.metric(
        "Particle diameter",
        s["diameter_A"],
        "Å",
        f"{s['diameter_source']}. The particle's largest extent: it sets the extraction box.",
    )
    par.metric(
        "Filter diameter",
        s["filter_diameter_A"],
        "Å",
        "The size the picking filter looks for: a dark disk of about 0.6 of it (the dense core of a particle after "
        "the CTF is corrected and fine detail removed) in a brighter ring. Equal to the diameter for a globular "
        "particle; nearer the width for an elongated one.",
    )
    par.metric(
        "Score threshold",
        s["threshold"],
        "σ",
        f"{s['threshold_source']}. Rule: {s['threshold_search']['rule']}. Expected noise picks above it: "
        f"{s['threshold_search']['expected_noise_picks']:.0f}.",
    )
    par.metric(
        "Score ceiling",
        s["ceiling"],
        "σ",
        f"Picks scoring above twice the median pick are rejected as junk ({s['rejected_too_strong']} here): ice "
        "crystals and dense contaminants scatter much more strongly than protein.",
    )
    junk = s.get("junk_tests")
    if junk:
        if junk["ran"]:
            lo, hi = junk["mass_limits_relative"]
            par.metric(
                "Rejected as junk (per-pick tests)",
                junk["rejected_total"],
                "picks",
                f"Each pick's density against its micrograph's median pick: light (mass below {lo:.2f} x the median: "
                f"broken particles, fragments) {junk['rejected']['light']}, heavy (above {hi:.2f} x: aggregates, ice "
                f"chips, contaminants) {junk['rejected']['heavy']}, dense (peak above "
                f"{junk['peak_limit_relative']:.2f} x: contaminants) {junk['rejected']['dense']}. Every view of an "
                "intact particle holds about the same density; junk does not.",
            )
        else:
            par.metric("Rejected as junk (per-pick tests)", "not run", "", junk["reason"])
    par.metric(
        "Minimum distance",
        s["min_distance_A"],
        "Å",
        "Two peaks closer than this are one particle (the weaker is dropped); touching particles are one diameter "
        "apart. A peak on a stronger one's flank (touching particles, or a bump between particles in a crowded field) "
        f"is a candidate only when it scores at least half the median pick: {s['flank_peaks']['kept']} kept, "
        f"{s['flank_peaks']['dropped']} dropped here.",
    )
    par.metric("Edge margin", s["edge_margin_A"], "Å", "No pick whose centre is closer than this to an edge.")
    excl = np.array(list(s["excluded_fraction"].values()) or [0.0])
    par.metric(
        "Area excluded (mean)",
        round(100 * float(excl.mean()), 1),
        "%",
        "Regions whose intensity differs from the micrograph's by more than 8% (contamination, carbon and thick "
        "ice are darker, holes brighter), widened by a particle radius.",
    )

    if s.get("cnn"):
        _cnn_section(report, s, picks)

    if evidence is not None:
        sec = report.section(
            "Diameter search",
            "A filter matched to a uniform sphere of each candidate diameter runs over a few micrographs; the response "
            "is the mean score of the strongest quarter of its peaks. The curve peaks where the sphere best matches "
            f"the particles' projected density, which for globular particles is about {SPHERE_CALIBRATION} of their "
            f"largest extent; the diameter is the peak divided by {SPHERE_CALIBRATION}. Elongated or flat particles come out smaller than their length.",
        )
        fig, ax = plt.subplots(figsize=(5, 3))
        d = np.array(evidence.diameters)
        c = np.array([np.nan if v is None else v for v in evidence.curve])
        ax.semilogx(d, c, "o-", ms=3)
        peak = evidence.sphere_diameter * SPHERE_CALIBRATION
        ax.axvline(peak, color="C3", ls="--", label=f"peak {peak:.0f} Å -> {evidence.sphere_diameter:.0f} Å")
        ax.set_xlabel("sphere filter diameter (Å)")
        ax.set_ylabel("response (σ)")
        ax.legend(fontsize=8)
        sec.figure(fig, f"Response against diameter on {evidence.micrographs} micrographs.", name="diameter_search")
        if len(evidence.candidates) > 1 or not evidence.confirmed:
            maxima = ", ".join(f"{d:.0f}" for d in evidence.candidates)
            sec.text(
                f"The curve's maxima, highest first, as particle diameters: {maxima} Å. A filter matched to the "
                "particles finds many strong picks; on few particles the highest maximum may come from a few "
                f"contaminants or ice and carbon features instead. The first maximum whose filter finds at least "
                f"{CORE_MIN_COUNT} strong picks is taken: "
                + (
                    f"{evidence.sphere_diameter:.0f} Å."
                    if evidence.confirmed
                    else "none does, so the highest is kept, unconfirmed: check it, or give --diameter."
                )
            )
        if evidence.core_axes:
            sec.text(
                "The sphere filter sees a rotationally averaged particle. The diameter is then refined from the strong "
                "picks themselves: the long axis of each pick's dense core is measured (a particle seen side-on shows "
                f"its full length, end-on its width), and the {CORE_PERCENTILE}th percentile of those lengths, divided "
                f"by {core_calibration(evidence.elongation):.2f} (calibrated on simulated particles: "
                f"{CORE_CALIBRATION['round']} for round cores, {CORE_CALIBRATION['rod']} for rod-like ones, "
                f"between them by the cores' elongation, here {evidence.elongation:.2f}), is the diameter. With fewer than "
                f"{CORE_MIN_COUNT} measurable cores the sphere filter's value is kept."
            )
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.hist(evidence.core_axes, bins=30)
            ax.axvline(
                np.percentile(evidence.core_axes, CORE_PERCENTILE),
                color="C3",
                ls="--",
                label=f"{CORE_PERCENTILE}th percentile",
            )
            ax.set_xlabel("core long axis (Å)")
            ax.set_ylabel("picks")
            ax.legend(fontsize=8)
            sec.figure(fig, f"Long axes of {len(evidence.core_axes)} strong picks' cores.", name="core_axes")

    sec = report.section(
        "Scores and threshold",
        "Histogram of the scores of every candidate peak, and of the peaks that pure noise gives with the same filter "
        "on the same micrographs. Above the threshold, noise peaks are rare.",
    )
    scores = np.concatenate([p.scores for p in picks]) if picks else np.zeros(0)
    null = np.concatenate([p.null for p in picks]) if picks else np.zeros(0)
    fig, ax = plt.subplots(figsize=(5, 3))
    top = max(float(np.percentile(scores, 99.5)) if len(scores) else 10.0, s["threshold"] + 2)
    bins = np.linspace(0, top, 60)
    ax.hist(scores, bins=bins, alpha=0.7, label="candidate peaks")
    ax.hist(null, bins=bins, alpha=0.6, label="noise peaks (simulated)")
    ax.axvline(s["threshold"], color="C3", ls="--", label=f"threshold {s['threshold']:.1f}")
    ax.set_xlabel("score (noise σ)")
    ax.set_ylabel("peaks")
    ax.legend(fontsize=8)
    sec.figure(fig, "Candidate and noise peak scores.", name="scores")

    sec = report.section("Picks per micrograph")
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(np.arange(len(counts)), counts, width=1.0)
    ax.set_xlabel("micrograph (input order)")
    ax.set_ylabel("picks")
    sec.figure(fig, "Picks on each micrograph.", name="picks_per_micrograph")

    shown = [p for p in picks if p.thumbnail is not None]
    if shown:
        sec = report.section(
            "Picks on micrographs",
            "Green: picks kept; orange: candidates rejected (below the threshold or above the ceiling). Circles have "
            "the filter diameter.",
        )
        cols = 3
        rows = int(np.ceil(len(shown) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows))
        for ax in np.atleast_1d(axes).ravel():
            ax.set_axis_off()
        for ax, p in zip(np.atleast_1d(axes).ravel(), shown, strict=False):
            _overlay(ax, p, s["filter_diameter_A"])
        sec.figure(fig, "Micrographs (binned) with their picks.", name="overlays", dpi=100)
    return report.write(out, summary)
