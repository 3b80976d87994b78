"""Faults triggered for real (a SIGKILLed process, a memory cap, an exception, a NaN) and what
each leaves behind: its status, and nothing else changed."""

import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from hessbench.workflows import checkpoint
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell
from hessbench.workflows.results import write_json

BIN = Path(sys.executable).parent
SMOKE = load(scale="smoke")
MEASURED = ["wall_s", "peak_mem_bytes"]


def mnist_cell(optimizer="sgd", **settings):
    cell = SMOKE.cell("mnist_mlp", optimizer, "torch", 0)
    tiny = {"hidden": [4], "train_size": 512, "test_size": 128, "steps": 400, "eval_every": 100,
            "batch_size": 16, **settings}  # fmt: skip
    return dataclasses.replace(cell, settings={**cell.settings, **tiny}, checkpoint_minutes=1e-9)


def cell_process(cell, out: Path, log: Path) -> subprocess.Popen:
    command = [str(BIN / "hessbench-cell"), "--cell", cell.to_json(), "--out", str(out),
               "--no-wandb"]  # fmt: skip
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def checkpoint_step(out: Path) -> int:
    try:
        return torch.load(out / checkpoint.FILE, weights_only=False)["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def test_a_sigkilled_cell_leaves_no_result_and_resumes_to_the_uninterrupted_metrics(tmp_path):
    cell = mnist_cell()
    out = tmp_path / "killed"
    process = cell_process(cell, out, tmp_path / "killed.log")
    wait_for(lambda: checkpoint_step(out) >= 150)
    process.send_signal(signal.SIGKILL)  # mid-step or mid-write: it checkpoints every step
    process.wait()
    assert not (out / "summary.json").exists() and not (out / "metrics.parquet").exists()
    killed_at = checkpoint_step(out)
    assert 150 <= killed_at < 400

    rerun = cell_process(cell, out, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed_at"] == [killed_at]
    assert not list(out.glob(".*.tmp")) and not (out / checkpoint.FILE).exists()

    # same config and seed, another process, never stopped: bitwise the same metrics
    whole = run_cell(dataclasses.replace(cell, checkpoint_minutes=1e9), tmp_path / "whole",
                     tmp_path, track=False)  # fmt: skip
    frames = [pd.read_parquet(d / "metrics.parquet") for d in (out, tmp_path / "whole")]
    pd.testing.assert_frame_equal(*(f.drop(columns=MEASURED) for f in frames), check_exact=True)
    assert resumed["final_metric"] == whole["final_metric"]
    assert resumed["timed_steps"] == whole["timed_steps"] == 400  # each step timed once


def test_a_write_killed_midway_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"version": -1})
    writer = (
        "import sys\nfrom hessbench.workflows.results import write_json\n"
        "from pathlib import Path\n"
        "big = 'x' * 4_000_000\n"
        "for i in range(10**6):\n"
        f"    write_json(Path({str(target)!r}), {{'version': i, 'pad': big}})\n"
    )
    delays = random.Random(0)
    for _ in range(30):  # until a kill lands mid-write (most do: writing is most of the loop)
        write_json(target, {"version": -1})
        process = subprocess.Popen([sys.executable, "-c", writer])
        wait_for(lambda: json.loads(target.read_text())["version"] >= 0)  # writing in a loop
        time.sleep(delays.uniform(0, 0.1))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert json.loads(target.read_text())["version"] >= 0  # whole, never torn
        if list(tmp_path.glob(".summary.json.*.tmp")):
            break  # its temporary file is left, under a name no reader takes for a result
    else:
        raise AssertionError("no kill landed mid-write in 30 tries")


def test_running_out_of_memory_ends_oom_and_writes_the_results(tmp_path):
    # a cap on the address space, set after the imports, that the model and its AdamW state
    # cannot fit in
    cell = mnist_cell("adamw", hidden=[4096, 4096], steps=5, eval_every=5)
    script = (
        "import resource, sys\nfrom pathlib import Path\n"
        "from hessbench.workflows.config import Cell\n"
        "from hessbench.workflows.harness import run_cell\n"
        "status = Path('/proc/self/status').read_text().splitlines()\n"
        "vm = next(int(l.split()[1]) for l in status if l.startswith('VmSize')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 200 * 2**20, resource.RLIM_INFINITY))\n"
        "run_cell(Cell.from_json(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[2]), track=False)\n"
    )
    out = tmp_path / "oom"
    done = subprocess.run([sys.executable, "-c", script, cell.to_json(), str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "oom", summary["reason"]
    assert "can't allocate memory" in summary["reason"]
    assert pd.read_parquet(out / "metrics.parquet")["step"].tolist()[:1] == [0]


def test_an_exception_ends_error_with_the_traceback_in_the_log(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):  # fmt: skip
        (data / name).write_bytes(b"\x1f\x8b not gzip")
    cell = mnist_cell(data_dir=str(data))
    process = cell_process(cell, tmp_path / "c", tmp_path / "c.log")
    assert process.wait(timeout=120) == 0  # a failed cell is a result: the sweep goes on
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["status"] == "error"
    log = (tmp_path / "c.log").read_text()
    assert "Traceback (most recent call last)" in log and summary["reason"].split(":")[0] in log


def test_a_nan_ends_diverged_at_that_step_with_the_rows_before_it(tmp_path, monkeypatch):
    from hessbench.tasks import mnist_mlp

    build = mnist_mlp.build

    def poisoned(settings, seed, device):  # the 6th batch holds a NaN pixel
        problem = build(settings, seed, device)
        clean = problem.batches

        def batches():
            for i, (x, y) in enumerate(clean, start=1):
                if i == 6:
                    x = x.clone()
                    x[0, 0] = float("nan")
                yield x, y

        problem.batches = batches()
        return problem

    monkeypatch.setattr(mnist_mlp, "build", poisoned)
    cell = dataclasses.replace(mnist_cell(steps=20, eval_every=10), log_every=1)
    summary = run_cell(cell, tmp_path / "c", tmp_path, track=False)
    assert summary["status"] == "diverged" and "at step 6" in summary["reason"]
    metrics = pd.read_parquet(tmp_path / "c" / "metrics.parquet")
    assert metrics["step"].tolist() == list(range(7))
    assert metrics["train_loss"].iloc[1:6].notna().all() and pd.isna(metrics["train_loss"].iloc[6])
    assert not (tmp_path / "c" / checkpoint.FILE).exists()


def test_cleanup_of_a_killed_writers_leftovers(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / ".summary.json.abc.tmp").write_text("{")
    run_cell(mnist_cell(steps=2, eval_every=2), out, tmp_path, track=False)
    assert not list(out.glob(".*.tmp"))
