"""Objective's oracles against dense autograd truths built independently in fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.testing import assert_close

from hessbench.optimizers.torch.objective import GAUSSIAN_VARIANCE, Counters, Infeasible, Objective

N, D_IN, D_HID, K = 5, 3, 4, 2
TIGHT = dict(rtol=1e-10, atol=1e-12)


def mse_manual(out, target):
    return ((out - target) ** 2).mean()


LOSSES = {
    "ce": (F.cross_entropy, "categorical"),
    "mse": (F.mse_loss, "gaussian"),
    "mse_manual": (mse_manual, "gaussian"),  # same function as "mse", built from primitives
}
# "mse" is F.mse_loss, whose forward-mode derivative of its backward raises in torch 2.13
# (pytorch/pytorch#123996): the objective must not go through it.
CURV_KINDS = ["ce", "mse_manual", "mse"]
ALL = ("0.weight", "0.bias", "2.weight", "2.bias")


def make_mlp(act: type[nn.Module] = nn.Tanh) -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, D_HID), act(), nn.Linear(D_HID, K)).double()


def make_case(kind, act=nn.Tanh, model=None):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = make_mlp(act) if model is None else model
    x = torch.randn(N, D_IN, generator=gen, dtype=torch.float64)
    y = (
        torch.randint(0, K, (N,), generator=gen)
        if kind == "ce"
        else torch.randn(N, K, generator=gen, dtype=torch.float64)
    )
    loss_fn, likelihood = LOSSES[kind]
    obj = Objective(
        model,
        loss_fn,
        (x, y),
        params=list(model.parameters()),
        counters=Counters(),
        likelihood=likelihood,
    )
    return model, loss_fn, x, y, obj


def flat_outputs(model, x, names):
    """Network outputs as a function of one flat vector over `names` (row-major, in order)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def outputs(theta):
        chunks = [c.view(s) for c, s in zip(theta.split(sizes), shapes, strict=True)]
        return functional_call(model, dict(zip(names, chunks, strict=True)), (x,))

    return outputs, torch.cat([params[n].detach().reshape(-1) for n in names])


def dense_hessian(model, loss_fn, x, y, names=ALL):
    outputs, theta = flat_outputs(model, x, names)
    return hessian(lambda t: loss_fn(outputs(t), y))(theta)


def explicit_ggn(model, loss_fn, x, y):
    outputs, theta = flat_outputs(model, x, ALL)
    jac = jacrev(lambda t: outputs(t).reshape(-1))(theta)
    z = outputs(theta).detach()
    h_out = hessian(lambda zz: loss_fn(zz.view(z.shape), y))(z.reshape(-1))
    return jac.T @ h_out @ jac, h_out, z


def flat(vec):
    return torch.cat([t.reshape(-1) for t in vec])


def rand_vec(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params)


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("kind", CURV_KINDS)
def test_hvp_matches_dense_hessian(kind, act):
    model, loss_fn, x, y, obj = make_case(kind, act)
    h = dense_hessian(model, loss_fn, x, y)
    for seed in range(3):
        v = rand_vec(obj.params, seed)
        hv = obj.hvp(v)
        assert [t.shape for t in hv] == [p.shape for p in obj.params]
        assert_close(flat(hv), h @ flat(v), **TIGHT)


@pytest.mark.parametrize("kind", CURV_KINDS)
def test_ggnvp_matches_explicit_jt_h_j(kind):
    model, loss_fn, x, y, obj = make_case(kind)
    g, h_out, z = explicit_ggn(model, loss_fn, x, y)
    # Sanity of the explicit construction itself, from the closed-form output Hessians.
    if kind != "ce":
        assert_close(h_out, 2.0 / (N * K) * torch.eye(N * K, dtype=torch.float64), **TIGHT)
    else:
        p = torch.softmax(z, dim=-1)
        blocks = [(torch.diag(pn) - torch.outer(pn, pn)) / N for pn in p]
        assert_close(h_out, torch.block_diag(*blocks), **TIGHT)
    h = dense_hessian(model, loss_fn, x, y)
    for seed in range(3):
        v = rand_vec(obj.params, seed)
        gv = flat(obj.ggnvp(v))
        assert_close(gv, g @ flat(v), **TIGHT)
        assert torch.dot(flat(v), gv) >= 0
        # tanh curvature makes H != G, so a ggnvp that returned H v would be caught above.
        assert not torch.allclose(gv, h @ flat(v), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["mse_manual", "mse"])
def test_ggn_equals_hessian_for_linear_model_with_mse(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D_IN, K)).double()
    model, loss_fn, x, y, obj = make_case(kind, model=model)
    h = dense_hessian(model, loss_fn, x, y, names=("0.weight", "0.bias"))
    for seed in range(3):
        v = rand_vec(obj.params, seed)
        assert_close(flat(obj.ggnvp(v)), flat(obj.hvp(v)), **TIGHT)
        assert_close(flat(obj.ggnvp(v)), h @ flat(v), **TIGHT)


@pytest.mark.parametrize("kind", CURV_KINDS)
def test_dense_hessian_matches_autograd(kind):
    model, loss_fn, x, y, obj = make_case(kind)
    h = obj.hessian(max_bytes=2**30)
    d = sum(p.numel() for p in model.parameters())
    assert h.shape == (d, d)
    assert_close(h, dense_hessian(model, loss_fn, x, y), **TIGHT)
    assert torch.equal(h, h.T)


def test_dense_hessian_budget_boundary():
    *_, obj = make_case("ce")
    d = sum(p.numel() for p in obj.params)
    need = 2 * d * d * 8  # fp64, working-memory factor 2 (documented)
    assert obj.hessian(max_bytes=need).shape == (d, d)
    with pytest.raises(Infeasible, match=rf"\b{d} parameters"):
        obj.hessian(max_bytes=need - 1)
    with pytest.raises(Infeasible, match=rf"\b{d} parameters"):
        obj.hessian(max_bytes=1)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_and_grad_and_closure(kind):
    model, loss_fn, x, y, obj = make_case(kind)
    ref_loss = loss_fn(model(x), y)
    ref_grad = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert all(p.grad is None for p in model.parameters())

    value, grads = obj.loss_and_grad()
    assert_close(value, ref_loss.detach(), **TIGHT)
    assert_close(flat(grads), flat(ref_grad), **TIGHT)
    assert all(p.grad is None for p in model.parameters())
    assert_close(obj.loss(), ref_loss.detach(), **TIGHT)

    # A stale gradient must be cleared, not accumulated into.
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    returned = obj()
    assert not returned.requires_grad
    assert_close(returned, ref_loss.detach(), **TIGHT)
    assert_close(flat([p.grad for p in model.parameters()]), flat(ref_grad), **TIGHT)


def test_counters_exact_sequence():
    *_, obj = make_case("ce")
    d = sum(p.numel() for p in obj.params)
    assert obj.counters.as_dict() == dict(forward=0, backward=0, hvp=0, ggnvp=0)
    v = rand_vec(obj.params, 0)
    steps = [
        (obj, dict(forward=1, backward=1, hvp=0, ggnvp=0)),
        (obj.loss, dict(forward=2, backward=1, hvp=0, ggnvp=0)),
        (obj.loss_and_grad, dict(forward=3, backward=2, hvp=0, ggnvp=0)),
        (lambda: obj.hvp(v), dict(forward=3, backward=2, hvp=1, ggnvp=0)),
        (lambda: obj.ggnvp(v), dict(forward=3, backward=2, hvp=1, ggnvp=1)),
        (obj.outputs, dict(forward=4, backward=2, hvp=1, ggnvp=1)),
        (lambda: obj.hessian(2**30), dict(forward=4, backward=2, hvp=1 + d, ggnvp=1)),
        # Pure functions of given outputs cost nothing.
        (
            lambda: obj.loss_from_outputs(obj.outputs().clone()),
            dict(forward=5, backward=2, hvp=1 + d, ggnvp=1),
        ),
    ]
    for call, expected in steps:
        call()
        assert obj.counters.as_dict() == expected


@pytest.mark.parametrize("subset", [("2.weight", "2.bias"), ("2.bias", "0.weight")])
@pytest.mark.parametrize("kind", CURV_KINDS)
def test_subset_of_params(kind, subset):
    model, loss_fn, x, y, _ = make_case(kind)
    named = dict(model.named_parameters())
    params = [named[n] for n in subset]
    obj = Objective(model, loss_fn, (x, y), params=params, likelihood=LOSSES[kind][1])
    # Truth: the block of the full Hessian, indexed by flat offsets of each named param.
    offsets, start = {}, 0
    for n in ALL:
        offsets[n] = torch.arange(start, start + named[n].numel())
        start += named[n].numel()
    idx = torch.cat([offsets[n] for n in subset])
    block = dense_hessian(model, loss_fn, x, y)[idx][:, idx]
    v = rand_vec(params, 3)
    hv = obj.hvp(v)
    assert [t.shape for t in hv] == [p.shape for p in params]
    assert_close(flat(hv), block @ flat(v), **TIGHT)
    assert_close(obj.hessian(2**30), block, **TIGHT)


def test_sample_targets_categorical_frequencies():
    *_, obj = make_case("ce")
    logits = torch.tensor([[0.3, -1.0, 1.2, 0.0]], dtype=torch.float64)
    draws = 20000
    y = obj.sample_targets(logits.repeat(draws, 1), torch.Generator().manual_seed(5))
    assert y.dtype == torch.int64 and y.shape == (draws,)
    assert 0 <= y.min() and y.max() < logits.shape[1]
    p = torch.softmax(logits[0], -1)
    freq = torch.bincount(y, minlength=4).double() / draws
    se = (p * (1 - p) / draws).sqrt()
    assert ((freq - p).abs() <= 4 * se).all(), (freq, p)


def test_sample_targets_gaussian_moments():
    *_, obj = make_case("mse")
    mu = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.float64)
    draws = 20000
    y = obj.sample_targets(mu.repeat(draws, 1), torch.Generator().manual_seed(6))
    assert y.dtype == torch.float64 and y.shape == (draws, 3)
    assert GAUSSIAN_VARIANCE == 0.5  # documented: makes -log p match MSE up to scale
    # Standard errors of the sample mean and (normal) sample variance, 4 of each allowed.
    assert ((y.mean(0) - mu[0]).abs() <= 4 * (0.5 / draws) ** 0.5).all()
    assert ((y.var(0) - 0.5).abs() <= 4 * 0.5 * (2 / (draws - 1)) ** 0.5).all()


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_fisher_from_sampled_targets_matches_output_hessian(kind):
    model, loss_fn, x, y, obj = make_case(kind)
    _, h_out, z = explicit_ggn(model, loss_fn, x, y)
    draws = 20000
    gen = torch.Generator().manual_seed(7)
    targets = obj.sample_targets(z.expand(draws, *z.shape), gen)
    assert targets.shape == (draws, *y.shape)
    grads = torch.func.vmap(torch.func.grad(lambda zz, t: loss_fn(zz, t)), in_dims=(None, 0))(
        z, targets
    ).reshape(draws, -1)
    outer = grads[:, :, None] * grads[:, None, :]
    # Per-datum mean reduction scales E[g g^T] by 1/N (CE) or 1/(N k) (MSE) relative to H_out.
    scale = N if kind == "ce" else N * K
    est, se = outer.mean(0) * scale, outer.std(0) * scale / draws**0.5
    assert ((est - h_out).abs() <= 5 * se + 1e-12).all()


def test_foreign_tensor_in_params_raises():
    model = make_mlp()
    stranger = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    x = torch.zeros(2, D_IN, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[1\]"):
        Objective(model, F.mse_loss, (x, x[:, :K]), params=[model[0].weight, stranger])
    # A detached copy shares storage but is not the parameter object itself.
    with pytest.raises(ValueError):
        Objective(model, F.mse_loss, (x, x[:, :K]), params=[model[0].weight.detach()])
