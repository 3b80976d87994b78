"""Reports from result files: aggregation, the report CLI end to end on real cells, figures,
the few-shot table (the leaderboards' rules are tests/test_leaderboard.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import statistics
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_leaderboard import cell

from hessbench.reports.aggregate import IDENTITY, aggregate
from hessbench.reports.cli import main
from hessbench.reports.figures import forward_equivalents
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_cell(root: Path, optimizer: str, seed: int, steps: list[int], status="ok", reason=None):
    cell_dir = root / "cpu" / "toy" / optimizer / "torch" / f"seed{seed}"
    cell_dir.mkdir(parents=True)
    summary = {
        "scale": "cpu", "task": "toy", "optimizer": optimizer, "impl": optimizer,
        "backend": "torch", "seed": seed, "status": status, "reason": reason,
        "final_metric": 0.5 if status == "ok" else None,
        "config": {"settings": {"batch_size": 32}}, "provenance": {"git_sha": "abc123"},
    }  # fmt: skip
    (cell_dir / "summary.json").write_text(json.dumps(summary))
    wall = pd.Series([0.1 * s for s in steps], dtype="float64")  # typed even when empty
    frame = pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "wall_s": wall})
    frame.to_parquet(cell_dir / "metrics.parquet", index=False)
    return cell_dir / "summary.json"


def test_aggregate_runs_and_summaries(tmp_path):
    paths = [
        write_cell(tmp_path, "sgd", 0, [0, 10, 20]),
        write_cell(tmp_path, "adamw", 1, [0, 5]),
        write_cell(tmp_path, "lbfgs", 0, [], status="diverged", reason="loss is nan"),
    ]
    runs, summaries = aggregate(paths)

    assert len(runs) == 5
    assert list(runs.columns[:7]) == [*IDENTITY, "status"]
    assert runs[[*IDENTITY, "status"]].notna().all().all()
    sgd = runs[runs["optimizer"] == "sgd"]
    assert list(sgd["step"]) == [0, 10, 20] and set(sgd["seed"]) == {0}
    assert list(runs.loc[runs["optimizer"] == "adamw", "seed"]) == [1, 1]
    assert set(runs["status"]) == {"ok"} and set(runs["scale"]) == {"cpu"}
    assert set(runs["git_sha"]) == {"abc123"}  # every row carries its cell's provenance
    assert runs["wall_s"].tolist() == pytest.approx([0.0, 1.0, 2.0, 0.0, 0.5])

    assert len(summaries) == 3
    failed = summaries[summaries["optimizer"] == "lbfgs"].iloc[0]
    assert failed["status"] == "diverged" and failed["reason"] == "loss is nan"
    assert set(summaries["batch_size"]) == {32} and set(summaries["git_sha"]) == {"abc123"}
    assert pd.isna(failed["final_metric"]) and "time_to_target_s" in summaries


def harness_cells(root):
    """Real cells from the harness (tiny MNIST runs, no W&B), laid out as the DAG lays them."""
    base = load(scale="smoke").cell("mnist_mlp", "sgd", "torch", 0)
    tiny = {"train_size": 256, "test_size": 128, "steps": 6, "eval_every": 3, "hidden": [4],
            "batch_size": 32, "target": 0.0}  # fmt: skip
    paths = []
    for optimizer, seed in itertools.product(("sgd", "adamw"), (0, 1)):
        cell = dataclasses.replace(
            base, optimizer=optimizer, impl=optimizer, hyperparameters={}, seed=seed,
            settings={**base.settings, **tiny}, log_every=1,
        )  # fmt: skip
        out = root / "results" / cell.path
        run_cell(cell, out, root, track=False)
        paths.append(out / "summary.json")
    return paths


def interpolated_time(path: Path) -> float | None:
    """Wall clock at which the cell's validation metric crossed its target, interpolated by
    hand between the two evaluations around the crossing."""
    s = json.loads(path.read_text())
    if s["status"] != "ok" or s["steps_to_target"] is None:
        return None
    rows = pd.read_parquet(path.parent / "metrics.parquet").dropna(subset=["val_metric"])
    metric, wall, up = list(rows["val_metric"]), list(rows["wall_s"]), s["higher_is_better"]
    i = next(i for i, v in enumerate(metric) if (v >= s["target"] if up else v <= s["target"]))
    if i == 0:
        return float(wall[0])
    t = (s["target"] - metric[i - 1]) / (metric[i] - metric[i - 1])
    return float(wall[i - 1] + t * (wall[i] - wall[i - 1]))


def test_cli_end_to_end_on_real_cells(tmp_path):
    summaries_in = harness_cells(tmp_path)
    cells = [p.parent for p in summaries_in]
    out = tmp_path / "results" / "smoke"
    runs_p, sums_p, board = out / "runs.parquet", out / "summaries.parquet", out / "leaderboard.md"
    step_png, wall_png = out / "figures" / "loss_vs_step.png", out / "figures" / "loss_vs_wall.png"
    forward_png = out / "figures" / "loss_vs_forward.png"

    assert main(["aggregate", *map(str, summaries_in), "--runs", str(runs_p),
                 "--summaries", str(sums_p)]) == 0  # fmt: skip
    assert main(["leaderboard", "--summaries", str(sums_p), "--runs", str(runs_p), "--out",
                 str(board), "--html", str(out / "leaderboard.html")]) == 0  # fmt: skip
    assert main(["figures", "--runs", str(runs_p), "--by-step", str(step_png),
                 "--by-wall", str(wall_png), "--by-forward", str(forward_png)]) == 0  # fmt: skip
    names = ("metric-by-step", "metric-by-wall", "metric-by-forward", "memory", "feasibility")
    overview = {name: out / "figures" / f"{name}.png" for name in names}
    assert main(["overview", "--runs", str(runs_p), "--summaries", str(sums_p),
                 *itertools.chain(*((f"--{k}", str(v)) for k, v in overview.items())),
                 "--feasibility-table", str(out / "feasibility.md")]) == 0  # fmt: skip
    assert main(["performance", "--runs", str(runs_p), "--summaries", str(sums_p),
                 "--profile", str(out / "p.png"), "--pareto", str(out / "q.png")]) == 0  # fmt: skip
    for png in [*overview.values(), out / "p.png", out / "q.png"]:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert "| sgd " in (out / "feasibility.md").read_text()

    n_rows = sum(pq.read_metadata(p.parent / "metrics.parquet").num_rows for p in summaries_in)
    assert len(pd.read_parquet(runs_p)) == n_rows
    assert len(pd.read_parquet(sums_p)) == len(cells)

    entries: dict[str, dict[str, list[Path]]] = {}
    for path in summaries_in:
        summary = json.loads(path.read_text())
        entries.setdefault(summary["task"], {}).setdefault(summary["optimizer"], []).append(path)
    md = board.read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", md, flags=re.M | re.S))
    assert set(sections) == set(entries)
    for task, optimizers in entries.items():
        rows = [line for line in sections[task].splitlines() if line.startswith("|")][2:]
        assert len(rows) == len(optimizers)
        for optimizer, seeds in optimizers.items():
            (row,) = [r for r in rows if r.split("|")[2].strip() == optimizer]
            # the crossing interpolated between the evaluations around it, per seed
            times = [interpolated_time(s) for s in seeds]
            if None not in times:
                cell_text = f"{statistics.mean(times):.2f}"
                if len(times) > 1:  # two seeds: the bootstrap interval is their range
                    assert len(times) == 2
                    cell_text += f" [{min(times):.2f}, {max(times):.2f}]"
                assert f"| {cell_text} " in row

    for png in (step_png, wall_png, forward_png):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(png)
        # figsize (5 * n_tasks + 2.5 for the legend, 7) inches at 120 dpi
        assert image.shape[:2] == (840, 600 * len(entries) + 300)
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_reports_survive_a_scale_where_no_cell_logged(tmp_path):
    # Every cell infeasible: the tables, leaderboard and figures must still be written.
    paths = [write_cell(tmp_path, "newton", 0, [], status="infeasible", reason="too big")]
    out = tmp_path / "out"
    args = ["--runs", str(out / "runs.parquet"), "--summaries", str(out / "s.parquet")]
    out.mkdir()
    assert main(["aggregate", *map(str, paths), *args]) == 0
    board = ["--out", str(out / "lb.md"), "--html", str(out / "lb.html")]
    assert main(["leaderboard", *args, *board]) == 0
    assert "infeasible (1/1): too big" in (out / "lb.md").read_text()
    figures = ["--by-step", str(out / "a" / "s.png"), "--by-wall", str(out / "b" / "w.png"),
               "--by-forward", str(out / "c" / "f.png")]  # fmt: skip
    assert main(["figures", "--runs", str(out / "runs.parquet"), *figures]) == 0
    assert (out / "b" / "w.png").read_bytes()[:8] == PNG_SIGNATURE


def test_forward_equivalents_weigh_each_oracle_and_the_batch():
    runs = pd.DataFrame(
        {"forward": [2, 1, 5], "backward": [0, 1, 1], "hvp": [0, 1, 0], "ggnvp": [0, 0, 4],
         "batch_size": [64, 64, 1000]}
    )  # fmt: skip
    # MeZO's step (2 forwards), a Hutchinson step (forward, backward, HVP), HF with 4 products
    expected = [2 * 64, (1 + 2 + 3) * 64, (5 + 2 + 12) * 1000]
    assert forward_equivalents(runs).tolist() == expected


def test_lr_sensitivity_draws_swept_implementations_and_counts_failures():
    from hessbench.reports.figures import lr_sensitivity

    rows = [
        cell("adamw", 0, final=0.96, impl="adamw", lr=1e-3),
        cell("adamw", 1, final=0.98, impl="adamw", lr=1e-3),
        cell("adamw_lr10x", 0, final=0.90, impl="adamw", lr=1e-2),
        cell("adamw_lr10x", 1, impl="adamw", lr=1e-2, status="diverged", reason="nan"),
        cell("sgd", 0, final=0.9, impl="sgd", lr=0.05),  # one learning rate: not a sweep
        cell("lbfgs", 0, final=0.9, impl="lbfgs", lr=None),
    ]
    fig = lr_sensitivity(pd.DataFrame(rows))
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["adamw"]
    (bars,) = ax.containers  # one errorbar series
    line = bars.lines[0]
    assert list(line.get_xdata()) == [1e-3, 1e-2]
    assert list(line.get_ydata()) == pytest.approx([0.97, 0.90])
    assert [t.get_text() for t in ax.texts] == ["1 failed"]
    assert ax.get_xscale() == "log"


def test_aggregate_reads_the_configured_learning_rate(tmp_path):
    plan = load(scale="smoke")
    entry = next(c for c in plan.cells if c.optimizer == "adamw_lr10x")
    summary = {"status": "ok", "config": dataclasses.asdict(entry), **{k: None for k in IDENTITY}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    _, summaries = aggregate([path])
    assert summaries["lr"].tolist() == [0.01]


def test_fewshot_table_has_a_zero_shot_row_and_the_papers_row_per_method():
    from hessbench.reports.fewshot import accuracy_markdown, accuracy_table

    def cell(optimizer, impl, tuning, seed, initial, final, status="ok"):
        return dict(task_module="roberta_ft", dataset="sst2-rt-snippets", model="minilm-l6",
                    k=16, task=f"rt_{tuning}", optimizer=optimizer, impl=impl, tuning=tuning,
                    seed=seed, status=status, initial_test_metric=initial,
                    final_test_metric=final, final_metric=0.75, steps_done=10,
                    total_forward=20, total_backward=10, total_hvp=0, total_ggnvp=0,
                    median_step_s=0.1, peak_mem_bytes=2**20)  # fmt: skip

    summaries = pd.DataFrame([
        cell("adamw", "adamw", "full", 0, 0.60, 0.70),
        cell("adamw", "adamw", "full", 1, 0.62, 0.80),
        cell("mezo", "mezo", "lora", 0, 0.60, 0.65),
        cell("mezo", "mezo", "prefix", 0, 0.30, 0.66),  # a random prefix: not zero-shot
        cell("hizoo", "hizoo", "full", 0, 0.60, None, status="diverged"),
        dict(task_module="mnist_mlp", status="ok", initial_test_metric=None),
    ])  # fmt: skip
    table = accuracy_table(summaries).set_index(["optimizer", "tuning"])
    zero = table.loc[("zero-shot", "-")]
    assert (zero["test_min"], zero["test_max"]) == pytest.approx((60, 62))
    assert zero["paper"] == 79.0 and zero["seeds"] == 2
    adamw = table.loc[("adamw", "full")]
    assert adamw["test"] == pytest.approx(75) and adamw["paper_row"] == "FT"
    assert adamw["paper"] == 91.9 and adamw["forward"] == 40  # 20 + 2 x 10
    assert table.loc[("mezo", "lora"), "paper"] == 91.4  # MeZO (PEFT)
    assert table.loc[("mezo", "prefix"), "test"] == pytest.approx(66)
    assert ("hizoo", "full") not in table.index  # diverged: no test accuracy
    text = accuracy_markdown(summaries)
    assert "## sst2-rt-snippets, minilm-l6, k = 16" in text
    assert "not in the table: rt_full/hizoo seed 0: diverged" in text
