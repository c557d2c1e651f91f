"""One op case (op, shape, provider, dtype) -> result rows.

Steps:

1. Skip (one ``skipped`` row per mode, with the reason) if the provider cannot run here.
2. Correctness: the provider's forward output and gradients (on fresh state, same upstream gradient)
   are compared with the reference's computed in float64 from the same inputs (a bfloat16 reference
   is no yardstick: near a ReLU kink its rounding flips hidden units of the SE gate, 0.1 to 0.3 of
   max|dw1| off the float64 result, while the fused paths stay within 0.004 of it); ``max_rel_err`` is
   the largest ``max|out - ref| / max|ref|`` over the output and every gradient, above
   :data:`TOLERANCE` the case is an ``error``. A fused backend that fell back to ``torch`` for these
   inputs is ``skipped`` with the fallback reason.
3. Timing (:func:`benchmarks.timing.time_runs`), gradients by ``torch.autograd.grad`` w.r.t. the
   differentiable inputs with a fixed random ``dy`` (no accumulation into ``.grad``):

   ``fwd``      the forward with autograd recording (inputs require grad), as in training
   ``bwd``      the backward only; each run's forward is done in the untimed setup
   ``fwd+bwd``  both

   Each mode gives ``time_ms`` (device time, host ahead), ``host_ms`` (host wall time per call, back
   to back), ``graph_ms`` (CUDA-graph replay; ``skipped`` with the reason where the provider cannot
   be captured, and for ``bwd``, whose forward runs outside the timed function) and, with the minimum
   traffic of :mod:`benchmarks.traffic`, ``bandwidth_GBps``, ``bandwidth_fraction`` (of the large-copy
   bandwidth) and ``bandwidth_fraction_same_size`` (of a copy of the same bytes, measured in this
   session: ``copy_same_size_GBps``), computed per run, then summarised by percentiles.
4. Memory: ``peak_mem_MiB`` of one fwd+bwd above the allocated inputs (CUDA only) and ``saved_MiB``,
   the tensors autograd keeps for backward (:func:`nvae_fast.memory.saved_tensor_bytes`).
"""

from __future__ import annotations

import gc

import torch

from nvae_fast.memory import saved_tensor_bytes

from . import env as bench_env
from . import inputs as I
from . import providers as P
from . import timing, traffic
from .results import make_row
from .shapes import OpShape

# Loose on purpose: the check catches wrong kernels, not rounding (TF32 convolutions, bfloat16 reductions).
TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}
MIB = float(1 << 20)


def case_columns(shape: OpShape, provider: str, dtype: str) -> dict:
    """The case columns of every row of this case (see :mod:`benchmarks.results`)."""
    return {
        "section": "ops",
        "op": shape.op,
        "provider": provider,
        "dtype": dtype,
        "layout": "channels_last" if provider in P.CHANNELS_LAST else "nchw",
        "shape": shape.label,
        "size": shape.size,
        "shape_set": "+".join(shape.sets),
        "shape_source": shape.source,
    }


def _not_ok(case: dict, env: dict, status: str, reason: str) -> list[dict]:
    return [make_row({**case, "mode": mode}, env, "time_ms", status=status, reason=reason) for mode in traffic.MODES]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _graph_row(fn, setup, mode_case, env, err, *, smoke, device, budget_s) -> dict:
    """The ``graph_ms`` row: CUDA-graph replay time, or ``skipped`` with why the capture failed."""
    if setup is not None:
        return make_row(mode_case, env, "graph_ms", status="skipped",
                        reason="bwd: the forward runs in the untimed setup, outside a capturable function; see fwd+bwd")
    try:
        ms = timing.graph_runs(fn, device=device, smoke=smoke, budget_s=budget_s)
    except timing.NotCapturable as exc:
        return make_row(mode_case, env, "graph_ms", status="skipped", reason=f"not capturable: {exc}"[:500])
    return make_row(mode_case, env, "graph_ms", timing.percentiles(ms), n=len(ms), max_rel_err=err)


def run_case(shape: OpShape, provider: str, dtype: str, *, smoke: bool, device: torch.device, env: dict, budget_s: float) -> list[dict]:
    """All rows of one case (see module doc). Errors while running become ``error`` rows."""
    case = case_columns(shape, provider, dtype)
    reason = P.unavailable(shape.op, provider, len(shape.weights) if shape.weights else None)
    if not reason and smoke and provider == "compile_max":
        reason = "smoke run: with the eager compile backend (tracing only) this is the same as 'compile'"
    if reason:
        return _not_ok(case, env, "skipped", reason)
    try:
        return _measure(shape, provider, dtype, case, smoke=smoke, device=device, env=env, budget_s=budget_s)
    except Exception as exc:  # OOM, compiler or kernel failures: recorded, the suite goes on
        reason = f"{type(exc).__name__}: {exc}"[:500]
        del exc
        gc.collect()  # frees the tensors the traceback held
        return _not_ok(case, env, "error", reason)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _measure(shape, provider, dtype, case, *, smoke, device, env, budget_s) -> list[dict]:
    op = shape.op
    inp = I.make_inputs(shape, I.DTYPES[dtype], device, channels_last=provider in P.CHANNELS_LAST)
    prepared = P.prepare(op, provider, inp.tensors, smoke)
    t, grads_of = inp.tensors, inp.differentiable
    ref_inputs, ref_leaves = inp.in_float64()
    ref = P.call(op, P.reference_fn(op), ref_inputs)
    before = P.fallback_counts(provider, op)
    with prepared.context():
        out = prepared.forward(inp.with_fresh_state())
        # like out: same dtype and memory format (a channels_last output gets a channels_last gradient)
        dy = torch.empty_like(out).normal_(generator=torch.Generator(device=device).manual_seed(1))
        grads = torch.autograd.grad(out, grads_of, dy)
    fell_back = [r for r, n in P.fallback_counts(provider, op).items() if n > before.get(r, 0)]
    if fell_back:
        return _not_ok(case, env, "skipped", f"backend {provider!r} falls back to 'torch' here: {fell_back[0]}")
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    err = max(_rel_err(a, b) for a, b in zip((out, *grads), (ref, *ref_grads)))
    if err > TOLERANCE[dtype]:
        return _not_ok(case, env, "error", f"output or gradient differs from the reference: max_rel_err {err:.3g} > {TOLERANCE[dtype]}")
    del out, ref, grads, ref_grads

    def fwd(_):
        return prepared.forward(t)

    def bwd(y):
        return torch.autograd.grad(y, grads_of, dy)

    def fwd_bwd(_=None):
        return torch.autograd.grad(prepared.forward(t), grads_of, dy)

    rows = []
    timed = {"fwd": (fwd, None), "bwd": (bwd, lambda: prepared.forward(t)), "fwd+bwd": (fwd_bwd, None)}
    with prepared.context():
        for mode, (fn, setup) in timed.items():
            ms = timing.time_runs(fn, device=device, smoke=smoke, setup=setup, budget_s=budget_s)
            nbytes = traffic.min_bytes(shape, mode, I.DTYPES[dtype].itemsize)
            gbps = [nbytes / (m * 1e-3) / 1e9 for m in ms]
            mode_case = {**case, "mode": mode}
            common = dict(n=len(ms), max_rel_err=err)
            rows.append(make_row(mode_case, env, "time_ms", timing.percentiles(ms), **common))
            rows.append(make_row(mode_case, env, "bandwidth_GBps", timing.percentiles(gbps), traffic_bytes=nbytes, **common))
            fraction = [g / env["copy_bw_GBps"] for g in gbps]
            rows.append(make_row(mode_case, env, "bandwidth_fraction", timing.percentiles(fraction), traffic_bytes=nbytes, **common))
            copy_same = bench_env.copy_bandwidth_at(device, nbytes, smoke)
            rows.append(make_row(mode_case, env, "copy_same_size_GBps", copy_same, n=1, traffic_bytes=nbytes))
            same = [g / copy_same for g in gbps]
            rows.append(make_row(mode_case, env, "bandwidth_fraction_same_size", timing.percentiles(same),
                                 traffic_bytes=nbytes, **common))
            host = timing.host_runs(fn, device=device, smoke=smoke, setup=setup, budget_s=budget_s)
            rows.append(make_row(mode_case, env, "host_ms", timing.percentiles(host), n=len(host), max_rel_err=err))
            rows.append(_graph_row(fn, setup, mode_case, env, err, smoke=smoke, device=device, budget_s=budget_s))
        peak = timing.peak_memory_bytes(fwd_bwd, device)
        saved = saved_tensor_bytes(prepared.forward, t).saved_bytes
    fb = {**case, "mode": "fwd+bwd"}
    if peak is None:
        rows.append(make_row(fb, env, "peak_mem_MiB", status="skipped", reason="peak memory is measured on CUDA only"))
    else:
        rows.append(make_row(fb, env, "peak_mem_MiB", peak / MIB, n=1, max_rel_err=err))
    rows.append(make_row({**case, "mode": "fwd"}, env, "saved_MiB", saved / MIB, n=1, max_rel_err=err))
    return rows
