# Reports read result files only: the summary.json and metrics.parquet of this scale's cells.

SUMMARIES = [f"results/{c.path}/summary.json" for c in CELLS]
# aggregate stops on cells of different code versions, or seeds of one entry run under different
# configs, unless `--config allow_mixed_provenance=True` (reports/provenance.py)
MIXED = "--allow-mixed-provenance" if config.get("allow_mixed_provenance", False) else ""


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
    output:
        report(
            f"results/{SCALE}/leaderboard.md",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
    log:
        f"results/{SCALE}/logs/leaderboard.log",
    shell:
        "hessbench-report leaderboard --summaries {input.summaries:q} --out {output:q} > {log:q} 2>&1"


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
