"""JAX twin of ``optimizers/torch/hessian_free.py`` (``NewtonCG``, ``HessianFreeGN``): the same
step on the shared jax solvers (``cg.py``, ``linesearch.py``). Differences of form only: the walk
back over CG's stored iterates is a ``lax.while_loop`` over the result's buffer; the warm-start
direction is zeros before the first step (CG then starts cold, as torch does with none); the
record always holds ``rho`` when ``adaptive``, NaN on a step that fell back to -g (torch leaves
the key out of that step's record); ``lr`` is a constant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..torch.base import check_lr
from ..torch.hessian_free import PRECONDITIONER_EXPONENT, check_hyperparameters
from .cg import conjugate_gradient
from .linesearch import armijo, levenberg_marquardt, reduction_ratio
from .objective import Counts, Objective

# record entries that count (int32); the others have the parameters' dtype
INTEGER_KEYS = (
    "cg_iters negative_curvature cg_chosen_iter descent_fallback line_search_trials rejected_steps"
).split()


class HessianFreeState(NamedTuple):
    damping: jax.Array
    rejected_steps: jax.Array
    direction: jax.Array  # CG's last solution, the next warm start (zeros: none yet)
    counts: Counts
    info: dict[str, jax.Array]


def _hessian_free(
    *,
    curvature: str,
    lr: float,
    damping: float,
    adaptive: bool,
    cg_max_iter: int,
    cg_tol: float,
    progress_eps: float | None,
    warm_start: float,
    backtrack: bool,
    precondition: bool,
    curvature_fraction: float,
) -> optax.GradientTransformationExtraArgs:
    check_lr(lr)
    check_hyperparameters(
        damping=damping,
        adaptive=adaptive,
        cg_max_iter=cg_max_iter,
        cg_tol=cg_tol,
        progress_eps=progress_eps,
        warm_start=warm_start,
        curvature_fraction=curvature_fraction,
    )
    # the full step's loss is known before the line search (it reuses it) in these modes
    full_step_known = backtrack or adaptive

    def init(params) -> HessianFreeState:
        theta = ravel_pytree(params)[0]
        dtype = theta.dtype
        zero, count = jnp.zeros((), dtype), jnp.zeros((), jnp.int32)
        keys = ["loss", "damping", "step_size"] + (["rho"] if adaptive else [])
        info = {k: zero for k in keys} | {k: count for k in INTEGER_KEYS}
        state_damping = jnp.asarray(damping, dtype)
        return HessianFreeState(state_damping, count, jnp.zeros_like(theta), Counts.zero(), info)

    def update(
        updates,
        state: HessianFreeState,
        params=None,
        *,
        value_fn,
        apply_fn=None,
        loss_fn=None,
        batch=None,
        **extra,
    ):
        del updates, extra
        obj = Objective(params, value_fn, apply_fn, loss_fn, batch)
        theta, lam = obj.theta, state.damping
        counts = state.counts
        if curvature_fraction < 1:
            n = max(1, math.ceil(curvature_fraction * len(obj.batch[0])))
            (loss, g), counts = obj.loss_and_grad(theta, counts)
            curvature_obj = obj.subset(n)
        else:  # the gradient comes with the operator, from the same pass
            curvature_obj = obj
        build = curvature_obj.ggn_operator if curvature == "ggn" else curvature_obj.hessian_operator
        operator, counts = build(theta, counts)
        if curvature_fraction == 1:
            loss, g = operator.loss, operator.grad

        def matvec(v, counts):
            product, counts = operator.apply(v, counts)
            return product + lam * v, counts

        apply_m = None
        if precondition:
            moment, counts = obj.gradient_second_moment(theta, counts)
            diagonal = (moment + lam) ** PRECONDITIONER_EXPONENT

            def apply_m(r):
                return r / diagonal

        x0 = warm_start * state.direction if warm_start else None
        cg, counts = conjugate_gradient(
            matvec,
            -g,
            counts,
            x0,
            max_iter=cg_max_iter,
            tol=cg_tol,
            progress_eps=progress_eps,
            precondition=apply_m,
            keep_iterates=backtrack,
        )
        warm = cg.x if warm_start else state.direction

        chosen, direction, q = cg.iterations, cg.x, cg.q
        full_step_loss = jnp.full((), jnp.nan, theta.dtype)
        if backtrack:
            last = cg.kept - 1
            full_step_loss, counts = obj.loss(theta + cg.kept_x[last], counts)

            # Step back while the earlier stored iterate's loss is no worse.
            def back(carry):
                j, full, _, counts = carry
                earlier, counts = obj.loss(theta + cg.kept_x[j - 1], counts)
                better = earlier <= full
                return j - better, jnp.where(better, earlier, full), ~better, counts

            def more(carry):
                j, _, stop, _ = carry
                return (j > 0) & ~stop

            start = (last, full_step_loss, jnp.array(False), counts)
            j, full_step_loss, _, counts = jax.lax.while_loop(more, back, start)
            chosen, direction, q = cg.kept_iter[j], cg.kept_x[j], cg.kept_q[j]
        elif adaptive:
            full_step_loss, counts = obj.loss(theta + direction, counts)

        slope = jnp.dot(g, direction)
        fallback = ~(slope < 0)  # NaN included
        info = dict(loss=loss, damping=lam, cg_iters=cg.iterations)
        info |= dict(negative_curvature=cg.negative_curvature.astype(jnp.int32))
        info |= dict(cg_chosen_iter=chosen, descent_fallback=fallback.astype(jnp.int32))
        direction = jnp.where(fallback, -g, direction)
        slope = jnp.where(fallback, -jnp.dot(g, g), slope)
        new_damping = lam
        if adaptive:
            rho = reduction_ratio(loss, full_step_loss, q)
            new_damping = jnp.where(fallback, lam, levenberg_marquardt(lam, rho))
            info["rho"] = jnp.where(fallback, jnp.nan, rho)

        known = None
        if full_step_known:
            known = (jnp.where(fallback, jnp.nan, 1.0).astype(theta.dtype), full_step_loss)
        search, counts = armijo(obj.loss, theta, direction, loss, slope, lr, counts, known=known)
        rejected = search.step_size == 0
        rejected_steps = state.rejected_steps + rejected
        delta = jnp.where(rejected, jnp.zeros_like(direction), search.step_size * direction)
        info |= dict(
            step_size=search.step_size,
            line_search_trials=search.trials,
            rejected_steps=rejected_steps,
        )
        state = HessianFreeState(new_damping, rejected_steps, warm, counts, info)
        return obj.unravel(delta), state

    return optax.GradientTransformationExtraArgs(init, update)


def newton_cg(
    lr: float = 1.0,
    damping: float = 1.0,
    adaptive: bool = True,
    cg_max_iter: int = 100,
    cg_tol: float = 1e-2,
) -> optax.GradientTransformationExtraArgs:
    return _hessian_free(
        curvature="hessian",
        lr=lr,
        damping=damping,
        adaptive=adaptive,
        cg_max_iter=cg_max_iter,
        cg_tol=cg_tol,
        progress_eps=None,
        warm_start=0.0,
        backtrack=False,
        precondition=False,
        curvature_fraction=1.0,
    )


def hf_gn(
    lr: float = 1.0,
    damping: float = 1.0,
    adaptive: bool = True,
    cg_max_iter: int = 250,
    progress_eps: float = 5e-4,
    warm_start: float = 0.95,
    backtrack: bool = True,
    precondition: bool = False,
    curvature_fraction: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    return _hessian_free(
        curvature="ggn",
        lr=lr,
        damping=damping,
        adaptive=adaptive,
        cg_max_iter=cg_max_iter,
        cg_tol=0.0,
        progress_eps=progress_eps,
        warm_start=warm_start,
        backtrack=backtrack,
        precondition=precondition,
        curvature_fraction=curvature_fraction,
    )
