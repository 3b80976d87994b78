"""The overhead benchmark's pieces on the smoke scale: a timed pair, a memory probe in a fresh
process, the table's rows for missing and infeasible optimizers, and the Snakemake target."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import hessbench
from hessbench.reports.overhead_table import overhead_markdown

REPO = Path(hessbench.__file__).parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead", REPO / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["overhead"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_a_pair_alternates_on_shared_batches_and_counts_the_methods_oracles(overhead):
    entries = overhead.config_entries(overhead.DEFAULT_CONFIG)
    pair = overhead.Pair("x", "sophia_h", "adamw", {"update_interval": 2})
    row = overhead.time_pair(pair, "mnist_mlp", "smoke", CPU, entries, steps=6, warmup=2,
                             budget_s=60.0)  # fmt: skip
    assert row["steps"] == 6 and row["time ratio"] > 0
    assert row["time min"] <= row["time ratio"] <= row["time max"]
    # 8 steps, a Hutchinson refresh on every second: 4 HVPs
    assert row["oracle calls per step"] == "forward 1.00, backward 1.00, hvp 0.50"
    assert row["state / param bytes"] == pytest.approx(2.0, rel=1e-3)  # m and h


def test_memory_probe_sees_optimizer_state_and_transients(overhead):
    # 784-128-10: every difference asserted is larger than the resident-set counters' lag
    # (up to 64 pages); the smoke model's are not
    sizes = {
        entry: overhead.memory_of(entry, {}, "mnist_mlp", "sgd", "cpu", 2, CPU, 1)
        for entry in ("adahessian", "mezo", "hizoo", overhead.FORWARD)
    }
    params = 4 * (784 * 128 + 128 + 128 * 10 + 10)
    assert sizes[overhead.FORWARD] >= params
    # MeZO is inference level: z is drawn piece by piece, so the two peaks differ by less than
    # the counters' lag either way (a whole z, params bytes, would not fit in that)
    assert params > 64 * 4096
    assert abs(sizes["mezo"] - sizes[overhead.FORWARD]) < 64 * 4096
    # HiZOO's H, built with the optimizer, counts (one float32 per parameter)
    assert sizes["hizoo"] - sizes["mezo"] > params / 4
    # AdaHessian: gradient, two moments, the Hessian diagonal and the HVP's graph
    assert sizes["adahessian"] - sizes["mezo"] > 2 * params


def test_table_lists_missing_and_infeasible_optimizers(overhead):
    table = pd.DataFrame([
        {"pair": "HiZOO vs MeZO", "paper": "1.4-1.5", "time goal": 1.4,
         "status": "not landed (hizoo, mezo)"},
        {"pair": "newton vs SGD", "task": "big", "status": "infeasible: needs 154 GiB"},
        {"pair": "Sophia-G vs AdamW", "task": "mnist_mlp", "params": 100, "steps": 50,
         "time ratio": 1.04, "time min": 1.0, "time max": 1.1, "time goal": 1.03,
         "memory ratio": 1.2, "memory goal": 1.5, "reference step memory (MiB)": 2.0,
         "status": "ok"},
        {"pair": "MeZO vs forward only", "memory ratio": 30.0, "memory goal": 1.05,
         "reference step memory (MiB)": 0.03, "status": "ok"},
    ])  # fmt: skip
    lines = overhead_markdown(table, "CPU", "cpu", "torch x", 1, "smoke", 50).splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert rows["HiZOO vs MeZO"].endswith("| not landed (hizoo, mezo) |")
    assert "nan" not in rows["HiZOO vs MeZO"]
    assert "infeasible: needs 154 GiB" in rows["newton vs SGD"]
    assert "| time > 1.03, memory ok |" in rows["Sophia-G vs AdamW"]
    # a reference under the resident-set counters' resolution gives no ratio and no verdict
    assert "| below resolution (– / 0.0) |" in rows["MeZO vs forward only"]
    assert "memory" not in rows["MeZO vs forward only"].split("|")[-3]


def test_snakemake_knows_the_overhead_target(tmp_path):
    options = tmp_path / "overhead.yaml"
    options.write_text("overhead: {steps: 5, budget: 1.5}\n")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "overhead",
         "--directory", str(tmp_path), "--config", "scale=smoke", "--configfile", str(options)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "overhead" in out.stdout and "--steps 5 --budget 1.5" in out.stdout + out.stderr
