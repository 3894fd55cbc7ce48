"""Diagnostic images of a CTF fit: the spectrum with the fit overlaid half-and-half, and the profile."""

from __future__ import annotations

import numpy as np

from cryoflow.ctf.estimate import CtfResult


def half_and_half(result: CtfResult) -> np.ndarray:
    """A square image: left the measured Thon rings, right the fitted CTF² (as CTFFIND shows).

    Both halves are cropped to the frequencies that matter (up to 1.25 x the fit resolution,
    at most Nyquist), so the rings are large enough to follow. The measured half is the
    background-subtracted amplitude spectrum divided by its r.m.s. in each ring, so faint
    outer rings show as clearly as the strong inner ones; the fitted model (``-cos 2χ``)
    fills the right half, and the rings should continue across the vertical centre line.
    The centre, below the fitting range, is grey.
    """
    signal, model, k = result.signal, result.model, result.k
    t = signal.shape[0]
    k_nyquist = float(np.abs(k[:, -1]).max())
    k_show = min(k_nyquist, 1.25 / result.resolution) if np.isfinite(result.resolution) else k_nyquist
    half = max(8, int(round(t / 2 * k_show / k_nyquist)))
    rows = slice(t // 2 - half, t // 2 + half)
    cols = slice(0, half)
    data, fit, kk = signal[rows, cols].astype(np.float64), model[rows, cols], k[rows, cols]
    # ring-wise normalisation of the measured half
    bins = np.minimum((kk / k_show * 64).astype(int), 63)
    rms = np.sqrt(
        np.bincount(bins.ravel(), weights=(data**2).ravel(), minlength=64)
        / np.maximum(np.bincount(bins.ravel(), minlength=64), 1)
    )
    data = data / np.maximum(rms[bins], 1e-30)
    data = np.clip((data + 2.5) / 5.0, 0, 1)
    right = (fit + 1) / 2
    left = data[::-1, ::-1]  # point-mirrored half plane: kx <= 0
    image = np.concatenate([left, right], axis=1)
    image[np.concatenate([kk[::-1, ::-1], kk], axis=1) < result.fit.k_min] = 0.5
    return image.astype(np.float32)


def profile_figure(result: CtfResult, title: str = ""):
    """Matplotlib figure: equiphase average and fitted model against resolution, fit limit marked."""
    import matplotlib.pyplot as plt

    p = result.profile
    fig, ax = plt.subplots(figsize=(7, 2.6))
    data = p.data.copy()
    finite = np.isfinite(data)
    scale = np.nanstd(data) or 1.0
    ax.plot(p.k, data / scale, lw=0.8, color="#1f6f8b", label="spectrum (ring average)")
    ax.plot(p.k, p.model * 1.5, lw=0.8, color="#d1495b", alpha=0.8, label="fitted CTF² (shape)")
    ax.plot(p.k, np.nan_to_num(p.cc, nan=0) * 3 + 4.5, lw=1.0, color="#2e7d32", label="local fit correlation")
    if np.isfinite(result.resolution):
        ax.axvline(1 / result.resolution, color="k", ls="--", lw=0.8)
        ax.text(1 / result.resolution, 6.2, f" fit to {result.resolution:.2f} Å", fontsize=8)
    ticks = ax.get_xticks()
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{1 / t:.1f}" if t > 0 else "" for t in ticks])
    ax.set_xlim(p.k[finite].min() if finite.any() else 0, p.k.max())
    ax.set_xlabel("resolution (Å)")
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="lower left", ncol=3)
    ax.set_title(title, fontsize=9)
    return fig
