"""Small problems with known answers, shared by the optimizer tests: a 'model' whose output is
the loss itself, SPD quadratics with chosen eigenvalues, and Rosenbrock's valley."""

from __future__ import annotations

import torch
from torch import nn

from hessbench.optimizers.torch.objective import Counters, Objective

F64 = torch.float64


class Scalar(nn.Module):
    """f(theta) as a model whose output is the loss (the objective's loss_fn passes it on)."""

    def __init__(self, f, theta):
        super().__init__()
        self.f = f
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=F64).clone())

    def forward(self, _inputs):
        return self.f(self.theta)


def scalar_objective(model: Scalar, counters: Counters | None = None) -> Objective:
    batch = (torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64))
    return Objective(model, lambda out, _t: out, batch, [model.theta], counters)


def spd(eigenvalues, seed=0):
    """Q diag(eigenvalues) Q^T with a random orthogonal Q, and Q."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=F64)) @ q.T, q


def quadratic(a, b):
    return lambda t: 0.5 * t @ a @ t - b @ t


def rosenbrock(t):
    """(1 - a)^2 + 100 (b - a^2)^2: a non-convex valley with its minimum at (1, 1)."""
    return (1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2
