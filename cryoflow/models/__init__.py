"""Small shipped model weights (``*.pt``) and their model cards (``*.md``).

Weights are loaded with ``torch.load(weights_only=True)``; nothing is downloaded at run time.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_path(name: str) -> Path:
    """Path of a shipped model file, e.g. ``model_path("micassess.pt")``."""
    return Path(str(resources.files(__name__).joinpath(name)))
