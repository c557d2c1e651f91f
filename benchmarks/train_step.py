"""Whole-model benchmark: one NVAE training step per preset and provider.

One step (the contract of ``nvae_fast.model``)::

    optimizer.zero_grad(set_to_none=True)
    out = net(x)                                   # under autocast for dtype bfloat16
    loss, metrics = nvae_loss(model, out, kl_coeff=1.0, reg_coeff=config.reg_lambda)
    loss.backward()                                # includes the spectral regulariser's power iteration
    optimizer.step()                               # Adamax, as nvae_fast.train.optim.build_optimizer

``x`` is a batch of random 8-bit images scaled to [0, 1] at the preset's per-GPU batch size
(:data:`benchmarks.model_shapes.TRAIN_BATCH`). Providers: ``torch``/``triton``/``cuda`` run the model
under that nvae_fast backend (the lean paths), ``reference`` under the ``reference`` backend (plain
PyTorch), ``compile`` is ``torch.compile(model)`` under the ``reference`` backend.

Metrics: ``time_ms`` per step, end to end in a steady loop (:func:`benchmarks.timing.throughput_runs`:
steps back to back, a CUDA event between consecutive steps, so host and device time both count, as in
training; no L2 flush: a step's working set is far larger than L2), ``images_per_s`` = batch / step
time, ``peak_mem_MiB`` = the peak of ``torch.cuda.max_memory_allocated`` during one step (parameters,
optimizer state and activations included), and ``max_batch``: the largest batch whose step fits in
:data:`MEMORY_CAP_BYTES` (80 GB, an H100's memory, so that the number holds on an H100 and an H200
alike), found by :func:`largest_batch` (doubling from the preset batch, then bisection to within
:data:`BATCH_RESOLUTION`). A probe fits when its step raises no out-of-memory error with the caching
allocator capped at 80 GB (``torch.cuda.set_per_process_memory_fraction``) and its
``max_memory_allocated`` stays within 80 GB. ``max_batch`` is not searched for ``compile`` (every probed batch size would
recompile the model) nor in smoke runs; an error other than out-of-memory during the search makes only
the ``max_batch`` row an ``error``.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable

import torch

import nvae_fast

from . import model_shapes, timing
from .results import make_row

KL_COEFF = 1.0
LR = 1e-3
MAX_BATCH_CAP = 4096
BATCH_RESOLUTION = 1 / 32
SMOKE_BATCH = 2
MIB = float(1 << 20)
MEMORY_CAP_BYTES = 80e9


def largest_batch(fits: Callable[[int], bool], start: int, cap: int = MAX_BATCH_CAP) -> int:
    """The largest ``b <= cap`` with ``fits(b)``, assuming ``fits`` is monotone (true up to some size).

    Doubles from ``start`` until a batch does not fit, then bisects until the bracket is narrower than
    ``max(1, lo * BATCH_RESOLUTION)``; returns 0 when not even batch 1 fits.
    """
    if start < 1:
        raise ValueError(f"largest_batch: start must be >= 1, got {start}")
    lo, hi = 0, None
    b = min(start, cap)
    while hi is None:
        if fits(b):
            lo = b
            if b == cap:
                return cap
            b = min(2 * b, cap)
        else:
            hi = b
    while hi - lo > max(1, int(lo * BATCH_RESOLUTION)):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_bytes: float):
    """Cap this process's CUDA caching allocator at ``cap_bytes`` (or the whole device, if smaller)."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


class StepRunner:
    """A preset's model, optimizer and step function for one provider and dtype (see module doc)."""

    def __init__(self, preset: str, provider: str, dtype: str, device: torch.device, smoke: bool):
        from nvae_fast.train.optim import build_optimizer

        self.api = model_shapes.model_api()
        self.model, self.cfg = model_shapes.build_model(preset, device)
        self.device = device
        self.backend = "reference" if provider in ("reference", "compile") else provider
        self.net = self.model
        if provider == "compile":
            torch._dynamo.reset()
            self.net = torch.compile(self.model, backend="eager" if smoke else "inductor")
        self.optimizer = build_optimizer(self.model, lr=LR)
        self.autocast = dtype == "bfloat16"

    def images(self, batch: int) -> torch.Tensor:
        c, s = self.cfg.image_channels, self.cfg.image_size
        return torch.randint(0, 256, (batch, c, s, s), device=self.device).float().div_(255)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One training step on ``x``; returns the loss (not synchronised)."""
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with nvae_fast.use_backend(self.backend):
            self.optimizer.zero_grad(set_to_none=True)
            with amp:
                out = self.net(x)
            loss, _ = self.api.nvae_loss(self.model, out, KL_COEFF, self.cfg.reg_lambda)
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def fits(self, batch: int) -> bool:
        """Whether one step at ``batch`` runs within :data:`MEMORY_CAP_BYTES` (see module doc)."""
        try:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step(self.images(batch))
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) <= MEMORY_CAP_BYTES
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as exc:  # cuBLAS/cuDNN report failed allocations as plain RuntimeErrors
            if "ALLOC_FAILED" in str(exc) or "out of memory" in str(exc).lower():
                return False
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()


def case_columns(preset: str, provider: str, dtype: str, batch: int) -> dict:
    return {
        "section": "model",
        "op": "train_step",
        "provider": provider,
        "mode": "step",
        "dtype": dtype,
        "layout": "nchw",
        "shape": f"{preset}-b{batch}",
        "size": batch,
        "shape_set": preset,
        "shape_source": f"nvae_fast.model preset {preset!r}",
    }


def unavailable(provider: str, smoke: bool) -> str | None:
    """Why ``provider`` cannot run the model here (``None`` if it can)."""
    try:
        model_shapes.model_api()
    except model_shapes.ModelUnavailable as exc:
        return str(exc)
    if provider == "compile" and smoke:
        return "smoke run: tracing the whole model with torch.compile takes minutes on a CPU; GPU runs measure it"
    if provider in ("torch", "triton", "cuda"):
        status = nvae_fast.backend_info()["backends"][provider]
        if not status["available"]:
            return f"nvae_fast backend {provider!r} unavailable: {status['reason']}"
    return None


def run_step_case(preset: str, provider: str, dtype: str, *, smoke: bool, device: torch.device, env: dict,
                  budget_s: float, max_batch: bool) -> list[dict]:
    """All rows of one training-step case; errors while running become ``error`` rows."""
    batch = SMOKE_BATCH if smoke else model_shapes.TRAIN_BATCH[preset]
    case = case_columns(preset, provider, dtype, batch)
    metrics = ("time_ms", "images_per_s", "peak_mem_MiB", "max_batch")
    reason = unavailable(provider, smoke)
    if reason:
        return [make_row(case, env, m, status="skipped", reason=reason) for m in metrics]
    timing.release_flush_buffers()  # the op suite's L2-flush buffer would count in this total peak memory
    runner = None
    try:
        runner = StepRunner(preset, provider, dtype, device, smoke)
        return _measure(runner, batch, case, provider, smoke=smoke, device=device, env=env, budget_s=budget_s,
                        max_batch=max_batch)
    except Exception as exc:
        return [make_row(case, env, m, status="error", reason=f"{type(exc).__name__}: {exc}"[:500]) for m in metrics]
    finally:
        del runner
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _measure(runner: StepRunner, batch, case, provider, *, smoke, device, env, budget_s, max_batch) -> list[dict]:
    x = runner.images(batch)
    ms = timing.throughput_runs(lambda _: runner.step(x), device=device, smoke=smoke, budget_s=max(budget_s, 2.0),
                                min_reps=5, max_reps=30)
    rows = [
        make_row(case, env, "time_ms", timing.percentiles(ms), n=len(ms)),
        make_row(case, env, "images_per_s", timing.percentiles([batch / (m * 1e-3) for m in ms]), n=len(ms)),
    ]
    peak = timing.peak_memory_bytes(lambda: runner.step(x), device, above_current=False)
    if peak is None:
        rows.append(make_row(case, env, "peak_mem_MiB", status="skipped", reason="peak memory is measured on CUDA only"))
    else:
        rows.append(make_row(case, env, "peak_mem_MiB", peak / MIB, n=1))
    del x
    if device.type != "cuda":
        why = "the largest-batch search runs on CUDA only"
    elif smoke:
        why = "smoke run: no largest-batch search"
    elif provider == "compile":
        why = "not searched for torch.compile: every probed batch size would recompile the model"
    elif not max_batch:
        why = "disabled with --bench-no-max-batch"
    else:
        why = ""
    if why:
        rows.append(make_row(case, env, "max_batch", status="skipped", reason=why))
    else:
        try:
            with memory_cap(device, MEMORY_CAP_BYTES):
                found = largest_batch(runner.fits, batch)
            rows.append(make_row(case, env, "max_batch", found, n=1))
        except Exception as exc:  # not an out-of-memory error: the rows measured above are kept
            rows.append(make_row(case, env, "max_batch", status="error", reason=f"{type(exc).__name__}: {exc}"[:500]))
    return rows
