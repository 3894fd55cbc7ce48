"""The CTF step's report: what the fits say about the dataset, for a newcomer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cryoflow.ctf.diagnostics import half_and_half, profile_figure  # noqa: E402
from cryoflow.ctf.estimate import METRIC_DOCS, CtfResult, Settings  # noqa: E402
from cryoflow.report import Report  # noqa: E402

INTRO = (
    "The contrast transfer function (CTF) describes how the microscope's defocus and lens "
    "aberrations modulate each spatial frequency of the image. Its zeros show up as the "
    "Thon rings of the power spectrum. Fitting them gives the defocus of every micrograph, "
    "which later steps need to correct the images, and tells how far in resolution each "
    "micrograph carries information."
)


def histogram(values, xlabel, title, bins=20):
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    ax.hist(values, bins=bins, color="#1f6f8b")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("micrographs")
    ax.set_title(title, fontsize=10)
    return fig


def write_report(
    out: Path,
    mics,
    stems,
    results: list[CtfResult],
    fitted: pd.DataFrame,
    failed: pd.DataFrame,
    optics_table,
    settings: Settings,
) -> dict:
    """Write report.html, figures and summary.json into ``out``; return the summary."""
    n, n_ok = len(results), int(sum(r.ok for r in results))
    report = Report("CTF estimation", step="ctf", intro=INTRO)
    ok = [r for r in results if r.ok]
    defocus = np.array([r.fit.defocus / 1e4 for r in ok])
    astig = np.array([r.fit.astigmatism for r in ok])
    resolution = np.array([r.resolution for r in ok])
    fom = np.array([r.fit.score for r in ok])
    med = lambda a: float(np.median(a)) if len(a) else float("nan")  # noqa: E731

    overview = report.section("Overview", "The numbers a facility checks first.")
    overview.metric("Micrographs", n, "", "Micrographs given to the step.")
    overview.metric("Fitted", n_ok, "", "Micrographs whose Thon rings could be fitted.")
    overview.metric(
        "No fit possible",
        n - n_ok,
        "",
        "Empty holes, pure noise or damaged images: listed below with the reason; not used downstream.",
    )
    overview.metric("Median defocus", med(defocus), "µm", METRIC_DOCS["defocus"])
    overview.metric("Median astigmatism", med(astig), "Å", METRIC_DOCS["astigmatism"])
    overview.metric("Median fit resolution", med(resolution), "Å", METRIC_DOCS["fit_resolution"])
    overview.metric("Median figure of merit", med(fom), "", METRIC_DOCS["figure_of_merit"])
    voltages = ", ".join(f"{v:g}" for v in sorted(set(optics_table["rlnVoltage"])))
    overview.text(
        f"Optics: {voltages} kV, Cs {', '.join(f'{v:g}' for v in sorted(set(optics_table['rlnSphericalAberration'])))} mm, "
        f"amplitude contrast {', '.join(f'{v:g}' for v in sorted(set(optics_table['rlnAmplitudeContrast'])))}. "
        f"Fitting range {settings.low_resolution:g} Å to the resolution the rings reach; defocus searched from "
        f"{settings.defocus_min / 1e4:g} to {settings.defocus_max / 1e4:g} µm."
    )

    if ok:
        dist = report.section(
            "Defocus and astigmatism",
            "How the dataset was collected: the spread of defocus and how well the lens was stigmated.",
        )
        dist.figure(
            histogram(defocus, "defocus (µm)", "Defocus"),
            "Histogram of the mean defocus. A target range set in the acquisition software appears as a plateau.",
        )
        dist.figure(histogram(astig, "astigmatism (Å)", "Astigmatism"), "Histogram of astigmatism (defocus U - V).")

        res = report.section("Fit resolution", METRIC_DOCS["fit_resolution"])
        res.figure(histogram(resolution, "fit resolution (Å)", "Fit resolution"), "Distribution of the fit resolution.")
        fig, ax = plt.subplots(figsize=(7, 2.6))
        order = [i for i, r in enumerate(results) if r.ok]
        ax.plot(order, resolution, "o-", ms=3, lw=0.6, color="#1f6f8b")
        ax.set_xlabel("micrograph (acquisition order)")
        ax.set_ylabel("fit resolution (Å)")
        res.figure(
            fig,
            "Fit resolution per micrograph in acquisition order: drifts or jumps point to changes at the microscope (ice, alignment, stage).",
        )
        fig, ax = plt.subplots(figsize=(4.2, 3))
        ax.scatter(defocus, resolution, s=10, color="#1f6f8b")
        ax.set_xlabel("defocus (µm)")
        ax.set_ylabel("fit resolution (Å)")
        res.figure(
            fig,
            "Defocus against fit resolution: rings fade faster at high defocus, so a trend upwards to the right is expected; outliers are worth a look.",
        )

        ranked = sorted(range(len(results)), key=lambda i: results[i].resolution if results[i].ok else np.inf)
        ranked = [i for i in ranked if results[i].ok]
        best, worst = ranked[:3], ranked[-3:][::-1]
        for title, picks in (("Best fits", best), ("Worst fits", worst)):
            sec = report.section(
                title,
                "Left half of each image: the measured Thon rings (background removed); right half: the fitted CTF. The rings should continue across the centre line. Below: the ring-averaged spectrum against the model, and where the fit stops holding.",
            )
            sec.gallery(
                [half_and_half(results[i]) for i in picks],
                [f"{stems[i]}: {results[i].fit.defocus / 1e4:.3f} µm, {results[i].resolution:.2f} Å" for i in picks],
                name=title,
                size=256,
            )
            for i in picks:
                sec.figure(profile_figure(results[i], stems[i]), f"{stems[i]}: ring-averaged spectrum and fit")

    if len(failed):
        fail = report.section(
            "No fit possible",
            "These micrographs had no Thon rings cryoflow could fit; the bad-micrograph step uses their metrics to give the reason (empty hole, thick ice, ...).",
        )
        fail.table(
            failed[["rlnMicrographName", "cryoflowCtfFailure"]].rename(
                columns={"rlnMicrographName": "micrograph", "cryoflowCtfFailure": "reason"}
            )
        )

    metrics = report.section("Quality metrics", "Every number written to micrographs_ctf.star, and what it means.")
    from cryoflow.ctf.run import COLUMNS

    for metric, column in COLUMNS.items():
        doc = METRIC_DOCS.get(metric) or (
            "ln of the dataset's typical (95th percentile) mean intensity over this micrograph's: relative ice thickness in inelastic mean free paths (~300-350 nm at 300 kV), assuming the same dose for every micrograph; 0 is the thinnest typical ice."
            if metric == "relative_ice_thickness"
            else ""
        )
        values = fitted[column].to_numpy(dtype=float) if column in fitted else np.array([])
        metrics.metric(column, med(values[np.isfinite(values)]) if values.size else float("nan"), "median", doc)
    if len(fitted):
        shown = [
            "rlnMicrographName",
            "rlnDefocusU",
            "rlnDefocusV",
            "rlnDefocusAngle",
            "rlnCtfMaxResolution",
            "rlnCtfFigureOfMerit",
        ]
        metrics.table(fitted[[c for c in shown if c in fitted]], caption="Per-micrograph fits (first 200)")

    from cryoflow.ctf.run import summarize

    summary = summarize(results, failed)
    report.write(out, summary=summary)
    return summary
