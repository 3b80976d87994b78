"""Task name -> jax twin module, with ``build(settings, seed) -> JaxProblem``; the names are
``tasks/registry.py``'s and ``settings`` is the torch module's ``Settings``.

``JAX_TASK_NAMES`` costs no jax import: the config and the Snakefile read it for every DAG, as
they read ``optimizers/jax/registry.py``'s ``TWINS``. ``JAX_TASKS`` imports the twins (and jax)
on first access.
"""

from __future__ import annotations

import importlib
from types import ModuleType

JAX_TASK_NAMES: tuple[str, ...] = ("mnist_mlp", "pinn")
JAX_TASKS: dict[str, ModuleType]  # made by __getattr__ on first access


def __getattr__(name: str):
    if name != "JAX_TASKS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    tasks = {task: importlib.import_module(f"{__package__}.{task}") for task in JAX_TASK_NAMES}
    globals()["JAX_TASKS"] = tasks
    return tasks
