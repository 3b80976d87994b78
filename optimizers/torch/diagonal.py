"""Diagonal-curvature methods: AdaHessian (Yao et al. 2021) and Sophia (Liu et al. 2023).

Both precondition by an estimate of the Hessian's diagonal, refreshed every
``update_interval`` steps on that step's batch (the cost lever of both papers):

- Hutchinson: D = z * (H z) with Rademacher z (exactly +-1: one popular implementation draws
  ``randint(0, 1) * 2 - 1``, which is always -1 and estimates row sums). One HVP, from the
  operator that also gives the step's gradient, so a Hessian step costs a gradient plus an HVP.
- Gauss-Newton-Bartlett (Sophia-G): B * g_hat * g_hat, where g_hat is the gradient of the loss
  against targets drawn from the model's predictive distribution and B the number of
  predictions in the batch; its mean is the GGN's diagonal. One more forward and backward.

The random draws come from the optimizer's own generator (:class:`RandomizedOptimizer`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import RandomizedOptimizer, check_betas
from .objective import Objective

BITS = 62  # random bits used per int64 draw: 2^62 is a power of two, so each bit is fair


def rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    """Independent +-1 entries shaped like ``like``, from the bits of ceil(n / 62) integer
    draws: a third of the cost of one draw per entry, which is most of a small model's HVP."""
    n = like.numel()
    words = torch.randint(0, 2**BITS, ((n + BITS - 1) // BITS, 1), generator=generator,
                          device=like.device)  # fmt: skip
    shifts = torch.arange(BITS, device=like.device)
    bits = (words >> shifts).bitwise_and_(1).view(-1)[:n]
    return bits.to(like.dtype).mul_(2).sub_(1).view(like.shape)


def spatial_average(d: Tensor, block_size: int) -> Tensor:
    """AdaHessian's averaging of |D|: over the kernel window of 4-D conv weights (out, in, kh,
    kw), and over contiguous blocks of ``block_size`` along the last dimension of any other
    tensor (1-D, 2-D and 3-D alike; the reference skips 3-D tensors). The last block may be
    shorter."""
    if d.dim() == 4:
        return d.mean(dim=(2, 3), keepdim=True).expand_as(d)
    if block_size == 1 or d.dim() == 0:
        return d
    n = d.shape[-1]
    rows = d.reshape(-1, n)
    full = (n // block_size) * block_size
    parts = []
    if full:
        blocks = rows[:, :full].reshape(rows.shape[0], -1, block_size)
        parts.append(blocks.mean(-1, keepdim=True).expand_as(blocks).reshape(rows.shape[0], full))
    if full < n:
        tail = rows[:, full:]
        parts.append(tail.mean(-1, keepdim=True).expand_as(tail))
    return torch.cat(parts, dim=1).reshape(d.shape)


class _DiagonalCurvature(RandomizedOptimizer):
    def __init__(self, params, defaults, update_interval: int, seed: int | None):
        if not (isinstance(update_interval, int) and update_interval >= 1):
            raise ValueError(f"update_interval must be a positive integer, got {update_interval!r}")
        check_betas(defaults["betas"])
        if not defaults["weight_decay"] >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {defaults['weight_decay']}")
        super().__init__(params, defaults, seed)
        self.update_interval = update_interval
        self.sizes = [p.numel() for p in self.flat_params]
        self.numel = sum(self.sizes)
        self.vector_state.update(step=0, hessian_updates=0)

    def _hutchinson(self, objective: Objective):
        """Loss, gradient and z * (H z) from one operator (one forward, backward and HVP)."""
        operator = objective.hessian_operator()
        params = self.flat_params
        like = torch.empty(self.numel, dtype=params[0].dtype, device=params[0].device)
        draw = rademacher(like, self.generator)
        z = [v.view_as(p) for v, p in zip(draw.split(self.sizes), params, strict=True)]
        hz = operator.apply(z)
        return operator.loss, operator.grad, torch._foreach_mul(z, hz)

    def _estimate(self, objective: Objective):
        return self._hutchinson(objective)

    def _gradient(self, objective: Objective):
        """Loss and gradient, and on the scheduled steps (every ``update_interval``, the first
        included) the fresh diagonal estimate, else None. Counts the step."""
        vector = self.vector_state
        estimates = None
        if vector["step"] % self.update_interval == 0:
            loss, grads, estimates = self._estimate(objective)
            vector["hessian_updates"] += 1
        else:
            loss, grads = objective.loss_and_grad()
        vector["step"] += 1
        return loss, grads, estimates

    def _buffers(self, name: str) -> list[Tensor]:
        """Per-tensor state ``name`` for every parameter, zeros on first use."""
        for p in self.flat_params:
            if name not in self.state[p]:
                self.state[p][name] = torch.zeros_like(p)
        return [self.state[p][name] for p in self.flat_params]


class AdaHessian(_DiagonalCurvature):
    """AdaHessian (Yao et al. 2021; reference amirgholami/adahessian, optim_adahessian.py).

    D = spatial_average(|z * H z|); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) D^2;
    theta -= lr (m / (1 - b1^t) / ((sqrt(v / (1 - b2^t)))^k + eps) + wd theta)
    (decoupled weight decay, as the reference).

    Delayed update (``update_interval`` > 1): D is recomputed every ``update_interval`` steps
    and the last D is reused in between, so v's moving average still advances every step (the
    paper's Algorithm 1). Defaults are the reference's (lr 0.15, betas (0.9, 0.999), eps 1e-4).
    """

    def __init__(
        self,
        params,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        update_interval: int = 1,
        block_size: int = 1,
        seed: int | None = None,
    ):
        if not eps >= 0 or not 0 < hessian_power <= 1:
            raise ValueError(
                f"need eps >= 0 and 0 < hessian_power <= 1, got {eps}, {hessian_power}"
            )
        if not (isinstance(block_size, int) and block_size >= 1):
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, update_interval, seed)
        self.hessian_power, self.block_size = hessian_power, block_size

    @torch.no_grad()
    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        group, vector, params = self.param_groups[0], self.vector_state, self.flat_params
        loss, grads, estimates = self._gradient(objective)
        if estimates is not None:
            torch._foreach_abs_(estimates)
            for p, d in zip(params, estimates, strict=True):
                self.state[p]["hessian_diag"] = spatial_average(d, self.block_size)
        t = vector["step"]
        b1, b2 = group["betas"]
        m, v = self._buffers("exp_avg"), self._buffers("exp_hessian_diag_sq")
        diag = [self.state[p]["hessian_diag"] for p in params]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, diag, diag, value=1 - b2)
        denom = torch._foreach_div(v, 1 - b2**t)
        torch._foreach_sqrt_(denom)
        if self.hessian_power != 1:
            torch._foreach_pow_(denom, self.hessian_power)
        torch._foreach_add_(denom, group["eps"])
        if group["weight_decay"]:  # decoupled: theta -= lr wd theta
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_addcdiv_(params, m, denom, value=-group["lr"] / (1 - b1**t))
        return {"loss": loss, "hessian_updates": vector["hessian_updates"]}


class Sophia(_DiagonalCurvature):
    """Sophia (Liu et al. 2023; reference Liuhong99/Sophia), paper form with decoupled decay:

    theta *= 1 - lr wd; m = b1 m + (1 - b1) g;
    every ``update_interval`` steps: h = b2 h + (1 - b2) h_hat;
    theta -= lr clip(m / max(rho h, eps), 1)   (clip to [-1, 1] per coordinate).

    ``estimator="gnb"`` is Sophia-G: h_hat = B g_hat * g_hat with B the number of predictions
    (so ``rho`` is the official code's rho: its step divides by rho * bs * h). ``"hutchinson"``
    is Sophia-H: h_hat = u * (H u). ``hessian_batch`` (None: the whole batch) takes the estimate
    on the step's first ``hessian_batch`` examples, as the official GPT-2 runs take it on one
    micro-batch of the gradient's accumulated batch: the cost lever besides the interval.

    Where the references disagree, this one takes:
    - negative or zero curvature: the denominator is max(rho h, eps), so such a coordinate takes
      a clipped sign step. The official step divides by rho bs h + 1e-15 and clamps only from
      above, so a negative h (possible for Sophia-H) flips the step's sign (Sophia issue #34);
    - timing: the estimate is taken at the scheduled step on that step's batch, before the
      update (the paper's Algorithm 3), not after the step on the next batch as in the
      official training script. No bias correction; h starts at 0 (both references).
    ``clip_fraction`` in the record is the share of coordinates whose ratio was clipped, measured
    on the steps that refresh h; the official "win rate" is 1 - clip_fraction.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-15,
        update_interval: int = 10,
        estimator: str = "gnb",
        hessian_batch: int | None = None,
        seed: int | None = None,
    ):
        if estimator not in ("gnb", "hutchinson"):
            raise ValueError(f"estimator must be 'gnb' or 'hutchinson', got {estimator!r}")
        if not rho > 0 or not eps > 0:
            raise ValueError(f"rho and eps must be > 0, got {rho}, {eps}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, eps=eps)
        if hessian_batch is not None and not (isinstance(hessian_batch, int) and hessian_batch > 0):
            raise ValueError(
                f"hessian_batch must be a positive integer or None, got {hessian_batch!r}"
            )
        super().__init__(params, defaults, update_interval, seed)
        self.estimator = estimator
        self.hessian_batch = hessian_batch

    def _estimate(self, objective: Objective):
        whole = self.hessian_batch is None or self.hessian_batch >= len(objective.inputs)
        if self.estimator == "hutchinson" and whole:
            return self._hutchinson(objective)
        loss, grads = objective.loss_and_grad()
        sample = objective if whole else objective.subset(self.hessian_batch)
        if self.estimator == "hutchinson":
            return loss, grads, self._hutchinson(sample)[2]
        sampled = sample.sampled_gradient(self.generator)
        return loss, grads, [sample.targets.numel() * g * g for g in sampled]

    @torch.no_grad()
    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        group, vector, params = self.param_groups[0], self.vector_state, self.flat_params
        loss, grads, estimates = self._gradient(objective)
        due = estimates is not None
        b1, b2 = group["betas"]
        lr, rho, eps = group["lr"], group["rho"], group["eps"]
        m, h = self._buffers("exp_avg"), self._buffers("hessian")
        if due:
            torch._foreach_lerp_(h, estimates, 1 - b2)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(m, grads, 1 - b1)
        # m / max(rho h, eps) in one buffer, by reciprocal and product, and one clamp: 4.8 ms on
        # 3.4M CPU parameters, where a second buffer, foreach divide and two clamps took 15
        # (AdamW's whole step: 7.3), most of the Sophia / AdamW step ratio's excess.
        ratio = torch._foreach_mul(h, rho)
        torch._foreach_clamp_min_(ratio, eps)  # max(rho h, eps): safe on h <= 0
        torch._foreach_reciprocal_(ratio)
        torch._foreach_mul_(ratio, m)
        if due:  # measured when h is refreshed: a per-step count would cost a reduction a step
            clipped = sum((r.abs() >= 1).sum() for r in ratio)
            vector["clip_fraction"] = clipped / self.numel
        for r in ratio:
            r.clamp_(-1.0, 1.0)
        torch._foreach_add_(params, ratio, alpha=-lr)
        return {
            "loss": loss,
            "hessian_updates": vector["hessian_updates"],
            "clip_fraction": vector["clip_fraction"],
        }
