"""Physics-informed neural networks: convection, reaction and wave (Rathore et al. 2024).

A PINN is trained on one full batch of collocation points: 10,000 residual points drawn without
replacement from the 255 x 100 interior of a 257 x 101 (x, t) grid, the 257 points of the
initial line and the 101 points of each boundary. The loss is the sum of mean squared terms,
as the paper's code: the PDE residual, the boundary condition (periodic: u at the right
boundary minus u at the left; Dirichlet: one term per boundary) and the initial condition (the
wave equation adds u_t = 0 as a second initial term). The metric is the L2 relative error
against the analytic solution on every grid point (interior, initial line and boundaries),
most of which the loss never sees.

Each row of the batch is one point and says which term it belongs to (its third column), so
the residual of any subset of rows is defined: the objective's mini-batch views, the curvature
products and the zeroth-order probes all take the PINN loss as they take any other. The model's
output is each row's residual divided by sqrt(rows of its term in the batch) and the loss is the
plain sum of squares (``sum_terms mean_rows r^2``): the negative log-likelihood of a Gaussian of
variance 1/2 around the output, so the Gauss-Newton and sampled-target methods see the right
likelihood. Derivatives with respect to the inputs are taken inside the forward pass, with a
graph, so HVPs of the PINN loss need nothing special.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import Problem, dtype_of, require_positive_ints

X_POINTS, T_POINTS = 257, 101  # the paper's grid
RESIDUAL, INITIAL, INITIAL_VELOCITY, LEFT, RIGHT, PERIODIC = range(6)  # a row's term
TERMS = 6

# The paper's table (width 200, 10,000 residual points; best of its runs), (loss, L2RE) per
# schedule; Adam is Adam W without weight decay. NNCG's convection loss is only given as ">10x
# lower" than Adam + L-BFGS's, and Adam alone only by its L2RE.
PAPER = {
    "convection": {"adamw+lbfgs": (5.95e-6, 4.19e-3), "adamw+lbfgs+nncg": (None, 1.94e-3),
                   "adamw": (None, 5.96e-2)},
    "reaction": {"adamw+lbfgs": (3.26e-6, 1.92e-2), "adamw+lbfgs+nncg": (2.89e-7, 9.92e-3),
                 "adamw": (None, 2.12e-2)},
    "wave": {"adamw+lbfgs": (1.12e-3, 5.52e-2), "adamw+lbfgs+nncg": (6.13e-5, 1.27e-2),
             "adamw": (None, 3.49e-1)},
}  # fmt: skip
SOURCE = "Rathore et al. 2024, width 200"
COEFFICIENT = {"convection": 40.0, "reaction": 5.0, "wave": 5.0}  # beta, rho, beta


@dataclass(frozen=True)
class Settings:
    problem: str = "convection"
    coefficient: float | None = None  # beta (convection, wave) or rho (reaction); None: paper's
    width: int = 50
    depth: int = 3  # hidden tanh layers
    residual_points: int = 10_000  # drawn from the (X_POINTS - 2) x (T_POINTS - 1) interior
    steps: int = 1000
    eval_every: int = 100
    target: float | None = None  # L2RE that counts as reached; None: the paper's Adam+L-BFGS
    dtype: str = "float32"

    def __post_init__(self):
        if self.problem not in COEFFICIENT:
            raise ValueError(f"problem must be one of {sorted(COEFFICIENT)}, got {self.problem!r}")
        interior = (X_POINTS - 2) * (T_POINTS - 1)
        require_positive_ints(self, ("width", "depth", "residual_points", "steps", "eval_every"))
        if self.residual_points > interior:
            raise ValueError(f"residual_points must be at most {interior}, the interior points")
        if self.target is not None and not self.target > 0:
            raise ValueError(f"target must be a positive L2 relative error, got {self.target}")
        dtype_of(self.dtype)


class PDE:
    """One of the three problems: domain, analytic solution, initial data, residual."""

    def __init__(self, name: str, coefficient: float):
        self.name, self.c = name, coefficient
        self.x_range = (0.0, 1.0) if name == "wave" else (0.0, 2 * math.pi)
        self.second_order = name == "wave"

    def initial(self, x: Tensor) -> Tensor:
        if self.name == "convection":
            return torch.sin(x)
        if self.name == "reaction":
            return torch.exp(-0.5 * ((x - math.pi) / (math.pi / 4)) ** 2)
        return torch.sin(math.pi * x) + 0.5 * torch.sin(self.c * math.pi * x)

    def solution(self, x: Tensor, t: Tensor) -> Tensor:
        if self.name == "convection":
            return torch.sin(x - self.c * t)
        if self.name == "reaction":
            h = self.initial(x)
            grow = h * torch.exp(self.c * t)
            return grow / (grow + 1 - h)
        return torch.sin(math.pi * x) * torch.cos(2 * math.pi * t) + 0.5 * torch.sin(
            self.c * math.pi * x
        ) * torch.cos(2 * self.c * math.pi * t)

    def residual(self, u: Tensor, du: Tensor, d2u: Tensor | None) -> Tensor:
        """The PDE's left-hand side; du = (u_x, u_t) columns, d2u = (u_xx, u_tt) columns."""
        if self.name == "convection":
            return du[:, 1] + self.c * du[:, 0]
        if self.name == "reaction":
            return du[:, 1] - self.c * u * (1 - u)
        return d2u[:, 1] - 4 * d2u[:, 0]


def mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = 2
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.Tanh()]
        fan_in = width
    layers.append(nn.Linear(fan_in, 1))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class PINN(nn.Module):
    """u(x, t) = net(x, t); ``forward(rows)`` gives each row's scaled residual (module doc)."""

    def __init__(self, net: nn.Module, pde: PDE):
        super().__init__()
        self.net, self.pde = net, pde

    def u(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.stack([x, t], dim=1)).squeeze(1)

    def forward(self, rows: Tensor) -> Tensor:
        term = rows[:, 2].long()
        outer_graph = torch.is_grad_enabled()
        # input derivatives need a graph even when the caller wants none (a loss-only pass)
        with torch.enable_grad():
            xt = rows[:, :2].detach().requires_grad_(True)
            u = self.net(xt).squeeze(1)
            (du,) = torch.autograd.grad(u.sum(), xt, create_graph=True)
            d2u = None
            if self.pde.second_order:
                u_xx = torch.autograd.grad(du[:, 0].sum(), xt, create_graph=True)[0][:, 0]
                u_tt = torch.autograd.grad(du[:, 1].sum(), xt, create_graph=True)[0][:, 1]
                d2u = torch.stack([u_xx, u_tt], dim=1)
            x, t = rows[:, 0], rows[:, 1]
            r = torch.zeros_like(u)
            r = torch.where(term == RESIDUAL, self.pde.residual(u, du, d2u), r)
            r = torch.where(term == INITIAL, u - self.pde.initial(x), r)
            r = torch.where(term == INITIAL_VELOCITY, du[:, 1], r)
            r = torch.where((term == LEFT) | (term == RIGHT), u, r)
            periodic = (term == PERIODIC).nonzero().squeeze(1)
            if len(periodic):  # u(right, t) - u(left, t), the left value evaluated here
                left = torch.full_like(t[periodic], self.pde.x_range[0])
                r = r.index_put((periodic,), u[periodic] - self.u(left, t[periodic]))
            counts = torch.bincount(term, minlength=TERMS).to(r.dtype)
            r = r / counts[term].sqrt()
        return r if outer_graph else r.detach()


def sum_of_squares(residuals: Tensor, targets: Tensor) -> Tensor:
    return (residuals - targets).square().sum()


def grid(pde: PDE, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    x = torch.linspace(*pde.x_range, X_POINTS, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, T_POINTS, dtype=torch.float64)
    return x.to(device, dtype), t.to(device, dtype)


def _rows(x: Tensor, t: Tensor, term: int) -> Tensor:
    return torch.stack([x, t, torch.full_like(x, term)], dim=1)


def collocation(pde: PDE, residual_points: int, seed: int, dtype, device) -> Tensor:
    """The training rows: sampled interior, initial line, boundaries (the reference's split)."""
    x, t = grid(pde, dtype, device)
    ti, xi = torch.meshgrid(t[1:], x[1:-1], indexing="ij")
    pick = torch.randperm(xi.numel(), generator=torch.Generator().manual_seed(seed))
    pick = pick[:residual_points].to(device)
    parts = [
        _rows(xi.reshape(-1)[pick], ti.reshape(-1)[pick], RESIDUAL),
        _rows(x, torch.zeros_like(x), INITIAL),
    ]
    if pde.name == "wave":
        parts.append(_rows(x, torch.zeros_like(x), INITIAL_VELOCITY))
        parts.append(_rows(torch.full_like(t, pde.x_range[0]), t, LEFT))
        parts.append(_rows(torch.full_like(t, pde.x_range[1]), t, RIGHT))
    else:
        parts.append(_rows(torch.full_like(t, pde.x_range[1]), t, PERIODIC))
    return torch.cat(parts)


def test_points(pde: PDE, dtype, device) -> tuple[Tensor, Tensor]:
    """Every grid point: the whole interior, the initial line and both boundaries."""
    x, t = grid(pde, dtype, device)
    ti, xi = torch.meshgrid(t[1:], x[1:-1], indexing="ij")
    xs = torch.cat([xi.reshape(-1), x, torch.full_like(t, pde.x_range[0]),
                    torch.full_like(t, pde.x_range[1])])  # fmt: skip
    ts = torch.cat([ti.reshape(-1), torch.zeros_like(x), t, t])
    return xs, ts


def infeasible(impl: str, settings: Settings) -> str | None:
    return None


def build(settings: Settings, seed: int, device: torch.device) -> Problem:
    dtype = dtype_of(settings.dtype)
    coefficient = settings.coefficient or COEFFICIENT[settings.problem]
    pde = PDE(settings.problem, coefficient)
    rows = collocation(pde, settings.residual_points, seed, dtype, device)
    targets = torch.zeros(len(rows), dtype=dtype, device=device)
    torch.manual_seed(seed)
    model = PINN(mlp(settings.width, settings.depth), pde).to(device=device, dtype=dtype)
    xs, ts = test_points(pde, dtype, device)
    exact = pde.solution(xs, ts)

    @torch.no_grad()
    def loss(net: nn.Module) -> float:
        return sum_of_squares(net(rows), targets).item()

    @torch.no_grad()
    def evaluate(net: nn.Module) -> dict[str, float]:
        error = (net.u(xs, ts) - exact).norm() / exact.norm()
        return {"val_loss": loss(net), "val_metric": error.item()}

    target = settings.target or PAPER[settings.problem]["adamw+lbfgs"][1]
    paper = {
        schedule: {"loss": loss_value, "metric": l2re, "source": SOURCE}
        for schedule, (loss_value, l2re) in PAPER[settings.problem].items()
    }
    return Problem(
        model=model,
        loss_fn=sum_of_squares,
        likelihood="gaussian",
        batches=itertools.repeat((rows, targets)),
        evaluate=evaluate,
        metric="l2re",
        higher_is_better=False,
        target=target,
        steps=settings.steps,
        eval_every=settings.eval_every,
        batch_size=len(rows),
        train_loss=loss,
        train_examples=(rows, targets),
        paper=paper,
    )
