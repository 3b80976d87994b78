"""Curves and memory bars. Curves: a runs column (the losses, the validation metric) against
steps, wall-clock seconds and forward-pass equivalents, one panel per task, one colour per
optimizer (the same in every panel), with dotted lines where a chained schedule hands over to
its next phase; against steps the line is the mean over seeds and the band their min-max,
against the others each seed is drawn (seeds share no x values). Memory bars: peak memory per
optimizer entry, failed entries kept as empty bars."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

LOSSES = {
    "train_loss": "training loss (mini-batch, mean of 10 rows)",
    "val_loss": "validation loss",
}
YLABELS = {**LOSSES, "val_metric": "validation metric"}
LEGEND_WIDTH = 2.5  # inches right of the panels
SMOOTH_ROWS = 10  # mini-batch losses are noisy: a running mean per cell shows the trend
SMOOTHED = {"train_loss"}  # the other columns are evaluations on a fixed set
MIB = 2**20

# Cost of each oracle call in forward passes: a backward pass is about two forwards, and a
# Hessian- or GGN-vector product on a retained graph about one gradient (benchmarks/overhead.py
# measured 1.07 and 1.11 gradients on 784-128-10). Times the batch size, so methods on larger
# batches (L-BFGS) are charged for them: the x axis zeroth-order methods are judged on.
ORACLE_COST = {"forward": 1, "backward": 2, "hvp": 3, "ggnvp": 3}
FORWARD_EQUIVALENTS = "forward-pass equivalents x batch size"
# The x axes of the curve figures: column, label.
X_AXES = (
    ("step", "step"),
    ("wall_s", "wall-clock seconds (training step only)"),
    ("forward_equivalents", FORWARD_EQUIVALENTS),
)


def forward_equivalents(runs: pd.DataFrame) -> pd.Series:
    cost = sum(runs[k].fillna(0) * w for k, w in ORACLE_COST.items() if k in runs)
    return cost * runs["batch_size"]


def placeholder(text: str) -> plt.Figure:
    """A figure that says why there is nothing to draw (the target file must still exist)."""
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def legend_right(fig: plt.Figure, ax, title: str, width: float, handles=None) -> None:
    """Move ``ax``'s legend (or one of ``handles``) to one for the figure, right of the panels
    (per-panel legends of 16 entries hid curves); ``width``: the figure's width in inches,
    LEGEND_WIDTH included."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        labels = [h.get_label() for h in handles]
    for panel in fig.axes:
        if panel.get_legend() is not None:
            panel.get_legend().remove()
    fig.legend(handles, labels, loc="center right", title=title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - LEGEND_WIDTH / width, 1))


def optimizer_palette(optimizers) -> dict[str, tuple]:
    """One colour per optimizer name, fixed by the sorted names, so an optimizer keeps its
    colour across panels and figures whatever subset a task runs (seaborn's per-call hue order
    gave one colour to different optimizers in different panels)."""
    names = sorted(set(optimizers))
    if len(names) <= 10:
        colours = sns.color_palette("tab10", 10)
    elif len(names) <= 20:  # tab20 pairs a dark and a light shade: darks first, for contrast
        tab20 = sns.color_palette("tab20", 20)
        colours = tab20[0::2] + tab20[1::2]
    else:
        colours = sns.color_palette("husl", len(names))
    return dict(zip(names, colours, strict=False))


def entry_labels(summaries: pd.DataFrame) -> pd.Series:
    """An optimizer entry's name; with its backend where a grid runs several backends."""
    if "backend" in summaries and summaries["backend"].nunique() > 1:
        return summaries["optimizer"] + "/" + summaries["backend"].astype(str)
    return summaries["optimizer"]


def _cells(runs: pd.DataFrame) -> list[str]:
    return [k for k in ("task", "optimizer", "backend", "seed") if k in runs]


def smoothed(runs: pd.DataFrame) -> pd.DataFrame:
    cells = runs.groupby(_cells(runs), sort=False)["train_loss"]
    return runs.assign(
        train_loss=cells.transform(lambda s: s.rolling(SMOOTH_ROWS, min_periods=1).mean())
    )


def phase_switches(runs: pd.DataFrame, x: str = "step") -> pd.DataFrame:
    """Where each chained schedule handed over: the ``x`` of a cell's last row of one phase
    before a row of the next (against steps, its summary's ``phase_switches``). One row per
    task, optimizer and distinct ``x``: seeds switching at the same step draw one line."""
    if "phase" not in runs:
        return pd.DataFrame(columns=["task", "optimizer", x])
    rows = runs.dropna(subset=["phase"]).sort_values("step", kind="stable")
    cells = rows.groupby(_cells(rows), sort=False)
    before, last_x = cells["phase"].shift(), cells[x].shift()
    switched = before.notna() & (rows["phase"] != before)
    found = rows.loc[switched, ["task", "optimizer"]].assign(**{x: last_x[switched]})
    return found.dropna().drop_duplicates().reset_index(drop=True)


def curves(
    runs: pd.DataFrame,
    y: str | Sequence[str],
    x: str,
    xlabel: str | None = None,
    ylabel: str | Mapping[str, str] | None = None,
    log: bool | Collection[str] = True,
) -> plt.Figure:
    """``y`` (a runs column, or several: a row of panels each) against ``x`` (a runs column, or
    "forward_equivalents"), one panel per task. ``ylabel``: one label, or one per task (the
    tasks' metrics differ); by default the column's. ``log``: log-scale y on every panel, none,
    or the tasks named (values <= 0 are then dropped). Each optimizer's lines have gid
    ``curve:<optimizer>``, its band ``band:<optimizer>``, its phase markers
    ``phase:<optimizer>``."""
    columns = [y] if isinstance(y, str) else list(y)
    tasks = sorted(runs["task"].unique())
    if not tasks:  # every cell infeasible or failed before its first row: say so, don't crash
        return placeholder("no metrics logged by any cell")
    if x == "forward_equivalents":
        runs = runs.assign(forward_equivalents=forward_equivalents(runs))
    if SMOOTHED & set(columns):
        runs = smoothed(runs)
    palette = optimizer_palette(runs["optimizer"])
    switches = phase_switches(runs, x)
    width = 5 * len(tasks) + LEGEND_WIDTH
    height = max(3.5 * len(columns), 1 + 0.2 * len(palette))  # the legend must fit beside
    fig, axes = plt.subplots(len(columns), len(tasks), figsize=(width, height), squeeze=False)
    drawn, marked = set(), False
    for col, task in enumerate(tasks):
        frame = runs[runs["task"] == task]
        for row, column in enumerate(columns):
            ax, data = axes[row][col], frame.dropna(subset=[column])
            log_y = log if isinstance(log, bool) else task in log
            data = data[data[column] > 0] if log_y else data
            if data.empty:
                ax.set_axis_off()
                continue
            present = set(data["optimizer"])
            here = [o for o in palette if o in present]
            for optimizer in here:
                _draw(ax, data[data["optimizer"] == optimizer], x, column, optimizer, palette)
            for switch in switches[switches["task"] == task].itertuples(index=False):
                if switch.optimizer in here:
                    ax.axvline(getattr(switch, x), color=palette[switch.optimizer], ls=":",
                               lw=1.2, gid=f"phase:{switch.optimizer}")  # fmt: skip
                    marked = True
            drawn.update(here)
            if log_y:
                ax.set_yscale("log")
            if x == "forward_equivalents":  # L-BFGS's big batches span three decades more
                ax.set_xscale("log")
            label = ylabel.get(task) if isinstance(ylabel, Mapping) else ylabel
            ax.set(title=task, xlabel=xlabel or x, ylabel=label or YLABELS.get(column, column))
    if not drawn:
        plt.close(fig)
        return placeholder(f"no {' or '.join(columns)} logged by any cell")
    handles = [Line2D([], [], color=palette[o], label=o) for o in palette if o in drawn]
    if marked:
        handles.append(Line2D([], [], color="k", ls=":", label="chained: next phase"))
    legend_right(fig, axes[0][0], "optimizer", width, handles)
    return fig


def _draw(ax, data: pd.DataFrame, x: str, y: str, optimizer: str, palette: dict) -> None:
    lines, bands = len(ax.lines), len(ax.collections)
    by_seed = x != "step"  # seeds share no wall-clock or cost x values: draw each
    band = not by_seed and data["seed"].nunique() > 1
    sns.lineplot(
        data=data, x=x, y=y, ax=ax, color=palette[optimizer], lw=1.2, legend=False,
        units="seed" if by_seed else None, estimator=None if by_seed else "mean",
        errorbar=("pi", 100) if band else None,  # min-max over seeds: log-safe
    )  # fmt: skip
    for artist in ax.lines[lines:]:
        artist.set_gid(f"curve:{optimizer}")
    for artist in ax.collections[bands:]:
        artist.set_gid(f"band:{optimizer}")


def loss_curves(runs: pd.DataFrame, x: str, xlabel: str) -> plt.Figure:
    """Training (smoothed) and validation loss, log-scaled."""
    return curves(runs, list(LOSSES), x, xlabel)


def metric_curves(runs: pd.DataFrame, summaries: pd.DataFrame, x: str, xlabel: str) -> plt.Figure:
    """The validation metric, labelled with each task's metric name; log-scaled where lower is
    better (L2RE, losses span decades), linear where higher is (accuracy)."""
    known = summaries.dropna(subset=["metric"]).drop_duplicates("task").set_index("task")
    arrow = known["higher_is_better"].map(lambda h: "" if pd.isna(h) else " (↑)" if h else " (↓)")
    labels = ("validation " + known["metric"] + arrow).to_dict()
    log = set(known.index[known["higher_is_better"].map(lambda h: not pd.isna(h) and not h)])
    return curves(runs, "val_metric", x, xlabel, ylabel=labels, log=log)


def lr_sensitivity(summaries: pd.DataFrame) -> plt.Figure:
    """Final metric against the configured learning rate, per task, for every implementation
    run at two or more learning rates (seed 002's robustness claim). Points: mean over the seeds
    that finished; bars: their min-max; a seed that failed (e.g. diverged) is counted in the
    label, never drawn as a score."""
    data = summaries.dropna(subset=["lr"])
    swept = data.groupby(["task", "impl"])["lr"].transform("nunique") > 1
    data = data[swept]
    tasks = sorted(data["task"].unique())
    if not tasks:
        return placeholder("no implementation was run at two learning rates")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        frame = data[data["task"] == task]
        for impl, cells in frame.groupby("impl"):
            rows = []
            for lr, group in cells.groupby("lr"):
                ok = group.loc[group["status"] == "ok", "final_metric"].dropna()
                rows.append((lr, ok.mean(), ok.min(), ok.max(), len(group) - len(ok)))
            lrs, mean, low, high, failed = map(list, zip(*rows, strict=True))
            line = ax.errorbar(
                lrs,
                mean,
                yerr=[[m - lo for m, lo in zip(mean, low, strict=True)],
                      [hi - m for m, hi in zip(mean, high, strict=True)]],
                marker="o",
                capsize=3,
                label=impl,
            )  # fmt: skip
            for lr, m, f in zip(lrs, mean, failed, strict=True):
                if f:
                    y = m if m == m else ax.get_ylim()[0]
                    ax.annotate(f"{f} failed", (lr, y), color=line[0].get_color(), fontsize=8)
        ax.set_xscale("log")
        metric = frame["metric"].dropna()
        ax.set(title=task, xlabel="learning rate", ylabel=metric.iloc[0] if len(metric) else "")
        ax.legend()
    fig.tight_layout()
    return fig


def memory_bars(summaries: pd.DataFrame) -> plt.Figure:
    """Peak memory per optimizer entry, one panel per task, in MiB: bar the mean over the seeds
    that finished, whisker their min-max, inner bar the optimizer state. An entry without a
    finished seed is an empty hatched bar with its status, kept so that a missing bar is never
    read as "no memory"; seeds that failed beside finished ones are counted in the bar's text.
    Bars have gid ``peak:<entry>``, ``state:<entry>`` or ``empty:<entry>``."""
    tasks = sorted(summaries["task"].unique())
    if not tasks:
        return placeholder("no cells in this run")
    summaries = summaries.assign(entry=entry_labels(summaries))
    if "optimizer_state_bytes" not in summaries:
        summaries = summaries.assign(optimizer_state_bytes=float("nan"))
    palette = optimizer_palette(summaries["optimizer"])
    ncols = min(3, len(tasks))
    rows = [tasks[i : i + ncols] for i in range(0, len(tasks), ncols)]
    entries = summaries.groupby("task")["entry"].nunique()
    heights = [1.2 + 0.32 * entries[row].max() for row in rows]
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(6.5 * ncols, sum(heights)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for ax in axes.flat[len(tasks) :]:
        ax.set_axis_off()
    for k, (ax, task) in enumerate(zip(axes.flat, tasks, strict=False)):
        cells = summaries[summaries["task"] == task]
        ok = cells[cells["status"] == "ok"]
        top = ok["peak_mem_bytes"].max() / MIB if ok["peak_mem_bytes"].notna().any() else 1.0
        names = list(dict.fromkeys(cells["entry"]))
        for i, entry in enumerate(names):
            group = cells[cells["entry"] == entry]
            _memory_bar(ax, i, entry, group, palette[group["optimizer"].iloc[0]], top)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        # first entry on top, as in the config; bars as thick as in the row's fullest panel
        ax.set_ylim(entries[rows[k // ncols]].max() - 0.5, -0.5)
        ax.set_xlim(0, top * 1.5)  # room for the text right of the longest whisker
        ax.set(title=task, xlabel="peak memory, MiB (inner bar: optimizer state)")
    fig.tight_layout()
    return fig


def _memory_bar(ax, i: int, entry: str, group: pd.DataFrame, colour, top: float) -> None:
    done = group[group["status"] == "ok"]
    failed = group.loc[group["status"] != "ok", "status"].value_counts(sort=False)
    note = ", ".join(f"{status} {n}/{len(group)}" for status, n in failed.items())
    peak = done["peak_mem_bytes"].dropna() / MIB
    if peak.empty:
        ax.barh(i, top, fill=False, hatch="//", edgecolor="0.6", ls="--", gid=f"empty:{entry}")
        ax.text(top * 0.02, i, note or "no memory recorded", va="center", fontsize=8)
        return
    mean = peak.mean()
    ax.barh(i, mean, color=colour, alpha=0.45, gid=f"peak:{entry}",
            xerr=[[mean - peak.min()], [peak.max() - mean]], capsize=2)  # fmt: skip
    text = f"{mean:,.0f}"
    state = done["optimizer_state_bytes"].dropna() / MIB
    if len(state):
        ax.barh(i, state.mean(), height=0.35, color=colour, gid=f"state:{entry}")
        text += f" (state {state.mean():.3g})"
    text += f"; {note}" if note else ""
    ax.text(peak.max() + top * 0.02, i, text, va="center", fontsize=7)


def save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
