"""The benchmark grid: validate the YAML config, then cross it into cells.

Everything is checked here, before Snakemake builds a DAG or a cell starts: the JSON Schema
(structure and value ranges), the scale, every optimizer's implementation and hyperparameter
names, every task's module and settings. Each failure is one :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hessbench.optimizers.jax.registry import TWINS
from hessbench.optimizers.torch.registry import ConfigError, build_config
from hessbench.tasks.base import DataError
from hessbench.tasks.jax.registry import JAX_TASK_NAMES
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
    checkpoint_minutes: float = 10.0  # of the loop's time between two checkpoints

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
    # per task instance: what each of its cell jobs asks of the scheduler (rule `cell`)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per backend other than torch, the task instances and optimizer entries it has no
    # version of: their cells run on torch alone (the Snakefile says so)
    torch_only: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def torch_only_message(self) -> str | None:
        lines = []
        for backend, missing in sorted(self.torch_only.items()):
            lines.append(
                f"{backend} has no version of tasks {sorted(missing['tasks']) or '-'} and "
                f"optimizers {sorted(missing['optimizers']) or '-'}: "
                f"their cells are not run on {backend}"
            )
        return "\n".join(lines) or None

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
        elif first.instance in ("true", "false"):
            hint = " (Snakemake's --config reads True and False as booleans, not true and false)"
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


def cell_inputs(cell: Cell) -> list[str]:
    """Files the cell's task reads that a rule makes first (the GPT-2 token bins)."""
    module = TASKS[cell.task_module]
    if not hasattr(module, "inputs"):
        return []
    return module.inputs(task_settings(cell.task_module, cell.settings, f"cell {cell.path}"))


def check_data(plan: Plan) -> None:
    """The data files every cell of ``plan`` reads, before any job runs: a missing or changed
    one stops the run with one message naming it (the task's ``check_data``)."""
    checked = set()
    for cell in plan.cells:
        check = getattr(TASKS[cell.task_module], "check_data", None)
        key = (cell.task_module, json.dumps(cell.settings, sort_keys=True))
        if check is None or key in checked:
            continue
        checked.add(key)
        try:
            check(task_settings(cell.task_module, cell.settings, f"cell {cell.path}"))
        except DataError as err:
            where = f"data error in task {cell.task} at scale {plan.scale}"
            raise ConfigError(f"{where}: {err}") from None


def parse_chain(text: str, where: str) -> list[tuple[str, int | None]]:
    """``"adam:1000 -> lbfgs:2000 -> nncg"`` (or with arrows) as [(entry, steps), ..., (entry,
    None)]: every phase but the last names its steps; the last runs to the end."""
    phases = []
    for part in re.split(r"\s*(?:->|→)\s*", text.strip()):
        name, _, steps = part.partition(":")
        if not name or (steps and not steps.isdigit()) or (steps and int(steps) < 1):
            raise ConfigError(f"{where}: bad phase {part!r} in {text!r}; write name:steps -> name")
        phases.append((name, int(steps) if steps else None))
    if len(phases) < 2:
        raise ConfigError(f"{where}: a chain needs at least two phases, got {text!r}")
    if any(steps is None for _, steps in phases[:-1]) or phases[-1][1] is not None:
        raise ConfigError(
            f"{where}: every phase but the last needs its steps, and the last runs to the end "
            f"(no steps): {text!r}"
        )
    return phases


def _entry(entry: dict[str, Any], where: str) -> tuple[str, Any]:
    """A config entry as (impl, hyperparameters), or ("chain", parsed phases)."""
    if "chain" in entry:
        extra = sorted(set(entry) - {"chain"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: a chain entry has only `chain`")
        return "chain", parse_chain(entry["chain"], f"{where}.chain")
    if "impl" not in entry:
        raise ConfigError(f"{where}: needs `impl` (an implementation) or `chain`")
    hyper = {k: v for k, v in entry.items() if k != "impl"}
    build_config(entry["impl"], hyper, where=where)
    return entry["impl"], hyper


def resolve(config: dict[str, Any]) -> Plan:
    """Validate ``config`` (every scale, not just the selected one) and return the cells of its
    selected scale."""
    validate(config)
    scale = config["scale"]
    if scale not in config["scales"]:
        raise ConfigError(
            f"config error at scale: {scale!r} is not one of {sorted(config['scales'])}"
        )
    optimizers = {
        name: _entry(entry, f"config error at optimizers.{name}")
        for name, entry in config["optimizers"].items()
    }
    phases = {}
    for name, entry in config.get("phases", {}).items():
        if name in optimizers:
            raise ConfigError(f"config error at phases.{name}: also an optimizers entry")
        phases[name] = _entry(entry, f"config error at phases.{name}")
        if phases[name][0] == "chain":
            raise ConfigError(f"config error at phases.{name}: a phase cannot be a chain")
    plans = {name: _plan(config, name, optimizers, phases) for name in config["scales"]}
    return plans[scale]


def task_optimizers(
    local: dict[str, Any] | None,
    optimizers: dict[str, tuple],
    phases: dict[str, tuple],
    where: str,
) -> tuple[list[str], dict[str, tuple]]:
    """The entries a task instance crosses with and every entry as it is on that task.

    Without a task-level ``optimizers`` mapping, a task crosses with every entry of
    ``optimizers``. With one, it crosses with the mapping's names only (but ``phases`` entries,
    which only chains run); a value with ``impl`` or ``chain`` is an entry of this task alone,
    other values override the global entry's hyperparameters on it."""
    effective = {**optimizers, **phases}
    if local is None:
        return list(optimizers), effective
    for name, value in local.items():
        here = f"{where}.{name}"
        value = value or {}
        if "impl" in value or "chain" in value:
            effective[name] = _entry(value, here)
        elif name not in effective:
            raise ConfigError(f"{here}: no optimizer entry {name!r}; give it `impl` or `chain`")
        elif effective[name][0] == "chain":
            if value:
                raise ConfigError(f"{here}: a chain takes no hyperparameters; override its phases")
        else:
            impl, hyper = effective[name]
            effective[name] = _entry({"impl": impl, **hyper, **value}, here)
    return [name for name in local if name not in phases], effective


def _phases(name: str, chain: list, effective: dict[str, tuple], steps: int, where: str) -> dict:
    """A chain's phases resolved against the task's entries: the cell's hyperparameters."""
    phases, end = [], 0
    for phase, phase_steps in chain:
        if phase not in effective:
            raise ConfigError(f"{where}: chain {name} names no optimizer entry {phase!r}")
        impl, hyper = effective[phase]
        if impl == "chain":
            raise ConfigError(f"{where}: chain {name} nests chain {phase!r}")
        phases.append({"name": phase, "impl": impl, "hyperparameters": hyper, "steps": phase_steps})
        end += phase_steps or 0
    if end >= steps:
        raise ConfigError(
            f"{where}: chain {name} switches to its last phase after step {end}, but the task "
            f"runs {steps} steps"
        )
    return {"phases": phases}


def _resources(config: dict[str, Any], scale: str, tasks) -> dict[str, dict[str, Any]]:
    """The scale's `resources`, its `tasks` entry for a task instance first, and where SLURM
    puts the job (`slurm`: the GPU partition for cells with a GPU). None: the cluster's."""
    scale_res = dict(config["scales"][scale].get("resources", {}))
    per_task = scale_res.pop("tasks", {})
    if unknown := sorted(set(per_task) - set(tasks)):
        raise ConfigError(
            f"config error at scales.{scale}.resources.tasks: {unknown} are not task instances "
            f"of scale {scale} ({sorted(tasks)})"
        )
    slurm = config.get("slurm", {})
    out = {}
    for task in tasks:
        wants = {**scale_res, **per_task.get(task, {})}
        gpus = wants.get("gpus", 0)
        out[task] = {
            "mem_mb": wants.get("mem_mb", 4000),
            "runtime": wants.get("runtime_minutes"),
            "gpu": gpus,
            "slurm_partition": slurm.get("gpu_partition" if gpus else "partition")
            or slurm.get("partition"),
            "slurm_account": slurm.get("account"),
        }
    return out


def _plan(
    config: dict[str, Any], scale: str, optimizers: dict[str, tuple], phases: dict[str, tuple]
) -> Plan:
    scale_cfg = config["scales"][scale]
    tasks = {}
    for tname, entry in scale_cfg["tasks"].items():
        where = f"config error at scales.{scale}.tasks.{tname}"
        module = entry.get("task", tname)
        values = {
            k: v for k, v in entry.items() if k not in ("task", "optimizers", "seeds", "backends")
        }
        task_settings(module, values, where)
        crossed, effective = task_optimizers(
            entry.get("optimizers"), optimizers, phases, f"{where}.optimizers"
        )
        seeds = entry.get("seeds", scale_cfg["seeds"])
        backends = entry.get("backends", config["backends"])
        tasks[tname] = (module, values, crossed, effective, seeds, backends)
    per_optimizer = scale_cfg.get("optimizer_settings", {})
    fields = {
        t[0]: {f.name for f in dataclasses.fields(TASKS[t[0]].Settings)} for t in tasks.values()
    }
    for name, values in per_optimizer.items():
        where = f"config error at scales.{scale}.optimizer_settings.{name}"
        if name not in optimizers and not any(name in t[3] for t in tasks.values()):
            raise ConfigError(f"{where}: no optimizer entry {name!r}")
        values = {k: v for k, v in values.items() if k != "seeds"}
        if values and not any(set(values) <= names for names in fields.values()):
            raise ConfigError(
                f"{where}: no task of scale {scale} has all of the settings {sorted(values)}"
            )
    diagnostics = dict(scale_cfg.get("diagnostics") or {})
    diagnosed_seeds = diagnostics.pop("seeds", None)
    diagnosed_tasks = diagnostics.pop("tasks", None)
    plan = Plan(scale=scale, resources=_resources(config, scale, tasks))
    for tname, (module, values, crossed, effective, seeds, backends) in tasks.items():
        grid = itertools.product(crossed, backends, seeds)
        for oname, backend, seed in grid:
            impl, hyper = effective[oname]
            # jax runs the twins (optimizers/jax; never a chain) on the tasks of tasks/jax
            if backend == "jax" and (module not in JAX_TASK_NAMES or impl not in TWINS):
                missing = plan.torch_only.setdefault(backend, {"tasks": set(), "optimizers": set()})
                if module not in JAX_TASK_NAMES:
                    missing["tasks"].add(tname)
                else:
                    missing["optimizers"].add(oname)
                continue
            # An optimizer's settings at this scale (e.g. L-BFGS's larger batch) override the
            # task's, on the tasks they fit: those with every one of the settings (L-BFGS's
            # batch size and steps for MNIST do not touch the full-batch PINNs).
            own = dict(per_optimizer.get(oname, {}))
            if seed not in own.pop("seeds", [seed]):  # the entry runs fewer seeds everywhere
                continue
            own = own if set(own) <= fields[module] else {}
            where = f"config error at scales.{scale}.optimizer_settings.{oname} (task {tname})"
            settings = dataclasses.asdict(task_settings(module, {**values, **own}, where))
            settings = json.loads(json.dumps(settings))  # the form a cell has after its JSON trip
            if impl == "chain":
                where = f"config error at scales.{scale}.tasks.{tname}"
                hyper = _phases(oname, hyper, effective, settings["steps"], where)
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
                    checkpoint_minutes=scale_cfg.get("checkpoint_minutes", 10.0),
                    device=scale_cfg.get("device", "auto"),
                    wandb_project=config.get("wandb_project", "hessbench"),
                    diagnostics=diagnostics
                    if diagnostics
                    and backend == "torch"  # the diagnostics are torch's (one implementation)
                    and (diagnosed_seeds is None or seed in diagnosed_seeds)
                    and (diagnosed_tasks is None or tname in diagnosed_tasks)
                    else None,
                )
            )
    return plan


def load(path: Path = DEFAULT_CONFIG, **overrides: Any) -> Plan:
    config = yaml.safe_load(Path(path).read_text())
    config.update(overrides)
    return resolve(config)
