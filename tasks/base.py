"""The task contract: what a task hands the harness for one cell.

A task module exposes ``Settings`` (a dataclass of its per-scale knobs, overridden by the YAML
config), ``build(settings, seed, device) -> Problem`` and
``infeasible(impl, settings) -> str | None`` (why an optimizer cannot run on it at these
settings, checked before any data or model is loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class DataError(RuntimeError):
    """Missing or corrupt data; the message names the file and what is wrong."""


@dataclass
class Problem:
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    likelihood: str  # "categorical" | "gaussian": the distribution the loss is the -log of
    batches: Iterator[tuple[Tensor, Tensor]]  # endless, seeded
    evaluate: Callable[[nn.Module], dict[str, float]]  # -> {"val_loss", "val_metric"}
    metric: str  # name of val_metric, e.g. "accuracy"
    higher_is_better: bool
    target: float  # val_metric value that counts as reached
    steps: int
    eval_every: int
    batch_size: int  # examples per forward pass of the objective
    # Loss on the whole training set, evaluated once after the last step: "train loss at
    # equal epochs" without the noise of one mini-batch.
    train_loss: Callable[[nn.Module], float] | None = None
    # The training set (inputs, targets); curvature diagnostics use its first examples as a
    # fixed batch, the same for every optimizer of a task.
    train_examples: tuple[Tensor, Tensor] | None = None
    # The source paper's results on this problem, keyed by schedule (the implementations of
    # its phases joined by "+", e.g. "adamw+lbfgs"): {"loss", "metric", "source"}; reports show
    # them beside the suite's own.
    paper: dict[str, dict] | None = None
    # Tokens one step trains on (language models): the harness logs cumulative tokens and
    # tokens per second.
    tokens_per_step: int | None = None
    # The learning-rate schedule as a multiple of each group's initial lr, given the number of
    # steps done (torch's LambdaLR); None: constant.
    lr_factor: Callable[[int], float] | None = None
    # A held-out test set scored before the first step and after the last only -> {"test_loss",
    # "test_metric"}: the number a paper's table reports, never used for selection (evaluate's
    # split is).
    test: Callable[[nn.Module], dict[str, float]] | None = None


def epoch_batches(
    inputs: Tensor, targets: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled mini-batches, a new permutation each epoch, last partial batch dropped
    so every step sees the same batch size."""
    n = len(inputs)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    while True:
        order = torch.randperm(n, generator=generator).to(inputs.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield inputs[idx], targets[idx]


def require_positive_ints(settings, names: tuple[str, ...], nullable: tuple[str, ...] = ()):
    """Each named setting is an integer >= 1 (or None, if nullable); else one ValueError
    naming it."""
    for name in names:
        value = getattr(settings, name)
        if value is None and name in nullable:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            null = " or null" if name in nullable else ""
            raise ValueError(f"{name} must be a positive integer{null}, got {value!r}")


def dtype_of(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} not in {sorted(dtypes)}")
    return dtypes[name]
