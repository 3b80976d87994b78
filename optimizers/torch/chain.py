"""Chained schedules: several optimizers one after another on the same parameters, as one run.

The PINN papers train with Adam, switch to L-BFGS, then to NysNewton-CG; a chain is that
schedule as one optimizer, so the run's oracle counters, wall clock and metrics rows continue
across the switches, and each step's record says which phase took it (``phase``, 0-based).

Every phase's optimizer is built with the chain, before the first step, so a bad hyperparameter
in a late phase fails at once rather than hours in. A phase starts from its optimizer's fresh
state at the parameters the previous phase left (L-BFGS's history and Adam's moments do not
carry over, as in the reference code). Every phase but the last runs its ``steps``; the last
runs to the end of the run. The chain's own ``param_groups`` mirror the active phase's, read
only: a learning-rate scheduler belongs on a phase, not on the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Chain(torch.optim.Optimizer):
    """``phases``: ``{"name", "impl", "hyperparameters", "steps"}`` per phase, ``steps`` None for
    the last and a positive integer for the others."""

    def __init__(self, params, phases: Sequence[dict[str, Any]]):
        from .registry import build_config  # the registry lists Chain itself

        params = list(params)
        if len(phases) < 2:
            raise ValueError(f"a chain needs at least two phases, got {len(phases)}")
        ends, end = [], 0
        for i, phase in enumerate(phases):
            steps = phase.get("steps")
            last = i == len(phases) - 1
            if last and steps is not None:
                raise ValueError(f"the last phase ({phase['name']}) runs to the end: no steps")
            if not last and (not isinstance(steps, int) or steps < 1):
                raise ValueError(f"phase {phase['name']} needs a positive number of steps")
            if phase["impl"] == "chain":
                raise ValueError(f"phase {phase['name']} is itself a chain")
            end = end + steps if not last else None
            ends.append(end)
        self.names = [phase["name"] for phase in phases]
        self.ends = ends  # the last step of each phase; None for the last phase
        self.phases = [
            build_config(p["impl"], dict(p["hyperparameters"]), f"phase {p['name']}").build(params)
            for p in phases
        ]
        self.t = 0
        super().__init__(params, {})
        self.param_groups[0]["lr"] = self.phases[0].param_groups[0].get("lr")

    def _phase_at(self, t: int) -> int:
        """The phase that takes the step after ``t`` steps."""
        return next(i for i, end in enumerate(self.ends) if end is None or t < end)

    @property
    def phase(self) -> int:
        """The phase that takes the next step."""
        return self._phase_at(self.t)

    @property
    def active(self) -> torch.optim.Optimizer:
        return self.phases[self.phase]

    @property
    def latest(self) -> torch.optim.Optimizer:
        """The phase that took the last step (the first before any step): its state is what
        the parameters were last preconditioned by."""
        return self.phases[self._phase_at(max(0, self.t - 1))]

    @property
    def switches(self) -> list[int]:
        """The steps after which the next phase takes over."""
        return [end for end in self.ends if end is not None]

    def step(self, closure):  # type: ignore[override]
        i = self.phase
        result = self.phases[i].step(closure)
        self.t += 1
        record = dict(result) if isinstance(result, dict) else {"loss": result}
        record["phase"] = i
        self.param_groups[0]["lr"] = self.phases[self.phase].param_groups[0].get("lr")
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"state": {"t": self.t, "phases": [opt.state_dict() for opt in self.phases]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict["state"]
        if len(state["phases"]) != len(self.phases):
            raise ValueError("state_dict has a different number of phases")
        for opt, phase in zip(self.phases, state["phases"], strict=True):
            opt.load_state_dict(phase)
        self.t = state["t"]
