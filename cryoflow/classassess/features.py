"""What a class average and its metadata say about the class: the features of the class scorer.

Every average is first brought to a common frame (:func:`standard_images`): Fourier
resampled to :data:`SIZE` ² over its full box, then normalized by the mean and standard
deviation inside the mask. The mask radius is the dataset's (the mask diameter of the
classification, or, for a bare stack, the radius beyond which every average is flat); the
particle occupies about 90% of it.

Image features (the ideas of RELION's Class Ranker, computed our way):

- an automatic mask of the protein: the average low-passed to ~1/8 of the mask
  diameter, thresholded at 1 σ above the solvent; its area (fraction of the mask disk),
  how far its centroid sits from the centre, its elongation, how many separate pieces it
  has, how much of it touches the mask edge (partial and off-centre particles, carbon
  and ice edges, aggregates);
- density moments: contrast of the protein over the solvent, skewness and kurtosis
  inside the protein, the solvent's roughness relative to the protein, the ring just
  inside the mask edge;
- the radial profile (mean density in four shells): a protein is dense at the centre and
  falls to the solvent level before the mask edge; an empty or noise class is flat;
- detail: the share of the power at 1/3-1 of the mask's spatial frequencies over the
  low frequencies (a sharp protein vs a smooth blob), and circular symmetry (the share
  of the power in the rotational average: ~1 for a featureless round blob).

Metadata features (NaN when the source has none; they then add no evidence):
log particle count and the class's size relative to the dataset's median class,
resolution over the dataset's best class, resolution over the Nyquist limit, rotational
and translational accuracy (the latter over the mask radius), mean max probability, and
how widely its particles spread over the micrographs; and three statistics of the class's
particles as the classification left them (the evidence of the particles, not of their
average, so it holds for a small class whose average is too noisy to judge): how well
they fit (median log-likelihood contribution, standardized over the dataset's particles,
so a dataset's SNR and box do not move it), how far they had to be shifted (RMS offset
over the mask radius: a real particle is picked near its centre, junk is matched
anywhere), and the share of them whose best assignment was unsure (max probability
< 0.2). Measured on the training datasets (leave-datasets-out): these three raise the
linear part's accuracy from 0.94 to 0.95.

Per dataset (:data:`CONTEXT`): ``twin_classes``, how many other classes show the same
projection (rotation-invariant correlation of the low-passed averages; see :func:`twin_classes`).

Per dataset (:data:`RELATIVE`): detail, contrast, confidence and rotational accuracy also
relative to the dataset's typical class (minus the particle-weighted median), since SNR,
particle size and junk share move every class of a dataset together (measured: on held-out
datasets most good classes called bad came from one low-SNR dataset whose classes all had
low detail and low assignment confidence).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoflow.classassess.inputs import ClassSet

SIZE = 64
IMAGE_FEATURES = (
    "mask_area",
    "mask_offset",
    "mask_elongation",
    "mask_pieces",
    "mask_at_edge",
    "contrast",
    "protein_skew",
    "protein_kurtosis",
    "solvent_roughness",
    "edge_ring",
    "radial_1",
    "radial_2",
    "radial_3",
    "radial_4",
    "detail",
    "circularity",
    "detail_vs_dataset",
    "contrast_vs_dataset",
    "twin_classes",
)
META_FEATURES = (
    "log_count",
    "relative_size",
    "resolution_vs_best",
    "resolution_vs_nyquist",
    "accuracy_rotation",
    "accuracy_translation",
    "max_probability",
    "micrograph_spread",
    "log_likelihood_vs_dataset",
    "shift_rms",
    "low_probability",
    "max_probability_vs_dataset",
    "accuracy_rotation_vs_dataset",
)
#: features also given relative to the dataset: minus the median over its classes (weighted by particles)
RELATIVE = {
    "detail_vs_dataset": "detail",
    "contrast_vs_dataset": "contrast",
    "max_probability_vs_dataset": "max_probability",
    "accuracy_rotation_vs_dataset": "accuracy_rotation",
}
#: features of a class that need the dataset's other classes (computed in :func:`class_features`)
CONTEXT = ("twin_classes",)
#: width of the similarity scale of :func:`twin_classes` (a class at correlation 1 - TWIN_TAU counts 1/e)
TWIN_TAU = 0.05
FEATURES = IMAGE_FEATURES + META_FEATURES
EXPLAIN = {
    "mask_area": "area of the protein mask (fraction of the mask disk)",
    "mask_offset": "distance of the protein's centre from the box centre (fraction of the mask radius)",
    "mask_elongation": "elongation of the protein mask (long over short axis)",
    "mask_pieces": "separate pieces in the protein mask",
    "mask_at_edge": "share of the protein mask touching the mask edge",
    "contrast": "protein density over the solvent (in solvent standard deviations)",
    "protein_skew": "skewness of the density inside the protein",
    "protein_kurtosis": "kurtosis of the density inside the protein",
    "solvent_roughness": "solvent standard deviation over the protein's",
    "edge_ring": "mean density in the ring just inside the mask edge",
    "radial_1": "mean density at 0-25% of the mask radius",
    "radial_2": "mean density at 25-50% of the mask radius",
    "radial_3": "mean density at 50-75% of the mask radius",
    "radial_4": "mean density at 75-100% of the mask radius",
    "detail": "power at fine detail over power at low resolution",
    "circularity": "share of the power in the rotational average (1: a featureless round blob)",
    "log_count": "ln of the number of particles",
    "relative_size": "particles over the dataset's median class (ln)",
    "resolution_vs_best": "estimated resolution over the dataset's best class",
    "resolution_vs_nyquist": "estimated resolution over the Nyquist limit",
    "accuracy_rotation": "rotational accuracy (degrees)",
    "accuracy_translation": "translational accuracy (fraction of the mask radius)",
    "max_probability": "mean probability of the particles' best assignment",
    "micrograph_spread": "micrographs holding the class's particles over those expected",
    "log_likelihood_vs_dataset": "how well its particles fit (median log-likelihood, in the dataset's deviations)",
    "shift_rms": "how far its particles were shifted to fit (RMS, fraction of the mask radius)",
    "low_probability": "share of its particles with an unsure class assignment",
    "detail_vs_dataset": "fine detail compared with this dataset's typical class",
    "contrast_vs_dataset": "contrast compared with this dataset's typical class",
    "max_probability_vs_dataset": "assignment confidence compared with this dataset's typical class",
    "accuracy_rotation_vs_dataset": "rotational accuracy compared with this dataset's typical class",
    "twin_classes": "other classes showing the same projection (soft count, ln(1 + n), rotation-invariant correlation)",
}


def resample(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Fourier crop or pad ``(K, B, B)`` to ``(K, size, size)`` (same field of view)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    b = x.shape[-1]
    if b == size:
        return x.numpy().copy()
    f = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    out = torch.zeros((x.shape[0], size, size), dtype=f.dtype)
    n = min(b, size)
    sb, so = (b - n) // 2 + (b % 2 if b > size else 0), (size - n) // 2 + (size % 2 if size > b else 0)
    out[:, so : so + n, so : so + n] = f[:, sb : sb + n, sb : sb + n]
    y = torch.fft.ifft2(torch.fft.ifftshift(out, dim=(-2, -1))).real * (size * size) / (b * b)
    return y.numpy()


def _radius_grid(size: int) -> np.ndarray:
    c = size // 2
    y, x = np.mgrid[:size, :size]
    return np.hypot(y - c, x - c)


def mask_radius(cs: ClassSet, images64: np.ndarray) -> float:
    """Mask radius in pixels of the :data:`SIZE` grid: from the classification's diameter, else
    the radius beyond which the averages are flat (classes come masked), else 0.45 of the box."""
    scale = SIZE / cs.images.shape[-1]
    if cs.diameter and np.isfinite(cs.diameter):
        return float(min(cs.diameter / 2 / cs.pixel_size * scale, SIZE / 2 - 1))
    r = _radius_grid(SIZE)
    shells = np.arange(SIZE // 2)
    level = np.array([np.abs(images64[:, (r >= s) & (r < s + 1)]).mean() for s in shells])
    inside = level > 0.05 * level[: SIZE // 4].mean()
    flat = np.flatnonzero(~inside[SIZE // 8 :])
    return float(SIZE // 8 + flat[0]) if len(flat) else 0.45 * SIZE


def standard_images(cs: ClassSet) -> tuple[np.ndarray, float]:
    """``(K, SIZE, SIZE)`` averages, zero mean and unit variance inside the mask; and the mask radius (px)."""
    img = resample(cs.images)
    radius = mask_radius(cs, img)
    inside = _radius_grid(SIZE) <= radius
    vals = img[:, inside]
    mean = vals.mean(1)[:, None, None]
    std = vals.std(1)[:, None, None]
    out = (img - mean) / np.where(std > 0, std, 1.0)
    out[:, ~inside] = 0.0
    return out.astype(np.float32), radius


def _lowpass(images: np.ndarray, sigma_px: float) -> np.ndarray:
    f = np.fft.fft2(images)
    ky = np.fft.fftfreq(images.shape[-1])
    k2 = ky[:, None] ** 2 + ky[None, :] ** 2
    return np.fft.ifft2(f * np.exp(-2 * math.pi**2 * sigma_px**2 * k2)).real


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= max(4, 0.05 * sizes.max())).sum())


def image_features(images: np.ndarray, radius: float) -> np.ndarray:
    """:data:`IMAGE_FEATURES` (those not :data:`RELATIVE` or :data:`CONTEXT`) of standardized averages ``(K, SIZE, SIZE)``."""
    r = _radius_grid(SIZE)
    inside = r <= radius
    c = SIZE // 2
    yy, xx = np.mgrid[:SIZE, :SIZE] - c
    smooth = _lowpass(images, max(1.0, radius / 8))
    out = np.zeros((len(images), len([f for f in IMAGE_FEATURES if f not in RELATIVE and f not in CONTEXT])))
    # power by frequency shell, for detail and circularity
    f = np.abs(np.fft.fftshift(np.fft.fft2(images), axes=(-2, -1))) ** 2
    fr = _radius_grid(SIZE)
    k_mask = SIZE / (2 * radius)  # frequency (in pixels of the DFT) of one cycle over the mask diameter
    low = (fr >= 0.5 * k_mask) & (fr < 2.5 * k_mask)
    fine = (fr >= 2.5 * k_mask) & (fr < min(SIZE / 2, 8 * k_mask))
    for i, (im, sm) in enumerate(zip(images, smooth, strict=True)):
        solvent_ref = sm[inside & (r > 0.85 * radius)]
        base, spread = np.median(sm[inside]), sm[inside].std() + 1e-9
        protein = inside & (sm > base + 0.5 * spread)
        if protein.sum() < 4:
            protein = inside & (sm >= np.quantile(sm[inside], 0.8))
        solvent = inside & ~protein
        area = protein.sum() / inside.sum()
        w = np.clip(sm, 0, None) * protein
        total = w.sum() + 1e-9
        cy, cx = (w * yy).sum() / total, (w * xx).sum() / total
        dy, dx = yy - cy, xx - cx
        cov = np.array([[(w * dy * dy).sum(), (w * dy * dx).sum()], [(w * dy * dx).sum(), (w * dx * dx).sum()]])
        ev = np.sort(np.linalg.eigvalsh(cov / total))
        elong = math.sqrt(max(ev[1], 1e-9) / max(ev[0], 1e-9))
        edge = protein & (r > 0.85 * radius)
        pv = im[protein]
        sv = im[solvent] if solvent.sum() > 4 else im[inside]
        s_std = sv.std() + 1e-9
        pz = (pv - pv.mean()) / (pv.std() + 1e-9)
        shells = [
            im[inside & (r >= a * radius) & (r < b * radius)].mean()
            for a, b in ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
        ]
        p_low, p_fine = f[i][low].sum(), f[i][fine].sum()
        # circularity: power of the rotationally averaged image over the image's power (in the mask)
        ring_mean = np.zeros_like(im)
        ri = np.floor(r).astype(int)
        means = np.bincount(ri[inside], weights=im[inside]) / np.maximum(np.bincount(ri[inside]), 1)
        ring_mean[inside] = means[ri[inside]]
        circ = float((ring_mean[inside] ** 2).sum() / ((im[inside] ** 2).sum() + 1e-9))
        out[i] = (
            area,
            math.hypot(cy, cx) / radius,
            elong,
            _components(protein),
            edge.sum() / max(protein.sum(), 1),
            (pv.mean() - sv.mean()) / s_std,
            (pz**3).mean(),
            (pz**4).mean(),
            s_std / (pv.std() + 1e-9),
            float(solvent_ref.mean()) if len(solvent_ref) else 0.0,
            *shells,
            math.log((p_fine + 1e-9) / (p_low + 1e-9)),
            circ,
        )
    return out


def rotational_similarity(images: np.ndarray, radius: float, n_angles: int = 128) -> np.ndarray:
    """``(K, K)`` correlation of every pair of standardized averages at their best in-plane
    rotation (no mirror: a mirrored 2D class is another view), inside the mask, after the
    low-pass of the protein mask (radius/8, so a small class's noise does not hide its twin).

    Polar resampling (1-pixel rings, ``n_angles`` angles, each ring weighted by its
    circumference), then the correlation over all rotations at once by FFT along the angle."""
    from scipy.ndimage import map_coordinates

    if len(images) == 0:
        return np.zeros((0, 0))
    smooth = _lowpass(images, max(1.0, radius / 8))
    c = SIZE // 2
    rings = np.arange(1, max(2, int(radius)) + 1)
    theta = np.arange(n_angles) * 2 * math.pi / n_angles
    yy = (c + rings[:, None] * np.sin(theta)[None]).ravel()
    xx = (c + rings[:, None] * np.cos(theta)[None]).ravel()
    polar = np.stack([map_coordinates(im, [yy, xx], order=1).reshape(len(rings), n_angles) for im in smooth])
    polar = (polar - polar.mean((1, 2), keepdims=True)) * np.sqrt(rings)[None, :, None]
    spectra = np.fft.rfft(polar, axis=2)
    norm = np.sqrt((polar**2).sum((1, 2))) + 1e-9
    cross = np.fft.irfft(np.einsum("irf,jrf->ijf", spectra.conj(), spectra), n=n_angles, axis=2)
    return cross.max(2) / (norm[:, None] * norm[None, :])


def twin_classes(images: np.ndarray, radius: float, counts: np.ndarray) -> np.ndarray:
    """``(K,)`` how many other classes (that hold particles) show the same projection:
    ``ln(1 + Σ_j exp(-(1 - s_kj) / TWIN_TAU))`` over the rotation-invariant correlations
    ``s_kj`` (:func:`rotational_similarity`).

    Why: a true particle's views fill several classes (a view split over near-identical
    classes, or classes that differ by little), junk (noise, ice, carbon, aggregates) is mostly
    one of a kind; on the training datasets the nearest other class of a good class
    correlates 0.96 on average, of a bad class 0.70. It helps most where the particles'
    assignment statistics cannot: where every class is unsure (low
    rlnMaxValueProbDistribution). Measured there (held-out set 1001, its classification
    re-run with the E-step's posterior split into class and pose): the particles are sure of
    their class (posterior of the best class 0.965, of the runner-up 0.035); what is unsure
    is their in-plane angle and shift within it (0.33 of the probability on the best pose;
    0.09 for junk), so the probability is not shared between twins, and the max probability
    of a blurred class of clean particles can look like junk's. Measured on the training
    datasets (leave-datasets-out, 4 CNN seeds): out-of-fold log-loss 0.1168 -> 0.1146, AUC
    0.9860 -> 0.9863, linear part alone 0.952 -> 0.954 (at ``LINEAR_C`` 0.3)."""
    k = len(images)
    if k < 2:
        return np.zeros(k)
    s = rotational_similarity(images, radius)
    np.fill_diagonal(s, -np.inf)
    present = ~(np.isfinite(counts) & (counts <= 0))
    s[:, ~present] = -np.inf
    return np.log1p(np.exp(-(1 - np.clip(s, -1, 1)) / TWIN_TAU).sum(1))


def meta_features(cs: ClassSet, radius_px: float) -> np.ndarray:
    """:data:`META_FEATURES` (those not :data:`RELATIVE`) from the class table; NaN where the source had nothing."""
    t = cs.table
    count = t["count"].to_numpy(float)
    res = t["resolution"].to_numpy(float)
    out = np.full((len(t), len([f for f in META_FEATURES if f not in RELATIVE])), np.nan)
    out[:, 0] = np.log1p(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        median = np.nanmedian(count) if np.isfinite(count).any() else np.nan
        out[:, 1] = np.log((count + 1) / (median + 1))
        best = np.nanmin(res[count >= 0.5 * median]) if np.isfinite(res[count >= 0.5 * median]).any() else np.nan
        out[:, 2] = res / best
        out[:, 3] = res / (2 * cs.pixel_size)
    out[:, 4] = t["accuracy_rotation"].to_numpy(float)
    radius_a = radius_px * cs.pixel_size * cs.images.shape[-1] / SIZE
    out[:, 5] = t["accuracy_translation"].to_numpy(float) / radius_a
    out[:, 6] = t["max_probability"].to_numpy(float)
    out[:, 7] = t["micrograph_spread"].to_numpy(float)
    out[:, 8] = t["log_likelihood"].to_numpy(float)
    out[:, 9] = t["shift"].to_numpy(float) / radius_a
    out[:, 10] = t["low_probability"].to_numpy(float)
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values)
    if not ok.any():
        return np.nan
    v, w = values[ok], weights[ok]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, 0.5 * cum[-1])])


def class_features(cs: ClassSet) -> tuple[np.ndarray, np.ndarray, float]:
    """``(features (K, len(FEATURES)), standardized images (K, SIZE, SIZE), mask radius px)``."""
    images, radius = standard_images(cs)
    feats = np.full((len(cs), len(FEATURES)), np.nan)
    image_cols = [FEATURES.index(f) for f in IMAGE_FEATURES if f not in RELATIVE and f not in CONTEXT]
    meta_cols = [FEATURES.index(f) for f in META_FEATURES if f not in RELATIVE]
    feats[:, image_cols] = image_features(images, radius)
    feats[:, meta_cols] = meta_features(cs, radius)
    counts = cs.table["count"].to_numpy(float)
    feats[:, FEATURES.index("twin_classes")] = twin_classes(images, radius, counts)
    weights = np.where(np.isfinite(counts), counts, 1.0)
    for name, base in RELATIVE.items():
        col = feats[:, FEATURES.index(base)]
        feats[:, FEATURES.index(name)] = col - _weighted_median(col, weights)
    return feats, images, radius
