"""Loss curves: training and validation loss against steps, wall-clock seconds and forward-pass
equivalents, one panel per task, one colour per optimizer; against steps the line is the mean
over seeds and the band their min-max, against the others each seed is drawn (seeds share no
x values)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

LOSSES = {
    "train_loss": "training loss (mini-batch, mean of 10 rows)",
    "val_loss": "validation loss",
}
LEGEND_WIDTH = 2.5  # inches right of the panels
SMOOTH_ROWS = 10  # mini-batch losses are noisy: a running mean per cell shows the trend

# Cost of each oracle call in forward passes: a backward pass is about two forwards, and a
# Hessian- or GGN-vector product on a retained graph about one gradient (benchmarks/overhead.py
# measured 1.07 and 1.11 gradients on 784-128-10). Times the batch size, so methods on larger
# batches (L-BFGS) are charged for them: the x axis zeroth-order methods are judged on.
ORACLE_COST = {"forward": 1, "backward": 2, "hvp": 3, "ggnvp": 3}
FORWARD_EQUIVALENTS = "forward-pass equivalents x batch size"


def forward_equivalents(runs: pd.DataFrame) -> pd.Series:
    cost = sum(runs[k].fillna(0) * w for k, w in ORACLE_COST.items() if k in runs)
    return cost * runs["batch_size"]


def placeholder(text: str) -> plt.Figure:
    """A figure that says why there is nothing to draw (the target file must still exist)."""
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def legend_right(fig: plt.Figure, ax, title: str, width: float) -> None:
    """Move ``ax``'s legend to one for the figure, right of the panels (per-panel legends of
    16 entries hid curves); ``width``: the figure's width in inches, LEGEND_WIDTH included."""
    handles, labels = ax.get_legend_handles_labels()
    for panel in fig.axes:
        if panel.get_legend() is not None:
            panel.get_legend().remove()
    fig.legend(handles, labels, loc="center right", title=title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - LEGEND_WIDTH / width, 1))


def _smoothed(runs: pd.DataFrame) -> pd.DataFrame:
    cells = runs.groupby(["task", "optimizer", "backend", "seed"], sort=False)["train_loss"]
    return runs.assign(
        train_loss=cells.transform(lambda s: s.rolling(SMOOTH_ROWS, min_periods=1).mean())
    )


def loss_curves(runs: pd.DataFrame, x: str, xlabel: str) -> plt.Figure:
    tasks = sorted(runs["task"].unique())
    if not tasks:  # every cell infeasible or failed before its first row: say so, don't crash
        return placeholder("no metrics logged by any cell")
    width = 5 * len(tasks) + LEGEND_WIDTH
    fig, axes = plt.subplots(len(LOSSES), len(tasks), figsize=(width, 7), squeeze=False)
    runs = _smoothed(runs)
    last = axes[0][0]  # the legend's handles: the last panel drawn
    if x == "forward_equivalents":
        runs = runs.assign(forward_equivalents=forward_equivalents(runs))
    for col, task in enumerate(tasks):
        frame = runs[runs["task"] == task]
        for row, (loss, label) in enumerate(LOSSES.items()):
            ax = axes[row][col]
            data = frame.dropna(subset=[loss])
            data = data[data[loss] > 0]
            if data.empty:
                ax.set_axis_off()
                continue
            by_seed = x != "step"  # seeds share no wall-clock or cost x values: draw each
            sns.lineplot(
                data=data,
                x=x,
                y=loss,
                hue="optimizer",
                ax=ax,
                units="seed" if by_seed else None,
                estimator=None if by_seed else "mean",
                errorbar=None if by_seed else ("pi", 100),  # min-max over seeds: log-safe
                lw=1.2,
            )
            ax.set_yscale("log")
            if x == "forward_equivalents":  # L-BFGS's big batches span three decades more
                ax.set_xscale("log")
            ax.set(title=task, xlabel=xlabel, ylabel=label)
            last = ax
    legend_right(fig, last, "optimizer", width)
    return fig


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


def save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
