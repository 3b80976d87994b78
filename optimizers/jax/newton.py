"""JAX twin of ``optimizers/torch/newton.py`` (``Newton``, ``DampedNewton``): the same step and
policy for an indefinite matrix. Differences of form only: the factor-or-eigh choice is a
``lax.cond`` on the Cholesky factor's finiteness (jax returns NaNs where torch returns an error
code), so ``eigh`` only runs when Cholesky fails; the memory check and ``Infeasible`` come in
``init``, the first moment the parameters are seen; ``lr`` is a constant.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import psutil
from jax.flatten_util import ravel_pytree

from ..torch.base import check_lr
from ..torch.newton import HESSIAN_COPIES, check_damping
from ..torch.objective import Infeasible
from .linesearch import levenberg_marquardt, reduction_ratio
from .objective import Counts, Objective


class NewtonState(NamedTuple):
    damping: jax.Array
    rejected_steps: jax.Array
    indefinite_steps: jax.Array
    counts: Counts
    info: dict[str, jax.Array]


def available_memory() -> int:
    """Free bytes where the arrays live: the accelerator's allocator, else host memory."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return psutil.virtual_memory().available


def newton_direction(matrix: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """-matrix^-1 g (Cholesky) or -pinv(matrix) g (eigh), and the number of negative
    eigenvalues (-1 when Cholesky succeeded), as ``torch.newton.newton_direction``."""
    factor = jnp.linalg.cholesky(matrix)

    def solve(_):
        return -jax.scipy.linalg.cho_solve((factor, True), g), jnp.int32(-1)

    def pseudo_inverse(_):
        eigenvalues, vectors = jnp.linalg.eigh(matrix)
        eps = jnp.finfo(matrix.dtype).eps
        cutoff = jnp.abs(eigenvalues).max() * matrix.shape[0] * eps
        kept = jnp.abs(eigenvalues) > cutoff
        inverse = jnp.where(kept, 1 / jnp.where(kept, eigenvalues, 1), 0)
        direction = -(vectors @ (inverse * (vectors.T @ g)))
        return direction, jnp.sum(eigenvalues < -cutoff).astype(jnp.int32)

    return jax.lax.cond(jnp.all(jnp.isfinite(factor)), solve, pseudo_inverse, None)


def damped_newton(
    lr: float = 1.0,
    damping: float = 1.0,
    adaptive: bool = True,
    memory_fraction: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
    check_lr(lr)
    check_damping(damping, adaptive)

    def init(params) -> NewtonState:
        theta, _ = ravel_pytree(params)
        d, dtype = theta.shape[0], theta.dtype
        need = HESSIAN_COPIES * d * d * theta.dtype.itemsize
        max_bytes = int(memory_fraction * available_memory())
        if need > max_bytes:
            raise Infeasible(
                f"dense Newton on {d:,} parameters needs ~{need / 2**30:.1f} GiB "
                f"({HESSIAN_COPIES} d^2 numbers) > {max_bytes / 2**30:.1f} GiB "
                f"({memory_fraction:.0%} of available {jax.devices()[0].platform} memory)"
            )
        zero, count = jnp.zeros((), dtype), jnp.zeros((), jnp.int32)
        info = dict(
            loss=zero,
            damping=zero,
            step_size=zero,
            negative_eigenvalues=count,
            indefinite_steps=count,
            rejected_steps=count,
        )
        if adaptive:
            info["rho"] = zero
        return NewtonState(jnp.asarray(damping, dtype), count, count, Counts.zero(), info)

    def update(
        updates,
        state: NewtonState,
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
        theta, dtype = obj.theta, obj.theta.dtype
        (loss, g), counts = obj.loss_and_grad(theta, state.counts)
        hessian, counts = obj.hessian(theta, counts)
        matrix = hessian + state.damping * jnp.eye(theta.shape[0], dtype=dtype)
        direction, negative = newton_direction(matrix, g)
        indefinite_steps = state.indefinite_steps + (negative >= 0)
        delta = lr * direction
        rejected_steps, new_damping = state.rejected_steps, state.damping
        info = dict(
            loss=loss,
            damping=state.damping,
            step_size=jnp.asarray(lr, dtype),
            negative_eigenvalues=jnp.maximum(negative, 0),
            indefinite_steps=indefinite_steps,
        )
        if adaptive:
            predicted = jnp.dot(g, delta) + 0.5 * jnp.dot(delta, matrix @ delta)
            after, counts = obj.loss(theta + delta, counts)
            rho = reduction_ratio(loss, after, predicted)
            accepted = after < loss  # False for a NaN loss: the step is undone
            delta = jnp.where(accepted, delta, jnp.zeros_like(delta))
            rejected_steps = rejected_steps + ~accepted
            new_damping = levenberg_marquardt(state.damping, rho)
            info["rho"] = rho
        info["rejected_steps"] = rejected_steps
        state = NewtonState(new_damping, rejected_steps, indefinite_steps, counts, info)
        return obj.unravel(delta), state

    return optax.GradientTransformationExtraArgs(init, update)


def newton(lr: float = 1.0, memory_fraction: float = 0.5) -> optax.GradientTransformationExtraArgs:
    """Undamped Newton: ``damped_newton`` with lambda = 0 and no adaptation."""
    return damped_newton(lr=lr, damping=0.0, adaptive=False, memory_fraction=memory_fraction)
