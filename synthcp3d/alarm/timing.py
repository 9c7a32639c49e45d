"""Per-stage wall time (and optionally peak memory) of one alarm case, for reports and the benchmark."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["StageTimer"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_rss_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    # Linux: writing "5" to clear_refs resets VmHWM (the peak resident set) to the current RSS, which gives a
    # per-stage peak without a sampling thread. Elsewhere peaks are not measured.
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class StageTimer:
    """Context manager factory: ``with timer("segment"): ...`` records seconds (and peak memory) per stage.

    Args:
        device: the torch device the stages run on (CUDA work is synchronised before reading the clock).
        memory: also record the peak resident memory of the process (Linux) and, on CUDA, the peak allocated GPU
            memory, per stage, in MiB. Off by default: resetting the peak costs a little.
    """

    def __init__(self, device: torch.device | str | None = None, memory: bool = False) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.memory = memory
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.peak_gpu_mb: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        rss_ok = self.memory and _reset_peak_rss()
        if self.memory and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if rss_ok:
                peak = _peak_rss_mb()
                if peak is not None:
                    self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), peak)
            if self.memory and self.device.type == "cuda":
                gpu = torch.cuda.max_memory_allocated(self.device) / 2**20
                self.peak_gpu_mb[name] = max(self.peak_gpu_mb.get(name, 0.0), gpu)
