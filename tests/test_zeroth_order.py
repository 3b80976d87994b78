"""MeZO, ZO-Adam, HiZOO and HiZOO-L against SPSA's exact identities on quadratics, its
moments, hand-computed updates from the regenerated z, and each other."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch import zeroth_order
from hessbench.optimizers.torch.hizoo import HiZOO, HiZOOL
from hessbench.optimizers.torch.objective import Counters, Objective
from hessbench.optimizers.torch.zeroth_order import MeZO, ZOAdam

from problems import F64, Scalar, quadratic, spd
from problems import scalar_objective as objective

A, _ = spd([0.5, 1.0, 2.0, 3.0, 4.0, 6.0], seed=2)
B = torch.linspace(-1, 1, 6, dtype=F64)
THETA = torch.tensor([0.3, -0.2, 0.5, 1.0, -1.5, 0.1], dtype=F64)


def grad_f(theta):
    return A @ theta - B


def spy(opt):
    """Record the z of every pass over the parameters (a list of per-piece tensors per pass)."""
    passes = []
    draws = opt._draws

    def recording(seed):
        passes.append([])
        for item in draws(seed):
            passes[-1].append(item[3].clone())
            yield item

    opt._draws = recording
    return passes


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    batch = (
        torch.randn(32, 8, generator=gen, dtype=dtype),
        torch.randint(0, 3, (32,), generator=gen),
    )
    return model, batch


def mlp_objective(model, batch, counters=None):
    return Objective(model, F.cross_entropy, batch, list(model.parameters()), counters)


# -- SPSA -----------------------------------------------------------------------------------
def test_central_difference_on_a_quadratic_is_the_directional_derivative_and_z_is_reused():
    model = Scalar(quadratic(A, B), THETA)
    opt = MeZO([model.theta], lr=1e-2, eps=1e-3, seed=0)
    passes = spy(opt)
    record = opt.step(objective(model))
    assert len(passes) == 4  # perturb, perturb back, restore, update
    z = passes[0][0].view(-1)
    for other in passes[1:]:
        assert torch.equal(other[0].view(-1), z)  # bitwise: the update uses the perturbation's z
    assert record["projected_grad"] == pytest.approx((z @ grad_f(THETA)).item(), rel=1e-9)
    assert_close(model.theta.detach(), THETA - 1e-2 * record["projected_grad"] * z)


def test_spsa_estimate_is_unbiased_with_second_moment_d_plus_2():
    model = Scalar(quadratic(A, B), THETA)
    opt = MeZO([model.theta], lr=1.0, seed=1)
    draws = 6000
    samples = torch.empty(draws, 6, dtype=F64)
    for k in range(draws):
        with torch.no_grad():
            model.theta.copy_(THETA)
        opt.step(objective(model))
        samples[k] = THETA - model.theta.detach()  # lr 1: the step is g_hat itself
    g = grad_f(THETA)
    # Var(g_hat_i) = |g|^2 + g_i^2 for Gaussian z
    sigma = (g @ g + g * g).sqrt() / draws**0.5
    assert ((samples.mean(0) - g).abs() <= 4 * sigma).all()
    norms = (samples * samples).sum(1)
    error = norms.std() / draws**0.5
    assert abs(norms.mean() - 8 * (g @ g)) <= 4 * error  # d + 2 = 8


def test_n_spsa_averages_the_estimates_of_its_seeds_at_one_point():
    model = Scalar(quadratic(A, B), THETA)
    averaged = MeZO([model.theta], lr=0.1, samples=3, seed=4)
    averaged.step(objective(model))
    step = model.theta.detach() - THETA
    single = MeZO([model.theta], lr=0.1, samples=1, seed=4)  # draws the same three seeds
    steps = []
    for _ in range(3):
        with torch.no_grad():
            model.theta.copy_(THETA)
        single.step(objective(model))
        steps.append(model.theta.detach() - THETA)
    assert_close(step, sum(steps) / 3, rtol=1e-12, atol=1e-15)


def test_perturb_and_restore_leave_float32_parameters_within_two_ulp():
    model, batch = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MeZO(model.parameters(), eps=1e-3, seed=0)
    passes = spy(opt)
    with torch.no_grad():
        opt._spsa(mlp_objective(model, batch))
    inf = torch.tensor(float("inf"))
    for p, q, z in zip(model.parameters(), before, passes[0], strict=True):
        # ulp of the largest value the entry held during the round trip, |q| + eps |z|
        largest = q.abs() + 1e-3 * z.view_as(q).abs()
        ulp = torch.nextafter(largest, inf) - largest
        assert ((p.detach() - q).abs() <= 2 * ulp).all()
        assert (p.detach() != q).any() or p.numel() < 10  # rounding did happen somewhere


def test_forwards_in_eval_mode_no_gradients_and_exact_oracle_counts():
    model, batch = mlp()
    model.append(nn.Dropout(0.5))
    modes = []
    model.register_forward_hook(lambda m, *_: modes.append(m.training))
    model.train()
    for cls, forwards in ((MeZO, 2), (ZOAdam, 2), (HiZOO, 3), (HiZOOL, 3)):
        counters, modes[:] = Counters(), []
        opt = cls(model.parameters(), seed=0)
        for _ in range(4):
            opt.step(mlp_objective(model, batch, counters))
        assert counters.as_dict() == {"forward": 4 * forwards, "backward": 0, "hvp": 0, "ggnvp": 0}
        assert modes == [False] * 4 * forwards and model.training
        assert all(p.grad is None for p in model.parameters())


def test_pieces_are_whole_rows_covering_each_parameter_once(monkeypatch):
    monkeypatch.setattr(zeroth_order, "MIN_PIECE", 100)
    big = nn.Linear(30, 17)  # 17 rows of 30: three rows (90 numbers) per piece
    opt = MeZO(big.parameters(), seed=0)
    weight_pieces = [(r0, r1) for i, r0, r1 in opt.pieces if i == 0]
    assert weight_pieces == [(r, min(17, r + 3)) for r in range(0, 17, 3)]
    assert [(r0, r1) for i, r0, r1 in opt.pieces if i == 1] == [(0, 1)]  # the bias: one row


def test_weight_decay_skips_vectors():
    model, batch = mlp(dtype=F64)
    before = [p.detach().clone() for p in model.parameters()]
    lr, wd = 1e-2, 0.3
    opt = MeZO(model.parameters(), lr=lr, weight_decay=wd, seed=3)
    passes = spy(opt)
    pg = opt.step(mlp_objective(model, batch))["projected_grad"]
    z = passes[-1]
    for p, q, zp in zip(model.parameters(), before, z, strict=True):
        decay = (1 - lr * wd) if q.dim() == 2 else 1.0
        assert_close(p.detach(), q * decay - lr * pg * zp.view_as(q))


def test_zo_adam_is_torch_adam_fed_with_the_spsa_estimate():
    model, batch = mlp(dtype=F64)
    twin = copy.deepcopy(model)
    opt = ZOAdam(model.parameters(), lr=1e-2, weight_decay=0.1, seed=5)
    weights = [p for p in twin.parameters() if p.dim() >= 2]
    vectors = [p for p in twin.parameters() if p.dim() < 2]
    adam = torch.optim.Adam(
        [{"params": weights, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
        lr=1e-2, foreach=False,
    )  # fmt: skip
    passes = spy(opt)
    for _ in range(3):
        pg = opt.step(mlp_objective(model, batch))["projected_grad"]
        for p, zp in zip(twin.parameters(), passes[-1], strict=True):
            p.grad = (pg * zp).view_as(p)
        adam.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert_close(p, q, rtol=1e-12, atol=1e-14)


# -- HiZOO ----------------------------------------------------------------------------------
def test_hizoo_without_smoothing_follows_mezo_bitwise():
    model, batch = mlp()
    twin = copy.deepcopy(model)
    mezo = MeZO(model.parameters(), lr=1e-3, weight_decay=0.01, seed=7)
    hizoo = HiZOO(twin.parameters(), lr=1e-3, weight_decay=0.01, smoothing=0.0, seed=7)
    for _ in range(20):
        a = mezo.step(mlp_objective(model, batch))
        b = hizoo.step(mlp_objective(twin, batch))
        assert a["projected_grad"] == b["projected_grad"]
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("estimator", ["reference", "paper"])
def test_hizoo_curvature_is_exact_on_a_quadratic_and_the_update_is_the_hand_formula(estimator):
    model = Scalar(quadratic(A, B), THETA)
    a, eps, lr = 0.3, 1e-2, 1e-3
    opt = HiZOO([model.theta], lr=lr, eps=eps, smoothing=a, estimator=estimator, seed=2)
    for _ in range(3):  # H away from its start
        opt.step(objective(model))
    h = opt.dense_hessian(model.theta).clone()
    assert h.dtype == torch.float32 and not torch.equal(h, torch.ones_like(h))
    theta = model.theta.detach().clone()
    passes = spy(opt)
    record = opt.step(objective(model))
    z = passes[0][0].view(-1)
    u = z * h.double().rsqrt()  # the perturbation direction H^-1/2 z
    assert record["curvature"] == pytest.approx(abs(u @ A @ u).item() / 2, rel=1e-7)
    w = z * z - 1 if estimator == "paper" else z * z
    new_h = h.double() * ((1 - a) + a * record["curvature"] * w.abs())
    assert_close(opt.dense_hessian(model.theta).double(), new_h, rtol=1e-6, atol=0)
    step = lr * record["projected_grad"] * z * opt.dense_hessian(model.theta).double().rsqrt()
    assert_close(model.theta.detach(), theta - step, rtol=1e-6, atol=1e-12)


def test_reference_estimator_mean_is_the_diagonal_plus_half_the_trace():
    """From H = 1 with smoothing a: E[H_new] = 1 - a + a (diag(A) + tr(A) / 2)."""
    a, draws = 0.5, 3000
    samples = torch.empty(draws, 6, dtype=F64)
    for k in range(draws):
        model = Scalar(quadratic(A, B), THETA)
        opt = HiZOO([model.theta], lr=1e-9, smoothing=a, seed=k)
        opt.step(objective(model))
        samples[k] = opt.dense_hessian(model.theta).double()
    expected = 1 - a + a * (A.diagonal() + A.trace() / 2)
    error = samples.std(0) / draws**0.5
    assert ((samples.mean(0) - expected).abs() <= 4 * error).all()


@pytest.mark.parametrize("cls", [HiZOO, HiZOOL])
@pytest.mark.parametrize("estimator", ["reference", "paper"])
def test_hessian_stays_positive_under_heavy_smoothing_and_negative_curvature(cls, estimator):
    saddle = torch.diag(torch.tensor([-3.0, -1.0, 2.0, 5.0, 0.5, -0.2], dtype=F64))
    model = Scalar(quadratic(saddle, B), THETA)
    opt = cls([model.theta], lr=1e-3, eps=0.1, smoothing=0.9, estimator=estimator, seed=0)
    for _ in range(200):
        record = opt.step(objective(model))
        assert record["hessian_min"] > 0
    model, batch = mlp()
    opt = cls(model.parameters(), lr=1e-3, smoothing=0.5, estimator=estimator, seed=0)
    for _ in range(50):
        assert opt.step(mlp_objective(model, batch))["hessian_min"] > 0


def test_hizoo_l_keeps_row_and_column_factors_updated_by_the_estimates_sums():
    layer = nn.Linear(50, 40).double()
    opt = HiZOOL(layer.parameters(), lr=1e-3, smoothing=0.25, seed=1)
    state_numbers = sum(
        t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
    )
    assert state_numbers == 40 + 50 + 40  # rows + cols of the matrix, the bias in full
    assert_close(opt.dense_hessian(layer.weight), torch.ones(40, 50, dtype=torch.float32))
    gen = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(16, 50, generator=gen, dtype=F64),
        torch.randint(0, 40, (16,), generator=gen),
    )
    passes = spy(opt)
    record = opt.step(mlp_objective(layer, batch))
    z = passes[3][0].double()  # the estimate's pass (after the three perturbation passes)
    estimate = record["curvature"] * z * z  # E = c H w with H = 1
    state = opt.state[layer.weight]
    assert_close(
        state["hessian_row"].double(), 0.75 * 50 + 0.25 * estimate.sum(1), rtol=1e-5, atol=0
    )
    assert_close(
        state["hessian_col"].double(), 0.75 * 40 + 0.25 * estimate.sum(0), rtol=1e-5, atol=0
    )
    dense = torch.outer(state["hessian_row"], state["hessian_col"]) / state["hessian_row"].sum()
    assert_close(opt.dense_hessian(layer.weight), dense)
    assert torch.equal(passes[4][0], passes[0][0])  # the descent reuses the same z


def test_hizoo_l_state_is_a_small_fraction_of_hizoo_state():
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    full, low = HiZOO(model.parameters()), HiZOOL(model.parameters())

    def numbers(opt):
        return sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))

    assert numbers(full) == sum(p.numel() for p in model.parameters())
    assert numbers(low) == (128 + 784) + (10 + 128) + 128 + 10


@pytest.mark.parametrize(
    "cls, bad",
    [(MeZO, {"eps": 0.0}), (MeZO, {"samples": 0}), (ZOAdam, {"betas": (0.9, 1.0)}),
     (HiZOO, {"smoothing": 1.0}), (HiZOO, {"estimator": "code"}), (MeZO, {"weight_decay": -1})],
)  # fmt: skip
def test_bad_hyperparameters_are_refused(cls, bad):
    with pytest.raises(ValueError):
        cls([nn.Parameter(torch.zeros(3))], **bad)


def test_non_contiguous_parameters_are_refused():
    p = nn.Parameter(torch.zeros(4, 3).t())
    with pytest.raises(ValueError, match="contiguous"):
        MeZO([p])
