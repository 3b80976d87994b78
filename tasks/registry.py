"""Task name -> module. A task module has ``Settings``, ``build`` and ``infeasible``, and
``inputs(settings)`` if its cells read files a Snakemake rule prepares."""

from __future__ import annotations

from types import ModuleType

from . import gpt2, mnist_mlp, pinn, roberta_ft

TASKS: dict[str, ModuleType] = {
    "mnist_mlp": mnist_mlp,
    "pinn": pinn,
    "gpt2": gpt2,
    "roberta_ft": roberta_ft,
}
