"""Timing with CUDA events (GPU) and peak-memory measurement.

Four figures per measured function ``fn`` (milliseconds):

**Device time** (:func:`time_runs`, the ``time_ms`` rows). One timed run is::

    state = setup()          # untimed (e.g. the forward pass whose backward is timed)
    flush_l2()               # untimed: *read* a buffer larger than L2 (no dirty lines left behind)
    synchronize()            # the flush and setup are done, nothing else is queued
    hold(S)                  # a spin kernel (torch.cuda._sleep) that keeps the stream busy for S ms
    start.record(); fn(state); end.record()
    ahead = not start.query()   # the hold still ran when fn was fully queued?

While the spin kernel runs, the host queues ``start``, every launch of ``fn`` and ``end``, so the
interval start..end is the device time of ``fn`` from its first kernel, launched with the host already
ahead (as in a training loop whose host outruns the device): no host work, no flush and no write-back
is inside it. ``S`` is :data:`HOLD_FACTOR` times the host time of one call measured in the warm-up
plus :data:`MIN_HOLD_MS`; a run whose ``start`` had already completed when ``fn`` returned (the host was not
ahead) is dropped and repeated with ``S`` doubled (at most :data:`MAX_HOLD_RETRIES` times; then the
error says so). The first call of ``fn`` (compilation, autotuning, cuDNN benchmarking) and
:data:`WARMUP_RUNS` more are warm-up. The number of recorded runs is chosen so that they take about
``budget_s`` of wall time, clamped to ``[min_reps, max_reps]``. Events are read after the last run.

**Host time** (:func:`host_runs`, ``host_ms``): calls back to back, no flush and no synchronisation
between them, the wall clock (``perf_counter``) around each call of ``fn`` (not around ``setup``):
what the host spends launching one call. A provider whose host time exceeds its device time is
host-bound in a training loop.

**CUDA-graph replay** (:func:`graph_runs`, ``graph_ms``): ``fn(setup())`` captured once in a
``torch.cuda.CUDAGraph``, each replay timed like the device time (flush, sync, hold, events). A
capture that fails raises :class:`NotCapturable` with the reason (recorded as a skipped row).

**Throughput** (:func:`throughput_runs`, the training step): calls back to back with an event between
consecutive calls and no synchronisation: each interval is one call's share of the end-to-end time in a
steady loop, host or device, whichever is slower.

Smoke mode (CPU, CI) runs ``fn`` exactly once, timed with ``time.perf_counter``: those numbers only
prove that the wiring works and are never reported as measurements.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

TIMING_METHOD = "device-time-held"  # recorded in every result file's environment (see the module doc)
FLUSH_BYTES = 256 << 20  # read per flush: larger than any current GPU's L2 (H100/H200: 50/60 MB)
WARMUP_RUNS = 3
MIN_HOLD_MS = 0.05
HOLD_FACTOR = 1.5
MAX_HOLD_RETRIES = 6
CALIBRATION_CYCLES = 10_000_000

_flush_buffers: dict[torch.device, torch.Tensor] = {}
_cycles_per_ms: dict[torch.device, float] = {}


class NotCapturable(RuntimeError):
    """``fn`` cannot be captured in a CUDA graph (the message says why)."""


def flush_l2(device: torch.device) -> None:
    """Evict L2 by *reading* a :data:`FLUSH_BYTES` buffer on ``device`` (filled once, when allocated).

    A read leaves only clean lines in L2, so the next timed kernel pays no write-back of the flush
    (a ``fill_`` of the buffer would leave up to an L2's worth of dirty lines behind).
    """
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = _flush_buffers[device] = torch.ones(FLUSH_BYTES // 4, dtype=torch.float32, device=device)
        _sync(device)
    buf.sum()


def release_flush_buffers() -> None:
    """Free the flush buffers (256 MiB per device), e.g. before measuring a total peak memory."""
    _flush_buffers.clear()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _event() -> Any:
    return torch.cuda.Event(enable_timing=True)


def sleep_cycles_per_ms(device: torch.device) -> float:
    """Clock cycles of ``torch.cuda._sleep`` per millisecond on ``device`` (measured once, cached)."""
    rate = _cycles_per_ms.get(device)
    if rate is None:
        _sync(device)
        start, end = _event(), _event()
        start.record()
        torch.cuda._sleep(CALIBRATION_CYCLES)
        end.record()
        _sync(device)
        rate = _cycles_per_ms[device] = CALIBRATION_CYCLES / max(start.elapsed_time(end), 1e-6)
    return rate


def hold_device(device: torch.device, ms: float) -> None:
    """Queue a spin kernel that keeps the current stream busy for about ``ms`` milliseconds."""
    torch.cuda._sleep(max(1, int(ms * sleep_cycles_per_ms(device))))


def _smoke_run(fn, prepare, device) -> list[float]:
    state = prepare()
    _sync(device)
    t0 = time.perf_counter()
    fn(state)
    _sync(device)
    return [(time.perf_counter() - t0) * 1e3]


def _reps(wall_per_run_s: float, budget_s: float, min_reps: int, max_reps: int) -> int:
    return int(min(max_reps, max(min_reps, budget_s / max(wall_per_run_s, 1e-6))))


def _timed_device_run(launch: Callable[[], Any], device: torch.device, flush: bool, hold_ms: float):
    """flush, sync, hold, events around ``launch()``; returns ``(start, end, host_was_ahead)``."""
    if flush:
        flush_l2(device)
    _sync(device)
    hold_device(device, hold_ms)
    start, end = _event(), _event()
    start.record()
    launch()
    end.record()
    return start, end, not start.query()


def _device_times(launch_for_run: Callable[[], Callable[[], Any]], device: torch.device, flush: bool,
                  host_ms: float, reps: int) -> list[float]:
    """``reps`` device-time samples of the launches ``launch_for_run()`` returns (see module doc)."""
    hold_ms = HOLD_FACTOR * host_ms + MIN_HOLD_MS
    events, retries = [], 0
    while len(events) < reps:
        launch = launch_for_run()
        start, end, ahead = _timed_device_run(launch, device, flush, hold_ms)
        del launch
        if ahead:
            events.append((start, end))
            continue
        retries += 1
        if retries > MAX_HOLD_RETRIES:
            raise RuntimeError(f"the host never got ahead of the device: a {hold_ms:.3g} ms hold kernel ended "
                               "before the timed call was queued")
        hold_ms *= 2
    _sync(device)
    return [start.elapsed_time(end) for start, end in events]


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
    """Device time of ``fn(setup())`` in milliseconds, one sample per recorded run (see module doc).

    ``setup`` (default: ``None`` is passed to ``fn``), the L2 flush and the host's launch work are
    excluded. On CPU (smoke runs only) a single run is timed with ``perf_counter``.
    """
    prepare = setup or (lambda: None)
    if smoke or device.type != "cuda":
        return _smoke_run(fn, prepare, device)

    fn(prepare())  # first call: compilation / autotuning
    _sync(device)
    host_s, t_all = 0.0, time.perf_counter()
    for _ in range(WARMUP_RUNS):
        state = prepare()
        if flush:
            flush_l2(device)
        t0 = time.perf_counter()
        fn(state)
        host_s += time.perf_counter() - t0
        del state
    _sync(device)
    wall_per_run = (time.perf_counter() - t_all) / WARMUP_RUNS
    reps = _reps(wall_per_run, budget_s, min_reps, max_reps)

    def launch_for_run():
        state = prepare()
        return lambda: fn(state)

    return _device_times(launch_for_run, device, flush, host_s / WARMUP_RUNS * 1e3, reps)


def host_runs(fn: Callable[[Any], Any], *, device: torch.device, smoke: bool, setup: Callable[[], Any] | None = None,
              reps: int = 20, budget_s: float | None = None, min_reps: int = 5) -> list[float]:
    """Host wall time per call of ``fn`` in milliseconds, calls back to back without flush or
    synchronisation (``setup`` excluded); the device is synchronised once after the last call.
    With ``budget_s``, at most ``reps`` and at least ``min_reps`` calls that fit in that budget."""
    prepare = setup or (lambda: None)
    if smoke or device.type != "cuda":
        reps = 1
    state = prepare()
    t0 = time.perf_counter()
    fn(state)
    first = time.perf_counter() - t0
    del state
    _sync(device)
    if budget_s is not None and reps > 1:
        reps = _reps(first, budget_s, min(min_reps, reps), reps)
    samples = []
    for _ in range(reps):
        state = prepare()
        t0 = time.perf_counter()
        fn(state)
        samples.append((time.perf_counter() - t0) * 1e3)
        del state
    _sync(device)
    return samples


def graph_runs(fn: Callable[[Any], Any], *, device: torch.device, smoke: bool, setup: Callable[[], Any] | None = None,
               flush: bool = True, budget_s: float = 0.1, min_reps: int = 10, max_reps: int = 100) -> list[float]:
    """Device time of one replay of ``fn(setup())`` captured in a CUDA graph (milliseconds per replay).

    Raises :class:`NotCapturable` when there is no CUDA device or the capture fails.
    """
    if smoke or device.type != "cuda":
        raise NotCapturable("CUDA graphs need a CUDA device")
    state = (setup or (lambda: None))()
    _sync(device)
    graph = torch.cuda.CUDAGraph()
    try:
        # warm-up on a side stream, as torch.cuda.graphs recommends before capturing autograd
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn(state)
        torch.cuda.current_stream(device).wait_stream(side)
        _sync(device)
        with torch.cuda.graph(graph):
            out = fn(state)
    except Exception as exc:
        _sync(device)
        raise NotCapturable(f"capture failed: {type(exc).__name__}: {exc}"[:500]) from None
    _sync(device)
    t0 = time.perf_counter()
    graph.replay()
    host_ms = (time.perf_counter() - t0) * 1e3
    _sync(device)
    wall = time.perf_counter() - t0
    times = _device_times(lambda: graph.replay, device, flush, host_ms, _reps(wall, budget_s, min_reps, max_reps))
    del out, graph, state
    return times


def throughput_runs(fn: Callable[[Any], Any], *, device: torch.device, smoke: bool, budget_s: float = 2.0,
                    min_reps: int = 5, max_reps: int = 30) -> list[float]:
    """End-to-end milliseconds per call of ``fn(None)`` in a steady back-to-back loop (see module doc)."""
    if smoke or device.type != "cuda":
        return _smoke_run(fn, lambda: None, device)
    fn(None)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(WARMUP_RUNS):
        fn(None)
    _sync(device)
    reps = _reps((time.perf_counter() - t0) / WARMUP_RUNS, budget_s, min_reps, max_reps)
    marks = [_event()]
    marks[0].record()
    for _ in range(reps):
        fn(None)
        marks.append(_event())
        marks[-1].record()
    _sync(device)
    return [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]


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
