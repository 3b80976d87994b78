# `snakemake --cores 1 overhead`: every optimizer against its reference, side by side in one
# process (benchmarks/overhead.py), on this machine's device. Not part of `all`: it times
# things, so run it alone.
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OVERHEAD_ARGS = " ".join(
    f"--{key.replace('_', '-')} {value}" for key, value in config.get("overhead", {}).items()
)


rule overhead:
    output:
        table=f"results/overhead/{DEVICE}.parquet",
        markdown=f"results/overhead/{DEVICE}.md",
    log:
        f"results/overhead/{DEVICE}.log",
    shell:
        "python {workflow.basedir}/benchmarks/overhead.py --out results/overhead "
        "--device {DEVICE} --scale {SCALE} {OVERHEAD_ARGS} > {log:q} 2>&1"
