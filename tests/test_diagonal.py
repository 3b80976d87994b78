"""AdaHessian and Sophia against hand-computed updates, dense Hessians and the GGN diagonal."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch.diagonal import AdaHessian, Sophia, rademacher, spatial_average
from hessbench.optimizers.torch.objective import Counters, Objective

from problems import F64, Scalar
from problems import scalar_objective as objective

A = torch.tensor([0.5, 2.0, 7.0], dtype=F64)


def separable(t):
    return 0.5 * (A * t * t).sum()


# -- Hutchinson --------------------------------------------------------------------------------
def test_rademacher_is_exactly_plus_minus_one_with_mean_zero():
    z = rademacher(torch.empty(200_000, dtype=F64), torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(z.mean().item()) < 4 / 200_000**0.5  # 4 sigma


def test_hutchinson_mean_is_within_4_sigma_of_the_hessian_diagonal():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=gen, dtype=F64)
    h = m + m.T
    model = Scalar(lambda t: 0.5 * t @ h @ t, torch.zeros(6))
    opt = AdaHessian([model.theta], seed=3)
    draws = 4000
    samples = torch.stack([opt._hutchinson(objective(model))[2][0] for _ in range(draws)])
    # Var(z_i (Hz)_i) = sum_{j != i} H_ij^2 for Rademacher z
    sigma = ((h**2).sum(1) - h.diagonal() ** 2).sqrt() / draws**0.5
    assert ((samples.mean(0) - h.diagonal()).abs() <= 4 * sigma).all()


def test_spatial_average_over_kernels_and_blocks_including_3d():
    conv = torch.arange(2 * 3 * 2 * 2, dtype=F64).view(2, 3, 2, 2)
    assert_close(spatial_average(conv, 1), conv.mean((2, 3), keepdim=True).expand_as(conv))
    three = torch.arange(2 * 2 * 5, dtype=F64).view(2, 2, 5)
    out = spatial_average(three, 2)
    row = three[0, 0]  # blocks [0,1], [2,3], [4]
    assert_close(out[0, 0], torch.tensor([0.5, 0.5, 2.5, 2.5, 4.0], dtype=F64))
    assert out.shape == three.shape and row is not None
    assert_close(spatial_average(three, 1), three)


# -- AdaHessian ----------------------------------------------------------------------------------
def test_adahessian_without_momentum_lands_on_a_separable_quadratic_minimum_in_one_step():
    model = Scalar(separable, [1.0, -2.0, 0.3])
    opt = AdaHessian([model.theta], lr=1.0, betas=(0.0, 0.0), eps=0.0, hessian_power=1.0)
    opt.step(objective(model))
    assert_close(model.theta.detach(), torch.zeros(3, dtype=F64), rtol=0, atol=1e-15)


def test_adahessian_matches_a_hand_update():
    theta0 = torch.tensor([1.0, -2.0, 0.3], dtype=F64)
    model = Scalar(separable, theta0)
    lr, (b1, b2), eps, wd, k = 0.1, (0.9, 0.999), 1e-4, 0.01, 0.5
    opt = AdaHessian([model.theta], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                     hessian_power=k)  # fmt: skip
    theta = theta0.clone()
    m = torch.zeros(3, dtype=F64)
    v = torch.zeros(3, dtype=F64)
    for t in (1, 2):
        g, d = A * theta, A  # z * (H z) = a_i for a diagonal H
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d * d
        denom = (v / (1 - b2**t)).sqrt() ** k + eps
        theta = theta - lr * (m / (1 - b1**t) / denom + wd * theta)
        opt.step(objective(model))
        assert_close(model.theta.detach(), theta, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("interval", [1, 3])
def test_adahessian_computes_the_hessian_exactly_on_scheduled_steps(interval):
    model = Scalar(separable, [1.0, -2.0, 0.3])
    counters = Counters()
    opt = AdaHessian([model.theta], update_interval=interval)
    for step in range(7):
        before = counters.hvp
        record = opt.step(objective(model, counters))
        assert counters.hvp - before == (1 if step % interval == 0 else 0)
        assert record["hessian_updates"] == step // interval + 1
    assert counters.forward == counters.backward == 7


# -- Sophia ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["hutchinson", "gnb"])
def test_sophia_update_is_bounded_by_lr_times_one_plus_decay(estimator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (32,), generator=gen)
    lr, wd = 0.05, 0.3
    opt = Sophia(params, lr=lr, weight_decay=wd, update_interval=2, estimator=estimator,
                 rho=0.01)  # fmt: skip
    for _ in range(6):
        before = [p.detach().clone() for p in params]
        opt.step(Objective(model, F.cross_entropy, (x, y), params))
        for p, b in zip(params, before, strict=True):
            assert ((p.detach() - b).abs() <= lr * (1 + wd * b.abs()) + 1e-15).all()


def test_sophia_lands_on_a_1d_quadratic_minimum_when_h_is_exact():
    a = 3.0
    model = Scalar(lambda t: 0.5 * a * (t * t).sum(), [0.8])
    opt = Sophia([model.theta], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0,
                 estimator="hutchinson", update_interval=1)  # fmt: skip
    opt.step(objective(model))  # h = u (a u) = a exactly; m = g = a theta
    assert_close(model.theta.detach(), torch.zeros(1, dtype=F64), rtol=0, atol=1e-15)


def test_sophia_with_zero_or_negative_curvature_takes_sign_steps():
    theta0 = torch.tensor([0.4, -0.7, 0.2], dtype=F64)
    lr, wd = 0.01, 0.1
    # f = sum(c * theta) - theta^T theta: curvature -2 (negative): h < 0 after the update
    c = torch.tensor([1.0, -3.0, 0.5], dtype=F64)
    model = Scalar(lambda t: (c * t).sum() - (t * t).sum(), theta0)
    opt = Sophia([model.theta], lr=lr, betas=(0.0, 0.5), weight_decay=wd, estimator="hutchinson")
    record = opt.step(objective(model))
    g = c - 2 * theta0
    expected = theta0 * (1 - lr * wd) - lr * torch.sign(g)
    assert_close(model.theta.detach(), expected, rtol=0, atol=1e-15)
    assert record["clip_fraction"].item() == 1.0
    assert (opt.state[model.theta]["hessian"] < 0).all()  # and still no sign flip


def test_sophia_g_estimate_matches_the_ggn_diagonal_on_softmax_regression():
    """E[B g_hat * g_hat] = diag(GGN) for B predictions; Monte Carlo with a 4-sigma band."""
    torch.manual_seed(0)
    n, d, k = 16, 4, 3
    model = nn.Linear(d, k).double()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randint(0, k, (n,), generator=gen)
    obj = Objective(model, F.cross_entropy, (x, y), params)
    opt = Sophia(params, estimator="gnb", seed=5)
    draws = 6000
    samples = torch.stack(
        [torch.cat([e.reshape(-1) for e in opt._estimate(obj)[2]]) for _ in range(draws)]
    )
    # GGN diagonal by columns of G v with unit vectors (ggnvp is tested against J^T H J)
    total = sum(p.numel() for p in params)
    eye = torch.eye(total, dtype=F64)
    sizes = [p.numel() for p in params]
    diag = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in obj.ggnvp(
                [c.view_as(p) for c, p in zip(e.split(sizes), params, strict=True)]
            )])[i]
            for i, e in enumerate(eye)
        ]
    )  # fmt: skip
    sigma = samples.std(0) / draws**0.5
    assert ((samples.mean(0) - diag).abs() <= 4 * sigma + 1e-12).all()


def test_sophia_counts_one_extra_forward_and_backward_per_gnb_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    params = list(model.parameters())
    x, y = torch.randn(8, 3, dtype=F64), torch.randint(0, 2, (8,))
    counters = Counters()
    opt = Sophia(params, update_interval=4)
    for _ in range(8):
        opt.step(Objective(model, F.cross_entropy, (x, y), params, counters))
    assert counters.as_dict() == dict(forward=10, backward=10, hvp=0, ggnvp=0)


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_sophia_hessian_batch_estimates_on_the_first_examples_only(estimator):
    """h after the first step is (1 - b2) h_hat with h_hat taken on x[:2] alone, by hand with
    the optimizer's generator; the gradient still uses the whole batch."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    params = list(model.parameters())
    x, y = torch.randn(6, 3, dtype=F64), torch.randint(0, 4, (6,))
    opt = Sophia(params, estimator=estimator, hessian_batch=2, seed=7, weight_decay=0.0)
    counters = Counters()
    opt.step(Objective(model, F.cross_entropy, (x, y), params, counters))

    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    fresh = nn.Linear(3, 4).double()  # the parameters before the step
    sub = list(fresh.parameters())
    out = fresh(x[:2])
    if estimator == "gnb":
        probs = torch.softmax(out.detach(), -1)
        sampled = torch.multinomial(probs, 1, generator=gen).view(-1)
        g_hat = torch.autograd.grad(F.cross_entropy(out, sampled), sub)
        want = [2 * g * g for g in g_hat]
    else:
        sizes = [p.numel() for p in sub]
        z = rademacher(torch.empty(sum(sizes), dtype=F64), gen)
        zs = [v.view_as(p) for v, p in zip(z.split(sizes), sub, strict=True)]
        grads = torch.autograd.grad(F.cross_entropy(out, y[:2]), sub, create_graph=True)
        hz = torch.autograd.grad(grads, sub, zs)
        want = [zi * hi for zi, hi in zip(zs, hz, strict=True)]
    b2 = opt.param_groups[0]["betas"][1]
    for p, w in zip(params, want, strict=True):
        assert_close(opt.state[p]["hessian"], (1 - b2) * w)
    assert counters.forward == 2 and counters.backward == 2


@pytest.mark.parametrize("cls", [AdaHessian, Sophia])
def test_state_dict_carries_the_generator(cls):
    def run(opt, model, steps):
        for _ in range(steps):
            opt.step(objective(model))

    coupled = torch.tensor([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]], dtype=F64)

    def quadratic(t):  # not diagonal, so every Hutchinson draw changes the estimate
        return 0.5 * t @ coupled @ t

    model = Scalar(quadratic, [1.0, -2.0, 0.3])
    kwargs = {"estimator": "hutchinson", "update_interval": 1} if cls is Sophia else {}
    opt = cls([model.theta], seed=11, **kwargs)
    run(opt, model, 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = Scalar(quadratic, model.theta.detach())
    twin_opt = cls([twin.theta], seed=99, **kwargs)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=False))
    run(opt, model, 3)
    run(twin_opt, twin, 3)
    assert torch.equal(model.theta, twin.theta)


def test_sophia_with_zero_curvature_takes_sign_steps_plus_decay():
    theta0 = torch.tensor([0.4, -0.7, 0.2, 0.0], dtype=F64)
    c = torch.tensor([1.0, -3.0, 0.5, 0.0], dtype=F64)  # linear: H = 0, so h stays 0
    model = Scalar(lambda t: (c * t).sum(), theta0)
    lr, wd = 0.01, 0.1
    opt = Sophia([model.theta], lr=lr, betas=(0.0, 0.99), weight_decay=wd, estimator="hutchinson")
    opt.step(objective(model))
    assert torch.equal(opt.state[model.theta]["hessian"], torch.zeros(4, dtype=F64))
    expected = theta0 - lr * torch.sign(c) - lr * wd * theta0  # m = 0 moves nothing
    assert_close(model.theta.detach(), expected, rtol=0, atol=1e-15)
