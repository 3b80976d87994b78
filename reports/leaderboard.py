"""Per-task leaderboard: rank by time-to-target (every seed must reach it), then final metric.

Mean ± std over seeds. A cell whose seeds did not all reach the target shows "not reached"
(with how many did); failed cells keep their status and reason, ranked last, never dropped.
"""

from __future__ import annotations

import math

import pandas as pd


def _mean_std(values: pd.Series, fmt: str) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return "–"
    if len(values) == 1:
        return format(values.iloc[0], fmt)
    return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


def _statuses(failed: pd.DataFrame, seeds: int) -> str:
    """Each failing status once, with how many seeds ended so and the first seed's reason
    (reasons of one status differ only in details such as the memory free at the time)."""
    if failed.empty:
        return "ok"
    parts = []
    for status, cells in failed.groupby("status", sort=False):
        reason = cells["reason"].dropna()
        parts.append(
            f"{status} ({len(cells)}/{seeds})" + (f": {reason.iloc[0]}" if len(reason) else "")
        )
    return "; ".join(parts)


def rank_task(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per optimizer entry of one task, in rank order, with display columns."""
    higher = (
        bool(cells["higher_is_better"].dropna().iloc[0])
        if cells["higher_is_better"].notna().any()
        else True
    )
    rows = []
    for optimizer, group in cells.groupby("optimizer", sort=False):
        ok = group[group["status"] == "ok"]
        failed = group[group["status"] != "ok"]
        reached = ok["time_to_target_s"].notna().sum()
        all_reached = len(ok) == len(group) and reached == len(group)
        final = ok["final_metric"].astype(float)
        rows.append(
            {
                "optimizer": optimizer,
                "impl": group["impl"].iloc[0],
                "seeds": len(group),
                "params": ", ".join(f"{int(n):,}" for n in group["n_params"].dropna().unique()),
                "batch": ", ".join(str(int(b)) for b in group["batch_size"].dropna().unique()),
                "status": _statuses(failed, len(group)),
                "time to target (s)": _mean_std(ok["time_to_target_s"], ".2f")
                if all_reached
                else (f"not reached ({reached}/{len(group)})" if len(ok) else "–"),
                "steps to target": _mean_std(ok["steps_to_target"], ".0f") if all_reached else "–",
                "forward passes to target": _mean_std(ok["forward_to_target"], ".0f")
                if all_reached
                else "–",
                # forward passes of different batch sizes differ: examples compare across entries
                "examples (fwd) to target": _mean_std(ok["examples_to_target"], ".3g")
                if all_reached
                else "–",
                "final metric": _mean_std(final, ".4g"),
                "final val loss": _mean_std(ok["final_val_loss"], ".4g"),
                "final train loss": _mean_std(ok["train_loss_full"], ".4g")
                if "train_loss_full" in ok
                else "–",
                "peak mem (MiB)": _mean_std(group["peak_mem_bytes"] / 2**20, ".0f"),
                "opt. state (KiB)": _mean_std(group["optimizer_state_bytes"] / 2**10, ".1f"),
                "step (ms)": _mean_std(ok["median_step_s"] * 1e3, ".3f"),
                "_key": (
                    0 if all_reached else (1 if failed.empty else 2),
                    ok["time_to_target_s"].mean() if all_reached else 0.0,
                    -(final.mean() if higher else -final.mean()) if len(final) else math.inf,
                ),
            }
        )
    table = pd.DataFrame(rows).sort_values("_key", kind="stable").drop(columns="_key")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def leaderboard_markdown(summaries: pd.DataFrame) -> str:
    scale = summaries["scale"].iloc[0] if len(summaries) else "?"
    parts = [f"# hessbench leaderboard — scale `{scale}`", ""]
    parts.append(
        "Ranked by wall-clock time to the target (training step only, device-synced; "
        "every seed must reach it), then by final metric. Mean ± std over seeds."
    )
    for task, cells in summaries.groupby("task", sort=True):
        known = cells.dropna(subset=["metric"])
        metric = known["metric"].iloc[0] if len(known) else "metric"
        target = known["target"].iloc[0] if len(known) else None
        direction = (
            "higher" if (known["higher_is_better"].iloc[0] if len(known) else True) else "lower"
        )
        parts += [
            "",
            f"## {task}",
            "",
            f"Metric: {metric} ({direction} is better), target {target}; "
            f"{cells['seed'].nunique()} seed(s).",
            "",
        ]
        table = rank_task(cells)
        source = cells["paper_source"].dropna() if "paper_source" in cells else []
        if len(source):
            paper = cells.groupby("optimizer", sort=False)[["paper_loss", "paper_metric"]].first()
            for column in ("paper_loss", "paper_metric"):
                values = table["optimizer"].map(paper[column])
                table[column.replace("_", " ")] = values.map(
                    lambda v: "–" if v is None or v != v else format(v, ".3g")
                )
            parts += [f"Paper columns: {source.iloc[0]} (loss, {metric}).", ""]
        parts.append(table.to_markdown(index=False))
    overhead = summaries["harness_overhead"].dropna() if "harness_overhead" in summaries else []
    if len(overhead):
        parts += [
            "",
            f"Harness overhead (loop time outside steps, evaluation and W&B flushes ÷ "
            f"loop time): median {overhead.median():.2%}, max {overhead.max():.2%} "
            f"over {len(overhead)} cells.",
        ]
    return "\n".join(parts) + "\n"
