"""The PINN task: analytic solutions against their PDEs, the loss against a hand-written one,
the collocation points, the L2 relative error, and curvature products against dense autograd."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.objective import Objective
from hessbench.tasks import pinn

F64 = torch.float64
CPU = torch.device("cpu")
PROBLEMS = ["convection", "reaction", "wave"]


class Exact(nn.Module):
    """The analytic solution as a network of (x, t): its PINN residuals must all vanish."""

    def __init__(self, pde: pinn.PDE):
        super().__init__()
        self.pde = pde
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, xt):
        return self.pde.solution(xt[:, 0], xt[:, 1]).unsqueeze(1) + self.dummy


def pde_of(name):
    return pinn.PDE(name, pinn.COEFFICIENT[name])


@pytest.mark.parametrize("name", PROBLEMS)
def test_each_analytic_solution_satisfies_its_pde_initial_and_boundary_conditions(name):
    pde = pde_of(name)
    rows = pinn.collocation(pde, 2000, seed=0, dtype=F64, device=CPU)
    residuals = pinn.PINN(Exact(pde), pde)(rows)
    scale = 1 + pde.c**2  # u_tt and 4 u_xx are each of order (beta pi)^2 on the wave
    assert residuals.abs().max().item() < 1e-9 * scale
    # and a wrong coefficient is caught: the residual term does not vanish
    wrong = pinn.PINN(Exact(pinn.PDE(name, pde.c * 1.1)), pde)(rows)
    assert wrong.abs().max().item() > 1e-3


def _hand_loss(net, pde, rows):
    """sum of the mean squared terms, written out per term with its own derivatives."""
    x = rows[:, 0].clone().requires_grad_(True)
    t = rows[:, 1].clone().requires_grad_(True)
    term = rows[:, 2].long()
    u = net(torch.stack([x, t], 1)).squeeze(1)
    u_x, u_t = torch.autograd.grad(u.sum(), (x, t), create_graph=True)
    if pde.name == "convection":
        res = u_t + pde.c * u_x
    elif pde.name == "reaction":
        res = u_t - pde.c * u * (1 - u)
    else:
        (u_xx,) = torch.autograd.grad(u_x.sum(), x, create_graph=True)
        (u_tt,) = torch.autograd.grad(u_t.sum(), t, create_graph=True)
        res = u_tt - 4 * u_xx
    total = res[term == pinn.RESIDUAL].square().mean()
    ic = term == pinn.INITIAL
    total = total + (u[ic] - pde.initial(x[ic])).square().mean()
    if pde.name == "wave":
        total = total + u_t[term == pinn.INITIAL_VELOCITY].square().mean()
        total = total + u[term == pinn.LEFT].square().mean() + u[term == pinn.RIGHT].square().mean()
    else:
        right = term == pinn.PERIODIC
        left = net(torch.stack([torch.zeros_like(t[right]), t[right]], 1)).squeeze(1)
        total = total + (u[right] - left).square().mean()
    return total


@pytest.mark.parametrize("name", PROBLEMS)
def test_the_loss_is_the_sum_of_the_reference_codes_mean_squared_terms(name):
    pde = pde_of(name)
    torch.manual_seed(0)
    net = pinn.mlp(8, 3).to(F64)
    rows = pinn.collocation(pde, 300, seed=1, dtype=F64, device=CPU)
    model = pinn.PINN(net, pde)
    ours = pinn.sum_of_squares(model(rows), torch.zeros(len(rows), dtype=F64))
    assert ours.item() == pytest.approx(_hand_loss(net, pde, rows).item(), rel=1e-12)
    # any subset of rows is the same loss on those rows (mini-batch views, diagnostics)
    part = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:97]]
    ours = pinn.sum_of_squares(model(part), torch.zeros(len(part), dtype=F64))
    assert ours.item() == pytest.approx(_hand_loss(net, pde, part).item(), rel=1e-12)


@pytest.mark.parametrize("name", PROBLEMS)
def test_collocation_points_are_the_papers_split_and_seeded(name):
    pde = pde_of(name)
    rows = pinn.collocation(pde, 10_000, seed=3, dtype=F64, device=CPU)
    term = rows[:, 2].long()
    counts = torch.bincount(term, minlength=pinn.TERMS).tolist()
    assert counts[pinn.RESIDUAL] == 10_000 and counts[pinn.INITIAL] == 257
    if name == "wave":
        assert counts[pinn.INITIAL_VELOCITY] == 257
        assert counts[pinn.LEFT] == counts[pinn.RIGHT] == 101
    else:
        assert counts[pinn.PERIODIC] == 101
    interior = rows[term == pinn.RESIDUAL, :2]
    assert len(torch.unique(interior, dim=0)) == 10_000  # without replacement
    lo, hi = pde.x_range
    dx = (hi - lo) / 256
    assert interior[:, 0].min() >= lo + dx - 1e-12 and interior[:, 0].max() <= hi - dx + 1e-12
    assert interior[:, 1].min() >= 0.01 - 1e-12 and interior[:, 1].max() <= 1.0
    on_grid = (interior[:, 0] - lo) / dx
    assert torch.allclose(on_grid, on_grid.round(), atol=1e-9)
    again = pinn.collocation(pde, 10_000, seed=3, dtype=F64, device=CPU)
    other = pinn.collocation(pde, 10_000, seed=4, dtype=F64, device=CPU)
    assert torch.equal(rows, again) and not torch.equal(rows, other)


def test_l2re_is_zero_for_the_exact_solution_and_one_for_zero():
    settings = pinn.Settings(problem="reaction", residual_points=500, dtype="float64")
    problem = pinn.build(settings, seed=0, device=CPU)
    pde = problem.model.pde
    assert problem.metric == "l2re" and not problem.higher_is_better
    assert problem.target == pinn.PAPER["reaction"]["adamw+lbfgs"][1]
    exact = pinn.PINN(Exact(pde), pde)
    assert problem.evaluate(exact)["val_metric"] < 1e-12
    with torch.no_grad():
        for p in problem.model.net[-1].parameters():
            p.zero_()
    result = problem.evaluate(problem.model)
    assert result["val_metric"] == pytest.approx(1.0)
    # the test points: the whole 255 x 100 interior, the initial line and both boundaries
    xs, _ = pinn.test_points(pde, F64, CPU)
    assert len(xs) == 255 * 100 + 257 + 2 * 101
    assert result["val_loss"] == pytest.approx(problem.train_loss(problem.model))


@pytest.mark.parametrize("name", PROBLEMS)
def test_hessian_vector_products_of_the_pinn_loss_match_the_dense_autograd_hessian(name):
    pde = pde_of(name)
    torch.manual_seed(0)
    net = pinn.mlp(3, 2).to(F64)
    model = pinn.PINN(net, pde)
    rows = pinn.collocation(pde, 40, seed=0, dtype=F64, device=CPU)
    targets = torch.zeros(len(rows), dtype=F64)
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        tensors = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        out = torch.func.functional_call(
            model,
            dict(zip([n for n, _ in model.named_parameters()], tensors, strict=True)),
            (rows,),
        )
        return pinn.sum_of_squares(out, targets)  # fmt: skip

    theta = flatten([p.detach() for p in params])
    dense = torch.autograd.functional.hessian(loss_of, theta)
    objective = Objective(model, pinn.sum_of_squares, (rows, targets), params,
                          likelihood="gaussian")  # fmt: skip
    v = torch.randn(len(theta), dtype=F64, generator=torch.Generator().manual_seed(1))
    pieces = [c.view(s) for c, s in zip(v.split(sizes), shapes, strict=True)]
    assert torch.allclose(flatten(objective.hvp(pieces)), dense @ v, rtol=1e-9, atol=1e-10)
    gauss_newton = flatten(objective.ggnvp(pieces))  # 2 J^T J v, the Gaussian's GGN
    jacobian = torch.autograd.functional.jacobian(
        lambda flat: torch.func.functional_call(model, dict(zip(
            [n for n, _ in model.named_parameters()],
            [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)], strict=True)),
            (rows,)), theta)  # fmt: skip
    assert torch.allclose(gauss_newton, 2 * jacobian.T @ (jacobian @ v), rtol=1e-9, atol=1e-10)


def test_loss_only_passes_build_no_graph_to_the_parameters():
    problem = pinn.build(pinn.Settings(problem="wave", residual_points=100), 0, CPU)
    rows, targets = problem.train_examples
    with torch.no_grad():
        out = problem.model(rows)
    assert not out.requires_grad and math.isfinite(out.square().sum().item())


@pytest.mark.parametrize(
    "values, message",
    [
        ({"problem": "burgers"}, "problem"),
        ({"residual_points": 25_501}, "residual_points"),
        ({"width": 0}, "width"),
        ({"target": -1.0}, "target"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(values, message):
    with pytest.raises(ValueError, match=message):
        pinn.Settings(**values)
