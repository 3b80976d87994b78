"""Loss curves: training and validation loss against steps and against wall-clock seconds,
one panel per task, one colour per optimizer; against steps the line is the mean over seeds and
the band their min-max, against seconds each seed is drawn (seeds share no x values)."""

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
SMOOTH_ROWS = 10  # mini-batch losses are noisy: a running mean per cell shows the trend


def _smoothed(runs: pd.DataFrame) -> pd.DataFrame:
    cells = runs.groupby(["task", "optimizer", "backend", "seed"], sort=False)["train_loss"]
    return runs.assign(
        train_loss=cells.transform(lambda s: s.rolling(SMOOTH_ROWS, min_periods=1).mean())
    )


def loss_curves(runs: pd.DataFrame, x: str, xlabel: str) -> plt.Figure:
    tasks = sorted(runs["task"].unique())
    if not tasks:  # every cell infeasible or failed before its first row: say so, don't crash
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no metrics logged by any cell", ha="center", va="center")
        ax.set_axis_off()
        return fig
    fig, axes = plt.subplots(len(LOSSES), len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    runs = _smoothed(runs)
    for col, task in enumerate(tasks):
        frame = runs[runs["task"] == task]
        for row, (loss, label) in enumerate(LOSSES.items()):
            ax = axes[row][col]
            data = frame.dropna(subset=[loss])
            data = data[data[loss] > 0]
            if data.empty:
                ax.set_axis_off()
                continue
            by_seed = x != "step"  # seeds do not share wall-clock x values: draw each
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
            ax.set(title=task, xlabel=xlabel, ylabel=label)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
