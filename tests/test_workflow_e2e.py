"""The real workflow at `smoke` scale in a temporary folder: Snakemake, the harness, W&B offline,
parquet, the leaderboard. One extra optimizer entry is made to diverge; the others must finish."""

import json
import os
import subprocess
import sys
from pathlib import Path

import browser
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

import hessbench
from hessbench.workflows.config import DEFAULT_CONFIG
from hessbench.workflows.tracking import find_run_file, read_history

REPO = Path(hessbench.__file__).parent
DIVERGE = "optimizers:\n  sgd_diverge: {impl: sgd, lr: 1.0e+6, momentum: 0.9}\n"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
        "MPLBACKEND": "Agg",
    }
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env.pop(var, None)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    return subprocess.run(
        [*command, "--directory", str(workdir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    (workdir / "diverge.yaml").write_text(DIVERGE)
    done = snakemake(
        workdir,
        "--cores",
        "2",
        "--config",
        "scale=smoke",
        "--configfile",
        str(workdir / "diverge.yaml"),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir


def summaries(workdir: Path) -> dict[tuple[str, str, int], dict]:
    out = {}
    for path in (workdir / "results" / "smoke").glob("*/*/torch/seed*/summary.json"):
        s = json.loads(path.read_text())
        out[(s["task"], s["optimizer"], s["seed"])] = s
    return out


def test_every_cell_ran_and_only_the_diverging_one_failed(smoke):
    cells = summaries(smoke)
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    optimizers = set(config["optimizers"]) | {"sgd_diverge"}
    assert {"newton", "damped_newton", "newton_cg", "hf_gn"} <= optimizers
    own = config["scales"]["smoke"]["optimizer_settings"]
    crossed = {("mnist_mlp", o, s) for o in optimizers for s in own.get(o, {}).get("seeds", (0, 1))}
    pinn = set(config["scales"]["smoke"]["tasks"]["pinn_reaction"]["optimizers"]) - {"nncg"}
    crossed |= {("pinn_reaction", o, s) for o in pinn for s in own.get(o, {}).get("seeds", (0, 1))}
    smoke_tasks = config["scales"]["smoke"]["tasks"]
    for task in ("gpt2", "rt_tiny", "rt_tiny_lora", "rt_tiny_prefix"):  # one seed each
        crossed |= {(task, o, 0) for o in smoke_tasks[task]["optimizers"]}
    assert set(cells) == crossed
    for (task, optimizer, _), s in cells.items():
        expected = {"sgd_diverge": "diverged"}.get(optimizer, "ok")
        if (task, optimizer) == ("gpt2", "newton"):
            expected = "infeasible"  # a dense Hessian of 0.4M parameters
        assert s["status"] == expected, (optimizer, s["reason"])
        assert s["provenance"]["git_sha"]  # the checkout's commit, for provenance


def test_curvature_methods_log_their_step_records(smoke):
    """Step records (CG iterations, damping, step size, rejected steps, Hessian refreshes,
    Sophia's clip fraction) reach metrics.parquet."""
    base = smoke / "results" / "smoke" / "mnist_mlp"
    for optimizer, columns in {
        "hf_gn": ["cg_iters", "damping", "step_size", "rejected_steps", "cg_chosen_iter"],
        "newton_cg": ["cg_iters", "damping", "step_size", "rejected_steps"],
        "newton": ["negative_eigenvalues", "indefinite_steps", "damping", "step_size"],
        "sophia_g": ["hessian_updates", "clip_fraction"],
        "adahessian": ["hessian_updates"],
    }.items():
        metrics = pd.read_parquet(base / optimizer / "torch" / "seed0" / "metrics.parquet")
        logged = metrics.dropna(subset=["train_loss"])
        for column in columns:
            assert logged[column].notna().all(), (optimizer, column)
        if "cg_iters" in columns:
            assert (logged["cg_iters"] >= 1).all()
            # every CG iteration is a counted curvature product
            products = logged["ggnvp"] if optimizer == "hf_gn" else logged["hvp"]
            assert products.iloc[-1] >= logged["step"].iloc[-1]


def test_wandb_offline_run_holds_the_same_metrics_as_parquet(smoke):
    for (_, optimizer, _), s in summaries(smoke).items():
        if s["status"] == "infeasible":  # refused before training: no run, no rows
            assert "wandb_run_dir" not in s
            continue
        run_dir = Path(s["wandb_run_dir"])
        assert run_dir.parts[0] == "results"  # every W&B folder stays inside the results tree
        run_dir = smoke / run_dir
        history = pd.DataFrame(read_history(find_run_file(run_dir)))
        metrics = pd.read_parquet(run_dir.parents[1] / "metrics.parquet")
        assert history["_step"].tolist() == metrics["step"].tolist(), optimizer
        for column in ("train_loss", "val_metric", "wall_s", "forward"):
            logged = history.set_index("_step")[column].astype(float)
            stored = metrics.set_index("step")[column].astype(float)
            pd.testing.assert_series_equal(
                logged, stored, check_names=False, check_index_type=False
            )


def test_leaderboard_and_tables(smoke):
    board = (smoke / "results" / "smoke" / "leaderboard.md").read_text()
    for optimizer in ("sgd", "adamw", "lbfgs", "sgd_diverge"):
        assert f"| {optimizer} " in board
    assert "diverged (2/2): non-finite training loss" in board
    runs = pd.read_parquet(smoke / "results" / "smoke" / "runs.parquet")
    started = [s for s in summaries(smoke).values() if s["status"] != "infeasible"]
    assert runs.groupby(["task", "optimizer", "seed"]).ngroups == len(started)
    # the PINN's chained cells: every phase took its steps, the paper's numbers beside ours
    chained = runs[(runs["task"] == "pinn_reaction") & (runs["optimizer"] == "adam_lbfgs_nncg")]
    assert set(chained["phase"].dropna()) == {0, 1, 2}
    assert "Paper columns: Rathore et al. 2024" in board and "0.00992" in board
    figures = ("loss_vs_step.png", "loss_vs_wall.png", "loss_vs_forward.png", "chains.png",
               "lm_validation.png")  # fmt: skip
    for name in figures:
        assert (smoke / "results" / "smoke" / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_html_leaderboard_renders_in_chromium_and_reads_back_every_entry(smoke, tmp_path):
    page = smoke / "results" / "smoke" / "leaderboard.html"
    tables = browser.tables(browser.dom(page, tmp_path / "profile"))
    cells = pd.DataFrame(summaries(smoke).values())
    for task, group in cells.groupby("task"):
        rows = tables[f"leaderboard-{task}"]
        column = rows[0].index("optimizer")
        assert {row[column] for row in rows[1:]} == set(group["optimizer"])  # none dropped
    diverge = tables["leaderboard-mnist_mlp"]
    status = diverge[0].index("status")
    assert [r[status] for r in diverge if "sgd_diverge" in r][0].startswith("diverged (2/2)")
    assert len(tables["overall"]) > 1
    # what a person sees: a page of text, not a blank one
    pixels = plt.imread(browser.screenshot(page, tmp_path / "page.png", tmp_path / "profile"))
    ink = (pixels[..., :3].mean(axis=-1) < 0.5).mean()
    assert 0.005 < ink < 0.5, ink


def test_gpt2_cells_read_the_prepared_offline_corpus_and_log_tokens(smoke):
    manifest = json.loads((smoke / "data" / "gpt2" / "offline" / "manifest.json").read_text())
    assert manifest["corpus"] == "offline" and manifest["train"]["tokens"] > 3_000_000
    runs = pd.read_parquet(smoke / "results" / "smoke" / "runs.parquet")
    sophia = runs[(runs["task"] == "gpt2") & (runs["optimizer"] == "sophia_g")]
    assert sophia["tokens"].max() == 4 * 2 * 32  # steps x windows x context
    table = (smoke / "results" / "smoke" / "lm.md").read_text()
    assert "corpus: offline" in table and "| sophia_g " in table


def test_fine_tuning_cells_score_the_test_set_first_and_last_and_report_a_zero_shot_row(smoke):
    runs = pd.read_parquet(smoke / "results" / "smoke" / "runs.parquet")
    tuned = runs[runs["task"].str.startswith("rt_tiny")]
    assert tuned.groupby(["task", "optimizer"]).ngroups == 5
    for _, cell in tuned.groupby(["task", "optimizer"]):
        scored = cell.dropna(subset=["test_metric"])["step"].tolist()
        assert scored == [0, cell["step"].max()]  # before the first step and after the last
    table = (smoke / "results" / "smoke" / "fewshot.md").read_text()
    assert "## sst2-rt-snippets, tiny, k = 4" in table
    assert "| zero-shot " in table and "| lora " in table and "| prefix " in table
    figure = smoke / "results" / "smoke" / "figures" / "fewshot_loss_vs_forward.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_snakemake_html_report_holds_leaderboard_and_figures(smoke):
    made = snakemake(smoke, "--config", "scale=smoke", "--configfile",
                     str(smoke / "diverge.yaml"), "--report", "report.html")  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    html = (smoke / "report.html").read_text()
    for name in ("leaderboard.md", "loss_vs_step.png", "loss_vs_wall.png", "loss_vs_forward.png"):
        assert name in html
    assert "hessbench at scale" in html


def test_second_run_has_nothing_to_do(smoke):
    again = snakemake(
        smoke, "-n", "--config", "scale=smoke", "--configfile", str(smoke / "diverge.yaml")
    )
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ("optimizers:\n  newt: {impl: newtonn}\n", "optimizers.newt.impl"),
        ("optimizers:\n  sgd: {impl: sgd, lr: -0.1}\n", "optimizers.sgd.lr"),
    ],
)
def test_bad_config_fails_before_any_job_and_keeps_results(smoke, bad, key):
    stamp = {p: p.stat().st_mtime_ns for p in (smoke / "results").rglob("summary.json")}
    (smoke / "bad.yaml").write_text(bad)
    failed = snakemake(
        smoke, "--cores", "2", "--config", "scale=smoke", "--configfile", str(smoke / "bad.yaml")
    )
    assert failed.returncode != 0
    assert key in failed.stderr + failed.stdout
    assert "Select jobs to execute" not in failed.stderr + failed.stdout
    assert stamp == {p: p.stat().st_mtime_ns for p in (smoke / "results").rglob("summary.json")}
