"""Curvature diagnostics along a run: the Hessian's top eigenvalues, trace and spectral density
on a fixed batch, and the same for the optimizer's preconditioned Hessian P^-1/2 H P^-1/2.

Every product goes through the objective's ``hessian_operator`` on a copy of the model (in
float64 up to FLOAT64_MAX_PARAMS parameters), with counters of its own: a diagnostic point
never shows in the run's oracle counts or step times. Its start vectors are drawn from a
generator re-seeded at every point, so all points and all optimizers of one seed probe the
same directions and their curves differ by the Hessian alone.

Preconditioners read from optimizer state (none before the optimizer's first step):
Adam/AdamW/ZO-Adam sqrt(v_hat) + eps, AdaHessian sqrt(v_hat)^k + eps, Sophia max(rho h, eps),
HiZOO and HiZOO-L their H, and L-BFGS its inverse-Hessian approximation H_k (P^-1 = H_k),
whose square root is exact on span(s_i, y_i) plus gamma I off it; NysNewton-CG its Nyström
preconditioner P (P^-1/2 as NNCG's own CG sees it, damping included). A chained schedule is
read through the phase that took the last step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessbench.optimizers.torch.chain import Chain
from hessbench.optimizers.torch.diagonal import AdaHessian, Sophia
from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.hizoo import HiZOO
from hessbench.optimizers.torch.nncg import NNCG
from hessbench.optimizers.torch.nystrom import NystromApprox
from hessbench.optimizers.torch.objective import Counters, Objective
from hessbench.optimizers.torch.zeroth_order import ZOAdam

from .spectrum import slq, top_eigenvalues

FLOAT64_MAX_PARAMS = 5_000_000


@dataclass(frozen=True)
class Settings:
    points: int  # intervals along the run: a point every ceil(steps / points) steps, step 0
    # and the last step included
    batch_size: int = 256  # the first examples of the training set
    lanczos_steps: int = 30
    vectors: int = 2  # SLQ start vectors (the trace's standard error needs two)
    top_k: int = 3


def _diagonal_preconditioner(optimizer) -> list[Tensor] | None:
    state = [optimizer.state.get(p, {}) for p in optimizer.param_groups[0]["params"]]
    group = optimizer.param_groups[0]
    if isinstance(optimizer, HiZOO):
        return [optimizer.dense_hessian(p) for p in optimizer.param_groups[0]["params"]]
    if isinstance(optimizer, Sophia):
        if "hessian" not in state[0]:
            return None
        return [(s["hessian"] * group["rho"]).clamp(min=group["eps"]) for s in state]
    if isinstance(optimizer, AdaHessian):
        if "exp_hessian_diag_sq" not in state[0]:
            return None
        t = optimizer.vector_state["step"]
        b2 = group["betas"][1]
        return [
            (s["exp_hessian_diag_sq"] / (1 - b2**t)).sqrt() ** optimizer.hessian_power
            + group["eps"]
            for s in state
        ]
    if isinstance(optimizer, ZOAdam | torch.optim.Adam | torch.optim.AdamW):
        if "exp_avg_sq" not in state[0]:
            return None
        t = float(state[0]["step"]) if "step" in state[0] else optimizer.vector_state["step"]
        b2 = group["betas"][1]
        eps = group["adam_eps"] if isinstance(optimizer, ZOAdam) else group["eps"]
        return [(s["exp_avg_sq"] / (1 - b2**t)).sqrt() + eps for s in state]
    return None


def _lbfgs_inverse_sqrt(optimizer, dtype) -> Callable[[Tensor], Tensor] | None:
    """v -> H_k^1/2 v for torch's L-BFGS. H_k = gamma I off span(S, Y) (the two-loop
    recursion leaves vectors orthogonal to every s_i and y_i scaled by gamma), so with Q an
    orthonormal basis of the span and C = Q^T H_k Q: H_k = gamma (I - Q Q^T) + Q C Q^T."""
    state = optimizer.state.get(optimizer._params[0], {})
    steps, grads = state.get("old_stps") or [], state.get("old_dirs") or []
    if not steps:
        return None
    s = [x.to(dtype) for x in steps]
    y = [x.to(dtype) for x in grads]
    rho = [1.0 / (yi @ si) for si, yi in zip(s, y, strict=True)]
    gamma = float(state["H_diag"])

    def two_loop(v: Tensor) -> Tensor:
        q, alphas = v.clone(), []
        for si, yi, ri in zip(reversed(s), reversed(y), reversed(rho), strict=True):
            alphas.append(ri * (si @ q))
            q -= alphas[-1] * yi
        r = q * gamma
        for si, yi, ri, ai in zip(s, y, rho, reversed(alphas), strict=True):
            r += si * (ai - ri * (yi @ r))
        return r

    basis, _ = torch.linalg.qr(torch.stack(s + y, dim=1))
    small = basis.T @ torch.stack([two_loop(q) for q in basis.T], dim=1)
    values, vectors = torch.linalg.eigh((small + small.T) / 2)
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    g = math.sqrt(gamma)

    def apply(v: Tensor) -> Tensor:
        coords = basis.T @ v
        return g * (v - basis @ coords) + basis @ (root @ coords)

    return apply


def inverse_sqrt_preconditioner(optimizer, dtype) -> Callable[[Tensor], Tensor] | None:
    """v -> P^-1/2 v on flat vectors, or None when the optimizer has no preconditioner yet."""
    if isinstance(optimizer, Chain):
        optimizer = optimizer.latest
    if isinstance(optimizer, torch.optim.LBFGS):
        return _lbfgs_inverse_sqrt(optimizer, dtype)
    if isinstance(optimizer, NNCG):
        state = optimizer.vector_state
        if "nystrom_basis" not in state:
            return None
        approx = NystromApprox(
            state["nystrom_basis"].to(dtype), state["nystrom_eigenvalues"].to(dtype)
        )
        return approx.inverse_sqrt(optimizer.damping)
    diagonal = _diagonal_preconditioner(optimizer)
    if diagonal is None:
        return None
    scale = flatten([d.detach().to(dtype) for d in diagonal]).rsqrt()
    return lambda v: v * scale


class Diagnostics:
    """The diagnostic points of one run."""

    def __init__(self, settings: Settings, problem, seed: int, last_step: int, switches=()):
        if problem.train_examples is None:
            raise ValueError("curvature diagnostics need the task's training examples")
        x, y = problem.train_examples
        self.settings, self.problem, self.seed = settings, problem, seed
        # a full-batch task's curvature is its whole objective's; a mini-batch task's, its
        # first examples'
        n = len(x) if problem.batch_size >= len(x) else settings.batch_size
        self.batch = (x[:n], y[:n])
        self.last_step = last_step
        self.every = max(1, math.ceil(last_step / settings.points))
        self.switches = set(switches)  # a chained schedule's phase ends: points there too
        self.rows: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step or step in self.switches

    def measure(self, model, optimizer, step: int) -> None:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        dtype = torch.float64 if n <= FLOAT64_MAX_PARAMS else next(model.parameters()).dtype
        twin = copy.deepcopy(model).to(dtype)
        params = [p for p in twin.parameters() if p.requires_grad]
        batch = (self.batch[0].to(dtype) if self.batch[0].is_floating_point() else self.batch[0],
                 self.batch[1])  # fmt: skip
        counters = Counters()
        objective = Objective(twin, self.problem.loss_fn, batch, params, counters,
                              self.problem.likelihood)  # fmt: skip
        operator = objective.hessian_operator()
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]

        def hessian(v: Tensor) -> Tensor:
            pieces = [c.view(s) for c, s in zip(v.split(sizes), shapes, strict=True)]
            return flatten(operator.apply(pieces))

        kinds = {"hessian": hessian}
        root = inverse_sqrt_preconditioner(optimizer, dtype)
        if root is not None:
            kinds["preconditioned"] = lambda v: root(hessian(root(v)))
        for kind, matvec in kinds.items():
            self.rows.append(self._point(kind, matvec, n, dtype, step, counters))

    def _point(self, kind, matvec, n, dtype, step, counters) -> dict[str, Any]:
        settings = self.settings
        started, before = time.perf_counter(), counters.hvp
        generator = torch.Generator().manual_seed(self.seed)
        top, residuals, _ = top_eigenvalues(
            matvec, n, settings.top_k, generator, dtype=dtype, max_steps=settings.lanczos_steps
        )
        density = slq(matvec, n, settings.lanczos_steps, settings.vectors, generator, dtype=dtype)
        trace, trace_se = density.trace()
        nodes = torch.cat(density.nodes)
        weights = torch.cat([w / len(density.weights) for w in density.weights])
        return {
            "step": step,
            "kind": kind,
            "top_eigenvalues": top.tolist(),
            "top_residuals": residuals.tolist(),
            "lambda_min": nodes.min().item(),
            "trace": trace,
            "trace_se": trace_se,
            "nodes": nodes.tolist(),
            "weights": weights.tolist(),
            "hvps": counters.hvp - before,
            "seconds": time.perf_counter() - started,
            "dtype": str(dtype).removeprefix("torch."),
            "batch_size": len(self.batch[0]),
        }
