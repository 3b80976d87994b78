"""The torch-vs-jax table against hand-made summaries: means over ok seeds, the ratio, compile
time, statuses; and its place in the leaderboard."""

from __future__ import annotations

import math

import pandas as pd
from test_leaderboard import cell

from hessbench.reports import backends
from hessbench.reports.figures import MIB
from hessbench.reports.leaderboard import leaderboard_markdown


def summaries() -> pd.DataFrame:
    rows = [
        cell("ncg", 0, final=0.90, mean_step_s=0.002, peak_mem_bytes=100 * MIB, compile_s=None),
        cell("ncg", 1, final=0.92, mean_step_s=0.004, peak_mem_bytes=300 * MIB, compile_s=None),
        cell("ncg", 0, final=0.91, mean_step_s=0.001, backend="jax", compile_s=2.0,
             peak_mem_bytes=50 * MIB, optimizer_state_bytes=3 * MIB),
        cell("ncg", 1, final=0.93, mean_step_s=0.002, backend="jax", compile_s=4.0,
             peak_mem_bytes=70 * MIB, optimizer_state_bytes=3 * MIB),
        cell("newton", 0, mean_step_s=0.5),
        cell("newton", 0, backend="jax", status="infeasible", reason="needs 9 GiB"),
        cell("adamw", 0, tt=1.0),  # torch only: not in the table
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_one_row_per_entry_on_both_backends_with_means_over_ok_seeds():
    table = backends.comparison(summaries()).set_index("optimizer")
    assert list(table.index) == ["ncg", "newton"]
    ncg = table.loc["ncg"]
    assert ncg["torch step ms"] == 3.0 and ncg["jax step ms"] == 1.5
    assert ncg["jax ÷ torch step"] == 0.5
    assert ncg["jax compile s"] == 3.0
    assert ncg["torch peak MiB"] == 200.0 and ncg["jax peak MiB"] == 60.0
    assert ncg["jax state MiB"] == 3.0
    assert math.isclose(ncg["torch final metric"], 0.91) and math.isclose(
        ncg["jax final metric"], 0.92
    )
    assert ncg["torch seeds ok"] == "2/2" and ncg["jax seeds ok"] == "2/2"
    newton = table.loc["newton"]
    assert newton["jax seeds ok"] == "0/1 (infeasible)"
    assert math.isnan(newton["jax step ms"]) and math.isnan(newton["jax ÷ torch step"])
    shown = backends.display(backends.comparison(summaries())).set_index("optimizer")
    assert (
        shown.loc["newton", "jax step ms"] == "–" and shown.loc["ncg", "jax ÷ torch step"] == "0.50"
    )


def test_the_leaderboard_has_the_table_only_when_a_grid_runs_jax():
    frame = summaries()
    assert "## torch vs jax" in leaderboard_markdown(frame)
    assert "## torch vs jax" not in leaderboard_markdown(frame[frame["backend"] == "torch"])
    assert backends.comparison(frame[frame["backend"] == "torch"]).empty
