# `snakemake --cores 1 overhead`: every optimizer against its reference, side by side in one
# process (benchmarks/overhead.py), on this machine's device. Not part of `all`: it times
# things, so run it alone. It reruns when the script, an optimizer or the config changes.
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OVERHEAD_ARGS = " ".join(
    f"--{key.replace('_', '-')} {value}" for key, value in config.get("overhead", {}).items()
)


rule overhead:
    input:
        script=f"{workflow.basedir}/benchmarks/overhead.py",
        code=sorted(str(p) for p in Path(workflow.basedir, "optimizers").rglob("*.py")),
        config=f"{workflow.basedir}/workflows/config/default.yaml",
    output:
        table=f"results/overhead/{DEVICE}.parquet",
        markdown=f"results/overhead/{DEVICE}.md",
    log:
        f"results/overhead/{DEVICE}.log",
    shell:
        "python {input.script:q} --out results/overhead "
        "--device {DEVICE} --scale {SCALE} {OVERHEAD_ARGS} > {log:q} 2>&1"
