"""Newton, damped Newton / Levenberg-Marquardt, Newton-CG and Hessian-free Gauss-Newton against
closed-form truths computed in the tests (their shared solvers: test_solvers.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch.cg import martens_schedule
from hessbench.optimizers.torch.hessian_free import HessianFreeGN, NewtonCG
from hessbench.optimizers.torch.newton import DampedNewton, Newton
from hessbench.optimizers.torch.objective import Counters, Infeasible, Objective
from hessbench.optimizers.torch.registry import ConfigError, build_config

from problems import F64, Scalar, quadratic, rosenbrock, spd
from problems import scalar_objective as objective

EIGS = [0.5, 1.0, 2.0, 3.0, 7.0, 10.0]


def spd_problem(seed=0):
    a, q = spd(EIGS, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(len(EIGS), generator=gen, dtype=F64)
    theta0 = torch.randn(len(EIGS), generator=gen, dtype=F64)
    return a, q, b, theta0


# -- Newton ---
def test_newton_lands_on_the_minimiser_of_an_spd_quadratic_in_one_step():
    a, _, b, theta0 = spd_problem()
    model = Scalar(quadratic(a, b), theta0)
    record = Newton([model.theta]).step(objective(model))
    assert_close(model.theta.detach(), torch.linalg.solve(a, b), rtol=0, atol=1e-10)
    assert record["negative_eigenvalues"] == 0 and record["indefinite_steps"] == 0


def test_damped_newton_shrinks_each_eigencomponent_by_lambda_over_a_plus_lambda():
    a, q, b, theta0 = spd_problem()
    lam = 2.0
    model = Scalar(quadratic(a, b), theta0)
    opt = DampedNewton([model.theta], lr=1.0, damping=lam, adaptive=False)
    x_star = torch.linalg.solve(a, b)
    for _ in range(3):
        before = q.T @ (model.theta.detach() - x_star)
        opt.step(objective(model))
        after = q.T @ (model.theta.detach() - x_star)
        assert_close(
            after, before * lam / (torch.tensor(EIGS, dtype=F64) + lam), rtol=1e-10, atol=1e-14
        )


def test_undamped_newton_on_an_indefinite_quadratic_goes_to_the_saddle():
    """The documented policy: no Hessian modification, pseudo-inverse from eigh (as seed 003)."""
    a, _ = spd([2.0, -1.0, 3.0])
    model = Scalar(quadratic(a, torch.zeros(3, dtype=F64)), [1.0, -2.0, 0.5])
    record = Newton([model.theta]).step(objective(model))
    assert_close(model.theta.detach(), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    assert record["negative_eigenvalues"] == 1 and record["indefinite_steps"] == 1


def test_newton_pseudo_inverse_ignores_a_null_direction():
    a = torch.diag(torch.tensor([2.0, 0.0], dtype=F64))
    model = Scalar(quadratic(a, torch.tensor([2.0, 0.0], dtype=F64)), [5.0, 3.0])
    Newton([model.theta]).step(objective(model))
    assert_close(model.theta.detach(), torch.tensor([1.0, 3.0], dtype=F64), rtol=0, atol=1e-12)


def test_newton_converges_quadratically_near_the_rosenbrock_minimum():
    model = Scalar(rosenbrock, [1.05, 1.08])
    opt = Newton([model.theta])
    errors = [(model.theta.detach() - 1).norm().item()]
    while errors[-1] > 1e-13 and len(errors) < 10:
        opt.step(objective(model))
        errors.append((model.theta.detach() - 1).norm().item())
    assert errors[-1] < 1e-13 and len(errors) <= 6
    ratios = [e1 / e0**2 for e0, e1 in zip(errors, errors[1:], strict=False) if e1 > 1e-14]
    assert max(ratios) < 1e3  # e_{k+1} <= C e_k^2: quadratic, not linear, convergence


def test_newton_counts_one_gradient_and_d_hvps_per_step():
    a, _, b, theta0 = spd_problem()
    model = Scalar(quadratic(a, b), theta0)
    counters = Counters()
    Newton([model.theta]).step(objective(model, counters))
    assert counters.as_dict() == dict(forward=1, backward=1, hvp=len(EIGS), ggnvp=0)


def test_dense_newton_past_its_memory_budget_is_infeasible_when_built():
    params = [nn.Parameter(torch.zeros(1000))]
    with pytest.raises(Infeasible, match="dense Newton on 1,000 parameters needs"):
        Newton(params, memory_fraction=1e-9)


# -- Levenberg-Marquardt ---
def test_levenberg_marquardt_rejects_a_step_that_raises_the_loss_and_boosts_lambda():
    # f = sqrt(1 + x^2): from x = 2 the (nearly) undamped Newton step goes to ~ -x^3 = -8.
    model = Scalar(lambda t: torch.sqrt(1 + t @ t), [2.0])
    opt = DampedNewton([model.theta], lr=1.0, damping=1e-6, adaptive=True)
    counters = Counters()
    record = opt.step(objective(model, counters))
    assert torch.equal(model.theta.detach(), torch.tensor([2.0], dtype=F64))  # bit for bit
    assert record["rejected_steps"] == 1 and record["rho"] < 0
    assert opt.vector_state["damping"] == pytest.approx(1.5e-6)
    assert counters.forward == 2  # the gradient's, and the trial's
    # The damping grows until the step is trusted; from then on steps are accepted.
    for _ in range(60):
        record = opt.step(objective(model))
    assert abs(model.theta.item()) < 1e-6


def test_levenberg_marquardt_rho_uses_the_damped_model():
    a, _, b, theta0 = spd_problem()
    model = Scalar(quadratic(a, b), theta0)
    lam = 0.7
    g = a @ theta0 - b
    delta = -torch.linalg.solve(a + lam * torch.eye(len(EIGS), dtype=F64), g)
    predicted = g @ delta + 0.5 * delta @ (a + lam * torch.eye(len(EIGS), dtype=F64)) @ delta
    f = quadratic(a, b)
    expected = ((f(theta0 + delta) - f(theta0)) / predicted).item()
    record = DampedNewton([model.theta], damping=lam, adaptive=True).step(objective(model))
    assert record["rho"] == pytest.approx(expected, rel=1e-10)


# -- Hessian-free methods ---
def least_squares(n=40, d_in=5, d_out=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=F64)
    y = torch.randn(n, d_out, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    model = nn.Linear(d_in, d_out).double()
    return model, (x, y)


def mse(out, target):
    return ((out - target) ** 2).mean()


def ls_solution(x, y):
    ones = torch.ones(len(x), 1, dtype=F64)
    return torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution  # (d_in + 1, d_out)


@pytest.mark.parametrize("method", [HessianFreeGN, NewtonCG, Newton])
def test_linear_least_squares_is_solved_in_one_full_batch_step(method):
    """G = H for a linear model with MSE, so HF-GN takes Newton's step."""
    model, batch = least_squares()
    params = list(model.parameters())
    if method is Newton:
        opt = Newton(params)
    elif method is NewtonCG:
        opt = NewtonCG(params, damping=1e-12, adaptive=False, cg_max_iter=30, cg_tol=1e-14)
    else:
        opt = HessianFreeGN(params, damping=1e-12, adaptive=False, cg_max_iter=30)
    obj = Objective(model, mse, batch, params, likelihood="gaussian")
    opt.step(obj)
    solution = ls_solution(*batch)
    assert_close(model.weight.detach(), solution[:-1].T, rtol=0, atol=1e-8)
    assert_close(model.bias.detach(), solution[-1], rtol=0, atol=1e-8)


def test_hf_gn_step_counts_match_its_record():
    model, batch = least_squares(seed=1)
    params = list(model.parameters())
    opt = HessianFreeGN(params, cg_max_iter=7, progress_eps=5e-4)
    counters = Counters()
    for step in range(3):
        before = counters.as_dict()
        record = opt.step(Objective(model, mse, batch, params, counters, "gaussian"))
        delta = {k: counters.as_dict()[k] - before[k] for k in before}
        warm = 1 if step > 0 else 0  # the warm start's residual is one more product
        assert delta["ggnvp"] == record["cg_iters"] + warm
        assert delta["hvp"] == 0 and delta["backward"] == 1
        # backtracking: the last stored iterate, then one comparison per step back, plus the
        # comparison that stopped it unless it reached the first iterate; then the line search
        stored = sorted({i for i in martens_schedule(7) if i <= record["cg_iters"]}
                        | {record["cg_iters"]})  # fmt: skip
        back = len(stored) - 1 - stored.index(record["cg_chosen_iter"])
        stopped = 1 if stored.index(record["cg_chosen_iter"]) > 0 else 0
        assert delta["forward"] == 1 + 1 + back + stopped + record["line_search_trials"]


def test_newton_cg_counts_hvps_as_cg_iterations():
    model, batch = least_squares(seed=2)
    params = list(model.parameters())
    opt = NewtonCG(params, adaptive=False, lr=0.5, cg_max_iter=4, cg_tol=1e-14)
    counters = Counters()
    record = opt.step(Objective(model, mse, batch, params, counters, "gaussian"))
    assert record["cg_iters"] == 4
    assert counters.as_dict() == dict(
        forward=1 + record["line_search_trials"], backward=1, hvp=4, ggnvp=0
    )


def test_newton_cg_takes_a_descent_step_on_negative_curvature():
    a, _ = spd([-2.0, 1.0, 4.0], seed=2)
    model = Scalar(quadratic(a, torch.ones(3, dtype=F64)), [0.1, 0.2, 0.3])
    f0 = quadratic(a, torch.ones(3, dtype=F64))(model.theta.detach()).item()
    record = NewtonCG([model.theta], damping=0.0, adaptive=False).step(objective(model))
    assert record["negative_curvature"] == 1 and record["step_size"] > 0
    assert quadratic(a, torch.ones(3, dtype=F64))(model.theta.detach()).item() < f0


def test_hf_gn_preconditioner_is_the_empirical_fisher_diagonal():
    model, (x, y) = least_squares(n=12, seed=3)
    params = list(model.parameters())
    obj = Objective(model, mse, (x, y), params, likelihood="gaussian")
    second = obj.gradient_second_moment()
    # Truth: per-example gradients one at a time.
    squares = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = torch.autograd.grad(mse(model(x[i : i + 1]), y[i : i + 1]), params)
        for s, g in zip(squares, grads, strict=True):
            s += g.square() / len(x)
    for got, want in zip(second, squares, strict=True):
        assert_close(got, want)
    opt = HessianFreeGN(params, precondition=True, adaptive=True)
    for _ in range(15):
        opt.step(Objective(model, mse, (x, y), params, likelihood="gaussian"))
    solution = ls_solution(x, y)
    assert_close(model.weight.detach(), solution[:-1].T, rtol=0, atol=1e-6)


def test_hf_gn_rejected_step_leaves_parameters_unchanged():
    model, batch = least_squares(seed=4)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    # From alpha = 1e9, 60 shrinks by 0.8 still leave alpha ~ 1.5e3: every trial overshoots.
    opt = HessianFreeGN(params, lr=1e9, adaptive=False, backtrack=False)
    record = opt.step(Objective(model, mse, batch, params, likelihood="gaussian"))
    assert record["line_search_trials"] == 60
    assert record["step_size"] == 0 and record["rejected_steps"] == 1
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_curvature_fraction_uses_a_subset_for_products_only():
    model, batch = least_squares(n=40, seed=5)
    params = list(model.parameters())
    counters = Counters()
    opt = HessianFreeGN(params, curvature_fraction=0.25, cg_max_iter=3, adaptive=False)
    opt.step(Objective(model, mse, batch, params, counters, "gaussian"))
    # full-batch gradient plus the subset operator's own forward/backward
    assert counters.backward == 2 and counters.ggnvp == 3


# -- configuration ---
@pytest.mark.parametrize(
    "impl, hyper, match",
    [
        ("hf_gn", {"cg_max_iter": 0}, "cg_max_iter"),
        ("hf_gn", {"damping": -1.0}, "damping"),
        ("damped_newton", {"damping": 0.0, "adaptive": True}, "adaptive"),
        ("newton_cg", {"lr": 0.0}, "lr"),
        ("newton_cg", {"warm_start": 0.9}, "no hyperparameter 'warm_start'"),
        ("newton", {"damping": 1.0}, "no hyperparameter 'damping'"),
    ],
)
def test_bad_hyperparameters_fail_before_any_work(impl, hyper, match):
    with pytest.raises(ConfigError, match=match):
        build_config(impl, hyper, where="optimizers.x")


def test_objective_must_be_over_the_optimizers_parameters():
    model, batch = least_squares()
    opt = HessianFreeGN(list(model.parameters()))
    with pytest.raises(ValueError, match="same order"):
        opt.step(Objective(model, mse, batch, [model.bias, model.weight]))
    with pytest.raises(TypeError, match="needs the Objective"):
        opt.step(lambda: 0.0)


def test_hf_gn_warm_starts_cg_at_0_95_times_the_previous_solution():
    """One CG iteration per step, so step 2's direction is one hand-computed CG step from
    x0 = 0.95 d_1 on (G + lambda I) d = -g (G = H for a linear model with MSE)."""
    model, (x, y) = least_squares(seed=6)
    params = list(model.parameters())
    lam = 3.0  # damped enough that successive directions agree
    opt = HessianFreeGN(params, damping=lam, adaptive=False, cg_max_iter=1, backtrack=False)
    opt.step(Objective(model, mse, (x, y), params, likelihood="gaussian"))
    d1 = opt.vector_state["direction"].clone()

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [(p.shape, p.numel()) for p in params]

    def loss_of(theta):
        w, b = (
            c.view(s) for c, (s, _) in zip(theta.split([n for _, n in shapes]), shapes, strict=True)
        )
        return mse(x @ w.T + b, y)

    a = torch.autograd.functional.hessian(loss_of, flat) + lam * torch.eye(len(flat), dtype=F64)
    g = torch.autograd.functional.jacobian(loss_of, flat)
    x0 = 0.95 * d1
    r = -g - a @ x0
    assert -0.5 * x0 @ (r - g) < 0  # the warm start beats zero, so CG keeps it
    expected = x0 + (r @ r) / (r @ a @ r) * r

    opt.step(Objective(model, mse, (x, y), params, likelihood="gaussian"))
    assert_close(opt.vector_state["direction"], expected, rtol=1e-10, atol=1e-13)
