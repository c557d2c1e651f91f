"""The implementations compared side by side ("providers").

| provider       | what runs                                                                          |
|----------------|------------------------------------------------------------------------------------|
| ``triton``     | ``nvae_fast.ops.<op>`` under ``nvae_fast.use_backend("triton")``                    |
| ``cuda``       | ``nvae_fast.ops.<op>`` under ``nvae_fast.use_backend("cuda")``                      |
| ``torch``      | ``nvae_fast.ops.<op>`` under ``nvae_fast.use_backend("torch")`` (lean, ATen kernels) |
| ``reference``  | eager PyTorch: ``nvae_fast.ops.<op>_reference`` (bn_swish: ``F.batch_norm`` +       |
|                | ``F.silu`` = ``nn.BatchNorm2d`` + ``nn.SiLU``; depthwise: ``F.conv2d(groups=C)`` on   |
|                | NCHW, which ATen dispatches to its *native* ``conv_depthwise2d`` kernels in float32 |
|                | and bfloat16, not to cuDNN; power iteration: one weight at a time)                 |
| ``reference_cl`` | depthwise only: the reference on channels_last x and weight: cuDNN channels_last, |
|                | run with ``torch.backends.cudnn.benchmark = True`` (timed algorithm choice)        |
| ``compile``    | ``torch.compile(<op>_reference, dynamic=False)`` (inductor); smoke runs use the     |
|                | ``eager`` compile backend (tracing only). Power iteration: only up to               |
|                | :data:`COMPILE_MAX_WEIGHTS` weights (the per-weight loop unrolls into the graph)    |
| ``compile_max`` | the same with ``mode="max-autotune-no-cudagraphs"`` (Triton/GEMM autotuning,      |
|                | no CUDA graphs)                                                                    |
| ``stack_bmm``  | power iteration only, the baseline: :class:`StackBmmPowerIteration`                 |

:func:`implementation` names what actually runs (e.g. "ATen native conv_depthwise2d (NCHW)" for the
depthwise ``reference``); the summary prints it under each table. Every depthwise baseline runs with
``cudnn.benchmark = True`` (:func:`prepare`), so a cuDNN row gets cuDNN's timed algorithm choice, not
its heuristic one; the first (untimed) call does the benchmarking.

A provider that cannot run says why (:func:`unavailable`); nvae_fast backends are asked through
``nvae_fast.backend_info()``. A fused backend whose kernel set falls back to ``torch`` for the given
inputs is reported as skipped with the fallback's reason (it would otherwise time the ``torch`` kernels).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import nvae_fast
import nvae_fast.ops as ops

BACKEND_PROVIDERS = ("triton", "cuda", "torch")
PROVIDERS = {
    "bn_swish": ("triton", "cuda", "torch", "reference", "compile", "compile_max"),
    "depthwise_conv2d": ("triton", "cuda", "torch", "reference", "reference_cl", "compile", "compile_max"),
    "squeeze_excite": ("triton", "cuda", "torch", "reference", "compile", "compile_max"),
    "power_iteration": ("triton", "cuda", "torch", "reference", "stack_bmm", "compile", "compile_max"),
}
COMPILE_MODES = {"compile": None, "compile_max": "max-autotune-no-cudagraphs"}
ALL_PROVIDERS = tuple(dict.fromkeys(p for names in PROVIDERS.values() for p in names))
CHANNELS_LAST = ("reference_cl",)  # providers whose inputs are channels_last
COMPILE_MAX_WEIGHTS = 64
EPS = 1e-12


IMPLEMENTATIONS = {  # (op, provider) -> what runs; op None: every op
    (None, "triton"): "nvae_fast Triton kernels",
    (None, "cuda"): "nvae_fast CUDA extension",
    (None, "torch"): "nvae_fast lean PyTorch path (ATen kernels)",
    ("bn_swish", "reference"): "eager ATen: F.batch_norm (cuDNN/native BN) + F.silu",
    ("depthwise_conv2d", "reference"): "eager ATen native conv_depthwise2d (NCHW; cuDNN not used in float32/bfloat16)",
    ("depthwise_conv2d", "reference_cl"): "eager cuDNN channels_last, cudnn.benchmark=True",
    ("squeeze_excite", "reference"): "eager ATen ops (mean, linear, relu, sigmoid, mul)",
    ("power_iteration", "reference"): "eager ATen, one weight at a time",
    (None, "compile"): "torch.compile(reference), inductor default mode",
    ("depthwise_conv2d", "compile"): "torch.compile(reference), inductor default mode, cudnn.benchmark=True",
    (None, "compile_max"): "torch.compile(reference), inductor max-autotune-no-cudagraphs",
    ("depthwise_conv2d", "compile_max"): "torch.compile(reference), inductor max-autotune-no-cudagraphs, "
                                         "cudnn.benchmark=True",
    ("power_iteration", "stack_bmm"): "torch.stack + torch.bmm per shape group",
}


def implementation(op: str, provider: str) -> str:
    """What actually runs for ``provider`` on ``op`` (see :data:`IMPLEMENTATIONS`)."""
    return IMPLEMENTATIONS.get((op, provider)) or IMPLEMENTATIONS.get((None, provider)) or provider


@contextlib.contextmanager
def cudnn_benchmark():
    """``torch.backends.cudnn.benchmark = True`` inside (cuDNN times its algorithms on the first call)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def reference_fn(op: str) -> Callable:
    """``nvae_fast.ops.<op>_reference``."""
    return getattr(ops, f"{op}_reference")


def call(op: str, fn: Callable, t: dict):
    """Apply ``fn`` (the public op or its reference) to the inputs ``t`` of :mod:`benchmarks.inputs`."""
    if op == "bn_swish":
        return fn(t["x"], t["weight"], t["bias"], t["running_mean"], t["running_var"], True)
    if op == "depthwise_conv2d":
        k = t["weight"].shape[-1]
        return fn(t["x"], t["weight"], None, 1, k // 2, 1)
    if op == "squeeze_excite":
        return fn(t["x"], t["w1"], t["b1"], t["w2"], t["b2"])
    if op == "power_iteration":
        return fn(t["weights"], t["us"], t["vs"], t["n_iter"])
    raise ValueError(f"call: unknown op {op!r}")


def unavailable(op: str, provider: str, n_weights: int | None = None) -> str | None:
    """Why ``provider`` cannot run ``op`` in this process, or ``None``."""
    if provider not in PROVIDERS[op]:
        return f"provider {provider!r} does not apply to {op}"
    if provider in BACKEND_PROVIDERS:
        status = nvae_fast.backend_info()["backends"][provider]
        return None if status["available"] else f"nvae_fast backend {provider!r} unavailable: {status['reason']}"
    if provider in COMPILE_MODES and op == "power_iteration" and n_weights > COMPILE_MAX_WEIGHTS:
        return (
            f"torch.compile of the per-weight reference loop over {n_weights} weights (> {COMPILE_MAX_WEIGHTS}) "
            "unrolls into a graph whose compilation exceeds the benchmark's time budget"
        )
    return None


class StackBmmPowerIteration:
    """Baseline power iteration: group the weights by shape, ``torch.stack`` each group, ``torch.bmm``.

    ``u``/``v`` live stacked per group, (G, out) and (G, rest), float32, initialised from the given
    vectors. One call: per group, ``W = stack(W_i viewed (out, rest))`` (autograd records the stack),
    ``n_iter`` steps ``v = normalize(W^T u)``, ``u = normalize(W v)`` without gradient in float32, then
    ``sigma = u^T W v`` by two ``bmm`` with gradient. Returns sigma in the order of the weights.
    """

    def __init__(self, weights: list[torch.Tensor], us: list[torch.Tensor], vs: list[torch.Tensor]):
        groups = defaultdict(list)
        for i, w in enumerate(weights):
            groups[(tuple(w.shape), w.dtype)].append(i)
        self.groups = list(groups.values())
        self.us = [torch.stack([us[i] for i in idx]).float() for idx in self.groups]
        self.vs = [torch.stack([vs[i] for i in idx]).float() for idx in self.groups]
        order = torch.tensor([i for idx in self.groups for i in idx])
        self.inverse = torch.empty_like(order).scatter_(0, order, torch.arange(len(order))).to(weights[0].device)

    def __call__(self, weights: list[torch.Tensor], n_iter: int) -> torch.Tensor:
        sigmas = []
        for idx, u, v in zip(self.groups, self.us, self.vs):
            w = torch.stack([weights[i].reshape(weights[i].shape[0], -1) for i in idx]).float()
            with torch.no_grad():
                for _ in range(n_iter):
                    v.copy_(F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1, eps=EPS))
                    u.copy_(F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1, eps=EPS))
            sigmas.append(torch.bmm(u.unsqueeze(1), torch.bmm(w, v.unsqueeze(2))).flatten())
        return torch.cat(sigmas)[self.inverse]


@dataclass
class Prepared:
    """A provider ready to run: ``forward(tensors)`` returns the op's output; run it inside ``context()``."""

    forward: Callable[[dict], torch.Tensor]
    context: Callable[[], contextlib.AbstractContextManager]


def prepare(op: str, provider: str, tensors: dict, smoke: bool) -> Prepared:
    """Build ``provider``'s forward for ``op`` (inputs ``tensors`` are needed by the stateful baseline)."""
    if provider in BACKEND_PROVIDERS:
        public = getattr(ops, op)
        return Prepared(lambda t: call(op, public, t), lambda: nvae_fast.use_backend(provider))
    ref = reference_fn(op)
    baseline_context = cudnn_benchmark if op == "depthwise_conv2d" else contextlib.nullcontext
    if provider in ("reference", "reference_cl"):
        return Prepared(lambda t: call(op, ref, t), baseline_context)
    if provider in COMPILE_MODES:
        torch._dynamo.reset()  # a fresh cache per case: no recompilation limit, no shape specialisation carried over
        if smoke:  # tracing only: the eager backend takes no inductor mode
            compiled = torch.compile(ref, dynamic=False, backend="eager")
        else:
            compiled = torch.compile(ref, dynamic=False, backend="inductor", mode=COMPILE_MODES[provider])
        return Prepared(lambda t: call(op, compiled, t), baseline_context)
    if provider == "stack_bmm":
        baseline = StackBmmPowerIteration(tensors["weights"], tensors["us"], tensors["vs"])
        return Prepared(lambda t: baseline(t["weights"], t["n_iter"]), contextlib.nullcontext)
    raise ValueError(f"prepare: unknown provider {provider!r} for {op}")


def fallback_counts(backend_name: str, op: str) -> dict[str, int]:
    """How often ``backend_name``'s kernel set has fallen back to ``torch`` on ``op``, per reason."""
    return {
        f["reason"]: f["count"]
        for f in nvae_fast.backend_info()["fallbacks"]
        if f["backend"] == backend_name and f["op"] == op
    }
