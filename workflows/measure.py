"""Device-synced timing and memory: the one place hessbench measures time and bytes."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class Clock:
    """Accumulates seconds per named region; GPU work is synchronised at each region's edges
    so queued kernels are charged to the region that launched them."""

    def __init__(self, device: torch.device):
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def start(self) -> float:
        self._sync()
        return time.perf_counter()

    def stop(self, region: str, start: float) -> None:
        self._sync()
        elapsed = time.perf_counter() - start
        self.totals[region] += elapsed
        self.samples[region].append(elapsed)

    @contextmanager
    def measure(self, region: str) -> Iterator[None]:
        start = self.start()
        try:
            yield
        finally:
            self.stop(region, start)

    def mean(self, region: str) -> float | None:
        samples = self.samples.get(region)
        return statistics.fmean(samples) if samples else None

    def median(self, region: str) -> float | None:
        samples = self.samples.get(region)
        return statistics.median(samples) if samples else None


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak afresh, so set-up transients (e.g. decompressing a data set) don't count."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak counts from process start


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak bytes allocated by torch. CPU: the process's peak resident set size.

    On Linux the peak is VmHWM, the high-water mark ``reset_peak_memory`` resets.
    ``getrusage``'s ru_maxrss is not usable after a reset: it also keeps the peak of threads
    that have exited (seen when data loading ran in threads), so it can stay at the old peak.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def tensor_bytes(obj) -> int:
    """Bytes of every tensor reachable through dicts, lists and tuples (optimizer state)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    optimizers = getattr(optimizer, "phases", [optimizer])  # a chain holds every phase's state
    return sum(tensor_bytes(state) for opt in optimizers for state in opt.state.values())
