"""The objective: one mini-batch's loss as a function of the parameters, with counted oracles.

Every optimizer's ``step(closure)`` receives an :class:`Objective`. Called plainly it is a
standard torch closure (zero grads, forward, backward, return the loss), so stock
``torch.optim`` optimizers run unchanged. Its methods give what second- and zeroth-order methods
need; each call is counted in a shared :class:`Counters`, which the harness reads (never the
optimizer's own word).

Vectors (``v`` in ``hvp``/``ggnvp``, the gradients returned by ``loss_and_grad``) are tuples of
tensors aligned with :attr:`Objective.params`, the same list of tensors the optimizer was built
with. Curvature products are double backward passes with ``torch.autograd.grad`` (never
``.backward(create_graph=True)``, whose ``p.grad`` cycle leaks memory: pytorch#4661): an HVP
differentiates the gradient's graph, a GGN product differentiates J^T u in u to get J v. Methods
that take many products on one batch (CG) build :meth:`Objective.hessian_operator` or
:meth:`Objective.ggn_operator` once: the loss, the gradient and a product that reuses their
graph, so each product costs about one gradient. Forward mode is avoided on purpose: it is
slower in eager torch and ``F.mse_loss``'s backward has no forward derivative in torch 2.13
(pytorch/pytorch#123996).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad
from torch.nn.attention import SDPBackend, sdpa_kernel

Vector = tuple[Tensor, ...]

# Gaussian likelihood whose negative log matches mean squared error up to a constant: with
# variance 1/2, E[g g^T] over sampled targets equals the GGN divided by the number of outputs.
GAUSSIAN_VARIANCE = 0.5


# Parameter names and buffers of each model, computed once: an Objective is built every step
# and walking the module tree each time would be charged to the step's wall clock.
_MODEL_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _index(model: nn.Module) -> tuple[dict[int, str], dict[str, Tensor]]:
    if model not in _MODEL_INDEX:
        names = {id(p): name for name, p in model.named_parameters()}
        _MODEL_INDEX[model] = (names, dict(model.named_buffers()))
    return _MODEL_INDEX[model]


def twice_differentiable():
    """Graphs that curvature products differentiate twice: fused attention kernels (flash,
    memory-efficient) have no derivative of their backward, so scaled_dot_product_attention
    falls back to its composite math form here. A model without attention is unaffected."""
    return sdpa_kernel([SDPBackend.MATH])


class Infeasible(RuntimeError):
    """A computation this cell cannot afford (e.g. a dense Hessian past the memory budget)."""


@dataclass
class Counters:
    """Cumulative oracle calls of one run. Cost units are documented in DESIGN.md."""

    forward: int = 0
    backward: int = 0
    hvp: int = 0
    ggnvp: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Curvature:
    """One batch's loss and gradient, and a curvature product that reuses their graph.

    Valid while the parameters keep the values they had when it was built; each call of
    ``apply`` is one counted product."""

    loss: Tensor
    grad: Vector
    apply: Callable[..., Vector]


class Objective:
    """Loss of ``model`` on one batch ``(inputs, targets)`` under ``loss_fn(outputs, targets)``.

    ``likelihood`` names the predictive distribution the loss is the negative log of
    (``"categorical"`` for cross-entropy on logits, ``"gaussian"`` for mean squared error); it is
    only used by :meth:`sample_targets`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch: tuple[Tensor, Tensor],
        params: Sequence[Tensor],
        counters: Counters | None = None,
        likelihood: str = "categorical",
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.inputs, self.targets = batch
        self.params = tuple(params)
        self.counters = counters if counters is not None else Counters()
        self.likelihood = likelihood
        by_id, self._buffers = _index(model)
        try:
            self._names = tuple(by_id[id(p)] for p in self.params)
        except KeyError:
            missing = [i for i, p in enumerate(self.params) if id(p) not in by_id]
            raise ValueError(
                f"params at positions {missing} are not parameters of the model"
            ) from None

    # -- the standard closure -------------------------------------------------------------
    def __call__(self) -> Tensor:
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = self.loss_fn(self.model(self.inputs), self.targets)
            loss.backward()
        self.counters.forward += 1
        self.counters.backward += 1
        return loss.detach()

    # -- first order ----------------------------------------------------------------------
    def loss(self) -> Tensor:
        with torch.no_grad():
            value = self.loss_fn(self.model(self.inputs), self.targets)
        self.counters.forward += 1
        return value

    def loss_and_grad(self) -> tuple[Tensor, Vector]:
        """Loss and gradient without touching ``p.grad``."""
        with torch.enable_grad():
            value = self.loss_fn(self.model(self.inputs), self.targets)
            grads = torch.autograd.grad(value, self.params)
        self.counters.forward += 1
        self.counters.backward += 1
        return value.detach(), grads

    # -- functional view used by per-example gradients ----------------------------------------
    def _as_dict(self, tensors: Sequence[Tensor]) -> dict[str, Tensor]:
        return dict(zip(self._names, tensors, strict=True))

    def _primal(self) -> dict[str, Tensor]:
        return self._as_dict([p.detach() for p in self.params])

    # -- second order -----------------------------------------------------------------------
    def hessian_operator(self) -> Curvature:
        """Loss, gradient and v -> H v on this batch, sharing one forward pass and one backward
        (kept as a graph): each product is then one backward through the gradient's graph."""
        self.counters.forward += 1
        self.counters.backward += 1
        return self._hessian_operator()

    def ggn_operator(self) -> Curvature:
        """Loss, gradient and v -> G v (G = J^T H_out J) sharing one forward pass: each product
        is J v (the transpose of the retained J^T u, by a second backward), the output Hessian
        on it, then J^T, with no second derivative of the network."""
        self.counters.forward += 1
        self.counters.backward += 1
        return self._ggn_operator()

    def hvp(self, v: Sequence[Tensor]) -> Vector:
        """Hessian-vector product ``H v``."""
        return self._hessian_operator().apply(v)

    def ggnvp(self, v: Sequence[Tensor]) -> Vector:
        """Generalised Gauss-Newton product ``J^T H_out J v``."""
        return self._ggn_operator().apply(v)

    def _hessian_operator(self) -> Curvature:
        with torch.enable_grad(), twice_differentiable():
            loss = self.loss_fn(self.model(self.inputs), self.targets)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)

        # A gradient entry that does not depend on the parameters (a loss linear in them) has
        # a zero Hessian row block and no graph to differentiate.
        live = [i for i, g in enumerate(grads) if g.requires_grad]

        def apply(v: Sequence[Tensor], batched: bool = False) -> Vector:
            self.counters.hvp += len(v[0]) if batched else 1
            if not live:
                return tuple(torch.zeros_like(vi) for vi in v)
            return torch.autograd.grad(
                [grads[i] for i in live],
                self.params,
                [v[i] for i in live],
                retain_graph=True,
                is_grads_batched=batched,
                allow_unused=True,
                materialize_grads=True,
            )

        return Curvature(loss.detach(), tuple(g.detach() for g in grads), apply)

    def _ggn_operator(self) -> Curvature:
        with torch.enable_grad(), twice_differentiable():
            out = self.model(self.inputs)
            # The loss's own graph starts at a detached copy of the outputs: its second
            # derivative (H_out) is all the products need of it.
            leaf = out.detach().requires_grad_()
            loss = self.loss_fn(leaf, self.targets)
            (out_grad,) = torch.autograd.grad(loss, leaf, create_graph=True)
            grads = torch.autograd.grad(out, self.params, out_grad.detach(), retain_graph=True)
            # J^T u for a dummy u, linear in u: its derivative along v is J v.
            dummy = torch.zeros_like(out, requires_grad=True)
            jt_dummy = torch.autograd.grad(out, self.params, dummy, create_graph=True)

        def apply(v: Sequence[Tensor]) -> Vector:
            self.counters.ggnvp += 1
            (jv,) = torch.autograd.grad(jt_dummy, dummy, tuple(v), retain_graph=True)
            (hjv,) = torch.autograd.grad(out_grad, leaf, jv, retain_graph=True)
            return torch.autograd.grad(out, self.params, hjv, retain_graph=True)

        return Curvature(loss.detach(), grads, apply)

    def hessian(self, max_bytes: int) -> Tensor:
        """Dense Hessian over the flattened ``params`` (d x d), built from d HVPs in batches.

        Raises :class:`Infeasible` when d^2 entries (times a working-memory factor of 2) would
        exceed ``max_bytes``.
        """
        d = sum(p.numel() for p in self.params)
        dtype = self.params[0].dtype
        need = 2 * d * d * torch.empty((), dtype=dtype).element_size()
        if need > max_bytes:
            raise Infeasible(
                f"dense Hessian of {d:,} parameters needs {need / 2**30:.1f} GiB "
                f"> budget {max_bytes / 2**30:.1f} GiB"
            )
        operator = self._hessian_operator()
        hess = torch.empty(d, d, dtype=dtype, device=self.params[0].device)
        chunk = max(1, min(d, 2**26 // max(1, self.inputs.numel())))
        for start in range(0, d, chunk):
            rows = min(chunk, d - start)
            basis = torch.zeros(rows, d, dtype=dtype, device=hess.device)
            basis[:, start : start + rows].fill_diagonal_(1.0)
            tangents = [
                t.view(rows, *p.shape)
                for t, p in zip(
                    basis.split([p.numel() for p in self.params], dim=1), self.params, strict=True
                )
            ]
            columns = operator.apply(tangents, batched=True)
            hess[start : start + rows] = torch.cat([c.reshape(rows, -1) for c in columns], 1)
        return (hess + hess.T) / 2  # exact up to round-off; symmetrise it

    def gradient_second_moment(self) -> Vector:
        """Mean over examples of the squared per-example gradient, (1/N) sum_i (grad l_i)^2: the
        empirical Fisher diagonal, on the scale of the mean loss's GGN. Assumes the loss is a
        mean of per-example losses (cross-entropy, MSE). One vmapped forward and backward."""

        def example_loss(params, x, y):
            out = functional_call(self.model, (params, self._buffers), (x.unsqueeze(0),))
            return self.loss_fn(out, y.unsqueeze(0))

        per_example = torch.func.vmap(grad(example_loss), in_dims=(None, 0, 0))(
            self._primal(), self.inputs, self.targets
        )
        self.counters.forward += 1
        self.counters.backward += 1
        return tuple(per_example[n].square().mean(0) for n in self._names)

    def sampled_gradient(self, generator: torch.Generator | None = None) -> Vector:
        """Gradient of the loss against targets drawn from the model's own predictive
        distribution (:meth:`sample_targets`) on one forward pass: the Gauss-Newton-Bartlett
        estimator's g_hat (Sophia-G). One forward, one backward."""
        with torch.enable_grad():
            out = self.model(self.inputs)
            sampled = self.sample_targets(out, generator)
            grads = torch.autograd.grad(self.loss_fn(out, sampled), self.params)
        self.counters.forward += 1
        self.counters.backward += 1
        return grads

    def subset(self, n: int) -> Objective:
        """The objective on the batch's first ``n`` examples, sharing these counters (Martens'
        curvature mini-batch is a subset of the gradient mini-batch)."""
        batch = (self.inputs[:n], self.targets[:n])
        return Objective(
            self.model, self.loss_fn, batch, self.params, self.counters, self.likelihood
        )

    # -- outputs-level access (GGN-based and sampling methods) --------------------------------
    def outputs(self) -> Tensor:
        with torch.no_grad():
            out = self.model(self.inputs)
        self.counters.forward += 1
        return out

    def loss_from_outputs(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.loss_fn(outputs, self.targets if targets is None else targets)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from the model's predictive distribution at ``outputs`` (Sophia-G)."""
        outputs = outputs.detach()
        if self.likelihood == "categorical":
            probs = torch.softmax(outputs.float(), dim=-1).reshape(-1, outputs.shape[-1])
            draws = torch.multinomial(probs, 1, generator=generator).view(outputs.shape[:-1])
            return draws
        if self.likelihood == "gaussian":
            noise = torch.randn(
                outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device
            )
            return outputs + math.sqrt(GAUSSIAN_VARIANCE) * noise
        raise ValueError(f"unknown likelihood {self.likelihood!r}")
