"""Write-then-rename, so an interrupted run never leaves a half-written file that looks whole.

A file is written under a hidden temporary name in its final folder (same file system,
so the rename is atomic) and renamed to its final name only when complete. A folder of
outputs is built the same way with :func:`atomic_dir`.

The temporary name is handed out unused: the writer creates the file. Truncating an existing
file (what opening mode ``"w"`` does to a placeholder) makes ext4 flush the file to disk when
it is closed ("auto_da_alloc"); measured here, that close cost 15-20 ms per 67 MB stack, as
much again as writing it. Blocks are not reserved ahead (``fallocate``): inside extraction
that was no faster (3,471 vs 3,484 particles/s) and a call could stall for 50-500 ms on the
journal while earlier files were written back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary file keeps the suffix of ``path`` (libraries like mrcfile and
    matplotlib choose the format by suffix). On an exception the temporary file is
    removed and ``path`` is left as it was. With ``overwrite=False`` an existing
    ``path`` raises ``FileExistsError`` before anything is written. The temporary path does
    not exist when yielded: the block creates the file (a block that writes nothing fails).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.unlink()  # a fresh name, not a file: the writer creates it (with the usual permissions)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block succeeds.

    ``path`` must not exist yet or be an empty folder (nothing a user has is replaced).
    On an exception the temporary folder is removed.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
