"""The overhead benchmark's table (results/overhead/{device}.parquet) as markdown, beside the
papers' figures and the goals."""

from __future__ import annotations

import pandas as pd

# Linux batches resident-set counter updates (about 64 pages): a CPU memory ratio whose
# reference is smaller is noise
RESOLUTION_MIB = 0.25


def _number(value) -> bool:
    return value is not None and value == value  # not None, not NaN


def _fmt(value, spec: str) -> str:
    return format(value, spec) if _number(value) else "–"


def _text(value) -> str:
    return value if isinstance(value, str) and value else "–"


def overhead_markdown(
    table: pd.DataFrame, device_name: str, device_type: str, software: str, threads: int,
    scale: str, window: int,
) -> str:  # fmt: skip
    def unresolved(row) -> bool:
        return device_type == "cpu" and row.get("reference step memory (MiB)", 1) < RESOLUTION_MIB

    def verdict(row) -> str:
        marks = []
        for kind, goal, ratio in (
            ("time", row.get("time goal"), row.get("time ratio")),
            ("memory", row.get("memory goal"), row.get("memory ratio")),
        ):
            if _number(goal) and _number(ratio) and not (kind == "memory" and unresolved(row)):
                marks.append(f"{kind} ok" if ratio <= goal else f"{kind} > {goal:g}")
        return ", ".join(marks) or "–"

    lines = [
        f"# Overhead benchmark — {device_name}",
        "",
        f"{software}, {threads} thread(s), the `{scale}` scale's tasks. "
        f"Time ratio: median over {window}-step windows of method time / reference time, with "
        "the min–max over windows (the harness row: its overhead as a fraction of the loop). "
        "Memory: the parameters plus the peak the steps add above them (data excluded), in a "
        "fresh process per runner (MiB: method / reference). State ratio: the method's "
        "optimizer state / the reference's.",
        "",
        "| pair | task | params | steps | time ratio | min–max | method step (ms) | "
        "reference step (ms) | memory ratio (MiB) | state / param bytes | state ratio | "
        "oracle calls / step | paper | goal | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        spread = (
            f"{row['time min']:.2f}–{row['time max']:.2f}" if _number(row.get("time min")) else "–"
        )
        memory = "below resolution" if unresolved(row) else _fmt(row.get("memory ratio"), ".2f")
        lines.append(
            f"| {row['pair']} | {_text(row.get('task'))} | {_fmt(row.get('params'), ',.0f')} | "
            f"{_fmt(row.get('steps'), '.0f')} | {_fmt(row.get('time ratio'), '.3f')} | {spread} | "
            f"{_fmt(row.get('method step (ms)'), '.3f')} | "
            f"{_fmt(row.get('reference step (ms)'), '.3f')} | {memory} "
            f"({_fmt(row.get('method step memory (MiB)'), '.1f')} / "
            f"{_fmt(row.get('reference step memory (MiB)'), '.1f')}) | "
            f"{_fmt(row.get('state / param bytes'), '.2f')} | "
            f"{_fmt(row.get('state ratio'), '.3f')} | "
            f"{_text(row.get('oracle calls per step'))} | {_text(row.get('paper'))} | "
            f"{verdict(row)} | {row.get('status')} |"
        )
    return "\n".join(lines) + "\n"
