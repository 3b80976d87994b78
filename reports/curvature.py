"""Curvature figures from the diagnostic points (results/{scale}/diagnostics.parquet): top
eigenvalue and trace of the Hessian, and the top eigenvalue of the preconditioned Hessian,
against the step; and the SLQ spectral density at initialisation and at the end."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .figures import placeholder  # noqa: E402

PANELS = [
    ("hessian", "top", "largest Hessian eigenvalue"),
    ("hessian", "trace", "Hessian trace (Hutchinson, ± 1 s.e.)"),
    ("preconditioned", "top", "largest eigenvalue of P^-1/2 H P^-1/2"),
]


def _one_seed(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """The lowest diagnosed seed of each task: start vectors are shared within a seed, so its
    curves differ across optimizers by the Hessian alone."""
    first = diagnostics.groupby("task")["seed"].transform("min")
    return diagnostics[diagnostics["seed"] == first]


def curvature_curves(diagnostics: pd.DataFrame) -> plt.Figure:
    if diagnostics.empty:
        return placeholder("no curvature diagnostics were configured for this scale")
    data = _one_seed(diagnostics).assign(top=lambda d: d["top_eigenvalues"].map(lambda v: v[0]))
    tasks = sorted(data["task"].unique())
    fig, axes = plt.subplots(len(tasks), 3, figsize=(16, 4.2 * len(tasks)), squeeze=False)
    colours = {name: f"C{i % 10}" for i, name in enumerate(sorted(data["optimizer"].unique()))}
    styles = ["-", "--", ":", "-."]
    for row, task in enumerate(tasks):
        frame = data[data["task"] == task]
        for col, (kind, value, label) in enumerate(PANELS):
            ax = axes[row][col]
            cells = frame[frame["kind"] == kind]
            if cells.empty:
                ax.set_axis_off()
                continue
            for i, (optimizer, cell) in enumerate(cells.groupby("optimizer")):
                cell = cell.sort_values("step")
                style = dict(color=colours[optimizer], ls=styles[i // 10 % 4], marker="o", ms=3)
                ax.plot(cell["step"], cell[value], label=optimizer, **style)
                if value == "trace":
                    ax.fill_between(cell["step"], cell["trace"] - cell["trace_se"],
                                    cell["trace"] + cell["trace_se"], alpha=0.15,
                                    color=colours[optimizer])  # fmt: skip
            positive = (cells[value] > 0).all()
            ax.set_yscale("log" if positive else "symlog")
            seed = int(cells["seed"].iloc[0])
            ax.set(title=f"{task} (seed {seed})", xlabel="step", ylabel=label)
        axes[row][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def spectral_densities(diagnostics: pd.DataFrame, bins: int = 4000) -> plt.Figure:
    if diagnostics.empty:
        return placeholder("no curvature diagnostics were configured for this scale")
    data = _one_seed(diagnostics[diagnostics["kind"] == "hessian"])
    tasks = sorted(data["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        frame = data[data["task"] == task]
        nodes = np.concatenate([np.asarray(n) for n in frame["nodes"]])
        low, high = nodes.min(), nodes.max()
        span = max(high - low, 1e-12)
        grid = np.linspace(low - 0.05 * span, high + 0.05 * span, bins)
        # Gaussian smoothing relative to the range (PyHessian's idea); narrow, because one
        # outlier can stretch the range a hundredfold past the bulk
        width = span / 1000
        curves = {"initialisation": frame[frame["step"] == frame["step"].min()].iloc[:1]}
        for optimizer, cell in frame.groupby("optimizer"):
            curves[optimizer] = cell[cell["step"] == cell["step"].max()]
        for i, (label, rows) in enumerate(curves.items()):
            row = rows.iloc[0]
            x, w = np.asarray(row["nodes"]), np.asarray(row["weights"])
            kernel = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)
            density = (kernel * w).sum(1) / (width * np.sqrt(2 * np.pi))
            style = dict(color="k", lw=2) if i == 0 else dict(lw=1, color=f"C{(i - 1) % 10}")
            ax.plot(grid, np.maximum(density, 1e-12), label=f"{label} (step {row['step']})",
                    **style)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=1.0)  # the bulk near 0 and outliers hundreds out
        ax.set_ylim(bottom=1e-6)
        ax.set(title=task, xlabel="eigenvalue", ylabel="density")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
