"""The aggregate step's provenance gate: one code version (``code_sha``) per leaderboard and one
config per entry's seeds, unless asked to mix; and ``code_sha`` follows the code, not the docs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_reports import write_cell

import hessbench
from hessbench.reports.aggregate import aggregate
from hessbench.reports.cli import main
from hessbench.reports.provenance import ProvenanceError
from hessbench.workflows.config import ConfigError, load
from hessbench.workflows.results import code_sha, provenance

REPO = Path(hessbench.__file__).parent
OLD, NEW = "0123456789ab" + "0" * 52, "fedcba987654" + "f" * 52


def summary(root: Path, optimizer: str, seed: int, sha: str | None = NEW, **config) -> Path:
    """A cell's summary.json and metrics.parquet (tests/test_reports.py's), with its config and
    code version."""
    path = write_cell(root, optimizer, seed, [0, 10])
    data = json.loads(path.read_text())
    data["config"] = {
        "scale": "cpu", "task": "toy", "optimizer": optimizer, "impl": optimizer,
        "backend": "torch", "seed": seed, "settings": {"batch_size": 32, "steps": 10},
        "hyperparameters": {"lr": 0.1}, "diagnostics": None, **config,
    }  # fmt: skip
    if sha is not None:
        data["provenance"]["code_sha"] = sha
    path.write_text(json.dumps(data))
    return path


def grid(root: Path, stale: dict[tuple[str, int], str] | None = None) -> list[Path]:
    """sgd and adamw, seeds 0 and 1, all at NEW but the cells ``stale`` maps to another sha."""
    stale = stale or {}
    cells = [(o, s) for o in ("sgd", "adamw") for s in (0, 1)]
    return [summary(root, o, s, stale.get((o, s), NEW)) for o, s in cells]


def cell_dir(path: Path) -> str:
    return str(path.parent)


def test_one_code_version_and_config_aggregates(tmp_path):
    runs, summaries = aggregate(grid(tmp_path))
    assert len(summaries) == 4 and len(runs) == 8
    assert summaries["code_sha"].tolist() == [NEW[:12]] * 4


def test_two_code_versions_are_refused_naming_both_and_their_cells(tmp_path):
    paths = grid(tmp_path, stale={("adamw", 1): OLD})
    with pytest.raises(ProvenanceError) as err:
        aggregate(paths)
    text = str(err.value)
    assert "2 code versions" in text
    old_at, new_at = text.index(OLD[:12]), text.index(NEW[:12])
    # the stale cell is listed under the old sha, the other three under the new one
    assert new_at < old_at  # the majority first
    assert text.index(cell_dir(paths[3])) > old_at
    assert all(new_at < text.index(cell_dir(p)) < old_at for p in paths[:3])
    assert "--forcerun cell" in text and "allow_mixed_provenance=True" in text

    _, summaries = aggregate(paths, allow_mixed_provenance=True)
    assert sorted(summaries["code_sha"]) == sorted([NEW[:12]] * 3 + [OLD[:12]])


def test_a_summary_without_code_sha_is_its_own_version(tmp_path):
    paths = [summary(tmp_path, "sgd", 0), summary(tmp_path, "sgd", 1, sha=None)]
    with pytest.raises(ProvenanceError, match="unknown: 1 cell"):
        aggregate(paths)
    _, summaries = aggregate(paths, allow_mixed_provenance=True)
    assert summaries["code_sha"][0] == NEW[:12] and pd.isna(summaries["code_sha"][1])


def test_seeds_of_one_entry_with_different_hyperparameters_are_refused(tmp_path):
    paths = [
        summary(tmp_path, "sgd", 0),
        summary(tmp_path, "sgd", 1, hyperparameters={"lr": 0.01}),
        summary(tmp_path, "adamw", 0),
    ]
    with pytest.raises(ProvenanceError) as err:
        aggregate(paths)
    text = str(err.value)
    assert (
        "cpu/toy/sgd/torch: seeds run under 2 configs, differing in ['hyperparameters.lr']" in text
    )
    assert "hyperparameters.lr=0.1" in text and "hyperparameters.lr=0.01" in text
    assert cell_dir(paths[0]) in text and cell_dir(paths[1]) in text
    assert cell_dir(paths[2]) not in text  # adamw's seeds agree
    assert "code versions" not in text  # one version: only the config is wrong
    assert len(aggregate(paths, allow_mixed_provenance=True)[1]) == 3


def test_seed_diagnostics_and_other_entries_may_differ(tmp_path):
    # A seed differs by its seed, and the config diagnoses some seeds only; different entries
    # (adamw, another lr) are different rows of the leaderboard, not a mix.
    paths = [
        summary(tmp_path, "sgd", 0, diagnostics={"points": 3}),
        summary(tmp_path, "sgd", 1),
        summary(tmp_path, "adamw", 0, hyperparameters={"lr": 1e-3, "eps": 1e-8}),
    ]
    assert len(aggregate(paths)[1]) == 3


def test_cli_exits_non_zero_with_the_message_and_mixes_on_request(tmp_path, capsys):
    paths = grid(tmp_path / "results", stale={("sgd", 0): OLD})
    out = tmp_path / "out"
    out.mkdir()
    tables = ["--runs", str(out / "runs.parquet"), "--summaries", str(out / "s.parquet")]
    assert main(["aggregate", *map(str, paths), *tables]) != 0
    err = capsys.readouterr().err
    assert OLD[:12] in err and NEW[:12] in err and cell_dir(paths[0]) in err
    assert "Traceback" not in err and not (out / "s.parquet").exists()

    assert main(["aggregate", *map(str, paths), *tables, "--allow-mixed-provenance"]) == 0
    assert set(pd.read_parquet(out / "s.parquet")["code_sha"]) == {OLD[:12], NEW[:12]}


CODE = ["Snakefile", "optimizers/torch/base.py", "tasks/toy.py", "workflows/rules/cells.smk",
        "tasks/data/paper.yaml"]  # fmt: skip
NOT_CODE = ["README.md", "docs/architecture.md", "workflows/config/default.yaml",
            "tasks/__pycache__/toy.cpython-311.pyc", "reports/leaderboard.py"]  # fmt: skip


def tree(root: Path) -> Path:
    for rel in CODE + NOT_CODE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    return root


@pytest.mark.parametrize("rel", CODE)
def test_code_sha_changes_with_the_code(tmp_path, rel):
    root = tree(tmp_path)
    before = code_sha(root)
    assert len(before) == 64 and before == code_sha(root)  # deterministic
    (root / rel).write_text((root / rel).read_text() + "x = 1\n")
    assert code_sha(root) != before


def test_code_sha_changes_when_code_is_added_or_renamed(tmp_path):
    root = tree(tmp_path)
    before = code_sha(root)
    (root / "optimizers/torch/base.py").rename(root / "optimizers/torch/base2.py")
    renamed = code_sha(root)
    (root / "tasks/new.py").write_text("")
    assert len({before, renamed, code_sha(root)}) == 3


@pytest.mark.parametrize("rel", NOT_CODE)
def test_code_sha_ignores_docs_the_grid_and_caches(tmp_path, rel):
    root = tree(tmp_path)
    before = code_sha(root)
    (root / rel).write_text("changed\n")
    assert code_sha(root) == before


def test_code_sha_of_a_copy_of_the_repository(tmp_path):
    copy = tmp_path / "hessbench"
    skip = (".*", "results", "data", "__pycache__", "*.egg-info")
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*skip))
    assert provenance(torch.device("cpu"), 0)["code_sha"] == code_sha(REPO) == code_sha(copy)
    (copy / "README.md").write_text("docs only\n")
    assert code_sha(copy) == code_sha(REPO)
    target = copy / "optimizers" / "torch" / "baselines.py"
    target.write_text(target.read_text() + "\n# a comment is a change\n")
    assert code_sha(copy) != code_sha(REPO)


def test_the_config_key_is_a_boolean():
    assert load(scale="smoke", allow_mixed_provenance=True).scale == "smoke"
    with pytest.raises(ConfigError, match="allow_mixed_provenance.*reads True and False"):
        load(scale="smoke", allow_mixed_provenance="true")


@pytest.mark.parametrize("allow", [True, None])
def test_the_aggregate_rule_passes_the_flag_only_when_configured(tmp_path, allow):
    config = ["scale=smoke"] + ([f"allow_mixed_provenance={allow}"] if allow else [])
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "results/smoke/runs.parquet", "-n", "-p", "--config", *config],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (command,) = [line for line in done.stdout.splitlines() if "hessbench-report aggregate" in line]
    assert ("--allow-mixed-provenance" in command) == bool(allow)
