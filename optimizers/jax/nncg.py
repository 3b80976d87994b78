"""NysNewton-CG: the jax twin of ``optimizers/torch/nncg.py`` (see there for the method and its
policies). Differences of form only:

- the random test matrices come from a jax key kept in the state and split at each refresh,
  seeded by ``seed``; ``seed=None`` (torch: one draw from the global RNG) is the harness's
  to fill with the cell's seed, and ``init`` falls back to seed 0. The two twins' draws differ;
- the stored basis and eigenvalues are in the state from the start (n x min(rank, n) and
  min(rank, n)), so their shapes never change; step 0 is a refresh whatever they hold;
- no warm start is a zero direction (torch: no entry), which CG treats as a cold start;
- the refresh's s products are one vmapped call of the Hessian operator's ``apply``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..torch.base import check_lr
from ..torch.nncg import check_hyperparameters
from .cg import conjugate_gradient
from .linesearch import armijo
from .nystrom import NystromApprox, columnwise, inverse, nystrom
from .objective import Counts, Objective

_INT_KEYS = (
    "cg_iterations",
    "cg_matvecs",
    "negative_curvature",
    "not_descent",
    "nystrom_refreshed",
    "nystrom_fallback",
    "line_search_trials",
    "rejected_steps",
)
_FLOAT_KEYS = ("loss", "nystrom_lambda_max", "nystrom_lambda_min", "step_size")


class NNCGState(NamedTuple):
    iteration: jax.Array
    rejected_steps: jax.Array
    direction: jax.Array  # the warm start; zeros for none
    basis: jax.Array
    eigenvalues: jax.Array
    key: jax.Array
    counts: Counts
    info: dict[str, jax.Array]


def nncg(
    lr: float = 1.0,
    rank: int = 60,
    update_freq: int = 20,
    damping: float = 1e-2,
    cg_max_iter: int = 1000,
    cg_tol: float = 1e-16,
    alpha: float = 0.1,
    beta: float = 0.5,
    max_trials: int = 20,
    seed: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """NysNewton-CG with the torch class's hyperparameters and checks. ``seed=None`` seeds
    the key with 0: the harness passes the cell's seed instead."""
    check_lr(lr)
    check_hyperparameters(rank, update_freq, damping, cg_max_iter, cg_tol, alpha, beta, max_trials)
    mu = float(damping)

    def init(params) -> NNCGState:
        theta, _ = ravel_pytree(params)
        n, dtype = theta.shape[0], theta.dtype
        s = min(rank, n)
        info = {k: jnp.zeros((), jnp.int32) for k in _INT_KEYS}
        info.update({k: jnp.zeros((), dtype) for k in _FLOAT_KEYS})
        return NNCGState(
            iteration=jnp.zeros((), jnp.int32),
            rejected_steps=jnp.zeros((), jnp.int32),
            direction=jnp.zeros(n, dtype),
            basis=jnp.zeros((n, s), dtype),
            eigenvalues=jnp.zeros(s, dtype),
            key=jax.random.key_data(jax.random.key(0 if seed is None else seed)),
            counts=Counts.zero(),
            info=info,
        )

    def update(
        updates,
        state: NNCGState,
        params,
        *,
        value_fn,
        apply_fn=None,
        loss_fn=None,
        batch=None,
        **extra,
    ):
        del updates, extra
        obj = Objective(params, value_fn, apply_fn, loss_fn, batch)
        theta = obj.theta
        n, dtype = theta.shape[0], theta.dtype
        operator, counts = obj.hessian_operator(theta, state.counts)
        loss, g = operator.loss, operator.grad
        refreshed = state.iteration % update_freq == 0

        def refresh(counts):
            key, draw = jax.random.split(jax.random.wrap_key_data(state.key))
            approx, counts = nystrom(columnwise(operator.apply), n, rank, draw, dtype, counts)
            return approx, jax.random.key_data(key), counts

        def reuse(counts):
            fallback, shift = jnp.array(False), jnp.array(jnp.nan, dtype)
            return NystromApprox(state.basis, state.eigenvalues, fallback, shift), state.key, counts

        approx, key, counts = jax.lax.cond(refreshed, refresh, reuse, counts)

        def damped(v, counts):
            hv, counts = operator.apply(v, counts)
            return hv + mu * v, counts

        cg, counts = conjugate_gradient(
            damped,
            -g,
            counts,
            state.direction,
            max_iter=cg_max_iter,
            tol=cg_tol,
            precondition=inverse(approx, mu),
        )
        direction = cg.x
        slope = jnp.dot(g, direction)
        descent = slope < 0  # False for NaN too

        def search(counts):
            result, counts = armijo(
                obj.loss,
                theta,
                direction,
                loss,
                slope,
                lr,
                counts,
                c=alpha,
                shrink=beta,
                max_trials=max_trials,
            )
            return result.step_size, result.trials, counts

        def skip(counts):
            return jnp.zeros((), dtype), jnp.zeros((), jnp.int32), counts

        step_size, trials, counts = jax.lax.cond(descent, search, skip, counts)
        # the point torch assigns: theta + t d, or theta itself when rejected
        new_theta = jnp.where(step_size > 0, theta + step_size * direction, theta)
        rejected = state.rejected_steps + (step_size == 0)
        i32 = jnp.int32
        info = {
            "loss": loss.astype(dtype),
            "cg_iterations": cg.iterations.astype(i32),
            "cg_matvecs": cg.matvecs.astype(i32),
            "negative_curvature": cg.negative_curvature.astype(i32),
            "not_descent": (~descent).astype(i32),
            "nystrom_refreshed": refreshed.astype(i32),
            "nystrom_fallback": (refreshed & approx.fallback).astype(i32),
            "nystrom_lambda_max": approx.eigenvalues[0],
            "nystrom_lambda_min": approx.eigenvalues[-1],
            "step_size": step_size,
            "line_search_trials": trials.astype(i32),
            "rejected_steps": rejected.astype(i32),
        }
        state = NNCGState(
            iteration=state.iteration + 1,
            rejected_steps=rejected.astype(i32),
            # a poor warm start would only cost the next solve iterations
            direction=jnp.where(descent, direction, jnp.zeros_like(direction)),
            basis=approx.basis,
            eigenvalues=approx.eigenvalues,
            key=key,
            counts=counts,
            info=info,
        )
        return obj.unravel(new_theta - theta), state

    return optax.GradientTransformationExtraArgs(init, update)
