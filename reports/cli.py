"""``hessbench-report``: the commands the report rules call (they read result files only)."""

from __future__ import annotations

import argparse
import importlib
import json
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


def _seeds(configured: dict[str, int]) -> dict[tuple[str, str], int]:
    return {tuple(key.split("/", 1)): n for key, n in configured.items()}


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
    board = sub.add_parser("leaderboard", help="summaries + runs -> leaderboard.md and .html")
    board.add_argument("--summaries", type=Path, required=True)
    board.add_argument("--runs", type=Path, required=True)
    board.add_argument("--out", type=Path, help="the markdown leaderboard")
    board.add_argument("--html", type=Path, required=True)
    board.add_argument(
        "--figure",
        nargs=2,
        action="append",
        default=[],
        metavar=("PNG", "CAPTION"),
        type=Path,
        help="inline this PNG after the tables, its caption read from CAPTION (.rst)",
    )
    view = sub.add_parser(
        "overview", help="runs + summaries -> metric curves, memory bars, feasibility matrix"
    )
    outputs = ("--metric-by-step", "--metric-by-wall", "--metric-by-forward", "--memory",
               "--feasibility", "--feasibility-table")  # fmt: skip
    for option in ("--runs", "--summaries", *outputs):
        view.add_argument(option, type=Path, required=True)
    perf = sub.add_parser("performance", help="summaries + runs -> profile and Pareto PNGs")
    for option in ("--summaries", "--runs", "--profile", "--pareto"):
        perf.add_argument(option, type=Path, required=True)
    for ranked in (board, perf):
        ranked.add_argument(
            "--seeds-configured",
            type=json.loads,
            default={},
            help='JSON {"task/optimizer": seeds configured}: an entry with fewer is not ranked',
        )
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
        from .leaderboard import leaderboard_html, leaderboard_markdown

        summaries, runs = pd.read_parquet(args.summaries), pd.read_parquet(args.runs)
        seeds = _seeds(args.seeds_configured)
        if args.out:
            args.out.write_text(leaderboard_markdown(summaries, runs, seeds))
        figures = [(png, " ".join(caption.read_text().split())) for png, caption in args.figure]
        args.html.write_text(leaderboard_html(summaries, runs, seeds, figures))
    elif args.command == "performance":
        from .figures import save
        from .performance import pareto_figure, performance_ratios, profile_figure
        from .scoring import score

        summaries, runs = pd.read_parquet(args.summaries), pd.read_parquet(args.runs)
        scores = score(summaries, runs, _seeds(args.seeds_configured))
        save(profile_figure(performance_ratios(scores)), args.profile)
        save(pareto_figure(summaries), args.pareto)
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
    elif args.command == "overview":
        from .feasibility import feasibility_figure, feasibility_markdown
        from .figures import X_AXES, memory_bars, metric_curves, save

        runs, summaries = pd.read_parquet(args.runs), pd.read_parquet(args.summaries)
        for (x, label), out in zip(X_AXES, (args.metric_by_step, args.metric_by_wall,
                                            args.metric_by_forward), strict=True):  # fmt: skip
            save(metric_curves(runs, summaries, x, label), out)
        save(memory_bars(summaries), args.memory)
        save(feasibility_figure(summaries), args.feasibility)
        args.feasibility_table.write_text(feasibility_markdown(summaries))
    else:
        from .figures import X_AXES, loss_curves, save

        runs = pd.read_parquet(args.runs)
        for (x, label), out in zip(X_AXES, (args.by_step, args.by_wall, args.by_forward),
                                   strict=True):  # fmt: skip
            save(loss_curves(runs, x, label), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
