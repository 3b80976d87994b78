"""MNIST classification with a ReLU MLP.

Seed 003's study uses 784-10-10 (7,960 parameters, batch 64); the wider 784-128-10 is the
model whose target, 0.97 test accuracy, follows AlgoPerf's MNIST workload. The metric is the
accuracy on the 10k test set (reported as ``val_metric``), evaluated every ``eval_every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Problem, dtype_of, epoch_batches, require_positive_ints
from .mnist_data import load_mnist, mnist_files

MEAN, STD = 0.1307, 0.3081  # pixel statistics of the training set (the usual normalisation)


@dataclass(frozen=True)
class Settings:
    hidden: tuple[int, ...] = (128,)
    batch_size: int = 64
    steps: int = 3000
    eval_every: int = 250
    train_size: int | None = None  # None: all 60,000
    test_size: int | None = None  # None: all 10,000
    target: float = 0.97
    dtype: str = "float32"
    data_dir: str | None = None  # a folder of the four IDX files; None: the bundled copy

    def __post_init__(self):
        sizes = ("train_size", "test_size")
        require_positive_ints(self, ("batch_size", "steps", "eval_every", *sizes), sizes)
        if self.train_size is not None and self.batch_size > self.train_size:
            raise ValueError(f"batch_size {self.batch_size} exceeds train_size {self.train_size}")
        dtype_of(self.dtype)  # an unknown dtype fails with the config, not inside a cell
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a list of positive widths, got {self.hidden!r}")


def mlp(hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def check_data(settings: Settings) -> None:
    mnist_files(settings.data_dir)


def infeasible(impl: str, settings: Settings) -> str | None:
    return None  # every landed optimizer fits this task at every scale


def split_tensors(images, labels, size, device, dtype):
    """The first ``size`` images (normalised, ``dtype``) and labels of a split, as tensors."""
    x = torch.from_numpy(images[:size].astype("float32") / 255.0)
    x = ((x - MEAN) / STD).to(device=device, dtype=dtype)
    return x, torch.from_numpy(labels[:size].astype("int64")).to(device)


def build(settings: Settings, seed: int, device: torch.device) -> Problem:
    dtype = dtype_of(settings.dtype)
    data = load_mnist(settings.data_dir)
    x_train, y_train = split_tensors(
        data["train_images"], data["train_labels"], settings.train_size, device, dtype
    )
    x_test, y_test = split_tensors(
        data["test_images"], data["test_labels"], settings.test_size, device, dtype
    )

    torch.manual_seed(seed)
    model = mlp(tuple(settings.hidden)).to(device=device, dtype=dtype)
    order = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def evaluate(net: nn.Module) -> dict[str, float]:
        logits = torch.cat([net(chunk) for chunk in x_test.split(4096)])
        return {
            "val_loss": F.cross_entropy(logits, y_test).item(),
            "val_metric": (logits.argmax(-1) == y_test).float().mean().item(),
        }

    @torch.no_grad()
    def train_loss(net: nn.Module) -> float:
        total = sum(
            F.cross_entropy(net(x), y, reduction="sum").item()
            for x, y in zip(x_train.split(4096), y_train.split(4096), strict=True)
        )
        return total / len(x_train)

    return Problem(
        model=model,
        loss_fn=F.cross_entropy,
        likelihood="categorical",
        batches=epoch_batches(x_train, y_train, settings.batch_size, order),
        evaluate=evaluate,
        metric="accuracy",
        higher_is_better=True,
        target=settings.target,
        steps=settings.steps,
        eval_every=settings.eval_every,
        batch_size=settings.batch_size,
        train_loss=train_loss,
        train_examples=(x_train, y_train),
    )
