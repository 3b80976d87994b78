"""Backtracking Armijo line search (``optimizers/torch/linesearch.py``) as a ``lax.while_loop``,
every fresh trial a counted forward pass, and Martens' damping rule on traced values."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..torch.damping import BOOST, DROP
from ..torch.linesearch import MAX_TRIALS, SHRINK, SUFFICIENT_DECREASE
from .objective import Counts


class LineSearch(NamedTuple):
    step_size: jax.Array  # 0 when no trial passed: the step is rejected
    loss: jax.Array  # at the accepted point (the starting loss if rejected)
    trials: jax.Array  # forward passes spent


def armijo(
    loss_at: Callable[[jax.Array, Counts], tuple[jax.Array, Counts]],
    theta: jax.Array,
    direction: jax.Array,
    loss0: jax.Array,
    slope: jax.Array,
    step_size: float | jax.Array,
    counts: Counts,
    *,
    known: tuple[jax.Array, jax.Array] | None = None,
    c: float = SUFFICIENT_DECREASE,
    shrink: float = SHRINK,
    max_trials: int = MAX_TRIALS,
) -> tuple[LineSearch, Counts]:
    """alpha = step_size * shrink^j, the first with L(theta + alpha d) <= L0 + c alpha g^T d.

    ``known`` = (alpha, loss) is a trial the caller already evaluated (a NaN alpha: none).
    The caller moves to theta + step_size * d; a step size of 0 leaves theta as it was."""
    known_alpha, known_loss = known if known is not None else (jnp.nan, jnp.nan)
    dtype = theta.dtype

    def body(carry):
        j, alpha, _, trials, _, counts = carry
        fresh = known_alpha != alpha

        def evaluate(counts):
            loss, counts = loss_at(theta + alpha * direction, counts)
            return loss.astype(dtype), counts

        loss, counts = jax.lax.cond(
            fresh, evaluate, lambda counts: (jnp.asarray(known_loss, dtype), counts), counts
        )
        passed = loss <= loss0 + c * alpha * slope  # False for a NaN loss: keep shrinking
        return j + 1, jnp.where(passed, alpha, alpha * shrink), loss, trials + fresh, passed, counts

    def more(carry):
        j, _, _, _, passed, _ = carry
        return ~passed & (j < max_trials)

    start = (
        jnp.zeros((), jnp.int32),
        jnp.asarray(step_size, dtype),
        jnp.asarray(loss0, dtype),
        jnp.zeros((), jnp.int32),
        jnp.array(False),
        counts,
    )
    _, alpha, loss, trials, passed, counts = jax.lax.while_loop(more, body, start)
    return LineSearch(jnp.where(passed, alpha, 0.0), jnp.where(passed, loss, loss0), trials), counts


def reduction_ratio(loss_before, loss_after, predicted):
    """rho = actual / predicted change; -inf when the model predicts no decrease or the loss
    after is not finite (``optimizers/torch/damping.py``)."""
    actual = loss_after - loss_before
    ok = (predicted < 0) & jnp.isfinite(actual)
    return jnp.where(ok, actual / jnp.where(ok, predicted, 1.0), -jnp.inf)


def levenberg_marquardt(damping, rho):
    """Martens' rule: rho < 1/4 -> lambda * 3/2; rho > 3/4 -> lambda * 2/3; else unchanged."""
    return jnp.where(rho < 0.25, damping * BOOST, jnp.where(rho > 0.75, damping * DROP, damping))
