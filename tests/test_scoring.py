"""Scoring against numbers worked out by hand: interpolated time to target, the bootstrap
interval, which entries may be ranked, their order, and the HTML page read back."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from hessbench.reports import leaderboard as board
from hessbench.reports.html import Section, page
from hessbench.reports.leaderboard import leaderboard_html, leaderboard_tables
from hessbench.reports.scoring import bootstrap_ci, rank, score, time_to_target


def evals(steps, metrics, walls, batch=8) -> pd.DataFrame:
    """One cell's rows: one forward and one backward per step, evaluations where given."""
    return pd.DataFrame(
        {"step": steps, "wall_s": walls, "val_metric": metrics, "forward": steps,
         "backward": steps, "hvp": 0, "ggnvp": 0, "batch_size": batch}
    )  # fmt: skip


CROSSING = evals([0, 10, 20, 30], [0.1, 0.5, 0.9, 0.95], [0.0, 1.0, 3.0, 4.0])


def test_crossing_is_interpolated_between_the_evaluations_around_it():
    # 0.8 lies 3/4 of the way from 0.5 (step 10, 1 s) to 0.9 (step 20, 3 s)
    assert time_to_target(CROSSING, 0.8, True, "step") == pytest.approx(17.5)
    assert time_to_target(CROSSING, 0.8, True, "wall_s") == pytest.approx(1.0 + 0.75 * 2.0)
    # forward equivalents: (1 forward + 2 for the backward) x batch 8 = 24 per step
    assert time_to_target(CROSSING, 0.8, True, "forward_equivalents") == pytest.approx(24 * 17.5)


def test_rows_without_an_evaluation_and_row_order_do_not_matter():
    train_only = evals([15], [np.nan], [2.0]).assign(val_metric=np.nan)
    rows = pd.concat([CROSSING, train_only]).iloc[::-1]
    assert time_to_target(rows, 0.8, True, "step") == pytest.approx(17.5)


def test_lower_is_better_crosses_downwards():
    rows = evals([0, 10, 20], [2.0, 1.0, 0.5], [0.0, 1.0, 3.0])
    # 0.8 is (1.0 - 0.8) / (1.0 - 0.5) = 0.4 of the way from step 10 to step 20
    assert time_to_target(rows, 0.8, False, "step") == pytest.approx(14.0)
    assert time_to_target(rows, 0.8, False, "wall_s") == pytest.approx(1.8)
    assert time_to_target(rows, 0.8, True, "step") == 0  # as higher-is-better: the first row


def test_reached_at_the_first_evaluation_gives_its_x():
    rows = evals([5, 10], [0.95, 0.97], [0.3, 0.6])
    assert time_to_target(rows, 0.9, True, "step") == 5
    assert time_to_target(rows, 0.9, True, "wall_s") == pytest.approx(0.3)


def test_exact_hit_and_first_crossing_count():
    rows = evals([0, 10, 20, 30], [0.1, 0.8, 0.7, 0.9], [0.0, 1.0, 2.0, 3.0])
    assert time_to_target(rows, 0.8, True, "step") == pytest.approx(10.0)  # equal reaches it


def test_never_reached_or_no_target_is_none():
    assert time_to_target(CROSSING, 0.99, True, "step") is None
    assert time_to_target(CROSSING, 0.01, False, "step") is None
    assert time_to_target(CROSSING, None, True, "step") is None
    assert time_to_target(pd.DataFrame({"step": [1], "wall_s": [0.1]}), 0.5, True) is None


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([]) is None and bootstrap_ci([np.nan]) is None
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    lo, hi = bootstrap_ci([0.1] * 5)
    assert lo == hi == 0.1


def test_bootstrap_known_cases():
    # two seeds: a resample's mean is a, (a+b)/2 or b with chance 1/4, 1/2, 1/4; each extreme
    # has more than 2.5%, so the 95% interval is exactly [a, b]
    assert bootstrap_ci([3.0, 5.0]) == (3.0, 5.0)
    # [0, 0, 0, 1]: the mean is k/4, k ~ Binomial(4, 1/4): P(k = 0) = 0.32 > 2.5%, and
    # P(k <= 2) = 0.949 < 97.5% <= P(k <= 3) = 0.996
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 0.75)
    # a 50% interval of the same: P(k <= 0) = 0.316 > 25%, P(k <= 1) = 0.738 < 75% < 0.949
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], level=0.5) == (0.0, 0.5)


def test_bootstrap_bounds_hold_the_mean_within_the_range_and_repeat():
    values = np.random.default_rng(7).normal(10.0, 3.0, size=6)
    lo, hi = bootstrap_ci(values)
    # six seeds: a resample is all one value with chance 6 / 6^6, so the interval lies inside
    assert values.min() < lo < values.mean() < hi < values.max()
    assert bootstrap_ci(values) == (lo, hi)  # a fixed generator: the same every call
    assert bootstrap_ci(values, seed=1) != (lo, hi)  # ... and it is the seed that fixes it


def summary(optimizer, seed, status="ok", reason=None, final=0.9, task="t", **kw):
    return {"scale": "cpu", "task": task, "optimizer": optimizer, "impl": optimizer,
            "backend": "torch", "seed": seed, "status": status, "reason": reason,
            "metric": "accuracy" if status == "ok" else None, "higher_is_better": True,
            "target": 0.8, "final_metric": final if status == "ok" else None,
            "peak_mem_bytes": 3 * 2**20, "median_step_s": 0.002, "n_params": 100,
            "batch_size": 8, **kw}  # fmt: skip


def runs_for(cells: list[dict], crossings: dict) -> pd.DataFrame:
    """Per (optimizer, seed): metric 0 at step 0, 1.0 at step 10, wall 1 s per step; the
    target 0.8 is then crossed at step 8. ``crossings`` scales the steps (seconds) per cell;
    None: the metric stays at 0.5."""
    frames = []
    for c in cells:
        if c["status"] != "ok":
            continue
        scale = crossings.get((c["optimizer"], c["seed"]), 1.0)
        top = 0.5 if scale is None else 1.0
        rows = evals([0, 10], [0.0, top], [0.0, 10.0 * (scale or 1.0)])
        frames.append(rows.assign(**{k: c[k] for k in ("task", "optimizer", "backend", "seed")}))
    return pd.concat(frames, ignore_index=True)


def scored(cells, crossings=None, seeds=None) -> dict[str, dict]:
    table = score(pd.DataFrame(cells), runs_for(cells, crossings or {}), seeds)
    return {row["optimizer"]: row for row in table.to_dict("records")}


def test_a_diverged_seed_unranks_the_entry_and_keeps_its_row():
    cells = [summary("a", 0), summary("a", 1, status="diverged", reason="loss is nan")]
    (row,) = scored(cells).values()
    assert not row["ranked"] and row["unranked_reason"] == "diverged"
    assert row["status"] == "diverged (1/2): loss is nan"
    assert row["not_reached"] == "not reached (1/2)"
    assert row["seeds_ok"] == 1 and row["final_metric_mean"] == pytest.approx(0.9)
    table = leaderboard_tables(pd.DataFrame(cells), runs_for(cells, {}))["t"]
    assert table.to_dict("records")[0]["unranked because"] == "diverged"


def test_fewer_seeds_than_configured_is_marked_not_ranked():
    cells = [summary("a", 0)]
    (row,) = scored(cells, seeds={"t": 2}).values()
    assert not row["ranked"] and row["unranked_reason"] == "1/2 seeds"
    assert row["time_s_mean"] == pytest.approx(8.0)  # still shown: every run seed reached
    (shown,) = leaderboard_tables(pd.DataFrame(cells), runs_for(cells, {}), {"t": 2})["t"].to_dict(
        "records"
    )
    assert (shown["rank"], shown["seeds"], shown["time to target (s)"]) == ("–", "1/2", "8.00")
    # configured for the task, but this entry runs a subset: a (task, optimizer) key says so
    (row,) = scored(cells, seeds={"t": 2, ("t", "a"): 1}).values()
    assert row["ranked"]


def test_seeds_configured_defaults_to_the_most_any_entry_ran():
    cells = [summary("a", 0), summary("a", 1), summary("b", 0)]
    rows = scored(cells)
    assert rows["a"]["ranked"] and rows["a"]["seeds_configured"] == 2
    assert rows["b"]["unranked_reason"] == "1/2 seeds"


def test_not_every_seed_reaching_is_not_reached_k_of_n():
    cells = [summary("a", 0), summary("a", 1, final=0.5)]
    (row,) = scored(cells, {("a", 1): None}).values()
    assert row["not_reached"] == "not reached (1/2)" and row["unranked_reason"] == "not reached"
    assert row["seeds_reached"] == 1 and np.isnan(row["time_s_mean"])
    shown = leaderboard_tables(pd.DataFrame(cells), runs_for(cells, {("a", 1): None}))["t"]
    assert shown["time to target (s)"].tolist() == ["not reached (1/2)"]
    assert shown["final metric"].tolist() == ["0.7 [0.5, 0.9]"]


def test_ranking_by_time_then_final_metric_unranked_after():
    cells = [summary("slow", s) for s in (0, 1)]
    cells += [summary("tie_low", s, final=0.85) for s in (0, 1)]
    cells += [summary("tie_high", s, final=0.95) for s in (0, 1)]
    cells += [summary("fastest_but_failed", 0), summary("fastest_but_failed", 1, status="oom")]
    cells += [summary("missed", s, final=0.99) for s in (0, 1)]
    crossings = {("slow", 0): 2.0, ("slow", 1): 3.0, ("fastest_but_failed", 0): 0.1,
                 ("missed", 0): None, ("missed", 1): None}  # fmt: skip
    table = rank(score(pd.DataFrame(cells), runs_for(cells, crossings)))
    # ties at 8 s: the better final metric first; slow 8 x 2.5 s = 20 s; then unranked
    assert table["optimizer"].tolist() == [
        "tie_high", "tie_low", "slow", "missed", "fastest_but_failed"
    ]  # fmt: skip
    assert table["rank"].tolist() == [1, 2, 3, None, None]
    assert table["time_s_mean"].tolist()[:3] == pytest.approx([8.0, 8.0, 20.0])


class Cells(HTMLParser):
    """Every table of a page: id, class, header texts, and per body row (class, cell texts)."""

    def __init__(self):
        super().__init__()
        self.tables, self.text, self.scripts = {}, None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(attrs["id"], {"class": attrs.get("class")})
            self.table.update(head=[], rows=[])
        elif tag == "tr" and getattr(self, "in_body", False):
            self.table["rows"].append((attrs.get("class"), []))
        elif tag == "tbody":
            self.in_body = True
        elif tag in ("th", "td"):
            self.text = ""
        self.scripts += tag == "script" or any(k in ("src", "href") for k in attrs)

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "th":
            self.table["head"].append(self.text)
        elif tag == "td":
            self.table["rows"][-1][1].append(self.text)
        elif tag == "tbody":
            self.in_body = False
        if tag in ("th", "td"):
            self.text = None


def parsed(text: str) -> Cells:
    parser = Cells()
    parser.feed(text)
    return parser


def test_html_page_reads_back_as_the_dataframe():
    frame = pd.DataFrame({"rank": ["1", "–"], "name": ["a<b & c", "d"], "time": ["1.5", "x"]})
    text = page(
        "T <1>", "intro", [Section("task", frame, "note", "leaderboard-t", ["", "unranked"])]
    )
    assert text.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in text
    cells = parsed(text)
    table = cells.tables["leaderboard-t"]
    assert table["class"] == "leaderboard" and table["head"] == list(frame.columns)
    assert [texts for _, texts in table["rows"]] == frame.values.tolist()
    assert [css for css, _ in table["rows"]] == [None, "unranked"]
    assert cells.scripts == 0  # no scripts, no external assets


def test_leaderboard_html_holds_every_task_table_and_marks_unranked_rows():
    cells = [summary("a", 0), summary("a", 1), summary("b", 0), summary("c", 0, task="u")]
    summaries, runs = pd.DataFrame(cells), runs_for(cells, {})
    tables = leaderboard_tables(summaries, runs, {"t": 2, "u": 1})
    found = parsed(leaderboard_html(summaries, runs, {"t": 2, "u": 1})).tables
    for task, frame in tables.items():
        table = found[f"leaderboard-{task}"]
        assert table["head"] == list(frame.columns)
        assert [texts for _, texts in table["rows"]] == frame.values.tolist()
    assert [css for css, _ in found["leaderboard-t"]["rows"]] == [None, "unranked"]
    assert found["leaderboard-t"]["rows"][1][1][:2] == ["–", "b"]


def test_overall_section_is_the_profile_score_from_one_scoring(monkeypatch):
    cells = [summary("a", 0), summary("b", 0), summary("c", 0, task="u")]
    cells += [summary("a", 0, task="v"), summary("c", 0, task="v")]
    crossings = {("b", 0): 2.0}  # b: 16 s to a's 8 s on t, ratio 2
    runs = runs_for(cells, crossings)
    runs.loc[runs["task"] == "v", "val_metric"] = 0.5  # nobody reaches v
    calls = []
    monkeypatch.setattr(board, "score", lambda *args: calls.append(1) or score(*args))
    overall = parsed(leaderboard_html(pd.DataFrame(cells), runs, {"t": 1})).tables["overall"]
    assert len(calls) == 1  # per-task tables and the overall one share one scoring
    assert overall["head"][:3] == ["optimizer", "score", "tasks run"]
    # a and c best on their tasks, b at ratio 2: (4 - 2) / 3; score descending, then name
    assert [row[:3] for _, row in overall["rows"]] == [
        ["a", "1.000", "2"], ["c", "1.000", "2"], ["b", "0.667", "1"],
    ]  # fmt: skip
    md = board.leaderboard_markdown(pd.DataFrame(cells), runs, {"t": 1})
    section = md[md.index("## All tasks") :]
    assert "Performance-profile score" in section
    assert "Not profiled (no entry reached the target): v." in section
