"""Write-then-rename, so an interrupted run never leaves a half-written file that looks whole.

A file is written under a hidden temporary name in its final folder (same file system,
so the rename is atomic) and renamed to its final name only when complete. A folder of
outputs is built the same way with :func:`atomic_dir`.

The temporary name is handed out unused: the writer creates the file. Truncating an existing
file (what opening mode ``"w"`` does to a placeholder) makes ext4 flush the file to disk when
it is closed ("auto_da_alloc"); measured here, that close cost 15-20 ms per 67 MB stack, as
much again as writing it. Large writes reserve their blocks first (:func:`preallocate`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _fallocate():
    """libc's ``fallocate`` (Linux), or ``None``."""
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def preallocate(fd: int, size: int) -> bool:
    """Reserve disk blocks for the first ``size`` bytes of the open file ``fd``; ``True`` if done.

    Linux ``fallocate`` with ``FALLOC_FL_KEEP_SIZE``: the file's size is unchanged (only what
    is written counts), the blocks are allocated at once instead of page by page as the data
    arrive (measured here: 67 MB written in 13 ms instead of 18 ms). Where the call is
    missing or the file system does not support it nothing happens (``posix_fallocate`` is not
    used: glibc emulates it by writing every block).
    """
    function = _fallocate()
    return function is not None and size > 0 and function(fd, 1, 0, size) == 0  # 1: FALLOC_FL_KEEP_SIZE


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
