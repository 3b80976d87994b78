"""Feasibility: which optimizer ran on which task, and why each that did not finish failed.

A cell group is one optimizer entry on one task (all its seeds). Its status is "ok" when every
seed finished, else the gravest failing status among its seeds (infeasible > oom > error >
diverged: the first two say the method cannot run at this size, the last that it ran), with
the reason of each failing status; "not run" where the grid never crossed the two.
"""

from __future__ import annotations

import re
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .figures import LEGEND_WIDTH, entry_labels, placeholder  # noqa: E402

NOT_RUN = "not run"
FAILURES = ["infeasible", "oom", "error", "diverged"]  # gravest first
COLOURS = {
    "ok": "#59a14f",
    "diverged": "#f28e2b",
    "oom": "#e15759",
    "infeasible": "#b07aa1",
    "error": "#9c755f",
    "other": "#edc948",  # a status this module does not know
    NOT_RUN: "#d3d3d3",
}
SHORT_REASON = 60  # characters of a reason written in its cell; the markdown has all of it


def _group_status(group: pd.DataFrame) -> tuple[str, str | None]:
    failed = group[group["status"] != "ok"]
    if failed.empty:
        return "ok", None
    statuses = list(dict.fromkeys(failed["status"]))
    statuses.sort(key=lambda s: FAILURES.index(s) if s in FAILURES else len(FAILURES))
    uniform = len(statuses) == 1 and len(failed) == len(group)
    parts = []
    for status in statuses:
        cells = failed[failed["status"] == status]
        # reasons of one status differ only in details, such as the memory free at the time
        known = cells["reason"].dropna()
        reason = re.sub(r"\s+", " ", str(known.iloc[0])).strip() if len(known) else ""
        count = f"{status} ({len(cells)}/{len(group)} seeds)"
        if uniform:  # every seed failed alike: the reason alone (its status is the cell's)
            parts.append(reason or count)
        else:
            parts.append(f"{count}: {reason}" if reason else count)
    return statuses[0], "; ".join(parts)


def feasibility_matrix(summaries: pd.DataFrame) -> pd.DataFrame:
    """Optimizer entries (rows, in the order the grid lists them) × tasks (columns, sorted),
    two column blocks: ``matrix["status"]`` (ok / diverged / oom / infeasible / error /
    not run) and ``matrix["reason"]`` (None where ok or not run)."""
    entries = entry_labels(summaries)
    rows, tasks = list(dict.fromkeys(entries)), sorted(summaries["task"].unique())
    status = pd.DataFrame(NOT_RUN, index=pd.Index(rows, name="optimizer"), columns=tasks)
    reason = pd.DataFrame(None, index=status.index, columns=tasks, dtype=object)
    for (entry, task), group in summaries.groupby([entries, "task"], sort=False):
        status.loc[entry, task], reason.loc[entry, task] = _group_status(group)
    reason = reason.where(reason.notna(), None)  # one "no reason" value, not None and NaN
    matrix = pd.concat({"status": status, "reason": reason}, axis=1)
    matrix.columns.names = ["field", "task"]
    return matrix


def _numbered(matrix: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Each failed cell's footnote number, row by row: the figure and the markdown share them."""
    status = matrix["status"]
    cells = [(o, t) for o in status.index for t in status.columns]
    failed = [c for c in cells if status.loc[c] not in ("ok", NOT_RUN)]
    return {c: n for n, c in enumerate(failed, start=1)}


def _short(reason: str | None, width: int) -> str:
    if not reason:
        return ""
    text = reason if len(reason) <= SHORT_REASON else reason[: SHORT_REASON - 1] + "…"
    return "\n".join(textwrap.wrap(text, width))


def feasibility_figure(summaries: pd.DataFrame) -> plt.Figure:
    """The matrix as a grid of status colours; a failed cell shows its status, its reason's
    start and its number in the markdown's list; a not-run cell is grey and "–"."""
    if summaries.empty:
        return placeholder("no cells in this run")
    matrix = feasibility_matrix(summaries)
    status, reason, numbers = matrix["status"], matrix["reason"], _numbered(matrix)
    kinds = status.map(lambda s: s if s in COLOURS else "other")
    names = [s for s in COLOURS if s in set(kinds.to_numpy().ravel())]
    codes = kinds.map(names.index)
    rows, cols = status.shape
    width = 2.2 * cols + 2.2 + LEGEND_WIDTH
    fig, ax = plt.subplots(figsize=(width, 0.55 * rows + 2))
    ax.imshow(codes.to_numpy(), cmap=ListedColormap([COLOURS[s] for s in names]),
              vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")  # fmt: skip
    for i, optimizer in enumerate(status.index):
        for j, task in enumerate(status.columns):
            value = status.loc[optimizer, task]
            text = {"ok": "ok", NOT_RUN: "–"}.get(value)
            if text is None:
                short = _short(reason.loc[optimizer, task], 30)
                text = f"[{numbers[optimizer, task]}] {value}" + (f"\n{short}" if short else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=6 if "\n" in text else 8)
    ax.set_xticks(range(cols), status.columns, rotation=30, ha="left")
    ax.set_yticks(range(rows), status.index)
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=2)
    ax.tick_params(which="minor", length=0)
    handles = [Patch(color=COLOURS[s], label=s) for s in names]
    fig.legend(handles=handles, loc="center right", title="status", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - LEGEND_WIDTH / width, 1))
    return fig


def feasibility_markdown(summaries: pd.DataFrame) -> str:
    """The matrix (status per optimizer and task, "–" not run, [n] a failure's number) and the
    numbered list of the failures' full reasons."""
    scale = summaries["scale"].iloc[0] if len(summaries) and "scale" in summaries else "?"
    parts = [f"# hessbench feasibility — scale `{scale}`", ""]
    if summaries.empty:
        return "\n".join(parts + ["No cells in this run."]) + "\n"
    matrix = feasibility_matrix(summaries)
    status, reason, numbers = matrix["status"], matrix["reason"], _numbered(matrix)
    shown = status.copy()
    for (optimizer, task), n in numbers.items():
        shown.loc[optimizer, task] = f"{status.loc[optimizer, task]} [{n}]"
    shown = shown.replace(NOT_RUN, "–")
    parts += [
        "Status of each optimizer (all seeds) on each task: ok, or the gravest failure among the "
        "seeds with its number in the list below; – where the grid did not cross the two.",
        "",
        shown.reset_index().to_markdown(index=False),
        "",
    ]
    if numbers:
        parts += ["Reasons:", ""]
        for (optimizer, task), n in numbers.items():
            value, why = status.loc[optimizer, task], reason.loc[optimizer, task]
            why = why if why.startswith(value) else f"{value}: {why}"  # seeds' counts name it
            parts.append(f"{n}. `{optimizer}` on `{task}` — {why}")
    else:
        parts.append("Every cell that ran finished.")
    return "\n".join(parts) + "\n"
