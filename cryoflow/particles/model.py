"""The particle classifier: a small CNN that tells a particle from junk in one extracted image.

Input: each particle image Fourier-cropped to :data:`SIZE` ² over its whole box (a fixed
number of pixels whatever the box and pixel size, so the cost per particle is fixed),
normalized to zero mean and unit variance, clipped at ±5 σ. Three strided convolutions
(16, 32, 64 channels; ~1.6 MFLOP per particle), mean + max pooling, one logit. Training
shows every image at random 90° rotations and flips, so one pass scores a particle.

The model is trained per dataset (:mod:`~cryoflow.particles.train`) on the dataset's own
labels: particles of kept 2D classes against particles of rejected ones. The file is a
dict of tensors and numbers (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryoflow.errors import CryoflowError

FORMAT = "cryoflow-particles-1"
SIZE = 48


class ParticleCNN(nn.Module):
    """``(N, 1, SIZE, SIZE)`` -> logit ``(N,)`` that the image is a good particle."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout, k):
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(block(1, w, 5), block(w, 2 * w, 3), block(2 * w, 4 * w, 3), block(4 * w, 4 * w, 3))
        self.head = nn.Sequential(nn.Linear(8 * w, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)).squeeze(1)


def prepare(images: np.ndarray) -> torch.Tensor:
    """Particle images ``(n, B, B)`` -> CNN input ``(n, 1, SIZE, SIZE)`` (see the module doc)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    b = x.shape[-1]
    if b > SIZE:  # Fourier crop on the half spectrum (3x cheaper than the full one)
        h = SIZE // 2
        f = torch.fft.rfft2(x)
        f = torch.cat([f[:, :h, : h + 1], f[:, b - h :, : h + 1]], 1)
        x = torch.fft.irfft2(f, s=(SIZE, SIZE))
    elif b < SIZE:
        f = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        c, h = b // 2, SIZE // 2
        pad = torch.zeros((x.shape[0], SIZE, SIZE), dtype=f.dtype)
        pad[:, h - c : h - c + b, h - c : h - c + b] = f
        x = torch.fft.ifft2(torch.fft.ifftshift(pad, dim=(-2, -1))).real
    mean = x.mean((1, 2), keepdim=True)
    std = x.std((1, 2), keepdim=True).clamp_min(1e-6)
    return ((x - mean) / std).clamp(-5, 5).unsqueeze(1).contiguous()


@dataclass
class ParticleModel:
    """The CNN, its decision threshold and what its training measured."""

    cnn: ParticleCNN
    threshold: float = 0.5
    meta: dict = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """False for the pass-through model 'particles train' writes when one label side is
        empty (nothing to learn from): scoring then keeps every particle, unscored."""
        return bool(self.meta.get("trained", True))

    def logits(self, x: torch.Tensor, device="cpu", batch: int = 512) -> np.ndarray:
        """Logits ``(n,)`` of prepared images (one pass: training saw every rotation)."""
        from cryoflow.device import single_thread

        self.cnn.eval().to(device)
        out = []
        with torch.no_grad(), single_thread(device):
            for s in range(0, len(x), batch):
                out.append(self.cnn(x[s : s + batch].to(device)).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def scores(self, images: np.ndarray, device="cpu") -> np.ndarray:
        """Probability ``(n,)`` that each image is a good particle."""
        from cryoflow.device import single_thread

        with single_thread(device):
            x = prepare(images)
        return 1 / (1 + np.exp(-self.logits(x, device).astype(float)))

    def save(self, path: str | os.PathLike) -> Path:
        from cryoflow.models import save_state

        state = {
            "format": FORMAT,
            "size": SIZE,
            "cnn": {k: v.detach().cpu() for k, v in self.cnn.state_dict().items()},
            "threshold": float(self.threshold),
            "meta": self.meta,
        }
        return save_state(path, state)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ParticleModel:
        path = Path(path)
        if path.is_dir():
            path = path / "particle_model.pt"
        from cryoflow.models import load_state

        s = load_state(
            path, FORMAT, "particle model", "particle model not found (make one with 'cryoflow particles train')"
        )
        if s.get("size") != SIZE:
            raise CryoflowError(path, f"particle model for {s.get('size')} px images; this cryoflow uses {SIZE}")
        cnn = ParticleCNN()
        cnn.load_state_dict(s["cnn"])
        cnn.eval()
        return cls(cnn, float(s["threshold"]), dict(s.get("meta") or {}))
