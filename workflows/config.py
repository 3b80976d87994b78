"""The benchmark grid: validate the YAML config, then cross it into cells.

Everything is checked here, before Snakemake builds a DAG or a cell starts: the JSON Schema
(structure and value ranges), the scale, every optimizer's implementation and hyperparameter
names, every task's module and settings. Each failure is one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hessbench.optimizers.torch.registry import ConfigError, build_config
from hessbench.tasks.registry import TASKS

CONFIG_DIR = Path(__file__).parent / "config"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
SCHEMA = CONFIG_DIR / "schema.yaml"


@dataclass(frozen=True)
class Cell:
    """One Snakemake job: everything the harness needs, JSON-serialisable."""

    scale: str
    task: str  # the task instance's name in the config (a results folder)
    task_module: str  # the module in tasks/ that builds it
    settings: dict[str, Any]
    optimizer: str  # the optimizer entry's name in the config (a results folder)
    impl: str
    hyperparameters: dict[str, Any]
    backend: str
    seed: int
    log_every: int = 25
    threads: int = 1
    device: str = "auto"
    wandb_project: str = "hessbench"
    diagnostics: dict[str, Any] | None = None  # curvature diagnostics settings; None: off

    @property
    def path(self) -> str:
        return f"{self.scale}/{self.task}/{self.optimizer}/{self.backend}/seed{self.seed}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(**json.loads(text))


@dataclass
class Plan:
    scale: str
    cells: list[Cell] = field(default_factory=list)

    def cell(self, task: str, optimizer: str, backend: str, seed: int | str) -> Cell:
        for c in self.cells:
            if (c.task, c.optimizer, c.backend, c.seed) == (task, optimizer, backend, int(seed)):
                return c
        raise KeyError(f"no cell {task}/{optimizer}/{backend}/seed{seed} in scale {self.scale}")

    def cell_of(self, wildcards) -> Cell:
        """The cell a Snakemake job's wildcards name."""
        return self.cell(wildcards.task, wildcards.optimizer, wildcards.backend, wildcards.seed)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<config>"


def validate(config: dict[str, Any]) -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)
    )
    if errors:
        first = errors[0]
        hint = ""
        if isinstance(first.instance, str) and _is_float(first.instance):
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        raise ConfigError(f"config error at {_path(first)}: {first.message}{hint}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def task_settings(module_name: str, values: dict[str, Any], where: str):
    """The task module's ``Settings`` with ``values`` applied; unknown keys name themselves."""
    if module_name not in TASKS:
        raise ConfigError(f"{where}.task: unknown task {module_name!r}; known: {sorted(TASKS)}")
    cls = TASKS[module_name].Settings
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{where}.{key}: task {module_name} has no setting {key!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def resolve(config: dict[str, Any]) -> Plan:
    """Validate ``config`` (every scale, not just the selected one) and return the cells of its
    selected scale."""
    validate(config)
    scale = config["scale"]
    if scale not in config["scales"]:
        raise ConfigError(
            f"config error at scale: {scale!r} is not one of {sorted(config['scales'])}"
        )
    optimizers = {}
    for name, entry in config["optimizers"].items():
        hyper = {k: v for k, v in entry.items() if k != "impl"}
        build_config(entry["impl"], hyper, where=f"config error at optimizers.{name}")
        optimizers[name] = (entry["impl"], hyper)
    plans = {name: _plan(config, name, optimizers) for name in config["scales"]}
    return plans[scale]


def _plan(config: dict[str, Any], scale: str, optimizers: dict[str, tuple]) -> Plan:
    scale_cfg = config["scales"][scale]
    tasks = {}
    for tname, entry in scale_cfg["tasks"].items():
        module = entry.get("task", tname)
        values = {k: v for k, v in entry.items() if k != "task"}
        task_settings(module, values, f"config error at scales.{scale}.tasks.{tname}")
        tasks[tname] = (module, values)
    per_optimizer = scale_cfg.get("optimizer_settings", {})
    for name in per_optimizer:
        if name not in optimizers:
            raise ConfigError(
                f"config error at scales.{scale}.optimizer_settings.{name}: "
                f"no optimizer entry {name!r}"
            )
    diagnostics = dict(scale_cfg.get("diagnostics") or {})
    diagnosed_seeds = diagnostics.pop("seeds", scale_cfg["seeds"])
    plan = Plan(scale=scale)
    grid = itertools.product(
        tasks.items(), optimizers.items(), config["backends"], scale_cfg["seeds"]
    )
    for (tname, (module, values)), (oname, (impl, hyper)), backend, seed in grid:
        # An optimizer's settings at this scale (e.g. L-BFGS's larger batch) override the task's.
        own = per_optimizer.get(oname, {})
        where = f"config error at scales.{scale}.optimizer_settings.{oname} (task {tname})"
        settings = dataclasses.asdict(task_settings(module, {**values, **own}, where))
        settings = json.loads(json.dumps(settings))  # the form a cell has after its JSON trip
        plan.cells.append(
            Cell(
                scale=scale,
                task=tname,
                task_module=module,
                settings=settings,
                optimizer=oname,
                impl=impl,
                hyperparameters=hyper,
                backend=backend,
                seed=seed,
                log_every=scale_cfg.get("log_every", 25),
                threads=scale_cfg.get("threads", 1),
                device=scale_cfg.get("device", "auto"),
                wandb_project=config.get("wandb_project", "hessbench"),
                diagnostics=diagnostics if diagnostics and seed in diagnosed_seeds else None,
            )
        )
    return plan


def load(path: Path = DEFAULT_CONFIG, **overrides: Any) -> Plan:
    config = yaml.safe_load(Path(path).read_text())
    config.update(overrides)
    return resolve(config)
