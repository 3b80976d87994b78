"""Tiny float64 problems built twice, in torch and in jax, with the same weights and batch: the
parity tests of the jax twins step both from the same point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
import torch
import torch.nn.functional as F
from torch import nn

from hessbench.tasks.jax import base

jax.config.update("jax_enable_x64", True)
F64 = torch.float64


@dataclass
class Pair:
    model: nn.Module
    loss_fn: Any  # torch (outputs, targets) -> loss
    batch: tuple[torch.Tensor, torch.Tensor]
    likelihood: str
    params: Any  # the same weights as a jax pytree
    apply_fn: Any
    jax_loss_fn: Any
    jax_batch: tuple[jax.Array, jax.Array]

    def value_fn(self, params):
        return self.jax_loss_fn(self.apply_fn(params, self.jax_batch[0]), self.jax_batch[1])

    def extra_args(self) -> dict[str, Any]:
        """What the harness passes a twin's ``update``."""
        return dict(
            value_fn=self.value_fn,
            apply_fn=self.apply_fn,
            loss_fn=self.jax_loss_fn,
            batch=self.jax_batch,
        )

    def torch_params(self) -> list[torch.Tensor]:
        return list(self.model.parameters())


def _jax(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(t.detach().numpy())


def mlp_apply(params, x):
    return base.mlp_apply(params, x, jnp.tanh)


def pair(kind: str = "classification", seed: int = 0, n: int = 24, widths=(4, 6, 3)) -> Pair:
    """A tanh MLP on a random batch: ``classification`` (cross-entropy over widths[-1] classes)
    or ``regression`` (sum of squares, one output)."""
    torch.manual_seed(seed)
    if kind == "regression":
        widths = (*widths[:-1], 1)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(F64)
    x = torch.randn(n, widths[0], dtype=F64)
    if kind == "classification":
        y = torch.randint(0, widths[-1], (n,))
        loss_fn, likelihood = F.cross_entropy, "categorical"

        def jax_loss_fn(out, y):
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    elif kind == "regression":
        y = torch.randn(n, 1, dtype=F64)

        def loss_fn(out, y):
            return (out - y).square().sum()

        likelihood = "gaussian"

        def jax_loss_fn(out, y):
            return jnp.sum(jnp.square(out - y))

    else:
        raise ValueError(kind)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    params = tuple((_jax(m.weight), _jax(m.bias)) for m in linears)
    return Pair(
        model, loss_fn, (x, y), likelihood, params, mlp_apply, jax_loss_fn, (_jax(x), _jax(y))
    )
