"""Performance profiles and the time-memory Pareto figure against hand-computed numbers.

Hand-made cells go through the real ``scoring.score`` without a per-step table, so an entry's
time is the mean of its seeds' ``time_to_target_s`` (not interpolated) and the hand-computed
ratios hold; whether an entry counts is score's ``ranked``."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from hessbench.reports.performance import (
    overall_markdown,
    overall_table,
    pareto_figure,
    pareto_front,
    performance_ratios,
    profile,
    profile_figure,
    profile_score,
)
from hessbench.reports.scoring import score

MIB = 2**20


def cell(task, optimizer, seed, tt=None, *, status="ok", wall=10.0, mem_mib=100.0, backend="torch"):
    """One summaries row with what ``score`` and ``pareto_figure`` read."""
    ok = status == "ok"
    return {
        "task": task, "optimizer": optimizer, "impl": optimizer, "backend": backend,
        "seed": seed, "status": status, "reason": None if ok else f"{status} here",
        "metric": "accuracy", "higher_is_better": True, "target": 0.9,
        "time_to_target_s": tt if ok else None,
        "steps_to_target": None if tt is None or not ok else 10 * tt,
        "final_metric": (0.95 if tt is not None else 0.5) if ok else None,
        "wall_s": wall if ok else None, "median_step_s": 0.01 if ok else None,
        "peak_mem_bytes": mem_mib * MIB if ok else None, "n_params": 100, "batch_size": 8,
    }  # fmt: skip


def entry(task, optimizer, *times, **kw):
    return [cell(task, optimizer, seed, tt, **kw) for seed, tt in enumerate(times)]


def scores(rows: list[dict], seeds_configured=None) -> pd.DataFrame:
    return score(pd.DataFrame(rows), None, seeds_configured)


def ratio_of(ratios: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(r.task, r.optimizer): r.ratio for r in ratios.itertuples()}


def test_ratios_mean_over_seeds_tie_for_best_and_failures_infinite():
    rows = [
        *entry("A", "a", 2.0, 4.0),  # mean 3
        *entry("A", "b", 3.0, 3.0),  # mean 3: tied for best with a
        *entry("A", "c", 6.0, 6.0),  # 6 / 3 = 2
        cell("A", "d", 0, 0.5), cell("A", "d", 1, status="diverged"),  # fastest seed, one failed
        *entry("A", "e", 0.5, None),  # both ok, one missed the target
        cell("A", "f", 0, status="infeasible"),
    ]  # fmt: skip
    got = ratio_of(performance_ratios(scores(rows)))
    assert got == {
        ("A", "a"): 1.0, ("A", "b"): 1.0, ("A", "c"): 2.0,
        ("A", "d"): math.inf, ("A", "e"): math.inf, ("A", "f"): math.inf,
    }  # fmt: skip


def test_task_nobody_reached_is_excluded_and_reported():
    rows = [
        *entry("A", "a", 1.0), *entry("A", "b", 4.0),
        *entry("B", "a", None), cell("B", "b", 0, status="oom"),
        *entry("C", "a", 1.0, None),  # one seed reached: not enough
    ]  # fmt: skip
    ratios = performance_ratios(scores(rows))
    assert set(ratios["task"]) == {"A"}
    assert ratios.attrs["excluded"] == ["B", "C"]
    table = overall_table(scores(rows))
    assert table.attrs["excluded"] == ["B", "C"]
    assert "Not profiled (no entry reached the target): B, C." in overall_markdown(scores(rows))


def test_fewer_seeds_than_configured_is_infinite():
    rows = [*entry("A", "a", 2.0, 2.0), *entry("A", "b", 0.5)]  # b: faster, on one seed
    # configured: the most seeds any entry of the task ran (2), or said so
    for configured in (None, {"A": 2}):
        assert ratio_of(performance_ratios(scores(rows, configured))) == {
            ("A", "a"): 1.0, ("A", "b"): math.inf,
        }  # fmt: skip
    # configured for one seed on this entry: it counts, and is the best
    got = ratio_of(performance_ratios(scores(rows, {"A": 2, ("A", "b"): 1})))
    assert got == {("A", "a"): 4.0, ("A", "b"): 1.0}
    # nobody ran every configured seed: the task is not profiled
    ratios = performance_ratios(scores(rows, {"A": 3}))
    assert ratios.empty and ratios.attrs["excluded"] == ["A"]


def test_a_backend_other_than_torch_is_an_entry_of_its_own():
    rows = [*entry("A", "a", 1.0), *entry("A", "a", 2.0, backend="jax"), *entry("B", "a", 1.0)]
    assert ratio_of(performance_ratios(scores(rows))) == {
        ("A", "a"): 1.0, ("A", "a/jax"): 2.0, ("B", "a"): 1.0,
    }  # fmt: skip
    table = overall_table(scores(rows)).set_index("optimizer")
    assert table["tasks run"].to_dict() == {"a": 2, "a/jax": 1}
    assert table.loc["a/jax", "score"] == pytest.approx(2 / 3)


def test_no_cells_give_an_empty_table():
    table = overall_table(score(pd.DataFrame(columns=list(cell("A", "a", 0)))))
    assert table.empty and "score" in table and table.attrs["excluded"] == []


def test_profile_values_at_chosen_taus():
    ratios = pd.DataFrame(
        {"task": ["T1", "T2", "T3", "T1"], "optimizer": ["x", "x", "x", "y"],
         "ratio": [1.0, 2.0, math.inf, 1.5]}
    )  # fmt: skip
    rho = profile(ratios, [1.0, 1.5, 1.99, 2.0, 4.0]).pivot(
        index="tau", columns="optimizer", values="rho"
    )
    # x over its 3 tasks: ratio 1 counts from τ=1, ratio 2 from τ=2 (≤), inf never
    np.testing.assert_allclose(rho["x"], [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # y ran one task: its own denominator is 1
    np.testing.assert_allclose(rho["y"], [0, 1, 1, 1, 1])


def ratios_of(**entries) -> pd.DataFrame:
    rows = [(f"T{i}", name, r) for name, rs in entries.items() for i, r in enumerate(rs)]
    return pd.DataFrame(rows, columns=["task", "optimizer", "ratio"])


def test_profile_score_bounds_and_hand_computed_cases():
    scores = profile_score(
        ratios_of(best=[1, 1, 1], never=[math.inf, 5.0], mid=[1, 2], late=[2.5, math.inf])
    )
    assert scores["best"] == 1.0
    assert scores["never"] == 0.0  # infinite, and 5 > τ_max: neither adds area
    # ratio 1: area 3; ratio 2: area 2; mean / 3 = 5/6
    assert scores["mid"] == pytest.approx(5 / 6)
    # 2.5 -> 1.5 / 3 = 0.5; inf -> 0: mean 0.25
    assert scores["late"] == pytest.approx(0.25)
    # τ_max 2: ratio 2 has no area left, ratio 1 all of it
    assert profile_score(ratios_of(mid=[1, 2]), tau_max=2)["mid"] == pytest.approx(0.5)


def test_profile_score_is_the_exact_area_under_rho():
    ratios = ratios_of(a=[1.0, 1.37, 2.9, math.inf], b=[3.99, 1.01])
    taus = np.linspace(1, 4, 300_001)
    curves = profile(ratios, taus)
    for name, area in profile_score(ratios).items():
        rho = curves.loc[curves["optimizer"] == name, "rho"].to_numpy()
        assert np.trapezoid(rho, taus) / 3 == pytest.approx(area, abs=1e-4)
    with pytest.raises(ValueError, match="tau_max"):
        profile_score(ratios, tau_max=1)


def test_overall_table_counts_order_and_partial_entries():
    rows = [
        *entry("T1", "fast", 1.0, 1.0), *entry("T2", "fast", 2.0, 2.0), *entry("T3", "fast", None),
        *entry("T1", "slow", 3.0, 3.0), *entry("T2", "slow", 1.0, 1.0), *entry("T3", "slow", None),
        *entry("T2", "only", 1.0, 1.0),  # ran one task, tied best on it
        cell("T1", "broken", 0, 1.0), cell("T1", "broken", 1, status="error"),
        *entry("T2", "broken", 10.0, 10.0),  # ratio 10: ranked, but beyond τ_max
        *entry("T1", "never", None, None),
        *entry("T3", "pinn", None),  # ran only a task nobody reached
    ]  # fmt: skip
    table = overall_table(scores(rows)).set_index("optimizer")
    # broken and never both score 0 with one miss: broken has more profiled tasks
    assert list(table.index) == ["only", "fast", "slow", "broken", "never", "pinn"]
    # fast: ratios 1, 2 -> (3 + 2) / 2 / 3; slow: 3, 1 -> (1 + 3) / 2 / 3
    np.testing.assert_allclose(table["score"].iloc[:5], [1.0, 5 / 6, 2 / 3, 0.0, 0.0], rtol=1e-12)
    assert math.isnan(table.loc["pinn", "score"])
    columns = [
        "tasks run", "tasks profiled", "best (ratio 1)", "reached within τ=4",
        "not reached / failed",
    ]  # fmt: skip
    assert table.loc["fast", columns].tolist() == [3, 2, 1, 2, 0]
    assert table.loc["slow", columns].tolist() == [3, 2, 1, 2, 0]
    assert table.loc["only", columns].tolist() == [1, 1, 1, 1, 0]
    assert table.loc["broken", columns].tolist() == [2, 2, 0, 0, 1]
    assert table.loc["never", columns].tolist() == [1, 1, 0, 0, 1]
    assert table.loc["pinn", columns].tolist() == [1, 0, 0, 0, 0]


def test_pareto_front_membership_with_ties():
    points = pd.DataFrame(
        {"t": [1, 2, 3, 2, 4, 5, 0.5, 4], "m": [10, 5, 5, 5, 1, 6, 20, 2]},
        index=["A", "B", "C", "B2", "E", "F", "G", "H"],
    )
    front = pareto_front(points, "t", "m")
    # C: as small as B, slower; F: slower and bigger than B; H: as fast as E, bigger.
    # B and its duplicate B2 do not dominate each other.
    assert sorted(front.index[front]) == ["A", "B", "B2", "E", "G"]


def test_profile_figure_one_step_line_per_entry_and_honest_labels():
    rows = [
        *entry("T1", "a", 1.0), *entry("T1", "b", 2.0),
        *entry("T2", "a", 3.0), *entry("T2", "c", 1.0),
        *entry("T3", "a", None),
    ]  # fmt: skip
    fig = profile_figure(performance_ratios(scores(rows)))
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 3
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a (2/2 tasks)", "b (1/2 tasks)", "c (1/2 tasks)"]
    # drawn at the jumps: a is 1/2 from τ=1 and 1 from τ=3, the grid's end at τ_max
    a = lines[0]
    np.testing.assert_allclose(a.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(a.get_ydata(), [0.5, 0.5, 1, 1])
    assert any("T3" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_profile_figure_placeholder_when_no_task_was_reached():
    fig = profile_figure(performance_ratios(scores(entry("T1", "a", None))))
    (ax,) = fig.axes
    assert not ax.axison and "nothing to profile" in ax.texts[0].get_text()
    plt.close(fig)


def test_pareto_figure_panels_points_frontier_and_footnote():
    rows = [
        *entry("T1", "fast", 1.0, wall=1.0, mem_mib=300),
        # seeds differ: the point is their mean, 50 s and 100 MiB
        cell("T1", "small", 0, 1.0, wall=40.0, mem_mib=80),
        cell("T1", "small", 1, 1.0, wall=60.0, mem_mib=120),
        *entry("T1", "bad", 1.0, wall=60.0, mem_mib=400),  # dominated by both
        cell("T1", "oom", 0, status="oom"), cell("T1", "half", 0, 1.0), cell("T1", "half", 1,
        status="diverged"),
    ]  # fmt: skip
    rows += [cell(f"U{i}", "fast", 0, 1.0) for i in range(4)]  # 5 tasks -> 4 + 1 panels
    fig = pareto_figure(pd.DataFrame(rows))
    assert len(fig.axes) == 5
    ax = fig.axes[0]
    assert ax.get_title().startswith("T1")
    assert "oom (oom)" in ax.get_title() and "half (diverged/ok)" in ax.get_title()
    assert len(ax.collections) == 3  # fast, small, bad; not oom, not half
    (frontier,) = ax.get_lines()
    np.testing.assert_allclose(frontier.get_xdata(), [1.0, 50.0])
    np.testing.assert_allclose(frontier.get_ydata(), [300, 100])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"  # 1..60 s, 100..400 MiB
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["bad", "fast", "small", "Pareto frontier"]
    plt.close(fig)


def test_pareto_figure_placeholders():
    fig = pareto_figure(pd.DataFrame(columns=["task", "optimizer", "status"]))
    assert "nothing" in fig.axes[0].texts[0].get_text()
    plt.close(fig)
    fig = pareto_figure(pd.DataFrame([cell("T1", "a", 0, status="infeasible")]))
    (ax,) = fig.axes
    assert "no entry ended ok" in ax.texts[0].get_text() and not ax.collections
    plt.close(fig)
