"""Diagnostic images of a CTF fit: the spectrum with the fit overlaid half-and-half, and the profile."""

from __future__ import annotations

import numpy as np

from cryoflow.ctf.estimate import CtfResult


def half_and_half(result: CtfResult) -> np.ndarray:
    """A ``(T, T)`` image: left the measured Thon rings, right the fitted CTF² (as CTFFIND shows).

    The measured half is the background-subtracted amplitude spectrum, scaled to the
    fitted model's range ring by ring is not attempted: it is contrast-stretched as a whole,
    the model (``-cos 2χ``) fills the right half so the rings can be followed across the
    vertical centre line.
    """
    signal, model = result.signal, result.model
    t = signal.shape[0]
    data = signal.copy()
    finite = np.isfinite(data)
    lo, hi = np.percentile(data[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    data = np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1)
    fit = (model + 1) / 2
    # rows run from -ky to +ky; columns of the half plane are kx >= 0
    left = data[::-1, ::-1]  # point-mirrored half plane: kx <= 0
    right = fit
    image = np.concatenate([left, right], axis=1)
    # blank the very centre, dominated by the background
    yy, xx = np.mgrid[:t, : image.shape[1]]
    r = np.hypot(yy - t / 2, xx - image.shape[1] / 2)
    image[r < 0.03 * t] = 0.5
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
