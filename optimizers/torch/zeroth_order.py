"""SPSA zeroth-order methods: MeZO (Malladi et al. 2023; princeton-nlp/MeZO) and ZO-Adam
(ZO-Bench, Zhang et al. 2024); the Hessian-informed HiZOO builds on the same base (hizoo.py).

All of them estimate the gradient by SPSA from losses alone: with z ~ N(0, I),
projected_grad = (L(theta + eps z) - L(theta - eps z)) / (2 eps) and g_hat = projected_grad z.
The seed trick keeps memory at inference level: z is never stored. Each step draws a seed from
the optimizer's own generator, and every pass over the parameters (perturb, perturb back,
restore, update) regenerates z from that seed, in place, piece by piece. A piece is a run of
whole rows of one parameter's (rows, cols) view holding at most max(16384, P / 256) numbers,
so the transient z is a small fraction of the parameters however large one matrix is (the
reference draws a whole tensor at once: for a model whose one matrix holds most parameters,
that is most of a second copy). The floor bounds the per-piece dispatch cost on small models
(at 4096, MeZO's step on 784-128-10 took 1.25x as long). Forward passes run in eval mode
(no dropout) and losses are upcast to float64 before they are subtracted. Weight decay skips
tensors with fewer than two dimensions (biases and normalisation weights; the reference
matches names instead).

Parameters must be contiguous (they are viewed, never copied). Low-precision parameters drift
under perturb and restore (MeZO issue #42); in float32 the drift stays within a few ulp.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .base import RandomizedOptimizer, check_betas
from .objective import Objective

MIN_PIECE = 16384
PIECES = 256


class _ZerothOrder(RandomizedOptimizer):
    def __init__(self, params, defaults, seed: int | None, samples: int = 1):
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if not defaults["eps"] > 0:
            raise ValueError(f"eps must be > 0, got {defaults['eps']}")
        if not defaults["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {defaults['weight_decay']}")
        super().__init__(params, defaults, seed)
        if any(not p.is_contiguous() for p in self.flat_params):
            raise ValueError(f"{type(self).__name__} needs contiguous parameters")
        self.views = [p.view(p.shape[0] if p.dim() >= 2 else 1, -1) for p in self.flat_params]
        self.numel = sum(p.numel() for p in self.flat_params)
        limit = max(MIN_PIECE, math.ceil(self.numel / PIECES))
        self.pieces: list[tuple[int, int, int]] = []  # (parameter, first row, end row)
        for i, view in enumerate(self.views):
            rows, cols = view.shape
            per = max(1, limit // max(cols, 1))
            self.pieces += [(i, r, min(rows, r + per)) for r in range(0, rows, per)]
        self.decayed = [p for p in self.flat_params if p.dim() >= 2]
        self.samples = samples
        self.vector_state.update(step=0)

    def _new_seed(self) -> int:
        return int(torch.randint(0, 2**62, (), generator=self.generator,
                                 device=self.generator.device).item())  # fmt: skip

    def _draws(self, seed: int) -> Iterator[tuple[int, int, int, Tensor]]:
        """(parameter, first row, end row, z) for every piece, z regenerated from ``seed``."""
        generator = torch.Generator(device=self.generator.device).manual_seed(seed)
        for i, r0, r1 in self.pieces:
            piece = self.views[i][r0:r1]
            yield (
                i,
                r0,
                r1,
                torch.randn(
                    piece.shape, generator=generator, dtype=piece.dtype, device=piece.device
                ),
            )

    def _perturb(self, seed: int, scale: float) -> None:
        for i, r0, r1, z in self._draws(seed):
            self.views[i][r0:r1].add_(z, alpha=scale)

    @contextmanager
    def _inference(self, objective: Objective):
        model = objective.model
        training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(training)

    def _probe(self, objective: Objective, seed: int) -> tuple[float, float]:
        """L(theta + eps z) and L(theta - eps z), z from ``seed`` (as ``_perturb`` scales it);
        theta restored. Two forward passes, run inside ``_inference``."""
        eps = self.param_groups[0]["eps"]
        self._perturb(seed, eps)
        plus = objective.loss().item()
        self._perturb(seed, -2 * eps)
        minus = objective.loss().item()
        self._perturb(seed, eps)
        return plus, minus

    def _spsa(self, objective: Objective) -> tuple[float, list[tuple[int, float]]]:
        """n-SPSA at the current parameters: the mean of (L+ + L-)/2 (the loss up to O(eps^2))
        and (seed, projected_grad) per sample. 2n forward passes; parameters restored."""
        eps = self.param_groups[0]["eps"]
        estimates, total = [], 0.0
        with self._inference(objective):
            for _ in range(self.samples):
                seed = self._new_seed()
                plus, minus = self._probe(objective, seed)
                estimates.append((seed, (plus - minus) / (2 * eps)))
                total += (plus + minus) / 2
        return total / self.samples, estimates

    def _gradient(self, estimates) -> Iterator[tuple[int, int, int, Tensor]]:
        """g_hat piece by piece: the mean over samples of projected_grad z."""
        draws = [self._draws(seed) for seed, _ in estimates]
        for pieces in zip(*draws, strict=True):
            i, r0, r1, z = pieces[0]
            g = z.mul_(estimates[0][1] / len(estimates))
            for (_, _, _, z), (_, pg) in zip(pieces[1:], estimates[1:], strict=True):
                g.add_(z, alpha=pg / len(estimates))
            yield i, r0, r1, g

    @torch.no_grad()
    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        loss, estimates = self._spsa(self.objective(closure))
        self.vector_state["step"] += 1
        self._descend(estimates)
        return {
            "loss": loss,
            "projected_grad": sum(pg for _, pg in estimates) / len(estimates),
            "perturbation_scale": self.param_groups[0]["eps"],
        }


class MeZO(_ZerothOrder):
    """MeZO, ZO-SGD with the seed trick: theta -= lr (g_hat + wd theta), g_hat the n-SPSA
    estimate over ``samples`` seeds, all taken at the same theta. Cost 2n forward passes and
    4n regenerations of z (three passes per sample to perturb and restore, one to update).
    Defaults are the reference's RoBERTa-large settings (lr 1e-6, eps 1e-3)."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 samples: int = 1, seed: int | None = None):  # fmt: skip
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), seed, samples)

    def _descend(self, estimates) -> None:
        group = self.param_groups[0]
        if group["weight_decay"]:
            torch._foreach_mul_(self.decayed, 1 - group["lr"] * group["weight_decay"])
        # theta -= lr pg_k / n z_k, sample by sample: no g_hat buffer
        draws = [self._draws(seed) for seed, _ in estimates]
        for pieces in zip(*draws, strict=True):
            for (i, r0, r1, z), (_, pg) in zip(pieces, estimates, strict=True):
                self.views[i][r0:r1].add_(z, alpha=-group["lr"] * pg / len(estimates))


class ZOAdam(_ZerothOrder):
    """ZO-Adam: the same n-SPSA estimate fed to Adam (torch.optim.Adam's update, its L2
    weight decay g += wd theta on tensors of two or more dimensions, and bias correction).
    Memory: two moments, +2P. Defaults: torch Adam's."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, eps: float = 1e-3, weight_decay: float = 0.0,
                 samples: int = 1, seed: int | None = None):  # fmt: skip
        check_betas(betas)
        if not adam_eps >= 0:
            raise ValueError(f"adam_eps must be >= 0, got {adam_eps}")
        defaults = dict(lr=lr, betas=tuple(betas), adam_eps=adam_eps, eps=eps,
                        weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, seed, samples)

    def _descend(self, estimates) -> None:
        group = self.param_groups[0]
        t = self.vector_state["step"]
        b1, b2 = group["betas"]
        bias1, root2 = 1 - b1**t, math.sqrt(1 - b2**t)
        for p in self.flat_params:
            if "exp_avg" not in self.state[p]:
                self.state[p]["exp_avg"] = torch.zeros_like(p)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
        for i, r0, r1, g in self._gradient(estimates):
            p = self.flat_params[i]
            piece = self.views[i][r0:r1]
            if group["weight_decay"] and p.dim() >= 2:
                g.add_(piece, alpha=group["weight_decay"])
            m = self.state[p]["exp_avg"].view_as(self.views[i])[r0:r1]
            v = self.state[p]["exp_avg_sq"].view_as(self.views[i])[r0:r1]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(root2).add_(group["adam_eps"])
            piece.addcdiv_(m, denom, value=-group["lr"] / bias1)
