"""jax step ÷ torch step per twin, side by side in one process.

For each (task instance, optimizer entry) of the config that both backends run, the harness's
own trainers (``workflows/torch_trainer.py``, ``workflows/jax_trainer.py``) are built for seed 0
from the same initial weights and batches, each on one thread; after a warm-up the two
backends' steps alternate, so noise on a shared machine hits both alike. Reported per pair: the
median and mean step of each (the jax step compiled ahead of time; its compile time apart), the
ratio of the medians and of the means, and the oracle calls per step of each (equal but for
float32 round-off in CG and the backends' different random draws in NNCG's sketch).

    python benchmarks/backends.py --scale cpu --out results/backends
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from hessbench.workflows.config import load, task_settings
from hessbench.workflows.torch_trainer import TorchTrainer

# (task instance, optimizer entry): steps timed per backend (the dense Newtons' steps are
# seconds long), warm-up steps
PAIRS = {
    ("mnist_mlp_h10", "newton_cg"): (300, 20),
    ("mnist_mlp_h10", "hf_gn"): (300, 20),
    ("mnist_mlp_h10", "damped_newton"): (3, 1),
    ("mnist_mlp_h10", "newton"): (1, 0),
    ("pinn_convection", "nncg_alone"): (40, 2),
    ("pinn_reaction", "nncg_alone"): (40, 2),
    ("pinn_wave", "nncg_alone"): (40, 2),
}


def _timed(trainer) -> float:
    start = time.perf_counter()
    trainer.step()  # the jax trainer's step blocks until its results are ready
    return time.perf_counter() - start


def compare(plan, task: str, optimizer: str, steps: int, warmup: int) -> dict:
    from hessbench.workflows.jax_trainer import JaxTrainer

    cells = {
        c.backend: c for c in plan.cells if (c.task, c.optimizer, c.seed) == (task, optimizer, 0)
    }
    trainers = {}
    for backend, make in (("torch", TorchTrainer), ("jax", JaxTrainer)):
        cell = cells[backend]
        settings = task_settings(cell.task_module, cell.settings, cell.path)
        trainers[backend] = make(cell, settings, _cpu())
    for _ in range(warmup):
        for trainer in trainers.values():
            trainer.step()
    before = {b: dict(t.counts()) for b, t in trainers.items()}
    times = {"torch": [], "jax": []}
    for _ in range(steps):
        for backend, trainer in trainers.items():
            times[backend].append(_timed(trainer))
    row = {"task": task, "optimizer": optimizer, "steps": steps}
    for backend, trainer in trainers.items():
        row[f"{backend} median ms"] = 1e3 * statistics.median(times[backend])
        row[f"{backend} mean ms"] = 1e3 * statistics.fmean(times[backend])
        after = trainer.counts()
        calls = sum(after[k] - before[backend][k] for k in ("hvp", "ggnvp"))
        row[f"{backend} products/step"] = calls / steps
    row["jax ÷ torch (median)"] = row["jax median ms"] / row["torch median ms"]
    row["jax ÷ torch (mean)"] = row["jax mean ms"] / row["torch mean ms"]
    row["jax compile s"] = trainers["jax"].compile_s
    return row


def _cpu():
    import torch

    return torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/backends"))
    parser.add_argument("--pairs", nargs="*", help="task/optimizer pairs (default: all)")
    args = parser.parse_args(argv)
    plan = load(scale=args.scale, backends=["torch", "jax"])
    chosen = [p for p in PAIRS if not args.pairs or "/".join(p) in args.pairs]
    rows = []
    for task, optimizer in chosen:
        steps, warmup = PAIRS[(task, optimizer)]
        rows.append(compare(plan, task, optimizer, steps, warmup))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()},
              file=sys.stderr)  # fmt: skip
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out / f"{args.scale}.parquet", index=False)
    (args.out / f"{args.scale}.md").write_text(table.to_markdown(index=False, floatfmt=".3g"))
    print(table.to_markdown(index=False, floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
