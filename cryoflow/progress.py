"""Progress bars for long loops: shown on a terminal, silent in logs (CWL, CI, pipes)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def show_progress() -> bool:
    """True when stderr is a terminal and ``CRYOFLOW_QUIET`` is not set."""
    return sys.stderr.isatty() and not os.environ.get("CRYOFLOW_QUIET")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when :func:`show_progress` says so."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not show_progress(), leave=False))
