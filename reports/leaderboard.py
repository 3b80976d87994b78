"""Leaderboards per task and overall, as markdown and as one HTML page, from the same tables.

Per task: entries whose every configured seed reached the target are ranked by mean wall-clock
time to target (interpolated between evaluations, ``scoring.time_to_target``), then final
metric. The others follow unranked, with rank "–" and why; no entry is ever dropped. Cells read
"mean [lo, hi]": the mean over the ok seeds and a 95% percentile-bootstrap interval.

Overall: the performance-profile score (``performance.overall_table``) from the same scored
table, so both use the same time to target and the same rule for which entries count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from . import backends, html
from .performance import excluded_text, overall_table, overall_text, score_text
from .scoring import rank, score

UNRANKED = "–"
# display column -> (scoring measure, format, whether it is a to-target measure)
MEASURES = {
    "time to target (s)": ("time_s", ".2f", True),
    "steps to target": ("steps", ".0f", True),
    # oracle-weighted forwards times the batch (figures.forward_equivalents), in millions
    "fwd-equiv. to target (M)": ("forward_eq", "sig", True),
    "final metric": ("final_metric", ".4g", False),
    "peak mem (MiB)": ("peak_mem_mib", ".0f", False),
    "step (ms)": ("step_ms", "sig", False),
}
UNITS = {"forward_eq": 1e-6}  # display unit per measure
OVERALL = overall_text()  # performance-profile score over τ in [1, 4]
RULES = (
    "Ranked by wall-clock time to the target (training step only, device-synced; interpolated "
    "between the evaluations around the crossing), then by final metric. Only entries whose "
    "every configured seed ran, finished ok and reached the target are ranked; the others follow "
    "with rank – and the reason. Cells: mean over the ok seeds [95% bootstrap interval]; with "
    "few seeds the interval only describes their spread."
)


def number(value: float, fmt: str) -> str:
    """``format``, where "sig" is three significant digits without the exponent ".3g" puts
    on thousands (3.29e+03 ms reads worse than 3,287)."""
    if fmt != "sig":
        return format(value, fmt)
    return format(value, ",.0f") if abs(value) >= 1000 else format(value, ".3g")


def interval(mean: float, lo: float, hi: float, n: int, fmt: str) -> str:
    """ "mean [lo, hi]"; a single value has no interval to show."""
    if not n or mean != mean:
        return "–"
    if n == 1:
        return number(mean, fmt)
    return f"{number(mean, fmt)} [{number(lo, fmt)}, {number(hi, fmt)}]"


def _measure_cell(entry: pd.Series, measure: str, fmt: str, to_target: bool) -> str:
    if to_target and not entry["seeds_ok"]:
        return "–"  # nothing ran to be "not reached"
    if to_target and pd.notna(entry["not_reached"]):
        return entry["not_reached"]
    scale = UNITS.get(measure, 1.0)
    mean, lo, hi = (entry[f"{measure}_{k}"] * scale for k in ("mean", "lo", "hi"))
    return interval(mean, lo, hi, entry[f"{measure}_n"], fmt)


def _display(entries: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One task's ranked entries as display strings; ``cells``: its summaries rows."""
    rows = []
    for _, entry in entries.iterrows():
        row = {
            "rank": str(entry["rank"]) if entry["ranked"] else UNRANKED,
            "optimizer": entry["optimizer"],
            "impl": entry["impl"],
            "backend": entry["backend"],
            "seeds": f"{entry['seeds_run']}/{entry['seeds_configured']}",
            "status": entry["status"],
        }
        for column, (measure, fmt, to_target) in MEASURES.items():
            row[column] = _measure_cell(entry, measure, fmt, to_target)
        row["params"] = ", ".join(f"{n:,}" for n in entry["n_params"]) or "–"
        row["batch"] = ", ".join(str(b) for b in entry["batch_size"]) or "–"
        reason = entry["unranked_reason"]
        row["unranked because"] = reason if pd.notna(reason) else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["backend"].nunique() < 2:  # one backend: the column says nothing
        table = table.drop(columns="backend")
    source = cells["paper_source"].dropna() if "paper_source" in cells else []
    if len(source):
        ok = cells[cells["status"] == "ok"]
        # the paper reports the training loss: ours beside it
        if "train_loss_full" in ok:
            train = ok.groupby("optimizer")["train_loss_full"].mean()
            table["final train loss"] = table["optimizer"].map(train).map(_number)
        paper = cells.groupby("optimizer", sort=False)[["paper_loss", "paper_metric"]].first()
        for column in ("paper_loss", "paper_metric"):
            table[column.replace("_", " ")] = table["optimizer"].map(paper[column]).map(_number)
    return table


def _number(value) -> str:
    return "–" if value is None or value != value else format(value, ".3g")


def _ranked(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Task -> its entries of ``scores`` (``scoring.score``'s table) in rank order."""
    if scores.empty:
        return {}
    return {task: rank(group) for task, group in scores.groupby("task", sort=True)}


def leaderboard_tables(
    summaries: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    seeds_configured: Mapping | None = None,
) -> dict[str, pd.DataFrame]:
    """Task -> its leaderboard as display strings, in rank order (unranked rows last)."""
    return {
        task: _display(entries, summaries[summaries["task"] == task])
        for task, entries in _ranked(score(summaries, runs, seeds_configured)).items()
    }


def _overall(scores: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The "All tasks" section's text lines and display table."""
    table = overall_table(scores)
    excluded = table.attrs["excluded"]
    table["score"] = table["score"].map(score_text)
    return [OVERALL, *([excluded_text(excluded)] if excluded else [])], table


def _task_text(task: str, entries: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    known = entries.dropna(subset=["metric"])
    metric = known["metric"].iloc[0] if len(known) else "metric"
    target = known["target"].iloc[0] if len(known) else None
    direction = "higher" if (known["higher_is_better"].iloc[0] if len(known) else True) else "lower"
    text = [
        f"Metric: {metric} ({direction} is better), target {target}; "
        f"{entries['seeds_configured'].max()} seed(s) configured."
    ]
    source = cells["paper_source"].dropna() if "paper_source" in cells else []
    if len(source):
        text.append(f"Paper columns: {source.iloc[0]} (loss, {metric}).")
    return text


def _footer(summaries: pd.DataFrame, runs: pd.DataFrame | None) -> list[str]:
    notes = []
    if runs is None:
        notes.append(
            "Without the per-step table: times and steps are at the first evaluation reaching "
            "the target (not interpolated), forward equivalents unknown."
        )
    overhead = summaries["harness_overhead"].dropna() if "harness_overhead" in summaries else []
    if len(overhead):
        notes.append(
            f"Harness overhead (loop time outside steps, evaluation and W&B flushes ÷ "
            f"loop time): median {overhead.median():.2%}, max {overhead.max():.2%} "
            f"over {len(overhead)} cells."
        )
    return notes


def _sections(summaries, runs, seeds_configured):
    """(heading, text lines, display table, row classes, table id) per task, then overall."""
    scores = score(summaries, runs, seeds_configured)  # once: per task and overall
    ranked = _ranked(scores)
    out = []
    for task, entries in ranked.items():
        cells = summaries[summaries["task"] == task]
        table = _display(entries, cells)
        classes = ["" if r else "unranked" for r in entries["ranked"]]
        out.append((task, _task_text(task, entries, cells), table, classes, f"leaderboard-{task}"))
    if ranked:
        out.append(("All tasks", *_overall(scores), None, "overall"))
    versus = backends.comparison(summaries)
    if len(versus):
        out.append(("torch vs jax", [backends.TEXT], backends.display(versus), None, "backends"))
    return out


def leaderboard_markdown(
    summaries: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    seeds_configured: Mapping | None = None,
) -> str:
    parts = [f"# hessbench leaderboard — scale `{_scale(summaries)}`", "", RULES]
    for heading, text, table, _, _ in _sections(summaries, runs, seeds_configured):
        parts += ["", f"## {heading}", ""]
        for line in text:
            parts += [line, ""]
        parts.append(table.to_markdown(index=False))
    for note in _footer(summaries, runs):
        parts += ["", note]
    return "\n".join(parts) + "\n"


def leaderboard_html(
    summaries: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    seeds_configured: Mapping | None = None,
    figures: Iterable[tuple[Path, str]] = (),
) -> str:
    """The leaderboards as one HTML page; with ``figures`` ((PNG, caption) pairs) inlined
    after them, the scale's whole report in one file."""
    sections = [
        html.Section(heading, table, "\n\n".join(text), table_id, classes)
        for heading, text, table, classes, table_id in _sections(summaries, runs, seeds_configured)
    ]
    intro = "\n\n".join([RULES, *_footer(summaries, runs)])
    title = f"hessbench {'report' if figures else 'leaderboard'} — scale {_scale(summaries)}"
    return html.page(title, intro, sections, figures)


def _scale(summaries: pd.DataFrame) -> str:
    return summaries["scale"].iloc[0] if len(summaries) else "?"
