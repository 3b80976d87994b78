"""Torch against jax: one row per (task, optimizer) entry that runs on both backends.

Step time is each cell's mean training step, after compilation (jax compiles its step ahead
of time, and that compilation is the column of its own); "jax ÷ torch" divides the means over
the seeds that finished ok. Memory is the peak of the process (CPU) or the allocator (GPU) and
the optimizer state's own bytes; the final metric is the task's validation metric. An entry
whose cells did not finish says how they ended instead.
"""

from __future__ import annotations

import pandas as pd

from .figures import MIB

TEXT = (
    "Per optimizer entry run on both backends, from the same initial weights and batches: mean "
    "step time over the ok seeds (after compilation; jax's compile time is its own column), "
    "their ratio, peak memory, optimizer-state memory and final validation metric."
)


def _mean(cells: pd.DataFrame, column: str) -> float:
    values = cells[column].dropna() if column in cells else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else float("nan")


def comparison(summaries: pd.DataFrame) -> pd.DataFrame:
    """Numbers per (task, optimizer) with a non-torch cell: ``{backend} step ms`` etc."""
    if "backend" not in summaries or set(summaries["backend"]) <= {"torch"}:
        return pd.DataFrame()
    rows = []
    for (task, optimizer), cells in summaries.groupby(["task", "optimizer"], sort=False):
        if set(cells["backend"]) == {"torch"}:
            continue
        row = {"task": task, "optimizer": optimizer}
        for backend in ("torch", "jax"):
            mine = cells[cells["backend"] == backend]
            ok = mine[mine["status"] == "ok"]
            statuses = sorted(set(mine["status"]) - {"ok"})
            row[f"{backend} seeds ok"] = f"{len(ok)}/{len(mine)}" + (
                f" ({', '.join(statuses)})" if statuses else ""
            )
            row[f"{backend} step ms"] = 1e3 * _mean(ok, "mean_step_s")
            row[f"{backend} peak MiB"] = _mean(ok, "peak_mem_bytes") / MIB
            row[f"{backend} state MiB"] = _mean(ok, "optimizer_state_bytes") / MIB
            row[f"{backend} final metric"] = _mean(ok, "final_metric")
        row["jax ÷ torch step"] = row["jax step ms"] / row["torch step ms"]
        jax_ok = cells[(cells["backend"] == "jax") & (cells["status"] == "ok")]
        row["jax compile s"] = _mean(jax_ok, "compile_s")
        rows.append(row)
    return pd.DataFrame(rows)


ORDER = [
    "task", "optimizer", "torch seeds ok", "jax seeds ok", "torch step ms", "jax step ms",
    "jax ÷ torch step", "jax compile s", "torch peak MiB", "jax peak MiB", "torch state MiB",
    "jax state MiB", "torch final metric", "jax final metric",
]  # fmt: skip
FORMATS = {"ms": ".3g", "÷": ".2f", "compile": ".2f", "MiB": ".1f", "metric": ".4g"}


def display(table: pd.DataFrame) -> pd.DataFrame:
    """``comparison``'s numbers as strings ("–" where a backend has no ok cell)."""
    out = table[[c for c in ORDER if c in table]].copy()
    for column in out:
        fmt = next((f for key, f in FORMATS.items() if key in column), None)
        if fmt:
            out[column] = out[column].map(lambda v, f=fmt: "–" if pd.isna(v) else format(v, f))
    return out
