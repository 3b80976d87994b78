"""The one conjugate-gradient solver: Newton-CG, Hessian-free Gauss-Newton and NysNewton-CG.

Solves ``A x = b`` for a symmetric ``A`` given only as ``matvec``, optionally preconditioned
(``precondition(r)`` applies M^-1). Alongside the iterate it tracks the quadratic model
``q(x) = x^T A x / 2 - b^T x``, cheaply, as ``-x^T (r + b) / 2`` with the residual ``r = b - A x``:
Martens' stopping rule and the damping updates of the callers read it.

Stopping, whichever comes first:
- ``max_iter`` matrix-vector products in the loop;
- relative residual ``|r| <= tol |b|``, with tol at least the dtype's epsilon: past that the
  residual is round-off and p^T A p would soon read as zero curvature;
- Martens (2010) relative progress (``progress_eps``): at iteration i > k with k = max(10,
  ceil(0.1 i)), stop when q_i < 0 and (q_i - q_{i-k}) / q_i < k * progress_eps;
- negative curvature, ``p^T A p <= 0`` (Steihaug): the current iterate is returned, or the
  preconditioned steepest-descent direction if no step was taken yet, and
  ``negative_curvature`` is set. A caller that damps A enough never sees it.

A warm start ``x0`` whose model value is not below q(0) = 0 is dropped for x = 0: starting worse
than nothing would only cost iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CGResult:
    x: Tensor
    q: float  # the model value q(x)
    iterations: int  # matrix-vector products inside the loop
    matvecs: int  # all matrix-vector products, the warm start's residual included
    reason: str  # "max_iter" | "tolerance" | "progress" | "negative_curvature"
    # (iteration, iterate, q) at iterations ceil(5 * 1.3^j) and the last, if keep_iterates
    iterates: list[tuple[int, Tensor, float]] = field(default_factory=list)

    @property
    def negative_curvature(self) -> bool:
        return self.reason == "negative_curvature"


def martens_schedule(max_iter: int) -> set[int]:
    """Iterations whose iterates Martens' CG backtracking keeps: ceil(5 * 1.3^j)."""
    kept, j = set(), 0
    while (i := math.ceil(5 * 1.3**j)) <= max_iter:
        kept.add(i)
        j += 1
    return kept


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iter: int,
    tol: float = 0.0,
    progress_eps: float | None = None,
    precondition: Callable[[Tensor], Tensor] | None = None,
    keep_iterates: bool = False,
) -> CGResult:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    matvecs = 0
    x = torch.zeros_like(b)
    r = b.clone()
    if x0 is not None and bool(x0.any()):
        r0 = b - matvec(x0)
        matvecs += 1
        if -0.5 * torch.dot(x0, r0 + b).item() < 0:
            x, r = x0.clone(), r0
    z = precondition(r) if precondition else r
    p = z.clone()
    rz = torch.dot(r, z)
    b_norm = b.norm().item()
    tol = max(tol, torch.finfo(b.dtype).eps)
    q = -0.5 * torch.dot(x, r + b).item()
    history = [q]  # q_0, q_1, ... for the progress rule
    kept = martens_schedule(max_iter) if keep_iterates else set()
    iterates: list[tuple[int, Tensor, float]] = []
    reason = "max_iter"
    i = 0
    if b_norm == 0.0:
        return CGResult(x, q, 0, matvecs, "tolerance", iterates)
    for i in range(1, max_iter + 1):
        ap = matvec(p)
        matvecs += 1
        curvature = torch.dot(p, ap)
        if curvature.item() <= 0:
            reason = "negative_curvature"
            if i == 1 and not bool(x.any()):
                x = p  # a descent direction for q; the caller's line search scales it
                q = -0.5 * torch.dot(x, 2 * b - ap).item()
            break
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * ap
        q = -0.5 * torch.dot(x, r + b).item()
        history.append(q)
        if i in kept:
            iterates.append((i, x, q))
        if r.norm().item() <= tol * b_norm:
            reason = "tolerance"
            break
        if progress_eps is not None:
            k = max(10, math.ceil(0.1 * i))
            if i > k and q < 0 and (q - history[i - k]) / q < k * progress_eps:
                reason = "progress"
                break
        z = precondition(r) if precondition else r
        rz_next = torch.dot(r, z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    if keep_iterates and (not iterates or iterates[-1][1] is not x):
        iterates.append((i, x, q))
    return CGResult(x, q, i, matvecs, reason, iterates)
