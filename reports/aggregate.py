"""Every cell's files -> two tidy tables: ``runs`` (one row per logged step, with the cell's
identity and status) and ``summaries`` (one row per cell)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .provenance import check

IDENTITY = ["scale", "task", "optimizer", "impl", "backend", "seed"]
# What every metrics row of ``runs`` carries besides its cell's identity: a row read alone
# says how its cell ended, on which batch size, and from which code, commit and device.
RUN_CONTEXT = ["status", "batch_size", "code_sha", "git_sha", "device_name"]
SUMMARY_FIELDS = IDENTITY + [
    "status",
    "reason",
    "metric",
    "higher_is_better",
    "target",
    "n_params",
    "steps_done",
    "final_metric",
    "best_metric",
    "final_val_loss",
    "final_train_loss",
    "train_loss_full",
    "steps_to_target",
    "time_to_target_s",
    "forward_to_target",
    "examples_to_target",
    "wall_s",
    "eval_s",
    "tracking_s",
    "diagnostics_s",
    "loop_s",
    "harness_overhead",
    "mean_step_s",
    "median_step_s",
    "compile_s",
    "peak_mem_bytes",
    "optimizer_state_bytes",
    "total_forward",
    "total_backward",
    "total_hvp",
    "total_ggnvp",
    "batch_size",
    "schedule",
    "tokens_per_s",
    "initial_test_metric",
    "final_test_metric",
]


def cells_of(summaries: pd.DataFrame, module: str) -> pd.DataFrame:
    """The summaries of the cells whose task is an instance of task module ``module``."""
    if "task_module" not in summaries:
        return summaries.iloc[0:0]
    return summaries[summaries["task_module"] == module]


def read_summary(path: Path, summary: dict | None = None) -> dict:
    """One summaries row: the cell's ``summary.json`` (read from ``path`` unless given)."""
    if summary is None:
        summary = json.loads(Path(path).read_text())
    row = {key: summary.get(key) for key in SUMMARY_FIELDS}
    if row.get("batch_size") is None:  # cells that stopped before building the task
        row["batch_size"] = ((summary.get("config") or {}).get("settings") or {}).get("batch_size")
    config = summary.get("config") or {}
    settings = config.get("settings") or {}
    # the learning rate the config gave (None: the implementation's default)
    row["lr"] = (config.get("hyperparameters") or {}).get("lr")
    row["task_module"] = config.get("task_module")
    row["steps"] = settings.get("steps")  # the budget; steps_done says how far a cell got
    row["corpus"] = settings.get("corpus")
    for key in ("dataset", "model", "tuning", "k"):  # fine-tuning tasks
        row[key] = settings.get(key)
    paper = summary.get("paper") or {}
    row["paper_loss"], row["paper_metric"] = paper.get("loss"), paper.get("metric")
    row["paper_source"] = paper.get("source")
    # a chained schedule's phases and the steps after which each next one took over
    row["phase_names"] = " → ".join(summary.get("phase_names") or []) or None
    row["phase_switches"] = summary.get("phase_switches")
    row["git_sha"] = (summary.get("provenance") or {}).get("git_sha")
    row["device_name"] = (summary.get("provenance") or {}).get("device_name")
    row["code_sha"] = ((summary.get("provenance") or {}).get("code_sha") or "")[:12] or None
    row["cell_dir"] = str(Path(path).parent)
    return row


def aggregate_diagnostics(summaries: pd.DataFrame) -> pd.DataFrame:
    """Every cell's diagnostics.parquet (curvature points) with the cell's identity."""
    frames = []
    for row in summaries.to_dict("records"):
        path = Path(row["cell_dir"]) / "diagnostics.parquet"
        if path.exists() and len(frame := pd.read_parquet(path)):
            frames.append(frame.assign(**{key: row[key] for key in IDENTITY}))
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, "step", "kind"])
    return pd.concat(frames, ignore_index=True)


def aggregate(
    summary_paths: list[Path], allow_mixed_provenance: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, summaries). Unless ``allow_mixed_provenance``, first checks that every cell ran
    the same code and every entry's seeds the same config (``reports/provenance.py``)."""
    loaded = [(Path(p), json.loads(Path(p).read_text())) for p in summary_paths]
    if not allow_mixed_provenance:
        check(loaded)
    summaries = pd.DataFrame([read_summary(p, s) for p, s in loaded])
    frames = []
    for row in summaries.to_dict("records"):
        metrics = Path(row["cell_dir"]) / "metrics.parquet"
        if not metrics.exists():
            continue
        frame = pd.read_parquet(metrics)
        if frame.empty:
            continue
        identity = {key: row[key] for key in IDENTITY + RUN_CONTEXT}
        frames.append(frame.assign(**identity)[[*identity, *frame.columns]])
    empty = pd.DataFrame(columns=[*IDENTITY, *RUN_CONTEXT, "step"])
    runs = pd.concat(frames, ignore_index=True) if frames else empty
    return runs, summaries
