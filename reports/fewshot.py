"""Few-shot fine-tuning (the ``roberta_ft`` task): test accuracy per optimizer and tuning mode
beside the zero-shot row and the papers' RoBERTa-large k = 16 table, and the training loss and
dev accuracy against forward-pass equivalents (the zeroth-order methods' unit of cost)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .aggregate import cells_of  # noqa: E402
from .figures import (  # noqa: E402
    FORWARD_EQUIVALENTS,
    LEGEND_WIDTH,
    ORACLE_COST,
    forward_equivalents,
    legend_right,
    placeholder,
)

MODULE = "roberta_ft"
# Seed 001's Table 1 (RoBERTa-large, k = 16, mean test accuracy in %; MeZO's rows are MeZO's
# paper's): row -> dataset -> accuracy. PEFT rows are LoRA or prefix, whichever was better.
_COLUMNS = ("sst2", "sst5", "snli", "mnli", "rte", "trec")
_ROWS = {
    "zero-shot": (79.0, 35.5, 50.2, 48.8, 51.4, 32.0),
    "FT": (91.9, 47.5, 77.5, 70.0, 66.4, 85.0),
    "PEFT": (91.9, 47.7, 77.2, 67.7, 66.6, 85.7),
    "MeZO": (90.5, 45.5, 68.5, 58.7, 64.0, 76.9),
    "MeZO (PEFT)": (91.4, 45.8, 71.6, 64.0, 65.4, 80.3),
    "HiZOO": (93.2, 46.2, 74.6, 64.9, 66.8, 79.8),
    "HiZOO (PEFT)": (92.3, 47.2, 71.1, 62.1, 65.4, 82.0),
}
PAPER = {row: dict(zip(_COLUMNS, values, strict=True)) for row, values in _ROWS.items()}
PAPER_SOURCE = "seed 001 Table 1: RoBERTa-large, k = 16"
# the suite's stand-in datasets -> the paper's column they stand in for
STANDS_IN_FOR = {"sst2-rt-snippets": "sst2"}
FIRST_ORDER = {"adamw", "sgd", "sophia", "adahessian"}


def paper_row(impl: str, tuning: str) -> str | None:
    peft = " (PEFT)" if tuning != "full" else ""
    if impl in ("mezo", "hizoo"):
        return {"mezo": "MeZO", "hizoo": "HiZOO"}[impl] + peft
    if impl in FIRST_ORDER:
        return "PEFT" if peft else "FT"
    return None


def _paper(row: str | None, dataset: str) -> float | None:
    return PAPER.get(row, {}).get(STANDS_IN_FOR.get(dataset, dataset)) if row else None


def accuracy_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model, tuning and optimizer: seeds, test accuracy (mean, min, max, in %),
    final dev accuracy, steps, forward passes, step time and peak memory; a zero-shot row per
    dataset and model from the test set scored before the first step."""
    cells = cells_of(summaries, MODULE)
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "k"]
    # a prefix starts as random virtual tokens: its first score is not the model's zero-shot
    zero = (
        ok[ok["tuning"] != "prefix"]
        .groupby(keys)
        .agg(
            seeds=("seed", "nunique"),
            test=("initial_test_metric", "mean"),
            test_min=("initial_test_metric", "min"),
            test_max=("initial_test_metric", "max"),
        )
    )
    zero = zero.reset_index().assign(tuning="-", optimizer="zero-shot", paper_row="zero-shot")
    # forward-pass equivalents (a backward costs 2, a curvature product 3), as the figures
    ok = ok.assign(cost=sum(ok[f"total_{k}"].fillna(0) * w for k, w in ORACLE_COST.items()))
    tuned = ok.groupby([*keys, "tuning", "optimizer", "impl"]).agg(
        seeds=("seed", "nunique"),
        test=("final_test_metric", "mean"),
        test_min=("final_test_metric", "min"),
        test_max=("final_test_metric", "max"),
        dev=("final_metric", "mean"),
        steps=("steps_done", "max"),
        forward=("cost", "mean"),
        step_ms=("median_step_s", lambda s: 1e3 * s.mean()),
        peak_mib=("peak_mem_bytes", lambda s: s.max() / 2**20),
    )
    tuned = tuned.reset_index()
    tuned["paper_row"] = [
        paper_row(i, t) for i, t in zip(tuned["impl"], tuned["tuning"], strict=True)
    ]
    table = pd.concat([zero, tuned.drop(columns="impl")], ignore_index=True)
    for column in ("test", "test_min", "test_max", "dev"):
        table[column] = 100 * table[column]
    table["paper"] = [
        _paper(r, d) for r, d in zip(table["paper_row"], table["dataset"], strict=True)
    ]
    return table


def accuracy_markdown(summaries: pd.DataFrame) -> str:
    table = accuracy_table(summaries)
    if table.empty:
        return "No fine-tuning cell finished.\n"
    lines = [
        "# Few-shot fine-tuning: test accuracy (%)",
        "",
        "Mean (min–max) over seeds of the test accuracy after the last step; the zero-shot row",
        "is the same test set scored before the first step. `dev` is the final accuracy on the",
        "seed's dev set (what the curves and the target use; nothing is selected on test).",
        f"`paper`: {PAPER_SOURCE}, the row of the same method and tuning. Offline stand-ins",
        "(`sst2-rt-snippets`, `minilm-l6`) are different data and a different model from the",
        "paper's: compare the ordering, not the numbers.",
        "",
    ]
    columns = ["optimizer", "tuning", "seeds", "test", "test_min", "test_max", "dev", "steps",
               "forward", "step_ms", "peak_mib", "paper_row", "paper"]  # fmt: skip
    for (dataset, model, k), part in table.groupby(["dataset", "model", "k"], sort=False):
        lines += [f"## {dataset}, {model}, k = {int(k)}", ""]
        shown = part[columns]
        lines += [shown.to_markdown(index=False, floatfmt=".4g"), ""]
    failed = cells_of(summaries, MODULE).query("status != 'ok'")
    for row in failed.itertuples():
        lines.append(
            f"- not in the table: {row.task}/{row.optimizer} seed {int(row.seed)}: {row.status}"
        )
    return "\n".join(lines) + "\n"


def loss_curves(runs: pd.DataFrame, summaries: pd.DataFrame) -> plt.Figure:
    """Training loss and dev accuracy against forward passes, mean over seeds with a min–max
    band, one line per optimizer and tuning mode; forward-pass equivalents as in the other
    figures (a backward costs 2)."""
    cells = cells_of(summaries, MODULE)
    if cells.empty:
        return placeholder("no fine-tuning task in this run")
    keys = ["task", "optimizer", "seed"]
    data = runs.merge(cells[[*keys, "tuning"]], on=keys)
    data = data.assign(run=data["optimizer"] + " (" + data["tuning"] + ")",
                       cost=forward_equivalents(data))  # fmt: skip
    width = 11 + LEGEND_WIDTH
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.5))
    for ax, y, ylabel in (
        (axes[0], "train_loss", "training loss (the step's batch)"),
        (axes[1], "val_metric", "dev accuracy"),
    ):
        sns.lineplot(data=data.dropna(subset=[y]), x="cost", y=y, hue="run", ax=ax, lw=1.2,
                     errorbar=("pi", 100))  # fmt: skip
        ax.set(xlabel=FORWARD_EQUIVALENTS, ylabel=ylabel, xscale="symlog")
        ax.set_xlim(left=0)
    fig.suptitle("few-shot fine-tuning: mean over seeds, band min–max")
    legend_right(fig, ax, "optimizer (tuning)", width)
    return fig
