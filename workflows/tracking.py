"""Weights & Biases: one run per cell, offline unless the user sets ``WANDB_MODE=online``,
every W&B folder inside the results tree; and a reader for offline ``.wandb`` files so tests
(and users without network) can check what a run holds."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

_LOG_BLOCK = 32 * 1024  # the LevelDB log format W&B writes: 32 KiB blocks
_FILE_HEADER = 7  # ":W&B", magic 0xBEE1, version byte
_RECORD_HEADER = 7  # crc32c, length (uint16 LE), type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def point_wandb_into(cell_dir: Path, results_root: Path) -> None:
    """W&B writes into the home folder unless told otherwise: keep it inside ``results/``."""
    os.environ["WANDB_DIR"] = str(cell_dir)
    for var, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        os.environ.setdefault(var, str(results_root / ".wandb" / sub))
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


class Tracker:
    """Buffers metric rows and sends them to W&B in batches (at evaluations and at the end),
    so the per-call cost of ``wandb.log`` stays off the training loop's hot path."""

    def __init__(
        self, project: str, name: str, group: str, config: dict, cell_dir: Path, results_root: Path
    ):
        point_wandb_into(cell_dir, results_root)
        import wandb  # imported late: WANDB_* must be set first

        self._pending: list[dict[str, Any]] = []
        self.run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=config,
            dir=str(cell_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="finish_previous",
        )

    @property
    def run_dir(self) -> str:
        return str(Path(self.run.dir).parent)  # run.dir is the run's files/ folder

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)

    def flush(self) -> None:
        for row in self._pending:
            step = int(row["step"])
            # Unevaluated columns are None/NaN in a row: W&B gets only what was measured.
            self.run.log({k: v for k, v in row.items() if v is not None and v == v}, step=step)
        self._pending.clear()

    def finish(self, summary: dict[str, Any]) -> None:
        self.flush()
        for key, value in summary.items():
            if isinstance(value, int | float | str | bool) or value is None:
                self.run.summary[key] = value
        self.run.finish()


def read_records(path: str | Path) -> list[bytes]:
    """The raw protobuf records of a ``.wandb`` file (LevelDB log framing)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    records, partial, pos = [], b"", _FILE_HEADER
    while pos + _RECORD_HEADER <= len(data):
        left_in_block = _LOG_BLOCK - pos % _LOG_BLOCK
        if left_in_block < _RECORD_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            partial = chunk
        elif kind == _MIDDLE:
            partial += chunk
        elif kind == _LAST:
            records.append(partial + chunk)
            partial = b""
        elif kind == 0 and length == 0:
            pos += left_in_block - _RECORD_HEADER  # zero fill to the end of the block
    return records


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Every ``history`` row logged into an offline ``.wandb`` file, as plain dicts."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in read_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def find_run_file(run_dir: str | Path) -> Path:
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb in {run_dir}, found {len(files)}")
    return files[0]
