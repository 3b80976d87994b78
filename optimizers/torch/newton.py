"""Dense Newton, damped Newton and Levenberg-Marquardt: theta+ = theta - lr (H + lambda I)^-1 g.

H is the mini-batch's dense Hessian from the objective (d Hessian-vector products), formed and
factored in the parameters' dtype.

Policy for an indefinite or singular H + lambda I: Cholesky is tried first; when it fails the
step uses the pseudo-inverse from ``eigh`` (eigenvalues below d * eps * max|eigenvalue| in
magnitude are dropped), which is what seed 003's reference does (``pinv(H + lambda I) @ g``).
That step goes to the stationary point of the quadratic model, uphill along negative-curvature
directions and huge along tiny eigenvalues; the Hessian is deliberately not modified (no
absolute values, no shift), so undamped Newton on a ReLU network fails the way the study's did.
The record says how often it happened (``indefinite``) and how many eigenvalues were negative.

Memory: the Hessian, its factor and the work of forming it need about ``4 d^2`` numbers; past
``memory_fraction`` of the device's available memory the optimizer raises ``Infeasible`` when
built, before any step.
"""

from __future__ import annotations

import psutil
import torch
from torch import Tensor

from .base import ObjectiveOptimizer
from .damping import levenberg_marquardt, reduction_ratio
from .flat import assign, flatten
from .objective import Infeasible, Objective

HESSIAN_COPIES = 4


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available


def newton_direction(matrix: Tensor, g: Tensor) -> tuple[Tensor, int]:
    """-matrix^-1 g (Cholesky) or -pinv(matrix) g (eigh), and the number of negative
    eigenvalues (-1 when Cholesky succeeded and they were not computed)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return -torch.cholesky_solve(g.unsqueeze(1), factor).squeeze(1), -1
    del factor
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    cutoff = eigenvalues.abs().max() * matrix.shape[0] * torch.finfo(matrix.dtype).eps
    kept = eigenvalues.abs() > cutoff
    inverse = torch.where(kept, 1 / eigenvalues, torch.zeros_like(eigenvalues))
    direction = -(vectors @ (inverse * (vectors.T @ g)))
    return direction, int((eigenvalues < -cutoff).sum())


def check_damping(damping, adaptive: bool) -> None:
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if adaptive and damping == 0:
        raise ValueError("adaptive damping needs damping > 0 to start from (it scales it)")


class DampedNewton(ObjectiveOptimizer):
    """Newton's method with damping ``lambda`` (0: plain Newton).

    ``adaptive=True`` is Levenberg-Marquardt: after each step the loss is evaluated again (one
    counted forward) and rho = actual / predicted change, predicted by the damped model
    q(d) = g^T d + d^T (H + lambda I) d / 2 at d = -lr (H + lambda I)^-1 g. A step that does not
    lower the loss is rejected (parameters restored exactly); lambda follows Martens' rule
    (``damping.levenberg_marquardt``).
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        damping: float = 1.0,
        adaptive: bool = True,
        memory_fraction: float = 0.5,
    ):
        check_damping(damping, adaptive)
        super().__init__(params, dict(lr=lr))
        self.adaptive = adaptive
        first = self.flat_params[0]
        d = sum(p.numel() for p in self.flat_params)
        need = HESSIAN_COPIES * d * d * first.element_size()
        self.max_bytes = int(memory_fraction * available_memory(first.device))
        if need > self.max_bytes:
            raise Infeasible(
                f"dense Newton on {d:,} parameters needs ~{need / 2**30:.1f} GiB "
                f"({HESSIAN_COPIES} d^2 numbers) > {self.max_bytes / 2**30:.1f} GiB "
                f"({memory_fraction:.0%} of available {first.device.type} memory)"
            )
        self.vector_state.update(damping=float(damping), rejected_steps=0, indefinite_steps=0)

    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        state, params = self.vector_state, self.flat_params
        lr, damping = self.lr, state["damping"]
        loss, grads = objective.loss_and_grad()
        g = flatten(grads)
        matrix = objective.hessian(self.max_bytes)
        matrix.diagonal().add_(damping)
        direction, negative = newton_direction(matrix, g)
        if negative >= 0:
            state["indefinite_steps"] += 1
        delta = lr * direction
        theta = flatten(params)
        assign(params, theta + delta)
        record = {
            "loss": loss,
            "damping": damping,
            "step_size": lr,
            "negative_eigenvalues": max(negative, 0),
            "indefinite_steps": state["indefinite_steps"],
        }
        if self.adaptive:
            predicted = (torch.dot(g, delta) + 0.5 * torch.dot(delta, matrix @ delta)).item()
            after = objective.loss().item()
            rho = reduction_ratio(loss.item(), after, predicted)
            if not after < loss.item():
                assign(params, theta)
                state["rejected_steps"] += 1
            state["damping"] = levenberg_marquardt(damping, rho)
            record["rho"] = rho
        record["rejected_steps"] = state["rejected_steps"]
        return record


class Newton(DampedNewton):
    """Undamped Newton (lambda = 0), seed 003's first experiment; see the module's policy for an
    indefinite Hessian."""

    def __init__(self, params, lr: float = 1.0, memory_fraction: float = 0.5):
        super().__init__(
            params, lr=lr, damping=0.0, adaptive=False, memory_fraction=memory_fraction
        )
