"""Timing with CUDA events (GPU) and peak-memory measurement.

One timed run is::

    state = setup()          # untimed (e.g. the forward pass whose backward is timed)
    flush_l2()               # untimed: write a 256 MiB buffer so no input is still in L2
    start.record(); fn(state); end.record()

The first call of ``fn`` (compilation, autotuning, cuDNN heuristics) and a few more are warm-up and are
not recorded. The number of recorded runs is chosen so that they take about ``budget_s`` of wall time,
clamped to ``[min_reps, max_reps]``. Events are read after one synchronisation at the end, so runs are
queued back to back and the host does not stall the device between them. Results are milliseconds.

Smoke mode (CPU, CI) runs ``fn`` exactly once, timed with ``time.perf_counter``: those numbers only
prove that the wiring works and are never reported as measurements.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

FLUSH_BYTES = 256 << 20
WARMUP_RUNS = 3

_flush_buffers: dict[torch.device, torch.Tensor] = {}


def flush_l2(device: torch.device) -> None:
    """Overwrite a 256 MiB buffer on ``device`` (larger than any current GPU's L2 cache)."""
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    buf.fill_(1)


def release_flush_buffers() -> None:
    """Free the flush buffers (256 MiB per device), e.g. before measuring a total peak memory."""
    _flush_buffers.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fn: Callable[[Any], Any],
    *,
    device: torch.device,
    smoke: bool,
    setup: Callable[[], Any] | None = None,
    flush: bool = True,
    budget_s: float = 0.1,
    min_reps: int = 10,
    max_reps: int = 100,
) -> list[float]:
    """Run ``fn(setup())`` repeatedly; return the recorded run times in milliseconds.

    ``setup`` (default: ``None`` is passed to ``fn``) and the L2 flush are excluded from the times.
    On CPU (smoke runs only) a single run is timed with ``perf_counter``.
    """
    prepare = setup or (lambda: None)
    if smoke or device.type != "cuda":
        state = prepare()
        _sync(device)
        t0 = time.perf_counter()
        fn(state)
        _sync(device)
        return [(time.perf_counter() - t0) * 1e3]

    fn(prepare())  # first call: compilation / autotuning
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(WARMUP_RUNS):
        state = prepare()
        if flush:
            flush_l2(device)
        fn(state)
    _sync(device)
    wall_per_run = (time.perf_counter() - t0) / WARMUP_RUNS
    reps = int(min(max_reps, max(min_reps, budget_s / max(wall_per_run, 1e-6))))

    events = []
    for _ in range(reps):
        state = prepare()
        if flush:
            flush_l2(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(state)
        end.record()
        events.append((start, end))
        del state
    _sync(device)
    return [start.elapsed_time(end) for start, end in events]


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """(p20, p50, p80) with linear interpolation between order statistics."""
    p20, p50, p80 = np.percentile(np.asarray(samples, dtype=np.float64), [20, 50, 80])
    return float(p20), float(p50), float(p80)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device, above_current: bool = True) -> int | None:
    """Peak bytes allocated while ``fn()`` runs (CUDA only, else ``None``): above what was allocated
    before it when ``above_current``, else in total.

    Whatever ``fn`` returns (e.g. gradients) is still alive at the peak, so it is included.
    """
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if above_current else 0
    result = fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return int(peak)
