"""A cell's checkpoint: what a killed cell needs to resume and end with the metrics of an
uninterrupted run.

It holds the trainer's state (on torch the model, optimizer, learning-rate schedule and oracle
counters; on jax the parameters and the twin's state, its counts and RNG key included), every
RNG the run draws from outside those (torch's global generators, numpy's and Python's), the
clock's per-region totals and samples, the rows logged so far and the diagnostics rows.
The data stream is not pickled: every task's batches come from their own seeded generator, so
resuming draws and discards as many batches as the steps done. A checkpoint is written with the
same atomic rename as the results, so a kill mid-write leaves the previous one; it belongs to
one cell (its JSON is stored and compared) and is deleted once the summary is written.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .results import atomic_write_bytes, code_sha

FILE = "checkpoint.pt"


def _rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save(run, step: int) -> None:
    """Write ``run``'s state after ``step`` steps into its cell folder."""
    state = {
        "cell": run.cell.to_json(),
        "code_sha": code_sha(),
        "step": step,
        "trainer": run.trainer.state_dict(),
        "rng": _rng_states(),
        "clock": {"totals": dict(run.clock.totals), "samples": dict(run.clock.samples)},
        "rows": run.rows,
        "diagnostics": run.diagnostics.rows if run.diagnostics else [],
        "loop_s": run.loop_s,
        "peak": run._peak,
        "resumed_at": run.resumed_at,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(run.out_dir) / FILE, buffer.getvalue())


def load(run) -> dict[str, Any] | None:
    """The cell's last checkpoint, or None if there is none that belongs to this cell."""
    path = Path(run.out_dir) / FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=run.device, weights_only=False)
    except Exception as err:  # unreadable: the run starts over rather than fail
        print(f"{path}: unreadable checkpoint ({err}); starting from step 0", file=sys.stderr)
        return None
    # a run is one configuration and one version of the code from its first step to its last
    if state.get("cell") != run.cell.to_json():
        other = "configuration"
    elif state.get("code_sha") != code_sha():
        other = "version of the code"
    else:
        return state
    print(f"{path}: a checkpoint of another {other}; starting from step 0", file=sys.stderr)
    return None


def restore(run, state: dict[str, Any]) -> int:
    """Put ``state`` back into ``run`` (built afresh for the same cell) and return the number of
    steps done; the batches those steps used are drawn and dropped."""
    run.trainer.load_state_dict(state["trainer"])
    run.clock.totals.update(state["clock"]["totals"])
    run.clock.samples.update(state["clock"]["samples"])
    run.rows = list(state["rows"])
    if run.diagnostics:
        run.diagnostics.rows = list(state["diagnostics"])
    run.loop_s = state["loop_s"]
    run._peak_floor = max(run._peak_floor, state["peak"])
    run.trainer.skip_batches(state["step"])
    _set_rng_states(state["rng"])
    return state["step"]


def remove(out_dir: Path) -> None:
    (Path(out_dir) / FILE).unlink(missing_ok=True)
