"""Kernel-level tests of ``nvae_fast.kernels.squeeze_excite`` against the op's ATen kernel set.

Every kernel-set function runs on identical inputs through Triton (the interpreter on a CPU machine)
and through :class:`nvae_fast.ops.squeeze_excite.TorchKernels`; tolerances are in
``_plans.TOLERANCES``. Plans (``_plans.PLANS``) force multi-tile and split reductions on small shapes.
"""

from __future__ import annotations

import pytest
import torch

from nvae_fast.kernels import _host
from nvae_fast.kernels import squeeze_excite as K
from nvae_fast.ops.squeeze_excite import TorchKernels as T

from .._tensors import LAYOUTS, OTHER_LAYOUT, in_layout, randn
from ._plans import CONFIGS, PLANS, apply_plan, assert_close, assert_same_layout

SHAPES = [(2, 5, 19, 23), (7, 6, 1, 1)]


def _inputs(shape, dtype, kind, seed=0):
    """x (mean 0.3) in layout ``kind``, dy in another layout, a gate in (0, 1) and dmean, (N, C)."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = in_layout(randn(shape, dtype=dtype, generator=g, shift=0.3), kind)
    dy = in_layout(randn(shape, dtype=dtype, generator=g), OTHER_LAYOUT[kind])
    gate = torch.sigmoid(randn(shape[:2], dtype=acc, generator=g))
    dmean = randn(shape[:2], dtype=acc, generator=g)
    return x, dy, gate, dmean


def _check_all(x, dy, gate, dmean, dtype):
    acc_dtype = gate.dtype
    hw = x.shape[2] * x.shape[3]

    m = K.pool(x)
    assert m.dtype == acc_dtype
    assert_close(m, T.pool(x), acc_dtype, "pool")

    y = K.scale(x, gate)
    assert y.dtype == x.dtype
    assert_same_layout(y, x, "scale")
    assert_close(y, T.scale(x, gate), dtype, "scale")

    dg = K.backward_reduce(dy, x)
    assert dg.dtype == acc_dtype
    assert_close(dg, T.backward_reduce(dy, x), acc_dtype, "backward_reduce")

    dx = K.backward_dx(dy, gate, dmean, hw)
    assert dx.dtype == dy.dtype
    assert_same_layout(dx, dy, "backward_dx")
    assert_close(dx, T.backward_dx(dy, gate, dmean, hw), dtype, "backward_dx")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("plan, kind", CONFIGS)
def test_float64_matches_torch_kernels(monkeypatch, plan, kind, shape):
    apply_plan(monkeypatch, K, plan)
    _check_all(*_inputs(shape, torch.float64, kind), torch.float64)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("plan", ["one_tile", "many_splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lower_precision_matches_torch_kernels(monkeypatch, dtype, plan, kind):
    apply_plan(monkeypatch, K, plan)
    _check_all(*_inputs((3, 5, 13, 7), dtype, kind), dtype)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_repeated_runs_are_bit_identical(monkeypatch, kind):
    apply_plan(monkeypatch, K, "many_splits")
    x, dy, gate, dmean = _inputs((3, 4, 21, 17), torch.float32, kind, seed=2)

    def run():
        return K.pool(x), K.backward_reduce(dy, x), K.backward_dx(dy, gate, dmean, 21 * 17)

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_plans_reach_multi_tile_and_multi_split_reductions(monkeypatch, kind):
    """Guards the tests above: on their main shape the plans give 1 tile, many tiles, many splits
    along H*W."""
    n, c, h, w = SHAPES[0]
    x = in_layout(torch.randn(n, c, h, w), kind)
    seen = {}
    for plan in PLANS:
        apply_plan(monkeypatch, K, plan)
        block_a, block_b, _, split = K._reduce_plan(x, _host.layout_of(x))
        block_hw = block_b if kind == "contiguous" else block_a
        seen[plan] = (-(-(h * w) // block_hw), split)
    assert seen["one_tile"] == (1, 1)
    assert seen["many_tiles"][0] > 4 and seen["many_tiles"][1] == 1
    assert seen["many_splits"][1] > 1 and seen["many_splits"][0] > seen["many_splits"][1]


def test_backward_dx_rejects_a_wrong_hw():
    x, dy, gate, dmean = _inputs((2, 3, 4, 5), torch.float32, "contiguous")
    with pytest.raises(ValueError, match="hw"):
        K.backward_dx(dy, gate, dmean, 21)


def test_supports():
    assert K.supports(torch.randn(2, 3, 4, 5)) is None
    assert K.supports(torch.randn(2, 3, 4, 5, dtype=torch.float16)) is None
    assert "int32" in K.supports(torch.empty(2**16, 2**15, 1, 1, device="meta"))  # 2**31 elements
    assert _host.too_large(torch.randn(2, 3, 4, 5, dtype=torch.float64)) is None
