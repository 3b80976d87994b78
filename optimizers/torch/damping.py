"""Levenberg-Marquardt damping: the reduction ratio and Martens' (2010) update of lambda."""

from __future__ import annotations

import math

BOOST, DROP = 3 / 2, 2 / 3  # Martens: rho < 1/4 -> lambda * 3/2; rho > 3/4 -> lambda * 2/3


def reduction_ratio(loss_before: float, loss_after: float, predicted: float) -> float:
    """rho = actual / predicted change, with ``predicted = q(d) - q(0)`` of the damped model.

    A model that predicts no decrease (``predicted >= 0``) earns rho = -inf: the damping is too
    small for the model to be trusted.
    """
    if not predicted < 0:
        return -math.inf
    actual = loss_after - loss_before
    return actual / predicted if math.isfinite(actual) else -math.inf


def levenberg_marquardt(damping: float, rho: float) -> float:
    """Martens' rule with its unchanged band: 1/4 <= rho <= 3/4 leaves lambda as it is."""
    if rho < 0.25:
        return damping * BOOST
    if rho > 0.75:
        return damping * DROP
    return damping
