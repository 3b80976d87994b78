"""Scoring of optimizer entries from the aggregated tables: time to target (interpolated between
evaluations), a bootstrap interval over seeds, and per (task, optimizer) entry whether it can be
ranked at all. Pure functions on DataFrames; formatting lives in ``leaderboard.py``.

Follows AlgoPerf's time-to-target scoring (the clock stops when the validation metric first
reaches the target) and the modded-nanogpt record rules (a result counts only when every
configured seed reached the target): an entry with a failed, missing or target-missing seed is
shown with its reason but not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .figures import MIB, forward_equivalents

X_COLUMNS = {"time_s": "wall_s", "steps": "step", "forward_eq": "forward_equivalents"}
KEY = ["task", "optimizer", "backend"]


def time_to_target(
    rows: pd.DataFrame, target: float | None, higher_is_better: bool, x: str = "wall_s"
) -> float | None:
    """The ``x`` (``wall_s``, ``step`` or ``forward_equivalents``) at which one cell's
    ``val_metric`` first reaches ``target``; None if it never does or there is no target.

    Evaluations run every ``eval_every`` steps, so the first evaluation at or past the target
    rounds every time up to the next evaluation: entries that cross just after an evaluation
    lose a whole interval, and the ranking then measures ``eval_every`` rather than the
    optimizer. Interpolating linearly between the last evaluation before the crossing and the
    first at or after it estimates the crossing instead (exact when the metric moves linearly in
    between; the first crossing counts even if the metric falls back later, as in AlgoPerf)."""
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return None
    if "val_metric" not in rows:
        return None
    evals = rows.dropna(subset=["val_metric"]).sort_values("step", kind="stable")
    if x == "forward_equivalents" and x not in evals:
        evals = evals.assign(forward_equivalents=forward_equivalents(evals))
    sign = 1.0 if higher_is_better else -1.0
    metric = sign * evals["val_metric"].to_numpy(dtype=float)
    xs = evals[x].to_numpy(dtype=float)
    hits = np.flatnonzero(metric >= sign * target)
    if not len(hits):
        return None
    i = hits[0]
    if i == 0 or not (np.isfinite(metric[i]) and np.isfinite(metric[i - 1])):
        return float(xs[i])
    # metric[i - 1] < target <= metric[i] (signed), so the denominator is positive
    fraction = (sign * target - metric[i - 1]) / (metric[i] - metric[i - 1])
    return float(xs[i - 1] + fraction * (xs[i] - xs[i - 1]))


def bootstrap_ci(
    values, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean over seeds; NaNs dropped.

    With a handful of seeds this describes their spread, not a guaranteed coverage: the
    interval never leaves [min, max] of the values (with two seeds it is exactly that), so it
    is narrower than a t-interval and under-covers at small n. It is still the honest summary
    of what was run, and it needs no normality assumption. Deterministic: a fixed generator."""
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return None
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    # the mean of resampled values lies in [min, max]; clipping only removes rounding
    return float(np.clip(lo, data.min(), data.max())), float(np.clip(hi, data.min(), data.max()))


def statuses(failed: pd.DataFrame, seeds: int) -> str:
    """Each failing status once, with how many seeds ended so and the first seed's reason
    (reasons of one status differ only in details such as the memory free at the time)."""
    if failed.empty:
        return "ok"
    parts = []
    for status, cells in failed.groupby("status", sort=False):
        reason = cells["reason"].dropna() if "reason" in cells else pd.Series(dtype=object)
        parts.append(
            f"{status} ({len(cells)}/{seeds})" + (f": {reason.iloc[0]}" if len(reason) else "")
        )
    return "; ".join(parts)


def _summary_x(cell: pd.Series, name: str) -> float | None:
    """Without runs: the harness's own first-evaluation values (not interpolated; it records
    forwards, not oracle-weighted equivalents)."""
    column = {"time_s": "time_to_target_s", "steps": "steps_to_target"}.get(name)
    value = cell.get(column) if column else None
    return None if value is None or pd.isna(value) else float(value)


def _measure(values: list) -> dict:
    clean = [float(v) for v in values if v is not None and not pd.isna(v)]
    interval = bootstrap_ci(clean)
    lo, hi = interval if interval else (math.nan, math.nan)
    return {"mean": float(np.mean(clean)) if clean else math.nan, "lo": lo, "hi": hi,
            "n": len(clean)}  # fmt: skip


def score(
    summaries: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    seeds_configured: Mapping | None = None,
) -> pd.DataFrame:
    """One row per (task, optimizer, backend) entry: seeds run and configured, status summary,
    mean and 95% bootstrap interval (``<measure>_mean/_lo/_hi/_n``) of time_s, steps,
    forward_eq (to target), final_metric, peak_mem_mib and step_ms over the ok seeds, and
    whether the entry is ``ranked`` (else ``unranked_reason``).

    ``seeds_configured``: task -> seeds (a (task, optimizer) key overrides it for entries run on
    a subset); a task missing from it gets the most seeds any of its entries ran. ``runs``: the
    per-step table; without it the summaries' eval-rounded values stand in (and forward
    equivalents are unknown)."""
    seeds_configured = seeds_configured or {}
    by_cell = {}
    if runs is not None and len(runs) and "val_metric" in runs:
        evals = runs.dropna(subset=["val_metric"])
        evals = evals.assign(forward_equivalents=forward_equivalents(evals))
        by_cell = {key: rows for key, rows in evals.groupby([*KEY, "seed"], sort=False)}
    most = summaries.groupby(KEY[:2])["seed"].nunique().groupby(level=0).max()
    out = []
    for (task, optimizer, backend), group in summaries.groupby(KEY, sort=False, dropna=False):
        ok = group[group["status"] == "ok"]
        failed = group[group["status"] != "ok"]
        run = group["seed"].nunique()
        configured = int(
            seeds_configured.get((task, optimizer), seeds_configured.get(task, most[task]))
        )
        known = group.dropna(subset=["metric"])  # failed-before-building cells know no metric
        metric = known["metric"].iloc[0] if len(known) else None
        higher = bool(known["higher_is_better"].iloc[0]) if len(known) else True
        target = known["target"].iloc[0] if len(known) else None
        to_target = {name: [] for name in X_COLUMNS}
        for _, cell in ok.iterrows():
            for name, x in X_COLUMNS.items():
                if runs is None:
                    to_target[name].append(_summary_x(cell, name))
                    continue
                rows = by_cell.get((task, optimizer, backend, cell["seed"]), pd.DataFrame())
                to_target[name].append(time_to_target(rows, target, higher, x))
        reached = sum(v is not None for v in to_target["time_s"])
        reasons = [f"{run}/{configured} seeds"] if run < configured else []
        reasons += list(dict.fromkeys(failed["status"]))
        if reached < len(ok):
            reasons.append("not reached")
        row = {
            "task": task, "optimizer": optimizer, "backend": backend,
            "impl": group["impl"].iloc[0], "metric": metric, "higher_is_better": higher,
            "target": target,
            "seeds_run": run, "seeds_configured": configured, "seeds_ok": len(ok),
            "seeds_reached": reached, "status": statuses(failed, run),
            "not_reached": None if reached == run else f"not reached ({reached}/{run})",
            "ranked": not reasons, "unranked_reason": "; ".join(reasons) or None,
            "n_params": tuple(int(n) for n in group["n_params"].dropna().unique()),
            "batch_size": tuple(int(b) for b in group["batch_size"].dropna().unique()),
        }  # fmt: skip
        measures = {
            **{name: values if reached == len(ok) else [] for name, values in to_target.items()},
            "final_metric": list(ok["final_metric"]),
            "peak_mem_mib": list(ok["peak_mem_bytes"] / MIB),
            "step_ms": list(ok["median_step_s"] * 1e3),
        }
        for name, values in measures.items():
            row.update({f"{name}_{k}": v for k, v in _measure(values).items()})
        out.append(row)
    return pd.DataFrame(out)


def rank(scores: pd.DataFrame) -> pd.DataFrame:
    """One task's entries in leaderboard order with a ``rank`` column (None when unranked):
    ranked entries by mean time to target, then final metric; then the unranked ones, those
    without a failed seed first, each by time to target (if every seed reached) and final
    metric. Every entry is kept."""
    if scores.empty:
        return scores.assign(rank=pd.Series(dtype=object))
    higher = bool(scores["higher_is_better"].iloc[0])
    final = scores["final_metric_mean"].astype(float)
    key = pd.DataFrame(
        {
            "unranked": ~scores["ranked"].astype(bool),
            "failed": scores["status"] != "ok",
            "missed": scores["time_s_mean"].isna(),
            "time": scores["time_s_mean"].fillna(0.0),
            "final": (-final if higher else final).fillna(math.inf),
        }
    )
    order = key.sort_values(list(key.columns), kind="stable").index
    table = scores.loc[order].reset_index(drop=True)
    ranked = table["ranked"].astype(bool)
    ranks = [int(r) if ok else None for r, ok in zip(ranked.cumsum(), ranked, strict=True)]
    return table.assign(rank=pd.Series(ranks, dtype=object))
