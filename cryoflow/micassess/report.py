"""The micassess report: counts per reason, P(good) histogram, galleries with their evidence."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cryoflow.micassess.features import FEATURE_DOCS, REASON_DOCS, REASONS  # noqa: E402
from cryoflow.report import Report  # noqa: E402

INTRO = (
    "Some micrographs are not worth processing: empty holes, ice too thick or crystalline, "
    "contamination, the carbon film, drift, or a CTF too poor to use. This step gives every "
    "micrograph a calibrated probability of being good (out of 100 micrographs given 0.8, about "
    "80 are good) from two models combined: a logistic model on the CTF step's quality metrics "
    "and simple image statistics, whose reasoning can be read feature by feature, and a small "
    "neural network that looks at the micrograph (at 4 Å/pixel), combined by a calibrated stacking "
    "that lets each reason take its evidence where it is. A "
    "micrograph below the threshold is rejected with the most likely reason and the evidence "
    "that drove the call."
)


def _spectrum_image(path: Path, pixel_size: float) -> np.ndarray:
    """Log power spectrum (centred, 256²) of a micrograph, for display."""
    import torch

    from cryoflow.io import read_micrograph
    from cryoflow.micassess.features import welch_spectrum

    image, _ = read_micrograph(path, pixel_size=pixel_size)
    t = torch.tensor(image)
    power, _ = welch_spectrum(t, pixel_size, float(t.mean()))
    full = torch.cat([power.flip(1)[:, :-1], power], 1)  # mirror the half plane
    full = torch.fft.fftshift(full, dim=0)
    return np.log(full.numpy() + 1e-12)


def write_report(out: Path, table: pd.DataFrame, rows, pred, smalls, threshold, how, model, seconds, device) -> dict:
    """Write report.html, figures and summary.json into ``out``; return the summary."""
    from cryoflow.micassess.run import COLUMNS

    n = len(table)
    reasons = list(pred.reason)
    counts = {r: reasons.count(r) for r in REASONS}
    n_good = counts["good"]
    fitted = np.array([bool(r["_fitted"]) for r in rows])
    good_no_ctf = int(sum(1 for r, f in zip(reasons, fitted, strict=True) if r == "good" and not f))
    report = Report("Bad-micrograph detection", step="micassess", intro=INTRO)

    ov = report.section("Overview", "How many micrographs pass, and where the line was drawn.")
    ov.metric("Micrographs", n, "", "Micrographs assessed (CTF fitted and not).")
    ov.metric("Good", n_good, "", "Written to micrographs_good.star for the next steps.")
    ov.metric("Rejected", n - n_good, "", "Written to micrographs_rejected.star with the reason.")
    ov.metric(
        "Threshold",
        threshold,
        "P(good)",
        f"Chosen: {how}. A micrograph with a lower probability of being good is rejected; "
        "re-run with --threshold to move it (the histogram below shows what would change).",
    )
    ov.metric("Seconds per micrograph", seconds / max(n, 1), "s", f"Reading, features and both models, on {device}.")
    if good_no_ctf:
        ov.text(
            f"{good_no_ctf} micrograph(s) look good but have no CTF fit (weak Thon rings): they are kept in "
            "micrographs_good.star with the CTF columns empty; steps that need the defocus skip them."
        )
    sec = report.section("Reasons", "Rejected micrographs by their most likely reason.")
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.barh(list(REASONS)[::-1], [counts[r] for r in REASONS][::-1], color="#1f6f8b")
    ax.set_xlabel("micrographs")
    sec.figure(fig, "Micrographs per reason (good included).")
    sec.table([{"reason": r, "micrographs": counts[r], "meaning": REASON_DOCS[r]} for r in REASONS])

    hist = report.section(
        "Probability of being good",
        "A well-separated dataset shows two piles, near 0 and near 1; micrographs in between are the borderline ones shown below.",
    )
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(pred.p_good, bins=20, range=(0, 1), color="#1f6f8b")
    ax.axvline(threshold, color="#c0392b", ls="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("P(good)")
    ax.set_ylabel("micrographs")
    ax.legend()
    hist.figure(fig, "Histogram of P(good) with the threshold.")

    names = [Path(str(r["rlnMicrographName"])).stem for r in rows]
    rejected = [i for i in np.argsort(pred.p_good) if reasons[i] != "good"][:24]
    if rejected:
        gal = report.section(
            "Rejected micrographs",
            "Each micrograph (at 4 Å/pixel, contrast stretched) beside its power spectrum, with the reason, P(good) "
            "and the three inputs that pushed the call most (log-odds against 'good'; 'cnn' is the image network).",
        )
        _gallery(gal, rejected, rows, names, pred, smalls, "rejected")
        gal.table(
            table.iloc[rejected][
                ["rlnMicrographName", COLUMNS["p_good"], COLUMNS["reason"], COLUMNS["detail"], COLUMNS["evidence"]]
            ],
            caption="The rejected micrographs (lowest P(good) first, up to 24).",
        )
    border = list(np.argsort(np.abs(pred.p_good - threshold))[: min(8, n)])
    border = [i for i in border if abs(pred.p_good[i] - threshold) < 0.35]
    if border:
        b = report.section(
            "Borderline cases",
            "The micrographs closest to the threshold: worth a look by eye; label some and fine-tune with "
            "'cryoflow micassess train --labels ...' if the calls here are wrong for your data.",
        )
        _gallery(b, border, rows, names, pred, smalls, "borderline")
    feats = report.section("What the model reads", "The inputs of the logistic model (the network sees the image).")
    feats.table([{"feature": k, "meaning": v} for k, v in FEATURE_DOCS.items()])
    val = (model.meta or {}).get("validation") or {}
    if val:
        feats.text(
            f"Validation of this model on held-out simulated sessions ({val.get('micrographs')} micrographs): "
            f"good/bad accuracy {val.get('good_bad_accuracy', float('nan')):.3f}; recall per reason: "
            + ", ".join(f"{k} {v:.2f}" for k, v in val.get("recall_per_reason", {}).items())
            + ". See cryoflow/models/micassess.md (model card)."
        )
    from cryoflow.micassess.run import summarize

    summary = summarize(rows, pred, threshold, how, model, seconds)
    report.write(out, summary=summary)
    return summary


def _gallery(section, picks, rows, names, pred, smalls, name):
    images, captions = [], []
    for i in picks:
        images.append(np.asarray(smalls[i], dtype=np.float32))
        captions.append(
            f"{names[i]}: {pred.reason[i] if pred.reason[i] != 'good' else 'good'}"
            f"{' (' + pred.detail[i] + ')' if pred.detail[i] not in (pred.reason[i],) else ''}, "
            f"P(good) {pred.p_good[i]:.2f}; {pred.evidence[i].replace(',', ', ')}"
        )
        try:
            images.append(_spectrum_image(Path(rows[i]["_path"]), rows[i]["_apix"]))
        except Exception:  # the display is optional; the call is made
            images.append(np.zeros((16, 16), np.float32))
        captions.append(f"{names[i]}: power spectrum")
    section.gallery(images, captions, name=name, size=180)
