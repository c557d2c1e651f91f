"""Kernel-level tests of ``nvae_fast.kernels.bn_swish`` against the op's ATen kernel set.

Every kernel-set function runs on identical inputs through Triton (the interpreter on a CPU machine)
and through :class:`nvae_fast.ops.bn_swish.TorchKernels`; tolerances are in ``_plans.TOLERANCES``.
Plans (``_plans.PLANS``) force multi-tile and multi-split reductions on small shapes.
"""

from __future__ import annotations

import pytest
import torch

from nvae_fast.kernels import _host
from nvae_fast.kernels import bn_swish as K
from nvae_fast.ops.bn_swish import TorchKernels as T

from ._plans import LAYOUTS, PLANS, apply_plan, assert_close, assert_same_layout, randn, to_layout

SHAPES = [(3, 4, 17, 23), (6, 5, 1, 1)]
# (plan, layout of x): every layout with the shipped tiles; the two native layouts with small tiles
# (a strided x is copied to NCHW before any kernel runs).
CONFIGS = [(plan, kind) for kind in LAYOUTS for plan in PLANS if kind != "strided" or plan == "one_tile"]
OTHER_LAYOUT = {"nchw": "channels_last", "channels_last": "strided", "strided": "nchw"}


def _inputs(shape, dtype, kind, param_dtype=None, seed=0):
    """x (mean 0.7, std 1.6) in layout ``kind``, dy in another layout, and per-channel tensors."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    param_dtype = param_dtype or acc
    x = to_layout(randn(shape, dtype, g, scale=1.6, shift=0.7), kind)
    dy = to_layout(randn(shape, dtype, g), OTHER_LAYOUT[kind])
    mean = randn(c, acc, g, scale=0.3, shift=0.7)
    invstd = randn(c, acc, g, scale=0.1, shift=0.6)
    weight = randn(c, param_dtype, g, shift=0.5)
    bias = randn(c, param_dtype, g, scale=0.5)
    return x, dy, mean, invstd, weight, bias


def _check_all(x, dy, mean, invstd, weight, bias, dtype):
    """Compare every kernel-set function of Triton with TorchKernels (x's dtype for y/dx)."""
    acc = mean.dtype
    acc_dtype = torch.float64 if acc == torch.float64 else torch.float32
    count = x.numel() // x.shape[1]

    m, v = K.batch_stats(x)
    m_ref, v_ref = T.batch_stats(x)
    assert m.dtype == v.dtype == acc
    assert_close(m, m_ref, acc_dtype, "batch_stats mean")
    assert_close(v, v_ref, acc_dtype, "batch_stats var")

    y = K.normalize(x, mean, invstd, weight, bias)
    assert y.dtype == x.dtype
    assert_same_layout(y, x, "normalize")
    assert_close(y, T.normalize(x, mean, invstd, weight, bias), dtype, "normalize")

    sdz, sdzx = K.backward_reduce(dy, x, mean, invstd, weight, bias)
    sdz_ref, sdzx_ref = T.backward_reduce(dy, x, mean, invstd, weight, bias)
    assert sdz.dtype == sdzx.dtype == acc
    assert_close(sdz, sdz_ref, acc_dtype, "sum_dz")
    assert_close(sdzx, sdzx_ref, acc_dtype, "sum_dz_xhat")

    for n in (count, None):
        dx = K.backward_dx(dy, x, mean, invstd, weight, bias, sdz_ref, sdzx_ref, n)
        assert dx.dtype == x.dtype
        assert_same_layout(dx, x, "backward_dx")
        dx_ref = T.backward_dx(dy, x, mean, invstd, weight, bias, sdz_ref, sdzx_ref, n)
        assert_close(dx, dx_ref, dtype, f"backward_dx ({'training' if n else 'eval'})")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("plan, kind", CONFIGS)
def test_float64_matches_torch_kernels(monkeypatch, plan, kind, shape):
    apply_plan(monkeypatch, K, plan)
    _check_all(*_inputs(shape, torch.float64, kind), torch.float64)


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
@pytest.mark.parametrize("plan", ["one_tile", "many_splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lower_precision_matches_torch_kernels(monkeypatch, dtype, plan, kind):
    """Half inputs take weight/bias in their own dtype here (the op may pass float32 ones too)."""
    apply_plan(monkeypatch, K, plan)
    param_dtype = dtype if dtype != torch.float32 else None
    _check_all(*_inputs((3, 5, 13, 7), dtype, kind, param_dtype), dtype)


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_statistics_are_exact_for_a_large_offset(monkeypatch, kind):
    """float32 x = 3000 + N(0, 1): E[x^2] - E[x]^2 in float32 would lose every digit of the variance."""
    apply_plan(monkeypatch, K, "many_splits")
    g = torch.Generator().manual_seed(1)
    x64 = randn((4, 3, 15, 17), torch.float64, g, shift=3000.0)
    x = to_layout(x64.float(), kind)
    m, v = K.batch_stats(x)
    v_exact = x.double().var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(m.double(), x.double().mean(dim=(0, 2, 3)), atol=3000 * 1e-6, rtol=0)
    torch.testing.assert_close(v.double(), v_exact, atol=0, rtol=1e-4)


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_repeated_runs_are_bit_identical(monkeypatch, kind):
    apply_plan(monkeypatch, K, "many_splits")
    x, dy, mean, invstd, weight, bias = _inputs((5, 4, 11, 9), torch.float32, kind, seed=2)
    count = x.numel() // x.shape[1]

    def run():
        stats = K.batch_stats(x)
        sums = K.backward_reduce(dy, x, mean, invstd, weight, bias)
        dx = K.backward_dx(dy, x, mean, invstd, weight, bias, *sums, count)
        return (*stats, *sums, dx)

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_the_split_beyond_rounding(monkeypatch):
    x, dy, mean, invstd, weight, bias = _inputs((4, 3, 19, 21), torch.float32, "nchw", seed=3)
    results = {}
    for plan in PLANS:
        apply_plan(monkeypatch, K, plan)
        results[plan] = (*K.batch_stats(x), *K.backward_reduce(dy, x, mean, invstd, weight, bias))
    for plan, values in results.items():
        for a, b in zip(values, results["one_tile"]):
            assert_close(a, b, torch.float32, plan)


def test_supports():
    assert K.supports(torch.randn(2, 3, 4, 5)) is None
    assert K.supports(torch.randn(2, 3, 4, 5, dtype=torch.bfloat16)) is None
    assert "dtype" in K.supports(torch.ones(2, 3, 4, 5, dtype=torch.int32))
    assert "4-D" in K.supports(torch.randn(2, 3, 4))


@pytest.mark.parametrize("kind", ["nchw", "channels_last"])
def test_plans_reach_multi_tile_and_multi_split_reductions(monkeypatch, kind):
    """Guards the tests above: on their main shape the plans give 1 tile, many tiles, many splits."""
    n, c, h, w = 3, 4, 17, 23
    x = to_layout(torch.randn(n, c, h, w), kind)
    seen = {}
    for plan in PLANS:
        apply_plan(monkeypatch, K, plan)
        block_a, block_b, _, split = K._reduce_plan(x, _host.layout_of(x))
        if kind == "nchw":  # tiles of block_a samples x block_b pixels
            tiles = -(-n // block_a) * -(-(h * w) // block_b)
        else:  # tiles of block_a pixels x block_b channels
            tiles = -(-(n * h * w) // block_a)
        seen[plan] = (tiles, split)
    assert seen["many_tiles"][0] > 4 and seen["many_tiles"][1] == 1
    assert seen["many_splits"][1] > 1 and seen["many_splits"][0] > seen["many_splits"][1]
    assert seen["one_tile"][1] == 1
