"""Per-task leaderboards against hand-chosen numbers: ranking rules, interval cells, statuses,
the markdown sections."""

from __future__ import annotations

import pandas as pd
import pytest

from hessbench.reports.aggregate import IDENTITY, SUMMARY_FIELDS
from hessbench.reports.leaderboard import leaderboard_markdown, leaderboard_tables


def cell(optimizer, seed, tt=None, final=0.5, *, task="toy", status="ok", reason=None, **kw):
    row = dict.fromkeys(SUMMARY_FIELDS)
    row.update(
        scale="cpu", task=task, optimizer=optimizer, impl=optimizer, backend="torch", seed=seed,
        status=status, reason=reason, metric="accuracy", higher_is_better=True, target=0.9,
        time_to_target_s=tt, final_metric=final if status == "ok" else None,
        steps_to_target=None if tt is None else 100 * (seed + 1), final_val_loss=0.3,
        peak_mem_bytes=2**20, optimizer_state_bytes=2**10, median_step_s=1e-3, batch_size=64,
    )  # fmt: skip
    row.update(kw)
    return row


def toy_cells() -> pd.DataFrame:
    rows = [
        cell("slow", 0, tt=3.0), cell("slow", 1, tt=5.0),
        # Fastest seeds of all, but one seed missed the target: must rank below every
        # entry that always reached it.
        cell("partial", 0, tt=0.5, final=0.88), cell("partial", 1, tt=0.6, final=0.89),
        cell("partial", 2, final=0.70),
        cell("none_lo", 0, final=0.80), cell("none_lo", 1, final=0.82),
        cell("broken", 0, status="error", reason="RuntimeError: boom", metric=None),
        cell("broken", 1, status="diverged", reason="loss is nan", metric=None),
        cell("fast", 0, tt=1.0), cell("fast", 1, tt=2.0), cell("fast", 2, tt=4.0),
        # Its ok seed reached the target fastest of all; the diverged one sends it to the end.
        cell("blowup", 0, tt=0.1, final=0.95), cell("blowup", 1, status="diverged", reason="nan"),
        cell("none_hi", 0, final=0.85), cell("none_hi", 1, final=0.87),
    ]  # fmt: skip
    return pd.DataFrame(rows)


TOY_ORDER = ["fast", "slow", "none_hi", "partial", "none_lo", "blowup", "broken"]


def toy_runs(cells: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows whose crossing lands exactly on an evaluation (metric == target), so the
    interpolated time and steps are the summary's; a missed target ends at the final metric."""
    rows = []
    for c in cells[cells["status"] == "ok"].to_dict("records"):
        reached = pd.notna(c["time_to_target_s"])
        step, wall = (c["steps_to_target"], c["time_to_target_s"]) if reached else (1000, 9.0)
        end = c["target"] if reached else c["final_metric"]
        for s, w, metric in ((0, 0.0, 0.0), (step, wall, end)):
            identity = {k: c[k] for k in IDENTITY}
            rows.append({**identity, "step": s, "wall_s": w, "val_metric": metric,
                         "forward": s, "backward": s, "batch_size": 64})  # fmt: skip
    return pd.DataFrame(rows)


def rank_task(cells: pd.DataFrame, seeds: dict | None = None) -> pd.DataFrame:
    """One task's leaderboard (display strings), scored on interpolated runs."""
    (table,) = leaderboard_tables(cells, toy_runs(cells), seeds).values()
    return table


def by_optimizer(table: pd.DataFrame) -> dict[str, dict]:
    return {r["optimizer"]: r for r in table.to_dict("records")}


def test_rank_order_reached_then_final_metric_then_failed():
    table = rank_task(toy_cells(), {"toy": 2})
    # final-metric means among not-reached: none_hi .86 > partial .8233 > none_lo .81
    assert list(table["optimizer"]) == TOY_ORDER
    assert list(table["rank"]) == ["1", "2"] + ["–"] * 5  # only those that always reached
    # three seeds configured: slow's two keep its place, first of the unranked, but no rank
    table = rank_task(toy_cells())
    assert list(table["optimizer"]) == TOY_ORDER
    assert list(table["rank"]) == ["1"] + ["–"] * 6
    assert table["unranked because"].tolist()[:2] == ["", "2/3 seeds"]


def test_time_cells_mean_and_bootstrap_interval():
    rows = by_optimizer(rank_task(toy_cells()))
    # fast: mean 7/3 = 2.333. With 3 seeds a resample is all one value with chance 1/27 = 3.7%
    # > 2.5% for each extreme, so the 95% percentile interval is [min, max].
    assert rows["fast"]["time to target (s)"] == "2.33 [1.00, 4.00]"
    # slow: mean 4 of 3 and 5 (two seeds: each extreme has chance 1/4)
    assert rows["slow"]["time to target (s)"] == "4.00 [3.00, 5.00]"
    # steps 100, 200, 300: mean 200
    assert rows["fast"]["steps to target"] == "200 [100, 300]"
    # forward equivalents (1 + 2) x 64 per step, in millions: 0.0192 [0.0064, 0.0576] x 1e-6
    assert rows["fast"]["fwd-equiv. to target (M)"] == "0.0384 [0.0192, 0.0576]"
    assert rows["partial"]["time to target (s)"] == "not reached (2/3)"
    assert rows["partial"]["steps to target"] == "not reached (2/3)"
    assert rows["none_lo"]["time to target (s)"] == "not reached (0/2)"
    assert rows["blowup"]["time to target (s)"] == "not reached (1/2)"
    # partial final metric: mean .8233 of (.88, .89, .70), interval [min, max] (3 seeds)
    assert rows["partial"]["final metric"] == "0.8233 [0.7, 0.89]"
    assert rows["fast"]["batch"] == "64"


def test_failed_cells_keep_status_and_reason():
    rows = by_optimizer(rank_task(toy_cells()))
    assert (
        rows["broken"]["status"] == "error (1/2): RuntimeError: boom; diverged (1/2): loss is nan"
    )
    assert rows["broken"]["seeds"] == "2/3"  # three seeds configured: the most any entry ran
    assert rows["broken"]["unranked because"] == "2/3 seeds; error; diverged"
    assert rows["broken"]["final metric"] == "–"
    assert rows["broken"]["time to target (s)"] == "–"  # nothing ran to be "not reached"
    assert rows["blowup"]["status"] == "diverged (1/2): nan"
    assert rows["blowup"]["time to target (s)"] == "not reached (1/2)"
    assert rows["fast"]["status"] == "ok" and rows["fast"]["rank"] == "1"


def test_one_status_of_many_seeds_is_shown_once():
    reasons = ["needs 154 GiB > 10.4 GiB", "needs 154 GiB > 10.6 GiB", "needs 154 GiB > 10.4 GiB"]
    cells = pd.DataFrame(
        [
            cell("newton", s, status="infeasible", reason=r, metric=None)
            for s, r in enumerate(reasons)
        ]
    )
    assert by_optimizer(rank_task(cells))["newton"]["status"] == (
        "infeasible (3/3): needs 154 GiB > 10.4 GiB"
    )


@pytest.mark.parametrize("higher", [True, False])
def test_not_reached_respects_metric_direction(higher):
    finals = [("a", 0, 0.3), ("a", 1, 0.5), ("b", 0, 0.2), ("b", 1, 0.25)]  # a .4, b .225
    cells = pd.DataFrame([cell(o, s, final=f, higher_is_better=higher) for o, s, f in finals])
    expected = ["a", "b"] if higher else ["b", "a"]
    assert list(rank_task(cells)["optimizer"]) == expected


def test_single_seed_has_no_plus_minus():
    rows = by_optimizer(rank_task(pd.DataFrame([cell("solo", 0, tt=1.234, final=0.91234)])))
    assert rows["solo"]["time to target (s)"] == "1.23"
    assert rows["solo"]["final metric"] == "0.9123"
    assert "[" not in "".join(str(v) for v in rows["solo"].values())


def test_leaderboard_markdown_sections():
    reg = [
        cell("sgd", s, task="reg", final=f, metric="mse", higher_is_better=False, target=0.1)
        for s, f in enumerate([0.3, 0.5])
    ]
    summaries = pd.concat([toy_cells(), pd.DataFrame(reg)], ignore_index=True)
    md = leaderboard_markdown(summaries, toy_runs(summaries), {"toy": 3})
    assert md.startswith("# hessbench leaderboard — scale `cpu`")
    assert md.index("## reg") < md.index("## toy") < md.index("## All tasks")
    toy = md[md.index("## toy") : md.index("## All tasks")]
    reg_part = md[md.index("## reg") : md.index("## toy")]
    assert "Metric: mse (lower is better), target 0.1; 2 seed(s) configured." in reg_part
    assert "Metric: accuracy (higher is better), target 0.9; 3 seed(s) configured." in toy
    lines = [line for line in toy.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 7  # header, rule, one row per optimizer entry
    assert [line.split("|")[2].strip() for line in lines[2:]] == TOY_ORDER
    assert "2.33 [1.00, 4.00]" in lines[2] and "error (1/2): RuntimeError: boom" in lines[-1]
    assert "fast" not in reg_part


def test_status_without_reason_is_shown_plainly():
    frame = pd.DataFrame([cell("newton", 0, status="infeasible", reason=None)])
    assert rank_task(frame)["status"].tolist() == ["infeasible (1/1)"]
