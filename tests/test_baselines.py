"""torch baselines driven through the Objective closure, on a least-squares problem whose
optimum is known in closed form, against hand-written update rules."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch.baselines import AdamWConfig, LBFGSConfig, SGDConfig
from hessbench.optimizers.torch.objective import Counters, Objective
from hessbench.optimizers.torch.registry import OPTIMIZERS, ConfigError, build_config

from problems import Scalar, rosenbrock

N, D_IN, D_OUT = 32, 4, 2
EXACT = dict(rtol=1e-13, atol=1e-15)


def mse(out, target):
    return ((out - target) ** 2).mean()


def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=gen, dtype=torch.float64)
    y = torch.randn(N, D_OUT, generator=gen, dtype=torch.float64)
    return x, y


def make_model(seed: int = 1) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D_IN, D_OUT, bias=False).double()


def optimum(x, y) -> torch.Tensor:
    # x W^T ~ y, so W^T is the least-squares solution (x has full column rank: strongly convex).
    return torch.linalg.lstsq(x, y).solution.T


def closure(model, batch, counters=None) -> Objective:
    return Objective(model, mse, batch, list(model.parameters()), counters, "gaussian")


def run(model, opt, batch, steps, counters=None):
    for _ in range(steps):
        opt.step(closure(model, batch, counters))


# Per optimizer: hyperparameter overrides, steps, and how close to the optimum it must get.
# SGD (lr .05, mu .9): Hessian eigenvalues lie in ~[0.3, 2], so heavy ball contracts by about
# sqrt(mu) = .95 a step. AdamW at its default lr 1e-3 would need thousands of steps; at lr 1e-2
# it is within ~3e-4 after 500 (its near-sign steps then shrink slowly).
# L-BFGS: 8 unknowns, so its inner iterations solve the quadratic essentially exactly, but its
# default tolerance_change 1e-9 also bounds the directional derivative g.d, which stops it (for
# good: every later step is a no-op) at an error ~sqrt(1e-9 / lambda) ~ 1e-5; tightened here.
CHAIN = [
    {"name": "sgd", "impl": "sgd", "hyperparameters": {}, "steps": 2},
    {"name": "nncg", "impl": "nncg", "hyperparameters": {}, "steps": None},
]
SETTINGS = {
    "sgd": ({}, 400, 1e-7),
    "adamw": ({"lr": 1e-2}, 500, 1e-3),
    "lbfgs": ({"tolerance_grad": 1e-12, "tolerance_change": 1e-20}, 2, 1e-8),
    # Curvature methods (exact on a quadratic up to their damping): undamped Newton lands in
    # one step; Levenberg-Marquardt damping shrinks by 2/3 per accepted step from lambda = 1.
    "newton": ({}, 1, 1e-12),
    "damped_newton": ({}, 40, 1e-8),
    "newton_cg": ({"cg_tol": 1e-12}, 40, 1e-8),
    "hf_gn": ({}, 40, 1e-8),
    # Diagonal preconditioners on a non-diagonal Hessian: linear convergence. Sophia's clipped
    # steps with momentum 0.965 settle slowly (error ~5e-5 after 500 steps).
    "adahessian": ({"lr": 0.1}, 500, 1e-9),
    "sophia": ({"lr": 0.05, "rho": 0.1, "weight_decay": 0.0}, 500, 1e-3),
    # Zeroth order, full batch: the central difference is exact on a quadratic, so the SPSA
    # noise vanishes with the gradient and the iterates converge linearly to the optimum.
    "mezo": ({"lr": 0.05}, 1000, 1e-10),
    "zo_adam": ({"lr": 1e-2}, 1000, 1e-8),
    "hizoo": ({"lr": 0.05, "smoothing": 1e-3}, 2000, 1e-9),
    "hizoo_l": ({"lr": 0.05, "smoothing": 1e-3}, 2000, 1e-9),
    # NysNewton-CG: rank 60 >= the 8 unknowns, so its preconditioner is exact and CG needs
    # two iterations; the damping 1e-2 leaves a linear contraction of ~1e-2 a step.
    "nncg": ({}, 8, 1e-12),
    # a chain: two SGD steps, then NNCG's from wherever SGD left the parameters
    "chain": ({"phases": CHAIN}, 10, 1e-12),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reaches_closed_form_optimum(name):
    assert name in SETTINGS, f"new optimizer {name!r}: give it a convergence setting here"
    overrides, steps, tol = SETTINGS[name]
    x, y = problem()
    w_star = optimum(x, y)
    model = make_model()
    start = (model.weight - w_star).abs().max().item()
    assert start > 0.1
    opt = build_config(name, overrides).build(model.parameters())
    run(model, opt, (x, y), steps)
    assert (model.weight - w_star).abs().max().item() < tol


def state_tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from state_tensors(value)
    elif isinstance(state, list | tuple):
        for value in state:
            yield from state_tensors(value)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_is_bitwise(name):
    x, y = problem()
    # A different mini-batch for the resumed step, so L-BFGS's history is really used.
    batch2 = (x.flip(0) * 0.5, y.flip(0))
    overrides = {"lbfgs": {"max_iter": 3}, "chain": {"phases": CHAIN}}.get(name, {})
    cfg = build_config(name, overrides)
    model = make_model()
    opt = cfg.build(model.parameters())
    run(model, opt, (x, y), 3)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    fresh = make_model(seed=7)  # different init: everything must come from the checkpoint
    fresh.load_state_dict(saved["model"])
    fresh_opt = cfg.build(fresh.parameters())
    fresh_opt.load_state_dict(saved["opt"])

    assert opt.state_dict()["state"]
    tensors = list(state_tensors(opt.state_dict()["state"]))
    assert all(torch.isfinite(t).all() for t in tensors)

    run(model, opt, batch2, 1)
    run(fresh, fresh_opt, batch2, 1)
    assert torch.equal(model.weight, fresh.weight)
    assert all(torch.isfinite(t).all() for t in state_tensors(fresh_opt.state_dict()["state"]))


def grad_at(w, x, y):
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(mse(x @ w.T, y), w)
    return g


def test_sgd_momentum_is_heavy_ball():
    x, y = problem()
    cfg = SGDConfig()
    lr, mu = cfg.lr, cfg.momentum
    model = make_model()
    opt = cfg.build(model.parameters())

    p = model.weight.detach().clone()
    v = torch.zeros_like(p)
    for _ in range(2):
        v = mu * v + grad_at(p, x, y)
        p = p - lr * v
        run(model, opt, (x, y), 1)
        # Without momentum, step 2 would be off by lr * mu * g1 (~1e-2), far outside EXACT.
        assert_close(model.weight.detach(), p, **EXACT)


def test_adamw_matches_hand_update():
    x, y = problem()
    cfg = AdamWConfig(weight_decay=0.1)  # large enough for the decoupled decay to show
    lr, (b1, b2), eps, wd = cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay
    model = make_model()
    opt = cfg.build(model.parameters())

    p = model.weight.detach().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t in (1, 2):
        g = grad_at(p, x, y)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        p = p * (1 - lr * wd) - lr * mhat / (vhat.sqrt() + eps)
        run(model, opt, (x, y), 1)
        assert_close(model.weight.detach(), p, **EXACT)


class CountingObjective(Objective):
    """Counts its own invocations, apart from the shared Counters under test."""

    calls = 0

    def __call__(self):
        type(self).calls += 1
        return super().__call__()


def test_lbfgs_counts_every_closure_evaluation():
    x, y = problem()
    model = make_model()
    forwards, grads = [0], [0]
    model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    model.weight.register_hook(lambda g: grads.__setitem__(0, grads[0] + 1))

    cfg = LBFGSConfig()
    opt = cfg.build(model.parameters())
    counters = Counters()
    CountingObjective.calls = 0
    obj = CountingObjective(model, mse, (x, y), list(model.parameters()), counters, "gaussian")
    opt.step(obj)

    calls = CountingObjective.calls
    assert 1 < calls
    assert counters.forward == counters.backward == calls
    assert forwards[0] == grads[0] == calls  # hooks on the model itself agree
    # torch reports its own count of evaluations in this step's state.
    assert opt.state[model.weight]["func_evals"] == calls
    assert counters.hvp == counters.ggnvp == 0


def test_build_config_errors():
    with pytest.raises(ConfigError, match=r"optimizer\.impl: unknown optimizer 'nope'"):
        build_config("nope", {})
    with pytest.raises(ConfigError, match=r"optimizer\.momentumm: sgd has no hyperparameter"):
        build_config("sgd", {"momentumm": 0.9})
    with pytest.raises(ConfigError, match=r"opt3\.impl"):
        build_config("nope", {}, where="opt3")
    # YAML gives lists; the frozen dataclass must hold a tuple.
    assert build_config("adamw", {"betas": [0.8, 0.99]}).betas == (0.8, 0.99)
    assert build_config("lbfgs", {"max_iter": 5}) == LBFGSConfig(max_iter=5)


def test_lbfgs_solves_rosenbrock_through_the_objective():
    model = Scalar(rosenbrock, [-1.2, 1.0])
    opt = LBFGSConfig(tolerance_grad=1e-12, tolerance_change=1e-15).build(model.parameters())
    counters = Counters()
    batch = (torch.zeros(1), torch.zeros(1))
    for _ in range(5):
        opt.step(Objective(model, lambda out, _t: out, batch, [model.theta], counters))
    assert_close(model.theta.detach(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)
    assert counters.forward == counters.backward == opt.state[model.theta]["func_evals"]
