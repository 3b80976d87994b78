"""Backtracking Armijo line search along a direction, every trial a counted forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from .flat import assign

# Martens (2010): sufficient decrease c = 1e-2, shrink 0.8, at most 60 trials, else no step.
SUFFICIENT_DECREASE = 1e-2
SHRINK = 0.8
MAX_TRIALS = 60


@dataclass
class LineSearch:
    step_size: float  # 0 when no trial satisfied the condition: the step is rejected
    loss: float  # loss at the accepted point (the starting loss if rejected)
    trials: int  # forward passes spent


def armijo(
    loss_at: Callable[[], float],
    params: Sequence[Tensor],
    theta: Tensor,
    direction: Tensor,
    loss0: float,
    slope: float,
    step_size: float,
    *,
    known: tuple[float, float] | None = None,
    c: float = SUFFICIENT_DECREASE,
    shrink: float = SHRINK,
    max_trials: int = MAX_TRIALS,
) -> LineSearch:
    """Find alpha = step_size * shrink^j with L(theta + alpha d) <= L0 + c alpha g^T d.

    ``theta`` is the flat starting point and ``slope`` = g^T d (< 0 for a descent direction).
    ``known`` = (alpha, loss) is a trial the caller already evaluated, reused instead of another
    forward pass. On return the parameters hold theta + alpha d, or exactly theta if rejected.
    """
    alpha = step_size
    trials = 0
    for _ in range(max_trials):
        fresh = known is None or known[0] != alpha
        if fresh:
            assign(params, theta + alpha * direction)
            loss = loss_at()
            trials += 1
        else:
            loss = known[1]
        if loss <= loss0 + c * alpha * slope:  # False for a NaN loss: keep shrinking
            if not fresh:
                assign(params, theta + alpha * direction)
            return LineSearch(alpha, loss, trials)
        alpha *= shrink
    assign(params, theta)
    return LineSearch(0.0, loss0, trials)
