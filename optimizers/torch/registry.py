"""Name -> hyperparameter dataclass for every torch optimizer; the dataclass builds it.

Value ranges shared by many optimizers (lr > 0, ...) are checked by the config schema
(workflows/config/schema.yaml); here a config entry's implementation name and hyperparameter
names are checked, each failure one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .baselines import AdamWConfig, LBFGSConfig, SGDConfig

OPTIMIZERS: dict[str, type] = {
    "sgd": SGDConfig,
    "adamw": AdamWConfig,
    "lbfgs": LBFGSConfig,
}


class ConfigError(ValueError):
    """A bad configuration value; the message names the offending key."""


def build_config(impl: str, hyperparameters: dict[str, Any], where: str = "optimizer"):
    """Check ``hyperparameters`` against ``impl``'s dataclass and return an instance."""
    if impl not in OPTIMIZERS:
        raise ConfigError(
            f"{where}.impl: unknown optimizer {impl!r}; known: {', '.join(sorted(OPTIMIZERS))}"
        )
    cls = OPTIMIZERS[impl]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in hyperparameters:
        if key not in fields:
            raise ConfigError(
                f"{where}.{key}: {impl} has no hyperparameter {key!r}; it has {sorted(fields)}"
            )
    if "betas" in hyperparameters:
        hyperparameters = {**hyperparameters, "betas": tuple(hyperparameters["betas"])}
    return cls(**hyperparameters)
