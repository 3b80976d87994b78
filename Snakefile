# hessbench: cross every optimizer with every task at one scale, then report.
#   snakemake --cores all                      # the default `cpu` scale
#   snakemake --cores all --config scale=smoke # seconds-long smoke run
from snakemake.utils import min_version

from hessbench.workflows.config import cell_inputs, check_data, resolve

min_version("9.0")


report: "workflows/report/workflow.rst"


configfile: f"{workflow.basedir}/workflows/config/default.yaml"


# Validates the whole config (schema, optimizer and task names, hyperparameters) before the
# DAG exists: a bad key stops here, before any job runs.
PLAN = resolve(config)
check_data(PLAN)  # the files its cells read: present, with their pinned hashes
SCALE = PLAN.scale
CELLS = PLAN.cells


include: "workflows/rules/data.smk"
include: "workflows/rules/cells.smk"
include: "workflows/rules/report.smk"
include: "workflows/rules/overhead.smk"


rule all:
    input:
        f"results/{SCALE}/leaderboard.md",
        f"results/{SCALE}/runs.parquet",
        f"results/{SCALE}/figures/loss_vs_step.png",
        f"results/{SCALE}/figures/loss_vs_wall.png",
        f"results/{SCALE}/figures/loss_vs_forward.png",
        f"results/{SCALE}/figures/lr_sensitivity.png",
        f"results/{SCALE}/figures/curvature.png",
        f"results/{SCALE}/figures/spectral_density.png",
        f"results/{SCALE}/figures/chains.png",
        f"results/{SCALE}/figures/lm_validation.png",
        f"results/{SCALE}/lm.md",
        f"results/{SCALE}/figures/fewshot_loss_vs_forward.png",
        f"results/{SCALE}/fewshot.md",
    default_target: True
