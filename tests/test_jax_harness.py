"""Jax cells through the harness: a cell of each twin against its torch cell in float64 (same
weights, batches and counts, so the same metrics), compile time apart from step time, resume
from a checkpoint, an infeasible pairing refused before it trains."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from test_checkpoint import SMOKE, assert_same_results, stop_and_resume

import hessbench
from hessbench.workflows.harness import run_cell

REPO = Path(hessbench.__file__).parent

TINY = {"hidden": [2], "train_size": 256, "test_size": 128, "steps": 6, "eval_every": 3,
        "batch_size": 32, "dtype": "float64"}  # fmt: skip


@pytest.fixture(autouse=True)
def keep_x64():
    """A jax cell sets x64 from its task's dtype; other test modules expect it as they left it."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def mnist_cell(optimizer: str, backend: str, **settings):
    cell = SMOKE.cell("mnist_mlp", optimizer, "torch", 0)
    hyper = dict(cell.hyperparameters)
    if optimizer in ("newton_cg", "hf_gn"):
        hyper["cg_max_iter"] = 10  # well short of convergence: both backends stop at 10
    settings = {**cell.settings, **TINY, **settings}
    return dataclasses.replace(
        cell, backend=backend, hyperparameters=hyper, settings=settings, log_every=1
    )


@pytest.mark.parametrize("optimizer", ["newton", "damped_newton", "newton_cg", "hf_gn"])
def test_a_jax_cell_follows_its_torch_cell_in_float64(tmp_path, optimizer):
    results = {
        backend: run_cell(mnist_cell(optimizer, backend), tmp_path / backend, tmp_path, track=False)
        for backend in ("torch", "jax")
    }
    torch_cell, jax_cell = results["torch"], results["jax"]
    assert torch_cell["status"] == jax_cell["status"] == "ok", jax_cell["reason"]
    assert jax_cell["backend"] == "jax" and jax_cell["compile_s"] > 0
    assert torch_cell["compile_s"] is None
    for key in ("total_forward", "total_backward", "total_hvp", "total_ggnvp", "steps_done"):
        assert jax_cell[key] == torch_cell[key], key
    for key in ("final_val_loss", "final_train_loss", "train_loss_full", "final_metric"):
        assert jax_cell[key] == pytest.approx(torch_cell[key], rel=1e-8), key
    assert jax_cell["provenance"]["versions"]["jax"] == jax.__version__
    assert jax_cell["timed_steps"] == 6 and jax_cell["wall_s"] > 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # the cell's one thread for LAPACK


POOL = """
import os, sys
from hessbench.workflows.jax_trainer import start_jax
allowed = os.sched_getaffinity(0)
start_jax(int(sys.argv[1]))
tasks = os.listdir("/proc/self/task")
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
restored = all(os.sched_getaffinity(int(t)) == allowed for t in tasks)
print(names.count("tf_XLAEigen"), restored, os.environ["OPENBLAS_NUM_THREADS"])
"""


def test_a_fresh_jax_process_runs_its_programs_on_the_cells_threads_and_any_core():
    cores = len(os.sched_getaffinity(0))
    for threads in sorted({1, cores}):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        run = subprocess.run(
            [sys.executable, "-c", POOL, str(threads)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        # XLA's intra-op pool: one thread per core the process could use when jax started
        assert run.stdout.split() == [str(threads), "True", str(threads)], (threads, cores)


def test_a_jax_cell_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch):
    cell = mnist_cell("hf_gn", "jax", steps=10, eval_every=5)  # warm starts and damping in state
    whole, resumed = stop_and_resume(tmp_path, monkeypatch, cell, at=6)
    assert_same_results(whole, resumed, at=6)


def test_a_jax_cell_too_big_for_dense_newton_is_infeasible(tmp_path):
    cell = mnist_cell("newton", "jax", hidden=[4096])
    summary = run_cell(cell, tmp_path / "c", tmp_path, track=False)
    assert summary["status"] == "infeasible" and "dense Newton" in summary["reason"]


def test_the_backends_benchmark_times_both_trainers_on_the_same_steps():
    spec = importlib.util.spec_from_file_location("backends", REPO / "benchmarks" / "backends.py")
    backends = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backends)
    row = backends.compare(SMOKE, "mnist_mlp", "hf_gn", steps=4, warmup=1)
    for backend in ("torch", "jax"):
        assert row[f"{backend} median ms"] > 0 and row[f"{backend} products/step"] > 0
    # the same work timed on each: HF-GN's products per step agree but for float32 round-off
    assert row["jax products/step"] == pytest.approx(row["torch products/step"], rel=0.1)
    assert row["jax ÷ torch (median)"] == row["jax median ms"] / row["torch median ms"]
    assert row["jax compile s"] > 0
