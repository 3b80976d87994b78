"""Writing a cell's results atomically, and the provenance every summary carries."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "jax", "jaxlib", "optax", "numpy", "pandas", "wandb", "snakemake", "hessbench")
# The code that determines a cell's results, for ``code_sha``. Not the grid's YAML
# (workflows/config/, workflows/profiles/): each summary keeps its cell's full config, so
# adding an entry to the grid must not make every existing result stale.
CODE_DIRS = ("optimizers", "tasks", "workflows")
CODE_SUFFIXES = (".py", ".smk", ".yaml")
NOT_CODE = ("workflows/config/", "workflows/profiles/")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: a reader (or a killed writer)
    never leaves a half-written result that counts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_sha(root: Path = REPO) -> str:
    """SHA-256 over the code under ``root`` that determines results (CODE_DIRS' Python, rule
    and YAML files, and the Snakefile): each relative path and its bytes, in sorted order. Read
    from the tree itself, not git, so an unpacked or dirty tree has one too and a docs-only
    commit leaves it alone. ~50 files: milliseconds, once per cell."""
    root = Path(root)
    files = [root / "Snakefile"] if (root / "Snakefile").is_file() else []
    for folder in CODE_DIRS:
        files += [
            p
            for p in (root / folder).rglob("*")
            if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts and p.is_file()
        ]
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(root).as_posix() for p in files):
        if rel.startswith(NOT_CODE):
            continue
        data = (root / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device, seed: int) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "code_sha": code_sha(),
        "versions": versions,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "seed": seed,
    }
