"""``hessbench-report``: the commands the report rules call (they read result files only)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pandas as pd

# Reports of one task module: a figure from (runs, summaries) and a markdown table from the
# summaries. Command -> (module, figure function, table function, what it writes).
TASK_REPORTS = {
    "lm": ("lm", "validation_curves", "final_losses_markdown",
           "validation-loss PNG and final-loss table"),
    "fewshot": ("fewshot", "loss_curves", "accuracy_markdown",
                "fine-tuning loss-vs-forward PNG and accuracy table"),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hessbench-report")
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregate", help="summary.json + metrics.parquet -> tidy tables")
    agg.add_argument("summary_files", nargs="+", type=Path)
    agg.add_argument("--runs", type=Path, required=True)
    agg.add_argument("--summaries", type=Path, required=True)
    agg.add_argument("--diagnostics", type=Path, help="also write the curvature points here")
    agg.add_argument(
        "--allow-mixed-provenance",
        action="store_true",
        help="accept cells of different code versions, or seeds of one entry with different "
        "configs (the summaries' code_sha column shows the mix)",
    )
    board = sub.add_parser("leaderboard", help="summaries.parquet -> leaderboard.md")
    board.add_argument("--summaries", type=Path, required=True)
    board.add_argument("--out", type=Path, required=True)
    figs = sub.add_parser("figures", help="runs.parquet -> loss vs step, wall, forwards PNGs")
    figs.add_argument("--runs", type=Path, required=True)
    figs.add_argument("--by-step", type=Path, required=True)
    figs.add_argument("--by-wall", type=Path, required=True)
    figs.add_argument("--by-forward", type=Path, required=True)
    curv = sub.add_parser("curvature", help="diagnostics.parquet -> curvature and density PNGs")
    curv.add_argument("--diagnostics", type=Path, required=True)
    curv.add_argument("--curves", type=Path, required=True)
    curv.add_argument("--density", type=Path, required=True)
    sens = sub.add_parser("lr-sensitivity", help="summaries.parquet -> metric vs lr PNG")
    sens.add_argument("--summaries", type=Path, required=True)
    sens.add_argument("--out", type=Path, required=True)
    chain = sub.add_parser("chains", help="runs + summaries -> loss vs step, phases marked")
    chain.add_argument("--runs", type=Path, required=True)
    chain.add_argument("--summaries", type=Path, required=True)
    chain.add_argument("--out", type=Path, required=True)
    for name, (_, _, _, text) in TASK_REPORTS.items():
        task_report = sub.add_parser(name, help=f"runs + summaries -> {text}")
        for option in ("--runs", "--summaries", "--figure", "--table"):
            task_report.add_argument(option, type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "aggregate":
        from .aggregate import aggregate, aggregate_diagnostics
        from .provenance import ProvenanceError

        try:
            runs, summaries = aggregate(args.summary_files, args.allow_mixed_provenance)
        except ProvenanceError as err:
            print(f"hessbench-report aggregate: {err}", file=sys.stderr)
            return 1
        runs.to_parquet(args.runs, index=False)
        summaries.to_parquet(args.summaries, index=False)
        if args.diagnostics:
            aggregate_diagnostics(summaries).to_parquet(args.diagnostics, index=False)
        print(f"{len(summaries)} cells, {len(runs)} metric rows")
    elif args.command == "leaderboard":
        from .leaderboard import leaderboard_markdown

        args.out.write_text(leaderboard_markdown(pd.read_parquet(args.summaries)))
    elif args.command == "curvature":
        from .curvature import curvature_curves, spectral_densities
        from .figures import save

        diagnostics = pd.read_parquet(args.diagnostics)
        save(curvature_curves(diagnostics), args.curves)
        save(spectral_densities(diagnostics), args.density)
    elif args.command == "chains":
        from .chains import chain_curves
        from .figures import save

        runs, summaries = pd.read_parquet(args.runs), pd.read_parquet(args.summaries)
        save(chain_curves(runs, summaries), args.out)
    elif args.command in TASK_REPORTS:
        from .figures import save

        module_name, figure, table, _ = TASK_REPORTS[args.command]
        module = importlib.import_module(f".{module_name}", __package__)
        runs, summaries = pd.read_parquet(args.runs), pd.read_parquet(args.summaries)
        save(getattr(module, figure)(runs, summaries), args.figure)
        args.table.write_text(getattr(module, table)(summaries))
    elif args.command == "lr-sensitivity":
        from .figures import lr_sensitivity, save

        save(lr_sensitivity(pd.read_parquet(args.summaries)), args.out)
    else:
        from .figures import FORWARD_EQUIVALENTS, loss_curves, save

        runs = pd.read_parquet(args.runs)
        save(loss_curves(runs, "step", "step"), args.by_step)
        save(loss_curves(runs, "wall_s", "wall-clock seconds (training step only)"), args.by_wall)
        save(loss_curves(runs, "forward_equivalents", FORWARD_EQUIVALENTS), args.by_forward)
    return 0


if __name__ == "__main__":
    sys.exit(main())
