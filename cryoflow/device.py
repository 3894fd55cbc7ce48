"""The ``--device auto|cpu|cuda`` option shared by every torch step."""

from __future__ import annotations

import torch

from cryoflow.errors import CryoflowError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CryoflowError(None, f"--device {name}: no CUDA GPU is available to torch {torch.__version__}")
    if name not in CHOICES and not name.startswith("cuda:"):
        raise CryoflowError(None, f"--device must be one of {', '.join(CHOICES)}, not {name!r}")
    return torch.device(name)


def add_device_argument(parser) -> None:
    """Add ``--device`` to an argparse parser."""
    parser.add_argument("--device", default="auto", help="where torch runs: auto (CUDA if available), cpu or cuda")
