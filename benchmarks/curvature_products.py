"""Time of a Hessian- and a GGN-vector product against a gradient, side by side in one process.

For each model and batch size the calls are interleaved round by round on the same batch (so
machine noise hits all alike) after a warm-up, and the ratios of per-round times are reported:
median with min-max over rounds. Two forms of each product are timed:

- ``in CG``: one more product from an operator already built with the gradient
  (``Objective.hessian_operator`` / ``ggn_operator``), which is what every CG iteration pays;
- ``standalone``: ``Objective.hvp(v)`` / ``ggnvp(v)``, forward and backward included.

Usage: python benchmarks/curvature_products.py [--rounds 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hessbench.optimizers.torch.objective import Objective
from hessbench.tasks.mnist_mlp import mlp

CASES = [((10,), 64), ((10,), 1024), ((128,), 64), ((128,), 1024)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(hidden, batch, rounds):
    torch.manual_seed(0)
    model = mlp(hidden)
    params = list(model.parameters())
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    objective = Objective(model, F.cross_entropy, (x, y), params)
    v = tuple(torch.randn_like(p) for p in params)
    hessian_op, ggn_op = objective.hessian_operator(), objective.ggn_operator()
    calls = {
        "gradient": objective.loss_and_grad,
        "hvp in CG": lambda: hessian_op.apply(v),
        "ggnvp in CG": lambda: ggn_op.apply(v),
        "hvp standalone": lambda: objective.hvp(v),
        "ggnvp standalone": lambda: objective.ggnvp(v),
    }
    for _ in range(20):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(timed(fn))
    d = sum(p.numel() for p in params)
    row = {"model": "784-" + "-".join(map(str, hidden)) + "-10", "params": d, "batch": batch}
    row["gradient (ms)"] = 1e3 * statistics.median(times["gradient"])
    for name in list(calls)[1:]:
        ratios = [t / g for t, g in zip(times[name], times["gradient"], strict=True)]
        row[f"{name} / gradient"] = (
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pandas as pd

    table = pd.DataFrame([measure(h, b, args.rounds) for h, b in CASES])
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds; "
          "ratio: median [min, max] over rounds")  # fmt: skip
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
