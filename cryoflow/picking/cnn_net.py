"""The learned picker's network: a small fully convolutional classifier of particle centres.

The input is the micrograph phase-flipped, band-passed and resampled so that a particle
spans :data:`SAMPLES_PER_DIAMETER` pixels (:func:`cryoflow.picking.cnn.cnn_input`),
whatever the dataset's particle size or pixel size; so one architecture fits every
dataset and its receptive field is a fixed multiple of the particle: :data:`PATCH` pixels,
1.75 diameters, enough to see a particle's outline and the ice around it (Topaz's default
receptive field is about one particle too; crYOLO sees the whole image).

Layers (no padding: a :data:`PATCH`-square patch gives exactly one output)::

    conv 3x3 (16) · ReLU · max-pool 2        receptive field  4 px, stride 2
    conv 3x3 (32) · ReLU                                      8
    conv 3x3 dilation 2 (32) · ReLU                          16
    conv 3x3 dilation 2 (32) · ReLU                          24
    conv 3x3 (32) · ReLU                                     28
    conv 1x1 (1)                                             logit

About 1.2 M multiply-adds per patch, 28 k weights: a few thousand patches train in seconds
on two CPU cores, and scoring a micrograph's candidates takes milliseconds. Run over a
whole (padded) micrograph it gives a logit map at stride 2.
"""

from __future__ import annotations

import torch
from torch import nn

#: pixels across a particle in the network's input
SAMPLES_PER_DIAMETER = 16.0
#: receptive field (and training patch size), pixels
PATCH = 28


class PickerNet(nn.Module):
    """Logit that a patch is centred on a particle; ``(n, 1, PATCH, PATCH) -> (n,)``."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w // 2, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w // 2, w, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(n,)`` of patches ``(n, 1, PATCH, PATCH)``; larger inputs give a map ``(n, 1, h', w')``."""
        out = self.features(x)
        return out[:, 0, 0, 0] if out.shape[-2:] == (1, 1) else out
