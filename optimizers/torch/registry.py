"""Name -> implementation for every torch optimizer, and the check of a config entry against it.

Baselines are hyperparameter dataclasses that build a stock ``torch.optim`` class with our
defaults. The methods written here are their own classes: their constructor signature *is* the
hyperparameter list, and a config entry is checked by building the optimizer once on a dummy
parameter, so every constructor check runs before a DAG is built. Value ranges shared by many
optimizers (lr > 0, ...) are also in the config schema (workflows/config/schema.yaml); each
failure is one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .baselines import AdamWConfig, LBFGSConfig, SGDConfig
from .chain import Chain
from .diagonal import AdaHessian, Sophia
from .hessian_free import HessianFreeGN, NewtonCG
from .hizoo import HiZOO, HiZOOL
from .newton import DampedNewton, Newton
from .nncg import NNCG
from .zeroth_order import MeZO, ZOAdam

OPTIMIZERS: dict[str, type] = {
    "sgd": SGDConfig,
    "adamw": AdamWConfig,
    "lbfgs": LBFGSConfig,
    "newton": Newton,
    "damped_newton": DampedNewton,
    "newton_cg": NewtonCG,
    "hf_gn": HessianFreeGN,
    "nncg": NNCG,
    "adahessian": AdaHessian,
    "sophia": Sophia,
    "mezo": MeZO,
    "zo_adam": ZOAdam,
    "hizoo": HiZOO,
    "hizoo_l": HiZOOL,
    "chain": Chain,
}


class ConfigError(ValueError):
    """A bad configuration value; the message names the offending key."""


@dataclass(frozen=True)
class Configured:
    """An optimizer class with checked hyperparameters, built once the parameters exist."""

    cls: type
    hyperparameters: dict[str, Any]

    def build(self, params) -> torch.optim.Optimizer:
        return self.cls(params, **self.hyperparameters)


def hyperparameter_names(cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return [name for name in inspect.signature(cls).parameters if name != "params"]


def build_config(impl: str, hyperparameters: dict[str, Any], where: str = "optimizer"):
    """Check ``hyperparameters`` against ``impl`` and return an object whose ``build(params)``
    makes the optimizer."""
    if impl not in OPTIMIZERS:
        raise ConfigError(
            f"{where}.impl: unknown optimizer {impl!r}; known: {', '.join(sorted(OPTIMIZERS))}"
        )
    cls = OPTIMIZERS[impl]
    names = hyperparameter_names(cls)
    for key in hyperparameters:
        if key not in names:
            raise ConfigError(
                f"{where}.{key}: {impl} has no hyperparameter {key!r}; it has {names}"
            )
    if "betas" in hyperparameters:
        hyperparameters = {**hyperparameters, "betas": tuple(hyperparameters["betas"])}
    if dataclasses.is_dataclass(cls):
        return cls(**hyperparameters)
    configured = Configured(cls, dict(hyperparameters))
    try:
        configured.build([torch.zeros(1, requires_grad=True)])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {impl}: {err}") from err
    return configured
