"""NysNewton-CG and its Nyström preconditioner against truths computed in the tests: dense
eigendecompositions and inverses, dense autograd Hessians, hand-run line searches and the
objective's oracle counters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

from hessbench.optimizers.torch.cg import conjugate_gradient
from hessbench.optimizers.torch.nncg import NNCG
from hessbench.optimizers.torch.nystrom import NystromApprox, nystrom
from hessbench.optimizers.torch.objective import Counters, Objective
from hessbench.optimizers.torch.registry import ConfigError, build_config

from problems import F64, Scalar, quadratic, spd
from problems import scalar_objective as objective

N = 50
EIGS = [0.5, 1.0, 2.0, 3.0, 7.0, 10.0]


def low_rank(r, n=N, seed=1):
    """A PSD n x n matrix of rank r, with r distinct eigenvalues in [1, 10] (returned, largest
    first)."""
    eigs = torch.logspace(0, 1, r, dtype=F64)
    a, _ = spd(eigs.tolist() + [0.0] * (n - r), seed)
    return a, eigs.flip(0)


def sketch(a, s, seed=0):
    return nystrom(lambda v: a @ v, len(a), s, torch.Generator().manual_seed(seed), F64)


def dense(approx):
    return approx.basis @ torch.diag(approx.eigenvalues) @ approx.basis.T


# -- the Nyström approximation ---
@pytest.mark.parametrize("r, s", [(8, 12), (12, 12)])
def test_nystrom_recovers_a_psd_matrix_of_rank_at_most_s(r, s):
    a, eigs = low_rank(r)
    approx = sketch(a, s)
    tol = 1e-10 * eigs[0].item()  # relative to ||A||
    assert not approx.fallback  # the stable shift alone makes the core positive definite
    assert_close(approx.basis.T @ approx.basis, torch.eye(s, dtype=F64), rtol=0, atol=1e-12)
    assert_close(approx.eigenvalues[:r], eigs, rtol=0, atol=tol)
    assert bool((approx.eigenvalues[r:] <= tol).all())  # Lambda >= 0 by construction
    assert_close(dense(approx), a, rtol=0, atol=tol)


@pytest.mark.parametrize("r, s", [(8, 12), (12, 12), (20, 12)])
def test_nystrom_is_psd_and_below_the_matrix(r, s):
    a, eigs = low_rank(r)
    approx = sketch(a, s, seed=2)
    tol = 1e-10 * eigs[0].item()
    a_hat = dense(approx)
    assert torch.linalg.eigvalsh(a_hat).min() >= -tol
    assert torch.linalg.eigvalsh(a - a_hat).min() >= -tol
    assert bool((approx.eigenvalues[:-1] >= approx.eigenvalues[1:]).all())  # decreasing


def test_nystrom_shift_is_the_stable_one_and_is_taken_out_again():
    a, _ = low_rank(8)
    approx = sketch(a, 12, seed=3)
    # the same test matrix, from the same seed
    omega = torch.randn(N, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    phi, _ = torch.linalg.qr(omega)
    nu = math.sqrt(N) * torch.finfo(F64).eps * torch.linalg.matrix_norm(a @ phi).item()
    assert approx.shift == pytest.approx(nu, rel=1e-10, abs=0)
    # the four sketch directions in A's null space carry S^2 ~ nu: zero once nu is removed
    assert approx.eigenvalues[8:].max() < 0.1 * nu


def test_nystrom_of_an_indefinite_matrix_falls_back_to_a_larger_shift():
    a, _ = spd([-2.0, -0.5, 0.0, 1.0, 3.0, 4.0], seed=3)
    approx = sketch(a, 10)  # capped at n = 6: the core is Q^T A Q, indefinite
    assert approx.fallback and approx.basis.shape == (6, 6)
    expected = torch.tensor([4.0, 3.0, 1.0, 0.0, 0.0, 0.0], dtype=F64)  # A's positive part
    assert_close(approx.eigenvalues, expected, rtol=0, atol=1e-12)


# -- the preconditioner ---
def test_preconditioner_inverts_its_dense_form_and_its_square_root_squares_to_it():
    gen = torch.Generator().manual_seed(4)
    n, mu = 30, 0.3
    lam = torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2], dtype=F64)
    u, _ = torch.linalg.qr(torch.randn(n, len(lam), generator=gen, dtype=F64))
    approx = NystromApprox(u, lam)
    eye = torch.eye(n, dtype=F64)
    p = u @ torch.diag(lam + mu) @ u.T / (lam[-1] + mu) + eye - u @ u.T
    w, v = torch.linalg.eigh(p)
    p_inv_sqrt = v @ torch.diag(w.rsqrt()) @ v.T  # the symmetric root
    inverse, inverse_sqrt = approx.inverse(mu), approx.inverse_sqrt(mu)
    for x in torch.randn(3, n, generator=gen, dtype=F64):
        assert_close(inverse(x), torch.linalg.solve(p, x), rtol=1e-12, atol=1e-12)
        assert_close(inverse_sqrt(x), p_inv_sqrt @ x, rtol=1e-12, atol=1e-12)
        assert_close(inverse_sqrt(inverse_sqrt(x)), inverse(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mu > 0"):
        approx.inverse(0.0)


def test_nystrom_preconditioned_cg_solves_low_rank_plus_shift_in_one_iteration():
    a, _ = low_rank(8)
    mu = 0.1
    b = torch.randn(N, generator=torch.Generator().manual_seed(5), dtype=F64)

    def matvec(v):
        return a @ v + mu * v

    approx = sketch(a, 12)
    result = conjugate_gradient(matvec, b, max_iter=50, tol=1e-10, precondition=approx.inverse(mu))
    plain = conjugate_gradient(matvec, b, max_iter=50, tol=1e-10)
    assert result.reason == "tolerance" and result.iterations == 1
    assert plain.iterations == 9  # one per distinct eigenvalue of A + mu I
    assert_close(result.x, torch.linalg.solve(a + mu * torch.eye(N, dtype=F64), b))


# -- the optimizer ---
def quadratic_model(eigs=EIGS, seed=0):
    a, _ = spd(eigs, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(len(eigs), generator=gen, dtype=F64)
    theta0 = torch.randn(len(eigs), generator=gen, dtype=F64)
    return a, b, Scalar(quadratic(a, b), theta0)


def damped_newton_direction(a, b, theta, mu):
    return torch.linalg.solve(a + mu * torch.eye(len(a), dtype=F64), a @ theta - b)


def test_nncg_takes_the_damped_newton_step_on_a_quadratic():
    a, b, model = quadratic_model()
    mu = 1e-3
    theta0 = model.theta.detach().clone()
    opt = NNCG([model.theta], rank=len(EIGS), damping=mu, cg_tol=1e-12, seed=0)
    record = opt.step(objective(model))
    expected = theta0 - damped_newton_direction(a, b, theta0, mu)
    assert_close(model.theta.detach(), expected, rtol=0, atol=1e-10)
    assert record["step_size"] == 1.0 and record["line_search_trials"] == 1
    # rank = P: the preconditioner is exact, P^-1 (H + mu I) = (lambda_min + mu) I
    assert record["cg_iterations"] == 1 and record["nystrom_refreshed"] == 1
    assert record["nystrom_lambda_max"] == pytest.approx(10.0, rel=1e-12)
    assert record["nystrom_lambda_min"] == pytest.approx(0.5, rel=1e-12)
    assert record["negative_curvature"] == 0 and record["not_descent"] == 0


def mlp_problem(seed=0, n=20):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    y = torch.sin(x.sum(1, keepdim=True))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    return model, (x, y)


def mse(out, target):
    return ((out - target) ** 2).mean()


def mlp_objective(model, batch, counters=None):
    return Objective(model, mse, batch, list(model.parameters()), counters, "gaussian")


def dense_gradient_and_hessian(model, batch):
    """theta, g and H over the flattened parameters, by autograd on a function of theta."""
    names, params = zip(*model.named_parameters(), strict=True)
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(t):
        parts = t.split([p.numel() for p in params])
        values = {n: c.view_as(p) for n, c, p in zip(names, parts, params, strict=True)}
        return mse(functional_call(model, values, (batch[0],)), batch[1])

    jacobian, hessian = torch.autograd.functional.jacobian, torch.autograd.functional.hessian
    return theta, jacobian(loss, theta), hessian(loss, theta)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_nncg_first_step_on_a_tanh_mlp_is_the_damped_newton_step_times_the_step_size():
    model, batch = mlp_problem()
    theta0, g, h = dense_gradient_and_hessian(model, batch)
    mu = 1.5
    damped = h + mu * torch.eye(len(theta0), dtype=F64)
    assert torch.linalg.eigvalsh(h)[0] < 0 < torch.linalg.eigvalsh(damped)[0]  # the premise
    params = list(model.parameters())
    # rank 5 of 21: the preconditioner is rough, but an exact solve does not depend on it
    opt = NNCG(params, rank=5, damping=mu, cg_max_iter=200, cg_tol=1e-13, seed=1)
    record = opt.step(mlp_objective(model, batch))
    assert record["step_size"] > 0
    expected = theta0 - record["step_size"] * torch.linalg.solve(damped, g)
    assert_close(flat(model), expected, rtol=0, atol=1e-10)


def test_refresh_schedule_and_oracle_counts():
    model, batch = mlp_problem(seed=1)
    params = list(model.parameters())
    rank, max_iter = 4, 5
    opt = NNCG(params, rank=rank, update_freq=3, damping=2.0, cg_max_iter=max_iter, seed=0)
    counters = Counters()
    refreshed = []
    for step in range(7):
        before = counters.as_dict()
        record = opt.step(mlp_objective(model, batch, counters))
        delta = {k: counters.as_dict()[k] - before[k] for k in before}
        refreshed.append(record["nystrom_refreshed"])
        warm = int(step > 0)  # the warm start's residual is one more product
        assert record["cg_iterations"] == max_iter and record["step_size"] > 0
        assert delta["hvp"] == rank * record["nystrom_refreshed"] + max_iter + warm
        assert record["cg_matvecs"] == max_iter + warm
        assert delta["backward"] == 1 and delta["ggnvp"] == 0
        assert delta["forward"] == 1 + record["line_search_trials"]  # every Armijo trial
    assert refreshed == [1, 0, 0, 1, 0, 0, 1]  # steps 1, 1 + F, 1 + 2F


def test_state_dict_round_trip_continues_bit_for_bit():
    model_a, batch = mlp_problem(seed=1)  # where CG keeps the warm start (it often drops it)
    hyper = dict(rank=3, update_freq=2, damping=2.0, cg_max_iter=3)
    opt_a = NNCG(list(model_a.parameters()), seed=0, **hyper)
    opt_a.step(mlp_objective(model_a, batch))
    model_b = copy.deepcopy(model_a)
    # another seed: only the loaded generator state can make its next refresh agree
    opt_b = NNCG(list(model_b.parameters()), seed=1, **hyper)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for _ in range(2):  # the stored approximation and warm start, then a refresh
        record_a = opt_a.step(mlp_objective(model_a, batch))
        record_b = opt_b.step(mlp_objective(model_b, batch))
        assert torch.equal(flat(model_a), flat(model_b))
        assert {k: v for k, v in record_a.items() if k != "loss"} == {
            k: v for k, v in record_b.items() if k != "loss"
        }
    assert record_a["nystrom_refreshed"] == 1


def test_armijo_backtracks_an_overshooting_step_to_the_first_sufficient_decrease():
    a, b, model = quadratic_model(seed=1)
    # From 1.9 * 2^10, halving reaches 1.9: accepted for alpha < 0.05, not for alpha = 0.1
    # (t <= 2 (1 - alpha) g^T d / d^T A d, about 1.8)
    mu, lr = 1e-3, 1.9 * 2**10
    f = quadratic(a, b)
    theta0 = model.theta.detach().clone()
    d = damped_newton_direction(a, b, theta0, mu)
    g = a @ theta0 - b
    expected, trials = lr, 1
    while not f(theta0 - expected * d) <= f(theta0) - 0.1 * expected * (g @ d):
        expected, trials = expected * 0.5, trials + 1
    assert trials == 12 and expected == pytest.approx(0.95)
    opt = NNCG([model.theta], lr=lr, rank=6, damping=mu, cg_tol=1e-12, seed=0)
    record = opt.step(objective(model))
    assert record["step_size"] == expected and record["line_search_trials"] == trials
    assert_close(model.theta.detach(), theta0 - expected * d, rtol=0, atol=1e-10)


def test_armijo_cap_rejects_the_step_and_restores_exactly():
    _, _, model = quadratic_model(seed=1)
    theta0 = model.theta.detach().clone()
    opt = NNCG([model.theta], lr=1e3, rank=6, max_trials=1, seed=0)
    record = opt.step(objective(model))
    assert record["step_size"] == 0 and record["line_search_trials"] == 1
    assert record["rejected_steps"] == 1
    assert torch.equal(model.theta.detach(), theta0)


def test_negative_curvature_is_followed_downhill_with_the_fallback_preconditioner():
    a, _ = spd([-2.0, 1.0, 4.0], seed=2)
    f = quadratic(a, torch.ones(3, dtype=F64))
    model = Scalar(f, [0.1, 0.2, 0.3])
    f0 = f(model.theta.detach()).item()
    opt = NNCG([model.theta], rank=3, damping=1e-2, seed=0)
    record = opt.step(objective(model))
    assert record["nystrom_fallback"] == 1 and record["negative_curvature"] == 1
    assert_close(opt.vector_state["nystrom_eigenvalues"], torch.tensor([4.0, 1.0, 0.0], dtype=F64))
    assert record["step_size"] > 0 and f(model.theta.detach()).item() < f0


def test_no_step_without_a_descent_direction():
    a, _ = spd(EIGS)
    model = Scalar(quadratic(a, torch.zeros(len(EIGS), dtype=F64)), torch.zeros(len(EIGS)))
    counters = Counters()  # at the minimum g = 0 exactly, so CG returns d = 0: g^T d = 0
    record = NNCG([model.theta], rank=2, seed=0).step(objective(model, counters))
    assert record["not_descent"] == 1 and record["step_size"] == 0
    assert record["line_search_trials"] == 0 and record["rejected_steps"] == 1
    assert torch.equal(model.theta.detach(), torch.zeros(len(EIGS), dtype=F64))
    assert counters.forward == 1  # no line search


# -- configuration ---
# each a hyperparameter the torch class and its jax twin refuse, naming it
BAD_HYPERPARAMETERS = [
    ("lr", 0.0),
    ("rank", 0),
    ("rank", 2.5),
    ("update_freq", 0),
    ("damping", 0.0),
    ("cg_max_iter", 0),
    ("cg_tol", 1.0),
    ("alpha", 0.0),
    ("alpha", 1.0),
    ("beta", 0.0),
    ("beta", 1.0),
    ("max_trials", 0),
]


@pytest.mark.parametrize("name, value", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        NNCG([nn.Parameter(torch.zeros(2))], **{name: value})
    with pytest.raises(ConfigError, match=f"nncg: {name}"):
        build_config("nncg", {name: value}, where="optimizers.x")
