"""The jax dense-Newton and Hessian-free twins against their torch twins
(``optimizers/torch/newton.py``, ``optimizers/torch/hessian_free.py``), stepped in float64 from
the same weights on the same fixed batch (``jax_problems.pair``).

Each case is chosen so the comparison is well-posed, i.e. no discrete decision (Cholesky or
eigh, accept or reject, a CG stopping rule, which stored CG iterate is best) sits within
round-off of its threshold, since the two twins' curvature products agree only to rounding
(double backward against ``jax.linearize``). Where a setting is not, the case says why it
was changed.

Tolerance over 10 steps: the losses to 1e-8 relative. Rounding differences of ~1e-16 in each
product grow along the run: CG multiplies them by about the damped system's condition number
and each step starts from the last; the largest drift seen over these cases is ~1e-9 relative
in the loss (the update itself drifts more, ~1e-6 at step 10 of Martens' settings, as the
damping falls and CG runs longer; the loss is second order in it near the step's minimum).
"""

from __future__ import annotations

import inspect
from functools import cache, partial

import jax
import numpy as np
import pytest
import torch
from jax.flatten_util import ravel_pytree

from hessbench.optimizers.jax.hessian_free import hf_gn, newton_cg
from hessbench.optimizers.jax.newton import damped_newton, newton
from hessbench.optimizers.jax.objective import Counts, Objective
from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.hessian_free import HessianFreeGN, NewtonCG
from hessbench.optimizers.torch.newton import DampedNewton, Newton
from hessbench.optimizers.torch.objective import Counters, Infeasible
from hessbench.optimizers.torch.objective import Objective as TorchObjective

from jax_problems import pair  # enables x64

TWINS = {newton: Newton, damped_newton: DampedNewton, newton_cg: NewtonCG, hf_gn: HessianFreeGN}
STEPS, LOSS_RTOL, FIRST_RTOL = 10, 1e-8, 1e-6
COUNT_KEYS = ("forward", "backward", "hvp", "ggnvp")

C, R = "classification", "regression"
# id: (jax factory, hyperparameters, problem kind, seed)
CASES = {
    # Undamped Newton at lr 1 amplifies rounding ~1e3-fold a step through the pseudo-inverse's
    # small eigenvalues (1e-3 relative by step 4): lr 0.1 keeps 10 steps comparable while every
    # step still takes the eigh branch (19 negative eigenvalues).
    "newton_indefinite": (newton, dict(lr=0.1), C, 2),
    "damped_fixed": (damped_newton, dict(damping=1.0, adaptive=False), C, 0),
    # LM: five rejected steps in a row (lambda boosted each time), then accepted and dropped.
    "damped_lm_rejects": (damped_newton, dict(damping=1.0), R, 0),
    # lr 3 overshoots the model's minimum: it predicts an increase (rho = -inf), lambda boosts.
    "damped_lm_boosts": (damped_newton, dict(lr=3.0, damping=1.0), C, 0),
    "newton_cg_fixed": (newton_cg, dict(adaptive=False), R, 0),
    "newton_cg_lm": (newton_cg, dict(), R, 0),
    # Martens' defaults: warm start, progress rule, backtracking, LM and Armijo.
    "hf_gn_martens": (hf_gn, dict(), C, 0),
    "hf_gn_config": (hf_gn, dict(lr=0.5, damping=4.0, adaptive=False, cg_max_iter=50), C, 0),
    "hf_gn_precondition": (hf_gn, dict(precondition=True), C, 0),
    # Half of 24 examples gives a GGN of rank <= 24 < d = 51: with lambda = 1 CG reaches
    # rounding level by iteration ~10 and the later stored iterates tie in loss, so which one
    # backtracking keeps is a coin toss. Stopping CG at 8 keeps the iterates distinct.
    "hf_gn_curvature_half": (hf_gn, dict(curvature_fraction=0.5, cg_max_iter=8), C, 0),
}


def torch_gradient_norm(p) -> float:
    _, grads = TorchObjective(p.model, p.loss_fn, p.batch, p.torch_params()).loss_and_grad()
    return flatten(grads).norm().item()


def jax_gradient_norm(p, params) -> float:
    obj = Objective(params, p.value_fn)
    (_, g), _ = obj.loss_and_grad(obj.theta, Counts.zero())
    return float(np.linalg.norm(g))


def run_both(factory, kwargs, kind, seed, steps=STEPS):
    """Step both twins ``steps`` times; per step the torch (record, delta, counts) and the jax
    (info, delta, counts); and the jax states before and after."""
    p = pair(kind, seed)
    params = p.torch_params()
    opt, counters = TWINS[factory](params, **kwargs), Counters()
    twin = factory(**kwargs)
    state = first = twin.init(p.params)
    update = jax.jit(partial(twin.update, **p.extra_args()))
    jparams, torch_steps, jax_steps = p.params, [], []
    for _ in range(steps):
        before = flatten(params).detach().clone()
        record = opt.step(TorchObjective(p.model, p.loss_fn, p.batch, params, counters))
        delta = (flatten(params).detach() - before).numpy()
        torch_steps.append((record, delta, counters.as_dict()))
        updates, state = update(None, state, jparams)
        jparams = jax.tree.map(lambda a, b: a + b, jparams, updates)
        counts = {k: int(getattr(state.counts, k)) for k in COUNT_KEYS}
        info = {k: np.asarray(v) for k, v in state.info.items()}
        jax_steps.append((info, np.asarray(ravel_pytree(updates)[0]), counts))
    return p, torch_steps, jax_steps, (first, state)


@cache
def ran(case):
    return run_both(*CASES[case])


def close_vectors(a, b, rtol):
    assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b)


@pytest.mark.parametrize("case", CASES)
def test_first_step_matches_the_torch_twin(case):
    factory, kwargs, kind, seed = CASES[case]
    p = pair(kind, seed)
    assert jax_gradient_norm(p, p.params) == pytest.approx(torch_gradient_norm(p), rel=1e-12)
    _, torch_steps, jax_steps, _ = run_both(factory, kwargs, kind, seed, steps=1)
    (record, torch_delta, torch_counts), (info, jax_delta, jax_counts) = (
        torch_steps[0],
        jax_steps[0],
    )
    assert float(info["loss"]) == pytest.approx(float(record["loss"]), rel=FIRST_RTOL)
    close_vectors(jax_delta, torch_delta, FIRST_RTOL)
    assert jax_counts == torch_counts
    for key, value in record.items():
        np.testing.assert_allclose(info[key], float(value), rtol=FIRST_RTOL, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_ten_steps_follow_the_torch_twin(case):
    _, torch_steps, jax_steps, (first, last) = ran(case)
    torch_losses = [float(record["loss"]) for record, _, _ in torch_steps]
    jax_losses = [float(info["loss"]) for info, _, _ in jax_steps]
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=LOSS_RTOL)
    for (record, _, t_counts), (info, _, j_counts) in zip(torch_steps, jax_steps, strict=True):
        assert j_counts == t_counts
        for key, value in record.items():  # the discrete outcomes of each step, exactly
            if isinstance(value, int):
                assert int(info[key]) == value, key
    # the state keeps its pytree structure and dtypes (the harness compiles one step)
    assert jax.tree.structure(first) == jax.tree.structure(last)
    assert [(x.dtype, x.shape) for x in jax.tree.leaves(first)] == [
        (x.dtype, x.shape) for x in jax.tree.leaves(last)
    ]


def test_the_cases_reach_the_branches_they_are_there_for():
    def records(case):
        return [record for record, _, _ in ran(case)[1]]

    assert all(r["negative_eigenvalues"] > 0 for r in records("newton_indefinite"))
    assert records("newton_indefinite")[-1]["indefinite_steps"] == STEPS
    rejects = records("damped_lm_rejects")
    assert rejects[5]["rejected_steps"] == 5 and rejects[5]["damping"] == 1.5**5
    boosts = records("damped_lm_boosts")
    assert boosts[0]["rho"] == -np.inf and boosts[1]["damping"] == 1.5
    assert records("newton_cg_lm")[-1]["rho"] < 0.25  # one LM boost in the run
    martens = records("hf_gn_martens")
    assert any(r["cg_chosen_iter"] < r["cg_iters"] for r in martens)  # backtracked
    assert all(r["cg_iters"] >= 10 and r["negative_curvature"] == 0 for r in martens)


def test_warm_starts_cost_one_product_each_after_the_first_step():
    _, _, jax_steps, _ = ran("hf_gn_martens")
    cg_products = sum(int(info["cg_iters"]) for info, _, _ in jax_steps)
    assert jax_steps[-1][2]["ggnvp"] == cg_products + STEPS - 1


@pytest.mark.parametrize("factory", TWINS)
def test_signature_is_the_torch_constructor_without_params(factory):
    torch_params = list(inspect.signature(TWINS[factory].__init__).parameters.values())[2:]
    ours = list(inspect.signature(factory).parameters.values())
    assert [(q.name, q.default) for q in ours] == [(q.name, q.default) for q in torch_params]


BAD = [
    (newton, dict(lr=0.0)),
    (damped_newton, dict(damping=-1.0)),
    (damped_newton, dict(damping=0.0, adaptive=True)),
    (newton_cg, dict(cg_max_iter=0)),
    (newton_cg, dict(cg_tol=1.0)),
    (hf_gn, dict(warm_start=1.0)),
    (hf_gn, dict(progress_eps=0.0)),
    (hf_gn, dict(curvature_fraction=0.0)),
    (hf_gn, dict(adaptive=True, damping=0.0)),
]


@pytest.mark.parametrize("factory, kwargs", BAD)
def test_bad_hyperparameters_raise_as_in_torch(factory, kwargs):
    with pytest.raises(ValueError):
        TWINS[factory]([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError):
        factory(**kwargs)


@pytest.mark.parametrize("factory", [newton, damped_newton])
def test_dense_newton_past_the_memory_budget_is_infeasible_at_init(factory):
    p = pair()
    with pytest.raises(Infeasible):
        TWINS[factory](p.torch_params(), memory_fraction=1e-12)
    twin = factory(memory_fraction=1e-12)  # the parameters are first seen by init
    with pytest.raises(Infeasible):
        twin.init(p.params)
