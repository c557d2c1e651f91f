"""Shared data of the kernel tests: tiling plans and tolerances (inputs and layouts: ``tests/_tensors.py``).

A *plan* overrides the tile size and the split heuristic of :mod:`nvae_fast.kernels._host` (and the
widest tile of the module under test) so that small test shapes still exercise every path:

``one_tile``    the shipped tile size, one program per output: most reductions fit in one tile;
``many_tiles``  tiny tiles, one program per output: each program folds many tiles (merge in-kernel);
``many_splits`` tiny tiles, several programs per output, each folding several tiles: per-program
                partials merged afterwards.
"""

from __future__ import annotations

import torch

from nvae_fast.kernels import _host

from .._tensors import LAYOUTS

# name: (elements per tile, WAVES * INTERPRETER_SMS = programs wanted, widest NCHW tile, widest NHWC tile)
PLANS = {
    "one_tile": (4096, 1, 1024, 128),
    "many_tiles": (256, 1, 32, 16),
    "many_splits": (256, 16, 32, 16),
}

# (plan, layout of x) for the kernel sets' reductions: every layout with the shipped tiles; the two native
# layouts with every plan (a strided x is copied to NCHW before any kernel runs).
CONFIGS = [(plan, kind) for kind in LAYOUTS for plan in PLANS if kind != "strided" or plan == "one_tile"]

# Triton kernel set vs the op's TorchKernels on identical inputs: (atol relative to max|expected|, rtol)
# for outputs in x's dtype. Half types: one rounding step apart (the interpreter rounds float32 ->
# bfloat16 towards zero, the GPU and torch to nearest: two bfloat16 ulps). Results in the
# accumulation dtype (sums, statistics) use the float32/float64 rows.
TOLERANCES = {
    torch.float64: (1e-12, 1e-11),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}


def apply_plan(monkeypatch, module, name: str) -> None:
    """Make ``module`` (a kernel module with MAX_COLS_NCHW / MAX_COLS_NHWC) tile as plan ``name`` says."""
    tile, programs, nchw, nhwc = PLANS[name]
    monkeypatch.setattr(_host, "TILE_ELEMS", tile)
    monkeypatch.setattr(_host, "WAVES", 1)
    monkeypatch.setattr(_host, "INTERPRETER_SMS", programs)
    monkeypatch.setattr(module, "MAX_COLS_NCHW", nchw)
    monkeypatch.setattr(module, "MAX_COLS_NHWC", nhwc)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``|actual - expected| <= atol max|expected| + rtol |expected|`` with ``dtype``'s tolerances."""
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.double(), expected, atol=atol * max(scale, 1e-30), rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def assert_same_layout(actual: torch.Tensor, x: torch.Tensor, what: str) -> None:
    """``actual`` is dense in ``x``'s layout (NCHW for a non-dense ``x``)."""
    fmt = torch.channels_last if _host.layout_of(x) == _host.NHWC else torch.contiguous_format
    assert actual.is_contiguous(memory_format=fmt), f"{what}: strides {actual.stride()} are not {fmt} like x"
