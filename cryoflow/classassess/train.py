"""Training the class scorer (``cryoflow classassess train``).

Examples are classification folders with known labels: simulated datasets made by
:mod:`~cryoflow.classassess.examples` (truth from the simulator), and/or a user's own
classifications labelled by hand (``--labels``: a STAR or CSV file with columns
``folder``/``class``/``good``, or classassess output folders whose
``classes_selected.star`` carries the user's ``--keep``/``--reject`` decisions). Datasets,
not classes, are split into folds (cross-fitting, see :func:`train_scorer`), so the
validation figures are for datasets the model never saw.

Fitting: both linear parts (scikit-learn logistic regression, L2 with ``C`` =
:data:`LINEAR_C`, balanced classes), the
CNN (AdamW, one-cycle schedule, rotations/flips, contrast and noise augmentation), then
the stacking on the validation datasets. ``finetune`` starts the CNN from a given model's
weights and refits the linear parts on old + new examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoflow.classassess.features import FEATURES, class_features
from cryoflow.classassess.inputs import read_classes
from cryoflow.classassess.model import VARIANTS, ClassCNN, ClassScorer, Linear, Variant, cnn_input, symmetries


@dataclass
class Examples:
    """Class examples: features ``(N, F)``, images ``(N, SIZE, SIZE)``, ``radius`` ``(N,)``,
    ``good`` ``(N,)`` bool, ``junk`` share ``(N,)``, ``dataset`` index ``(N,)``, ``particles``."""

    features: np.ndarray
    images: np.ndarray
    radius: np.ndarray
    good: np.ndarray
    junk: np.ndarray
    dataset: np.ndarray
    particles: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.good)

    def subset(self, mask: np.ndarray) -> Examples:
        return Examples(
            self.features[mask],
            self.images[mask],
            self.radius[mask],
            self.good[mask],
            self.junk[mask],
            self.dataset[mask],
            self.particles[mask],
            self.names,
        )


def labelled_classes(folder: Path):
    """``(ClassSet, truth)`` of a labelled folder: a classassess output (labels: its decisions,
    user overrides included) or a simulated classification (labels: the simulator's truth)."""
    import json

    import pandas as pd

    from cryoflow.classassess.examples import class_truth
    from cryoflow.io import read_blocks

    folder = Path(folder)
    if (folder / "classes_selected.star").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        source = Path(summary["final_classes_path"])
        cs = read_classes(source if source.is_absolute() else folder / source)
        rows = read_blocks(folder / "classes_selected.star")["classes"]
        good = rows["cfSelected"].to_numpy(int) > 0
        count = cs.table["count"].fillna(1).to_numpy(int)
        truth = pd.DataFrame(
            {"class": rows["rlnClassNumber"], "particles": count, "junk": np.where(good, 0.0, 1.0), "good": good}
        )
        return cs, truth
    cs = read_classes(folder)
    return cs, class_truth(cs)


def load_examples(folders: list[Path], min_particles: int = 1) -> Examples:
    """Read labelled folders (see :func:`labelled_classes`) into :class:`Examples`."""
    parts = []
    for i, folder in enumerate(folders):
        cs, truth = labelled_classes(folder)
        feats, images, radius = class_features(cs)
        keep = truth["particles"].to_numpy() >= min_particles
        parts.append(
            (
                feats[keep],
                images[keep],
                np.full(keep.sum(), radius),
                truth["good"].to_numpy()[keep],
                truth["junk"].to_numpy()[keep],
                np.full(keep.sum(), i),
                truth["particles"].to_numpy()[keep],
            )
        )
    cat = [np.concatenate(x) for x in zip(*parts, strict=True)]
    return Examples(*cat, names=[str(f) for f in folders])


#: inverse L2 strength of the linear parts. With ~30 correlated features and ~1000 classes
#: from ~50 datasets, stronger shrinkage generalizes better to unseen datasets: 0.3 once beat
#: 1.0 (and 0.1, 3, 10); re-measured after the particle statistics and ``twin_classes`` were
#: added (leave-datasets-out, stacked with the out-of-fold CNN of 4 seeds): log-loss 0.1121
#: (C = 0.1) vs 0.1134 (0.2), 0.1146 (0.3); AUC 0.9871 vs 0.9863 (0.3); 0.05 lost accuracy
LINEAR_C = 0.1


def fit_linear(x: np.ndarray, y: np.ndarray, C: float = LINEAR_C) -> Linear:
    from sklearn.linear_model import LogisticRegression

    mean = np.nanmean(x, 0)
    scale = np.nanstd(x, 0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0)
    lin = Linear(mean, scale, np.zeros(x.shape[1]), 0.0)
    z = lin.z(x)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit(z, y.astype(int))
    lin.coef = model.coef_[0].astype(float)
    lin.intercept = float(model.intercept_[0])
    return lin


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 8, (1,), generator=gen))
    x = symmetries(x)[k]
    # small continuous rotation, contrast and noise on the image channel
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * (np.pi / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    img = torch.nn.functional.grid_sample(x[:, :1], grid, align_corners=False, padding_mode="zeros")
    gain = torch.exp(torch.randn(n, 1, 1, 1, generator=gen) * 0.15)
    noise = torch.randn(img.shape, generator=gen) * 0.15 * torch.rand(n, 1, 1, 1, generator=gen)
    return torch.cat([img * gain + noise * x[:, 1:2], x[:, 1:2]], 1)


def fit_cnn(ex: Examples, epochs: int = 40, seed: int = 0, cnn: ClassCNN | None = None, log=print) -> ClassCNN:
    """The CNN on class averages (starting from ``cnn``'s weights when given: fine-tuning)."""
    from cryoflow.models.fit import fit_binary

    x = cnn_input(ex.images, ex.radius)
    net, _ = fit_binary(
        lambda: cnn or ClassCNN(),
        x,
        ex.good,
        _augment,
        epochs,
        lr=2e-3,
        batch=64,
        seed=seed,
        log=log,
        every=10,
        name="classassess train: CNN",
    )
    return net


def fit_stack(lin: np.ndarray, cnn: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=10.0, max_iter=1000).fit(np.stack([lin, cnn], 1), y.astype(int))
    return float(m.coef_[0, 0]), float(m.coef_[0, 1]), float(m.intercept_[0])


def figures(p: np.ndarray, ex: Examples) -> dict:
    """Class-level figures of scores ``p`` against the truth of ``ex``."""
    from sklearn.metrics import roc_auc_score

    call = p >= 0.5
    good = ex.good.astype(bool)
    big = ex.particles >= 20
    out = {
        "classes": int(len(p)),
        "datasets": int(len(np.unique(ex.dataset))),
        "accuracy": float((call == good).mean()),
        "accuracy_20_particles_or_more": float((call[big] == good[big]).mean()) if big.any() else float("nan"),
        "particle_weighted_accuracy": float(((call == good) * ex.particles).sum() / max(ex.particles.sum(), 1)),
        "good_recall": float(call[good].mean()) if good.any() else float("nan"),
        "bad_recall": float((~call[~good]).mean()) if (~good).any() else float("nan"),
    }
    if 0 < good.sum() < len(good):
        out["auc"] = float(roc_auc_score(good, p))
    return out


def train_scorer(
    folders: list[Path],
    epochs: int = 40,
    folds: int = 4,
    seed: int = 0,
    base: ClassScorer | None = None,
    log=print,
) -> ClassScorer:
    """Fit a :class:`ClassScorer` on labelled classification folders (see the module doc).

    Cross-fitting by dataset: the datasets are split into ``folds``; each fold is scored by
    linear parts and a CNN fitted on the other folds, so every class gets an out-of-fold
    score from models that never saw its dataset. The stacking (and the validation figures)
    come from those out-of-fold scores; the shipped linear parts and CNN are then refitted
    on all datasets.
    """
    ex = load_examples(folders)
    n_sets = len(folders)
    folds = max(2, min(folds, n_sets))
    order = np.random.default_rng(seed).permutation(n_sets)
    fold_of_set = np.empty(n_sets, int)
    fold_of_set[order] = np.arange(n_sets) % folds
    fold = fold_of_set[ex.dataset]
    log(f"classassess train: {len(ex)} classes from {n_sets} datasets, {folds}-fold cross-fitting by dataset")
    oof_cnn = np.zeros(len(ex))
    oof_lin = {name: np.zeros(len(ex)) for name in VARIANTS}
    for f in range(folds):
        train, test = fold != f, fold == f
        part = ex.subset(train)
        cnn = fit_cnn(part, epochs=epochs, seed=seed + f, cnn=_copy(base.cnn) if base is not None else None, log=log)
        oof_cnn[test] = ClassScorer({}, cnn).cnn_logit(ex.images[test], ex.radius[test])
        for name, feats in VARIANTS.items():
            cols = [FEATURES.index(c) for c in feats]
            oof_lin[name][test] = fit_linear(part.features[:, cols], part.good).logit(ex.features[test][:, cols])
    cnn = fit_cnn(ex, epochs=epochs, seed=seed, cnn=_copy(base.cnn) if base is not None else None, log=log)
    scorer = ClassScorer({}, cnn)
    for name, feats in VARIANTS.items():
        cols = [FEATURES.index(c) for c in feats]
        a, b, c = fit_stack(oof_lin[name], oof_cnn, ex.good)
        v = Variant(tuple(feats), fit_linear(ex.features[:, cols], ex.good), a, b, c)
        p = 1 / (1 + np.exp(-(a * oof_lin[name] + b * oof_cnn + c)))
        v.validation = figures(p, ex)
        v.validation["linear_only_accuracy"] = float(((oof_lin[name] > 0) == ex.good).mean())
        v.validation["cnn_only_accuracy"] = float(((oof_cnn > 0) == ex.good).mean())
        scorer.variants[name] = v
        log(
            f"classassess train: {name} (out-of-fold): "
            + ", ".join(f"{k} {x:.3f}" for k, x in v.validation.items() if isinstance(x, float))
        )
    scorer.meta = {
        "datasets": n_sets,
        "folds": folds,
        "classes": int(len(ex)),
        "good_classes": int(ex.good.sum()),
        "epochs": epochs,
        "seed": seed,
    }
    return scorer


def _copy(module):
    import copy

    return copy.deepcopy(module)


def save_with_card(scorer: ClassScorer, out: str | os.PathLike, card: str | os.PathLike | None, command: str) -> None:
    """Save the model and (optionally) write its model card."""
    scorer.save(out)
    if card is None:
        return
    from cryoflow.io import write_text

    lines = [
        "# classassess: good-class scoring model",
        "",
        "Trained with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Training data",
        "",
        f"- {scorer.meta.get('datasets')} simulated datasets (`cryoflow.classassess.examples`, ranges `TRAIN`): "
        "particle stacks from `cryoflow.simulate.simulate_stack` (1-3 species: PDB 7DDO and procedural globular, "
        "elongated, ring and multimer particles; junk of every kind: empty picks, contamination blobs, ice/carbon "
        "edges, off-centre particles, aggregates; 10-50% junk) classified by `cryoflow classify2d`.",
        "- Label of a class: good when fewer than half of its particles are junk (the simulator's truth).",
        f"- {scorer.meta.get('classes')} classes ({scorer.meta.get('good_classes')} good); the stacking and the figures "
        f"below come from {scorer.meta.get('folds')}-fold cross-fitting by dataset (each class scored by models that "
        "never saw its dataset).",
        "",
        "## Model",
        "",
        "- Logistic regression (L2, C = "
        f"{LINEAR_C}) on the standardized features (`full`: image + metadata + the class's particle statistics; "
        "`image`: image only, for bare stacks), a CNN on the 64² average (4 strided convolutions, "
        f"{sum(p.numel() for p in scorer.cnn.parameters())} parameters, {scorer.meta.get('epochs')} epochs), "
        "stacked and calibrated on held-out datasets.",
        "",
        "## Validation (out-of-fold: datasets unseen by the models that scored them)",
        "",
        "| variant | " + " | ".join(next(iter(scorer.variants.values())).validation) + " |",
        "|---|" + "---|" * len(next(iter(scorer.variants.values())).validation),
    ]
    for name, v in scorer.variants.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in v.validation.values())
            + " |"
        )
    lines += ["", "## Features", ""]
    from cryoflow.classassess.features import EXPLAIN

    lines += [f"- `{f}`: {EXPLAIN[f]}" for f in FEATURES]
    write_text(card, "\n".join(lines) + "\n")
