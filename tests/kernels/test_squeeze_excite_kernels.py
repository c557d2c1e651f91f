"""Kernel-level tests of ``nvae_fast.kernels.squeeze_excite`` against the op's ATen kernel set.

The kernel set's forward and backward (both activations, with and without biases) run on identical
inputs through Triton (the interpreter on a CPU machine) and through
:class:`nvae_fast.ops.squeeze_excite.TorchKernels`; tolerances are in
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


def _inputs(shape, dtype, kind, seed=0, hidden=3):
    """x (mean 0.3) in layout ``kind``, dy in another layout (dx comes back in x's), and the weights w1, b1, w2, b2 (float32)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = in_layout(randn(shape, dtype=dtype, generator=g, shift=0.3), kind)
    dy = in_layout(randn(shape, dtype=dtype, generator=g), OTHER_LAYOUT[kind])
    weights = [randn(hidden, c, generator=g), randn(hidden, generator=g), randn(c, hidden, generator=g),
               randn(c, generator=g)]
    return x, dy, weights


def _check_all(x, dy, weights, dtype):
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for activation, (w1, b1, w2, b2) in (("relu", weights), ("silu", (weights[0], None, weights[2], None))):
        y, m, g = K.forward(x, w1, b1, w2, b2, activation)
        y_t, m_t, g_t = T.forward(x, w1, b1, w2, b2, activation)
        assert y.dtype == x.dtype and m.dtype == g.dtype == acc_dtype
        assert_same_layout(y, x, "forward")
        assert_close(m, m_t, acc_dtype, "mean")
        assert_close(g, g_t, acc_dtype, "gate")
        assert_close(y, y_t, dtype, "y")
        got = K.backward(dy, x, m, g, w1, b1, w2, b2, activation)
        want = T.backward(dy, x, m, g, w1, b1, w2, b2, activation)
        assert got[0].dtype == dy.dtype
        assert_same_layout(got[0], x, "dx")
        assert_close(got[0], want[0], dtype, "dx")
        for name, a, b in zip(("dw1", "db1", "dw2", "db2"), got[1:], want[1:]):
            assert (a is None) == (b is None), name
            if a is not None:
                assert_close(a, b, acc_dtype, name)


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
    x, dy, (w1, b1, w2, b2) = _inputs((3, 4, 21, 17), torch.float32, kind, seed=2)

    def run():
        y, m, g = K.forward(x, w1, b1, w2, b2, "silu")
        return (y, m, g, *K.backward(dy, x, m, g, w1, b1, w2, b2, "silu"))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)
    assert not _host._TICKET_COUNTERS[_host._stream_key(x.device)].any()  # the last program of each launch reset it


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


def test_plan_reports_the_reduction_split(monkeypatch):
    apply_plan(monkeypatch, K, "many_splits")
    x = torch.randn(2, 5, 19, 23)
    block_a, block_b, programs, split = K._reduce_plan(x, _host.NCHW)
    assert K.plan(x) == {"layout": "nchw", "tile": (block_a, block_b), "programs": programs, "split": split}
    assert K.plan(x.to(memory_format=torch.channels_last))["layout"] == "nhwc"


def test_supports():
    assert K.supports(torch.randn(2, 3, 4, 5)) is None
    assert K.supports(torch.randn(2, 3, 4, 5, dtype=torch.float16)) is None
    assert "int32" in K.supports(torch.empty(2**16, 2**15, 1, 1, device="meta"))  # 2**31 elements
    assert _host.too_large(torch.randn(2, 3, 4, 5, dtype=torch.float64)) is None
