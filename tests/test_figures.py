"""Figures and the feasibility matrix against hand-made runs and summaries: what is drawn is
read back from the Axes (lines, bands, bars, texts by gid), not from the PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from hessbench.reports.feasibility import (
    feasibility_figure,
    feasibility_markdown,
    feasibility_matrix,
)
from hessbench.reports.figures import (
    curves,
    loss_curves,
    memory_bars,
    metric_curves,
    phase_switches,
)

MIB = 2**20


def rows(task, optimizer, seed, steps=10, phases=None, scale=1.0):
    """One cell's logged steps: losses falling with the step, scaled per seed so the mean over
    seeds differs from each seed; ``phases``: the first step of each next phase."""
    step = np.arange(steps)
    phase = np.full(steps, np.nan)
    if phases is not None:
        phase[1:] = np.searchsorted(phases, step[1:], side="right")
    return pd.DataFrame(
        {"task": task, "optimizer": optimizer, "backend": "torch", "seed": seed, "step": step,
         "wall_s": 0.1 * step * (seed + 1), "train_loss": scale / (step + 1),
         "val_loss": scale / (step + 2), "val_metric": 0.5 + 0.04 * step * scale,
         "forward": step, "backward": step, "hvp": 0, "ggnvp": 0, "batch_size": 8,
         "phase": phase}
    )  # fmt: skip


def summary(task, optimizer, seed, status="ok", reason=None, peak=None, state=None, **kw):
    row = {"scale": "cpu", "task": task, "optimizer": optimizer, "impl": optimizer,
           "backend": "torch", "seed": seed, "status": status, "reason": reason,
           "metric": "accuracy", "higher_is_better": True, "peak_mem_bytes": peak,
           "optimizer_state_bytes": state}  # fmt: skip
    return {**row, **kw}


def gids(ax, kind: str) -> dict[str, list]:
    """The artists of ``kind`` (curve, band, phase, peak, state, empty) per optimizer."""
    found: dict[str, list] = {}
    for artist in [*ax.lines, *ax.collections, *ax.patches]:
        gid = artist.get_gid() or ""
        if gid.startswith(kind + ":"):
            found.setdefault(gid.split(":", 1)[1], []).append(artist)
    return found


def is_placeholder(fig) -> bool:
    return len(fig.axes) == 1 and not fig.axes[0].axison and len(fig.axes[0].texts) == 1


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def runs():
    return pd.concat(
        [
            rows("a", "sgd", 0),
            rows("a", "sgd", 1, scale=3.0),
            rows("a", "adam", 0),
            rows("b", "sgd", 0),
        ]  # fmt: skip
    )


def test_curves_draw_one_line_per_optimizer_per_panel_with_a_band_for_several_seeds(runs):
    fig = curves(runs, "val_metric", "step", "step")
    ax_a, ax_b = fig.axes
    assert [ax_a.get_title(), ax_b.get_title()] == ["a", "b"]
    lines_a, lines_b = gids(ax_a, "curve"), gids(ax_b, "curve")
    assert {k: len(v) for k, v in lines_a.items()} == {"adam": 1, "sgd": 1}
    assert {k: len(v) for k, v in lines_b.items()} == {"sgd": 1}
    # against steps the line is the mean over seeds (scales 1 and 3: mean scale 2)
    (sgd,) = lines_a["sgd"]
    assert np.allclose(sgd.get_ydata(), 0.5 + 0.04 * np.arange(10) * 2.0)
    # the band spans the two seeds' min-max; one seed draws none
    assert set(gids(ax_a, "band")) == {"sgd"} and not gids(ax_b, "band")
    (band,) = gids(ax_a, "band")["sgd"]
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 0.5) and np.isclose(ys.max(), 0.5 + 0.04 * 9 * 3.0)
    # an optimizer keeps its colour in every panel, and the legend names each once
    assert lines_a["sgd"][0].get_color() == lines_b["sgd"][0].get_color()
    assert lines_a["sgd"][0].get_color() != lines_a["adam"][0].get_color()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["adam", "sgd"]


def test_curves_against_wall_clock_draw_each_seed(runs):
    fig = curves(runs, "val_metric", "wall_s", "seconds")
    assert len(gids(fig.axes[0], "curve")["sgd"]) == 2
    assert not gids(fig.axes[0], "band")


def test_loss_curves_keep_their_two_log_scaled_rows(runs):
    fig = loss_curves(runs, "forward_equivalents", "forwards")
    assert len(fig.axes) == 4  # train and validation loss, tasks a and b
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == [
        "training loss (mini-batch, mean of 10 rows)",
        "validation loss",
    ]
    assert {ax.get_yscale() for ax in fig.axes} == {"log"}
    assert {ax.get_xscale() for ax in fig.axes} == {"log"}
    # forward equivalents: (1 forward + 2 for the backward) x batch 8 per step
    (adam,) = gids(fig.axes[0], "curve")["adam"]
    assert list(adam.get_xdata()) == [24 * s for s in range(10)]


def test_phase_markers_at_the_chain_switches_only():
    data = pd.concat(
        [rows("pinn", "chain", s, phases=[4, 7]) for s in (0, 1)] + [rows("pinn", "adam", 0)]
    )
    switches = phase_switches(data)
    assert switches.to_dict("list") == {"task": ["pinn"] * 2, "optimizer": ["chain"] * 2,
                                        "step": [3, 6]}  # fmt: skip
    for ax in (
        loss_curves(data, "step", "step").axes
        + metric_curves(data, pd.DataFrame([summary("pinn", "chain", 0)]), "step", "step").axes
    ):
        markers = gids(ax, "phase")
        assert set(markers) == {"chain"}  # none for adam, which has no phases
        assert sorted(line.get_xdata()[0] for line in markers["chain"]) == [3, 6]
        assert {line.get_linestyle() for line in markers["chain"]} == {":"}
    # against wall clock each seed switches at its own time, the wall of its steps 3 and 6:
    # 0.1 s a step for seed 0, 0.2 s for seed 1 (its first switch is seed 0's second)
    (ax, _) = loss_curves(data, "wall_s", "seconds").axes
    at = sorted(round(line.get_xdata()[0], 6) for line in gids(ax, "phase")["chain"])
    assert at == [0.3, 0.6, 1.2]


def test_metric_curves_label_each_task_with_its_metric():
    data = pd.concat([rows("mnist", "sgd", 0), rows("pinn", "adam", 0)])
    sums = pd.DataFrame(
        [
            summary("mnist", "sgd", 0),
            summary("pinn", "adam", 0, metric="l2re", higher_is_better=False),
        ]  # fmt: skip
    )
    mnist, pinn = metric_curves(data, sums, "step", "step").axes
    assert mnist.get_ylabel() == "validation accuracy (↑)" and mnist.get_yscale() == "linear"
    assert pinn.get_ylabel() == "validation l2re (↓)" and pinn.get_yscale() == "log"


def test_curves_fall_back_to_a_placeholder_when_nothing_can_be_drawn(runs):
    assert is_placeholder(curves(runs.iloc[0:0], "val_loss", "step"))
    assert is_placeholder(curves(runs.assign(val_metric=np.nan), "val_metric", "step"))
    assert not is_placeholder(curves(runs, "val_metric", "step"))


def test_memory_bars_are_means_over_finished_seeds_and_keep_failed_entries():
    sums = pd.DataFrame(
        [
            summary("t", "sgd", 0, peak=100 * MIB, state=1 * MIB),
            summary("t", "sgd", 1, peak=200 * MIB, state=1 * MIB),
            summary("t", "adam", 0, peak=300 * MIB, state=4 * MIB),
            summary("t", "adam", 1, "diverged", "nan loss", peak=900 * MIB, state=4 * MIB),
            summary("t", "newton", 0, "infeasible", "too big"),
            summary("u", "sgd", 0, peak=50 * MIB),
        ]  # fmt: skip
    )
    fig = memory_bars(sums)
    t, u = fig.axes[:2]
    widths = {k: [p.get_width() for p in v] for k, v in gids(t, "peak").items()}
    assert widths == {"sgd": [150.0], "adam": [300.0]}  # the diverged seed's 900 is not a score
    assert {k: [p.get_width() for p in v] for k, v in gids(t, "state").items()} == {
        "sgd": [1.0], "adam": [4.0]
    }  # fmt: skip
    (empty,) = gids(t, "empty")["newton"]
    assert not empty.get_fill()
    texts = [x.get_text() for x in t.texts]
    assert "infeasible 1/1" in texts
    assert any(x.endswith("; diverged 1/2") for x in texts)
    assert [x.get_text() for x in t.get_yticklabels()] == ["sgd", "adam", "newton"]
    assert set(gids(u, "peak")) == {"sgd"} and not gids(u, "state")  # no state recorded: none
    assert is_placeholder(memory_bars(sums.iloc[0:0]))


@pytest.fixture
def grid():
    oom = "OutOfMemoryError: CUDA out of memory.\nTried " + "x" * 90
    return pd.DataFrame(
        [summary("t1", "sgd", 0), summary("t1", "sgd", 1),
         summary("t1", "newton", 0, "infeasible", "dense Newton needs 154 GiB"),
         summary("t1", "adam", 0), summary("t1", "adam", 1, "diverged", "loss is nan"),
         summary("t2", "sgd", 0, "oom", oom), summary("t2", "adam", 0),
         summary("t1", "hf", 0, "diverged", "step 7: nan"), summary("t1", "hf", 1, "oom")]
    )  # fmt: skip


def test_feasibility_matrix_gives_each_cell_groups_status_and_reason(grid):
    status = pd.DataFrame(
        {"t1": ["ok", "infeasible", "diverged", "oom"], "t2": ["oom", "not run", "ok", "not run"]},
        index=pd.Index(["sgd", "newton", "adam", "hf"], name="optimizer"),
    )
    reason = pd.DataFrame(
        {"t1": [None, "dense Newton needs 154 GiB", "diverged (1/2 seeds): loss is nan",
                # the gravest status names the group; each failing one keeps its reason
                "oom (1/2 seeds); diverged (1/2 seeds): step 7: nan"],
         "t2": ["OutOfMemoryError: CUDA out of memory. Tried " + "x" * 90, None, None, None]},
        index=status.index, dtype=object,
    )  # fmt: skip
    expected = pd.concat({"status": status, "reason": reason}, axis=1)
    expected.columns.names = ["field", "task"]
    pd.testing.assert_frame_equal(feasibility_matrix(grid), expected)


def test_feasibility_markdown_lists_each_reason(grid):
    md = feasibility_markdown(grid)
    table = [line for line in md.splitlines() if line.startswith("| newton")]
    assert table == ["| newton      | infeasible [2] | –       |"]
    # numbered row by row; whitespace in a reason (a traceback's newline) folded to one space
    assert f"1. `sgd` on `t2` — oom: OutOfMemoryError: CUDA out of memory. Tried {'x' * 90}" in md
    assert "2. `newton` on `t1` — infeasible: dense Newton needs 154 GiB" in md
    assert "3. `adam` on `t1` — diverged (1/2 seeds): loss is nan" in md
    assert "4. `hf` on `t1` — oom (1/2 seeds); diverged (1/2 seeds): step 7: nan" in md


def test_feasibility_figure_colours_and_annotates_every_cell(grid):
    fig = feasibility_figure(grid)
    ax = fig.axes[0]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}  # fmt: skip
    assert texts[1, 1] == "–"  # newton on t2: not run
    assert texts[0, 0] == "ok"
    assert texts[1, 0] == "[2] infeasible\ndense Newton needs 154 GiB"
    long = texts[0, 1]  # the oom reason, cut short: the markdown has it all
    assert long.startswith("[1] oom\nOutOfMemoryError") and long.endswith("…")
    assert max(len(line) for line in long.splitlines()) <= 30
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "ok", "diverged", "oom", "infeasible", "not run"
    ]  # fmt: skip
    image = ax.images[0]
    colours = image.cmap(image.norm(image.get_array()))
    assert np.allclose(colours[1, 1][:3], [211 / 255] * 3)  # grey
    assert is_placeholder(feasibility_figure(grid.iloc[0:0]))
