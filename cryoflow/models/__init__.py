"""Small shipped model weights (``*.pt``) and their model cards (``*.md``).

Weights are loaded with ``torch.load(weights_only=True)``; nothing is downloaded at run time.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_path(name: str) -> Path:
    """Path of a shipped model file, e.g. ``model_path("micassess.pt")``."""
    return Path(str(resources.files(__name__).joinpath(name)))


def save_state(path, state: dict) -> Path:
    """Write a model's state (a dict of tensors, strings and numbers) atomically with ``torch.save``."""
    import torch

    from cryoflow.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(path, fmt: str | tuple[str, ...], what: str, missing: str = "model file not found") -> dict:
    """Read a model file written by :func:`save_state` (``weights_only=True``: no code runs)
    and check its ``format`` is ``fmt`` (or one of them); a
    :class:`~cryoflow.errors.CryoflowError` otherwise."""
    import torch

    from cryoflow.errors import CryoflowError

    path = Path(path)
    if not path.is_file():
        raise CryoflowError(path, missing)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CryoflowError(path, f"not a readable model file ({type(exc).__name__})") from None
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise CryoflowError(path, f"not a {what} (expected format {' or '.join(formats)})")
    return state
