"""Spectra of a symmetric operator known only through products: Lanczos with full
reorthogonalisation, its Ritz values as top eigenvalues, Hutchinson's trace and the stochastic
Lanczos quadrature (SLQ) density (Ghorbani et al. 2019; PyHessian, Yao et al. 2020).

Operators act on flat vectors; a preconditioned spectrum is that of the operator
v -> P^-1/2 H P^-1/2 v, built by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]


@dataclass
class Lanczos:
    """T = tridiag(beta, alpha, beta) of m steps from a unit start vector."""

    alpha: Tensor
    beta: Tensor  # beta[j] couples steps j and j + 1; the last is the residual norm

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending), the squared first components of their vectors (the SLQ
        weights, summing to 1) and the residual bounds |beta_m y_m|."""
        m = len(self.alpha)
        t = torch.diag(self.alpha)
        if m > 1:
            off = self.beta[: m - 1]
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)
        residuals = (self.beta[m - 1] * vectors[-1]).abs()
        return values, vectors[0] ** 2, residuals


def lanczos(
    matvec: Operator, start: Tensor, steps: int, until: Callable[[Lanczos], bool] | None = None
) -> Lanczos:
    """``steps`` Lanczos iterations from ``start``, stopping early at an invariant subspace or,
    checked every 5 steps, when ``until`` says the run so far is enough."""
    basis = [start / start.norm()]
    alphas, betas = [], []
    for j in range(steps):
        r = matvec(basis[j])
        alpha = basis[j] @ r
        r = r - alpha * basis[j] - (betas[-1] * basis[j - 1] if j else 0)
        for _ in range(2):  # full reorthogonalisation, twice is enough (Parlett)
            for q in basis:
                r = r - (q @ r) * q
        beta = r.norm()
        alphas.append(alpha)
        betas.append(beta)
        if beta.item() <= 1e-12 * max(abs(alpha.item()), 1.0) or j == steps - 1:
            break
        if until is not None and (j + 1) % 5 == 0:
            if until(Lanczos(torch.stack(alphas), torch.stack(betas))):
                break
        basis.append(r / beta)
    return Lanczos(torch.stack(alphas), torch.stack(betas))


def rademacher(n: int, generator: torch.Generator, dtype, device) -> Tensor:
    signs = torch.randint(0, 2, (n,), generator=generator, device=device)
    return signs.to(dtype).mul_(2).sub_(1)


def top_eigenvalues(
    matvec: Operator, n: int, k: int, generator: torch.Generator, *, dtype=torch.float64,
    device=None, tol: float = 1e-10, max_steps: int = 300,
) -> tuple[Tensor, Tensor, int]:  # fmt: skip
    """The k largest eigenvalues (descending), their residual bounds |beta_m y_m| and the
    products used: one Lanczos run from a Rademacher vector, stopped once every bound is below
    ``tol`` times the largest Ritz magnitude, or after ``max_steps`` (or n) steps."""

    def converged(run: Lanczos) -> bool:
        values, _, residuals = run.ritz()
        if len(values) < k:
            return False
        return bool((residuals.flip(0)[:k] <= tol * values.abs().max().clamp(min=1.0)).all())

    start = rademacher(n, generator, dtype, device)
    run = lanczos(matvec, start, min(n, max_steps), converged)
    values, _, residuals = run.ritz()
    return values.flip(0)[:k], residuals.flip(0)[:k], len(run.alpha)


@dataclass
class Density:
    """SLQ: per start vector, Ritz values (nodes) and weights; the spectral density is their
    average of point masses, which integrates to 1. ``traces`` are the vectors' v^T H v."""

    nodes: list[Tensor]
    weights: list[Tensor]
    traces: Tensor
    residuals: list[Tensor]

    def moment(self, power: int) -> float:
        """(1/n) tr(H^power), estimated: exact per vector for power < 2 * steps."""
        per_vector = [(w * x**power).sum() for x, w in zip(self.nodes, self.weights, strict=True)]
        return torch.stack(per_vector).mean().item()

    def trace(self) -> tuple[float, float]:
        """Hutchinson's estimate of tr(H) from the same vectors and its standard error."""
        mean = self.traces.mean().item()
        if len(self.traces) < 2:
            return mean, math.nan
        return mean, self.traces.std().item() / math.sqrt(len(self.traces))

    def smoothed(self, grid: Tensor, width: float) -> Tensor:
        """The density convolved with a Gaussian of standard deviation ``width`` on ``grid``."""
        total = torch.zeros_like(grid)
        for x, w in zip(self.nodes, self.weights, strict=True):
            kernel = torch.exp(-0.5 * ((grid[:, None] - x[None, :]) / width) ** 2)
            total += (kernel * w).sum(1) / (width * math.sqrt(2 * math.pi))
        return total / len(self.nodes)


def slq(
    matvec: Operator, n: int, steps: int, vectors: int, generator: torch.Generator, *,
    dtype=torch.float64, device=None,
) -> Density:  # fmt: skip
    """Stochastic Lanczos quadrature from ``vectors`` Rademacher starts of ``steps`` steps."""
    nodes, weights, traces, residuals = [], [], [], []
    for _ in range(vectors):
        v = rademacher(n, generator, dtype, device)
        run = lanczos(matvec, v, steps)
        values, first, bounds = run.ritz()
        nodes.append(values)
        weights.append(first)
        residuals.append(bounds)
        traces.append(n * run.alpha[0])  # v^T H v = |v|^2 e1^T T e1, |v|^2 = n: Hutchinson
    return Density(nodes, weights, torch.stack(traces), residuals)
