"""One cell's model, optimizer and data on the torch backend: what the harness's loop steps.

A trainer builds everything a cell trains (refusing an infeasible pairing before any data is
loaded) and gives the loop a backend-free surface: ``step`` (draw the batch, build the
objective, step the optimizer and the schedule), evaluation, the oracle counts, the learning
rate, the optimizer state's size, and a checkpointable state. ``jax_trainer.py`` is its twin.
"""

from __future__ import annotations

from typing import Any

import torch

from hessbench.optimizers.torch.objective import Counters, Infeasible, Objective
from hessbench.optimizers.torch.registry import build_config
from hessbench.tasks.registry import TASKS

from .config import Cell
from .measure import optimizer_state_bytes, peak_memory_bytes, reset_peak_memory


def _record(result: Any) -> dict[str, Any]:
    """A step record: our optimizers return a dict; stock torch ones return the loss."""
    if isinstance(result, dict):
        return result
    return {"loss": result}


class TorchTrainer:
    compile_s = None  # eager torch compiles nothing

    def __init__(self, cell: Cell, settings, device: torch.device):
        torch.set_num_threads(cell.threads)
        opt_config = build_config(cell.impl, cell.hyperparameters, f"cell {cell.path}")
        task = TASKS[cell.task_module]
        why = task.infeasible(cell.impl, settings)
        if why:
            raise Infeasible(why)
        self.device = device
        self.problem = problem = task.build(settings, cell.seed, device)
        self.params = [p for p in problem.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.params)
        self.optimizer = opt_config.build(self.params)
        self.schedule = None
        if problem.lr_factor is not None:
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, problem.lr_factor)
        self.counters = Counters()

    def step(self) -> dict[str, Any]:
        problem = self.problem
        objective = Objective(
            problem.model,
            problem.loss_fn,
            next(problem.batches),
            self.params,
            self.counters,
            problem.likelihood,
        )
        record = _record(self.optimizer.step(objective))
        if self.schedule is not None:
            self.schedule.step()
        return record

    def evaluate(self, with_test: bool) -> dict[str, float]:
        """The validation metrics; with ``with_test`` also the test set's, if any."""
        metrics = self.problem.evaluate(self.problem.model)
        if with_test and self.problem.test is not None:
            metrics.update(self.problem.test(self.problem.model))
        return metrics

    def train_loss(self) -> float | None:
        fn = self.problem.train_loss
        return fn(self.problem.model) if fn is not None else None

    def counts(self) -> dict[str, int]:
        return self.counters.as_dict()

    @property
    def lr(self) -> float | None:
        return self.optimizer.param_groups[0].get("lr")

    def state_bytes(self) -> int:
        return optimizer_state_bytes(self.optimizer)

    def peak_memory(self) -> int:
        return peak_memory_bytes(self.device)

    def reset_peak_memory(self) -> None:
        reset_peak_memory(self.device)

    def provenance(self) -> dict[str, Any]:
        return {}  # the harness's own record of the torch device is the whole story

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.problem.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "counters": self.counters.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.problem.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        for key, value in state["counters"].items():
            setattr(self.counters, key, value)

    def skip_batches(self, n: int) -> None:
        for _ in range(n):
            next(self.problem.batches)
