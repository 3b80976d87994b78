"""The jax objective: one mini-batch's loss on the flat parameter vector, with counted oracles.

The twins of ``optimizers/torch`` solve their linear systems on one flat vector, as the torch
ones do, so the objective works on ``x = ravel_pytree(params)[0]``. Curvature comes from the
loss itself: a Hessian-vector product is forward-over-reverse (``jax.linearize`` of
``jax.value_and_grad``: the loss, the gradient and a linear map that costs about one gradient
per product); a Gauss-Newton product is J v by ``jax.linearize`` of the outputs (jvp), the
output loss's Hessian on it, then J^T by ``jax.vjp``.

Counting: inside ``jit`` an oracle cannot bump a Python counter (a host callback costs ~35 us a
call, as much as a small product), so every oracle takes the running :class:`Counts` and returns
them updated, in the same units as the torch objective (a product reusing its operator's pass is
one ``hvp`` or ``ggnvp``; building the operator is one forward and one backward). The
optimizers thread them through their loops and keep them in their state, where the harness
reads them; they never write a count themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class Counts(NamedTuple):
    forward: jax.Array
    backward: jax.Array
    hvp: jax.Array
    ggnvp: jax.Array

    @classmethod
    def zero(cls) -> Counts:
        return cls(*(jnp.zeros((), jnp.int32) for _ in range(4)))

    def add(self, forward=0, backward=0, hvp=0, ggnvp=0) -> Counts:
        return Counts(
            self.forward + forward, self.backward + backward, self.hvp + hvp, self.ggnvp + ggnvp
        )


class Curvature(NamedTuple):
    """One batch's loss and gradient at x, and ``apply(v, counts) -> (B v, counts)`` reusing
    their linearisation; valid at that x only."""

    loss: jax.Array
    grad: jax.Array
    apply: Callable[[jax.Array, Counts], tuple[jax.Array, Counts]]


class Objective:
    """The loss of one batch as a function of the flat parameters.

    ``value_fn(params)`` is all that Hessian methods need. Methods that need the model's outputs
    (Gauss-Newton products, per-example gradients, a curvature sub-batch) also need
    ``apply_fn(params, inputs)``, ``loss_fn(outputs, targets)`` and ``batch = (inputs,
    targets)``, with ``value_fn(p) == loss_fn(apply_fn(p, inputs), targets)``.
    """

    def __init__(
        self,
        params: Any,
        value_fn: Callable,
        apply_fn: Callable | None = None,
        loss_fn: Callable | None = None,
        batch: tuple | None = None,
    ):
        self.theta, self.unravel = ravel_pytree(params)
        self.value_fn, self.apply_fn, self.loss_fn, self.batch = value_fn, apply_fn, loss_fn, batch

    def _value(self, x: jax.Array) -> jax.Array:
        return self.value_fn(self.unravel(x))

    def _outputs(self, x: jax.Array) -> jax.Array:
        if self.apply_fn is None or self.batch is None:
            raise ValueError("this method needs apply_fn, loss_fn and batch, not value_fn alone")
        return self.apply_fn(self.unravel(x), self.batch[0])

    # -- first order -----------------------------------------------------------------------
    def loss(self, x: jax.Array, counts: Counts) -> tuple[jax.Array, Counts]:
        return self._value(x), counts.add(forward=1)

    def loss_and_grad(self, x: jax.Array, counts: Counts):
        """((loss, g), counts)."""
        return jax.value_and_grad(self._value)(x), counts.add(forward=1, backward=1)

    # -- curvature ---------------------------------------------------------------------------
    def hessian_operator(self, x: jax.Array, counts: Counts) -> tuple[Curvature, Counts]:
        (loss, grad), tangent = jax.linearize(jax.value_and_grad(self._value), x)

        def apply(v, counts):
            return tangent(v)[1], counts.add(hvp=1)

        return Curvature(loss, grad, apply), counts.add(forward=1, backward=1)

    def ggn_operator(self, x: jax.Array, counts: Counts) -> tuple[Curvature, Counts]:
        """G = J^T H_out J with J the outputs' Jacobian: no second derivative of the model."""
        targets = self.batch[1] if self.batch is not None else None
        outputs, jvp = jax.linearize(self._outputs, x)
        _, vjp = jax.vjp(self._outputs, x)
        (loss, out_grad), out_hvp = jax.linearize(
            jax.value_and_grad(lambda o: self.loss_fn(o, targets)), outputs
        )

        def apply(v, counts):
            (product,) = vjp(out_hvp(jvp(v))[1])
            return product, counts.add(ggnvp=1)

        (grad,) = vjp(out_grad)
        return Curvature(loss, grad, apply), counts.add(forward=1, backward=1)

    def hessian(self, x: jax.Array, counts: Counts) -> tuple[jax.Array, Counts]:
        """The dense d x d Hessian from d products, in chunks that bound the working memory
        (as the torch objective's), symmetrised."""
        d = x.shape[0]
        grad = jax.grad(self._value)

        def column(i):
            return jax.jvp(grad, (x,), (jax.nn.one_hot(i, d, dtype=x.dtype),))[1]

        chunk = max(1, min(d, 2**26 // self._batch_size()))
        hess = jax.lax.map(column, jnp.arange(d), batch_size=chunk)
        return (hess + hess.T) / 2, counts.add(hvp=d)

    def _batch_size(self) -> int:
        return 1 if self.batch is None else max(1, int(jnp.size(self.batch[0])))

    def gradient_second_moment(self, x: jax.Array, counts: Counts) -> tuple[jax.Array, Counts]:
        """Mean over examples of the squared per-example gradient (the empirical Fisher
        diagonal) for a loss that is a mean over examples; one vmapped forward and backward."""
        inputs, targets = self.batch

        def example_loss(x, xi, yi):
            return self.loss_fn(self.apply_fn(self.unravel(x), xi[None]), yi[None])

        per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(x, inputs, targets)
        return jnp.square(per_example).mean(0), counts.add(forward=1, backward=1)

    def subset(self, n: int) -> Objective:
        """The objective on the batch's first ``n`` examples (Martens' curvature mini-batch)."""
        inputs, targets = self.batch
        batch = (inputs[:n], targets[:n])

        def value_fn(params):
            return self.loss_fn(self.apply_fn(params, batch[0]), batch[1])

        return Objective(self.unravel(self.theta), value_fn, self.apply_fn, self.loss_fn, batch)
