"""What every optimizer that consumes the Objective's oracles shares: one flat parameter list,
one learning rate, state that belongs to the whole vector rather than to a tensor."""

from __future__ import annotations

from typing import Any

import torch

from .objective import Objective


def check_lr(lr) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


class ObjectiveOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose ``step`` takes an :class:`Objective` (not a bare
    closure) over the same parameters. Its methods precondition the whole parameter vector, so
    it takes a single parameter group; ``lr`` is read from it at every step (schedulers work)."""

    def __init__(self, params, defaults: dict[str, Any]):
        check_lr(defaults.get("lr", 1.0))
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group")
        self.flat_params = list(self.param_groups[0]["params"])

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @property
    def vector_state(self) -> dict[str, Any]:
        """State of the whole vector, kept under the first tensor so ``state_dict`` saves it."""
        return self.state[self.flat_params[0]]

    def objective(self, closure: Objective) -> Objective:
        if not isinstance(closure, Objective):
            raise TypeError(f"{type(self).__name__}.step needs the Objective, not a bare closure")
        ours = closure.params
        if len(ours) != len(self.flat_params) or any(
            a is not b for a, b in zip(ours, self.flat_params, strict=False)
        ):
            raise ValueError("the objective's params must be the optimizer's, in the same order")
        return closure


def check_betas(betas) -> None:
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


class RandomizedOptimizer(ObjectiveOptimizer):
    """An optimizer that draws random vectors. The draws come from its own
    ``torch.Generator``, never the global RNG (reseeding that would also reseed data order and
    dropout); it is seeded by ``seed``, or when that is None by one draw from the global RNG at
    construction (so a seeded run is reproducible), and its state is saved in ``state_dict``."""

    def __init__(self, params, defaults: dict[str, Any], seed: int | None):
        super().__init__(params, defaults)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator(device=self.flat_params[0].device).manual_seed(seed)

    def state_dict(self):
        out = super().state_dict()
        out["generator"] = self.generator.get_state()
        return out

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        generator = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        if generator is not None:
            self.generator.set_state(generator)
