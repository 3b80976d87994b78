"""Performance profiles across tasks (AlgoPerf) and a time-vs-memory Pareto figure per task.

The profiles are computed from the table ``scoring.score`` returns, so the overall score and
the per-task leaderboards share one time to target (interpolated between evaluations) and one
rule: an entry has a time on a task only if it is ``ranked`` there (every configured seed ran,
ended ok and reached the target), otherwise its ratio is infinite. Per task, the ratio is the
entry's time over the task's best. ρ(τ) is the fraction of an entry's tasks with ratio ≤ τ, and
the score the area under ρ over [1, τ_max] divided by τ_max − 1 (1: best everywhere, 0: never
within τ_max of the best). Entries are named by optimizer, with "/<backend>" when the backend
is not torch, so a port to another backend is an entry of its own.

Scored tasks: AlgoPerf scores every submission over one fixed workload set, but here the task
grid is per entry on purpose (the PINN schedules and the LoRA zeroth-order entries run only
their own tasks), so charging infinity for a task an entry was never configured to run would
count "not applicable" as "failed". An entry is therefore scored over the profiled tasks it
ran (has a row for, infeasible ones included: those it ran and failed); the table's
"tasks run" / "tasks profiled" columns and the profile legend's "n/N tasks" show how many,
so a score over one task is not read as one over all of them.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402

from .figures import LEGEND_WIDTH, MIB, legend_right, placeholder  # noqa: E402

TAU_MAX = 4.0
TAUS = np.linspace(1.0, TAU_MAX, 301)


def entry_labels(scores: pd.DataFrame) -> pd.Series:
    """Per row of ``scores``: its optimizer, with "/<backend>" unless the backend is torch (or
    unknown: a cell that failed before building may not record one)."""
    backend = scores["backend"] if "backend" in scores else pd.Series(None, index=scores.index)
    other = backend.notna() & (backend != "torch")
    return scores["optimizer"].where(~other, scores["optimizer"] + "/" + backend.astype(str))


def performance_ratios(scores: pd.DataFrame) -> pd.DataFrame:
    """(task, optimizer, ratio), one row per entry of ``scores`` (``scoring.score``'s table)
    whose task is profiled. An entry's time is its ``time_s_mean`` if it is ``ranked``,
    otherwise infinite (fewer seeds than configured, a failed seed, a seed missing the target):
    a mean over the seeds that got there would reward luck. Tasks with no ranked entry are
    dropped; their names are in ``.attrs["excluded"]``."""
    rows, excluded = [], []
    if scores.empty:  # score() of no cells has no columns either
        scores = pd.DataFrame(columns=["task", "optimizer", "backend", "ranked", "time_s_mean"])
    labels = entry_labels(scores)
    for task, entries in scores.groupby("task", sort=True):
        ranked = entries["ranked"].astype(bool)
        times = entries["time_s_mean"].astype(float).where(ranked, math.inf).fillna(math.inf)
        best = times.min()
        if math.isinf(best):
            excluded.append(task)
            continue
        # a best of 0 (the target met at the first evaluation): only the tied entries get 1
        ratios = [1.0 if t == best else t / best if best > 0 else math.inf for t in times]
        rows += list(zip([task] * len(times), labels[entries.index], ratios, strict=True))
    ratios = pd.DataFrame(rows, columns=["task", "optimizer", "ratio"])
    ratios = ratios.sort_values(["task", "optimizer"], kind="stable", ignore_index=True)
    ratios.attrs["excluded"] = excluded
    return ratios


def profile(ratios: pd.DataFrame, taus=TAUS) -> pd.DataFrame:
    """(optimizer, tau, rho): ρ(τ) = the fraction of the entry's profiled tasks with ratio
    ≤ τ (the denominator is its own task count, see the module's docstring)."""
    taus = np.asarray(taus, dtype=float)
    frames = []
    for optimizer, group in ratios.groupby("optimizer", sort=True):
        rho = (group["ratio"].to_numpy()[None, :] <= taus[:, None]).mean(axis=1)
        frames.append(pd.DataFrame({"optimizer": optimizer, "tau": taus, "rho": rho}))
    if not frames:
        return pd.DataFrame(columns=["optimizer", "tau", "rho"])
    return pd.concat(frames, ignore_index=True)


def profile_score(ratios: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.Series:
    """Area under ρ(τ) over [1, tau_max] / (tau_max − 1), per entry, exactly: ρ is a mean of
    step functions 1[τ ≥ r_t], each with area max(0, tau_max − r_t) on [1, tau_max], so the
    score is the mean over tasks of max(0, tau_max − r_t) / (tau_max − 1), no grid error.
    E.g. ratios 1 and 2 with tau_max 4: (3/3 + 2/3) / 2 = 0.8333."""
    if tau_max <= 1:
        raise ValueError(f"tau_max must exceed 1, got {tau_max}")
    area = (tau_max - ratios["ratio"]).clip(lower=0) / (tau_max - 1)
    return area.groupby(ratios["optimizer"]).mean().rename("score")


def overall_table(scores: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.DataFrame:
    """One row per entry of ``scores`` (``scoring.score``'s table), by score descending, then
    fewer tasks missed (a score of 0 does not tell "reached, but beyond τ_max" from "never
    reached"); entries with no profiled task come last with score NaN. "tasks run": every task
    it has a row for; "tasks profiled": those of them some entry is ranked on (the score's
    denominator). ``.attrs["excluded"]``: the tasks left out because no entry is ranked."""
    ratios = performance_ratios(scores)
    by_entry = ratios.groupby("optimizer")["ratio"]
    within = f"reached within τ={tau_max:g}"
    if scores.empty:  # score() of no cells has no columns either
        tasks_run = pd.Series(dtype=int)
    else:
        tasks_run = scores.groupby(entry_labels(scores))["task"].nunique()
    table = pd.DataFrame(
        {
            "score": profile_score(ratios, tau_max),
            "tasks run": tasks_run,
            "tasks profiled": by_entry.size(),
            "best (ratio 1)": by_entry.agg(lambda r: int((r == 1).sum())),
            within: by_entry.agg(lambda r: int((r <= tau_max).sum())),
            "not reached / failed": by_entry.agg(lambda r: int(np.isinf(r).sum())),
        },
        index=tasks_run.index,
    )
    counts = table.columns[1:]
    table[counts] = table[counts].fillna(0).astype(int)
    table["score"] = table["score"].astype(float)
    table = table.rename_axis("optimizer").reset_index()
    table = table.sort_values(
        ["score", "not reached / failed", "tasks profiled", "optimizer"],
        ascending=[False, True, False, True],
        kind="stable",
    ).reset_index(drop=True)
    table.attrs["excluded"] = ratios.attrs["excluded"]
    return table


def score_text(value: float) -> str:
    """A score for display: three decimals, "–" for NaN (no profiled task)."""
    return "–" if value != value else f"{value:.3f}"


def overall_text(tau_max: float = TAU_MAX) -> str:
    return (
        f"Performance-profile score (AlgoPerf): per task, an entry's time to target ÷ the "
        f"task's best; the score is the area under ρ(τ), the fraction of its tasks within τ, "
        f"for τ in [1, {tau_max:g}], ÷ {tau_max - 1:g}, over the profiled tasks the entry ran. "
        "Time to target: wall clock, interpolated between evaluations, mean over seeds; every "
        "configured seed must run, end ok and reach the target, else the ratio is infinite."
    )


def excluded_text(excluded: list[str]) -> str:
    return f"Not profiled (no entry reached the target): {', '.join(excluded)}."


def overall_markdown(scores: pd.DataFrame, tau_max: float = TAU_MAX) -> str:
    table = overall_table(scores, tau_max=tau_max)
    table["score"] = table["score"].map(score_text)
    excluded = table.attrs["excluded"]
    lines = [overall_text(tau_max), "", table.to_markdown(index=False)]
    if excluded:
        lines += ["", excluded_text(excluded)]
    return "\n".join(lines) + "\n"


def profile_figure(ratios: pd.DataFrame, tau_max: float = TAU_MAX) -> plt.Figure:
    """ρ(τ) per entry, drawn exactly: the τ values are the jumps (the ratios), not a grid."""
    if ratios.empty:
        return placeholder("no task was reached by any entry: nothing to profile")
    finite = ratios["ratio"][ratios["ratio"] <= tau_max]
    taus = np.unique(np.concatenate([[1.0, tau_max], finite]))
    curves = profile(ratios, taus)
    n_tasks = ratios.groupby("optimizer")["task"].nunique()
    total = ratios["task"].nunique()
    entries = sorted(n_tasks.index)
    colours = dict(zip(entries, sns.color_palette("husl", len(entries)), strict=True))
    width = 8 + LEGEND_WIDTH
    fig, ax = plt.subplots(figsize=(width, 5))
    for i, optimizer in enumerate(entries):
        curve = curves[curves["optimizer"] == optimizer]
        ax.step(
            curve["tau"], curve["rho"], where="post", color=colours[optimizer], lw=1.5,
            ls=["-", "--", ":", "-."][i % 4],  # many entries share a curve: tell them apart
            label=f"{optimizer} ({n_tasks[optimizer]}/{total} tasks)",
        )  # fmt: skip
    tasks = ", ".join(sorted(set(ratios["task"])))
    ax.set(
        xlim=(1, tau_max), ylim=(-0.02, 1.02), xlabel="τ (time to target ÷ the task's best)",
        ylabel="ρ(τ): fraction of the entry's tasks within τ",
        title=f"Performance profiles over {total} task(s): {tasks}",
    )  # fmt: skip
    excluded = ratios.attrs.get("excluded", [])
    if excluded:
        note = "not profiled (no entry reached the target): " + ", ".join(excluded)
        ax.annotate(
            textwrap.fill(note, 110), (0, -0.14), xycoords="axes fraction", va="top", fontsize=8
        )
    legend_right(fig, ax, "entry (tasks it ran / profiled)", width)
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True where no other point is at least as good in both and better in one (lower is
    better in both). Identical points do not dominate each other: both stay."""
    xs, ys = points[x].to_numpy(float), points[y].to_numpy(float)
    weakly = (xs[None, :] <= xs[:, None]) & (ys[None, :] <= ys[:, None])
    strictly = (xs[None, :] < xs[:, None]) | (ys[None, :] < ys[:, None])
    return pd.Series(~(weakly & strictly).any(axis=1), index=points.index)


def _pareto_panel(ax, cells: pd.DataFrame, colours: dict) -> list[str]:
    """Draw one task's panel; return the entries it plotted."""
    ok = cells.groupby("optimizer")["status"].agg(lambda s: bool((s == "ok").all()))
    points = (
        cells[cells["optimizer"].isin(ok.index[ok])]
        .groupby("optimizer")
        .agg(wall_s=("wall_s", "mean"), mem=("peak_mem_bytes", "mean"))
        .dropna()
    )
    points["mem"] /= MIB
    failed = [
        f"{o} ({'/'.join(sorted(cells.loc[cells['optimizer'] == o, 'status'].unique()))})"
        for o in ok.index[~ok]
    ]
    title = cells["task"].iloc[0]
    if failed:
        title += "\n" + textwrap.fill("not plotted: " + ", ".join(failed), 60)
    ax.set_title(title, fontsize=9)
    if points.empty:
        ax.text(0.5, 0.5, "no entry ended ok", ha="center", va="center", transform=ax.transAxes)
        return []
    front = pareto_front(points, "wall_s", "mem")
    for optimizer, point in points.iterrows():
        on = bool(front[optimizer])
        ax.scatter(
            point["wall_s"], point["mem"], color=colours[optimizer], zorder=3,
            s=60 if on else 25, edgecolor="black" if on else "none",
        )  # fmt: skip
        if on:  # the frontier is what the panel is read for: name it on the plot
            ax.annotate(optimizer, (point["wall_s"], point["mem"]), xytext=(4, 4),
                        textcoords="offset points", fontsize=7)  # fmt: skip
    frontier = points[front].sort_values(["wall_s", "mem"])
    ax.step(frontier["wall_s"], frontier["mem"], where="post", color="black", lw=0.9, ls="--")
    for axis, values in (("x", points["wall_s"]), ("y", points["mem"])):
        if values.min() > 0 and values.max() / values.min() >= 10:
            getattr(ax, f"set_{axis}scale")("log")
            # minor labels (2x10^0, 3x10^0, ...) collide within a decade or two
            getattr(ax, f"{axis}axis").set_minor_formatter(NullFormatter())
            getattr(ax, f"{axis}axis").set_major_formatter(FormatStrFormatter("%g"))
    ax.set(xlabel="training-step time to the run's end (s)", ylabel="peak memory (MiB)")
    return list(points.index)


def pareto_figure(summaries: pd.DataFrame, columns: int = 4) -> plt.Figure:
    """Per task: the training-step wall clock to the end of the configured run (``wall_s``,
    mean over seeds) against peak memory (mean over seeds), one point per entry whose seeds
    all ended ok. Total time, not the median step: a step of L-BFGS or Newton does far more
    work than one of SGD, so per-step times do not compare; what a run costs does. Failed or
    infeasible entries are named under the panel's title. Frontier points: black-edged."""
    tasks = sorted(summaries["task"].unique())
    if not tasks:
        return placeholder("no cells: nothing to place on a time-memory plane")
    entries = sorted(summaries["optimizer"].unique())
    colours = dict(zip(entries, sns.color_palette("husl", len(entries)), strict=True))
    cols = min(columns, len(tasks))
    width = 4.5 * cols + LEGEND_WIDTH
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        fig.delaxes(ax)
    plotted = set()
    for ax, task in zip(axes.flat, tasks, strict=False):
        plotted.update(_pareto_panel(ax, summaries[summaries["task"] == task], colours))
    # proxies, not a panel's handles: a panel's marker may be a frontier one (bigger, edged)
    # and legend_right would show only one panel's entries
    shown = [e for e in entries if e in plotted]
    handles = [Line2D([], [], ls="", marker="o", color=colours[e]) for e in shown]
    handles.append(Line2D([], [], ls="--", color="black", marker="o", mfc="none", mec="black"))
    fig.legend(handles, [*shown, "Pareto frontier"], loc="center right", title="entry",
               fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1 - LEGEND_WIDTH / width, 1))
    return fig
