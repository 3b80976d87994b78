"""Lanczos, Hutchinson and SLQ on explicit symmetric matrices with known spectra, and the
diagnostics on a tiny MLP against its dense autograd Hessian."""

from __future__ import annotations

import dataclasses
import math

import matplotlib.image as mpimg
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from hessbench.optimizers.torch.diagonal import AdaHessian
from hessbench.optimizers.torch.objective import Objective
from hessbench.reports.curvature import curvature_curves, spectral_densities
from hessbench.reports.figures import save
from hessbench.tasks.base import Problem
from hessbench.workflows.config import load
from hessbench.workflows.diagnostics import Diagnostics, Settings, inverse_sqrt_preconditioner
from hessbench.workflows.harness import run_cell
from hessbench.workflows.spectrum import slq, top_eigenvalues

from problems import F64, spd

SPECTRUM = torch.cat([torch.tensor([40.0, 25.0, 12.0, 9.0]), torch.linspace(-2.0, 3.0, 146)])
MATRIX, _ = spd(SPECTRUM.tolist(), seed=3)


def product(v):
    return MATRIX @ v


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_top_eigenvalues_match_the_known_spectrum_to_1e_8():
    top, residuals, used = top_eigenvalues(product, 150, 4, generator(), tol=1e-12)
    assert_close(top, torch.tensor([40.0, 25.0, 12.0, 9.0], dtype=F64), rtol=0, atol=1e-8)
    assert (residuals < 1e-8).all()
    assert used < 150  # the outliers converge long before the whole space is spanned


def test_top_eigenvalues_report_unconverged_residuals_honestly():
    top, residuals, used = top_eigenvalues(product, 150, 4, generator(), max_steps=6)
    assert used == 6
    # every Ritz value lies inside the spectrum, and the bound covers the error
    assert (top <= 40.0 + 1e-12).all()
    assert (40.0 - top[0]).abs() <= residuals[0] + 1e-12


def test_hutchinson_trace_is_within_its_standard_error():
    density = slq(product, 150, 10, 400, generator(1))
    trace, se = density.trace()
    # Var(v^T A v) = 2 sum_{i != j} A_ij^2 for Rademacher v
    off = MATRIX - torch.diag(MATRIX.diagonal())
    expected_se = math.sqrt(2 * (off**2).sum().item() / 400)
    assert 0.8 < se / expected_se < 1.25
    assert abs(trace - SPECTRUM.sum().item()) <= 4 * se


def test_slq_density_integrates_to_one_and_matches_traces_of_powers():
    vectors, steps = 300, 8
    density = slq(product, 150, steps, vectors, generator(2))
    for w in density.weights:
        assert abs(w.sum().item() - 1) < 1e-12
    grid = torch.linspace(-20, 60, 8001, dtype=F64)
    smooth = density.smoothed(grid, width=0.5)
    assert abs(torch.trapezoid(smooth, grid).item() - 1) < 1e-6
    for power in (1, 2, 3):  # exact per vector for power < 2 * steps: v^T A^p v / n
        per_vector = torch.tensor(
            [
                (w * x**power).sum().item()
                for x, w in zip(density.nodes, density.weights, strict=True)
            ]
        )
        exact = (SPECTRUM**power).sum().item() / 150
        se = per_vector.std().item() / math.sqrt(vectors)
        assert abs(density.moment(power) - exact) <= 4 * se


def tiny_problem(batch_size=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=gen, dtype=F64), torch.randint(0, 3, (40,), generator=gen)
    problem = Problem(model, F.cross_entropy, "categorical", iter(()), lambda m: {}, "acc", True,
                      0.9, 10, 5, batch_size, train_examples=(x, y))  # fmt: skip
    return model, problem, (x[:32], y[:32])


def dense_hessian(model, batch):
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        tensors, i = {}, 0
        for name, p in zip(names, model.parameters(), strict=True):
            tensors[name] = theta[i : i + p.numel()].view_as(p)
            i += p.numel()
        return F.cross_entropy(torch.func.functional_call(model, tensors, (batch[0],)), batch[1])

    return torch.func.hessian(loss)(flat)


def test_top_eigenvalue_of_a_tiny_mlp_equals_the_dense_hessians():
    model, problem, batch = tiny_problem()
    diagnostics = Diagnostics(Settings(points=1, batch_size=32, lanczos_steps=60), problem, 0, 1)
    diagnostics.measure(model, torch.optim.SGD(model.parameters(), lr=0.1), step=0)
    (row,) = diagnostics.rows  # SGD has no preconditioner
    eigenvalues = torch.linalg.eigvalsh(dense_hessian(model, batch))
    top = torch.tensor(row["top_eigenvalues"], dtype=F64)
    assert_close(top, eigenvalues.flip(0)[:3], rtol=1e-8, atol=1e-10)
    assert abs(row["lambda_min"] - eigenvalues[0].item()) < 1e-8
    assert row["hvps"] > 0 and row["dtype"] == "float64"
    # every point probes the same directions: the same Hessian gives the same numbers
    diagnostics.measure(model, torch.optim.SGD(model.parameters(), lr=0.1), step=7)
    assert diagnostics.rows[1]["nodes"] == row["nodes"]
    assert diagnostics.rows[1]["trace"] == row["trace"]


def test_a_full_batch_task_is_diagnosed_on_its_whole_objective():
    model, problem, _ = tiny_problem(batch_size=40)  # trains on all 40 examples each step
    x, y = problem.train_examples
    diagnostics = Diagnostics(Settings(points=1, batch_size=32, lanczos_steps=60), problem, 0, 1)
    diagnostics.measure(model, torch.optim.SGD(model.parameters(), lr=0.1), step=0)
    eigenvalues = torch.linalg.eigvalsh(dense_hessian(model, (x, y)))
    assert diagnostics.rows[0]["batch_size"] == 40
    assert_close(torch.tensor(diagnostics.rows[0]["top_eigenvalues"], dtype=F64),
                 eigenvalues.flip(0)[:3], rtol=1e-8, atol=1e-10)  # fmt: skip


def test_preconditioned_spectrum_is_that_of_p_inverse_sqrt_h_p_inverse_sqrt():
    model, problem, batch = tiny_problem()
    opt = AdaHessian(model.parameters(), lr=0.01, seed=0)
    for _ in range(3):
        opt.step(Objective(model, F.cross_entropy, batch, list(model.parameters())))
    diagnostics = Diagnostics(Settings(points=1, batch_size=32, lanczos_steps=60), problem, 0, 1)
    diagnostics.measure(model, opt, step=3)
    row = next(r for r in diagnostics.rows if r["kind"] == "preconditioned")
    root = inverse_sqrt_preconditioner(opt, F64)
    scaling = torch.diag(root(torch.ones(sum(p.numel() for p in model.parameters()), dtype=F64)))
    expected = torch.linalg.eigvalsh(scaling @ dense_hessian(model, batch) @ scaling)
    assert_close(
        torch.tensor(row["top_eigenvalues"], dtype=F64), expected.flip(0)[:3], rtol=1e-8, atol=1e-10
    )


def test_lbfgs_inverse_sqrt_squares_to_the_two_loop_recursion():
    model, problem, batch = tiny_problem()
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=5, history_size=4)
    objective = Objective(model, F.cross_entropy, batch, list(model.parameters()))
    for _ in range(2):
        opt.step(objective)
    root = inverse_sqrt_preconditioner(opt, F64)
    n = sum(p.numel() for p in model.parameters())
    dense_root = torch.stack([root(e) for e in torch.eye(n, dtype=F64)], dim=1)
    # H_k by its definition (the BFGS inverse update from gamma I over the stored pairs)
    state = opt.state[opt._params[0]]
    h = torch.eye(n, dtype=F64) * float(state["H_diag"])
    for s, y in zip(state["old_stps"], state["old_dirs"], strict=True):
        r = 1 / (y @ s)
        left = torch.eye(n, dtype=F64) - r * torch.outer(s, y)
        h = left @ h @ left.T + r * torch.outer(s, s)
    assert_close(dense_root @ dense_root, h, rtol=1e-8, atol=1e-10)
    assert_close(dense_root, dense_root.T, rtol=1e-8, atol=1e-10)


def test_points_are_the_start_every_n_steps_and_the_end():
    _, problem, _ = tiny_problem()
    diagnostics = Diagnostics(Settings(points=2), problem, 0, last_step=11)
    assert [s for s in range(12) if diagnostics.due(s)] == [0, 6, 11]
    even = Diagnostics(Settings(points=4), problem, 0, last_step=5625)
    assert [s for s in range(5626) if even.due(s)] == [0, 1407, 2814, 4221, 5625]
    short = Diagnostics(Settings(points=4), problem, 0, last_step=2)
    assert [s for s in range(3) if short.due(s)] == [0, 1, 2]


def test_a_diagnosed_cell_trains_exactly_as_an_undiagnosed_one(tmp_path):
    plan = load(scale="smoke")
    base = next(c for c in plan.cells if c.optimizer == "adamw" and c.seed == 0)
    base = dataclasses.replace(base, settings={**base.settings, "steps": 12, "eval_every": 6})
    diagnosed = dataclasses.replace(base, diagnostics={"points": 2, "lanczos_steps": 10})
    plain = run_cell(base, tmp_path / "plain", tmp_path, track=False)
    seen = run_cell(diagnosed, tmp_path / "seen", tmp_path, track=False)
    a = pd.read_parquet(tmp_path / "plain" / "metrics.parquet")
    b = pd.read_parquet(tmp_path / "seen" / "metrics.parquet")
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"])
    for key in ("total_forward", "total_backward", "total_hvp"):
        assert plain[key] == seen[key]
    points = pd.read_parquet(tmp_path / "seen" / "diagnostics.parquet")
    assert sorted(set(points["step"])) == [0, 6, 12]
    assert set(points["kind"]) == {"hessian", "preconditioned"}  # Adam's after its first step
    assert (points["hvps"] == 30).all()  # 10 Lanczos steps for the top, 2 SLQ vectors of 10
    assert seen["diagnostics_s"] > 0 and plain["diagnostics_s"] == 0
    assert pd.read_parquet(tmp_path / "plain" / "diagnostics.parquet").empty


def test_curvature_figures_from_aggregated_points(tmp_path):
    _, problem, _ = tiny_problem()
    rows = []
    for optimizer in ("sgd", "adamw"):
        diagnostics = Diagnostics(Settings(points=1, lanczos_steps=8), problem, 0, 1)
        model = tiny_problem()[0]
        diagnostics.measure(model, torch.optim.SGD(model.parameters(), lr=0.1), step=0)
        diagnostics.measure(model, torch.optim.SGD(model.parameters(), lr=0.1), step=1)
        rows += [{**r, "task": "tiny", "optimizer": optimizer, "seed": 0} for r in diagnostics.rows]
    frame = pd.DataFrame(rows)
    for fig, name in ((curvature_curves(frame), "c.png"), (spectral_densities(frame), "d.png")):
        save(fig, tmp_path / name)
        image = mpimg.imread(tmp_path / name)
        assert image[..., :3].std() > 0.05  # not a blank canvas
    assert "no curvature" in curvature_curves(frame.iloc[:0]).axes[0].texts[0].get_text()
