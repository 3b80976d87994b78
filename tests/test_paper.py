"""Paper figures (reports/paper.py) on hand-made runs and summaries: the panels and lines each
figure should show, the paper's numbers printed as the module's dict has them, the AdaHessian
cost ratios against a hand computation, placeholders without cells, the CLI and the rule."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_workflow_e2e import snakemake

from hessbench.reports import fewshot, paper
from hessbench.reports.aggregate import SUMMARY_FIELDS

REPO = Path(paper.__file__).parents[1]


def cell(task, optimizer, seed=0, impl=None, **kw) -> dict:
    row = dict.fromkeys(SUMMARY_FIELDS)
    row.update(scale="cpu", task=task, optimizer=optimizer, impl=impl or optimizer, seed=seed,
               backend="torch", status="ok", batch_size=64, steps_done=20, final_metric=0.9,
               final_train_loss=0.3, mean_step_s=1e-3, median_step_s=1e-3, total_hvp=0)  # fmt: skip
    row.update(kw)
    return row


def rows(cells: list[dict], steps: int = 20, loss=lambda c, s: 1.0 / s) -> pd.DataFrame:
    """Every cell logged at steps 1..steps: training loss ``loss(cell, step)``, a validation
    metric and loss, one forward a step per unit of its ``forwards`` (default 1)."""
    out = []
    for c in cells:
        for step in range(1, steps + 1):
            out.append({**{k: c[k] for k in ("scale", "task", "optimizer", "impl", "backend",
                                             "seed", "status", "batch_size")},
                        "step": step, "wall_s": 0.1 * step, "train_loss": loss(c, step),
                        "val_loss": 2.0 / step, "val_metric": 0.5, "forward":
                        c.get("forwards", 1) * step, "backward": 0, "hvp": 0})  # fmt: skip
    return pd.DataFrame(out)


def text_of(fig: plt.Figure) -> str:
    return "\n".join(t.get_text() for t in fig.texts + [t for ax in fig.axes for t in ax.texts])


def legend(fig: plt.Figure) -> set[str]:
    return {t.get_text() for t in fig.legends[0].texts}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("empty", ["no columns", "no rows"])
def test_every_output_is_a_placeholder_without_cells(empty):
    runs, summaries = pd.DataFrame(), pd.DataFrame()
    if empty == "no rows":
        summaries = pd.DataFrame(columns=SUMMARY_FIELDS)
        runs = pd.DataFrame(columns=["task", "optimizer", "seed", "step", "train_loss"])
    for build in paper.FIGURES.values():
        fig = build(runs, summaries)
        assert "missing cells" in text_of(fig), build.__name__
        assert len(fig.axes) == 1 and not fig.axes[0].axison  # placeholder: no panel drawn
    assert "Missing cells" in paper.seed002_adahessian_cost(runs, summaries)


def test_seed003_shows_its_five_methods_on_its_model_with_its_numbers():
    names = list(paper.SEED003)
    h10 = [cell("h10", o, seed=s, task_module="mnist_mlp", n_params=paper.SEED003_PARAMS,
                final_metric=0.91, wall_s=3.0) for o in names for s in (0, 1)]  # fmt: skip
    wide = [cell("wide", o, task_module="mnist_mlp", n_params=101_770) for o in names]
    summaries = pd.DataFrame(h10 + wide)
    fig = paper.seed003_newton_vs_hf(rows(h10 + wide), summaries)
    assert legend(fig) == set(paper.SEED003.values())
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["h10"] * 3  # the 784-10-10 task only
    assert [ax.get_xlabel() for ax in panels] == ["step", "seconds (training steps)", "step"]
    text = text_of(fig)
    for loss, acc, seconds in paper.PAPER["seed003"].values():
        assert f"{loss:.4g}" in text and f"{100 * acc:.2f}%" in text and f"{seconds:,}" in text
    assert "91.00%" in text  # the suite's accuracy beside


def test_seed003_is_a_placeholder_without_the_784_10_10_model():
    wide = [cell("wide", o, task_module="mnist_mlp", n_params=101_770) for o in paper.SEED003]
    fig = paper.seed003_newton_vs_hf(rows(wide), pd.DataFrame(wide))
    assert "missing cells" in text_of(fig)


def test_sophia_figure_shows_both_budgets_and_the_papers_claims():
    cells = [cell("gpt2", "adamw", s, task_module="gpt2", steps=20, final_val_loss=5.0,
                  median_step_s=0.4) for s in (0, 1)]  # fmt: skip
    cells += [cell("gpt2", "sophia_g", s, impl="sophia", task_module="gpt2", steps=20,
                   final_val_loss=5.2, median_step_s=0.3) for s in (0, 1)]  # fmt: skip
    cells += [cell("gpt2_2x", "adamw", task_module="gpt2", steps=40, final_val_loss=4.8)]
    fig = paper.seed000_sophia_gpt2(rows(cells), pd.DataFrame(cells))
    assert legend(fig) == {"adamw, 20 steps", "sophia_g, 20 steps", "adamw, 40 steps"}
    text = text_of(fig)
    for s in paper.PAPER["seed000_step_s"].values():
        assert f"AdamW {s['adamw']} s, Sophia-G {s['sophia_g']} s" in text
        assert f"(x{s['sophia_g'] / s['adamw']:.2f})" in text
    assert f"in {paper.PAPER['seed000_fewer_steps']:g}x fewer steps" in text
    assert "at 20 steps: x0.75" in text  # 0.3 s / 0.4 s
    assert "5.200 (5.200-5.200, 2 seeds), 300 ms/step" in text


@pytest.mark.parametrize(
    ("mezo_first", "hizoo_loss", "fewer"),
    [
        (2.0, 0.9, "20.00x fewer steps"),
        (2.0, 1.1, "never"),
        (1.0, 0.9, "-, MeZO's loss did not fall"),
    ],
)
def test_hizoo_figure_against_steps_and_forwards(mezo_first, hizoo_loss, fewer):
    cells = [cell("ft", "mezo", s, task_module="roberta_ft", tuning="lora", forwards=2,
                  final_test_metric=0.7, mean_step_s=0.2) for s in (0, 1)]  # fmt: skip
    cells += [cell("ft", "hizoo", s, task_module="roberta_ft", tuning="lora", forwards=3,
                   final_test_metric=0.8, mean_step_s=0.3) for s in (0, 1)]  # fmt: skip
    # MeZO: mezo_first at step 1, then 1.0 (its running mean ends at 1.0); HiZOO: constant
    runs = rows(cells, loss=lambda c, s: hizoo_loss if c["impl"] == "hizoo" else
                1.0 if s > 1 else mezo_first)  # fmt: skip
    fig = paper.seed001_hizoo_vs_mezo(runs, pd.DataFrame(cells))
    assert legend(fig) == {"mezo (lora, ft)", "hizoo (lora, ft)"}
    steps, forwards = (ax for ax in fig.axes if ax.get_xlabel())
    assert max(max(line.get_xdata(), default=0) for line in steps.lines) == 20
    # forward-pass equivalents x batch: HiZOO's 3 a step to MeZO's 2, over 20 steps of 64
    assert max(max(line.get_xdata(), default=0) for line in forwards.lines) == 3 * 20 * 64
    text = text_of(fig)
    assert f"HiZOO reached MeZO's final loss: {fewer}" in text
    assert "hizoo 300 ms/step, test 80.0%, mezo 200 ms/step, test 70.0%" in text
    assert f"{paper.PAPER['seed001_fewer_steps']:g}x fewer steps" in text
    assert f"HiZOO {fewshot.PAPER['HiZOO']['sst2']}" in text
    assert f"{paper.PAPER['seed001_step_s']['hizoo']} vs " in text


def test_pinn_figure_marks_the_papers_losses_on_nncg_tasks_only():
    nncg = "adam → lbfgs → nncg"
    cells = [cell("reaction", "adam"), cell("reaction", "adam_lbfgs", paper_loss=3.26e-6,
                                            paper_metric=1.92e-2, phase_names="adam → lbfgs",
                                            phase_switches=[5]),
             cell("reaction", "adam_lbfgs_nncg", paper_loss=2.89e-7, paper_metric=9.92e-3,
                  phase_names=nncg, phase_switches=[5, 10], final_train_loss=1e-4),
             cell("other", "adam_lbfgs", phase_names="adam → lbfgs",
                  phase_switches=[5])]  # fmt: skip
    fig = paper.seed000_pinn_nncg(rows(cells), pd.DataFrame(cells))
    (ax,) = [ax for ax in fig.axes if ax.get_title()]
    assert ax.get_title() == "reaction"  # the chain without NNCG's task is left out
    assert legend(fig) == {"adam", "adam_lbfgs", "adam_lbfgs_nncg"}
    marks = {line.get_label(): line.get_ydata()[0] for line in ax.lines
             if line.get_label().startswith("paper")}  # fmt: skip
    assert marks == {"paper: adam_lbfgs": 3.26e-6, "paper: adam_lbfgs_nncg": 2.89e-7}
    text = text_of(fig)
    assert "0.0001      0.9  |   2.89e-07  0.00992" in text
    assert "3.26e-06   0.0192" in text


def test_lr_robustness_adds_the_papers_panel_and_ratios():
    lrs = {"adamw": (1e-3, 1e-2), "adahessian": (0.05, 0.5)}
    cells = [cell("m", impl, s, lr=lr, metric="accuracy", final_metric=0.9 if lr == lrs[impl][0]
                  else 0.45) for impl in lrs for lr in lrs[impl] for s in (0, 1)]  # fmt: skip
    cells += [cell("only_adamw", "adamw", lr=lr) for lr in lrs["adamw"]]
    fig = paper.seed002_lr_robustness(pd.DataFrame(), pd.DataFrame(cells))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["m", "paper: IWSLT14 (seed 002)"]
    lr = paper.PAPER["seed002_lr"]
    drawn = {line.get_label(): list(line.get_ydata()) for line in panels[1].lines}
    assert drawn["adahessian (paper)"] == list(lr["adahessian"])
    assert drawn["adamw (paper)"] == [b for b in lr["adamw"] if b is not None]
    text = text_of(fig)
    assert "suite m adahessian: lr 0.5 / 0.05: 0.4500 / 0.9000 = 0.50" in text
    assert f"AdaHessian {lr['adahessian'][7]} / {lr['adahessian'][1]} = 0.91" in text


def test_adahessian_cost_ratios_match_a_hand_computation():
    same = {"task_module": "mnist_mlp", "n_params": 100, "steps_done": 100}
    cells = [cell("m", "sgd", mean_step_s=0.5e-3, **same),
             cell("m", "adamw", 0, mean_step_s=0.9e-3, **same),
             cell("m", "adamw", 1, mean_step_s=1.1e-3, **same),
             cell("m", "adahessian", lr=0.05, mean_step_s=2.5e-3, total_hvp=100, **same),
             cell("m_freq", "adahessian_every2", impl="adahessian", lr=0.05,
                  mean_step_s=1.5e-3, total_hvp=50, final_metric=0.8, **same),
             cell("other", "adahessian", lr=0.05, total_hvp=100, task_module="mnist_mlp",
                  n_params=200, steps_done=100)]  # fmt: skip
    table = paper.adahessian_cost_table(pd.DataFrame(cells)).set_index("entry")
    both = table[table["task"] != "other"]
    assert both["hessian_every"].tolist() == [1, 2]
    assert both["x_adamw"].tolist() == pytest.approx([2.5, 1.5])  # over AdamW's mean, 1 ms
    assert both["x_sgd"].tolist() == pytest.approx([5.0, 3.0])
    assert table.loc["adahessian_every2", "paper_x_sgd"] == paper.PAPER["seed002_cost"][2][2]
    assert table.loc["adahessian_every2", "paper_x_adam"] == paper.PAPER["seed002_cost"][2][3]
    assert table[table["task"] == "other"]["x_adamw"].isna().all()  # no AdamW on its model
    markdown = paper.seed002_adahessian_cost(pd.DataFrame(), pd.DataFrame(cells))
    assert re.search(r"\| adahessian_every2 \| m_freq .*\|\s+1\.5 \|\s+3 \|", markdown)
    cost = paper.PAPER["seed002_cost"]
    for i, row in enumerate(
        ["theory x SGD", "ResNet20 acc %", "measured x SGD", "measured x Adam"]
    ):
        (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {row} ")]
        assert [float(v) for v in line.split("|")[2:-1]] == [cost[k][i] for k in sorted(cost)]


def test_cli_writes_the_files_the_rule_declares(tmp_path):
    cells = [cell("m", "adamw", lr=1e-3)]
    pd.DataFrame(cells).to_parquet(tmp_path / "s.parquet")
    rows(cells).to_parquet(tmp_path / "r.parquet")
    out = tmp_path / "paper"
    args = ["--runs", str(tmp_path / "r.parquet"), "--summaries", str(tmp_path / "s.parquet")]
    assert paper.main([*args, "--out-dir", str(out)]) == 0
    names = set(paper.FIGURES) | set(paper.TABLES)
    assert {p.name for p in out.iterdir()} == names
    assert all((out / n).read_bytes().startswith(b"\x89PNG") for n in paper.FIGURES)
    rule = (REPO / "workflows" / "rules" / "paper.smk").read_text()
    assert set(re.findall(r"\{PAPER_DIR\}/([\w.]+)\"", rule)) == names
    for caption in re.findall(r'caption="\.\./report/([\w.]+)"', rule):
        assert (REPO / "workflows" / "report" / caption).is_file()


def test_snakemake_paper_target_runs_the_paper_rule(tmp_path):
    done = snakemake(tmp_path, "-n", "paper", "--config", "scale=smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^paper_figures\s+1$", done.stdout, re.M), done.stdout[-3000:]
    assert "results/smoke/paper/paper_seed002_adahessian_cost.md" in done.stdout


def test_the_paper_outputs_read_the_torch_cells_only(tmp_path):
    same = {"task_module": "mnist_mlp", "n_params": 100, "steps_done": 100}
    cells = [cell("m", "sgd", mean_step_s=0.5e-3, **same),
             cell("m", "adamw", mean_step_s=1e-3, **same),
             cell("m", "adahessian", lr=0.05, mean_step_s=2.5e-3, total_hvp=100, **same),
             # a (made-up) jax AdamW 9x slower: the papers' ratios must not see it
             cell("m", "adamw", backend="jax", mean_step_s=9e-3, **same)]  # fmt: skip
    pd.DataFrame(cells).to_parquet(tmp_path / "s.parquet")
    rows(cells).to_parquet(tmp_path / "r.parquet")
    args = ["--runs", str(tmp_path / "r.parquet"), "--summaries", str(tmp_path / "s.parquet")]
    assert paper.main([*args, "--out-dir", str(tmp_path / "paper")]) == 0
    markdown = (tmp_path / "paper" / "paper_seed002_adahessian_cost.md").read_text()
    assert re.search(r"\| adahessian \| m .*\|\s+2\.5 \|\s+5 \|", markdown)
