"""Physics-informed networks in jax: the twin of ``tasks/pinn.py``, whose docstring has the
task. The rows, test points, analytic solution, PDE residual, paper table and target are the
torch module's; only the network and its input derivatives are jax's."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import torch

from .. import pinn as torch_task
from ..pinn import INITIAL, INITIAL_VELOCITY, LEFT, PDE, PERIODIC, RESIDUAL, RIGHT, TERMS
from .base import JaxProblem, linear_params, mlp_apply, require_dtype, to_jax


def initial(pde: PDE, x: jax.Array) -> jax.Array:
    """``PDE.initial`` in jax (the torch one calls torch.sin)."""
    if pde.name == "convection":
        return jnp.sin(x)
    if pde.name == "reaction":
        return jnp.exp(-0.5 * ((x - math.pi) / (math.pi / 4)) ** 2)
    return jnp.sin(math.pi * x) + 0.5 * jnp.sin(pde.c * math.pi * x)


def _second_derivatives(u: Callable, xt: jax.Array) -> jax.Array:
    """(u_xx, u_tt) at one point, forward over forward along each axis: with two inputs, about
    3x faster on CPU than jax.hessian's forward over reverse."""

    def along(e):
        return jax.jvp(lambda p: jax.jvp(u, (p,), (e,))[1], (xt,), (e,))[1]

    return jnp.stack([along(e) for e in jnp.eye(2, dtype=xt.dtype)])


def residuals(u: Callable, pde: PDE, rows: jax.Array) -> jax.Array:
    """Each row's scaled residual, as torch's ``PINN.forward``, for any u((x, t)) -> scalar
    (the network, or an analytic solution in the tests)."""
    xt, term = rows[:, :2], rows[:, 2].astype(jnp.int32)
    value, du = jax.vmap(jax.value_and_grad(u))(xt)
    d2u = jax.vmap(lambda p: _second_derivatives(u, p))(xt) if pde.second_order else None
    r = jnp.zeros_like(value)
    # PDE.residual only indexes and multiplies, so the torch formula runs on jax arrays as is
    r = jnp.where(term == RESIDUAL, pde.residual(value, du, d2u), r)
    r = jnp.where(term == INITIAL, value - initial(pde, xt[:, 0]), r)
    r = jnp.where(term == INITIAL_VELOCITY, du[:, 1], r)
    r = jnp.where((term == LEFT) | (term == RIGHT), value, r)
    # shapes are static under jit: the left values of every row, kept on the periodic ones
    left = jax.vmap(u)(xt.at[:, 0].set(pde.x_range[0]))
    r = jnp.where(term == PERIODIC, value - left, r)
    counts = jnp.bincount(term, length=TERMS).astype(r.dtype)
    return r / jnp.sqrt(counts[term])


def net_u(params) -> Callable:
    return lambda xt: mlp_apply(params, xt, jnp.tanh)[0]


def loss_fn(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.square(outputs - targets).sum()


def build(settings: torch_task.Settings, seed: int) -> JaxProblem:
    require_dtype(settings.dtype)
    cpu = torch.device("cpu")
    problem = torch_task.build(settings, seed, cpu)
    pde = problem.model.pde
    rows, targets = map(to_jax, problem.train_examples)
    xs, ts = torch_task.test_points(pde, problem.train_examples[0].dtype, cpu)
    points, exact = to_jax(torch.stack([xs, ts], dim=1)), to_jax(pde.solution(xs, ts))

    def apply(params, rows: jax.Array) -> jax.Array:
        return residuals(net_u(params), pde, rows)

    @jax.jit
    def loss(params, rows, targets):
        return loss_fn(apply(params, rows), targets)

    @jax.jit
    def l2re(params, points, exact):
        u = mlp_apply(params, points, jnp.tanh)[:, 0]
        return jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact)

    def train_loss(params) -> float:
        return float(loss(params, rows, targets))

    def evaluate(params) -> dict[str, float]:
        return {"val_loss": train_loss(params), "val_metric": float(l2re(params, points, exact))}

    return JaxProblem(
        params=linear_params(problem.model),
        apply=apply,
        loss_fn=loss_fn,
        likelihood=problem.likelihood,
        batches=itertools.repeat((rows, targets)),
        evaluate=evaluate,
        metric=problem.metric,
        higher_is_better=problem.higher_is_better,
        target=problem.target,
        steps=problem.steps,
        eval_every=problem.eval_every,
        batch_size=problem.batch_size,
        train_loss=train_loss,
        paper=problem.paper,
    )
