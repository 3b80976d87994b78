"""One cell on the jax backend: the twin of ``torch_trainer.TorchTrainer`` (see there).

The training step (gather the batch, the twin's ``update`` with the batch's loss as
``value_fn``, ``optax.apply_updates``) is one function, compiled ahead of time when the trainer
is built: ``compile_s`` is that compilation, kept out of the step time. Each step blocks until
its results are ready, so the harness's clock charges it its own work. Oracle counts come from
the twin's state, where the shared ``optimizers/jax/objective.py`` accumulates them.

XLA's CPU client runs each program on an intra-op pool with one thread per core the process
may use, and no flag or option of jax 0.10 sizes it (``intra_op_parallelism_threads`` in
``XLA_FLAGS`` is ignored: a PINN cell with ``threads: 1`` kept two cores busy, 1.84 s of CPU
per second). :func:`start_jax` therefore starts the client while the process may use only
``threads`` cores, then gives every thread back the cores it had, so the pool has ``threads``
threads and the OS still places the cell on any core. The LAPACK behind jax's factorisations
(scipy's OpenBLAS) is capped by ``OPENBLAS_NUM_THREADS``: left to its default, a 3000 x 3000
Cholesky took 3.6 s instead of 0.09 s. Both take effect when jax first starts in a process; a
process that already runs jax keeps its pool.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import Any

from hessbench.optimizers.torch.objective import Infeasible
from hessbench.tasks.registry import TASKS

from .config import Cell
from .measure import peak_memory_bytes, reset_peak_memory


def start_jax(threads: int):
    """Import jax and start its CPU client with an intra-op pool of ``threads`` threads."""
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None and threads < len(allowed):
        os.sched_setaffinity(0, sorted(allowed)[:threads])
    try:
        import jax

        jax.devices()  # creates the clients, and with the CPU one its pool
    finally:
        if allowed is not None:
            for tid in os.listdir("/proc/self/task"):  # the pool's threads inherited the cap
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), allowed)
    return jax


class JaxTrainer:
    def __init__(self, cell: Cell, settings, device):
        if cell.device == "cpu":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        jax = start_jax(cell.threads)
        import optax

        from hessbench.optimizers.jax import registry
        from hessbench.tasks.jax.registry import JAX_TASKS

        self.jax = jax
        if cell.device == "cuda" and jax.default_backend() != "gpu":
            raise RuntimeError("device 'cuda' requested but jax sees no GPU")
        jax.config.update("jax_enable_x64", settings.dtype == "float64")
        why = TASKS[cell.task_module].infeasible(cell.impl, settings)
        if why:
            raise Infeasible(why)
        self.device = device
        self.problem = problem = JAX_TASKS[cell.task_module].build(settings, cell.seed)
        self.optimizer = registry.build(cell.impl, cell.hyperparameters, cell.seed)
        self.params = problem.params
        self.n_params = sum(leaf.size for leaf in jax.tree.leaves(self.params))
        self.state = self.optimizer.init(self.params)
        self._lr = cell.hyperparameters.get("lr", _default(registry.factory(cell.impl), "lr"))

        def train_step(params, state, batch):
            inputs, targets = batch

            def value_fn(p):
                return problem.loss_fn(problem.apply(p, inputs), targets)

            updates, state = self.optimizer.update(
                None,
                state,
                params,
                value_fn=value_fn,
                apply_fn=problem.apply,
                loss_fn=problem.loss_fn,
                batch=batch,
            )
            return optax.apply_updates(params, updates), state

        first = next(problem.batches)
        self.batches = itertools.chain([first], problem.batches)
        start = time.perf_counter()
        lowered = jax.jit(train_step).lower(self.params, self.state, first)
        self._step = lowered.compile()
        self.compile_s = time.perf_counter() - start

    def step(self) -> dict[str, Any]:
        self.params, self.state = self._step(self.params, self.state, next(self.batches))
        self.jax.block_until_ready((self.params, self.state))
        return self.state.info

    def evaluate(self, with_test: bool) -> dict[str, float]:
        metrics = self.problem.evaluate(self.params)
        if with_test and self.problem.test is not None:
            metrics.update(self.problem.test(self.params))
        return metrics

    def train_loss(self) -> float | None:
        fn = self.problem.train_loss
        return fn(self.params) if fn is not None else None

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.state.counts._asdict().items()}

    @property
    def lr(self) -> float | None:
        return self._lr

    def state_bytes(self) -> int:
        """The twin's state, less the counts and the step record (the torch twins keep those
        outside their state)."""
        kept = self.state._replace(counts=None, info=None)
        return int(sum(leaf.nbytes for leaf in self.jax.tree.leaves(kept)))

    def peak_memory(self) -> int:
        if self.jax.default_backend() == "cpu":
            return peak_memory_bytes(self.device)
        stats = self.jax.devices()[0].memory_stats() or {}
        return int(stats.get("peak_bytes_in_use", 0))

    def reset_peak_memory(self) -> None:
        # XLA's GPU allocator keeps its peak from the start: only the CPU's resets
        reset_peak_memory(self.device)

    def provenance(self) -> dict[str, Any]:
        device = self.jax.devices()[0]
        return {"device": str(device), "device_name": device.device_kind}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.jax.device_get(self.params),
            "state": self.jax.device_get(self.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        put = self.jax.device_put
        self.params, self.state = put(state["params"]), put(state["state"])

    def skip_batches(self, n: int) -> None:
        for _ in range(n):
            next(self.batches)


def _default(factory, name: str):
    import inspect

    parameter = inspect.signature(factory).parameters.get(name)
    return parameter.default if parameter is not None else None
