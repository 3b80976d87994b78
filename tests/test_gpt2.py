"""The GPT-2 task: its schedule and loss against hand computations, the windows it reads,
curvature products through transformers' GPT-2 against dense autograd, and one step of every
optimizer of the smoke grid through the harness on a corpus made in the test."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessbench.optimizers.torch.flat import flatten
from hessbench.optimizers.torch.objective import Objective
from hessbench.optimizers.torch.registry import ConfigError
from hessbench.tasks import gpt2, gpt2_data
from hessbench.workflows.config import check_data, load
from hessbench.workflows.harness import run_cell

CPU = torch.device("cpu")


def nanogpt_lr(it, warmup, decay_iters, lr, min_lr):
    """nanoGPT's train.py get_lr, written out as it is there."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize("it", [0, 1, 9, 10, 11, 50, 99, 100])
def test_lr_factor_is_nanogpts_schedule(it):
    want = nanogpt_lr(it, warmup=10, decay_iters=100, lr=6e-4, min_lr=6e-5) / 6e-4
    assert gpt2.lr_factor(it, warmup=10, total=100, min_ratio=0.1) == pytest.approx(want)


def test_lm_loss_is_the_mean_token_cross_entropy_by_hand():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 5, (2, 3), generator=gen)
    by_hand = [
        -(logits[b, t, targets[b, t]] - logits[b, t].exp().sum().log())
        for b in range(2)
        for t in range(3)
    ]
    assert gpt2.lm_loss(logits, targets).item() == pytest.approx(torch.stack(by_hand).mean().item())
    assert gpt2.lm_loss(logits, targets).dtype == torch.float64  # never downcast
    assert gpt2.lm_loss(logits.bfloat16(), targets).dtype == torch.float32


def test_random_windows_are_seeded_next_token_pairs_inside_the_data():
    data = np.arange(300, dtype=np.uint16)
    settings = gpt2.Settings(block_size=16, batch_size=64)
    a = next(gpt2.random_windows(data, settings, seed=1, device=CPU))
    b = next(gpt2.random_windows(data, settings, seed=1, device=CPU))
    c = next(gpt2.random_windows(data, settings, seed=2, device=CPU))
    x, y = a
    assert torch.equal(x, b[0]) and not torch.equal(x, c[0])
    assert x.shape == y.shape == (64, 16)
    assert torch.equal(y, x + 1)  # on arange data the target is the next token
    assert int(y.max()) <= 299


def test_fixed_windows_span_the_data_and_refuse_a_too_short_one():
    starts = gpt2.fixed_windows(np.zeros(1000), 5, 99)
    assert starts.tolist() == [0, 225, 450, 675, 900]
    with pytest.raises(ValueError, match="cannot hold one window"):
        gpt2.fixed_windows(np.zeros(50), 2, 60)


def tiny_gpt(vocab=13, dtype=torch.float64):
    settings = gpt2.Settings(n_layer=2, n_head=2, n_embd=4, block_size=6)
    torch.manual_seed(0)
    return gpt2.LanguageModel(gpt2.gpt2(settings, vocab), autocast=False).to(dtype)


def test_hvp_and_ggn_products_through_gpt2_match_dense_autograd():
    """Through SDPA attention (whose fused CPU kernel has no double backward) and the tied
    embedding, against the dense Hessian and 2x-free J^T H_out J of the flat parameters."""
    model = tiny_gpt()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 13, (2, 6), generator=gen)
    y = torch.randint(0, 13, (2, 6), generator=gen)
    params = list(model.parameters())
    objective = Objective(model, gpt2.lm_loss, (x, y), params)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def unflat(theta):
        parts = [t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True)]
        return dict(zip(names, parts, strict=True))

    def logits_of(theta):
        return torch.func.functional_call(model, unflat(theta), (x,))

    theta = flatten([p.detach() for p in params])
    with sdpa_kernel([SDPBackend.MATH]):  # the reference needs a twice-differentiable graph too
        hessian = torch.autograd.functional.hessian(lambda t: gpt2.lm_loss(logits_of(t), y), theta)
        jac = torch.autograd.functional.jacobian(logits_of, theta).reshape(-1, theta.numel())
    out = logits_of(theta).detach().reshape(-1, 13)
    probs = out.softmax(-1)
    # Hessian of the mean cross-entropy in the logits: (diag(p) - p p^T) / tokens, per token
    h_out = torch.block_diag(*[(torch.diag(p) - torch.outer(p, p)) for p in probs]) / len(probs)
    ggn = jac.T @ h_out @ jac
    v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
    vs = [t.view(s) for t, s in zip(v.split(sizes), shapes, strict=True)]
    assert torch.allclose(flatten(objective.hvp(vs)), hessian @ v, atol=1e-10)
    assert torch.allclose(flatten(objective.ggnvp(vs)), ggn @ v, atol=1e-10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared corpus of generated English-like documents, small enough for seconds."""
    root = tmp_path_factory.mktemp("gpt2")
    rng = np.random.default_rng(0)
    words = "the a model learns tokens of text and every step reads windows from it".split()
    docs = [" ".join(rng.choice(words, 60)) + "." for _ in range(120)]
    train, val = gpt2_data.split(docs, 0.1, seed=0)
    enc = gpt2_data.encoding(root / "tiktoken")
    gpt2_data.write_bins(train, val, root / "bins", enc, {"corpus": "test"})
    return root / "bins"


def smoke_cells(corpus):
    cells = [c for c in load(scale="smoke").cells if c.task_module == "gpt2"]
    for cell in cells:
        settings = {**cell.settings, "data_dir": str(corpus), "steps": 3, "eval_every": 3}
        yield dataclasses.replace(cell, settings=settings, log_every=1)


def test_every_smoke_optimizer_trains_a_step_and_dense_newton_is_infeasible(tmp_path, corpus):
    seen = set()
    for cell in smoke_cells(corpus):
        summary = run_cell(cell, tmp_path / cell.optimizer, tmp_path, track=False)
        seen.add(cell.impl)
        if cell.impl == "newton":
            assert summary["status"] == "infeasible", summary
            assert "dense Newton on 404,072 parameters" in summary["reason"]
            assert "GiB" in summary["reason"]
            continue
        assert summary["status"] == "ok", (cell.optimizer, summary["reason"])
        metrics = pd.read_parquet(tmp_path / cell.optimizer / "metrics.parquet")
        assert metrics["train_loss"].iloc[1:].notna().all()
        assert np.isfinite(summary["final_val_loss"])
        assert summary["total_forward"] >= 3
        assert summary["tokens_per_s"] > 0
        assert metrics["tokens"].tolist()[-1] == 3 * cell.settings["batch_size"] * 32
    assert {"adamw", "sophia", "adahessian", "mezo", "hizoo", "hf_gn", "newton_cg"} <= seen


def test_the_schedule_sets_the_lr_of_every_step_and_validation_uses_fixed_windows(tmp_path, corpus):
    cell = next(c for c in smoke_cells(corpus) if c.optimizer == "adamw")
    settings = {**cell.settings, "steps": 6, "eval_every": 3, "warmup_steps": 2}
    cell = dataclasses.replace(cell, settings=settings)
    run_cell(cell, tmp_path / "a", tmp_path, track=False)
    metrics = pd.read_parquet(tmp_path / "a" / "metrics.parquet").set_index("step")
    peak = cell.hyperparameters["lr"]
    for step in range(1, 7):  # the lr logged after `step` steps is the next step's
        want = peak * gpt2.lr_factor(step, 2, 6, settings["min_lr_ratio"])
        assert metrics.loc[step, "lr"] == pytest.approx(want)

    # the validation loss is the mean over the fixed windows, by hand, and the same for a
    # different seed's problem (which only changes the training windows and the init)
    task = gpt2.Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    one, two = gpt2.build(task, 0, CPU), gpt2.build(task, 1, CPU)
    val = gpt2_data.load_bins(corpus)["val"]
    starts = gpt2.fixed_windows(val, task.eval_windows, task.block_size)
    x, y = gpt2.windows(val, starts, task.block_size, CPU)
    with torch.no_grad():
        by_hand = F.cross_entropy(one.model(x).flatten(0, 1), y.flatten()).item()
    assert one.evaluate(one.model)["val_loss"] == pytest.approx(by_hand, rel=1e-5)
    two.model.load_state_dict(one.model.state_dict())
    assert two.evaluate(two.model)["val_loss"] == pytest.approx(by_hand, rel=1e-5)
    assert not torch.equal(next(one.batches)[0], next(two.batches)[0])


def test_a_corrupt_bin_fails_the_cell_with_the_file_named(tmp_path, corpus):
    broken = tmp_path / "bins"
    broken.mkdir()
    for name in ("train.bin", "val.bin", "manifest.json"):
        (broken / name).write_bytes((corpus / name).read_bytes())
    raw = bytearray((broken / "train.bin").read_bytes())
    raw[10] ^= 0xFF
    (broken / "train.bin").write_bytes(bytes(raw))
    cell = next(c for c in smoke_cells(corpus) if c.optimizer == "adamw")
    cell = dataclasses.replace(cell, settings={**cell.settings, "data_dir": str(broken)})
    summary = run_cell(cell, tmp_path / "cell", tmp_path, track=False)
    assert summary["status"] == "error"
    assert "DataError" in summary["reason"] and "train.bin" in summary["reason"]
    # and a sweep that reads it is refused before any job
    plan = dataclasses.replace(load(scale="smoke"), cells=[cell])
    with pytest.raises(ConfigError, match=r"data error in task gpt2 at scale smoke: .*train\.bin"):
        check_data(plan)
    check_data(dataclasses.replace(plan, cells=list(smoke_cells(corpus))))  # the intact bins


def test_chains_are_refused_before_any_data_is_read():
    assert "schedule" in gpt2.infeasible("chain", gpt2.Settings())
    assert gpt2.infeasible("sophia", gpt2.Settings()) is None
