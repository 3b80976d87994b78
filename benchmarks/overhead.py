"""The overhead benchmark: step time and memory of each optimizer against its reference.

For every pair the two run on the same task, model (two copies of one initialisation) and
batches, and their steps alternate in one process after a warm-up, timed with the harness's
device-synced clock; noise on a shared machine hits both alike. Reported per pair:

- time ratio: the median over windows of 50 steps of (method's time / reference's time), with
  the min-max over windows. Windows hold whole refresh cycles (intervals 1, 5 and 10 divide
  50), so a delayed-update method's expensive steps are weighed as often as they happen;
- peak memory ratio: each runner alone in a fresh process, the parameters' bytes plus the peak
  its steps add above what is resident before the first (data and interpreter excluded; on
  CPU the resident set with glibc told to unmap freed blocks, on CUDA torch's allocation),
  method / reference: what training needs beyond the data, as in MeZO's inference-memory claim;
- optimizer-state bytes / parameter bytes, and oracle calls per step, of the method; the
  method's state bytes / the reference's (HiZOO-L's Hessian against HiZOO's).

Pairs: the papers' (AdaHessian vs SGD at Hessian intervals 1 and 5, Sophia-G/H vs AdamW, HiZOO
vs MeZO, HiZOO-L vs HiZOO, MeZO vs forward passes only, NNCG vs L-BFGS; on GPT-2 and on
few-shot fine-tuning too, with AdamW vs MeZO for MeZO's memory claim), every optimizer entry
of the config vs SGD, and the curvature products (GGN and Hessian-vector products inside CG)
vs a gradient. A pair whose optimizer has not landed yet is listed as such. Also measured: the
harness's own overhead per task (a real cell with SGD). Hyperparameters are the config's
entries.

    python benchmarks/overhead.py --out results/overhead      # what `snakemake overhead` runs
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
import yaml

from hessbench.optimizers.torch.objective import Counters, Infeasible, Objective
from hessbench.optimizers.torch.registry import build_config
from hessbench.reports.overhead_table import overhead_markdown
from hessbench.tasks.registry import TASKS
from hessbench.workflows.config import DEFAULT_CONFIG, load, task_settings
from hessbench.workflows.harness import run_cell
from hessbench.workflows.measure import (
    Clock,
    optimizer_state_bytes,
    peak_memory_bytes,
    reset_peak_memory,
)

WINDOW = 50
FORWARD = "forward-only"  # a reference that only evaluates the loss (inference level)


@dataclass(frozen=True)
class Pair:
    label: str
    method: str  # a config optimizer entry
    reference: str  # a config optimizer entry, or FORWARD
    overrides: dict = field(default_factory=dict)  # the method's hyperparameters changed
    paper: str = ""
    time_goal: float | None = None
    memory_goal: float | None = None
    task: str | None = None  # a task instance of the scale; None: the first where feasible


NAMED = [
    Pair("AdaHessian k=1 vs SGD", "adahessian", "sgd", {"update_interval": 1},
         "2.42 (seed 002)", 2.1),
    Pair("AdaHessian k=5 vs SGD", "adahessian", "sgd", {"update_interval": 5},
         "1.28 (seed 002)", 1.22),
    Pair("Sophia-G vs AdamW", "sophia_g", "adamw", {}, "1.05 (seed 000)", 1.03),
    Pair("Sophia-H vs AdamW", "sophia_h", "adamw", {}, "1.05 (seed 000)", 1.03),
    Pair("HiZOO vs MeZO", "hizoo", "mezo", {}, "1.4-1.5 (seed 001)", 1.40),
    Pair("HiZOO-L vs HiZOO", "hizoo_l", "hizoo", {}, "1.06 (seed 001); Hessian ~0.1 P"),
    Pair("MeZO vs forward only", "mezo", FORWARD, {}, "inference memory", None, 1.05),
    Pair("NNCG vs L-BFGS (per iteration)", "nncg", "lbfgs"),
    # on the language model, with its own entries (the estimate on one window of four)
    Pair("Sophia-G vs AdamW, GPT-2", "sophia_g", "adamw", {}, "1.05 (seed 000)", 1.03,
         task="gpt2"),
    Pair("Sophia-G vs AdamW, GPT-2, estimate on the whole batch", "sophia_g", "adamw",
         {"hessian_batch": None}, "", None, task="gpt2"),
    # few-shot fine-tuning of the 22.6M-parameter encoder, every parameter tuned
    Pair("MeZO vs forward only, fine-tuning", "mezo", FORWARD, {}, "inference memory", None,
         1.05, task="rt_minilm_k16"),
    Pair("AdamW vs MeZO, fine-tuning", "adamw", "mezo", {}, "up to 12x memory (MeZO)",
         task="rt_minilm_k16"),
    Pair("HiZOO vs MeZO, fine-tuning (LoRA)", "hizoo", "mezo", {}, "1.4-1.5 (seed 001)", 1.40,
         task="rt_minilm_k16_lora"),
]  # fmt: skip


class Runner:
    """One side of a pair: a model copy and what one step does to it."""

    def __init__(self, entry: str, overrides: dict, problem, model, entries: dict):
        self.model, self.problem = model, problem
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.counters = Counters()
        self.optimizer = None
        if entry != FORWARD:
            impl, hyper = entries[entry]
            self.optimizer = build_config(impl, {**hyper, **overrides}).build(self.params)

    def step(self, batch) -> None:
        objective = Objective(
            self.model, self.problem.loss_fn, batch, self.params, self.counters,
            self.problem.likelihood,
        )  # fmt: skip
        if self.optimizer is None:
            objective.loss()
        else:
            self.optimizer.step(objective)


def config_entries(config_path: Path) -> dict[str, tuple[str, dict]]:
    """The config's single-optimizer entries, phase-only ones (NNCG) included; chains are
    schedules of these, timed per phase by their cells."""
    config = yaml.safe_load(config_path.read_text())
    entries = {**config["optimizers"], **(config.get("phases") or {})}
    return {
        name: (e["impl"], {k: v for k, v in e.items() if k != "impl"})
        for name, e in entries.items()
        if "impl" in e
    }


@functools.cache
def entries_on(task: str, scale: str) -> dict[str, tuple[str, dict]]:
    """The config's entries as ``task`` runs them: its own entries and overrides (the GPT-2
    task's AdamW and Sophia) replace the top-level ones."""
    entries = config_entries(DEFAULT_CONFIG)
    for cell in load(scale=scale).cells:
        if cell.task == task and cell.impl != "chain":
            entries[cell.optimizer] = (cell.impl, cell.hyperparameters)
    return entries


def build_problem(task: str, scale: str, device: torch.device, entry: str, seed: int = 0):
    """The task instance's problem with the settings of ``entry``'s cells at this scale (its
    per-scale settings included: L-BFGS's large batches, dense Newton's small model); the
    reference of a pair runs on the same."""
    plan = load(scale=scale)
    cells = [c for c in plan.cells if c.task == task]
    # a phase-only entry (NNCG) has no cells of its own: the task's first cell's settings
    cell = next((c for c in cells if c.optimizer == entry), cells[0])
    module = TASKS[cell.task_module]
    settings = task_settings(cell.task_module, cell.settings, task)
    return module, settings, module.build(settings, seed, device)


def time_pair(pair, task, scale, device, entries, steps, warmup, budget_s):
    module, settings, problem = build_problem(task, scale, device, pair.method)
    for entry in (pair.method, pair.reference):
        if entry != FORWARD and (why := module.infeasible(entries[entry][0], settings)):
            raise Infeasible(why)
    torch.manual_seed(0)
    runners = [
        Runner(pair.method, pair.overrides, problem, problem.model, entries),
        Runner(pair.reference, {}, problem, copy.deepcopy(problem.model), entries),
    ]
    clock = Clock(device)
    started = time.perf_counter()
    done, warm = 0, False
    while len(clock.samples["method"]) < steps:
        batch = next(problem.batches)
        for name, runner in zip(("method", "reference"), runners, strict=True):
            start = clock.start()
            runner.step(batch)
            if warm:
                clock.stop(name, start)
        done += 1
        elapsed = time.perf_counter() - started
        # A slow method (dense Newton: a minute a step here) warms up on one step and is
        # measured on as many as the time budget allows, at least one.
        if warm and elapsed > budget_s:
            break
        warm = warm or done >= warmup or elapsed > budget_s / 4
    a, b = clock.samples["method"], clock.samples["reference"]
    width = WINDOW if len(a) >= 2 * WINDOW else len(a)
    ratios = [
        sum(a[i : i + width]) / sum(b[i : i + width]) for i in range(0, len(a) - width + 1, width)
    ]
    method, reference = runners
    param_bytes = sum(p.numel() * p.element_size() for p in method.params)
    reference_state = optimizer_state_bytes(reference.optimizer) if reference.optimizer else 0
    return {
        "task": task,
        "params": sum(p.numel() for p in method.params),
        "batch": problem.batch_size,
        "steps": len(a),
        "time ratio": statistics.median(ratios),
        "time min": min(ratios),
        "time max": max(ratios),
        "method step (ms)": 1e3 * statistics.median(a),
        "reference step (ms)": 1e3 * statistics.median(b),
        "state / param bytes": (
            optimizer_state_bytes(method.optimizer) / param_bytes if method.optimizer else 0.0
        ),
        "state ratio": (
            optimizer_state_bytes(method.optimizer) / reference_state if reference_state else None
        ),
        "oracle calls per step": ", ".join(
            f"{k} {v / done:.2f}" for k, v in method.counters.as_dict().items() if v
        ),
    }


def product_rows(task, scale, device, rounds):
    """GGN- and Hessian-vector products from an operator (what a CG iteration pays) vs a
    gradient, interleaved on one batch."""
    _, _, problem = build_problem(task, scale, device, "sgd")
    params = [p for p in problem.model.parameters() if p.requires_grad]
    objective = Objective(problem.model, problem.loss_fn, next(problem.batches), params)
    v = tuple(torch.randn_like(p) for p in params)
    hessian, ggn = objective.hessian_operator(), objective.ggn_operator()
    calls = {
        "gradient": objective.loss_and_grad,
        "ggnvp": lambda: ggn.apply(v),
        "hvp": lambda: hessian.apply(v),
    }
    clock = Clock(device)
    for round_ in range(rounds + 10):
        for name, fn in calls.items():
            start = clock.start()
            fn()
            if round_ >= 10:
                clock.stop(name, start)
    rows = []
    for name, goal in (("ggnvp", 1.5), ("hvp", None)):
        gradient = clock.samples["gradient"]
        ratios = [t / g for t, g in zip(clock.samples[name], gradient, strict=True)]
        rows.append({
            "pair": f"{name} in CG vs gradient", "method": name, "reference": "gradient",
            "task": task, "params": sum(p.numel() for p in params), "batch": len(objective.inputs),
            "steps": rounds, "time ratio": statistics.median(ratios), "time min": min(ratios),
            "time max": max(ratios), "method step (ms)": 1e3 * clock.median(name),
            "reference step (ms)": 1e3 * clock.median("gradient"), "time goal": goal,
            "paper": "GVP <= 1.5 gradients (goal)" if goal else "", "status": "ok",
        })  # fmt: skip
    return rows


def probe_memory(entry, overrides, task, scale, device, steps, settings_of) -> int:
    """The parameters' bytes plus the peak bytes the optimizer and its steps add above what is
    resident before it is built (interpreter, data and loaded code excluded): optimizer state,
    gradients, graphs, activations and other transients. Run in a fresh process; on CPU the
    resident-set counters resolve about 64 pages (256 KiB), so smaller differences vanish."""
    _, _, problem = build_problem(task, scale, device, settings_of)
    entries = entries_on(task, scale)
    batches = [next(problem.batches) for _ in range(steps)]
    # One throwaway step on a copy first: the resident set counts code pages and kernel
    # workspaces the first call of each op maps in, which are no optimizer's memory.
    Runner(entry, overrides, problem, copy.deepcopy(problem.model), entries).step(batches[0])
    gc.collect()
    reset_peak_memory(device)  # the peak restarts from what is resident now
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    before = peak_memory_bytes(device) if before is None else before
    # built after the reset: state allocated at construction (HiZOO's H) counts like state
    # allocated at the first step (Adam's moments)
    runner = Runner(entry, overrides, problem, problem.model, entries)
    for batch in batches:
        runner.step(batch)
    params = sum(p.numel() * p.element_size() for p in runner.params)
    return params + peak_memory_bytes(device) - before


def memory_of(entry, overrides, task, settings_of, scale, steps, device, threads) -> int:
    command = [
        sys.executable, __file__, "--probe", json.dumps([entry, overrides, task, settings_of]),
        "--scale", scale, "--probe-steps", str(steps), "--device", device.type,
        "--threads", str(threads),
    ]  # fmt: skip
    # glibc keeps freed memory resident and reuses it, which hides a step's allocations from
    # the resident-set peak; with every block over 4 KiB mapped and unmapped on its own, the
    # peak follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def harness_rows(scale, device, max_steps, out_dir):
    """A real cell (SGD, W&B offline) per task of the scale, its steps capped: the loop's time
    outside steps, evaluation and W&B flushes, over the loop's time."""
    plan = load(scale=scale)
    rows = []
    for cell in plan.cells:
        if cell.optimizer != "sgd" or cell.seed != plan.cells[0].seed:
            continue
        settings = {**cell.settings, "steps": min(cell.settings["steps"], max_steps)}
        cell = replace(cell, settings=settings, device=device.type)
        summary = run_cell(cell, Path(out_dir) / cell.task, Path(out_dir))
        rows.append({
            "pair": "harness overhead", "method": "harness", "reference": "loop time",
            "task": cell.task, "steps": summary.get("steps_done"),
            "time ratio": summary.get("harness_overhead"), "time goal": 0.02,
            "paper": "<= 2% of the loop (goal)", "status": summary["status"],
        })  # fmt: skip
    return rows


def run_pairs(args, device) -> list[dict]:
    entries = config_entries(DEFAULT_CONFIG)
    tasks = list(dict.fromkeys(c.task for c in load(scale=args.scale).cells))
    pairs = list(NAMED) + [Pair(f"{name} vs SGD", name, "sgd") for name in entries if name != "sgd"]
    if args.pairs:
        pairs = [p for p in pairs if re.search(args.pairs, p.label)]
    rows = []
    for pair in pairs:
        row = {"pair": pair.label, "method": pair.method, "reference": pair.reference,
               "paper": pair.paper, "time goal": pair.time_goal,
               "memory goal": pair.memory_goal}  # fmt: skip
        missing = [e for e in (pair.method, pair.reference) if e != FORWARD and e not in entries]
        if missing:
            rows.append({**row, "status": f"not landed ({', '.join(missing)})"})
            continue
        if pair.task and pair.task not in tasks:
            rows.append({**row, "status": f"no task {pair.task} at scale {args.scale}"})
            continue
        for task in [pair.task] if pair.task else tasks:  # the first where it is feasible
            try:
                measured = time_pair(pair, task, args.scale, device, entries_on(task, args.scale),
                                     args.steps, args.warmup, args.budget)  # fmt: skip
            except Infeasible as err:
                row.update(task=task, status=f"infeasible: {err}")
                continue
            row.update(measured, status="ok")
            # a probe runs about 5 s of steps (one at least)
            steps = max(1, min(args.probe_steps, int(5e3 / measured["method step (ms)"])))
            mem = [
                memory_of(e, o, task, pair.method, args.scale, steps, device, args.threads)
                for e, o in ((pair.method, pair.overrides), (pair.reference, {}))
            ]
            row.update({"method step memory (MiB)": mem[0] / 2**20,
                        "reference step memory (MiB)": mem[1] / 2**20,
                        "memory ratio": mem[0] / mem[1] if mem[1] > 0 else None})  # fmt: skip
            break
        rows.append(row)
        print(f"{pair.label}: {row['status']} {row.get('time ratio', '')}", file=sys.stderr)
    if args.pairs:
        return rows
    return rows + product_rows(tasks[0], args.scale, device, rounds=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/overhead"))
    parser.add_argument("--scale", default="cpu", help="the config scale whose tasks are used")
    parser.add_argument("--steps", type=int, default=500, help="measured steps per pair (most)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per pair (about)")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--harness-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", help="only the pairs whose label matches this regex")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one memory probe
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe:
        entry, overrides, task, settings_of = json.loads(args.probe)
        print(probe_memory(entry, overrides, task, args.scale, device, args.probe_steps,
                           settings_of))  # fmt: skip
        return
    rows = run_pairs(args, device)
    if not args.pairs:
        with tempfile.TemporaryDirectory() as scratch:
            os.environ.setdefault("WANDB_MODE", "offline")
            rows += harness_rows(args.scale, device, args.harness_steps, scratch)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    # a selection never overwrites the full table
    stem = f"{device.type}-selected" if args.pairs else device.type
    table.to_parquet(args.out / f"{stem}.parquet", index=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    software = f"torch {torch.__version__}"
    text = overhead_markdown(table, name, device.type, software, args.threads, args.scale, WINDOW)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
