"""A sweep under real Snakemake where one cell's process is SIGKILLed and another diverges: the
other cells still run (--keep-going is the default), nothing they wrote changes afterwards, the
next run redoes only the killed cell (resuming it from its checkpoint), and the leaderboard
shows every status."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import hessbench
from hessbench.tasks.mnist_data import bundled_dir
from hessbench.workflows import checkpoint

REPO = Path(hessbench.__file__).parent
GRID = """
scales:
  faults:
    seeds: [0]
    log_every: 5
    checkpoint_minutes: 1.0e-9  # every step
    optimizer_settings:
      slow: {steps: 3000}
      nan: {hidden: [32]}  # as the smoke grid's diverging entry (a narrower net just dies)
    tasks:
      mnist_mlp:
        hidden: [4]
        train_size: 512
        test_size: 128
        batch_size: 16
        steps: 30
        eval_every: 10
        target: 0.3
        optimizers:
          sgd:
          adamw:
          slow: {impl: sgd}
          nan: {impl: sgd, lr: 1.0e+6, momentum: 0.9}
"""
CELLS = "results/faults/mnist_mlp/{}/torch/seed0"


def snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "WANDB_MODE": "disabled", "MPLBACKEND": "Agg", "PATH": path}
    command = [sys.executable, "-m", "snakemake", "results/faults/leaderboard.md", "-s",
               str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "1", *args,
               "--config", "scale=faults", "--configfile", str(workdir / "grid.yaml")]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def cell_pids(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "hessbench-cell" in cmdline and needle in cmdline and "bash" not in cmdline:
            pids.append(int(proc.name))
    return pids


def checkpoint_step(cell_dir: Path) -> int:
    try:
        return torch.load(cell_dir / checkpoint.FILE, weights_only=False)["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def fingerprints(root: Path, skip: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents and "logs" not in p.parts
    }  # fmt: skip


def test_a_killed_cell_stops_nothing_else_and_the_next_run_resumes_only_it(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    slow = tmp_path / CELLS.format("slow")
    first = snakemake(tmp_path, "--prioritize", f"{CELLS.format('slow')}/summary.json")
    end = time.monotonic() + 240
    while checkpoint_step(slow) < 50:
        assert first.poll() is None and time.monotonic() < end, first.stdout.read()
        time.sleep(0.05)
    pids = cell_pids("/slow/")
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)  # as the kernel's OOM killer or a lost node would
    log = first.communicate(timeout=300)[0]
    assert first.returncode != 0, log

    killed_at = checkpoint_step(slow)
    assert killed_at >= 50 and not (slow / "summary.json").exists()
    statuses = {
        name: json.loads((tmp_path / CELLS.format(name) / "summary.json").read_text())["status"]
        for name in ("sgd", "adamw", "nan")
    }  # the three queued behind the killed cell ran all the same
    assert statuses == {"sgd": "ok", "adamw": "ok", "nan": "diverged"}
    assert not (tmp_path / "results/faults/leaderboard.md").exists()
    before = fingerprints(tmp_path / "results", skip=slow)

    second = snakemake(tmp_path)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log
    assert log.count("rule cell:") == 1  # only the killed cell ran again
    summary = json.loads((slow / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["resumed_at"] == [killed_at]
    assert summary["timed_steps"] == summary["steps_done"] == 3000
    after = fingerprints(tmp_path / "results", skip=slow)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else rewritten
    board = (tmp_path / "results/faults/leaderboard.md").read_text()
    assert "diverged" in board and "slow" in board


def test_a_data_file_with_the_wrong_hash_stops_the_run_before_any_job(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    for path in bundled_dir().glob("*.gz"):
        (data / path.name).write_bytes(path.read_bytes())
    raw = bytearray((data / "train-labels-idx1-ubyte.gz").read_bytes())
    raw[-20] ^= 0xFF
    (data / "train-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    grid = yaml.safe_load(GRID)
    grid["scales"]["faults"]["tasks"]["mnist_mlp"]["data_dir"] = str(data)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    earlier = tmp_path / CELLS.format("sgd") / "summary.json"  # a result of an earlier run
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"status": "ok"}')
    run = snakemake(tmp_path)
    log = run.communicate(timeout=120)[0]
    assert run.returncode != 0
    assert "data error in task mnist_mlp at scale faults" in log
    assert "train-labels-idx1-ubyte.gz: corrupt MNIST file" in log
    assert "Select jobs to execute" not in log and "rule cell:" not in log
    assert [p.name for p in (tmp_path / "results").rglob("*") if p.is_file()] == ["summary.json"]
    assert earlier.read_text() == '{"status": "ok"}'
