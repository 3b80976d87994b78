"""Name -> jax twin. The names are the torch registry's; a cell of backend ``jax`` runs the
twin of its entry's ``impl``, with the same hyperparameters (checked by the torch registry when
the config is read, since names and defaults are the same: the parity tests compare the
signatures).

The factories are imported on first use: the config and the Snakefile read ``TWINS`` for every
DAG and should not pay for importing jax.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

# impl -> (module in optimizers/jax, factory)
TWINS: dict[str, tuple[str, str]] = {
    "newton": ("newton", "newton"),
    "damped_newton": ("newton", "damped_newton"),
    "newton_cg": ("hessian_free", "newton_cg"),
    "hf_gn": ("hessian_free", "hf_gn"),
    "nncg": ("nncg", "nncg"),
}


def factory(impl: str) -> Callable:
    if impl not in TWINS:
        raise KeyError(f"no jax twin of {impl!r}; jax has {sorted(TWINS)}")
    module, name = TWINS[impl]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def build(impl: str, hyperparameters: dict[str, Any], seed: int):
    """The twin with ``hyperparameters``; a ``seed`` hyperparameter left None is the cell's
    seed (the torch twin draws it from the global RNG, which the cell's seed seeds)."""
    make = factory(impl)
    hyper = dict(hyperparameters)
    if "seed" in inspect.signature(make).parameters and hyper.get("seed") is None:
        hyper["seed"] = seed
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    return make(**hyper)
