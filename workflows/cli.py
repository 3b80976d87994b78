"""``hessbench-cell``: the command a Snakemake rule calls to run one cell.

    hessbench-cell --cell '<Cell JSON>' --out results/cpu/mnist_mlp/sgd/torch/seed0

Or, for a cell of the default config without Snakemake:

    hessbench-cell --config workflows/config/default.yaml --scale smoke \\
        --task mnist_mlp --optimizer sgd --seed 0 --out /tmp/cell
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import DEFAULT_CONFIG, Cell, load
from .harness import run_cell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hessbench-cell",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cell", help="the cell as JSON (what the Snakefile passes)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--scale")
    parser.add_argument("--task")
    parser.add_argument("--optimizer")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the cell's results folder")
    parser.add_argument(
        "--results-root",
        type=Path,
        default=None,
        help="where W&B's cache/config folders go (default: results/ above --out)",
    )
    parser.add_argument("--no-wandb", action="store_true", help="skip the W&B run")
    parser.add_argument("--threads", type=int, help="torch threads (Snakemake passes the rule's)")
    args = parser.parse_args(argv)

    if args.cell:
        cell = Cell.from_json(args.cell)
    else:
        if not (args.task and args.optimizer):
            parser.error("give --cell, or --task and --optimizer (with --scale)")
        overrides = {"scale": args.scale} if args.scale else {}
        cell = load(args.config, **overrides).cell(
            args.task, args.optimizer, args.backend, args.seed
        )
    if args.threads:
        cell = dataclasses.replace(cell, threads=args.threads)
    root = args.results_root or _results_root(args.out)
    # A failed cell is a result too (its summary says how it failed): exit 0 so the sweep goes on.
    run_cell(cell, args.out, root, track=not args.no_wandb)
    return 0


def _results_root(out: Path) -> Path:
    """The ``results`` folder above a cell folder (results/{scale}/{task}/{opt}/{backend}/seedN)."""
    out = out.resolve()
    return out.parents[4] if len(out.parents) > 4 else out


if __name__ == "__main__":
    sys.exit(main())
