"""The jax twins of the tasks against the torch tasks, in float64: the same initial weights in
the same flat order, the same batches, and the same loss, gradient and scores."""

from __future__ import annotations

import itertools
import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree

from hessbench.tasks import mnist_mlp, pinn
from hessbench.tasks.jax import mnist_mlp as jax_mnist
from hessbench.tasks.jax import pinn as jax_pinn
from hessbench.tasks.jax.registry import JAX_TASK_NAMES, JAX_TASKS
from hessbench.tasks.registry import TASKS

jax.config.update("jax_enable_x64", True)  # float64 is the reference; no array exists yet
CPU = torch.device("cpu")
SEED = 3
PROBLEMS = ["convection", "reaction", "wave"]
MNIST = mnist_mlp.Settings(
    hidden=(16,), train_size=512, test_size=256, batch_size=32, dtype="float64"
)
CASES = {
    "mnist": (mnist_mlp, jax_mnist, MNIST),
    **{
        name: (pinn, jax_pinn, pinn.Settings(
            problem=name, width=8, depth=2, residual_points=100, dtype="float64"))
        for name in PROBLEMS
    },
}  # fmt: skip


def _flat(tensors) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()


def _relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module", params=list(CASES))
def twins(request):
    """Both problems of one case, with their first three batches taken once (the batches are
    iterators, shared by the tests of the case)."""
    torch_module, jax_module, settings = CASES[request.param]
    jax_problem = jax_module.build(settings, SEED)
    torch_problem = torch_module.build(settings, SEED, CPU)
    return SimpleNamespace(
        torch=torch_problem,
        jax=jax_problem,
        torch_batches=list(itertools.islice(torch_problem.batches, 3)),
        jax_batches=list(itertools.islice(jax_problem.batches, 3)),
    )


def test_the_jax_registry_names_torch_tasks_with_builds_and_its_names_import_no_jax():
    assert tuple(JAX_TASKS) == JAX_TASK_NAMES and set(JAX_TASKS) <= set(TASKS)
    assert all(callable(module.build) for module in JAX_TASKS.values())
    # the config reads the names for every DAG: that must not pay for importing jax
    probe = "import sys; from hessbench.tasks.jax.registry import JAX_TASK_NAMES; "
    probe += "assert 'jax' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_initial_parameters_are_the_torch_models_in_its_flat_order(twins):
    params = list(twins.torch.model.parameters())
    leaves = jax.tree_util.tree_leaves(twins.jax.params)
    assert [leaf.shape for leaf in leaves] == [tuple(p.shape) for p in params]
    flat, _ = ravel_pytree(twins.jax.params)
    assert flat.dtype == jnp.float64
    assert np.array_equal(np.asarray(flat), _flat(params))


def test_the_first_batches_are_the_torch_tasks(twins):
    for (x, y), (tx, ty) in zip(twins.jax_batches, twins.torch_batches, strict=True):
        assert x.dtype == jnp.float64
        assert np.array_equal(np.asarray(x), tx.numpy())
        assert np.array_equal(np.asarray(y), ty.numpy())


def test_loss_and_gradient_on_the_first_batch_are_torchs(twins):
    x, y = twins.jax_batches[0]
    problem = twins.jax

    @jax.jit
    def value_and_grad(params, x, y):
        return jax.value_and_grad(lambda p: problem.loss_fn(problem.apply(p, x), y))(params)

    loss, grad = value_and_grad(problem.params, x, y)
    model = twins.torch.model
    tx, ty = twins.torch_batches[0]
    torch_loss = twins.torch.loss_fn(model(tx), ty)
    torch_grad = torch.autograd.grad(torch_loss, list(model.parameters()))
    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-12)
    assert _relative(ravel_pytree(grad)[0], _flat(torch_grad)) < 1e-12


def test_evaluate_and_train_loss_are_torchs(twins):
    ours, theirs = twins.jax.evaluate(twins.jax.params), twins.torch.evaluate(twins.torch.model)
    assert set(ours) == {"val_loss", "val_metric"}
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-10)
    ours = twins.jax.train_loss(twins.jax.params)
    assert ours == pytest.approx(twins.torch.train_loss(twins.torch.model), rel=1e-10)
    for name in ("likelihood", "metric", "higher_is_better", "target", "steps", "eval_every",
                 "batch_size", "paper"):  # fmt: skip
        assert getattr(twins.jax, name) == getattr(twins.torch, name)
    assert twins.jax.test is None and twins.torch.test is None


def _solution(pde: pinn.PDE, xt):
    """``PDE.solution`` in jax, for one point: the test checks it against torch's first."""
    x, t = xt[..., 0], xt[..., 1]
    if pde.name == "convection":
        return jnp.sin(x - pde.c * t)
    if pde.name == "reaction":
        h = jax_pinn.initial(pde, x)
        grow = h * jnp.exp(pde.c * t)
        return grow / (grow + 1 - h)
    return jnp.sin(jnp.pi * x) * jnp.cos(2 * jnp.pi * t) + 0.5 * jnp.sin(
        pde.c * jnp.pi * x
    ) * jnp.cos(2 * pde.c * jnp.pi * t)


@pytest.mark.parametrize("name", PROBLEMS)
def test_each_analytic_solution_has_vanishing_jax_residuals(name):
    pde = pinn.PDE(name, pinn.COEFFICIENT[name])
    rows = pinn.collocation(pde, 2000, seed=0, dtype=torch.float64, device=CPU)
    exact = pde.solution(rows[:, 0], rows[:, 1]).numpy()
    rows = jnp.asarray(rows.numpy())
    assert _relative(_solution(pde, rows[:, :2]), exact) < 1e-14
    assert _relative(jax_pinn.initial(pde, rows[:, 0]), pde.initial(torch.tensor(
        np.asarray(rows[:, 0]))).numpy()) < 1e-14  # fmt: skip
    residuals = jax.jit(lambda r: jax_pinn.residuals(lambda xt: _solution(pde, xt), pde, r))
    scale = 1 + pde.c**2  # u_tt and 4 u_xx are each of order (beta pi)^2 on the wave
    assert float(jnp.abs(residuals(rows)).max()) < 1e-9 * scale
    # a wrong coefficient in the solution leaves a residual: the check can fail
    wrong = pinn.PDE(name, pde.c * 1.1)
    wrong_residuals = jax_pinn.residuals(lambda xt: _solution(wrong, xt), pde, rows)
    assert float(jnp.abs(wrong_residuals).max()) > 1e-3


@pytest.mark.parametrize("module, settings", [
    (jax_mnist, MNIST),
    (jax_pinn, pinn.Settings(residual_points=100, width=8, depth=2, dtype="float64")),
])  # fmt: skip
def test_float64_without_x64_is_refused_and_float32_still_builds(module, settings):
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="x64"):
            module.build(settings, SEED)
        if module is jax_pinn:  # the cheap one: float32 needs no x64 and stays float32
            problem = module.build(pinn.Settings(residual_points=100, width=8, depth=2), SEED)
            x, y = next(problem.batches)
            assert ravel_pytree(problem.params)[0].dtype == jnp.float32
            assert problem.loss_fn(problem.apply(problem.params, x), y).dtype == jnp.float32
    finally:
        jax.config.update("jax_enable_x64", True)
