"""NysNewton-CG (NNCG; Rathore, Lei, Frangella, Lu and Udell 2024, "Challenges in training
PINNs: a loss landscape perspective"): damped Newton-CG preconditioned by a
randomized Nyström approximation of the Hessian, with an Armijo line search.

Each step, on the step's batch:

1. loss, gradient g and the Hessian-vector product H v from one forward pass
   (``Objective.hessian_operator``);
2. every ``update_freq`` steps, starting with the first, a rank-``rank`` Nyström approximation
   U diag(Lambda) U^T of H from ``rank`` products with a fresh Gaussian test matrix
   (``nystrom.nystrom``; rank is capped at the number of parameters). In between, the last one
   is reused: H drifts slowly enough that a stale preconditioner still clusters the spectrum,
   and a refresh costs ``rank`` Hessian-vector products;
3. preconditioned CG (``cg.conjugate_gradient``, the one solver) on (H + mu I) x = -g with
   P^-1 = (lambda_s + mu) U (Lambda + mu)^-1 U^T + (I - U U^T), warm-started at the previous
   step's solution (dropped by the solver when worse than zero, as it often is after an
   accepted full step), up to ``cg_max_iter`` products or relative residual ``cg_tol`` (floored at
   the dtype's epsilon by the solver). x is the paper's -d, d = (H + mu I)^-1 g;
4. Armijo backtracking (``linesearch.armijo``) from t = lr: accept theta + t x when
   L(theta + t x) <= L + alpha t g^T x, else t *= beta, at most ``max_trials`` forward passes;
   if none passes the step is rejected and the parameters are restored bit for bit.

Policies where the paper is silent:
- negative curvature (H + mu I indefinite along a CG direction, possible with small mu away from
  a minimum): CG stops and returns its current iterate, or on its first iteration the
  preconditioned steepest-descent direction; that is taken to the line search like any other
  solution, and the record's ``negative_curvature`` says so;
- a solution that is not a descent direction (g^T x >= 0, e.g. a warm start kept by CG then cut
  short by negative curvature, or a non-finite gradient): no step is taken, ``not_descent`` is
  set, and the next solve starts cold;
- an indefinite H: the Nyström approximation assumes a PSD one, so U diag(Lambda) U^T is then
  no faithful view of H, but Lambda >= 0 keeps P^-1 positive definite, a valid preconditioner
  that only clusters the spectrum less. When the sketch's core Phi^T H Phi is itself
  indefinite, ``nystrom.nystrom`` falls back to a larger shift (``nystrom_fallback`` in the
  record); with rank = P, Lambda is then the positive part of H's spectrum.

Memory: U is rank x P numbers (60 P at the paper's rank: sixty copies of the model), Lambda
rank numbers, the warm start P; a refresh holds three more P x rank matrices for a moment.
"""

from __future__ import annotations

import torch

from .base import RandomizedOptimizer
from .cg import conjugate_gradient
from .flat import flatten, unflatten
from .linesearch import armijo
from .nystrom import NystromApprox, nystrom
from .objective import Objective


def _positive_int(name: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_hyperparameters(
    rank, update_freq, damping, cg_max_iter, cg_tol, alpha, beta, max_trials
) -> None:
    for name, value in [
        ("rank", rank),
        ("update_freq", update_freq),
        ("cg_max_iter", cg_max_iter),
        ("max_trials", max_trials),
    ]:
        _positive_int(name, value)
    # mu > 0 keeps the preconditioner defined (Lambda + mu > 0 with Lambda = 0)
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    if not 0 <= cg_tol < 1:
        raise ValueError(f"cg_tol must be in [0, 1), got {cg_tol}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")


class NNCG(RandomizedOptimizer):
    """NysNewton-CG (module docstring). Defaults are the paper's: lr (eta) 1, rank (s) 60,
    update_freq (F) 20, CG tolerance 1e-16 and at most 1000 iterations (M), Armijo alpha 0.1 and
    beta 0.5; the paper tunes damping (mu) over 1e-5 ... 1e-1 and finds 1e-2 or 1e-1 best."""

    def __init__(
        self,
        params,
        lr: float = 1.0,
        rank: int = 60,
        update_freq: int = 20,
        damping: float = 1e-2,
        cg_max_iter: int = 1000,
        cg_tol: float = 1e-16,
        alpha: float = 0.1,
        beta: float = 0.5,
        max_trials: int = 20,
        seed: int | None = None,
    ):
        check_hyperparameters(
            rank, update_freq, damping, cg_max_iter, cg_tol, alpha, beta, max_trials
        )
        super().__init__(params, dict(lr=lr), seed)
        self.rank, self.update_freq, self.damping = rank, update_freq, float(damping)
        self.cg_max_iter, self.cg_tol = cg_max_iter, cg_tol
        self.alpha, self.beta, self.max_trials = alpha, beta, max_trials
        self.vector_state.update(iteration=0, rejected_steps=0)

    def _approximation(self, hvp, g: torch.Tensor) -> tuple[NystromApprox, bool]:
        """The Nyström approximation for this step, and whether it was refreshed now."""
        state = self.vector_state
        if state["iteration"] % self.update_freq != 0 and "nystrom_basis" in state:
            return NystromApprox(state["nystrom_basis"], state["nystrom_eigenvalues"]), False
        approx = nystrom(hvp, g.numel(), self.rank, self.generator, g.dtype, g.device)
        state["nystrom_basis"], state["nystrom_eigenvalues"] = approx.basis, approx.eigenvalues
        return approx, True

    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        state, params, mu = self.vector_state, self.flat_params, self.damping
        operator = objective.hessian_operator()
        loss, g = operator.loss.item(), flatten(operator.grad)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return flatten(operator.apply(unflatten(v, params)))

        approx, refreshed = self._approximation(hvp, g)
        state["iteration"] += 1
        cg = conjugate_gradient(
            lambda v: hvp(v) + mu * v,
            -g,
            state.get("direction"),
            max_iter=self.cg_max_iter,
            tol=self.cg_tol,
            precondition=approx.inverse(mu),
        )
        direction = cg.x
        slope = torch.dot(g, direction).item()
        descent = slope < 0  # False for NaN too
        record = {
            "loss": operator.loss,
            "cg_iterations": cg.iterations,
            "cg_matvecs": cg.matvecs,
            "negative_curvature": int(cg.negative_curvature),
            "not_descent": int(not descent),
            "nystrom_refreshed": int(refreshed),
            "nystrom_fallback": int(refreshed and approx.fallback),
            "nystrom_lambda_max": approx.eigenvalues[0].item(),
            "nystrom_lambda_min": approx.eigenvalues[-1].item(),
        }
        if descent:
            state["direction"] = direction
            search = armijo(
                lambda: objective.loss().item(),
                params,
                flatten(params).detach(),
                direction,
                loss,
                slope,
                self.lr,
                c=self.alpha,
                shrink=self.beta,
                max_trials=self.max_trials,
            )
            step_size, trials = search.step_size, search.trials
        else:
            # a poor warm start would only cost the next solve iterations
            state.pop("direction", None)
            step_size, trials = 0.0, 0
        state["rejected_steps"] += step_size == 0
        record.update(
            step_size=step_size, line_search_trials=trials, rejected_steps=state["rejected_steps"]
        )
        return record
