"""The jax twins' shared primitives in float64: the objective's curvature oracles against dense
``jax.hessian`` / ``jax.jacobian`` truths and their counts; the CG solver against a direct solve
and the torch solver; Armijo against the torch line search."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hessbench.optimizers.jax.cg import REASONS, conjugate_gradient
from hessbench.optimizers.jax.linesearch import armijo
from hessbench.optimizers.jax.objective import Counts, Objective
from hessbench.optimizers.torch.cg import conjugate_gradient as torch_cg
from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.linesearch import armijo as torch_armijo
from hessbench.optimizers.torch.objective import Objective as TorchObjective

from jax_problems import pair  # enables x64

KINDS = ["classification", "regression"]


def counted(counts: Counts) -> tuple[int, ...]:
    return tuple(int(c) for c in counts)


def close(a, b, rtol=1e-10, atol=0.0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def objective(kind):
    p = pair(kind, seed=1)
    return p, Objective(p.params, p.value_fn, p.apply_fn, p.jax_loss_fn, p.jax_batch)


def to_torch(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x))


def probe(d, seed=0):
    return jax.random.normal(jax.random.key(seed), (d,), jnp.float64)


# -- the objective's oracles ---
@pytest.mark.parametrize("kind", KINDS)
def test_first_order_oracles_against_value_and_grad(kind):
    p, obj = objective(kind)
    x = obj.theta
    loss, grad = jax.value_and_grad(lambda x: p.value_fn(obj.unravel(x)))(x)
    value, counts = obj.loss(x, Counts.zero())
    assert float(value) == float(loss) and counted(counts) == (1, 0, 0, 0)
    (value, g), counts = obj.loss_and_grad(x, Counts.zero())
    close(value, loss, rtol=1e-15)
    close(g, grad, rtol=1e-13)
    assert counted(counts) == (1, 1, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_products_and_dense_hessian_against_jax_hessian(kind):
    p, obj = objective(kind)
    x = obj.theta
    truth = jax.hessian(lambda x: p.value_fn(obj.unravel(x)))(x)
    loss, grad = jax.value_and_grad(lambda x: p.value_fn(obj.unravel(x)))(x)
    operator, counts = obj.hessian_operator(x, Counts.zero())
    assert counted(counts) == (1, 1, 0, 0)
    close(operator.loss, loss, rtol=1e-14)
    close(operator.grad, grad, rtol=1e-12, atol=1e-15)
    v = probe(x.shape[0])
    hv, counts = operator.apply(v, counts)
    close(hv, truth @ v, rtol=1e-10, atol=1e-13)
    _, counts = operator.apply(2 * v, counts)
    assert counted(counts) == (1, 1, 2, 0)
    dense, counts = obj.hessian(x, Counts.zero())
    close(dense, truth, rtol=1e-10, atol=1e-13)
    assert counted(counts) == (0, 0, x.shape[0], 0)


@pytest.mark.parametrize("kind", KINDS)
def test_ggn_products_against_dense_jacobian_and_output_hessian(kind):
    p, obj = objective(kind)
    x = obj.theta
    inputs, targets = p.jax_batch
    outputs = p.apply_fn(obj.unravel(x), inputs)
    jac = jax.jacobian(lambda x: p.apply_fn(obj.unravel(x), inputs))(x).reshape(-1, x.shape[0])
    h_out = jax.hessian(lambda o: p.jax_loss_fn(o, targets))(outputs).reshape(jac.shape[0], -1)
    ggn = jac.T @ h_out @ jac
    loss, grad = jax.value_and_grad(lambda x: p.value_fn(obj.unravel(x)))(x)
    operator, counts = obj.ggn_operator(x, Counts.zero())
    assert counted(counts) == (1, 1, 0, 0)
    close(operator.loss, loss, rtol=1e-14)
    close(operator.grad, grad, rtol=1e-12, atol=1e-15)
    for seed in range(3):
        v = probe(x.shape[0], seed)
        gv, counts = operator.apply(v, counts)
        close(gv, ggn @ v, rtol=1e-10, atol=1e-13)
    assert counted(counts) == (1, 1, 0, 3)
    assert np.linalg.eigvalsh(np.asarray(ggn)).min() > -1e-12  # the truth is PSD


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_second_moment_and_subset_against_the_torch_objective(kind):
    p, obj = objective(kind)
    theirs = TorchObjective(p.model, p.loss_fn, p.batch, p.torch_params(), None, p.likelihood)
    moment, counts = obj.gradient_second_moment(obj.theta, Counts.zero())
    close(moment, flatten(theirs.gradient_second_moment()).numpy(), rtol=1e-10, atol=1e-15)
    assert counted(counts) == (1, 1, 0, 0)
    value, _ = obj.subset(5).loss(obj.theta, Counts.zero())
    close(value, theirs.subset(5).loss().item(), rtol=1e-14)


# -- conjugate gradient ---
def spd(eigenvalues, seed=0):
    d = len(eigenvalues)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (d, d), jnp.float64))
    return q @ jnp.diag(jnp.asarray(eigenvalues, jnp.float64)) @ q.T


def matvec(a):
    return lambda v, counts: (a @ v, counts.add(hvp=1))


def test_cg_solves_an_spd_system():
    a = spd(np.linspace(1.0, 20.0, 30))
    b = probe(30)
    result, counts = conjugate_gradient(matvec(a), b, Counts.zero(), max_iter=100, tol=1e-12)
    assert REASONS[int(result.reason)] == "tolerance"
    close(result.x, jnp.linalg.solve(a, b), rtol=1e-10)
    assert int(counts.hvp) == int(result.matvecs) == int(result.iterations)


# (eigenvalues, keyword arguments): well conditioned so the iterates agree to rounding; each
# case stops far from the threshold of any rule but the one it is named for.
CG_CASES = {
    "tolerance": (np.linspace(1.0, 4.0, 40), dict(max_iter=100, tol=1e-8, keep_iterates=True)),
    "max_iter": (np.linspace(0.5, 10.0, 40), dict(max_iter=12, keep_iterates=True)),
    "progress": (np.linspace(1.0, 40.0, 40), dict(max_iter=40, progress_eps=5e-2)),
    "negative": (np.r_[-1.0, np.linspace(1.0, 3.0, 9)], dict(max_iter=10)),
}


@pytest.mark.parametrize("case", CG_CASES)
def test_cg_follows_the_torch_solver(case):
    eigenvalues, kwargs = CG_CASES[case]
    a, b = spd(eigenvalues, seed=2), probe(len(eigenvalues), seed=3)
    x0 = 0.5 * jnp.linalg.solve(a, b) if case == "max_iter" else None  # a warm start q(x0) < 0
    theirs_a, theirs_b = to_torch(a), to_torch(b)
    theirs = torch_cg(
        lambda v: theirs_a @ v,
        theirs_b,
        None if x0 is None else to_torch(x0),
        **kwargs,
    )
    ours, counts = conjugate_gradient(matvec(a), b, Counts.zero(), x0, **kwargs)
    assert REASONS[int(ours.reason)] == theirs.reason
    assert int(ours.iterations) == theirs.iterations
    assert int(ours.matvecs) == theirs.matvecs == int(counts.hvp)
    close(ours.x, theirs.x.numpy(), rtol=1e-10)
    close(ours.q, theirs.q, rtol=1e-10)
    kept = int(ours.kept)
    assert np.asarray(ours.kept_iter[:kept]).tolist() == [i for i, _, _ in theirs.iterates]
    for row, (_, x, q) in enumerate(theirs.iterates):
        close(ours.kept_x[row], x.numpy(), rtol=1e-10)
        close(ours.kept_q[row], q, rtol=1e-10)
    if kwargs.get("keep_iterates"):
        assert kept >= 2


# -- Armijo ---
@pytest.mark.parametrize(
    "step_size, known, max_trials",
    [(4.0, None, 60), (4.0, (4.0, None), 60), (1.0, None, 60), (40.0, None, 5)],
)
def test_armijo_follows_the_torch_line_search(step_size, known, max_trials):
    a = spd([0.5, 1.0, 3.0, 8.0])
    b = probe(4, seed=5)
    theta = probe(4, seed=6)

    def f(t):
        return 0.5 * t @ a @ t - b @ t

    g = a @ theta - b
    direction = -g  # steepest descent: a full step 4 overshoots a curvature of 8
    loss0, slope = f(theta), g @ direction
    if known is not None:
        known = (known[0], f(theta + known[0] * direction))
    param = to_torch(theta)
    theirs = torch_armijo(
        lambda: f(jnp.asarray(param.numpy())).item(),
        [param],
        to_torch(theta),
        to_torch(direction),
        float(loss0),
        float(slope),
        step_size,
        known=None if known is None else (known[0], float(known[1])),
        max_trials=max_trials,
    )

    def loss_at(x, counts):
        return f(x), counts.add(forward=1)

    ours, counts = armijo(
        loss_at, theta, direction, loss0, slope, step_size, Counts.zero(),
        known=known, max_trials=max_trials,
    )  # fmt: skip
    assert float(ours.step_size) == pytest.approx(theirs.step_size, rel=1e-14)
    assert float(ours.loss) == pytest.approx(theirs.loss, rel=1e-12)
    assert int(ours.trials) == theirs.trials == int(counts.forward)
    assert theirs.trials > 1 or known is not None
