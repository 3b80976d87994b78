"""HiZOO and HiZOO-L (Zhao et al. 2025; Yanjun-Zhao/HiZOO): SPSA along H^-1/2 z with a
diagonal Hessian estimate H from the same forward passes plus one at theta. The seed trick,
the pieces and the forward passes are the SPSA base's (zeroth_order.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from .objective import Objective
from .zeroth_order import _ZerothOrder


class HiZOO(_ZerothOrder):
    """HiZOO: SPSA along H^-1/2 z with a diagonal Hessian estimate H (float32, starts at 1,
    stored as H^-1/2).

    Per step, one seed: L0 = L(theta); L+- = L(theta +- eps H^-1/2 z) (three forward passes);
    c = |L+ + L- - 2 L0| / (2 eps^2); H <- (1 - a) H + a |c H w|; then
    theta -= lr ((L+ - L-) / (2 eps) z / sqrt(H) + wd theta) with the updated H, a = ``smoothing``.

    ``estimator`` picks w, where the paper and its code disagree:
    - ``"reference"`` (default; the code that produced the paper's numbers): w = z^2. For a
      quadratic with Hessian A, E[c H w] = diag(A) + H tr(H^-1/2 A H^-1/2) / 2: the trace term
      dominates, so H mostly learns one scale for the whole model;
    - ``"paper"`` (Eq. 5): w = z^2 - 1, whose expectation before the absolute value is exactly
      diag(A); the absolute value (to keep H > 0) biases it.
    In both, H's update is a product by (1 - a) + a c |w| > 0, so H stays positive.
    ``a = 0`` is MeZO at one more forward pass, step for step (tested).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 smoothing: float = 1e-8, estimator: str = "reference",
                 seed: int | None = None):  # fmt: skip
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if estimator not in ("reference", "paper"):
            raise ValueError(f"estimator must be 'reference' or 'paper', got {estimator!r}")
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, smoothing=smoothing)
        super().__init__(params, defaults, seed)
        self.estimator = estimator
        self._init_hessian()

    # -- the Hessian's storage: one float32 number per parameter ------------------------------
    # Kept as s = H^-1/2, what every pass multiplies z by: the three perturbation passes then
    # take no square root, and H's multiplicative update is s <- s ((1 - a) + a c |w|)^-1/2.
    def _init_hessian(self) -> None:
        for p in self.flat_params:
            self.state[p]["hessian_inv_sqrt"] = torch.ones_like(p, dtype=torch.float32)

    def _inverse_sqrt(self) -> list:
        """Per parameter, what :meth:`_piece_scale` needs to give H^-1/2 on a piece."""
        pairs = zip(self.flat_params, self.views, strict=True)
        return [self.state[p]["hessian_inv_sqrt"].view(v.shape) for p, v in pairs]

    def _piece_scale(self, prepared, i: int, r0: int, r1: int) -> Tensor:
        return prepared[i][r0:r1]

    def dense_hessian(self, p: Tensor) -> Tensor:
        """The diagonal H this state stands for, shaped like ``p`` (tests, diagnostics)."""
        return self.state[p]["hessian_inv_sqrt"].square().reciprocal()

    def _stats(self, inverse, low, high) -> dict[str, Tensor]:
        return {
            "hessian_min": low,
            "hessian_max": high,
            # RMS size per coordinate of the perturbation eps H^-1/2 z
            "perturbation_scale": self.param_groups[0]["eps"] * (inverse / self.numel).sqrt(),
        }

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch casts loaded state to the parameter's dtype; H stays float32 (exact round trip)
        for state in self.state.values():
            for key in ("hessian_inv_sqrt", "hessian", "hessian_row", "hessian_col"):
                if key in state:
                    state[key] = state[key].float()

    def _weights(self, z: Tensor) -> Tensor:
        w = z.float().square()
        return w.sub_(1).abs_() if self.estimator == "paper" else w

    def _absorb_and_descend(self, seed, curvature, step_size) -> dict[str, Tensor]:
        """One pass: H <- H ((1 - a) + a c |w|) on each piece, then the descent on it; returns
        the statistics of the new H, reduced piece by piece (a whole-tensor 1 / H would be a
        transient as large as the largest parameter)."""
        a = self.param_groups[0]["smoothing"]
        inverses, lows, highs = [], [], []
        for i, r0, r1, z in self._draws(seed):
            s = self.state[self.flat_params[i]]["hessian_inv_sqrt"].view(self.views[i].shape)
            s = s[r0:r1]
            if a:
                s.mul_(self._weights(z).mul_(a * curvature).add_(1 - a).rsqrt_())
            self.views[i][r0:r1].add_(z.mul_(s), alpha=-step_size)
            flat = s.view(-1)
            low, high = s.aminmax()
            inverses.append(flat.dot(flat))
            lows.append(low)
            highs.append(high)
        return self._stats(
            torch.stack(inverses).sum(),
            torch.stack(highs).max().square().reciprocal(),
            torch.stack(lows).min().square().reciprocal(),
        )

    # -- the step ---------------------------------------------------------------------------
    def _perturb(self, seed: int, scale: float) -> None:  # type: ignore[override]
        prepared = self._inverse_sqrt()
        for i, r0, r1, z in self._draws(seed):
            # z H^-1/2 then the add MeZO does: at H = 1 the same rounding, so a = 0 is MeZO
            z.mul_(self._piece_scale(prepared, i, r0, r1))
            self.views[i][r0:r1].add_(z, alpha=scale)

    @torch.no_grad()
    def step(self, closure: Objective) -> dict:  # type: ignore[override]
        objective = self.objective(closure)
        group = self.param_groups[0]
        eps = group["eps"]
        with self._inference(objective):
            base = objective.loss().item()
            seed = self._new_seed()
            plus, minus = self._probe(objective, seed)
        curvature = abs(plus + minus - 2 * base) / (2 * eps**2)
        projected = (plus - minus) / (2 * eps)
        if group["weight_decay"]:
            torch._foreach_mul_(self.decayed, 1 - group["lr"] * group["weight_decay"])
        stats = self._absorb_and_descend(seed, curvature, group["lr"] * projected)
        self.vector_state["step"] += 1
        return {"loss": base, "projected_grad": projected, "curvature": curvature, **stats}


class HiZOOL(HiZOO):
    """HiZOO-L (seed 001 section 3.3, Appendix D.2): each matrix's H is kept Adafactor-style as
    a row factor R (rows) and a column factor C (cols), H = R C^T / sum(R), both starting where
    H = 1. The step's estimate E = c H |w| updates them by its row and column sums,
    R <- (1 - a) R + a E 1, C <- (1 - a) C + a 1^T E (E is never formed: two matrix-vector
    products per piece). Tensors of one row (biases, norms) keep a full diagonal. Matrices are
    the (shape[0], rest) view of tensors of two or more dimensions. The factors change only
    after the whole estimate is summed, so the descent takes one more pass over z (five
    regenerations against HiZOO's four). State: O(rows + cols) per matrix."""

    def _factored(self, i: int) -> bool:
        return self.views[i].shape[0] > 1

    def _init_hessian(self) -> None:
        for i, (p, v) in enumerate(zip(self.flat_params, self.views, strict=True)):
            rows, cols = v.shape
            state = self.state[p]
            kw = dict(dtype=torch.float32, device=p.device)
            if self._factored(i):
                state["hessian_row"] = torch.full((rows,), float(cols), **kw)
                state["hessian_col"] = torch.full((cols,), float(rows), **kw)
            else:
                state["hessian"] = torch.ones(cols, **kw)

    def _inverse_sqrt(self) -> list:
        prepared = []
        for i, p in enumerate(self.flat_params):
            state = self.state[p]
            if self._factored(i):
                row, col = state["hessian_row"], state["hessian_col"]
                prepared.append((row.rsqrt().unsqueeze(1), (col / row.sum()).rsqrt()))
            else:
                prepared.append(state["hessian"].rsqrt().unsqueeze(0))
        return prepared

    def _piece_scale(self, prepared, i: int, r0: int, r1: int) -> Tensor:
        if self._factored(i):
            row, col = prepared[i]
            return row[r0:r1] * col
        return prepared[i]

    def dense_hessian(self, p: Tensor) -> Tensor:
        i = next(k for k, q in enumerate(self.flat_params) if q is p)
        state = self.state[p]
        if self._factored(i):
            row, col = state["hessian_row"], state["hessian_col"]
            return (torch.outer(row, col) / row.sum()).view(p.shape)
        return state["hessian"].view(p.shape)

    def _factor_stats(self) -> dict[str, Tensor]:
        inverse, lows, highs = 0.0, [], []
        for i, p in enumerate(self.flat_params):
            state = self.state[p]
            if self._factored(i):
                row, col = state["hessian_row"], state["hessian_col"]
                scale = row.sum()
                inverse = inverse + row.reciprocal().sum() * col.reciprocal().sum() * scale
                lows.append(row.min() * col.min() / scale)
                highs.append(row.max() * col.max() / scale)
            else:
                h = state["hessian"]
                inverse = inverse + h.reciprocal().sum()
                lows.append(h.min())
                highs.append(h.max())
        return self._stats(inverse, torch.stack(lows).min(), torch.stack(highs).max())

    def _absorb_and_descend(self, seed, curvature, step_size) -> dict[str, Tensor]:
        a = self.param_groups[0]["smoothing"]
        if a:
            sums = {}
            for i, r0, r1, z in self._draws(seed):
                w = self._weights(z)
                state = self.state[self.flat_params[i]]
                if not self._factored(i):
                    h = state["hessian"]
                    sums[i] = (h * w.view(-1) * curvature,)
                    continue
                row, col = state["hessian_row"], state["hessian_col"]
                # E = c R_i C_j / S w_ij on rows r0:r1, summed along each axis
                scale = curvature / row.sum()
                row_part = row[r0:r1] * (w @ col) * scale
                col_part = (row[r0:r1] @ w) * col * scale
                old = sums.get(i, (torch.zeros_like(row), torch.zeros_like(col)))
                old[0][r0:r1] = row_part
                sums[i] = (old[0], old[1] + col_part)
            for i, parts in sums.items():
                state = self.state[self.flat_params[i]]
                if self._factored(i):
                    state["hessian_row"].lerp_(parts[0], a)
                    state["hessian_col"].lerp_(parts[1], a)
                else:
                    state["hessian"].lerp_(parts[0], a)
        prepared = self._inverse_sqrt()
        for i, r0, r1, z in self._draws(seed):
            z.mul_(self._piece_scale(prepared, i, r0, r1))
            self.views[i][r0:r1].add_(z, alpha=-step_size)
        return self._factor_stats()
