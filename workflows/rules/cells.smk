# One job per cell (scale, task, optimizer, backend, seed). The harness always writes
# summary.json (failures included, with their status), so one bad cell never stops the sweep.


rule cell:
    input:
        lambda wildcards: cell_inputs(PLAN.cell_of(wildcards)),
    output:
        summary="results/{scale}/{task}/{optimizer}/{backend}/seed{seed}/summary.json",
        metrics="results/{scale}/{task}/{optimizer}/{backend}/seed{seed}/metrics.parquet",
        diagnostics="results/{scale}/{task}/{optimizer}/{backend}/seed{seed}/diagnostics.parquet",
    log:
        "results/{scale}/logs/{task}/{optimizer}/{backend}/seed{seed}.log",
    params:
        cell=lambda wildcards: PLAN.cell_of(wildcards).to_json(),
        out=subpath(output.summary, parent=True),
    wildcard_constraints:
        seed=r"\d+",
    threads: lambda wildcards: PLAN.cell_of(wildcards).threads
    # From the config (workflows/config.py: _resources). A local run counts `gpu` and `mem_mb`
    # only against a --resources limit (the gpu profile's gpu=1); the rest is for the SLURM
    # executor, which leaves an unset partition, account or time limit to the cluster.
    resources:
        mem_mb=lambda wc: PLAN.resources[wc.task]["mem_mb"],
        runtime=lambda wc: PLAN.resources[wc.task]["runtime"],
        gpu=lambda wc: PLAN.resources[wc.task]["gpu"],
        slurm_partition=lambda wc: PLAN.resources[wc.task]["slurm_partition"],
        slurm_account=lambda wc: PLAN.resources[wc.task]["slurm_account"],
    shell:
        "hessbench-cell --cell {params.cell:q} --out {params.out:q} --threads {threads} "
        "--results-root results > {log:q} 2>&1"
