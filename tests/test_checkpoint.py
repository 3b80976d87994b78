"""Checkpoint and resume: a cell stopped after any step resumes from its last checkpoint and
ends with exactly the metrics of a run that was never stopped; the clock counts each step once.
"""

import dataclasses

import pandas as pd
import pytest
from test_gpt2 import corpus  # noqa: F401  (a fixture)

from hessbench.workflows import checkpoint
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell

SMOKE = load(scale="smoke")
MEASURED = ["wall_s", "peak_mem_bytes"]  # measurements, not results: they differ run to run
EVERY_STEP, NEVER = 1e-9, 1e9  # checkpoint_minutes


class Killed(BaseException):
    """Stands for SIGKILL inside the test process: nothing in the harness catches it, so the
    cell stops with its checkpoint on disk and no summary."""


def mnist_cell(optimizer):
    cell = SMOKE.cell("mnist_mlp", optimizer, "torch", 0)
    tiny = {"hidden": [2], "train_size": 256, "test_size": 128, "steps": 12, "eval_every": 6,
            "batch_size": 32}  # fmt: skip
    return dataclasses.replace(cell, settings={**cell.settings, **tiny}, log_every=1)


def run_until_killed(monkeypatch, cell, out, step):
    """Run ``cell`` (checkpointing every step) into ``out`` until the checkpoint after
    ``step`` is written, then stop it as a kill would; return the cell it ran."""
    cell = dataclasses.replace(cell, checkpoint_minutes=EVERY_STEP)
    save = checkpoint.save

    def save_then_die(run, done):
        save(run, done)
        if done >= step:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save", save_then_die)
        with pytest.raises(Killed):
            run_cell(cell, out, out.parent, track=False)
    return cell


def stop_and_resume(tmp_path, monkeypatch, cell, at):
    """(the never-stopped run's summary and metrics, the resumed run's)"""
    never = dataclasses.replace(cell, checkpoint_minutes=NEVER)
    whole = run_cell(never, tmp_path / "whole", tmp_path, track=False)
    cell = run_until_killed(monkeypatch, cell, tmp_path / "killed", at)
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert (tmp_path / "killed" / checkpoint.FILE).exists()
    resumed = run_cell(cell, tmp_path / "killed", tmp_path, track=False)
    assert not (tmp_path / "killed" / checkpoint.FILE).exists()  # the summary replaced it
    frames = [pd.read_parquet(tmp_path / d / "metrics.parquet") for d in ("whole", "killed")]
    return (whole, frames[0]), (resumed, frames[1])


def assert_same_results(whole, resumed, at):
    (s0, m0), (s1, m1) = whole, resumed
    assert s0["status"] == s1["status"] == "ok"
    assert s1["resumed_at"] == [at] and s0["resumed_at"] == []
    pd.testing.assert_frame_equal(m0.drop(columns=MEASURED), m1.drop(columns=MEASURED),
                                  check_exact=True)  # fmt: skip
    same = ["final_metric", "final_val_loss", "final_train_loss", "train_loss_full", "steps_done"]
    same += ["total_forward", "total_backward", "total_hvp", "total_ggnvp"]
    for key in same:
        assert s0[key] == s1[key], key
    # each step timed once: the steps after the last checkpoint that the kill lost are not
    # counted twice
    assert s1["timed_steps"] == s0["timed_steps"] == s0["steps_done"]
    assert m1["wall_s"].is_monotonic_increasing


MNIST_OPTIMIZERS = sorted({c.optimizer for c in SMOKE.cells if c.task == "mnist_mlp"}
                          - {"adamw_lr10x", "adahessian_lr10x"})  # fmt: skip


@pytest.mark.parametrize("optimizer", MNIST_OPTIMIZERS)
def test_every_optimizer_resumes_to_the_metrics_of_an_uninterrupted_run(
    tmp_path, monkeypatch, optimizer
):
    # killed after step 7: past an evaluation (6) and mid-way to the next
    whole, resumed = stop_and_resume(tmp_path, monkeypatch, mnist_cell(optimizer), at=7)
    assert_same_results(whole, resumed, at=7)


def test_a_chain_resumes_inside_its_last_phase(tmp_path, monkeypatch):
    cell = SMOKE.cell("pinn_reaction", "adam_lbfgs_nncg", "torch", 0)  # adam:4 -> lbfgs:4 -> nncg
    cell = dataclasses.replace(cell, settings={**cell.settings, "residual_points": 50},
                               log_every=1)  # fmt: skip
    whole, resumed = stop_and_resume(tmp_path, monkeypatch, cell, at=9)
    assert_same_results(whole, resumed, at=9)
    assert resumed[1]["phase"].tolist()[1:] == [0] * 4 + [1] * 4 + [2] * 4


def test_a_scheduled_language_model_resumes_with_its_learning_rate_and_windows(
    tmp_path,
    monkeypatch,
    corpus,  # noqa: F811
):
    cell = SMOKE.cell("gpt2", "sophia_g", "torch", 0)
    settings = {**cell.settings, "data_dir": str(corpus), "steps": 8, "eval_every": 4}
    cell = dataclasses.replace(cell, settings=settings, log_every=1)
    whole, resumed = stop_and_resume(tmp_path, monkeypatch, cell, at=5)
    assert_same_results(whole, resumed, at=5)
    assert resumed[1]["lr"].nunique() > 2  # the schedule really moved the rate


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, monkeypatch):
    cell = run_until_killed(monkeypatch, mnist_cell("adamw"), tmp_path / "c", 3)
    other = dataclasses.replace(cell, hyperparameters={**cell.hyperparameters, "lr": 0.5})
    summary = run_cell(other, tmp_path / "c", tmp_path, track=False)
    assert summary["resumed_at"] == [] and summary["timed_steps"] == 12


def test_a_checkpoint_of_another_version_of_the_code_is_not_resumed(tmp_path, monkeypatch):
    cell = run_until_killed(monkeypatch, mnist_cell("adamw"), tmp_path / "c", 3)
    monkeypatch.setattr(checkpoint, "code_sha", lambda: "an edited tree")
    summary = run_cell(cell, tmp_path / "c", tmp_path, track=False)
    assert summary["resumed_at"] == [] and summary["timed_steps"] == 12


def test_an_unreadable_checkpoint_starts_the_cell_over(tmp_path):
    cell = mnist_cell("sgd")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / checkpoint.FILE).write_bytes(b"not a checkpoint")
    summary = run_cell(cell, tmp_path / "c", tmp_path, track=False)
    assert summary["status"] == "ok" and summary["resumed_at"] == []
    assert not (tmp_path / "c" / checkpoint.FILE).exists()


def test_a_model_with_dropout_resumes_with_the_global_rng(tmp_path, monkeypatch):
    # dropout draws from torch's global generator: without its state in the checkpoint the
    # resumed steps would drop other units
    from torch import nn

    from hessbench.tasks import mnist_mlp

    plain = mnist_mlp.mlp
    monkeypatch.setattr(mnist_mlp, "mlp", lambda h: nn.Sequential(plain(h), nn.Dropout(0.5)))
    whole, resumed = stop_and_resume(tmp_path, monkeypatch, mnist_cell("sgd"), at=7)
    assert_same_results(whole, resumed, at=7)
