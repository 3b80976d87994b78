"""The randomized Nyström approximation and its preconditioner: ``optimizers/torch/nystrom.py``
in jax (see there for the algorithm and its shift). Differences of form only:

- the test matrix comes from a jax ``key``, not a torch generator, so the two twins draw
  different matrices and agree only where the result does not depend on the draw;
- the s products of the sketch are one batched call ``matvec(V, counts) -> (A V, counts)``
  (:func:`columnwise` builds it from a counted ``apply``), not s calls;
- every branch (non-finite sketch, Cholesky fallback, failed fallback) is a ``lax.cond`` on
  traced values: ``fallback`` is a traced bool and ``shift`` a traced scalar;
- ``inverse`` is a function of the approximation, not a method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .objective import Counts


class NystromApprox(NamedTuple):
    basis: jax.Array  # U, n x s, orthonormal columns
    eigenvalues: jax.Array  # Lambda, s, decreasing, >= 0
    fallback: jax.Array  # bool
    shift: jax.Array  # nan for the zero approximation


def columnwise(
    apply: Callable[[jax.Array, Counts], tuple[jax.Array, Counts]],
) -> Callable[[jax.Array, Counts], tuple[jax.Array, Counts]]:
    """(V, counts) -> (A V, counts) from a counted ``apply(v, counts)``, vmapped over V's
    columns. Each column's count comes from ``apply`` itself (run from zero counts, then summed),
    so s columns cost whatever s calls of ``apply`` are charged."""

    def matvec(v: jax.Array, counts: Counts) -> tuple[jax.Array, Counts]:
        products, each = jax.vmap(apply, in_axes=(1, None), out_axes=(1, 0))(v, Counts.zero())
        return products, counts.add(*(c.sum(dtype=c.dtype) for c in each))

    return matvec


def nystrom(
    matvec: Callable[[jax.Array, Counts], tuple[jax.Array, Counts]],
    n: int,
    rank: int,
    key: jax.Array,
    dtype,
    counts: Counts,
) -> tuple[NystromApprox, Counts]:
    """Rank-min(rank, n) Nyström approximation of the symmetric operator ``matvec`` on R^n
    (batched over columns, counted), from one Gaussian draw of ``key``."""
    if rank < 1 or n < 1:
        raise ValueError(f"need rank >= 1 and n >= 1, got rank {rank}, n {n}")
    s = min(rank, n)
    phi, _ = jnp.linalg.qr(jax.random.normal(key, (n, s), dtype))
    y, counts = matvec(phi, counts)
    eye = jnp.eye(s, dtype=dtype)
    nothing = NystromApprox(phi, jnp.zeros(s, dtype), jnp.array(True), jnp.array(jnp.nan, dtype))

    def factor(core):
        chol = jnp.linalg.cholesky(core)  # NaNs where it fails
        return chol, jnp.all(jnp.isfinite(chol))

    def approximate(y):
        shift = math.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(y)
        y = y + shift * phi
        core = phi.T @ y
        core = (core + core.T) / 2
        chol, ok = factor(core)

        def retry(_):
            extra = jnp.abs(jnp.linalg.eigvalsh(core)[0]) + shift
            return (*factor(core + extra * eye), y + extra * phi, shift + extra)

        chol, ok_after, y, shift_used = jax.lax.cond(
            ok, lambda _: (chol, ok, y, shift), retry, None
        )

        def decompose(_):
            b = solve_triangular(chol, y.T, lower=True).T
            u, sigma, _ = jnp.linalg.svd(b, full_matrices=False)
            return NystromApprox(u, jnp.maximum(sigma**2 - shift_used, 0), ~ok, shift_used)

        return jax.lax.cond(ok_after, decompose, lambda _: nothing, None)

    finite = jnp.all(jnp.isfinite(y))
    return jax.lax.cond(finite, approximate, lambda _: nothing, y), counts


def inverse(approx: NystromApprox, mu: float) -> Callable[[jax.Array], jax.Array]:
    """x -> P^-1 x, P^-1 = (lambda_s + mu) U (Lambda + mu)^-1 U^T + (I - U U^T)."""
    if not mu > 0:
        raise ValueError(f"the preconditioner needs mu > 0, got {mu}")
    u, lam = approx.basis, approx.eigenvalues
    excess = (lam[-1] + mu) / (lam + mu) - 1

    def apply(x: jax.Array) -> jax.Array:
        return x + u @ (excess * (u.T @ x))

    return apply
