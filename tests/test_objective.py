"""Objective's oracles against dense autograd truths built independently in fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from hessbench.optimizers.torch.objective import (
    GAUSSIAN_VARIANCE,
    Counters,
    Infeasible,
    Objective,
)

N, D_IN, D_HID, K = 5, 3, 4, 2
TIGHT = dict(rtol=1e-10, atol=1e-12)
LOSSES = {"mse": (F.mse_loss, "gaussian"), "ce": (F.cross_entropy, "categorical")}


def make_mlp(act: type[nn.Module] = nn.Tanh) -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, D_HID), act(), nn.Linear(D_HID, K)).double()


def make_batch(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(N, D_IN, generator=gen, dtype=torch.float64)
    if kind == "ce":
        return x, torch.randint(0, K, (N,), generator=gen)
    return x, torch.randn(N, K, generator=gen, dtype=torch.float64)


@pytest.fixture(params=sorted(LOSSES))
def setup(request):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = make_mlp()
    loss_fn, likelihood = LOSSES[request.param]
    x, y = make_batch(request.param, gen)
    obj = Objective(model, loss_fn, (x, y), params=list(model.parameters()),
                    counters=Counters(), likelihood=likelihood)
    return request.param, model, loss_fn, x, y, obj


def flat_fn(model, names, fn):
    """fn(outputs) as a function of the flat vector over the named params (row-major, in order)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def f(theta):
        chunks = [c.view(s) for c, s in zip(theta.split(sizes), shapes)]
        return fn(functional_call(model, dict(zip(names, chunks)), (params["0.weight"].new_zeros(0),))
                  if False else fn_outputs(chunks))

    def fn_outputs(chunks):
        return functional_call(model, dict(zip(names, chunks)), (_X[0],), strict=False)

    return f, torch.cat([params[n].detach().reshape(-1) for n in names])
