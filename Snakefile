# hessbench: cross every optimizer with every task at one scale, then report.
#   snakemake --cores all                      # the default `cpu` scale
#   snakemake --cores all --config scale=smoke # seconds-long smoke run
import sys

from snakemake.utils import min_version

from hessbench.workflows.config import cell_inputs, check_data, resolve

min_version("9.0")


report: "workflows/report/workflow.rst"


configfile: f"{workflow.basedir}/workflows/config/default.yaml"


# Validates the whole config (schema, optimizer and task names, hyperparameters) before the
# DAG exists: a bad key stops here, before any job runs.
PLAN = resolve(config)
if PLAN.torch_only_message():
    print(PLAN.torch_only_message(), file=sys.stderr)
check_data(PLAN)  # the files its cells read: present, with their pinned hashes
SCALE = PLAN.scale
CELLS = PLAN.cells


include: "workflows/rules/data.smk"
include: "workflows/rules/cells.smk"
include: "workflows/rules/report.smk"
include: "workflows/rules/overhead.smk"
include: "workflows/rules/paper.smk"


# Everything the scale reports: the tables, the leaderboards (markdown and HTML), every figure,
# the paper figures and the one-file HTML report. `snakemake report` is the same set by name.
REPORTS = [
    f"results/{SCALE}/runs.parquet",
    f"results/{SCALE}/leaderboard.md",
    f"results/{SCALE}/leaderboard.html",
    f"results/{SCALE}/report.html",
    f"results/{SCALE}/feasibility.md",
    f"results/{SCALE}/lm.md",
    f"results/{SCALE}/fewshot.md",
    *FIGURES,
    *rules.paper_figures.output,
]


rule all:
    input:
        REPORTS,
    default_target: True


rule report:
    input:
        REPORTS,
