# Reports read result files only: the summary.json and metrics.parquet of this scale's cells.
import collections
import json


SUMMARIES = [f"results/{c.path}/summary.json" for c in CELLS]
# aggregate stops on cells of different code versions, or seeds of one entry run under different
# configs, unless `--config allow_mixed_provenance=True` (reports/provenance.py)
MIXED = "--allow-mixed-provenance" if config.get("allow_mixed_provenance", False) else ""
# the seeds each entry is configured to run (on each of its backends: they run the same
# seeds): one with fewer results is marked, not ranked
SEEDS_CONFIGURED = json.dumps(
    collections.Counter(key for key, _ in {(f"{c.task}/{c.optimizer}", c.seed) for c in CELLS}),
    sort_keys=True,
)


rule aggregate:
    input:
        SUMMARIES,
    output:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
        diagnostics=f"results/{SCALE}/diagnostics.parquet",
    log:
        f"results/{SCALE}/logs/aggregate.log",
    params:
        mixed=MIXED,
    shell:
        "hessbench-report aggregate {input:q} --runs {output.runs:q} "
        "--summaries {output.summaries:q} --diagnostics {output.diagnostics:q} {params.mixed} "
        "> {log:q} 2>&1"


rule leaderboard:
    input:
        summaries=f"results/{SCALE}/summaries.parquet",
        runs=f"results/{SCALE}/runs.parquet",
    output:
        markdown=report(
            f"results/{SCALE}/leaderboard.md",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
        html=report(
            f"results/{SCALE}/leaderboard.html",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
    log:
        f"results/{SCALE}/logs/leaderboard.log",
    params:
        seeds=SEEDS_CONFIGURED,
    shell:
        "hessbench-report leaderboard --summaries {input.summaries:q} --runs {input.runs:q} "
        "--out {output.markdown:q} --html {output.html:q} --seeds-configured {params.seeds:q} "
        "> {log:q} 2>&1"


rule performance:
    input:
        summaries=f"results/{SCALE}/summaries.parquet",
        runs=f"results/{SCALE}/runs.parquet",
    output:
        profile=report(
            f"results/{SCALE}/figures/performance_profile.png",
            caption="../report/performance_profile.rst",
            category="Leaderboard",
        ),
        pareto=report(
            f"results/{SCALE}/figures/pareto.png",
            caption="../report/pareto.rst",
            category="Leaderboard",
        ),
    log:
        f"results/{SCALE}/logs/performance.log",
    params:
        seeds=SEEDS_CONFIGURED,
    shell:
        "MPLBACKEND=Agg hessbench-report performance --summaries {input.summaries:q} "
        "--runs {input.runs:q} --profile {output.profile:q} --pareto {output.pareto:q} "
        "--seeds-configured {params.seeds:q} > {log:q} 2>&1"


rule figures:
    input:
        runs=f"results/{SCALE}/runs.parquet",
    output:
        step=report(
            f"results/{SCALE}/figures/loss_vs_step.png",
            caption="../report/loss_vs_step.rst",
            category="Loss curves",
        ),
        wall=report(
            f"results/{SCALE}/figures/loss_vs_wall.png",
            caption="../report/loss_vs_wall.rst",
            category="Loss curves",
        ),
        forward=report(
            f"results/{SCALE}/figures/loss_vs_forward.png",
            caption="../report/loss_vs_forward.rst",
            category="Loss curves",
        ),
    log:
        f"results/{SCALE}/logs/figures.log",
    shell:
        "MPLBACKEND=Agg hessbench-report figures --runs {input.runs:q} "
        "--by-step {output.step:q} --by-wall {output.wall:q} --by-forward {output.forward:q} "
        "> {log:q} 2>&1"


rule overview:
    input:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        step=report(
            f"results/{SCALE}/figures/metric_vs_step.png",
            caption="../report/metric_curves.rst",
            category="Metric curves",
        ),
        wall=report(
            f"results/{SCALE}/figures/metric_vs_wall.png",
            caption="../report/metric_curves.rst",
            category="Metric curves",
        ),
        forward=report(
            f"results/{SCALE}/figures/metric_vs_forward.png",
            caption="../report/metric_curves.rst",
            category="Metric curves",
        ),
        memory=report(
            f"results/{SCALE}/figures/memory.png",
            caption="../report/memory.rst",
            category="Memory",
        ),
        feasibility=report(
            f"results/{SCALE}/figures/feasibility.png",
            caption="../report/feasibility.rst",
            category="Feasibility",
        ),
        feasibility_table=report(
            f"results/{SCALE}/feasibility.md",
            caption="../report/feasibility.rst",
            category="Feasibility",
        ),
    log:
        f"results/{SCALE}/logs/overview.log",
    shell:
        "MPLBACKEND=Agg hessbench-report overview --runs {input.runs:q} "
        "--summaries {input.summaries:q} --metric-by-step {output.step:q} "
        "--metric-by-wall {output.wall:q} --metric-by-forward {output.forward:q} "
        "--memory {output.memory:q} --feasibility {output.feasibility:q} "
        "--feasibility-table {output.feasibility_table:q} > {log:q} 2>&1"


rule lr_sensitivity:
    input:
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        report(
            f"results/{SCALE}/figures/lr_sensitivity.png",
            caption="../report/lr_sensitivity.rst",
            category="Robustness",
        ),
    log:
        f"results/{SCALE}/logs/lr_sensitivity.log",
    shell:
        "MPLBACKEND=Agg hessbench-report lr-sensitivity --summaries {input.summaries:q} "
        "--out {output:q} > {log:q} 2>&1"


rule curvature:
    input:
        diagnostics=f"results/{SCALE}/diagnostics.parquet",
    output:
        curves=report(
            f"results/{SCALE}/figures/curvature.png",
            caption="../report/curvature.rst",
            category="Curvature",
        ),
        density=report(
            f"results/{SCALE}/figures/spectral_density.png",
            caption="../report/spectral_density.rst",
            category="Curvature",
        ),
    log:
        f"results/{SCALE}/logs/curvature.log",
    shell:
        "MPLBACKEND=Agg hessbench-report curvature --diagnostics {input.diagnostics:q} "
        "--curves {output.curves:q} --density {output.density:q} > {log:q} 2>&1"


rule chains:
    input:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        report(
            f"results/{SCALE}/figures/chains.png",
            caption="../report/chains.rst",
            category="Loss curves",
        ),
    log:
        f"results/{SCALE}/logs/chains.log",
    shell:
        "MPLBACKEND=Agg hessbench-report chains --runs {input.runs:q} "
        "--summaries {input.summaries:q} --out {output:q} > {log:q} 2>&1"


rule lm:
    input:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        figure=report(
            f"results/{SCALE}/figures/lm_validation.png",
            caption="../report/lm_validation.rst",
            category="Loss curves",
        ),
        table=report(
            f"results/{SCALE}/lm.md",
            caption="../report/lm_table.rst",
            category="Leaderboard",
        ),
    log:
        f"results/{SCALE}/logs/lm.log",
    shell:
        "MPLBACKEND=Agg hessbench-report lm --runs {input.runs:q} --summaries {input.summaries:q} "
        "--figure {output.figure:q} --table {output.table:q} > {log:q} 2>&1"


rule fewshot:
    input:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        figure=report(
            f"results/{SCALE}/figures/fewshot_loss_vs_forward.png",
            caption="../report/fewshot_curves.rst",
            category="Loss curves",
        ),
        table=report(
            f"results/{SCALE}/fewshot.md",
            caption="../report/fewshot_table.rst",
            category="Leaderboard",
        ),
    log:
        f"results/{SCALE}/logs/fewshot.log",
    shell:
        "MPLBACKEND=Agg hessbench-report fewshot --runs {input.runs:q} "
        "--summaries {input.summaries:q} --figure {output.figure:q} --table {output.table:q} "
        "> {log:q} 2>&1"


# The scale's figures, each with its caption: the HTML report inlines them after the tables.
CAPTIONS = {
    "loss_vs_step": "loss_vs_step", "loss_vs_wall": "loss_vs_wall",
    "loss_vs_forward": "loss_vs_forward", "metric_vs_step": "metric_curves",
    "metric_vs_wall": "metric_curves", "metric_vs_forward": "metric_curves",
    "performance_profile": "performance_profile", "pareto": "pareto", "memory": "memory",
    "feasibility": "feasibility", "lr_sensitivity": "lr_sensitivity", "curvature": "curvature",
    "spectral_density": "spectral_density", "chains": "chains",
    "lm_validation": "lm_validation", "fewshot_loss_vs_forward": "fewshot_curves",
}  # fmt: skip
PAPER_FIGURES = ("paper_seed003_newton_vs_hf", "paper_seed000_sophia_gpt2",
                 "paper_seed001_hizoo_vs_mezo", "paper_seed000_pinn_nncg",
                 "paper_seed002_lr_robustness")  # fmt: skip
FIGURES = {
    **{f"results/{SCALE}/figures/{name}.png": caption for name, caption in CAPTIONS.items()},
    **{f"results/{SCALE}/paper/{name}.png": name for name in PAPER_FIGURES},
}
FIGURES = {png: f"{workflow.basedir}/workflows/report/{rst}.rst" for png, rst in FIGURES.items()}


rule html_report:
    input:
        summaries=f"results/{SCALE}/summaries.parquet",
        runs=f"results/{SCALE}/runs.parquet",
        figures=list(FIGURES),
    output:
        f"results/{SCALE}/report.html",
    log:
        f"results/{SCALE}/logs/html_report.log",
    params:
        seeds=SEEDS_CONFIGURED,
        figures=" ".join(f"--figure {png} {caption}" for png, caption in FIGURES.items()),
    shell:
        "hessbench-report leaderboard --summaries {input.summaries:q} --runs {input.runs:q} "
        "--html {output:q} --seeds-configured {params.seeds:q} {params.figures} > {log:q} 2>&1"
