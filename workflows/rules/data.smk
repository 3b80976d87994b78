# Prepared data that cells read. A task module's `inputs(settings)` names the files its cells
# need; the rules here make them. The manifest is written last (tasks/gpt2_data.py), so a killed
# prep leaves no manifest and the next run redoes it.


rule gpt2_data:
    output:
        train="data/gpt2/{corpus}/train.bin",
        val="data/gpt2/{corpus}/val.bin",
        manifest="data/gpt2/{corpus}/manifest.json",
    log:
        "data/gpt2/{corpus}/prep.log",
    wildcard_constraints:
        corpus="offline|openwebtext",
    shell:
        "python -m hessbench.tasks.gpt2_data --corpus {wildcards.corpus} "
        "--out data/gpt2/{wildcards.corpus} --cache-dir data/tiktoken > {log:q} 2>&1"
