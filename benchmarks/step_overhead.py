"""Step time of diagonal-curvature optimizers against their references, side by side.

Each pair runs on two copies of one model (same initial weights) and the same batches; their
steps alternate in one process after a warm-up, so machine noise hits both alike. Reported:
the ratio of total step time over all measured steps (which weighs the expensive Hessian steps
of a delayed update correctly), with min-max over windows of 50 steps, and the oracle calls per
step of the method.

Pairs: AdaHessian (Hessian interval 1 and 5) vs SGD; Sophia-G and Sophia-H (interval 10) vs
AdamW. Papers: AdaHessian 2.42x at 1, 1.28x at 5 (seed 002); Sophia 1.05x (seed 000).

Usage: python benchmarks/step_overhead.py [--steps 1000] [--hidden 128] [--batch 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from hessbench.optimizers.torch.objective import Counters, Objective
from hessbench.optimizers.torch.registry import build_config
from hessbench.tasks.mnist_mlp import mlp

PAIRS = [
    ("adahessian k=1", ("adahessian", {"update_interval": 1}), ("sgd", {})),
    ("adahessian k=5", ("adahessian", {"update_interval": 5}), ("sgd", {})),
    ("sophia_g k=10", ("sophia", {"estimator": "gnb", "update_interval": 10}), ("adamw", {})),
    (
        "sophia_h k=10",
        ("sophia", {"estimator": "hutchinson", "update_interval": 10}),
        ("adamw", {}),
    ),
]
WINDOW = 50


def run_pair(method, reference, hidden, batch, steps, warmup):
    torch.manual_seed(0)
    model = mlp(hidden)
    twins = [model, copy.deepcopy(model)]
    optimizers = [
        build_config(name, hyper).build(list(m.parameters()))
        for (name, hyper), m in zip((method, reference), twins, strict=True)
    ]
    counters = [Counters(), Counters()]
    gen = torch.Generator().manual_seed(1)
    times = [[], []]
    for step in range(warmup + steps):
        x = torch.randn(batch, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        for i in (0, 1):
            params = list(twins[i].parameters())
            start = time.perf_counter()
            optimizers[i].step(Objective(twins[i], F.cross_entropy, (x, y), params, counters[i]))
            if step >= warmup:
                times[i].append(time.perf_counter() - start)
    ratio = sum(times[0]) / sum(times[1])
    windows = [
        sum(times[0][s : s + WINDOW]) / sum(times[1][s : s + WINDOW])
        for s in range(0, steps - WINDOW + 1, WINDOW)
    ]
    total = warmup + steps
    calls = ", ".join(f"{k} {v / total:.2f}" for k, v in counters[0].as_dict().items() if v)
    return ratio, min(windows), max(windows), sum(times[1]) / steps, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"784-{args.hidden}-10 MLP, batch {args.batch}, {args.steps} measured steps after "
        f"{args.warmup}, torch {torch.__version__}, {args.threads} thread(s)\n"
    )
    print("| method vs reference | step time ratio | min-max over 50-step windows | "
          "reference step (ms) | method's oracle calls per step |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label, method, reference in PAIRS:
        ratio, low, high, ref_s, calls = run_pair(
            method, reference, (args.hidden,), args.batch, args.steps, args.warmup
        )
        print(f"| {label} vs {reference[0]} | {ratio:.2f} | [{low:.2f}, {high:.2f}] | "
              f"{ref_s * 1e3:.3f} | {calls} |")  # fmt: skip


if __name__ == "__main__":
    main()
