"""The jax task contract and what the twins share.

A jax task is the twin of a torch task: its ``build`` builds the torch problem with the torch
module's own code (seeding, initialisation, data) and converts it, so that both backends start
from the same weights and see the same batches, and trajectories compare step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from ..base import dtype_of, epoch_batches


@dataclass
class JaxProblem:
    params: Any  # pytree of jnp arrays: ((weight (out, in), bias), ...) in torch's order
    apply: Callable  # apply(params, inputs) -> outputs; pure, jit-able
    loss_fn: Callable  # loss_fn(outputs, targets) -> scalar; pure, jit-able
    likelihood: str  # "categorical" | "gaussian", as the torch Problem
    batches: Iterator  # endless (inputs, targets): the torch task's sequence
    evaluate: Callable  # params -> {"val_loss", "val_metric"}
    metric: str
    higher_is_better: bool
    target: float
    steps: int
    eval_every: int
    batch_size: int
    train_loss: Callable | None = None  # params -> loss on the whole training set
    test: Callable | None = None  # params -> {"test_loss", "test_metric"}
    paper: dict | None = None


def require_dtype(name: str) -> None:
    """A float64 task with x64 off would silently compute in float32: refuse it instead."""
    dtype_of(name)
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            'dtype "float64" needs jax x64: call jax.config.update("jax_enable_x64", True) '
            "before building the task"
        )


def to_jax(t: torch.Tensor) -> jax.Array:
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; the float32 detour is exact
        return jnp.asarray(t.detach().float().numpy(), dtype=jnp.bfloat16)
    if t.dtype == torch.int64:  # int64 is not there without x64; labels and indices fit int32
        return jnp.asarray(t.detach().numpy().astype(np.int32))
    return jnp.asarray(t.detach().numpy())


def linear_params(net: nn.Module) -> tuple:
    """The weights of ``net``'s Linear layers as ((weight, bias), ...): ravel_pytree of it is
    torch's ``cat([p.reshape(-1) for p in net.parameters()])`` when only those layers have
    parameters."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if 2 * len(layers) != len(list(net.parameters())):
        raise ValueError("linear_params: the network has parameters outside Linear layers")
    return tuple((to_jax(m.weight), to_jax(m.bias)) for m in layers)


def mlp_apply(params, x, activation: Callable) -> jax.Array:
    """torch's Linear, activation, ..., Linear on the last axis of x."""
    for i, (w, b) in enumerate(params):
        x = x @ w.T + b
        if i < len(params) - 1:
            x = activation(x)
    return x


def index_batches(inputs, targets, batch_size: int, seed: int) -> Iterator:
    """torch's ``epoch_batches`` with a fresh generator of the same seed, run on indices so the
    order is torch's own bit for bit, gathered from the device-resident arrays."""
    n = len(inputs)
    index = torch.arange(n)
    take = jax.jit(lambda x, y, i: (x[i], y[i]))
    generator = torch.Generator().manual_seed(seed)
    for idx, _ in epoch_batches(index, index, batch_size, generator):
        yield take(inputs, targets, to_jax(idx))
