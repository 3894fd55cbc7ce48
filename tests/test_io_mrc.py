"""MRC reading and writing: modes, pixel size, memory-mapped stacks, atomic writes."""

from __future__ import annotations

import io

import mrcfile
import numpy as np
import pytest

import cryoflow.io.mrc
from cryoflow.errors import CryoflowError
from cryoflow.io import open_stack, read_info, read_micrograph, write_mrc


@pytest.mark.parametrize(
    ("dtype", "mode"), [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)]
)
def test_modes_round_trip(tmp_path, dtype, mode):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, size=(32, 48)).astype(dtype)
    path = write_mrc(tmp_path / "m.mrc", data, pixel_size=1.34, dtype=dtype)
    info = read_info(path)
    assert info.mode == mode and info.shape == (32, 48)
    image, apix = read_micrograph(path)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, data.astype(np.float32))
    assert apix == pytest.approx(1.34)


def test_pixel_size_override_and_missing(tmp_path):
    path = tmp_path / "nopix.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((16, 16), np.float32))
    with pytest.raises(CryoflowError, match="pixel size missing"):
        read_micrograph(path)
    _, apix = read_micrograph(path, pixel_size=0.85)
    assert apix == 0.85
    with pytest.raises(CryoflowError, match="positive"):
        read_micrograph(path, pixel_size=0)
    # the header value is overridable too
    write_mrc(tmp_path / "pix.mrc", np.zeros((8, 8)), pixel_size=2.0)
    assert read_micrograph(tmp_path / "pix.mrc", pixel_size=1.0)[1] == 1.0


def test_stack_is_memory_mapped_and_sliced(tmp_path):
    data = np.arange(50 * 16 * 16, dtype=np.float32).reshape(50, 16, 16)
    path = write_mrc(tmp_path / "particles.mrcs", data, pixel_size=1.5)
    info = read_info(path)
    assert info.is_stack and info.n_images == 50
    with open_stack(path) as stack:
        assert isinstance(stack._data, np.memmap)
        assert stack.shape == (50, 16, 16) and len(stack) == 50
        np.testing.assert_array_equal(stack[7], data[7])
        np.testing.assert_array_equal(stack[[3, 9]], data[[3, 9]])
        np.testing.assert_array_equal(stack[10:20], data[10:20])


def test_nan_in_data_is_an_error(tmp_path):
    data = np.ones((16, 16), np.float32)
    data[3, 4] = np.nan
    path = write_mrc(tmp_path / "nan.mrc", data, pixel_size=1.0)
    with pytest.raises(CryoflowError, match="NaN"):
        read_micrograph(path)


def test_movie_is_not_a_micrograph(tmp_path):
    path = write_mrc(tmp_path / "movie.mrc", np.zeros((5, 16, 16), np.float32), pixel_size=1.0, stack=True)
    with pytest.raises(CryoflowError, match="5 images"):
        read_micrograph(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.mrc"
    write_mrc(target, np.ones((8, 8)), pixel_size=1.0)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cryoflow.io.mrc, "_set_header_stats", boom)
    with pytest.raises(RuntimeError):
        write_mrc(target, np.zeros((8, 8)), pixel_size=1.0)
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mrc"]  # no temporary left


def test_atomic_write_creates_a_fresh_file_with_the_usual_permissions(tmp_path):
    """The temporary name is handed out unused (a placeholder truncated by the writer makes ext4 flush it on
    close); the file written gets the permissions an ordinary write gives (0666 less the umask)."""
    import os

    from cryoflow.io.atomic import atomic_path

    with atomic_path(tmp_path / "a.mrcs") as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path and tmp.name.endswith(".part.mrcs")
        tmp.write_bytes(b"x")
    reference = tmp_path / "reference"
    reference.write_bytes(b"x")
    assert (tmp_path / "a.mrcs").stat().st_mode == reference.stat().st_mode
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "b.mrc"):
        pass  # nothing written: an error, not an empty file
    assert sorted(os.listdir(tmp_path)) == ["a.mrcs", "reference"]


def test_prefetch_is_advice_only(tmp_path):
    """prefetch asks the kernel to read a file ahead where it can, and never fails: a missing file is False."""
    import os

    from cryoflow.io import prefetch

    path = tmp_path / "mic.mrc"
    write_mrc(path, np.arange(64 * 64, dtype=np.float32).reshape(64, 64), 1.0)
    assert prefetch(path) is hasattr(os, "posix_fadvise")
    assert prefetch(tmp_path / "missing.mrc") is False
    assert np.array_equal(read_micrograph(path)[0].ravel(), np.arange(64 * 64))


@pytest.mark.parametrize(
    "shape, dtype, stack, name",
    [
        ((64, 80), np.float32, None, "a.mrc"),
        ((5, 32, 32), np.float16, None, "b.mrcs"),
        ((6, 20, 20), np.int16, False, "c.mrc"),
        ((3, 16, 16), np.float32, True, "d.mrc"),
    ],
)
def test_files_are_mrcfiles_own(tmp_path, shape, dtype, stack, name):
    """write_mrc, and mrc_writer fed a slice at a time, write what mrcfile.new writes (header field by field,
    statistics to float rounding; data bytes equal) and pass mrcfile's validation."""
    from cryoflow.io.mrc import LABEL, mrc_writer

    data = np.random.default_rng(0).normal(10, 3, shape).astype(dtype)
    ref = tmp_path / f"ref_{name}"
    with mrcfile.new(ref) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_image_stack() if (name.endswith(".mrcs") if stack is None else stack) else mrc.set_volume()
        mrc.voxel_size = 1.23
        mrc.header.label[0] = LABEL.ljust(80).encode()
        mrc.header.nlabl = 1
    whole = write_mrc(tmp_path / name, data, 1.23, stack=stack, dtype=dtype)
    parts = tmp_path / "parts" / name
    with mrc_writer(parts, shape, 1.23, stack=stack, dtype=dtype) as writer:
        for part in np.array_split(data, 3):
            writer.write(part)
    expected = ref.read_bytes()
    stats = ("dmin", "dmax", "dmean", "rms")
    for path in (whole, parts):
        got = path.read_bytes()
        assert got[1024:] == expected[1024:]
        header, want = (np.frombuffer(b[:1024], dtype=mrcfile.dtypes.HEADER_DTYPE)[0] for b in (got, expected))
        for field in mrcfile.dtypes.HEADER_DTYPE.names:
            if field in stats:
                assert header[field] == pytest.approx(want[field], rel=1e-5), field
            else:
                assert np.all(header[field] == want[field]), field
        assert mrcfile.validate(path, print_file=io.StringIO())


def test_incomplete_writer_leaves_nothing(tmp_path):
    from cryoflow.io.mrc import mrc_writer

    with pytest.raises(CryoflowError, match="only 2 of 3"), mrc_writer(tmp_path / "s.mrcs", (3, 8, 8), 1.0) as w:
        w.write(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="does not fit"), mrc_writer(tmp_path / "s.mrcs", (3, 8, 8), 1.0) as w:
        w.write(np.zeros((2, 8, 8), np.float64))
    assert list(tmp_path.iterdir()) == []


def test_real_micrographs(shared_data):
    image, apix = read_micrograph(shared_data / "micrographs" / "epu_falcon_bin4.mrc")
    assert image.shape == (1024, 1024)
    assert apix == pytest.approx(2.6664, abs=1e-3)
    image, apix = read_micrograph(shared_data / "micrographs" / "diamond_epu_bin4.mrc")
    assert image.shape == (959, 927) and apix == pytest.approx(3.4152, abs=1e-3)


@pytest.mark.parametrize(
    "dtype, mean", [(np.float32, 20), (np.int16, 20), (np.float16, 20), (np.float32, 0.1), (np.float16, -0.2)]
)
def test_header_stats_as_mrcfile(tmp_path, dtype, mean):
    rng = np.random.default_rng(1)
    # several stats chunks; mean >> spread (deviations summed) and near 0 (sums of squares, as normalized stacks)
    data = (rng.standard_normal((3, 300, 700)) * 7 + mean * 7).astype(dtype)
    ours = write_mrc(tmp_path / "ours.mrcs", data, pixel_size=1.0, dtype=dtype)
    theirs = tmp_path / "theirs.mrcs"
    with mrcfile.new(theirs) as mrc:
        mrc.set_data(data)
    with mrcfile.open(ours) as a, mrcfile.open(theirs) as b:
        for field in ("dmin", "dmax", "dmean", "rms"):
            assert a.header[field].dtype == np.float32
            assert float(a.header[field]) == pytest.approx(float(b.header[field]), rel=1e-5), field
        assert a.is_image_stack() and a.header.label[0].decode().startswith("written by cryoflow")
        np.testing.assert_array_equal(a.data, data)
    # the same data written twice: the same bytes
    again = write_mrc(tmp_path / "again.mrcs", data, pixel_size=1.0, dtype=dtype)
    assert again.read_bytes() == ours.read_bytes()


@pytest.mark.parametrize("mean", [0.05, 30.0])
def test_header_stats_from_given_sums(mean):
    """A caller's sum and sum of squares (extraction has them from normalizing) give the statistics read
    from the data; where the mean is large beside the spread (they would cancel) the data are read instead:
    there the sums given are off by 1e-6 (a caller's rounding), which would put the rms off by 5e-4."""
    from cryoflow.io.mrc import HeaderStats

    rng = np.random.default_rng(3)
    parts = [(rng.standard_normal((4, 50, 50)) + mean).astype(np.float32) for _ in range(3)]
    rounding = 1 + 1e-6 if mean > 1 else 1.0
    read, given = HeaderStats(), HeaderStats()
    for part in parts:
        read.add(part)
        wide = part.astype(np.float64)
        given.add(part, (wide.sum(), (wide**2).sum() * rounding))
    data = np.concatenate(parts).astype(np.float64)
    expected = (data.min(), data.max(), data.mean(), data.std())
    np.testing.assert_allclose(read.result(), expected, rtol=1e-6)
    np.testing.assert_allclose(given.result(), expected, rtol=1e-6)


def test_read_micrograph_memory_mapped(tmp_path):
    data = np.random.default_rng(2).standard_normal((64, 80)).astype(np.float32)
    path = write_mrc(tmp_path / "m.mrc", data, pixel_size=1.2)
    image, apix = read_micrograph(path, mmap=True)
    assert not image.flags.owndata and not image.flags.writeable  # a view of the read-only map
    assert image.dtype == np.float32 and apix == pytest.approx(1.2)
    np.testing.assert_array_equal(image, data)
    # other modes are converted; NaN is still an error
    image16, _ = read_micrograph(write_mrc(tmp_path / "i.mrc", data * 100, pixel_size=1.0, dtype=np.int16), mmap=True)
    np.testing.assert_array_equal(image16, (data * 100).astype(np.int16).astype(np.float32))
    data[5, 6] = np.inf
    with pytest.raises(CryoflowError, match="1 NaN or Inf"):
        read_micrograph(write_mrc(tmp_path / "inf.mrc", data, pixel_size=1.0), mmap=True)


def test_large_writes_go_out_in_pieces(tmp_path, monkeypatch):
    """Data larger than WRITE_CHUNK reaches the file in pieces of WRITE_CHUNK bytes (which may split
    elements), the header last; the MRC written that way is the one written in one call."""
    import os

    sizes = []
    pwrite = os.pwrite

    def recording(fd, data, offset):
        sizes.append((memoryview(data).nbytes, offset))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(cryoflow.io.mrc.os, "pwrite", recording)
    monkeypatch.setattr(cryoflow.io.mrc, "WRITE_CHUNK", 1001)
    rng = np.random.default_rng(2)
    stack = (rng.standard_normal((5, 10, 20)) * 30).astype(np.float32)  # 4,000 bytes
    pieces = write_mrc(tmp_path / "pieces.mrcs", stack, pixel_size=1.5)
    assert sizes == [(1001, 1024), (1001, 2025), (1001, 3026), (997, 4027), (1024, 0)]
    monkeypatch.setattr(cryoflow.io.mrc, "WRITE_CHUNK", 1 << 30)
    whole = write_mrc(tmp_path / "whole.mrcs", stack, pixel_size=1.5)
    assert pieces.read_bytes() == whole.read_bytes()


def test_as_float32_converts_float16_exactly_and_passes_float32_through():
    from cryoflow.io.mrc import as_float32

    rng = np.random.default_rng(2)
    half = (rng.standard_normal((5, 300, 90)) * 100).astype(np.float16)[:, ::2]  # strided, > one piece of 32,768
    assert np.array_equal(as_float32(half), half.astype(np.float32)) and as_float32(half).dtype == np.float32
    single = half.astype(np.float32)
    assert as_float32(single) is single
    assert np.array_equal(as_float32(half.astype(np.int16)), half.astype(np.int16).astype(np.float32))
