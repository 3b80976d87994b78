"""The Snakemake profiles under workflows/profiles/: each builds the DAG, every cell job asks for
what the config says (read off real dry runs), and the SLURM executor's sbatch call for a cell
(a fake sbatch records it: nothing here needs a cluster)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import hessbench
from hessbench.workflows.config import DEFAULT_CONFIG, load

REPO = Path(hessbench.__file__).parent
PROFILES = ("local", "gpu", "slurm")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# a cluster's names for `slurm:`; at `gpu` scale one task instance runs without a GPU
CLUSTER = """slurm: {account: lab, partition: cpu, gpu_partition: gpu}
scales: {gpu: {resources: {tasks: {mnist_mlp: {gpus: 0}}}}}
"""


def profile(name: str) -> list[str]:
    return ["--profile", f"workflows/profiles/{name}"]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, str]:
    """The dry runs' output (`-F`: every job listed, whatever results/ holds), run at once."""
    cluster = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    cluster.write_text(CLUSTER)
    runs = {name: [*profile(name), "--config", "scale=smoke"] for name in PROFILES}
    runs["slurm-gpu"] = [*profile("slurm"), "--config", "scale=gpu", "--configfile", str(cluster)]
    procs = {
        key: subprocess.Popen(
            [*SNAKEMAKE, "-n", "-F", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key, args in runs.items()
    }
    out = {}
    for key, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{runs[key]}:\n{text[-3000:]}"
        out[key] = text
    return out


def jobs(output: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """A dry run's jobs: (rule, wildcards, resources), each as printed."""

    def pairs(block: str, key: str) -> dict[str, str]:
        found = re.search(rf"^\s+{key}: (.*)$", block, re.M)
        return dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}

    return [
        (block.split(":", 1)[0], pairs(block, "wildcards"), pairs(block, "resources"))
        for block in re.split(r"^(?:local)?rule ", output, flags=re.M)[1:]
    ]


def cells(output: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    return [(wildcards, res) for rule, wildcards, res in jobs(output) if rule == "cell"]


@pytest.mark.parametrize("name", PROFILES)
def test_profile_parses_and_builds_the_smoke_dag(name, dry_runs):
    settings = yaml.safe_load((REPO / "workflows" / "profiles" / name / "config.yaml").read_text())
    assert isinstance(settings, dict) and settings["keep-going"] and settings["rerun-incomplete"]
    output = dry_runs[name]
    # the local profile is also the workflow's default (profiles/default links to it)
    assert re.search(rf"Using profiles? workflows/profiles/{name}[ \n]", output)
    assert "workflow specific profile profiles/default" in output
    expected = {c.path for c in load(DEFAULT_CONFIG, scale="smoke").cells}
    path = "{scale}/{task}/{optimizer}/{backend}/seed{seed}"
    listed = {path.format(**wildcards) for wildcards, _ in cells(output)}
    assert listed == expected
    assert re.search(rf"^cell\s+{len(expected)}$", output, re.M)  # the job stats table
    assert re.search(r"^total\s+\d+$", output, re.M)


def test_an_entry_on_two_backends_is_configured_for_its_seeds_not_its_cells(dry_runs):
    # the leaderboard ranks an entry only with every configured seed: mnist_mlp's hf_gn runs
    # seeds 0 and 1 on torch and on jax, 2 seeds per entry (4 would leave both unranked)
    found = re.search(r"leaderboard .*--seeds-configured '(\{.*?\})'", dry_runs["local"])
    seeds = json.loads(found.group(1))
    assert seeds["mnist_mlp/hf_gn"] == 2 and seeds["pinn_reaction/nncg_alone"] == 1
    assert seeds["gpt2/adamw"] == 1


def test_gpu_profile_gives_every_cell_the_one_gpu(dry_runs):
    settings = yaml.safe_load((REPO / "workflows" / "profiles" / "gpu" / "config.yaml").read_text())
    assert settings["resources"] == {"gpu": 1}  # the machine's one GPU...
    assert settings["set-resources"] == {"cell": {"gpu": 1}}  # ...which a cell holds alone
    assert "scale" not in str(settings.get("config", ""))  # the scale is the user's choice
    assert {res["gpu"] for _, res in cells(dry_runs["gpu"])} == {"1"}
    # without the profile the smoke scale's cells ask for none (its config sets no `gpus`)
    assert {res["gpu"] for _, res in cells(dry_runs["local"])} == {"0"}
    others = [res for rule, _, res in jobs(dry_runs["gpu"]) if rule != "cell"]
    assert others and not any("gpu" in res for res in others)


def test_slurm_profile_resources_come_from_the_config(dry_runs):
    # smoke, no `slurm:` section: no partition or account, so the cluster's defaults
    smoke = cells(dry_runs["slurm"])
    for _, res in smoke:
        assert (res["runtime"], res["mem_mb"], res["gpu"]) == ("15", "4000", "0")
        assert "slurm_partition" not in res and "slurm_account" not in res
    others = [res for rule, _, res in jobs(dry_runs["slurm"]) if rule != "cell"]
    assert others and all(res["runtime"] == "30" for res in others)  # default-resources
    # gpu, with CLUSTER: gpu_partition for GPU cells, the per-task runtime and gpus overrides
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())["scales"]["gpu"]["resources"]
    long = {task for task, own in config["tasks"].items() if own.get("runtime_minutes") == 1440}
    gpu = cells(dry_runs["slurm-gpu"])
    assert len(gpu) == len(load(DEFAULT_CONFIG, scale="gpu").cells)
    for wildcards, res in gpu:
        task = wildcards["task"]
        assert res["runtime"] == ("1440" if task in long else "240"), task
        assert (res["mem_mb"], res["slurm_account"]) == ("32000", "lab")
        cpu_only = task == "mnist_mlp"
        assert (res["gpu"], res["slurm_partition"]) == (("0", "cpu") if cpu_only else ("1", "gpu"))
    assert {"sst2_k16", "trec_k16"} <= long and {w["task"] for w, _ in gpu} >= long


# Stand-ins for SLURM's client commands, first on PATH: each records its argv (JSON, one line per
# call) and prints what the plugin parses. `sbatch --parsable` prints the job id;
# `sinfo -o %P` the partitions, the default starred; `sacctmgr` the user's accounts (the
# plugin checks `slurm_account` against them); `scontrol show config` MinJobAge and
# MaxArraySize; `sacct`, `squeue`, `sshare`, `scancel` print nothing: the job stays queued.
FAKE = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
print({{"sbatch": "4242", "sinfo": "PARTITION\\nshort*\\nlong", "sacctmgr": "lab",
       "scontrol": "MinJobAge = 300 sec\\nMaxArraySize = 1001"}}.get(name, ""))
"""
FAKES = ("sbatch", "sinfo", "sacctmgr", "scontrol", "sacct", "squeue", "sshare", "scancel")


def submit(tmp: Path, target: str, *args: str) -> subprocess.Popen:
    """Snakemake with the SLURM profile on one cell, the checkout's Snakefile and config but a
    scratch working directory (its .snakemake/ and results/ are left alone)."""
    (tmp / "work").mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{tmp.parent / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_SLURM_LOG": str(tmp / "calls.jsonl"),
    }
    command = [*SNAKEMAKE, *profile("slurm"), "--directory", str(tmp / "work"), "--jobs", "1"]
    return subprocess.Popen(
        [*command, target, *args],  # after the target: --config takes every word
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # killed as a group once sbatch has been called
    )


def sbatch_call(tmp: Path, proc: subprocess.Popen, deadline: float) -> list[str]:
    calls, submitted = tmp / "calls.jsonl", []
    while not submitted and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        lines = calls.read_text().splitlines() if calls.exists() else []
        submitted = [json.loads(line)[1:] for line in lines if json.loads(line)[0] == "sbatch"]
    if proc.poll() is None:  # Snakemake would poll sacct until the fake job ends: never
        os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0]
    assert submitted, f"no sbatch call:\n{output[-3000:]}"
    assert len(submitted) == 1, submitted
    return submitted[0]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_slurm_sbatch_call(tmp_path):
    (tmp_path / "bin").mkdir()
    for name in FAKES:
        (tmp_path / "bin" / name).write_text(FAKE.format(python=sys.executable))
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    smoke = "results/smoke/mnist_mlp/sgd/torch/seed0/summary.json"
    gpu = "results/gpu/mnist_mlp_h10/sgd/torch/seed0/summary.json"
    cluster = ["--configfile", str(tmp_path / "cluster.yaml")]
    procs = {
        "smoke": submit(tmp_path / "smoke", smoke, "--config", "scale=smoke"),
        "gpu": submit(tmp_path / "gpu", gpu, "--config", "scale=gpu", *cluster),
    }
    deadline = time.monotonic() + 90
    argv = {key: sbatch_call(tmp_path / key, proc, deadline) for key, proc in procs.items()}
    for key, args in argv.items():
        assert re.fullmatch(r"hessbench_[0-9a-f-]{36}", value(args, "--job-name"))
        assert value(args, "-D") == str(tmp_path / key / "work")
        assert "--cpus-per-task=1" in args  # the scale's `threads`
        wrap = next(a for a in args if a.startswith("--wrap="))
        assert f"--config 'scale={key}'" in wrap and "--target-jobs 'cell:" in wrap
    # smoke: no `slurm:` section: the cluster's default partition (sinfo's starred one), no
    # account (none to guess from sacct), one task, the scale's limits, no GPU
    cpu = argv["smoke"]
    assert value(cpu, "--comment") == "rule_cell_wildcards_smoke_mnist_mlp_sgd_torch_0"
    assert (value(cpu, "-p"), value(cpu, "-t"), value(cpu, "--mem")) == ("short", "15", "4000")
    assert "-A" not in cpu and "--ntasks=1" in cpu
    assert not any(a.startswith(("--gpus", "--gres")) for a in cpu)
    # gpu: CLUSTER's account and GPU partition, one GPU, the gpu scale's limits
    gpu = argv["gpu"]
    assert value(gpu, "--comment") == "rule_cell_wildcards_gpu_mnist_mlp_h10_sgd_torch_0"
    assert (value(gpu, "-A"), value(gpu, "-p")) == ("lab", "gpu")
    assert (value(gpu, "-t"), value(gpu, "--mem")) == ("240", "32000")
    assert "--gpus=1" in gpu
