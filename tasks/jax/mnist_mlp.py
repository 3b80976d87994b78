"""MNIST with a ReLU MLP in jax: the twin of ``tasks/mnist_mlp.py``, whose docstring has the
task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import torch

from .. import mnist_mlp as torch_task
from ..base import dtype_of
from ..mnist_data import load_mnist
from .base import JaxProblem, index_batches, linear_params, mlp_apply, require_dtype, to_jax


def apply(params, images: jax.Array) -> jax.Array:
    return mlp_apply(params, images.reshape(images.shape[0], -1), jax.nn.relu)


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit
def _scores(params, images, labels):
    logits = apply(params, images)
    # torch averages the hits in float32 whatever the model's dtype: the same rounding here
    hits = (logits.argmax(-1) == labels).astype(jnp.float32)
    return loss_fn(logits, labels), hits.mean()


def build(settings: torch_task.Settings, seed: int) -> JaxProblem:
    require_dtype(settings.dtype)
    cpu = torch.device("cpu")
    problem = torch_task.build(settings, seed, cpu)
    x_train, y_train = map(to_jax, problem.train_examples)
    # the torch problem keeps its test set inside evaluate: rebuilt with the same function
    data = load_mnist(settings.data_dir)
    test = torch_task.split_tensors(
        data["test_images"], data["test_labels"], settings.test_size, cpu, dtype_of(settings.dtype)
    )
    x_test, y_test = map(to_jax, test)

    def evaluate(params) -> dict[str, float]:
        loss, accuracy = _scores(params, x_test, y_test)
        return {"val_loss": float(loss), "val_metric": float(accuracy)}

    def train_loss(params) -> float:
        return float(_scores(params, x_train, y_train)[0])

    return JaxProblem(
        params=linear_params(problem.model),
        apply=apply,
        loss_fn=loss_fn,
        likelihood=problem.likelihood,
        batches=index_batches(x_train, y_train, settings.batch_size, seed),
        evaluate=evaluate,
        metric=problem.metric,
        higher_is_better=problem.higher_is_better,
        target=problem.target,
        steps=problem.steps,
        eval_every=problem.eval_every,
        batch_size=problem.batch_size,
        train_loss=train_loss,
        paper=problem.paper,
    )
