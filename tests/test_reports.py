"""Reports against hand-chosen numbers: ranking rules, mean ± std cells, aggregation, CLI."""

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

from hessbench.reports.aggregate import IDENTITY, SUMMARY_FIELDS, aggregate
from hessbench.reports.cli import main
from hessbench.reports.figures import forward_equivalents
from hessbench.reports.leaderboard import leaderboard_markdown, leaderboard_tables
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_status_without_reason_is_shown_plainly():
    frame = pd.DataFrame([cell("newton", 0, status="infeasible", reason=None)])
    assert rank_task(frame)["status"].tolist() == ["infeasible (1/1)"]


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
