"""Language models (the ``gpt2`` task): validation loss against steps and wall clock for every
optimizer and step budget, and a table of the final validation losses beside throughput, so
seed 000's claim (Sophia at N steps matches AdamW at 2N) can be read off both."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .aggregate import cells_of  # noqa: E402
from .figures import LEGEND_WIDTH, legend_right, placeholder  # noqa: E402

MODULE = "gpt2"


def _label(frame: pd.DataFrame) -> pd.Series:
    return frame["optimizer"] + ", " + frame["steps"].astype("Int64").astype(str) + " steps"


def validation_curves(runs: pd.DataFrame, summaries: pd.DataFrame) -> plt.Figure:
    cells = cells_of(summaries, MODULE)
    if cells.empty:
        return placeholder("no language-model task in this run")
    keys = ["task", "optimizer", "seed"]
    data = runs.merge(cells[[*keys, "steps"]], on=keys).dropna(subset=["val_loss"])
    data = data.assign(run=_label(data))
    width = 11 + LEGEND_WIDTH
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.5))
    for ax, x, xlabel, by_seed in (
        (axes[0], "step", "step", False),
        (axes[1], "wall_s", "wall-clock seconds (training steps only)", True),
    ):
        sns.lineplot(
            data=data, x=x, y="val_loss", hue="run", ax=ax, lw=1.2,
            units="seed" if by_seed else None, estimator=None if by_seed else "mean",
            errorbar=None if by_seed else ("pi", 100),
        )  # fmt: skip
        ax.set(xlabel=xlabel, ylabel="validation loss (fixed windows)")
    fig.suptitle("validation loss: mean over seeds, band min–max (left); each seed (right)")
    legend_right(fig, ax, "optimizer, budget", width)
    return fig


def final_losses(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and step budget: seeds, final validation loss (mean, min, max), tokens/s."""
    cells = cells_of(summaries, MODULE)
    ok = cells[cells["status"] == "ok"]
    table = ok.groupby(["optimizer", "steps"]).agg(
        seeds=("seed", "nunique"),
        val_loss=("final_val_loss", "mean"),
        val_loss_min=("final_val_loss", "min"),
        val_loss_max=("final_val_loss", "max"),
        tokens_per_s=("tokens_per_s", "mean"),
        step_ms=("median_step_s", lambda s: 1e3 * s.mean()),
    )
    return table.reset_index().sort_values(["steps", "val_loss"])


def final_losses_markdown(summaries: pd.DataFrame) -> str:
    table = final_losses(summaries)
    if table.empty:
        return "No language-model cell finished.\n"
    corpus = cells_of(summaries, MODULE)["corpus"].dropna().unique()
    lines = [
        f"# Language models: final validation loss (corpus: {', '.join(corpus)})",
        "",
        "Each run has its own schedule (warmup, cosine to 1/10 at its last step). Seed 000's",
        "claim: Sophia at N steps reaches AdamW's loss at 2N.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    return "\n".join(lines)
