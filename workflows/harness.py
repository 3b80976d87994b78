"""Run one cell ``(scale, task, optimizer, backend, seed)``, measure it, write its results.

The training step (next batch, the objective, ``optimizer.step``) is the only region that counts
as wall clock; evaluation and logging are timed apart, and the harness's own bookkeeping is the
remainder of the loop's elapsed time (reported as ``harness_overhead``). Oracle calls come from
the objective's counters, never from the optimizer.
"""

from __future__ import annotations

import gc
import itertools
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from hessbench.optimizers.torch.objective import Infeasible

from . import checkpoint
from .config import Cell, task_settings
from .diagnostics import Diagnostics
from .diagnostics import Settings as DiagnosticSettings
from .measure import Clock
from .results import provenance, write_json, write_parquet
from .torch_trainer import TorchTrainer
from .tracking import Tracker

MIN_ROWS = 200


class Diverged(RuntimeError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if getattr(value, "shape", None) == ():  # a jax or numpy scalar
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class Run:
    """The state of one cell while it trains."""

    def __init__(self, cell: Cell, out_dir: Path, results_root: Path, track: bool = True):
        self.cell, self.out_dir, self.results_root = cell, out_dir, results_root
        self.rows: list[dict[str, Any]] = []
        self.status, self.reason = "ok", None
        self.track = track
        self.tracker: Tracker | None = None
        self.trainer = None
        self.problem = None
        self.loop_s = 0.0
        self.bar = None
        self.train_loss_full: float | None = None
        self.diagnostics: Diagnostics | None = None
        self._peak, self._peak_read_at = 0, -math.inf
        self._peak_floor = 0  # the run's peak before the last diagnostic point
        self.resumed_at: list[int] = []  # the steps a killed run resumed from

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> None:
        cell = self.cell
        self.device = pick_device(cell.device) if cell.backend == "torch" else torch.device("cpu")
        settings = task_settings(cell.task_module, cell.settings, f"cell {cell.path}")
        if cell.backend == "jax":
            from .jax_trainer import JaxTrainer as Trainer  # imports jax: only its cells pay
        else:
            Trainer = TorchTrainer
        trainer = self.trainer = Trainer(cell, settings, self.device)
        problem = self.problem = trainer.problem
        self.n_params = trainer.n_params
        if self.track:
            self.tracker = Tracker(
                project=cell.wandb_project,
                name=cell.path.replace("/", "-"),
                group=f"{cell.scale}/{cell.task}",
                config=cell.__dict__,
                cell_dir=self.out_dir,
                results_root=self.results_root,
            )

        clock = Clock(self.device)
        self.clock = clock
        if cell.diagnostics:
            settings = DiagnosticSettings(**cell.diagnostics)
            self.diagnostics = Diagnostics(
                settings, problem, cell.seed, problem.steps,
                getattr(trainer.optimizer, "switches", ()),
            )  # fmt: skip
        done = 0
        if state := checkpoint.load(self):
            done = checkpoint.restore(self, state)
            self.resumed_at = [*state.get("resumed_at", []), done]
            if self.tracker:  # a new W&B run, holding the rows of the killed one too
                for row in self.rows:
                    self.tracker.add(row)
        self._reset_peak()
        loop_start, loop_before = time.perf_counter(), self.loop_s
        if not done:
            with clock.measure("eval"):
                self._log(0, None, None, self._evaluate(with_test=True))
            if self.diagnostics:
                self._diagnose(0)
        last_save = time.perf_counter()
        # At most log_every steps between rows, and at least MIN_ROWS rows for short runs (an
        # L-BFGS cell of 150 slow steps still gets a curve).
        log_every = max(1, min(cell.log_every, problem.steps // MIN_ROWS))
        bar = self.bar = tqdm(
            total=problem.steps, initial=done, file=sys.stderr, mininterval=2.0, desc=cell.path
        )
        try:
            for step in range(done + 1, problem.steps + 1):
                start = clock.start()  # the measured training step: batch, objective, update
                record = trainer.step()
                clock.stop("step", start)
                loss = _scalar(record.get("loss"))
                if loss is None or not math.isfinite(loss):
                    self._log(step, loss, record, None)
                    raise Diverged(f"non-finite training loss ({loss}) at step {step}")
                if step % problem.eval_every == 0 or step == problem.steps:
                    with clock.measure("eval"):
                        metrics = self._evaluate(with_test=step == problem.steps)
                    self._log(step, loss, record, metrics)
                    with clock.measure("tracking"):
                        if self.tracker:
                            self.tracker.flush()
                elif step % log_every == 0:
                    self._log(step, loss, record, None)
                if self.diagnostics and self.diagnostics.due(step):
                    self._diagnose(step)
                due = time.perf_counter() - last_save >= 60 * cell.checkpoint_minutes
                if due and step < problem.steps:
                    self.loop_s = loop_before + time.perf_counter() - loop_start
                    with clock.measure("checkpoint"):
                        checkpoint.save(self, step)
                    last_save = time.perf_counter()
            if problem.train_loss is not None:
                with clock.measure("eval"):
                    self.train_loss_full = trainer.train_loss()
        finally:
            bar.close()
            self.loop_s = loop_before + time.perf_counter() - loop_start

    def _evaluate(self, with_test: bool) -> dict[str, float]:
        """The validation metrics; at the first and last rows also the test set's, if any."""
        return self.trainer.evaluate(with_test)

    def _diagnose(self, step: int) -> None:
        floor = self._read_peak()
        with self.clock.measure("diagnostics"):
            self.diagnostics.measure(self.problem.model, self.trainer.optimizer, step)
        # the float64 copy and Lanczos vectors are not the run's memory: restart the peak
        self._reset_peak()
        self._peak_floor = max(self._peak_floor, floor)

    def _log(
        self, step: int, loss: float | None, record: dict | None, metrics: dict | None
    ) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)  # on logged rows only: off the per-step path
        row = {
            "step": step,
            "wall_s": self.clock.totals["step"],
            "train_loss": loss,
            "val_loss": metrics["val_loss"] if metrics else None,
            "val_metric": metrics["val_metric"] if metrics else None,
            **{k: v for k, v in (metrics or {}).items() if k.startswith("test_")},
            **self.trainer.counts(),
            "peak_mem_bytes": self._peak_memory(fresh=metrics is not None),
            "lr": self.trainer.lr,
        }
        if tokens := getattr(self.problem, "tokens_per_step", None):
            row["tokens"] = step * tokens
        for key, value in (record or {}).items():
            if key != "loss" and (number := _scalar(value)) is not None:
                row[key] = number
        self.rows.append(row)
        if self.tracker:
            self.tracker.add(row)

    def _peak_memory(self, fresh: bool) -> int:
        """The peak so far. On CPU reading it costs tens of microseconds (a /proc file), so
        between evaluations it is re-read at most once a second; the peak only grows, so a
        row may under-report by what that second added, never over-report."""
        now = time.perf_counter()
        if fresh or self.device.type == "cuda" or now - self._peak_read_at > 1.0:
            self._peak = max(self._peak_floor, self._read_peak())
            self._peak_read_at = now
        return self._peak

    def _read_peak(self) -> int:
        return self.trainer.peak_memory()

    def _reset_peak(self) -> None:
        self.trainer.reset_peak_memory()

    # -- results -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        frame = pd.DataFrame(self.rows)
        problem, cell = self.problem, self.cell
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "scale": cell.scale,
            "task": cell.task,
            "optimizer": cell.optimizer,
            "impl": cell.impl,
            "backend": cell.backend,
            "seed": cell.seed,
            "config": cell.__dict__,
        }
        phases = cell.hyperparameters.get("phases") if cell.impl == "chain" else None
        out["schedule"] = "+".join(p["impl"] for p in phases) if phases else cell.impl
        if phases:
            out["phase_names"] = [p["name"] for p in phases]
            out["phase_switches"] = list(itertools.accumulate(p["steps"] for p in phases[:-1]))
        if problem is not None and problem.paper:
            out["paper"] = problem.paper.get(out["schedule"])
        if problem is None or frame.empty:
            return out
        evals = frame.dropna(subset=["val_metric"])
        if "test_metric" in frame:
            tests = frame.dropna(subset=["test_metric"])
            out["initial_test_metric"] = float(tests["test_metric"].iloc[0])
            out["final_test_metric"] = (
                float(tests["test_metric"].iloc[-1]) if tests["step"].iloc[-1] > 0 else None
            )
        sign = 1 if problem.higher_is_better else -1
        reached = evals[sign * evals["val_metric"] >= sign * problem.target]
        first = reached.iloc[0] if len(reached) else None
        totals = self.clock.totals
        outside = (
            self.loop_s - totals["step"] - totals["eval"] - totals["tracking"]
            - totals["diagnostics"] - totals["checkpoint"]
        )  # fmt: skip
        out.update(
            metric=problem.metric,
            higher_is_better=problem.higher_is_better,
            target=problem.target,
            n_params=self.n_params,
            steps_done=int(frame["step"].max()),
            final_metric=float(evals["val_metric"].iloc[-1]) if len(evals) else None,
            best_metric=float(sign * (sign * evals["val_metric"]).max()) if len(evals) else None,
            final_val_loss=float(evals["val_loss"].iloc[-1]) if len(evals) else None,
            final_train_loss=_scalar(frame["train_loss"].dropna().iloc[-1])
            if frame["train_loss"].notna().any()
            else None,
            train_loss_full=self.train_loss_full,
            steps_to_target=int(first["step"]) if first is not None else None,
            time_to_target_s=float(first["wall_s"]) if first is not None else None,
            forward_to_target=int(first["forward"]) if first is not None else None,
            # forward passes differ in size across batch sizes: examples are comparable
            examples_to_target=int(first["forward"]) * problem.batch_size
            if first is not None
            else None,
            batch_size=problem.batch_size,
            wall_s=totals["step"],
            eval_s=totals["eval"],
            loop_s=self.loop_s,
            tracking_s=totals["tracking"],
            diagnostics_s=totals["diagnostics"],
            checkpoint_s=totals["checkpoint"],
            resumed_at=self.resumed_at,
            timed_steps=len(self.clock.samples["step"]),
            harness_overhead=outside / self.loop_s if self.loop_s > 0 else None,
            mean_step_s=self.clock.mean("step"),
            median_step_s=self.clock.median("step"),
            peak_mem_bytes=int(frame["peak_mem_bytes"].max()),
            optimizer_state_bytes=self.trainer.state_bytes(),
            compile_s=self.trainer.compile_s,
            tokens_per_s=tokens * int(frame["step"].max()) / totals["step"]
            if (tokens := getattr(problem, "tokens_per_step", None)) and totals["step"] > 0
            else None,
            **{f"total_{k}": v for k, v in self.trainer.counts().items()},
        )
        return out


def _out_of_memory(err: Exception) -> bool:
    # torch's CPU allocator raises a plain RuntimeError when malloc fails; XLA's allocators a
    # JaxRuntimeError (a RuntimeError) with the status RESOURCE_EXHAUSTED
    return isinstance(err, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(err, RuntimeError)
        and ("can't allocate memory" in str(err) or "RESOURCE_EXHAUSTED" in str(err))
    )


def run_cell(
    cell: Cell, out_dir: Path, results_root: Path | None = None, track: bool = True
) -> dict:
    """Train one cell and write ``metrics.parquet`` then ``summary.json`` (the commit marker)
    into ``out_dir``. A failure is recorded in the summary, never raised."""
    out_dir = Path(out_dir)
    results_root = Path(results_root) if results_root else out_dir
    for stale in out_dir.glob(".*.tmp"):  # what a killed writer left: never a result
        stale.unlink()
    run = Run(cell, out_dir, results_root, track=track)
    try:
        run.train()
    except Infeasible as err:
        run.status, run.reason = "infeasible", str(err)
    except Diverged as err:
        run.status, run.reason = "diverged", str(err)
    except Exception as err:  # any other failure ends this cell only
        traceback.print_exc()
        run.status = "oom" if _out_of_memory(err) else "error"
        run.reason = f"{type(err).__name__}: {err}"
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # room to write the results
    device = getattr(run, "device", torch.device("cpu"))
    summary = run.summary()
    summary["provenance"] = provenance(device, cell.seed)
    if run.trainer:  # the device a jax cell ran on is jax's
        summary["provenance"].update(run.trainer.provenance())
    diagnostic_rows = run.diagnostics.rows if run.diagnostics else []
    if run.status == "oom":  # free what filled the memory, so the results can be written
        run.trainer = run.problem = run.diagnostics = None
        gc.collect()
    if run.tracker:
        summary["wandb_run_dir"] = run.tracker.run_dir
        run.tracker.finish({k: v for k, v in summary.items() if k != "config"})
    write_parquet(out_dir / "metrics.parquet", _metrics_frame(run.rows))
    # always written (empty when off), so it can be a declared output of every cell
    diagnostics = pd.DataFrame(diagnostic_rows, columns=DIAGNOSTIC_COLUMNS)
    write_parquet(out_dir / "diagnostics.parquet", diagnostics)
    write_json(out_dir / "summary.json", summary)
    checkpoint.remove(out_dir)  # the summary is the result now
    print(
        f"{cell.path}: {summary['status']}"
        + (f" ({summary['reason']})" if summary["reason"] else ""),
        file=sys.stderr,
    )
    return summary


DIAGNOSTIC_COLUMNS = [
    "step", "kind", "top_eigenvalues", "top_residuals", "lambda_min", "trace", "trace_se",
    "nodes", "weights", "hvps", "seconds", "dtype", "batch_size",
]  # fmt: skip

METRIC_COLUMNS = [
    "step",
    "wall_s",
    "train_loss",
    "val_loss",
    "val_metric",
    "forward",
    "backward",
    "hvp",
    "ggnvp",
    "peak_mem_bytes",
    "lr",
]


def _metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in METRIC_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype="float64")
    float_cols = [
        c
        for c in frame.columns
        if c not in ("step", "forward", "backward", "hvp", "ggnvp", "peak_mem_bytes")
    ]
    frame[float_cols] = frame[float_cols].astype("float64")
    return frame
