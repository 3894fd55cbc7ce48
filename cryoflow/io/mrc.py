"""Micrographs and particle stacks in MRC format: read with ``mrcfile``, written with its headers.

Writing (:func:`write_mrc`, :func:`mrc_writer`) streams the data to the file a part at a time
and writes mrcfile's header last, with the statistics gathered on the way: a particle stack
need never be held whole, and the bytes are those ``mrcfile.new`` writes.

Conventions
-----------
- Arrays are indexed ``[y, x]`` (a micrograph is ``(H, W)``, a stack ``(N, H, W)``).
- Pixel size is in Å per pixel. It comes from the header unless given explicitly; a
  header value of 0 counts as missing, and a missing pixel size with none given is an
  error (never guessed).
- Supported modes: 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16). Data are
  returned as float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryoflow.errors import CryoflowError
from cryoflow.io.atomic import atomic_path

SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st")
LABEL = "written by cryoflow"
#: Bytes per write call for large data (see :class:`MrcWriter`).
WRITE_CHUNK = 1 << 22
#: Values per chunk of the header statistics (see :class:`HeaderStats`).
STATS_CHUNK = 1 << 18


@dataclass(frozen=True)
class MRCInfo:
    """What an MRC file holds, read from its header only.

    Attributes: ``shape`` as stored (``(H, W)`` or ``(N, H, W)``), ``mode`` (MRC mode
    number), ``dtype`` (numpy name), ``pixel_size`` (Å, ``None`` when the header holds 0),
    ``is_stack`` (the header says image stack, or the name ends in ``.mrcs``).
    """

    path: Path
    shape: tuple[int, ...]
    mode: int
    dtype: str
    pixel_size: float | None
    is_stack: bool

    @property
    def n_images(self) -> int:
        """Number of 2D images (1 for a single micrograph)."""
        return self.shape[0] if len(self.shape) == 3 else 1


def _open(path: str | os.PathLike, mmap: bool = False):
    """Open an MRC file read-only, turning every failure into a one-line CryoflowError."""
    path = Path(path)
    if not path.exists():
        raise CryoflowError(path, "file not found")
    if path.is_dir():
        raise CryoflowError(path, "is a folder, expected an MRC file")
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return opener(path, mode="r", permissive=False)
    except ValueError as exc:
        text = str(exc)
        if "Unrecognised mode" in text or "mode" in text.lower() and "unsupported" in text.lower():
            raise CryoflowError(path, f"unsupported MRC mode ({text})") from None
        if "Expected" in text and "bytes" in text or "too short" in text or "could only read" in text:
            raise CryoflowError(path, f"truncated MRC: data shorter than the header says ({text})") from None
        raise CryoflowError(path, f"not a valid MRC file ({text})") from None
    except (OSError, EOFError) as exc:
        raise CryoflowError(path, f"cannot read MRC file ({exc})") from None


def _check_mode(path: Path, mode: int) -> None:
    if mode not in SUPPORTED_MODES:
        names = ", ".join(f"{m} ({n})" for m, n in SUPPORTED_MODES.items())
        raise CryoflowError(path, f"unsupported MRC mode {mode}; supported modes are {names}")


def _header_pixel_size(mrc) -> float | None:
    size = float(mrc.voxel_size.x)
    # headers store float32: round away the float32 noise (3.4151999950 -> 3.4152)
    return round(size, 5) if np.isfinite(size) and size > 0 else None


def read_info(path: str | os.PathLike) -> MRCInfo:
    """Read an MRC header (no data) and return an :class:`MRCInfo`."""
    path = Path(path)
    with _open(path, mmap=True) as mrc:
        mode = int(mrc.header.mode)
        _check_mode(path, mode)
        return MRCInfo(
            path=path,
            shape=tuple(int(s) for s in mrc.data.shape),
            mode=mode,
            dtype=SUPPORTED_MODES[mode],
            pixel_size=_header_pixel_size(mrc),
            is_stack=bool(mrc.is_image_stack()) or path.suffix == ".mrcs",
        )


def resolve_pixel_size(path: str | os.PathLike, header: float | None, given: float | None) -> float:
    """Pick the pixel size (Å): the given value overrides the header; neither is an error."""
    if given is not None:
        if not np.isfinite(given) or given <= 0:
            raise CryoflowError(path, f"pixel size must be a positive number of Å, got {given}")
        return float(given)
    if header is None:
        raise CryoflowError(path, "pixel size missing or zero in the header and none given (use --pixel-size Å)")
    return float(header)


def _check_finite(path: Path, data: np.ndarray, what: str = "data") -> None:
    if data.dtype.kind != "f":  # integer modes hold only finite values
        return
    # one pass, no temporary: a float sum is finite exactly when no value is NaN or Inf, unless the
    # finite values overflow it (then the exact check below decides)
    if np.isfinite(data.sum()):
        return
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(np.size(data) - finite.sum())
        raise CryoflowError(path, f"{what} contain {n_bad} NaN or Inf values")


def prefetch(path: str | os.PathLike) -> bool:
    """Ask the kernel to read ``path`` into the page cache in the background; ``True`` if asked.

    ``posix_fadvise(WILLNEED)``: the file is read ahead in large sequential requests while
    the caller works on something else, so a later memory-mapped read (pages touched out of
    order, as boxes are cut) finds it in memory instead of faulting on the disk a few pages at a
    time. Advisory: a missing file or a platform without the call does nothing.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_micrograph(
    path: str | os.PathLike, pixel_size: float | None = None, mmap: bool = False, check_finite: bool = True
) -> tuple[np.ndarray, float]:
    """Read a single 2D micrograph.

    Returns ``(image, pixel_size)``: ``image`` float32 ``(H, W)`` indexed ``[y, x]``,
    ``pixel_size`` in Å (``pixel_size`` argument if given, else the header's).
    A file holding several frames (a movie or a stack) is an error.

    ``mmap``: return a read-only memory map of the file's data (float32 files; other modes are
    converted to a new array) instead of reading it into memory: no copy of the data, pages read
    as they are touched (the NaN/Inf check touches them all once). The map stays valid after
    the call; the file must not be changed while it is used.

    ``check_finite``: raise on NaN or Inf values (one pass over the data); a caller that checks
    what it uses itself (extraction checks each particle box) may skip it.
    """
    path = Path(path)
    with _open(path, mmap=mmap) as mrc:
        _check_mode(path, int(mrc.header.mode))
        data = mrc.data
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise CryoflowError(
                path,
                f"holds {data.shape[0]} images of {data.shape[1]}x{data.shape[2]}; expected one motion-corrected micrograph",
            )
        apix = resolve_pixel_size(path, _header_pixel_size(mrc), pixel_size)
        image = as_float32(data)
        if mmap and not image.dtype.isnative:  # a file of the other byte order: convert once
            image = image.astype(np.float32)
    if check_finite:
        _check_finite(path, image)
    return image, apix


class ParticleStack:
    """A memory-mapped image stack (``.mrcs``): indexing reads only the images asked for.

    ``stack[i]`` returns float32 ``(H, W)``; ``stack[i:j]`` or ``stack[[i, j]]`` returns
    ``(n, H, W)``. Images read are checked for NaN/Inf. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, pixel_size: float | None = None):
        self.path = Path(path)
        self._mrc = _open(self.path, mmap=True)
        try:
            _check_mode(self.path, int(self._mrc.header.mode))
            data = self._mrc.data
            self._data = data[None] if data.ndim == 2 else data
            self.pixel_size = resolve_pixel_size(self.path, _header_pixel_size(self._mrc), pixel_size)
        except Exception:
            self._mrc.close()
            raise

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, H, W)``."""
        return tuple(int(s) for s in self._data.shape)

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        images = as_float32(self._data[index])
        _check_finite(self.path, images, f"images {index}")
        return images

    def close(self) -> None:
        self._mrc.close()

    def __enter__(self) -> ParticleStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stack(path: str | os.PathLike, pixel_size: float | None = None) -> ParticleStack:
    """Open an MRC stack memory-mapped (see :class:`ParticleStack`)."""
    return ParticleStack(path, pixel_size)


def write_mrc(
    path: str | os.PathLike,
    data: np.ndarray,
    pixel_size: float,
    *,
    stack: bool | None = None,
    dtype: np.dtype | str = np.float32,
    overwrite: bool = True,
) -> Path:
    """Write a micrograph ``(H, W)``, a stack ``(N, H, W)`` or a volume atomically.

    ``pixel_size`` (Å) is written to the header. ``stack`` marks a 3D array as an image
    stack (default: when the name ends in ``.mrcs``). ``dtype`` float32 (mode 2) by default;
    float16 (mode 12), int8, int16 and uint16 are accepted. (:func:`mrc_writer` writing the
    whole array at once.)
    """
    array = np.ascontiguousarray(np.asarray(data).astype(dtype, copy=False))
    with mrc_writer(path, array.shape, pixel_size, stack=stack, dtype=array.dtype, overwrite=overwrite) as writer:
        writer.write(array)
    return Path(path)


@contextlib.contextmanager
def mrc_writer(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    pixel_size: float,
    *,
    stack: bool | None = None,
    dtype: np.dtype | str = np.float32,
    overwrite: bool = True,
) -> Iterator[MrcWriter]:
    """Write an MRC file of ``shape`` a part at a time, atomically: ``with mrc_writer(...) as w: w.write(part)``.

    Parts are consecutive slices along the first axis (images of a stack, rows of a
    micrograph), e.g. particles as they are cut, so a stack never has to be held whole. The
    header is mrcfile's for the final shape and ``dtype`` (``stack``, ``pixel_size`` as in
    :func:`write_mrc`) and is written last, with the statistics of the data written. The
    file is renamed to ``path`` only when the block ends with every part written.
    """
    path = Path(path)
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise CryoflowError(path, f"pixel size must be positive, got {pixel_size}")
    shape = tuple(int(n) for n in shape)
    header = _new_header(shape, np.dtype(dtype), float(pixel_size), path.suffix == ".mrcs" if stack is None else stack)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb", buffering=0) as fh:
        writer = MrcWriter(fh, header, shape, np.dtype(dtype), path)
        yield writer
        writer.close()


def _new_header(shape: tuple[int, ...], dtype: np.dtype, pixel_size: float, stack: bool) -> np.recarray:
    """mrcfile's header for data of ``shape`` and ``dtype`` (as ``mrcfile.new`` makes it; no data held)."""
    from mrcfile.mrcinterpreter import MrcInterpreter

    mrc = MrcInterpreter()  # the documented way to a header without a file: default attributes, then data
    mrc._create_default_attributes()
    mrc._set_new_data(np.broadcast_to(np.zeros((), dtype), shape))  # only its shape and dtype are read
    mrc.update_header_from_data()
    if len(shape) == 3:
        if stack:
            mrc.set_image_stack()
        else:
            mrc.set_volume()
    mrc.voxel_size = pixel_size
    # mrcfile's label carries the time of writing; a fixed one keeps outputs reproducible
    mrc.header.label[0] = LABEL.ljust(80).encode("ascii")
    mrc.header.nlabl = 1
    return mrc.header


class MrcWriter:
    """The data of an MRC file being written by :func:`mrc_writer`, a part at a time.

    Parts go out :data:`WRITE_CHUNK` bytes per call: on Linux 6.x one write of tens of MiB at an
    offset that is not a multiple of the page size costs about 10x the time of the same bytes
    in smaller calls (measured: a 66 MB particle stack 150 ms vs 19 ms of system time). The
    header statistics are gathered from each part as it is written (:class:`HeaderStats`),
    while it is still in cache.
    """

    def __init__(self, fh, header: np.recarray, shape: tuple[int, ...], dtype: np.dtype, path: Path):
        self._fh, self._header, self._shape, self._dtype, self._path = fh, header, shape, dtype, path
        self._stats = HeaderStats()
        self._rows = 0
        self._offset = header.nbytes  # no extended header

    def write(
        self, part: np.ndarray, values: np.ndarray | None = None, sums: tuple[float, float] | None = None
    ) -> None:
        """Append ``part``: ``(k, *shape[1:])`` of the file's dtype, the next ``k`` slices.

        ``values``: the same numbers in float32, when the caller has them (e.g. a float16 part
        converted back): the statistics are taken from them instead of converting ``part``.
        ``sums``: their sum and sum of squares, when the caller has them (:meth:`HeaderStats.add`)."""
        if part.dtype != self._dtype or part.shape[1:] != self._shape[1:]:
            raise ValueError(f"part {part.shape} {part.dtype} does not fit {self._shape} {self._dtype}")
        if self._rows + len(part) > self._shape[0]:
            raise ValueError(f"more than the {self._shape[0]} slices of {self._path}")
        if values is not None and (values.dtype != np.float32 or values.shape != part.shape):
            raise ValueError(f"values {values.shape} {values.dtype} are not part {part.shape} in float32")
        flat = np.ascontiguousarray(part).reshape(-1)
        self._stats.add(flat if values is None else values, sums)
        raw, done = flat.view(np.uint8), 0
        while done < raw.size:
            written = os.pwrite(self._fh.fileno(), raw[done : done + WRITE_CHUNK], self._offset)
            if written <= 0:  # a short write is continued; none at all means the disk is full
                raise CryoflowError(self._path, f"could not write (wrote {self._offset} bytes; disk full?)")
            done += written
            self._offset += written
        self._rows += len(part)

    def statistics(self) -> tuple[float, float, float, float]:
        """``(min, max, mean, rms)`` of the data written so far (NaN or Inf where the data hold any)."""
        return self._stats.result()

    def close(self) -> None:
        """Write the header with the statistics; the data must be complete."""
        if self._rows != self._shape[0]:
            raise CryoflowError(self._path, f"only {self._rows} of {self._shape[0]} slices were written")
        _set_header_stats(self._header, self._stats.result())
        header = self._header.tobytes()
        if os.pwrite(self._fh.fileno(), header, 0) != len(header):  # 1 KiB: short only when the disk is full
            raise CryoflowError(self._path, "could not write the header (disk full?)")


def as_float32(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``array`` as float32: itself when it is, else a converted copy (into ``out``, float32 of
    ``array``'s shape, when given). Float16 (mode 12) is converted by torch's vectorized (F16C)
    kernel: numpy's is about 10x slower (measured here: 30 ms vs 3 ms per 16.6 M values), which
    made every float16 particle stack's header statistics cost more than cutting its particles."""
    if array.dtype == np.float32:
        return array
    if array.dtype == np.float16 and array.dtype.isnative:
        import torch

        out = np.empty(array.shape, dtype=np.float32) if out is None else out
        src, dst = np.ascontiguousarray(array).reshape(-1), out.reshape(-1)
        with warnings.catch_warnings():  # a read-only memory map is only read here
            warnings.simplefilter("ignore", UserWarning)
            # pieces below torch's parallel grain (32,768): converted in this thread, never handed
            # to an intra-op thread pool that spins against other busy processes (measured 50x slower)
            for start in range(0, src.size, 1 << 15):
                torch.from_numpy(dst[start : start + (1 << 15)]).copy_(torch.from_numpy(src[start : start + (1 << 15)]))
        return out
    if out is not None:
        out[...] = array
        return out
    return np.asarray(array, dtype=np.float32)


@functools.cache
def _ones() -> np.ndarray:
    """:data:`STATS_CHUNK` float32 ones: sums taken as BLAS dot products."""
    return np.ones(STATS_CHUNK, np.float32)


class HeaderStats:
    """``(min, max, mean, rms)`` of data seen a part at a time, as MRC headers store them (rms: the standard deviation).

    Each part is read in chunks of :data:`STATS_CHUNK` values (1 MiB of float32, in cache)
    giving a min, a max, a sum and a sum of squares, merged in float64 (Chan et al.), so no
    full-size temporary is made. Where a chunk's mean is large beside its spread (squares
    mostly the mean's), its squared deviations are summed about its exact mean instead, so the
    variance loses no digits; normalized data such as particle stacks take the four fast
    passes. Agrees with numpy's (mrcfile's) float32 figures to float rounding.
    """

    def __init__(self):
        self._lows: list = []
        self._highs: list = []
        self._mean, self._m2, self._count = 0.0, 0.0, 0
        self._buffer = np.empty(0, np.float32)  # other dtypes converted here: no fresh memory per chunk

    def add(self, values: np.ndarray, sums: tuple[float, float] | None = None) -> None:
        """Take in ``values``; ``sums``: their sum and sum of squares when the caller has them (read only for
        the min and max then), for values whose mean is small beside their spread (e.g. normalized particles)."""
        flat = values.reshape(-1)
        if sums is not None and flat.size:
            total, squares = sums
            k = flat.size
            if (total / k) * total < 0.5 * squares:  # no cancellation to fear (else the values are read)
                self._lows.append(flat.min())
                self._highs.append(flat.max())
                self._merge(total / k, squares - total * total / k, k)
                return
        if flat.dtype != np.float32 and self._buffer.size < min(flat.size, STATS_CHUNK):
            self._buffer = np.empty(min(flat.size, STATS_CHUNK), np.float32)
        for start in range(0, flat.size, STATS_CHUNK):
            piece = flat[start : start + STATS_CHUNK]
            part = as_float32(piece, None if piece.dtype == np.float32 else self._buffer[: piece.size])
            k = part.size
            self._lows.append(part.min())
            self._highs.append(part.max())
            part_sum = float(np.dot(part, _ones()[:k]))  # BLAS: 3x numpy's pairwise sum, relative error ~1e-7
            part_mean = part_sum / k
            squares = float(np.dot(part, part))
            if part_mean * part_sum < 0.5 * squares:  # mean² below the variance: no cancellation to fear
                part_m2 = squares - part_mean * part_sum
            else:
                dev = part - np.float32(part_mean)
                part_m2 = float(np.dot(dev, dev)) - k * float(dev.mean()) ** 2  # about the exact chunk mean
            self._merge(part_mean, part_m2, k)

    def _merge(self, mean: float, m2: float, k: int) -> None:
        """Merge a part of ``k`` values of ``mean`` and summed squared deviations ``m2`` (Chan et al.)."""
        delta = mean - self._mean
        total = self._count + k
        self._mean += delta * k / total
        self._m2 += m2 + delta * delta * self._count * k / total
        self._count = total

    def result(self) -> tuple[float, float, float, float]:
        if self._count == 0:
            return 0.0, -1.0, -2.0, -1.0  # mrcfile's "unknown" values
        lo, hi = float(np.min(self._lows)), float(np.max(self._highs))  # NaN propagates, as in numpy
        return lo, hi, self._mean, math.sqrt(max(self._m2, 0.0) / self._count)


def header_stats(array: np.ndarray) -> tuple[float, float, float, float]:
    """``(min, max, mean, rms)`` of ``array`` as MRC headers store them (:class:`HeaderStats`)."""
    stats = HeaderStats()
    stats.add(array)
    return stats.result()


def _set_header_stats(header, stats: tuple[float, float, float, float]) -> None:
    """Write ``(min, max, mean, rms)`` (float32, as mrcfile) to ``header``; warn on NaN/Inf as mrcfile does."""
    lo, hi, mean, rms = stats
    if math.isnan(lo) or math.isnan(hi) or math.isnan(mean):
        warnings.warn("Data array contains NaN values", RuntimeWarning, stacklevel=3)
    elif math.isinf(lo) or math.isinf(hi):
        warnings.warn("Data array contains infinite values", RuntimeWarning, stacklevel=3)
    header.dmin = np.float32(lo)
    header.dmax = np.float32(hi)
    header.dmean = np.float32(mean)
    header.rms = np.float32(rms)
