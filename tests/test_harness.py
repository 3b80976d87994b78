"""One cell end to end through the harness (no Snakemake, no W&B): results, statuses,
counters, determinism."""

import dataclasses
import gc
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from hessbench.tasks import mnist_mlp
from hessbench.tasks.mnist_data import bundled_dir
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell


def smoke_cell(optimizer="sgd", seed=0, **settings):
    cell = load(scale="smoke").cell("mnist_mlp", optimizer, "torch", 0)
    tiny = {
        "train_size": 512,
        "test_size": 256,
        "steps": 12,
        "eval_every": 6,
        "hidden": [8],
        "batch_size": 64,
    }
    settings = {**cell.settings, **tiny, **settings}
    return dataclasses.replace(cell, settings=settings, seed=seed, log_every=1)


def run(tmp_path, cell, name="cell"):
    summary = run_cell(cell, tmp_path / name, tmp_path, track=False)
    return summary, pd.read_parquet(tmp_path / name / "metrics.parquet")


def test_ok_cell_writes_metrics_and_summary(tmp_path):
    summary, metrics = run(tmp_path, smoke_cell())
    assert summary["status"] == "ok" and summary["reason"] is None
    assert json.loads((tmp_path / "cell" / "summary.json").read_text())["status"] == "ok"
    assert metrics["step"].tolist() == list(range(13))  # step 0 is the initial evaluation
    # SGD: exactly one forward and one backward per step, counted by the objective.
    assert (metrics["forward"] == metrics["step"]).all()
    assert (metrics["backward"] == metrics["step"]).all()
    assert (metrics["hvp"] == 0).all() and (metrics["ggnvp"] == 0).all()
    assert metrics["wall_s"].is_monotonic_increasing
    assert metrics["val_metric"].notna().tolist() == [s % 6 == 0 for s in range(13)]
    assert summary["total_forward"] == 12 and summary["steps_done"] == 12
    assert summary["optimizer_state_bytes"] == 4 * summary["n_params"]  # one momentum buffer
    assert summary["provenance"]["versions"]["torch"]
    assert not list((tmp_path / "cell").glob("*.tmp"))  # atomic writes leave nothing behind


def test_time_to_target_is_the_first_evaluation_reaching_it(tmp_path):
    summary, metrics = run(tmp_path, smoke_cell(target=0.0))
    assert summary["steps_to_target"] == 0 and summary["time_to_target_s"] == 0.0
    summary, metrics = run(tmp_path, smoke_cell(target=1.01), "never")
    assert summary["steps_to_target"] is None and summary["time_to_target_s"] is None


def test_same_seed_gives_identical_losses_and_other_seed_does_not(tmp_path):
    _, a = run(tmp_path, smoke_cell(seed=3), "a")
    _, b = run(tmp_path, smoke_cell(seed=3), "b")
    _, c = run(tmp_path, smoke_cell(seed=4), "c")
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"])
    pd.testing.assert_series_equal(a["val_loss"], b["val_loss"])
    assert not a["train_loss"].iloc[1:].equals(c["train_loss"].iloc[1:])


def test_lbfgs_counts_every_inner_evaluation(tmp_path):
    summary, metrics = run(tmp_path, smoke_cell("lbfgs", steps=3, eval_every=3))
    assert summary["status"] == "ok"
    # One .step() runs up to 20 iterations with line-search trials: far more than 1 call.
    assert summary["total_forward"] > 3 * 5
    assert summary["total_forward"] == summary["total_backward"]


def test_huge_learning_rate_ends_diverged_and_keeps_the_rows(tmp_path):
    cell = smoke_cell(steps=40, eval_every=20)
    cell = dataclasses.replace(cell, hyperparameters={"lr": 1e6, "momentum": 0.9})
    summary, metrics = run(tmp_path, cell)
    assert summary["status"] == "diverged"
    assert "non-finite" in summary["reason"]
    step = int(summary["reason"].rsplit(" ", 1)[1])
    assert metrics["step"].iloc[-1] == step < 40


def test_corrupt_data_fails_the_cell_with_a_clear_message(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(bundled_dir(), folder)
    broken = folder / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-100])
    summary, metrics = run(tmp_path, smoke_cell(data_dir=str(folder)))
    assert summary["status"] == "error"
    assert "t10k-labels-idx1-ubyte.gz" in summary["reason"] and "corrupt" in summary["reason"]
    assert metrics.empty


def test_infeasible_cell_is_recorded_without_loading_data(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("an infeasible cell must not load data")

    monkeypatch.setattr(mnist_mlp, "infeasible", lambda impl, settings: "too big for the test")
    monkeypatch.setattr(mnist_mlp, "load_mnist", no_data)
    summary, metrics = run(tmp_path, smoke_cell())
    assert summary["status"] == "infeasible" and summary["reason"] == "too big for the test"
    assert metrics.empty


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak-RSS reset")
def test_cpu_peak_memory_resets_and_sees_later_allocations():
    from hessbench.workflows.measure import peak_memory_bytes, reset_peak_memory

    # Earlier tests' cyclic garbage (models, logits) freed mid-test would offset the growth
    gc.collect()
    cpu = torch.device("cpu")
    big = torch.ones(50_000_000)  # 200 MB, mapped and unmapped on its own by glibc
    del big
    high = peak_memory_bytes(cpu)
    reset_peak_memory(cpu)
    low = peak_memory_bytes(cpu)
    assert low < high - 150e6  # the reset forgot the freed 200 MB
    more = torch.ones(25_000_000)  # 100 MB
    assert peak_memory_bytes(cpu) >= low + 90e6
    del more
