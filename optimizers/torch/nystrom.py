"""Randomized Nyström approximation of a symmetric positive semi-definite operator, and the
preconditioner NysNewton-CG builds from it (Rathore et al. 2024, after Frangella, Tropp and
Udell 2023, "Randomized Nyström preconditioning").

Given only ``matvec`` (here a Hessian-vector product) on flat vectors of length n, a sketch of
s = ``rank`` products gives A_hat = U diag(Lambda) U^T with U (n x s) orthonormal and
Lambda >= 0 in decreasing order: the best rank-s view of A that the sketch allows, exact when
rank(A) <= s, and never above A (A - A_hat is PSD). Storage is U, s * n numbers; a refresh also
holds the test matrix, the sketch and B, three more n x s matrices, for a moment.

Everything here is a pure function of its inputs (the random test matrix comes from the
caller's generator), so the optimizer and the diagnostics share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NystromApprox:
    """A_hat = U diag(Lambda) U^T: ``basis`` is U (n x s, orthonormal columns), ``eigenvalues``
    is Lambda (s, decreasing, >= 0). ``fallback`` says the stabilising shift was not enough for
    the Cholesky factorisation (an indefinite operator) and a larger one was used; ``shift`` is
    the shift finally used (nan when unknown, e.g. rebuilt from saved state)."""

    basis: Tensor
    eigenvalues: Tensor
    fallback: bool = False
    shift: float = math.nan

    def inverse(self, mu: float) -> Callable[[Tensor], Tensor]:
        """x -> P^-1 x for the Nyström preconditioner of A + mu I,
        P^-1 = (lambda_s + mu) U (Lambda + mu)^-1 U^T + (I - U U^T), lambda_s = Lambda[-1].

        On range(U), P^-1 (A_hat + mu I) is (lambda_s + mu) I; off it, A_hat is zero and P^-1
        leaves vectors alone, so P^-1 (A + mu I) is clustered near lambda_s + mu and mu when
        A's tail past the s-th eigenvalue is small."""
        return self._power(mu, 1.0)

    def inverse_sqrt(self, mu: float) -> Callable[[Tensor], Tensor]:
        """x -> P^-1/2 x, (lambda_s + mu)^1/2 U (Lambda + mu)^-1/2 U^T + (I - U U^T): the
        symmetric split that a spectrum of P^-1/2 (A + mu I) P^-1/2 needs."""
        return self._power(mu, 0.5)

    def _power(self, mu: float, exponent: float) -> Callable[[Tensor], Tensor]:
        if not mu > 0:
            raise ValueError(f"the preconditioner needs mu > 0, got {mu}")
        u = self.basis
        scale = ((self.eigenvalues[-1] + mu) / (self.eigenvalues + mu)).pow(exponent)
        # U s U^T x + (x - U U^T x) = x + U ((s - 1) U^T x): two products by U, not three
        excess = scale - 1

        def apply(x: Tensor) -> Tensor:
            """``x`` is one flat vector of length n."""
            return x + u @ (excess * (u.T @ x))

        return apply


def nystrom(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    rank: int,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> NystromApprox:
    """Randomized Nyström approximation of the symmetric operator ``matvec`` on R^n, of rank
    s = min(rank, n), from s products (one per column of the test matrix).

    Phi = qr(randn(n, s)); Y = A Phi; nu = sqrt(n) eps ||Y||_F; Y_nu = Y + nu Phi;
    C = chol(Phi^T Y_nu); B = Y_nu C^-T = U S V^T; Lambda = max(S^2 - nu, 0).

    The shift nu makes Phi^T Y_nu positive definite in floating point even when A Phi is
    rank deficient (A of rank < s): it is the Nyström approximation of A + nu I, with nu
    subtracted again at the end, and nu is large enough against the round-off in Y that the
    factorisation is stable yet small enough not to show in Lambda. An indefinite A (a Hessian
    away from a minimum) can still make Phi^T Y_nu indefinite: then the shift grows by
    |lambda_min(Phi^T Y_nu)| + nu and ``fallback`` is set. A sketch that is not finite, or a
    factorisation that fails even then (A Phi = 0), gives Lambda = 0, whose preconditioner is
    the identity.
    """
    if rank < 1 or n < 1:
        raise ValueError(f"need rank >= 1 and n >= 1, got rank {rank}, n {n}")
    s = min(rank, n)
    omega = torch.randn(n, s, generator=generator, dtype=dtype, device=device)
    phi, _ = torch.linalg.qr(omega)
    y = torch.stack([matvec(phi[:, j].contiguous()) for j in range(s)], dim=1)
    if not bool(torch.isfinite(y).all()):
        return _nothing(phi)
    shift = math.sqrt(n) * torch.finfo(dtype).eps * torch.linalg.matrix_norm(y).item()
    y.add_(phi, alpha=shift)  # Y_nu, in place: the sketch itself is not needed again
    core = phi.T @ y
    core = (core + core.T) / 2  # symmetric up to round-off; Cholesky reads one triangle
    factor, info = torch.linalg.cholesky_ex(core)
    fallback = bool(info.item())
    if fallback:
        extra = abs(torch.linalg.eigvalsh(core)[0].item()) + shift
        y.add_(phi, alpha=extra)
        core.diagonal().add_(extra)
        shift += extra
        factor, info = torch.linalg.cholesky_ex(core)
        if info.item():
            return _nothing(phi)
    # B = Y_nu C^-T, i.e. B^T = C^-1 Y_nu^T (C lower triangular)
    b = torch.linalg.solve_triangular(factor, y.T, upper=False).T
    del y
    u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    eigenvalues = (sigma.square() - shift).clamp(min=0)
    return NystromApprox(u, eigenvalues, fallback, shift)


def _nothing(phi: Tensor) -> NystromApprox:
    """The zero approximation on Phi's range: P^-1 is then the identity."""
    zeros = torch.zeros(phi.shape[1], dtype=phi.dtype, device=phi.device)
    return NystromApprox(phi, zeros, fallback=True, shift=math.nan)
