"""Hessian-free methods: truncated CG on (B + lambda I) d = -g with curvature products only.

``NewtonCG`` takes B = H (Hessian-vector products) and exits CG on negative curvature
(Steihaug). ``HessianFreeGN`` is Martens (2010): B = G, the Gauss-Newton matrix (GGN-vector
products; positive semi-definite), CG warm-started at ``warm_start`` x the previous solution,
stopped by Martens' relative-progress rule, backtracked over the iterates CG stored, and
optionally preconditioned by (mean_i grad l_i^2 + lambda)^0.75 (the empirical Fisher diagonal,
which is on the GGN's scale, plus damping). Both share the step below:

1. loss and gradient g on the mini-batch, with the curvature operator of the same forward pass
   (or, with ``curvature_fraction`` < 1, of the batch's first examples);
2. CG (``cg.conjugate_gradient``, the one solver) for d;
3. if ``backtrack``: from the last stored iterate, step back while
   L(theta + d_prev) <= L(theta + d);
4. if ``adaptive``: rho = (L(theta + d) - L) / q(d) with CG's damped model q, and lambda follows
   Martens' Levenberg-Marquardt rule;
5. Armijo backtracking from alpha = lr (``linesearch.armijo``); if no trial passes, alpha = 0
   and the step is rejected (parameters unchanged).

A CG solution that is not a descent direction (g^T d >= 0, possible with an indefinite H and
little damping) is replaced by -g for that step, and the record says so.
"""

from __future__ import annotations

import math

import torch

from .base import ObjectiveOptimizer
from .cg import conjugate_gradient
from .damping import levenberg_marquardt, reduction_ratio
from .flat import assign, flatten, unflatten
from .linesearch import armijo
from .objective import Objective

PRECONDITIONER_EXPONENT = 0.75  # Martens (2010), section 4.7


def check_hyperparameters(
    *, damping, adaptive, cg_max_iter, cg_tol, progress_eps, warm_start, curvature_fraction
) -> None:
    if not damping >= 0 or (adaptive and damping == 0):
        raise ValueError(f"damping must be >= 0 (> 0 when adaptive), got {damping}")
    if not (isinstance(cg_max_iter, int) and cg_max_iter >= 1):
        raise ValueError(f"cg_max_iter must be a positive integer, got {cg_max_iter!r}")
    if not (0 <= cg_tol < 1 and 0 <= warm_start < 1 and 0 < curvature_fraction <= 1):
        raise ValueError("need 0 <= cg_tol < 1, 0 <= warm_start < 1, 0 < curvature_fraction <= 1")
    if progress_eps is not None and not progress_eps > 0:
        raise ValueError(f"progress_eps must be > 0 or None, got {progress_eps}")


class HessianFree(ObjectiveOptimizer):
    def __init__(
        self,
        params,
        *,
        curvature: str,
        lr: float,
        damping: float,
        adaptive: bool,
        cg_max_iter: int,
        cg_tol: float,
        progress_eps: float | None,
        warm_start: float,
        backtrack: bool,
        precondition: bool,
        curvature_fraction: float,
    ):
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        check_hyperparameters(
            damping=damping,
            adaptive=adaptive,
            cg_max_iter=cg_max_iter,
            cg_tol=cg_tol,
            progress_eps=progress_eps,
            warm_start=warm_start,
            curvature_fraction=curvature_fraction,
        )
        super().__init__(params, dict(lr=lr))
        self.curvature = curvature
        self.adaptive, self.backtrack, self.precondition = adaptive, backtrack, precondition
        self.cg_max_iter, self.cg_tol, self.progress_eps = cg_max_iter, cg_tol, progress_eps
        self.warm_start, self.curvature_fraction = warm_start, curvature_fraction
        self.vector_state.update(damping=float(damping), rejected_steps=0)

    def _operator(self, objective: Objective):
        if self.curvature == "ggn":
            return objective.ggn_operator()
        return objective.hessian_operator()

    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        state, params = self.vector_state, self.flat_params
        damping = state["damping"]
        if self.curvature_fraction < 1:
            n = max(1, math.ceil(self.curvature_fraction * len(objective.inputs)))
            loss_t, grads = objective.loss_and_grad()
            operator = self._operator(objective.subset(n))
        else:  # the gradient comes with the operator, from the same forward pass
            operator = self._operator(objective)
            loss_t, grads = operator.loss, operator.grad
        loss, g = loss_t.item(), flatten(grads)
        product = operator.apply

        def matvec(v):
            return flatten(product(unflatten(v, params))) + damping * v

        precondition = None
        if self.precondition:
            diagonal = (flatten(objective.gradient_second_moment()) + damping).pow(
                PRECONDITIONER_EXPONENT
            )

            def precondition(r):
                return r / diagonal

        previous = state.get("direction")
        x0 = self.warm_start * previous if self.warm_start and previous is not None else None
        cg = conjugate_gradient(
            matvec,
            -g,
            x0,
            max_iter=self.cg_max_iter,
            tol=self.cg_tol,
            progress_eps=self.progress_eps,
            precondition=precondition,
            keep_iterates=self.backtrack,
        )
        if self.warm_start:
            state["direction"] = cg.x  # Martens warm-starts from CG's last iterate

        theta = flatten(params)

        def loss_at(d):
            assign(params, theta + d)
            return objective.loss().item()

        chosen, direction, q = cg.iterations, cg.x, cg.q
        full_step_loss = None
        if self.backtrack:
            stored = cg.iterates
            j = len(stored) - 1
            chosen, direction, q = stored[j]
            full_step_loss = loss_at(direction)
            while j > 0 and (earlier := loss_at(stored[j - 1][1])) <= full_step_loss:
                j -= 1
                (chosen, direction, q), full_step_loss = stored[j], earlier
        elif self.adaptive:
            full_step_loss = loss_at(direction)

        record = {"loss": loss_t, "damping": damping, "cg_iters": cg.iterations}
        record["negative_curvature"] = int(cg.negative_curvature)
        record["cg_chosen_iter"] = chosen
        slope = torch.dot(g, direction).item()
        record["descent_fallback"] = int(not slope < 0)
        if not slope < 0:
            direction, slope, full_step_loss = -g, -torch.dot(g, g).item(), None
        elif self.adaptive:
            rho = reduction_ratio(loss, full_step_loss, q)
            state["damping"] = levenberg_marquardt(damping, rho)
            record["rho"] = rho

        search = armijo(
            lambda: objective.loss().item(),
            params,
            theta,
            direction,
            loss,
            slope,
            self.lr,
            known=(1.0, full_step_loss) if full_step_loss is not None else None,
        )
        state["rejected_steps"] += search.step_size == 0
        record.update(
            step_size=search.step_size,
            line_search_trials=search.trials,
            rejected_steps=state["rejected_steps"],
        )
        return record


class NewtonCG(HessianFree):
    """Hessian-free (truncated) Newton: CG on (H + lambda I) d = -g with Hessian-vector
    products, stopped at relative residual ``cg_tol`` or on negative curvature; Armijo line
    search from ``lr``; Levenberg-Marquardt damping when ``adaptive``."""

    def __init__(
        self,
        params,
        lr: float = 1.0,
        damping: float = 1.0,
        adaptive: bool = True,
        cg_max_iter: int = 100,
        cg_tol: float = 1e-2,
    ):
        super().__init__(
            params,
            curvature="hessian",
            lr=lr,
            damping=damping,
            adaptive=adaptive,
            cg_max_iter=cg_max_iter,
            cg_tol=cg_tol,
            progress_eps=None,
            warm_start=0.0,
            backtrack=False,
            precondition=False,
            curvature_fraction=1.0,
        )


class HessianFreeGN(HessianFree):
    """Martens' (2010) Hessian-free optimisation with the Gauss-Newton matrix (module docstring).
    Defaults are Martens': lr 1, lambda0 1 with LM, CG up to 250 iterations, progress eps 5e-4,
    warm start 0.95, backtracking on."""

    def __init__(
        self,
        params,
        lr: float = 1.0,
        damping: float = 1.0,
        adaptive: bool = True,
        cg_max_iter: int = 250,
        progress_eps: float = 5e-4,
        warm_start: float = 0.95,
        backtrack: bool = True,
        precondition: bool = False,
        curvature_fraction: float = 1.0,
    ):
        super().__init__(
            params,
            curvature="ggn",
            lr=lr,
            damping=damping,
            adaptive=adaptive,
            cg_max_iter=cg_max_iter,
            cg_tol=0.0,
            progress_eps=progress_eps,
            warm_start=warm_start,
            backtrack=backtrack,
            precondition=precondition,
            curvature_fraction=curvature_fraction,
        )
