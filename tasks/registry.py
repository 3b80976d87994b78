"""Task name -> module. A task module has ``Settings``, ``build`` and ``infeasible``;
``inputs(settings)`` if its cells read files a Snakemake rule prepares; ``check_data(settings)``
if they read files, raising ``DataError`` for a missing or changed one before any job runs."""

from __future__ import annotations

from types import ModuleType

from . import gpt2, mnist_mlp, pinn, roberta_ft

TASKS: dict[str, ModuleType] = {
    "mnist_mlp": mnist_mlp,
    "pinn": pinn,
    "gpt2": gpt2,
    "roberta_ft": roberta_ft,
}
