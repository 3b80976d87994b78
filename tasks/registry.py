"""Task name -> module. A task module has ``Settings``, ``build`` and ``infeasible``."""

from __future__ import annotations

from types import ModuleType

from . import mnist_mlp, pinn

TASKS: dict[str, ModuleType] = {"mnist_mlp": mnist_mlp, "pinn": pinn}
