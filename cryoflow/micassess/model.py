"""The micassess model: a logistic model on features, a small CNN, and their calibrated combination.

- Linear part: multinomial logistic regression (scikit-learn at training time) on an
  additive piecewise-linear basis of the standardized
  :data:`~cryoflow.micassess.features.FEATURES`: each standardized feature ``z`` and its
  hinges ``max(z - h, 0)``, ``max(-z - h, 0)`` at :data:`HINGES` standard deviations (a
  feature may matter more in its tails than a straight line says: ice twice as thick as
  the threshold is not twice the evidence, a relative thickness just past the good range is
  more). Every basis function is 0 at ``z = 0``, so an unmeasured feature (``z = 0``) still
  gives no evidence. Stored as plain tensors (mean, scale, hinges, coefficients,
  intercepts), so prediction needs no pickled object and the contribution of every
  feature to every decision is exact: the sum of ``coef[c, b] * basis_b`` over its basis
  functions.
- CNN (:class:`MicCNN`): tiles of the micrograph at 4 Å/px (2 channels + mask) and,
  optionally (off in the shipped model), the radial power spectrum on a fixed 1/Å grid;
  per micrograph the tiles' log-probabilities are averaged.
- Combination (stacking): a multinomial logistic regression on the linear part's (class-
  centred) logits and the CNN's log-probabilities, ``softmax(W_lin · logits_linear +
  W_cnn · log p_cnn + bias)``, fitted on held-out sessions by the log-loss, so P(good) is
  calibrated and each class takes its evidence where it is (aggregation from the CNN,
  thick ice from the CTF metrics). Still linear in the standardized features, so their
  contributions stay exact.

A model file is a dict of tensors, strings and numbers saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryoflow.errors import CryoflowError
from cryoflow.micassess.features import FEATURES, FINE, FITTED_ONLY, GROUP, REASONS, SPECTRUM_K, TILE

# 2: CNN context blocks, density features; 3: stacking matrices, feature range; 4: hinges
FORMAT = "cryoflow-micassess-4"
OLDER_FORMATS = ("cryoflow-micassess-3",)  # still read: no hinges (a straight line per feature)
HINGES = (1.0, 2.0)  # standard deviations at which the linear part's basis bends (see the module doc)


class MicCNN(nn.Module):
    """Image tiles ``(N, 3, TILE, TILE)`` + spectra ``(N, 2, K)`` -> logits ``(N, C)``.

    ``image``: four stride-2 blocks (receptive field 33 px = 132 Å at 4 Å/px: particles,
    edges, textures); ``context``: one more stride-2 block and a 3x3 convolution (receptive
    field 129 px = 516 Å: clumps of particles, how the field is filled). Both are pooled
    (masked mean and max), beside the spectrum branch's features when ``spectrum`` is on.

    The shipped model has the spectrum branch off: on the real micrographs of
    ../shared/data it read the real detectors' spectra (not white like the simulator's, and
    at 3.4 Å/px, beyond the training pixel sizes) as astigmatism or drift and rejected both
    Diamond micrographs, also with the spectrum's smooth trend removed; the spectrum's
    evidence reaches the model through the CTF step's fitted metrics instead.
    """

    def __init__(self, n_classes: int = len(FINE), width: int = 16, spectrum: bool = False):
        super().__init__()
        w = width

        def block(cin, cout, k=3):
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.image = nn.Sequential(block(3, w, 5), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.context = nn.Sequential(
            block(4 * w, 4 * w),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
        )
        self.spectrum = (
            nn.Sequential(
                nn.Conv1d(2, w, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Conv1d(w, 2 * w, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool1d(2),
                nn.Flatten(),
                nn.Linear(2 * w * (len(SPECTRUM_K) // 4), 4 * w),
                nn.ReLU(),
            )
            if spectrum
            else None
        )
        n_in = 16 * w + (4 * w if spectrum else 0)
        self.head = nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, n_classes))

    @staticmethod
    def _pool(f: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """Mean and max of feature maps ``f`` over the real pixels (mask channel of ``tiles``)."""
        mask = nn.functional.adaptive_max_pool2d(tiles[:, 2:3], f.shape[-2:])
        pooled_mean = (f * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)
        pooled_max = (f * mask - 1e4 * (1 - mask)).amax((2, 3))
        return torch.cat([pooled_mean, pooled_max], 1)

    def forward(self, tiles: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
        f = self.image(tiles)
        g = self.context(f)
        parts = [self._pool(f, tiles), self._pool(g, tiles)]
        if self.spectrum is not None:
            parts.append(self.spectrum(spectra))
        return self.head(torch.cat(parts, 1))


def standardize(
    x: np.ndarray, mean: np.ndarray, scale: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> np.ndarray:
    """``(x - mean) / scale`` with ``x`` first clipped to the training range ``[lo, hi]`` (no
    extrapolation beyond what training saw, e.g. at other pixel sizes) and then to ±4 (no
    single out-of-range feature decides). Unmeasured features (NaN) are 0: no evidence either
    way; so are the features measured only with a CTF fit for micrographs without one (see
    :data:`~cryoflow.micassess.features.FITTED_ONLY`)."""
    if lo is not None and hi is not None:
        x = np.clip(x, lo, hi)
    z = np.nan_to_num(np.clip((x - mean) / scale, -4, 4), nan=0.0)
    unfitted = x[:, FEATURES.index("ctf_fitted")] < 0.5
    if unfitted.any():
        cols = [FEATURES.index(n) for n in FITTED_ONLY]
        z[np.ix_(unfitted, cols)] = 0.0
    return z


def hinge_basis(z: np.ndarray, hinges: tuple[float, ...]) -> np.ndarray:
    """``(N, F)`` standardized features -> ``(N, F (1 + 2 H))``: ``z``, then for each hinge
    ``h`` the blocks ``max(z - h, 0)`` and ``max(-z - h, 0)`` (all 0 at ``z = 0``)."""
    blocks = [z]
    for h in hinges:
        blocks += [np.maximum(z - h, 0.0), np.maximum(-z - h, 0.0)]
    return np.concatenate(blocks, 1)


@dataclass
class Linear:
    """Standardization, :func:`hinge_basis` and a multinomial logistic regression (classes
    along axis 0 of ``coef``, basis functions along axis 1)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (C, F (1 + 2 H))
    intercept: np.ndarray  # (C,)
    lo: np.ndarray | None = None  # (F,) training range of the raw features (NaN-aware min/max)
    hi: np.ndarray | None = None
    hinges: tuple[float, ...] = ()

    def z(self, x: np.ndarray) -> np.ndarray:
        return standardize(x, self.mean, self.scale, self.lo, self.hi)

    def basis(self, x: np.ndarray) -> np.ndarray:
        return hinge_basis(self.z(x), self.hinges)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class-centred logits ``(N, C)`` (the stacking's input): ``basis · coef_c + intercept_c``
        minus their mean over the classes."""
        logits = self.basis(x) @ self.coef.T + self.intercept
        return logits - logits.mean(1, keepdims=True)

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.logits(x)
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@dataclass
class MicAssessModel:
    """Everything needed to predict; see the module docstring."""

    classes: list[str]
    linear: Linear
    cnn: MicCNN
    stack_lin: np.ndarray = field(default_factory=lambda: np.eye(len(FINE)))  # (C, C) on the linear logits
    stack_cnn: np.ndarray = field(default_factory=lambda: np.eye(len(FINE)))  # (C, C) on the CNN log-probabilities
    stack_bias: np.ndarray = field(default_factory=lambda: np.zeros(len(FINE)))
    threshold: float = 0.5
    train_features: np.ndarray | None = None  # (N, F) the linear part's training set, for fine-tuning
    train_labels: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # --- prediction -----------------------------------------------------------------------
    def cnn_log_proba(self, tiles: list[np.ndarray], spectra: np.ndarray, device="cpu", batch: int = 64) -> np.ndarray:
        """Per micrograph: mean over its tiles of the CNN's log-probabilities ``(N, C)``.

        ``tiles``: one ``(n_i, 3, TILE, TILE)`` array per micrograph; ``spectra``: ``(N, 2, K)``.
        """
        self.cnn.eval().to(device)
        counts = [len(t) for t in tiles]
        flat = np.concatenate(tiles) if tiles else np.zeros((0, 3, TILE, TILE), np.float32)
        owner = np.repeat(np.arange(len(tiles)), counts)
        out = []
        with torch.no_grad():
            for s in range(0, len(flat), batch):
                x = torch.from_numpy(flat[s : s + batch]).to(device)
                sp = torch.from_numpy(spectra[owner[s : s + batch]]).float().to(device)
                out.append(torch.log_softmax(self.cnn(x, sp), 1).cpu().numpy())
        logp = np.concatenate(out) if out else np.zeros((0, len(self.classes)))
        result = np.zeros((len(tiles), len(self.classes)))
        np.add.at(result, owner, logp)
        return result / np.maximum(np.array(counts), 1)[:, None]

    def combine(self, lin: np.ndarray, cnn: np.ndarray) -> np.ndarray:
        """Calibrated fine-class probabilities ``(N, C)`` from the linear part's logits
        (:meth:`Linear.logits`) and the CNN's log-probabilities."""
        logits = lin @ self.stack_lin.T + cnn @ self.stack_cnn.T + self.stack_bias
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def contributions(self, x: np.ndarray, lin: np.ndarray, cnn: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per micrograph and feature (+ a last column for the CNN): how much each pushes the
        log-odds of class ``target[i]`` over ``good`` ``(N, F + 1)`` (positive: towards target)."""
        g = self.classes.index("good")
        basis = self.linear.basis(x)
        centred = self.linear.coef - self.linear.coef.mean(0, keepdims=True)
        effective = self.stack_lin @ centred  # (C, B): the final logits' weights on the basis
        diff = effective[target] - effective[g]  # (N, B)
        feat = (basis * diff).reshape(len(x), -1, len(FEATURES)).sum(1)  # a feature's basis functions summed
        cnn_part = ((self.stack_cnn[target] - self.stack_cnn[g]) * cnn).sum(1)
        return np.concatenate([feat, cnn_part[:, None]], 1)

    def group_proba(self, p: np.ndarray) -> np.ndarray:
        """Reason-group probabilities ``(N, len(REASONS))`` (fine classes summed per group)."""
        out = np.zeros((len(p), len(REASONS)))
        for i, c in enumerate(self.classes):
            out[:, REASONS.index(GROUP[c])] += p[:, i]
        return out

    # --- files ----------------------------------------------------------------------------
    def state(self) -> dict:
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "features": list(FEATURES),
            "linear": {
                "mean": t(self.linear.mean),
                "scale": t(self.linear.scale),
                "coef": t(self.linear.coef),
                "intercept": t(self.linear.intercept),
                "lo": t(self.linear.lo if self.linear.lo is not None else np.full(len(FEATURES), -np.inf)),
                "hi": t(self.linear.hi if self.linear.hi is not None else np.full(len(FEATURES), np.inf)),
                "hinges": t(self.linear.hinges),
            },
            "cnn": {k: v.detach().cpu() for k, v in self.cnn.state_dict().items()},
            "cnn_spectrum": self.cnn.spectrum is not None,
            "stack": {"lin": t(self.stack_lin), "cnn": t(self.stack_cnn), "bias": t(self.stack_bias)},
            "threshold": float(self.threshold),
            "train_features": t(
                self.train_features if self.train_features is not None else np.zeros((0, len(FEATURES)))
            ),
            "train_labels": list(self.train_labels),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        from cryoflow.models import save_state

        return save_state(path, self.state())

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> MicAssessModel:
        """Load a model file (default: the shipped ``cryoflow/models/micassess.pt``)."""
        if path is None:
            from cryoflow.models import model_path

            path = model_path("micassess.pt")
        from cryoflow.models import load_state

        path = Path(path)
        s = load_state(path, (FORMAT, *OLDER_FORMATS), "micassess model")
        if list(s["features"]) != list(FEATURES):
            raise CryoflowError(path, "model was trained on another feature set; retrain it with this cryoflow version")
        a = lambda k: s["linear"][k].double().numpy()  # noqa: E731
        cnn = MicCNN(len(s["classes"]), spectrum=bool(s.get("cnn_spectrum", True)))
        cnn.load_state_dict(s["cnn"])
        cnn.eval()
        return cls(
            classes=list(s["classes"]),
            linear=Linear(
                a("mean"),
                a("scale"),
                a("coef"),
                a("intercept"),
                a("lo"),
                a("hi"),
                tuple(s["linear"]["hinges"].tolist()) if "hinges" in s["linear"] else (),
            ),
            cnn=cnn,
            stack_lin=s["stack"]["lin"].double().numpy(),
            stack_cnn=s["stack"]["cnn"].double().numpy(),
            stack_bias=s["stack"]["bias"].double().numpy(),
            threshold=float(s["threshold"]),
            train_features=s["train_features"].double().numpy(),
            train_labels=list(s["train_labels"]),
            meta=dict(s.get("meta") or {}),
        )
