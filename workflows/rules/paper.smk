# Paper figures: each regenerates one figure (or table) of the seeds from this scale's cells,
# beside the paper's numbers (reports/paper.py); a figure whose cells this scale does not run is
# a placeholder naming them. `snakemake paper` builds them all.

PAPER_DIR = f"results/{SCALE}/paper"


rule paper_figures:
    input:
        runs=f"results/{SCALE}/runs.parquet",
        summaries=f"results/{SCALE}/summaries.parquet",
    output:
        seed003=report(
            f"{PAPER_DIR}/paper_seed003_newton_vs_hf.png",
            caption="../report/paper_seed003_newton_vs_hf.rst",
            category="Paper figures",
        ),
        sophia=report(
            f"{PAPER_DIR}/paper_seed000_sophia_gpt2.png",
            caption="../report/paper_seed000_sophia_gpt2.rst",
            category="Paper figures",
        ),
        hizoo=report(
            f"{PAPER_DIR}/paper_seed001_hizoo_vs_mezo.png",
            caption="../report/paper_seed001_hizoo_vs_mezo.rst",
            category="Paper figures",
        ),
        nncg=report(
            f"{PAPER_DIR}/paper_seed000_pinn_nncg.png",
            caption="../report/paper_seed000_pinn_nncg.rst",
            category="Paper figures",
        ),
        lr=report(
            f"{PAPER_DIR}/paper_seed002_lr_robustness.png",
            caption="../report/paper_seed002_lr_robustness.rst",
            category="Paper figures",
        ),
        cost=report(
            f"{PAPER_DIR}/paper_seed002_adahessian_cost.md",
            caption="../report/paper_seed002_adahessian_cost.rst",
            category="Paper figures",
        ),
    log:
        f"results/{SCALE}/logs/paper.log",
    params:
        out_dir=PAPER_DIR,
    # the file names are reports/paper.py's FIGURES and TABLES (tests/test_paper.py checks)
    shell:
        "MPLBACKEND=Agg python -m hessbench.reports.paper --runs {input.runs:q} "
        "--summaries {input.summaries:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule paper:
    input:
        rules.paper_figures.output,
