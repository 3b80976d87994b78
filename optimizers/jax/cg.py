"""The one conjugate-gradient solver of the jax twins: ``optimizers/torch/cg.py`` as one
``lax.while_loop``, with the same stopping rules, warm start, model value q(x) = x^T A x / 2 -
b^T x (as -x^T (r + b) / 2), Steihaug exit on negative curvature and Martens' stored iterates.
See the torch module for the rules; the differences here are only of form: the stored iterates
live in a fixed buffer of one row per iteration of ``martens_schedule(max_iter)`` plus the last,
and ``reason`` is a code (``REASONS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..torch.cg import martens_schedule
from .objective import Counts

REASONS = ("max_iter", "tolerance", "progress", "negative_curvature")
MAX_ITER, TOLERANCE, PROGRESS, NEGATIVE_CURVATURE = range(4)


class CGResult(NamedTuple):
    x: jax.Array
    q: jax.Array
    iterations: jax.Array  # products inside the loop
    matvecs: jax.Array  # all products, the warm start's residual included
    reason: jax.Array  # an index into REASONS
    # if keep_iterates: rows 0 .. kept-1 of (iteration, iterate, q), as the torch list
    kept: jax.Array
    kept_iter: jax.Array
    kept_x: jax.Array
    kept_q: jax.Array

    @property
    def negative_curvature(self) -> jax.Array:
        return self.reason == NEGATIVE_CURVATURE


class _Loop(NamedTuple):
    i: jax.Array
    x: jax.Array
    r: jax.Array
    p: jax.Array
    rz: jax.Array
    q: jax.Array
    history: jax.Array
    reason: jax.Array
    done: jax.Array
    x_is_kept: jax.Array  # the last stored iterate is the current x
    kept: jax.Array
    kept_iter: jax.Array
    kept_x: jax.Array
    kept_q: jax.Array
    counts: Counts


def conjugate_gradient(
    matvec: Callable[[jax.Array, Counts], tuple[jax.Array, Counts]],
    b: jax.Array,
    counts: Counts,
    x0: jax.Array | None = None,
    *,
    max_iter: int,
    tol: float = 0.0,
    progress_eps: float | None = None,
    precondition: Callable[[jax.Array], jax.Array] | None = None,
    keep_iterates: bool = False,
) -> tuple[CGResult, Counts]:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    apply_m = precondition or (lambda r: r)
    zero = jnp.zeros_like(b)
    matvecs = jnp.zeros((), jnp.int32)
    x, r = zero, b
    if x0 is not None:

        def warm(counts):
            ax0, counts = matvec(x0, counts)
            r0 = b - ax0
            better = -0.5 * jnp.dot(x0, r0 + b) < 0
            return jnp.where(better, x0, zero), jnp.where(better, r0, b), counts, 1

        def cold(counts):
            return zero, b, counts, 0

        x, r, counts, used = jax.lax.cond(jnp.any(x0 != 0), warm, cold, counts)
        matvecs = matvecs + used
    z = apply_m(r)
    b_norm = jnp.linalg.norm(b)
    tol = max(tol, float(jnp.finfo(b.dtype).eps))
    q = -0.5 * jnp.dot(x, r + b)
    schedule = sorted(martens_schedule(max_iter)) if keep_iterates else []
    slots = len(schedule) + 1 if keep_iterates else 0
    is_kept = jnp.zeros(max_iter + 1, bool).at[jnp.asarray(schedule, jnp.int32)].set(True)
    state = _Loop(
        i=jnp.zeros((), jnp.int32),
        x=x,
        r=r,
        p=z,
        rz=jnp.dot(r, z),
        q=q,
        history=jnp.zeros(max_iter + 1, b.dtype).at[0].set(q),
        reason=jnp.where(b_norm == 0, TOLERANCE, MAX_ITER),
        done=b_norm == 0,
        x_is_kept=jnp.array(False),
        kept=jnp.zeros((), jnp.int32),
        kept_iter=jnp.zeros(slots, jnp.int32),
        kept_x=jnp.zeros((slots, b.shape[0]), b.dtype),
        kept_q=jnp.zeros(slots, b.dtype),
        counts=counts,
    )

    def step(s: _Loop) -> _Loop:
        i = s.i + 1
        ap, counts = matvec(s.p, s.counts)
        curvature = jnp.dot(s.p, ap)
        negative = curvature <= 0
        # Steihaug: keep x, or on the first iteration from x = 0 take the direction itself
        take_p = negative & (i == 1) & ~jnp.any(s.x != 0)
        alpha = s.rz / curvature
        x = jnp.where(negative, jnp.where(take_p, s.p, s.x), s.x + alpha * s.p)
        r = s.r - alpha * ap
        q = jnp.where(
            negative,
            jnp.where(take_p, -0.5 * jnp.dot(s.p, 2 * b - ap), s.q),
            -0.5 * jnp.dot(x, r + b),
        )
        history = s.history.at[i].set(q)
        store = ~negative & is_kept[i]
        kept_iter, kept_x, kept_q, kept = s.kept_iter, s.kept_x, s.kept_q, s.kept
        if keep_iterates:
            slot = jnp.minimum(kept, slots - 1)
            kept_iter = jnp.where(store, kept_iter.at[slot].set(i), kept_iter)
            kept_x = jnp.where(store, kept_x.at[slot].set(x), kept_x)
            kept_q = jnp.where(store, kept_q.at[slot].set(q), kept_q)
            kept = kept + store
        converged = ~negative & (jnp.linalg.norm(r) <= tol * b_norm)
        stalled = jnp.array(False)
        if progress_eps is not None:
            k = jnp.maximum(10, jnp.ceil(0.1 * i).astype(jnp.int32))
            earlier = history[jnp.maximum(i - k, 0)]
            stalled = ~negative & ~converged & (i > k) & (q < 0)
            stalled = stalled & ((q - earlier) / q < k * progress_eps)
        reason = jnp.select(
            [negative, converged, stalled, i >= max_iter],
            [NEGATIVE_CURVATURE, TOLERANCE, PROGRESS, MAX_ITER],
            s.reason,
        )
        z = apply_m(r)
        rz = jnp.dot(r, z)
        return _Loop(
            i=i,
            x=x,
            r=jnp.where(negative, s.r, r),
            p=z + (rz / s.rz) * s.p,
            rz=rz,
            q=q,
            history=history,
            reason=reason,
            done=negative | converged | stalled | (i >= max_iter),
            x_is_kept=jnp.where(negative & ~take_p, s.x_is_kept, store),
            kept=kept,
            kept_iter=kept_iter,
            kept_x=kept_x,
            kept_q=kept_q,
            counts=counts,
        )

    s = jax.lax.while_loop(lambda s: ~s.done, step, state)
    kept, kept_iter, kept_x, kept_q = s.kept, s.kept_iter, s.kept_x, s.kept_q
    if keep_iterates:  # the final iterate is always the last stored one (torch: appended)
        append = (kept == 0) | ~s.x_is_kept
        slot = jnp.minimum(kept, slots - 1)
        kept_iter = jnp.where(append, kept_iter.at[slot].set(s.i), kept_iter)
        kept_x = jnp.where(append, kept_x.at[slot].set(s.x), kept_x)
        kept_q = jnp.where(append, kept_q.at[slot].set(s.q), kept_q)
        kept = kept + append
    result = CGResult(
        x=s.x,
        q=s.q,
        iterations=s.i,
        matvecs=matvecs + s.i,
        reason=s.reason,
        kept=kept,
        kept_iter=kept_iter,
        kept_x=kept_x,
        kept_q=kept_q,
    )
    return result, s.counts
