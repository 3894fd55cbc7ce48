"""MRC reading and writing: modes, pixel size, memory-mapped stacks, atomic writes."""

from __future__ import annotations

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
    elements), anything else in one call; the MRC written that way is the one written in one call."""
    import io

    class Recorder(io.BytesIO):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def write(self, b):
            self.sizes.append(memoryview(b).nbytes)
            return super().write(b)

    monkeypatch.setattr(cryoflow.io.mrc, "WRITE_CHUNK", 1001)
    data = np.arange(1000, dtype=np.float32)
    stream = Recorder()
    writer = cryoflow.io.mrc._ChunkedWrites(stream)
    assert writer.write(b"head") == 4 and writer.write(data) == 4000 and writer.write(data[:10]) == 40
    assert stream.sizes == [4, 1001, 1001, 1001, 997, 40]
    assert stream.getvalue() == b"head" + data.tobytes() + data[:10].tobytes()
    assert writer.tell() == 4044  # other calls reach the file
    rng = np.random.default_rng(2)
    stack = (rng.standard_normal((5, 40, 60)) * 30).astype(np.float32)
    pieces = write_mrc(tmp_path / "pieces.mrcs", stack, pixel_size=1.5)
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
