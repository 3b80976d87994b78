"""The objective: one mini-batch's loss as a function of the parameters, with counted oracles.

Every optimizer's ``step(closure)`` receives an :class:`Objective`. Called plainly it is a
standard torch closure (zero grads, forward, backward, return the loss), so stock
``torch.optim`` optimizers run unchanged. Its methods give what second- and zeroth-order methods
need; each call is counted in a shared :class:`Counters`, which the harness reads (never the
optimizer's own word).

Vectors (``v`` in ``hvp``/``ggnvp``, the gradients returned by ``loss_and_grad``) are tuples of
tensors aligned with :attr:`Objective.params`, the same list of tensors the optimizer was built
with. Curvature products use ``torch.func`` (the VJP of the gradient for HVPs; a JVP of the
network, the output-Hessian product, then a VJP for GGN products), so no ``create_graph=True``
cycle through ``p.grad`` can leak memory. They are reverse-over-reverse on purpose: forward
mode through ``F.mse_loss``'s backward raises in torch 2.13 (pytorch/pytorch#123996).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp

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

    # -- functional views used by curvature products ---------------------------------------
    def _as_dict(self, tensors: Sequence[Tensor]) -> dict[str, Tensor]:
        return dict(zip(self._names, tensors, strict=True))

    def _outputs_of(self, params: dict[str, Tensor]) -> Tensor:
        # Parameters the optimizer does not own stay at their current values.
        return functional_call(self.model, (params, self._buffers), (self.inputs,), strict=False)

    def _loss_of(self, params: dict[str, Tensor]) -> Tensor:
        return self.loss_fn(self._outputs_of(params), self.targets)

    def _primal(self) -> dict[str, Tensor]:
        return self._as_dict([p.detach() for p in self.params])

    # -- second order -----------------------------------------------------------------------
    def hvp(self, v: Sequence[Tensor]) -> Vector:
        """Hessian-vector product ``H v`` (reverse-over-reverse: H is symmetric, so the VJP of
        the gradient is H v)."""
        _, pullback = vjp(grad(self._loss_of), self._primal())
        (hv,) = pullback(self._as_dict(v))
        self.counters.hvp += 1
        return tuple(hv[n] for n in self._names)

    def ggnvp(self, v: Sequence[Tensor]) -> Vector:
        """Generalised Gauss-Newton product ``J^T H_out J v``: no second derivative of the net."""
        primal = self._primal()
        out, jv = jvp(self._outputs_of, (primal,), (self._as_dict(v),))
        _, output_pullback = vjp(grad(lambda o: self.loss_fn(o, self.targets)), out.detach())
        (hjv,) = output_pullback(jv)
        _, pullback = vjp(self._outputs_of, primal)
        (gv,) = pullback(hjv)
        self.counters.ggnvp += 1
        return tuple(gv[n] for n in self._names)

    def hessian(self, max_bytes: int) -> Tensor:
        """Dense Hessian over the flattened ``params`` (d x d), built from d HVPs.

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
        shapes = [p.shape for p in self.params]
        sizes = [p.numel() for p in self.params]
        _, pullback = vjp(grad(self._loss_of), self._primal())

        def column(e: Tensor) -> Tensor:
            tangent = self._as_dict(
                [t.view(s) for t, s in zip(e.split(sizes), shapes, strict=True)]
            )
            (hv,) = pullback(tangent)
            return torch.cat([hv[n].reshape(-1) for n in self._names])

        eye = torch.eye(d, dtype=dtype, device=self.params[0].device)
        chunk = max(1, min(d, 2**26 // max(1, self.inputs.numel())))
        hess = torch.func.vmap(column, chunk_size=chunk)(eye)
        self.counters.hvp += d
        return (hess + hess.T) / 2  # exact up to round-off; symmetrise it

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
