"""The jax NysNewton-CG and its Nyström approximation against dense linear algebra, hand-known
answers and the torch twin (``optimizers/torch/nncg.py``), stepped from the same weights.

The two twins draw their Gaussian test matrices from different generators (a torch generator,
a jax key), so parity is checked only where the result does not depend on the draw: with
rank >= d the sketch spans everything and the approximation is H's positive part whatever the
draw, so the preconditioner, and with it every CG iterate, is the same matrix up to rounding.
With rank < d only draw-free quantities are compared."""

from __future__ import annotations

import inspect
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_nncg import BAD_HYPERPARAMETERS

from hessbench.optimizers.jax.cg import conjugate_gradient
from hessbench.optimizers.jax.nncg import nncg
from hessbench.optimizers.jax.nystrom import NystromApprox, columnwise, inverse, nystrom
from hessbench.optimizers.jax.objective import Counts, Objective
from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.nncg import NNCG
from hessbench.optimizers.torch.objective import Counters
from hessbench.optimizers.torch.objective import Objective as TorchObjective

from jax_problems import pair  # enables x64

F64 = jnp.float64
N = 50


def spd(eigenvalues, seed=0):
    """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    n = len(eigenvalues)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n), F64))
    return q @ jnp.diag(jnp.asarray(eigenvalues, F64)) @ q.T


def low_rank(r, n=N, seed=1):
    """PSD n x n of rank r, eigenvalues logspace(0, 1, r) (returned largest first)."""
    eigs = jnp.logspace(0, 1, r, dtype=F64)
    return spd(list(eigs) + [0.0] * (n - r), seed), eigs[::-1]


def dense_matvec(a):
    return lambda v, counts: (a @ v, counts.add(hvp=v.shape[1]))


@partial(jax.jit, static_argnums=(1, 2))
def sketch(a, s, seed=0):
    approx, _ = nystrom(dense_matvec(a), len(a), s, jax.random.key(seed), F64, Counts.zero())
    return approx


def dense(approx):
    return approx.basis @ jnp.diag(approx.eigenvalues) @ approx.basis.T


def close(a, b, rtol=0.0, atol=0.0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# -- the Nyström approximation ---
@pytest.mark.parametrize("r, s", [(8, 12), (12, 12)])
def test_nystrom_is_exact_for_a_psd_matrix_of_rank_at_most_s(r, s):
    a, eigs = low_rank(r)
    approx = sketch(a, s)
    tol = 1e-10 * float(eigs[0])
    assert not approx.fallback
    close(approx.basis.T @ approx.basis, jnp.eye(s), atol=1e-12)
    close(approx.eigenvalues[:r], eigs, atol=tol)
    assert bool(jnp.all(approx.eigenvalues[r:] <= tol))
    close(dense(approx), a, atol=tol)


@pytest.mark.parametrize("r, s", [(8, 12), (12, 12), (20, 12)])
def test_nystrom_is_psd_and_never_above_the_matrix(r, s):
    a, eigs = low_rank(r)
    approx = sketch(a, s, seed=2)
    tol = 1e-10 * float(eigs[0])
    assert jnp.linalg.eigvalsh(dense(approx)).min() >= -tol
    assert jnp.linalg.eigvalsh(a - dense(approx)).min() >= -tol
    assert bool(jnp.all(approx.eigenvalues[:-1] >= approx.eigenvalues[1:]))


def test_nystrom_shift_is_the_stable_one_and_is_taken_out_again():
    a, _ = low_rank(8)
    approx = sketch(a, 12, seed=3)
    phi, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (N, 12), F64))  # same draw
    nu = math.sqrt(N) * float(jnp.finfo(F64).eps) * float(jnp.linalg.norm(a @ phi))
    assert float(approx.shift) == pytest.approx(nu, rel=1e-10, abs=0)
    assert float(approx.eigenvalues[8:].max()) < 0.1 * nu


def test_nystrom_of_an_indefinite_matrix_falls_back_to_its_positive_part():
    a = spd([-2.0, -0.5, 0.0, 1.0, 3.0, 4.0], seed=3)
    approx = sketch(a, 10)  # capped at n = 6: the core is indefinite
    assert bool(approx.fallback) and approx.basis.shape == (6, 6)
    close(approx.eigenvalues, [4.0, 3.0, 1.0, 0.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_nystrom_gives_the_zero_approximation_when_the_sketch_is_useless(bad):
    # a non-finite sketch; or A Phi = 0, where even the larger shift (0) cannot factorise
    a = jnp.full((N, N), jnp.nan) if bad == "nan" else jnp.zeros((N, N))
    approx, counts = jax.jit(
        lambda a: nystrom(dense_matvec(a), N, 12, jax.random.key(0), F64, Counts.zero())
    )(a)
    assert bool(approx.fallback) and bool(jnp.isnan(approx.shift))
    assert bool(jnp.all(approx.eigenvalues == 0)) and int(counts.hvp) == 12
    close(approx.basis.T @ approx.basis, jnp.eye(12), atol=1e-12)
    x = jax.random.normal(jax.random.key(1), (N,), F64)
    close(inverse(approx, 0.1)(x), x, atol=1e-15)  # P^-1 = I


def test_the_sketch_is_counted_by_the_objectives_own_apply():
    a, _ = low_rank(8, n=10)
    obj = Objective(jnp.zeros(10, F64), lambda x: 0.5 * x @ a @ x)
    operator, counts = obj.hessian_operator(obj.theta, Counts.zero())
    approx, counts = nystrom(
        columnwise(operator.apply), 10, 9, jax.random.key(0), F64, counts.add(hvp=5)
    )
    assert [int(c) for c in counts] == [1, 1, 5 + 9, 0]
    close(dense(approx), a, atol=1e-9)


# -- the preconditioner ---
def test_preconditioner_inverts_its_dense_form():
    n, mu = 30, 0.3
    lam = jnp.array([9.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2], F64)
    u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (n, len(lam)), F64))
    approx = NystromApprox(u, lam, jnp.array(False), jnp.array(0.0))
    p = u @ jnp.diag(lam + mu) @ u.T / (lam[-1] + mu) + jnp.eye(n) - u @ u.T
    for x in jax.random.normal(jax.random.key(5), (3, n), F64):
        close(inverse(approx, mu)(x), jnp.linalg.solve(p, x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mu > 0"):
        inverse(approx, 0.0)


@pytest.mark.parametrize("s, clusters", [(12, [0.1]), (8, [0.1, 1.1])])
def test_preconditioned_spectrum_is_clustered_and_cg_needs_one_iteration_per_cluster(s, clusters):
    a, _ = low_rank(8)
    mu = 0.1
    approx = sketch(a, s)
    shifted = a + mu * jnp.eye(N)
    # s > rank: every eigenvalue at mu; s = rank: lambda_s + mu = 1 + mu on range(U), else mu
    spectrum = np.linalg.eigvals(np.asarray(jax.vmap(inverse(approx, mu), 1, 1)(shifted)))
    gaps = np.abs(spectrum[:, None] - np.asarray(clusters)[None]).min(1)
    assert gaps.max() < 1e-9
    b = jax.random.normal(jax.random.key(5), (N,), F64)

    def matvec(v, counts):
        return shifted @ v, counts.add(hvp=1)

    result, _ = conjugate_gradient(
        matvec, b, Counts.zero(), max_iter=50, tol=1e-10, precondition=inverse(approx, mu)
    )
    plain, _ = conjugate_gradient(matvec, b, Counts.zero(), max_iter=50, tol=1e-10)
    assert int(result.iterations) == len(clusters) and int(plain.iterations) == 9
    close(result.x, jnp.linalg.solve(shifted, b), rtol=1e-9, atol=1e-9)


# -- the optimizer on problems with known answers ---
EIGS = [0.5, 1.0, 2.0, 3.0, 7.0, 10.0]


def quadratic(a, b):
    return lambda x: 0.5 * x @ a @ x - b @ x


def step(tx, x, value_fn, state=None):
    state = tx.init(x) if state is None else state
    return jax.jit(lambda s, x: tx.update(None, s, x, value_fn=value_fn))(state, x)


def test_first_step_on_a_quadratic_is_the_damped_newton_step():
    a = spd(EIGS)
    b, x = jax.random.normal(jax.random.key(1), (2, len(EIGS)), F64)
    mu = 1e-3
    delta, state = step(nncg(rank=6, damping=mu, cg_tol=1e-12), x, quadratic(a, b))
    close(delta, -jnp.linalg.solve(a + mu * jnp.eye(6), a @ x - b), atol=1e-10)
    info = {k: float(v) for k, v in state.info.items()}
    assert info["step_size"] == 1.0 and info["line_search_trials"] == 1
    assert info["cg_iterations"] == 1 and info["nystrom_refreshed"] == 1  # exact P
    assert info["nystrom_lambda_max"] == pytest.approx(10.0, rel=1e-12)
    assert info["nystrom_lambda_min"] == pytest.approx(0.5, rel=1e-12)
    assert [int(c) for c in state.counts] == [2, 1, 6 + 1, 0]


def test_no_step_without_a_descent_direction_and_the_warm_start_is_cleared():
    x = jnp.zeros(len(EIGS), F64)  # the minimum: g = 0, CG returns 0, g^T d = 0
    tx = nncg(rank=2)
    state = tx.init(x)._replace(direction=jnp.ones(len(EIGS), F64))  # as after a step
    delta, state = step(tx, x, quadratic(spd(EIGS), jnp.zeros(len(EIGS), F64)), state)
    assert int(state.info["not_descent"]) == 1 and float(state.info["step_size"]) == 0
    assert int(state.info["line_search_trials"]) == 0 and int(state.rejected_steps) == 1
    assert bool(jnp.all(delta == 0)) and bool(jnp.all(state.direction == 0))
    assert int(state.counts.forward) == 1  # no line search


def test_armijo_cap_rejects_the_step_exactly():
    a = spd(EIGS)
    b, x = jax.random.normal(jax.random.key(2), (2, len(EIGS)), F64)
    delta, state = step(nncg(lr=1e3, rank=6, max_trials=1), x, quadratic(a, b))
    assert float(state.info["step_size"]) == 0 and int(state.info["line_search_trials"]) == 1
    assert int(state.info["rejected_steps"]) == 1 and bool(jnp.all(delta == 0))
    assert bool(jnp.any(state.direction != 0))  # a descent direction stays the warm start


def test_state_keeps_its_structure_and_dtypes_and_update_jits():
    p = pair("classification")
    tx = nncg(rank=5, update_freq=2, cg_max_iter=4, seed=1)
    state = tx.init(p.params)
    update = jax.jit(lambda s, x: tx.update(None, s, x, **p.extra_args()))
    params = p.params
    for _ in range(3):
        delta, after = update(state, params)
        params = jax.tree.map(jnp.add, params, delta)
        assert jax.tree.structure(after) == jax.tree.structure(state)
        assert jax.tree.map(lambda a: (a.shape, a.dtype), after) == jax.tree.map(
            lambda a: (a.shape, a.dtype), state
        )
        state = after
    assert jax.tree.structure(delta) == jax.tree.structure(p.params)


# -- parity with the torch twin ---
def run_torch(p, hyper, steps):
    opt, counters = NNCG(p.torch_params(), **hyper), Counters()
    records, deltas, counts = [], [], []
    for _ in range(steps):
        before = flatten(p.torch_params()).detach().clone()
        objective = TorchObjective(
            p.model, p.loss_fn, p.batch, p.torch_params(), counters, p.likelihood
        )
        record = opt.step(objective)
        records.append({k: float(v) for k, v in record.items()})
        deltas.append((flatten(p.torch_params()).detach() - before).numpy())
        counts.append(list(counters.as_dict().values()))
    return records, deltas, counts


def run_jax(p, hyper, steps):
    tx = nncg(**hyper)
    state, params = tx.init(p.params), p.params
    update = jax.jit(lambda s, x: tx.update(None, s, x, **p.extra_args()))
    infos, deltas, counts, states = [], [], [], []
    for _ in range(steps):
        delta, state = update(state, params)
        params = jax.tree.map(jnp.add, params, delta)
        infos.append({k: float(v) for k, v in state.info.items()})
        deltas.append(np.asarray(ravel_pytree(delta)[0]))
        counts.append([int(c) for c in state.counts])
        states.append(state)
    return infos, deltas, counts, states


def gradient_norms(p):
    (_, g), _ = Objective(p.params, p.value_fn).loss_and_grad(
        ravel_pytree(p.params)[0], Counts.zero()
    )
    _, g_torch = TorchObjective(p.model, p.loss_fn, p.batch, p.torch_params()).loss_and_grad()
    return float(jnp.linalg.norm(g)), float(flatten(g_torch).norm())


def same_records(torch_record, jax_info, rtol):
    assert set(torch_record) <= set(jax_info)
    for key, value in torch_record.items():
        # lambda_min is 0 or round-off: the positive part of an indefinite H (a fallback)
        atol = 1e-12 * max(1.0, torch_record["nystrom_lambda_max"])
        assert jax_info[key] == pytest.approx(value, rel=rtol, abs=atol), key


# rank 60 >= d (51 classification, 37 regression): the preconditioner is H's positive part
# whatever the draw. Damping above |lambda_min(H)| along the run keeps H + mu I positive definite
# (no Steihaug exit, whose trigger is a sign test at round-off). CG to a 1e-10 relative
# residual, far from the eps floor, so both twins stop at the same iteration; "capped" stops CG
# at 3 products instead (its result still depends only on P) and starts Armijo at 4, so it
# backtracks.
MODES = {
    "classification": ("classification", dict(damping=1.0, cg_tol=1e-10)),
    "regression": ("regression", dict(damping=20.0, cg_tol=1e-10)),
    "capped": ("classification", dict(damping=1.0, cg_max_iter=3, lr=4.0)),
}


@pytest.mark.parametrize("mode", MODES)
def test_parity_with_torch(mode):
    kind, hyper = MODES[mode]
    hyper = dict(rank=60, update_freq=3, seed=0, **hyper)
    norm_jax, norm_torch = gradient_norms(pair(kind))
    assert norm_jax == pytest.approx(norm_torch, rel=1e-6)
    records, torch_deltas, torch_counts = run_torch(pair(kind), hyper, 10)
    infos, jax_deltas, jax_counts, _ = run_jax(pair(kind), hyper, 10)
    # the first step: loss, update and every record entry to 1e-6, the counts exactly
    same_records(records[0], infos[0], rtol=1e-6)
    close(jax_deltas[0], torch_deltas[0], rtol=0, atol=1e-6 * np.abs(torch_deltas[0]).max())
    assert jax_counts[0] == torch_counts[0]
    # 10 steps, refreshed at 1, 4, 7, 10: the twins' iterates differ by round-off only (same P
    # up to ~1e-13, same CG iteration counts), ~1e-15 relative as run; 1e-10 leaves room for
    # the conditioning of H + mu I to amplify it
    assert [r["nystrom_refreshed"] for r in records] == [1, 0, 0] * 3 + [1]
    for record, info in zip(records, infos, strict=True):
        same_records(record, info, rtol=1e-10)
    assert jax_counts == torch_counts
    if mode == "capped":
        assert any(r["line_search_trials"] > 1 for r in records)
        assert all(r["cg_iterations"] == 3 for r in records)


def test_low_rank_run_matches_torch_where_the_draw_does_not_matter_and_seeds_reproduce():
    # rank 10 < d = 51: P depends on the draw, so CG's iteration count (hvps) does too, but a
    # solve to 1e-10 does not, nor the line search on it: forward and backward counts do not
    hyper = dict(rank=10, update_freq=3, damping=1.0, cg_tol=1e-10)
    records, _, torch_counts = run_torch(pair("classification"), dict(seed=0, **hyper), 10)
    infos, deltas, jax_counts, states = run_jax(pair("classification"), dict(seed=3, **hyper), 10)
    assert [c[:2] for c in jax_counts] == [c[:2] for c in torch_counts]
    for losses in ([r["loss"] for r in records], [i["loss"] for i in infos]):
        assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert states[-1].basis.shape == (51, 10)
    again, deltas_again, counts_again, states_again = run_jax(
        pair("classification"), dict(seed=3, **hyper), 10
    )
    assert again == infos and counts_again == jax_counts
    assert all(np.array_equal(a, b) for a, b in zip(deltas, deltas_again, strict=True))
    assert bool(jnp.all(states[-1].basis == states_again[-1].basis))
    _, other_deltas, _, other_states = run_jax(pair("classification"), dict(seed=4, **hyper), 10)
    assert not bool(jnp.all(other_states[0].basis == states[0].basis))
    assert not all(np.array_equal(a, b) for a, b in zip(deltas, other_deltas, strict=True))


# -- configuration ---
def test_signature_is_the_torch_constructors():
    torch_params = list(inspect.signature(NNCG.__init__).parameters.values())[2:]  # self, params
    jax_params = list(inspect.signature(nncg).parameters.values())
    assert [(q.name, q.default) for q in jax_params] == [(q.name, q.default) for q in torch_params]


def test_no_seed_means_seed_zero():
    x = jnp.zeros(3, F64)
    assert bool(jnp.all(nncg().init(x).key == nncg(seed=0).init(x).key))
    assert not bool(jnp.all(nncg().init(x).key == nncg(seed=1).init(x).key))


@pytest.mark.parametrize("name, value", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        nncg(**{name: value})
