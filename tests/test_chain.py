"""Chained schedules: the chain optimizer against its phases run by hand, its parsing and
validation in the config, and a chained PINN cell through the harness."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import yaml

from hessbench.optimizers.torch.nystrom import NystromApprox
from hessbench.optimizers.torch.objective import Counters
from hessbench.optimizers.torch.registry import ConfigError, build_config
from hessbench.workflows.config import DEFAULT_CONFIG, Cell, parse_chain, resolve
from hessbench.workflows.diagnostics import inverse_sqrt_preconditioner
from hessbench.workflows.harness import run_cell

from problems import F64, Scalar, quadratic, scalar_objective, spd

A, _ = spd([1.0, 3.0, 10.0, 30.0])
B = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
PHASES = [
    {"name": "sgd", "impl": "sgd", "hyperparameters": {"lr": 0.01}, "steps": 3},
    {"name": "nncg", "impl": "nncg", "hyperparameters": {"seed": 5}, "steps": None},
]


def _run(optimizer, model, steps, counters):
    return [optimizer.step(scalar_objective(model, counters)) for _ in range(steps)]


def test_a_chain_is_its_phases_one_after_another_on_one_set_of_counters():
    chained = Scalar(quadratic(A, B), torch.zeros(4))
    counters = Counters()
    chain = build_config("chain", {"phases": PHASES}).build(chained.parameters())
    records = _run(chain, chained, 6, counters)
    assert [r["phase"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert chain.switches == [3]

    by_hand = Scalar(quadratic(A, B), torch.zeros(4))
    hand = Counters()
    sgd = build_config("sgd", {"lr": 0.01}).build(by_hand.parameters())
    _run(sgd, by_hand, 3, hand)
    nncg = build_config("nncg", {"seed": 5}).build(by_hand.parameters())
    _run(nncg, by_hand, 3, hand)
    assert torch.equal(chained.theta, by_hand.theta)
    assert counters == hand  # forward, backward and HVP counts carry across the switch
    assert chain.param_groups[0]["lr"] == nncg.param_groups[0]["lr"]


@pytest.mark.parametrize(
    "phases, message",
    [
        (PHASES[:1], "at least two phases"),
        ([PHASES[0], {**PHASES[1], "steps": 4}], "runs to the end"),
        ([{**PHASES[0], "steps": None}, PHASES[1]], "positive number of steps"),
        ([{**PHASES[0], "impl": "chain"}, PHASES[1]], "itself a chain"),
        ([PHASES[0], {**PHASES[1], "hyperparameters": {"rank": 0}}], "rank"),
    ],
)
def test_a_bad_chain_is_refused_before_any_step(phases, message):
    with pytest.raises(ConfigError, match=message):
        build_config("chain", {"phases": phases})


def test_diagnostics_precondition_by_nncgs_nystrom_approximation_of_the_last_phase():
    model = Scalar(quadratic(A, B), torch.zeros(4))
    chain = build_config("chain", {"phases": PHASES}).build(model.parameters())
    _run(chain, model, 3, Counters())
    assert inverse_sqrt_preconditioner(chain, F64) is None  # SGD took the last step
    _run(chain, model, 1, Counters())
    nncg = chain.phases[1]
    state = nncg.vector_state
    approx = NystromApprox(state["nystrom_basis"], state["nystrom_eigenvalues"])
    root = inverse_sqrt_preconditioner(chain, F64)
    v = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(root(root(v)), approx.inverse(nncg.damping)(v), rtol=1e-12)
    # rank 4 = n: P^-1 is (H + mu I)^-1 scaled by lambda_s + mu
    expected = (state["nystrom_eigenvalues"][-1] + nncg.damping) * torch.linalg.solve(
        A + nncg.damping * torch.eye(4, dtype=F64), v
    )
    assert torch.allclose(root(root(v)), expected, rtol=1e-8)


def test_chain_strings_parse_with_either_arrow():
    expected = [("adam", 1000), ("lbfgs", 2000), ("nncg", None)]
    assert parse_chain("adam:1000 -> lbfgs:2000 -> nncg", "x") == expected
    assert parse_chain("adam:1000→lbfgs:2000 → nncg", "x") == expected
    for bad in ("adam:1000", "adam -> lbfgs", "adam:10 -> lbfgs:5", "adam:x -> lbfgs",
                "adam:0 -> lbfgs"):  # fmt: skip
        with pytest.raises(ConfigError, match="chain|phase"):
            parse_chain(bad, "where")


@pytest.fixture
def config():
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _pinn(cells, task, optimizer):
    return [c for c in cells if c.task == task and c.optimizer == optimizer]


def test_task_level_entries_restrict_the_crossing_override_and_resolve_chains(config):
    cells = resolve(config).cells
    pinn = {c.optimizer for c in cells if c.task == "pinn_wave"}
    # nncg: a phase only; nncg_alone: NNCG from the start, an entry of the PINNs alone
    assert pinn == {"adam", "lbfgs", "adam_lbfgs", "adam_lbfgs_nncg", "nncg_alone"}
    assert "adam" not in {c.optimizer for c in cells if c.task == "mnist_mlp"}
    assert {c.seed for c in cells if c.task == "pinn_wave"} == {0, 1}
    alone = _pinn(cells, "pinn_wave", "nncg_alone")
    cpu = config["scales"]["cpu"]
    steps = cpu["optimizer_settings"]["nncg_alone"]["steps"]
    assert steps != cpu["tasks"]["pinn_wave"]["steps"]  # so the override shows
    assert {(c.backend, c.seed, c.settings["steps"]) for c in alone} == {
        ("torch", 0, steps),
        ("jax", 0, steps),
    }
    reaction = _pinn(cells, "pinn_reaction", "adam_lbfgs_nncg")[0]
    phases = reaction.hyperparameters["phases"]
    assert [p["name"] for p in phases] == ["adam", "lbfgs", "nncg"]
    assert phases[0]["hyperparameters"]["lr"] == 1e-3  # reaction's override of the anchor
    assert _pinn(cells, "pinn_wave", "adam")[0].hyperparameters["lr"] == 1e-4
    assert phases[2]["hyperparameters"] == {"damping": 0.01, "cg_max_iter": 200}
    # L-BFGS's MNIST batch and steps do not touch the full-batch PINN
    lbfgs = _pinn(cells, "pinn_reaction", "lbfgs")[0]
    assert lbfgs.settings["steps"] == config["scales"]["cpu"]["tasks"]["pinn_reaction"]["steps"]
    assert not any(c.diagnostics for c in cells if c.task.startswith("pinn"))


def _get(config, path):
    for key in path:
        config = config[key]
    return config


def _edit(config, path, value):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


TASK = ["scales", "cpu", "tasks", "pinn_reaction"]


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (TASK + ["optimizers", "adam_lbfgs"], {"chain": "adam:250 -> lbfgs"}, "runs 200 steps"),
        (TASK + ["optimizers", "adam_lbfgs"], {"chain": "adam:5 -> bfgs"}, "'bfgs'"),
        (TASK + ["optimizers", "adam_lbfgs"], {"chain": "adam:5 -> adam_lbfgs_nncg"}, "nests"),
        (TASK + ["optimizers", "sgdd"], {"lr": 0.1}, "optimizers.sgdd"),
        (TASK + ["optimizers", "adam"], {"impl": "adamw", "lr": -1.0}, "lr"),
        (TASK + ["optimizers", "nncg"], {"rank": 0}, "rank"),
        (TASK + ["optimizers", "sgd_adamw"], {"lr": 0.1}, "chain takes no hyperparameters"),
        (["phases", "sgd"], {"impl": "sgd"}, "also an optimizers entry"),
        (["scales", "cpu", "optimizer_settings", "lbfgs"], {"widht": 3}, "widht"),
        (TASK + ["seeds"], [], "seeds"),
        (["optimizers", "bad_chain"], {"chain": "sgd:5 -> adamw", "lr": 0.1}, "bad_chain.lr"),
    ],
)
def test_bad_chains_and_task_entries_name_the_key(config, path, value, needle):
    config = copy.deepcopy(config)
    config["optimizers"]["sgd_adamw"] = {"chain": "sgd:5 -> adamw"}  # a global chain
    if path[-2] == "optimizers" and path[0] == "scales":  # a YAML alias: edit a copy only
        _edit(config, path[:-1], dict(_get(config, path[:-1])))
    _edit(config, path, value)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        resolve(config)


def test_a_chained_pinn_cell_marks_its_phases_and_diagnoses_its_switches(tmp_path):
    settings = {"problem": "reaction", "coefficient": None, "width": 8, "depth": 3,
                "residual_points": 60, "steps": 9, "eval_every": 3, "target": None,
                "dtype": "float64"}  # fmt: skip
    phases = [
        {"name": "adam", "impl": "adamw", "hyperparameters": {"weight_decay": 0.0}, "steps": 3},
        {"name": "lbfgs", "impl": "lbfgs", "hyperparameters": {"max_iter": 2}, "steps": 3},
        {"name": "nncg", "impl": "nncg", "hyperparameters": {"rank": 5}, "steps": None},
    ]
    cell = Cell(scale="t", task="pinn_reaction", task_module="pinn", settings=settings,
                optimizer="adam_lbfgs_nncg", impl="chain", hyperparameters={"phases": phases},
                backend="torch", seed=0, log_every=1,
                diagnostics={"points": 1, "lanczos_steps": 4, "vectors": 1})  # fmt: skip
    summary = run_cell(cell, tmp_path, track=False)
    assert summary["status"] == "ok", summary["reason"]
    assert summary["schedule"] == "adamw+lbfgs+nncg"
    assert summary["phase_switches"] == [3, 6]
    assert summary["paper"]["metric"] == 9.92e-3
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    steps = metrics.dropna(subset=["train_loss"])
    assert steps.set_index("step")["phase"].to_dict() == {
        1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2}  # fmt: skip
    assert steps["hvp"].iloc[-1] > 0 and steps["forward"].is_monotonic_increasing
    points = pd.read_parquet(tmp_path / "diagnostics.parquet")
    assert set(points["step"]) == {0, 3, 6, 9}
    # after the L-BFGS phase the L-BFGS preconditioned spectrum is measured (seed 000 fig. 9)
    assert set(points.loc[points["step"] == 6, "kind"]) == {"hessian", "preconditioned"}
    assert set(points.loc[points["step"] == 9, "kind"]) == {"hessian", "preconditioned"}
    json.dumps(summary)  # the summary stays JSON
