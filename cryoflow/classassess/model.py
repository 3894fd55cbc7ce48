"""The class scorer: a logistic model on the class features, a small CNN on the average, combined.

- Linear parts: logistic regression (scikit-learn at training time) on the standardized
  :data:`~cryoflow.classassess.features.FEATURES` (``full``) and on the image features
  alone (``image``, for class averages that come with no metadata). Missing values
  standardize to 0: no evidence either way. Stored as tensors; the contribution of a
  feature to a decision is exactly ``coef_f * z_f`` (what the report lists).
- CNN (:class:`ClassCNN`): the standardized 64² average and the mask disk; four strided
  convolutions, mean + max pooling inside the mask, one logit. Rotations and flips of a
  class average are the same class, so training augments with them and prediction
  averages the logit over the 8 rotations/flips of the square.
- Combination (per variant): ``σ(a · logit_linear + b · logit_cnn + c)`` with ``a, b, c``
  fitted on held-out datasets by log-loss (stacking and calibration in one), so the score
  is a calibrated probability that the class is good.

A model file is a dict of tensors, strings and numbers (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryoflow.classassess.features import FEATURES, IMAGE_FEATURES, SIZE
from cryoflow.errors import CryoflowError

FORMAT = "cryoflow-classassess-1"
VARIANTS = {"full": FEATURES, "image": IMAGE_FEATURES}


class ClassCNN(nn.Module):
    """``(N, 2, SIZE, SIZE)`` (average, mask) -> logit ``(N,)`` that the class is good."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout, k=3):
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(block(2, w, 5), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.head = nn.Sequential(nn.Linear(8 * w, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        mask = nn.functional.adaptive_max_pool2d(x[:, 1:2], f.shape[-2:])
        mean = (f * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)
        peak = (f * mask - 1e4 * (1 - mask)).amax((2, 3))
        return self.head(torch.cat([mean, peak], 1)).squeeze(1)


def cnn_input(images: np.ndarray, radius: float | np.ndarray) -> torch.Tensor:
    """Standardized averages ``(K, SIZE, SIZE)`` + the mask disk (radius: one, or one per
    average) -> ``(K, 2, SIZE, SIZE)``."""
    c = SIZE // 2
    y, x = np.mgrid[:SIZE, :SIZE]
    r = np.broadcast_to(np.asarray(radius, dtype=float), (len(images),))
    disk = (np.hypot(y - c, x - c)[None] <= r[:, None, None]).astype(np.float32)
    out = np.stack([np.clip(images, -6, 6), disk], 1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of a square batch."""
    out = []
    for flip in (False, True):
        y = x.flip(-1) if flip else x
        out += [torch.rot90(y, k, (-2, -1)) for k in range(4)]
    return out


@dataclass
class Linear:
    """Standardization + binary logistic regression; missing values count as the mean."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (F,)
    intercept: float

    def z(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((x - self.mean) / self.scale, -5, 5)
        return np.where(np.isfinite(z), z, 0.0)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return self.z(x) @ self.coef + self.intercept


@dataclass
class Variant:
    """A linear part and its stacking with the CNN."""

    features: tuple[str, ...]
    linear: Linear
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0
    validation: dict = field(default_factory=dict)

    def columns(self) -> list[int]:
        return [FEATURES.index(f) for f in self.features]


@dataclass
class ClassScorer:
    """Everything needed to score classes (see the module doc)."""

    variants: dict[str, Variant]
    cnn: ClassCNN
    meta: dict = field(default_factory=dict)

    def variant_for(self, features: np.ndarray) -> str:
        """``full`` when the metadata features are present, else ``image``."""
        meta = features[:, len(IMAGE_FEATURES) :]
        return "full" if np.isfinite(meta).any() else "image"

    def cnn_logit(self, images: np.ndarray, radius: float | np.ndarray, device="cpu", batch: int = 256) -> np.ndarray:
        """Logit of the CNN averaged over the 8 rotations/flips ``(K,)``."""
        from cryoflow.device import single_thread

        self.cnn.eval().to(device)
        x = cnn_input(images, radius)
        out = []
        with torch.no_grad(), single_thread(device):
            for s in range(0, len(x), batch):
                xb = x[s : s + batch].to(device)
                out.append(torch.stack([self.cnn(v) for v in symmetries(xb)]).mean(0).cpu())
        return torch.cat(out).numpy().astype(float) if out else np.zeros(0)

    def score(self, features: np.ndarray, images: np.ndarray, radius: float, device="cpu") -> dict:
        """Scores of a dataset's classes: ``p_good``, ``logit_linear``, ``logit_cnn``,
        ``contributions`` (K, F of the variant: each feature's push on the log-odds, after
        stacking), ``variant`` name and its ``features``."""
        name = self.variant_for(features)
        v = self.variants[name]
        x = features[:, v.columns()]
        lin = v.linear.logit(x)
        cnn = self.cnn_logit(images, radius, device)
        logit = v.a * lin + v.b * cnn + v.c
        return {
            "p_good": 1 / (1 + np.exp(-logit)),
            "logit_linear": lin,
            "logit_cnn": cnn,
            "contributions": v.a * v.linear.z(x) * v.linear.coef,
            "cnn_contribution": v.b * cnn,
            "variant": name,
            "features": v.features,
        }

    # --- files ----------------------------------------------------------------------------
    def state(self) -> dict:
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return {
            "format": FORMAT,
            "features": list(FEATURES),
            "variants": {
                name: {
                    "features": list(v.features),
                    "mean": t(v.linear.mean),
                    "scale": t(v.linear.scale),
                    "coef": t(v.linear.coef),
                    "intercept": float(v.linear.intercept),
                    "stack": [float(v.a), float(v.b), float(v.c)],
                    "validation": v.validation,
                }
                for name, v in self.variants.items()
            },
            "cnn": {k: v.detach().cpu() for k, v in self.cnn.state_dict().items()},
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        from cryoflow.models import save_state

        return save_state(path, self.state())

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ClassScorer:
        """Load a model file (default: the shipped ``cryoflow/models/classassess.pt``)."""
        if path is None:
            from cryoflow.models import model_path

            path = model_path("classassess.pt")
        from cryoflow.models import load_state

        s = load_state(path, FORMAT, "classassess model")
        # a variant names its features, so a model made before features were added still
        # loads (it uses the ones it knows); a feature this version lacks needs retraining
        unknown = sorted({f for v in s["variants"].values() for f in v["features"]} - set(FEATURES))
        if unknown:
            raise CryoflowError(
                path, f"model uses features this cryoflow lacks ({', '.join(unknown)}); retrain it with this version"
            )
        variants = {}
        for name, v in s["variants"].items():
            a = lambda k, v=v: v[k].double().numpy()  # noqa: E731
            variants[name] = Variant(
                tuple(v["features"]),
                Linear(a("mean"), a("scale"), a("coef"), float(v["intercept"])),
                *[float(x) for x in v["stack"]],
                validation=dict(v.get("validation") or {}),
            )
        cnn = ClassCNN()
        cnn.load_state_dict(s["cnn"])
        cnn.eval()
        return cls(variants, cnn, dict(s.get("meta") or {}))
