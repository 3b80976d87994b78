"""The grid config: bad input fails with one error naming the key, before any work."""

import copy

import pytest
import yaml

from hessbench.optimizers.torch.registry import ConfigError
from hessbench.workflows.config import DEFAULT_CONFIG, Cell, resolve


@pytest.fixture
def config():
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


JAX_TWINS = {"newton", "damped_newton", "newton_cg", "hf_gn", "nncg"}  # optimizers/jax
JAX_TASKS = {"mnist_mlp", "pinn"}  # tasks/jax


def test_default_config_crosses_every_scale(config):
    for scale, body in config["scales"].items():
        plan = resolve({**config, "scale": scale})
        own = body.get("optimizer_settings") or {}
        expected = {"torch": 0, "jax": 0}
        for tname, task in body["tasks"].items():
            entries = {**config["optimizers"], **(task.get("optimizers") or {})}
            for name in set(task.get("optimizers") or config["optimizers"]) - set(
                config.get("phases", {})
            ):
                entry = entries[name] or {}
                impl = "chain" if "chain" in entry else entry.get("impl")
                impl = impl or config["optimizers"][name]["impl"]
                for backend in task.get("backends", config["backends"]):
                    if backend == "jax" and not (
                        impl in JAX_TWINS and task.get("task", tname) in JAX_TASKS
                    ):
                        continue
                    for seed in task.get("seeds", body["seeds"]):
                        expected[backend] += seed in own.get(name, {}).get("seeds", [seed])
        found = {b: sum(c.backend == b for c in plan.cells) for b in expected}
        assert found == expected, scale
        assert len({c.path for c in plan.cells}) == len(plan.cells)


def test_jax_runs_the_twins_on_its_tasks_and_says_what_runs_on_torch_only(config):
    cells = resolve({**config, "backends": ["torch", "jax"], "scale": "smoke"}).cells
    jax = {(c.task_module, c.impl) for c in cells if c.backend == "jax"}
    assert jax and all(m in JAX_TASKS and impl in JAX_TWINS for m, impl in jax)
    torch_twins = {(c.task_module, c.impl) for c in cells if c.backend == "torch"}
    assert jax == {(m, i) for m, i in torch_twins if m in JAX_TASKS and i in JAX_TWINS}
    plan = resolve({**config, "backends": ["torch", "jax"], "scale": "smoke"})
    message = plan.torch_only_message()
    assert "gpt2" in message and "rt_tiny" in message  # tasks without a jax version
    assert "'adamw'" in message and "'adam_lbfgs_nncg'" in message  # no twin; a chain
    assert message.endswith("their cells are not run on jax")  # torch may not run them either
    assert resolve({**config, "backends": ["torch"]}).torch_only_message() is None


def test_a_task_can_name_its_own_backends_and_diagnostics_stay_on_torch(config):
    cpu = config["scales"]["cpu"]
    cpu["tasks"]["mnist_mlp_h10"]["backends"] = ["jax"]
    cpu["tasks"]["mnist_mlp"]["backends"] = ["torch", "jax"]
    cells = resolve({**config, "backends": ["torch"]}).cells
    h10 = {(c.impl, c.backend) for c in cells if c.task == "mnist_mlp_h10"}
    assert {b for _, b in h10} == {"jax"} and {i for i, _ in h10} == JAX_TWINS - {"nncg"}
    assert any(c.backend == "jax" for c in cells if c.task == "mnist_mlp")
    assert all(c.diagnostics is None for c in cells if c.backend == "jax")
    assert any(c.diagnostics for c in cells if c.task == "mnist_mlp" and c.backend == "torch")


def test_cpu_scale_has_seed_003_model_and_wide_model(config):
    cells = resolve(config).cells
    hidden = {c.task: tuple(c.settings["hidden"]) for c in cells if "hidden" in c.settings}
    assert hidden == {"mnist_mlp": (128,), "mnist_mlp_h10": (10,), "mnist_mlp_hfreq": (128,)}
    assert {c.settings["batch_size"] for c in cells if c.optimizer == "sgd"} == {64}


def test_optimizer_settings_override_the_task_for_that_optimizer_only(config):
    cells = [c for c in resolve(config).cells if c.task_module == "mnist_mlp"]
    lbfgs = {c.settings["batch_size"] for c in cells if c.optimizer == "lbfgs"}
    others = {c.settings["batch_size"] for c in cells if c.optimizer != "lbfgs"}
    assert lbfgs == {config["scales"]["cpu"]["optimizer_settings"]["lbfgs"]["batch_size"]}
    assert others == {64}


def test_an_optimizer_entry_can_run_fewer_seeds_on_every_task(config):
    cpu = config["scales"]["cpu"]
    cpu["optimizer_settings"]["sgd"] = {"seeds": [1]}
    cells = resolve(config).cells
    assert {(c.task, c.seed) for c in cells if c.optimizer == "sgd"} == {
        ("mnist_mlp", 1),
        ("mnist_mlp_h10", 1),
    }
    assert {c.seed for c in cells if c.optimizer == "adamw"} == {0, 1}
    assert cpu["optimizer_settings"]["newton"]["seeds"] == [0]  # the minute-long single step


def test_diagnostics_go_to_the_configured_seeds_only(config):
    cells = resolve(config).cells
    diagnosed = {(c.task, c.seed) for c in cells if c.diagnostics}
    assert diagnosed == {("mnist_mlp", 0), ("mnist_mlp_h10", 0)}  # the PINNs are left out
    assert all(c.diagnostics == {"points": 3} for c in cells if c.diagnostics)
    smoke = resolve({**config, "scale": "smoke"}).cells
    assert not any(c.diagnostics for c in smoke)  # off unless configured


def test_cell_json_round_trip(config):
    cell = resolve(config).cells[0]
    assert Cell.from_json(cell.to_json()) == cell


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["optimizers"].update(newton9={"impl": "newton9"}), "optimizers.newton9.impl"),
        (lambda c: c["optimizers"]["sgd"].update(lr=-0.1), "optimizers.sgd.lr"),
        (lambda c: c["optimizers"]["sgd"].update(lr=0), "optimizers.sgd.lr"),
        (lambda c: c["optimizers"]["sgd"].update(lr="1e-3"), "write 1.0e-3"),
        (lambda c: c["optimizers"]["adamw"].update(betas=[0.9, 1.5]), "optimizers.adamw.betas"),
        (lambda c: c["optimizers"]["sgd"].update(momentom=0.9), "optimizers.sgd.momentom"),
        (lambda c: c.update(scale="huge"), "scale"),
        (lambda c: c.update(backends=["tensorflow"]), "backends.0"),
        (lambda c: c["scales"]["cpu"]["tasks"]["mnist_mlp"].update(backends=[]), "backends"),
        (lambda c: c["scales"]["cpu"]["tasks"]["mnist_mlp"].update(widht=3), "mnist_mlp.widht"),
        (lambda c: c["scales"]["cpu"]["tasks"].update(cifar={}), "tasks.cifar.task"),
        (lambda c: c["scales"]["smoke"].update(seeds=[-1]), "scales.smoke.seeds.0"),
        (
            lambda c: c["scales"]["smoke"]["tasks"]["mnist_mlp"].update(batch_size=4096),
            "batch_size",
        ),
        (lambda c: c["scales"]["cpu"]["tasks"]["mnist_mlp"].update(steps=0), "steps"),
        (lambda c: c["scales"]["cpu"]["tasks"]["mnist_mlp"].update(dtype="fp8"), "dtype"),
        (lambda c: c["scales"]["cpu"]["optimizer_settings"].update(sophia={}), "sophia"),
        (lambda c: c["scales"]["gpu"]["optimizer_settings"]["lbfgs"].update(bs=2), "scales.gpu"),
        (lambda c: c["scales"]["cpu"]["optimizer_settings"]["lbfgs"].update(bs=2), "lbfgs"),
        (lambda c: c["scales"]["cpu"]["diagnostics"].update(points=0), "cpu.diagnostics.points"),
        (lambda c: c["scales"]["cpu"]["diagnostics"].update(every=3), "cpu.diagnostics"),
        (lambda c: c["optimizers"]["hizoo"].update(smoothing=1.0), "optimizers.hizoo.smoothing"),
        (lambda c: c["optimizers"]["mezo"].update(samples=0), "optimizers.mezo.samples"),
        (
            lambda c: c["scales"]["gpu"]["resources"]["tasks"].update(sst2_k61={"gpus": 0}),
            "scales.gpu.resources.tasks: ['sst2_k61']",
        ),
        (lambda c: c["scales"]["cpu"].update(checkpoint_minutes=0), "checkpoint_minutes"),
    ],
)
def test_bad_config_names_the_key(config, edit, needle):
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        resolve(bad)
    assert needle in str(err.value)
