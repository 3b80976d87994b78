"""Chained schedules (Adam -> L-BFGS -> NNCG): the loss against the step for every optimizer
of each task that runs a chain, with each chain's phase switches marked, so whether a phase
lowers the loss after the previous one stalled can be read off (seed 000's figure 11)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .figures import LEGEND_WIDTH, legend_right, placeholder  # noqa: E402


def chained_tasks(summaries: pd.DataFrame) -> list[str]:
    if "phase_names" not in summaries:
        return []
    return sorted(summaries.loc[summaries["phase_names"].notna(), "task"].unique())


def chain_curves(runs: pd.DataFrame, summaries: pd.DataFrame) -> plt.Figure:
    tasks = chained_tasks(summaries)
    if not tasks:
        return placeholder("no chained schedule in this run")
    width = 5.5 * len(tasks) + LEGEND_WIDTH
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        data = runs[(runs["task"] == task) & (runs["train_loss"] > 0)]
        palette = dict(zip(sorted(data["optimizer"].unique()), sns.color_palette(), strict=False))
        sns.lineplot(
            data=data, x="step", y="train_loss", hue="optimizer", palette=palette, ax=ax,
            estimator="mean", errorbar=("pi", 100), lw=1.2,
        )  # fmt: skip
        chains = summaries[(summaries["task"] == task) & summaries["phase_names"].notna()]
        for optimizer, cells in chains.groupby("optimizer"):
            names = cells["phase_names"].iloc[0].split(" → ")
            for switch, name in zip(cells["phase_switches"].iloc[0], names[1:], strict=True):
                ax.axvline(switch, color=palette.get(optimizer), ls="--", lw=0.8)
                ax.annotate(
                    f"→ {name}", (switch, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=palette.get(optimizer),
                )  # fmt: skip
        ax.set_yscale("log")
        ax.set(title=task, xlabel="step (iteration)", ylabel="training loss (the step's batch)")
    legend_right(fig, ax, "optimizer", width)
    return fig
