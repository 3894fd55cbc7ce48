"""The ``--device auto|cpu|cuda`` option shared by every torch step."""

from __future__ import annotations

import contextlib

import torch

from cryoflow.errors import CryoflowError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto", gpu_when_auto: bool = True) -> torch.device:
    """``auto``: CUDA when available (and ``gpu_when_auto``: a step whose CPU path is the faster one says False),
    else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if gpu_when_auto and torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CryoflowError(None, f"--device {name}: no CUDA GPU is available to torch {torch.__version__}")
    if name not in CHOICES and not name.startswith("cuda:"):
        raise CryoflowError(None, f"--device must be one of {', '.join(CHOICES)}, not {name!r}")
    return torch.device(name)


def add_device_argument(parser, auto: str = "CUDA if available") -> None:
    """Add ``--device`` to an argparse parser; ``auto`` says what ``--device auto`` picks."""
    parser.add_argument("--device", default="auto", help=f"where torch runs: auto ({auto}), cpu or cuda")


@contextlib.contextmanager
def single_thread(device="cpu"):
    """Run small CPU work on one torch thread (restored after).

    Measured on the 2-core machine with other jobs running (load 5): the class CNN on 25
    averages took 2.3-2.7 s with 2 threads and 0.11-0.17 s with one; the particle CNN scored
    900 particles/s with 2 threads and 1,700-2,000 with one. Small convolutions do not
    split well, and a second thread that has to wait for a busy core stalls the first.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
