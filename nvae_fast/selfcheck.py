"""The self-check that ``auto`` runs before it first trusts a fused backend with an op.

:func:`run` calls the op's public function (handed in by the op's module, through its
:class:`nvae_fast.backend.Op`) on small probe inputs, forward and backward, once under the
fused backend and once under ``torch``, and compares every output, gradient and updated state tensor:
``|fused - torch| <= FACTOR * (atol * max|torch| + rtol * |torch|)`` with the op suite's (atol, rtol) for
the dtype (:data:`TOLERANCES`). A wrong kernel misses by far more; rounding by far less.

The probe shapes (:data:`PROBE_SHAPES`) take each kernel's two kinds of plan on a 132-SM GPU: one tile
(or one part per reduction), and several tiles with split reductions and grid-stride loops (the
reasoning per shape is in ``tests/ops/_gpu_shapes.py``). Inputs are drawn from a private generator, so
the caller's random state is untouched, and the probe runs with gradients on and autocast off whatever
the caller's mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import backend

TOLERANCES = {  # (atol, rtol) of the op suite against its float64 reference
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3e-2),
}
FACTOR = 8.0  # both sides carry their rounding, and gradients sum many rounded terms

# Probes whose parameters or state live in float32 whatever the activations' dtype (BN's affine
# parameters and running statistics, the power iteration's u and v): their results carry float32
# rounding, so they are compared with float32's tolerance at least.
FLOAT32_STATE = ("bn_swish", "power_iteration")

PROBE_SHAPES = {
    "bn_swish": [(3, 5, 7, 6), (17, 65, 25, 41)],
    "depthwise_conv2d": [((2, 6, 9, 11), 5, 1, 2), ((24, 132, 17, 33), 5, 1, 2), ((38, 27, 33, 65), 3, 2, 1)],
    "squeeze_excite": [((3, 16, 5, 7), 4), ((5, 105, 17, 241), 7)],
    "power_iteration": [[(8, 4, 3, 3), (6, 1, 5, 5), (5, 7)], [(257, 3, 19, 18), (70, 3, 10, 9), (300, 880), (6, 5)]],
}


@dataclass
class Result:
    """One self-check: ``passed``, ``why`` (the first mismatch or error; empty when passed), ``seconds``."""

    passed: bool
    why: str
    seconds: float


def _randn(g: torch.Generator, shape, device, dtype, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)


def _bn_swish(bn_swish, shape, device, dtype) -> Callable[[], dict]:

    def run():
        g = torch.Generator().manual_seed(1)
        c = shape[1]
        x = _randn(g, shape, device, dtype, 1.5, 0.3).requires_grad_()
        w = _randn(g, (c,), device, torch.float32, 0.2, 1.0).requires_grad_()
        b = _randn(g, (c,), device, torch.float32, 0.2).requires_grad_()
        rm, rv = _randn(g, (c,), device, torch.float32, 0.1), _randn(g, (c,), device, torch.float32, 0.1, 1.0).abs()
        y = bn_swish(x, w, b, rm, rv, True, 0.1, 1e-5)
        grads = torch.autograd.grad(y, (x, w, b), _randn(g, shape, device, dtype))
        return {"y": y, "dx": grads[0], "dweight": grads[1], "dbias": grads[2], "running_mean": rm, "running_var": rv}

    return run


def _depthwise(depthwise_conv2d, case, device, dtype) -> Callable[[], dict]:

    shape, k, stride, padding = case

    def run():
        g = torch.Generator().manual_seed(2)
        x = _randn(g, shape, device, dtype).requires_grad_()
        w = _randn(g, (shape[1], 1, k, k), device, dtype, 1 / k).requires_grad_()
        y = depthwise_conv2d(x, w, None, stride, padding, 1)
        dx, dw = torch.autograd.grad(y, (x, w), _randn(g, tuple(y.shape), device, dtype))
        return {"y": y, "dx": dx, "dweight": dw}

    return run


def _squeeze_excite(squeeze_excite, case, device, dtype) -> Callable[[], dict]:

    shape, hidden = case

    def run():
        g = torch.Generator().manual_seed(3)
        c = shape[1]
        leaves = [
            _randn(g, shape, device, dtype, 1.5, 0.3),
            _randn(g, (hidden, c), device, dtype, c**-0.5), _randn(g, (hidden,), device, dtype, 0.1),
            _randn(g, (c, hidden), device, dtype, hidden**-0.5), _randn(g, (c,), device, dtype, 0.1),
        ]
        leaves = [t.requires_grad_() for t in leaves]
        y = squeeze_excite(*leaves)
        grads = torch.autograd.grad(y, leaves, _randn(g, shape, device, dtype))
        return {"y": y, **{f"d{name}": d for name, d in zip(("x", "w1", "b1", "w2", "b2"), grads)}}

    return run


def _power_iteration(power_iteration, shapes, device, dtype) -> Callable[[], dict]:

    def run():
        g = torch.Generator().manual_seed(4)
        ws = [_randn(g, s, device, dtype, math.prod(s[1:]) ** -0.5).requires_grad_() for s in shapes]
        us = [torch.nn.functional.normalize(_randn(g, (s[0],), device, torch.float32), dim=0) for s in shapes]
        vs = [
            torch.nn.functional.normalize(_randn(g, (w[0].numel(),), device, torch.float32), dim=0) for w in ws
        ]
        sigma = power_iteration(ws, us, vs, 3)
        grads = torch.autograd.grad(sigma, ws, _randn(g, tuple(sigma.shape), device, sigma.dtype))
        return {"sigma": sigma, **{f"dW{i}": d for i, d in enumerate(grads)},
                **{f"u{i}": u for i, u in enumerate(us)}, **{f"v{i}": v for i, v in enumerate(vs)}}

    return run


_BUILDERS = {
    "bn_swish": _bn_swish,
    "depthwise_conv2d": _depthwise,
    "squeeze_excite": _squeeze_excite,
    "power_iteration": _power_iteration,
}


def _mismatch(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all() and torch.isfinite(want).all():
        return f"{name}: not finite"
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs() - FACTOR * rtol * want.abs()
    worst = err.max().item() if err.numel() else 0.0
    if worst > FACTOR * atol * scale:
        return f"{name}: max |fused - torch| exceeds the tolerance by {worst:.3g} (scale {scale:.3g})"
    return None


def _tolerance_dtype(op: str, dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or float32 where the probe's float32 state is coarser (see :data:`FLOAT32_STATE`)."""
    return torch.float32 if op in FLOAT32_STATE and dtype == torch.float64 else dtype


def run(op: str, function: Callable, backend_name: str, device: torch.device, dtype: torch.dtype) -> Result:
    """Self-check ``backend_name`` on ``op``, whose public function is ``function``, for ``device`` and
    ``dtype`` (see the module doc)."""
    start = time.perf_counter()
    why = ""
    try:
        with torch.enable_grad(), torch.inference_mode(False), torch.autocast(device.type, enabled=False):
            for case in PROBE_SHAPES[op]:
                probe = _BUILDERS[op](function, case, device, dtype)
                with backend.use_backend(backend_name):
                    fused = probe()
                with backend.use_backend("torch"):
                    expected = probe()
                for name, want in expected.items():
                    why = _mismatch(name, fused[name], want, _tolerance_dtype(op, dtype)) or ""
                    if why:
                        why = f"probe {case}: {why}"
                        break
                if why:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that fails to compile, launch or run fails its self-check
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Result(passed=not why, why=why, seconds=time.perf_counter() - start)
