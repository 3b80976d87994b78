"""The solvers the curvature methods share: conjugate gradient (residual, negative curvature,
preconditioner, Martens' progress rule and stored iterates, warm start), the Armijo line search
and the Levenberg-Marquardt damping rule, each against a truth computed in the test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch.cg import conjugate_gradient, martens_schedule
from hessbench.optimizers.torch.damping import levenberg_marquardt, reduction_ratio
from hessbench.optimizers.torch.linesearch import armijo

from problems import F64, spd

EIGS = [0.5, 1.0, 2.0, 3.0, 7.0, 10.0]


# -- Levenberg-Marquardt rule ---
@pytest.mark.parametrize(
    "rho, factor",
    [(-math.inf, 1.5), (-1.0, 1.5), (0.2, 1.5), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (0.9, 2 / 3)],
)
def test_levenberg_marquardt_rule_with_its_unchanged_band(rho, factor):
    assert levenberg_marquardt(3.0, rho) == pytest.approx(3.0 * factor, rel=1e-15)


def test_reduction_ratio():
    assert reduction_ratio(2.0, 1.0, -2.0) == 0.5
    assert reduction_ratio(2.0, 3.0, -1.0) == -1.0
    assert reduction_ratio(2.0, 1.0, 0.0) == -math.inf  # the model predicts no decrease
    assert reduction_ratio(2.0, math.nan, -1.0) == -math.inf


# -- CG ---
def test_cg_finishes_within_the_number_of_distinct_eigenvalues():
    a, _ = spd([1.0] * 4 + [3.0] * 5 + [10.0] * 3, seed=3)
    b = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=F64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=50, tol=1e-10)
    assert result.reason == "tolerance" and result.iterations == 3
    assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-12)
    assert result.q == pytest.approx((0.5 * result.x @ a @ result.x - b @ result.x).item())


def test_cg_exits_on_negative_curvature_with_a_descent_direction():
    a, _ = spd([-1.0, 2.0, 5.0])
    b = torch.tensor([1.0, 1.0, 1.0], dtype=F64)  # b = -g
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=10)
    assert result.negative_curvature
    assert torch.dot(b, result.x) > 0  # descent for g = -b
    assert result.q == pytest.approx((0.5 * result.x @ a @ result.x - b @ result.x).item())


def test_cg_preconditioned_by_the_exact_diagonal_solves_a_diagonal_system_in_one_step():
    a = torch.diag(torch.tensor([1.0, 100.0, 1e4], dtype=F64))
    b = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    result = conjugate_gradient(
        lambda v: a @ v, b, max_iter=10, tol=1e-12, precondition=lambda r: r / a.diagonal()
    )
    assert result.iterations == 1
    assert_close(result.x, b / a.diagonal())


def test_martens_schedule_and_stored_iterates():
    assert sorted(martens_schedule(30)) == [5, 7, 9, 11, 15, 19, 25]
    a, _ = spd(torch.linspace(0.01, 1, 40).tolist(), seed=5)
    b = torch.ones(40, dtype=F64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=20, keep_iterates=True)
    assert [i for i, _, _ in result.iterates] == [5, 7, 9, 11, 15, 19, 20]
    for i, x, q in result.iterates:
        alone = conjugate_gradient(lambda v: a @ v, b, max_iter=i)
        assert_close(x, alone.x, rtol=0, atol=0)
        assert q == alone.q


def test_cg_stops_by_martens_relative_progress_rule():
    a, _ = spd(torch.logspace(-4, 0, 200).tolist(), seed=6)
    b = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=F64)
    eps = 5e-3
    q = [0.0] + [conjugate_gradient(lambda v: a @ v, b, max_iter=i).q for i in range(1, 121)]
    expected = next(
        i
        for i in range(1, 121)
        if i > (k := max(10, math.ceil(0.1 * i)))
        and q[i] < 0
        and (q[i] - q[i - k]) / q[i] < k * eps
    )
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=120, progress_eps=eps)
    assert result.reason == "progress" and result.iterations == expected


def test_cg_drops_a_warm_start_worse_than_zero():
    a, _ = spd(EIGS)
    b = torch.ones(len(EIGS), dtype=F64)
    bad = -10 * torch.linalg.solve(a, b)  # q(bad) > 0
    result = conjugate_gradient(lambda v: a @ v, b, bad, max_iter=1)
    fresh = conjugate_gradient(lambda v: a @ v, b, max_iter=1)
    assert_close(result.x, fresh.x) and result.matvecs == 2


# -- line search ---
def test_armijo_backtracks_to_the_first_sufficient_decrease():
    theta = nn.Parameter(torch.tensor([1.0], dtype=F64))
    direction = torch.tensor([-10.0], dtype=F64)  # the exact minimiser is at alpha = 0.1

    def loss():
        return (theta.detach() ** 2).sum().item()

    slope = 2 * 1.0 * -10.0
    expected, alpha = None, 1.0
    for _ in range(60):
        if (1 + alpha * -10) ** 2 <= 1 + 1e-2 * alpha * slope:
            expected = alpha
            break
        alpha *= 0.8
    result = armijo(loss, [theta], torch.tensor([1.0], dtype=F64), direction, 1.0, slope, 1.0)
    assert result.step_size == pytest.approx(expected, rel=1e-15)
    assert_close(theta.detach(), torch.tensor([1.0 - 10 * expected], dtype=F64))


def test_armijo_rejects_an_ascent_direction_and_restores_exactly():
    theta = nn.Parameter(torch.tensor([0.3], dtype=F64))
    start = torch.tensor([0.3], dtype=F64)
    result = armijo(
        lambda: (theta.detach() ** 2).sum().item(),
        [theta],
        start,
        torch.ones(1, dtype=F64),
        0.09,
        0.6,
        1.0,
        max_trials=5,
    )
    assert result.step_size == 0 and result.trials == 5
    assert torch.equal(theta.detach(), start)
