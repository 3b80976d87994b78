"""First-order and quasi-Newton baselines: torch's own SGD, AdamW and L-BFGS, unchanged.

They consume the :class:`~hessbench.optimizers.torch.objective.Objective` as a plain closure, so
every function evaluation they make is counted, including each of L-BFGS's up to ``max_iter``
inner iterations and line-search trials within one ``.step()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SGDConfig:
    """SGD with heavy-ball (or Nesterov) momentum: v = mu v + g; theta -= lr v."""

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def build(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW (Loshchilov & Hutter 2019) with torch's defaults but for the learning rate."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01

    def build(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            params,
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )


@dataclass(frozen=True)
class LBFGSConfig:
    """torch's L-BFGS with a strong-Wolfe line search; one ``step`` runs up to ``max_iter``
    iterations on the same mini-batch (spec section 11: lr 1, history 100)."""

    lr: float = 1.0
    max_iter: int = 20
    history_size: int = 100
    line_search_fn: str | None = "strong_wolfe"
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9

    def build(self, params) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(
            params,
            lr=self.lr,
            max_iter=self.max_iter,
            history_size=self.history_size,
            line_search_fn=self.line_search_fn,
            tolerance_grad=self.tolerance_grad,
            tolerance_change=self.tolerance_change,
        )
