"""The CUDA training ops of BN+Swish (``bn_swish_train_forward``, ``bn_swish_backward``) on both plans.

Each plan is checked against float64 computations on fresh random inputs (odd shapes, NCHW,
channels_last, unaligned and strided storage, every float dtype), at its boundary (the largest slice
that takes the resident plan and the smallest that does not, for the device the emulation models:
227 KiB of opt-in shared memory), for the in-kernel running-statistics update against torch's
BatchNorm, for the launches the host code makes (one per direction, the kernel of the plan that
:func:`nvae_fast.cuda.bn_swish.plan` names), for the two-pass plan over several runs of channels (an
emulated L2 of a few channels) and for running no ATen op besides allocation in a
training step through :func:`nvae_fast.ops.bn_swish`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nvae_fast
import nvae_fast.cuda as nvcuda
from nvae_fast.ops import bn_swish

from .._dispatch import RecordedOps
from .._tensors import in_layout, randn
from ._cases import KERNEL_DEVICE, needs_kernels

pytestmark = [needs_kernels]

K = nvcuda.bn_swish
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# (atol relative to max |oracle|, rtol): outputs rounded to their dtype; sums in the accumulation dtype
TOL = {torch.float64: (1e-11, 1e-10), torch.float32: (4e-6, 4e-5), torch.float16: (1e-3, 2e-3),
       torch.bfloat16: (8e-3, 1.6e-2)}
ACC_TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 1e-4)}
MOMENTUM, EPS = 0.2, 1e-5


def close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * max(scale, 1e-30), rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def acc_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _case(shape, dtype, kind, seed):
    acc = acc_of(dtype)
    c = shape[1]
    x = in_layout(randn(*shape, dtype=dtype, seed=seed, scale=1.7, shift=0.4).to(KERNEL_DEVICE), kind)
    dy = in_layout(randn(*shape, dtype=dtype, seed=seed + 1).to(KERNEL_DEVICE), kind)
    w = randn(c, dtype=acc, seed=seed + 2, scale=0.5, shift=1.0).to(KERNEL_DEVICE)
    b = randn(c, dtype=acc, seed=seed + 3, scale=0.5).to(KERNEL_DEVICE)
    return x, dy, w, b


def _check(shape, dtype, kind, seed=0):
    """train_forward and backward (training and eval) of one input against float64 autograd of the
    reference, running statistics against torch's BatchNorm2d in float64."""
    x, dy, w, b = _case(shape, dtype, kind, seed)
    acc = acc_of(dtype)
    c, n = shape[1], x.numel() // shape[1]
    bn = torch.nn.BatchNorm2d(c, eps=EPS, momentum=MOMENTUM).double()
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
        bn.running_mean.copy_(randn(c, dtype=torch.float64, seed=seed + 4))
        bn.running_var.copy_(randn(c, dtype=torch.float64, seed=seed + 5).abs() + 0.5)
    rm, rv = bn.running_mean.to(acc, copy=True), bn.running_var.to(acc, copy=True)
    x64 = x.double().requires_grad_()
    y_ref = F.silu(bn(x64))

    y, mean, invstd = K.train_forward(x, w, b, rm, rv, MOMENTUM, EPS)
    assert y.dtype == dtype and mean.dtype == invstd.dtype == acc
    assert y.stride() == x.contiguous(memory_format=_fmt(x)).stride()
    close(y, y_ref.detach(), dtype, "y")
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    atol, rtol = ACC_TOL[acc]
    torch.testing.assert_close(mean.double(), mean_ref, atol=atol * mean_ref.abs().max().item() + 1e-30, rtol=rtol)
    torch.testing.assert_close(invstd.double(), (var_ref + EPS).rsqrt(), atol=0, rtol=rtol)
    torch.testing.assert_close(rm.double(), bn.running_mean, atol=atol, rtol=rtol)
    torch.testing.assert_close(rv.double(), bn.running_var, atol=atol, rtol=rtol)

    dx_ref, dw_ref, db_ref = torch.autograd.grad(y_ref, (x64, bn.weight, bn.bias), dy.double())
    dx, sum_dz, sum_dz_xhat = K.backward(dy, x, mean, invstd, w, b, n)
    assert dx.dtype == dtype and dx.stride() == y.stride()
    close(dx, dx_ref, dtype, "dx")
    for what, got, want in (("dbias", sum_dz, db_ref), ("dweight", sum_dz_xhat, dw_ref)):
        torch.testing.assert_close(got.double(), want, atol=atol * want.abs().max().item(), rtol=rtol,
                                   msg=lambda m, what=what: f"{what}: {m}")

    # eval: dx = weight invstd dz with the given statistics
    dx_eval, _, _ = K.backward(dy, x, mean, invstd, w, b, None)
    sh = (1, -1, 1, 1)
    scale = (w.double() * invstd.double()).view(sh)
    z = x.double() * scale + (b.double() - mean.double() * scale.flatten()).view(sh)
    s = torch.sigmoid(z)
    close(dx_eval, dy.double() * s * (1 + z * (1 - s)) * scale, dtype, "eval dx")


def _fmt(x):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# odd sizes (scalar paths), vector paths, C not a multiple of the NHWC group, H = W = 1
SHAPES = [(2, 3, 5, 7), (4, 16, 8, 8), (3, 19, 4, 6), (7, 40, 1, 1), (2, 33, 6, 10)]
KINDS = ("contiguous", "channels_last", "unaligned", "strided")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_resident(dtype, kind, shape):
    x = _case(shape, dtype, kind, 0)[0]
    assert K.plan(x) == K.plan(x, backward=True) == "resident"
    _check(shape, dtype, kind)


# Boundaries of the resident plan on the emulated sm_90 (232448 bytes of opt-in shared memory per block;
# 512 threads keep 16 vectors of x, or 8 of dy and 8 of x, in registers, the rest goes to shared memory
# after 224 (forward) / 160 (backward) bytes of scratch). NCHW float32 forward: 8192 + 58056 single
# values (odd H*W), 8192 + 14514 16-byte vectors; backward: 4096 + 7259 vectors; channels_last bfloat16
# with C = 3 (groups shrink to one channel of single values) backward: 4096 + 58072 values.
BOUNDARY = [
    ((1, 2, 1, 66247), torch.float32, "contiguous", "resident", "l2_blocked"),
    ((1, 2, 1, 66249), torch.float32, "contiguous", "l2_blocked", "l2_blocked"),
    ((1, 2, 4, 22706), torch.float32, "contiguous", "resident", "l2_blocked"),
    ((1, 2, 4, 22707), torch.float32, "contiguous", "l2_blocked", "l2_blocked"),
    ((1, 2, 4, 11355), torch.float32, "contiguous", "resident", "resident"),
    ((1, 2, 4, 11356), torch.float32, "contiguous", "resident", "l2_blocked"),
    ((1, 3, 1, 62168), torch.bfloat16, "channels_last", "resident", "resident"),
    ((1, 3, 1, 62169), torch.bfloat16, "channels_last", "resident", "l2_blocked"),
    ((3, 5, 200, 199), torch.float16, "contiguous", "resident", "l2_blocked"),
]


@pytest.mark.parametrize("shape, dtype, kind, fwd_plan, bwd_plan", BOUNDARY, ids=str)
def test_plan_boundaries(shape, dtype, kind, fwd_plan, bwd_plan):
    x = _case(shape, dtype, kind, 7)[0]
    assert (K.plan(x), K.plan(x, backward=True)) == (fwd_plan, bwd_plan)
    _check(shape, dtype, kind, seed=7)


@pytest.mark.parametrize("kind", ("contiguous", "channels_last"))
def test_l2_blocked_statistics_are_exact_for_a_large_offset(kind):
    """Per-part Welford accumulators merged by Chan's formula keep the variance of data far from zero."""
    x = in_layout(randn(3, 4, 180, 170, dtype=torch.float32, seed=9, scale=1e-2, shift=1e3), kind)
    assert K.plan(x) == "l2_blocked"
    ones = torch.ones(4)
    _, mean, invstd = K.train_forward(x, ones, torch.zeros(4), None, None, 0.1, EPS)
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(invstd.double(), (var_ref + EPS).rsqrt(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("l2_bytes, shape", [(800_000, (3, 5, 180, 170)), (1_600_000, (3, 5, 180, 170))], ids=str)
def test_l2_blocked_over_runs_of_channels(monkeypatch, l2_bytes, shape):
    """An emulated L2 of 800 KB (1.6 MB) gives runs of 1 (2) channels of 367 KB each forward and 1 backward:
    every run waits only for its own first pass, the last run is shorter than the others."""
    monkeypatch.setenv("NVAE_FAST_EMULATE_L2_BYTES", str(l2_bytes))
    x = _case(shape, torch.float32, "contiguous", 11)[0]
    assert (K.plan(x), K.plan(x, backward=True)) == ("l2_blocked", "l2_blocked")
    _check(shape, torch.float32, "contiguous", seed=11)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 4, 180, 170)], ids=["resident", "l2_blocked"])
@pytest.mark.parametrize("kind", ("contiguous", "channels_last"))
def test_deterministic(kind, shape):
    x, dy, w, b = _case(shape, torch.float32, kind, 3)
    first = K.train_forward(x, w, b, None, None, 0.1, EPS)
    grads = K.backward(dy, x, first[1], first[2], w, b, x.numel() // shape[1])
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(K.train_forward(x, w, b, None, None, 0.1, EPS), first))
        assert all(torch.equal(a, b) for a, b in zip(K.backward(dy, x, first[1], first[2], w, b, x.numel() // shape[1]), grads))


def test_running_stats_of_another_dtype_are_updated_through_a_copy():
    x, _, w, b = _case((4, 6, 5, 5), torch.bfloat16, "contiguous", 5)
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    _, mean, _ = K.train_forward(x, w, b, rm, rv, 0.5, EPS)
    var = x.double().var(dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(rm, 0.5 * mean.double())
    torch.testing.assert_close(rv, 0.5 + 0.5 * var, rtol=1e-5, atol=0)


def test_one_value_per_channel_is_rejected():
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        nvcuda._library.ops().bn_swish_train_forward(torch.ones(1, 2, 1, 1), torch.ones(2), torch.ones(2), None, None,
                                                    0.1, EPS)


# --- launches (the host code on a recorder of a 132-SM device; kernels do not run) -----------------------

@pytest.fixture(scope="module")
def record():
    if torch.cuda.is_available():
        pytest.skip("the recorded launches do not depend on the machine: checked on CPU-only runs")
    from . import _launches

    _launches.load()
    return _launches.launches


LAUNCH_CASES = [
    ((32, 128, 32, 32), torch.float32, torch.contiguous_format),
    ((32, 128, 32, 32), torch.bfloat16, torch.channels_last),
    ((16, 64, 64, 64), torch.float32, torch.contiguous_format),
    ((16, 64, 64, 64), torch.bfloat16, torch.channels_last),
    ((16, 3072, 8, 8), torch.float32, torch.channels_last),
    ((4, 30, 256, 256), torch.bfloat16, torch.contiguous_format),
    ((32, 768, 32, 32), torch.float32, torch.contiguous_format),
] + [(shape, dtype, torch.channels_last if kind == "channels_last" else torch.contiguous_format)
     for shape, dtype, kind, _, _ in BOUNDARY]


@pytest.mark.parametrize("shape, dtype, fmt", LAUNCH_CASES, ids=str)
def test_launches_follow_the_plan(record, shape, dtype, fmt):
    """One launch on either plan: on the resident plan (with shared memory past the 48 KiB default only with
    the opt-in, which the emulation checks when it runs) one block per channel group, on the l2_blocked
    plan the two-pass kernel with two blocks (one per pass) per part of every channel group."""
    x = torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)
    acc = acc_of(dtype)
    c = shape[1]
    vec = torch.empty(c, dtype=acc)
    for backward, launches in (
        (False, record("bn_swish_train_forward", x, vec, vec, vec, vec, 0.1, EPS)),
        (True, record("bn_swish_backward", x, x, vec, vec, vec, vec, x.numel() // c)),
    ):
        plan = K.plan(x, backward)
        direction = "backward" if backward else "forward"
        assert len(launches) == 1, launches
        (launch,) = launches
        if plan == "resident":
            assert launch.name == f"bn_train_{direction}_kernel", launch
            assert launch.smem <= 227 * 1024
            if fmt == torch.contiguous_format:
                assert launch.grid == (c, 1, 1)
        else:
            assert launch.name == f"bn_train_{direction}_two_pass_kernel", launch
            assert launch.smem <= 48 * 1024 and launch.grid[1:] == (1, 1)
            if fmt == torch.contiguous_format:  # one channel per group: 2 x C x parts blocks
                assert launch.grid[0] % (2 * c) == 0 and launch.grid[0] >= 2 * c, launch


# --- no ATen op but allocation in a training step ----------------------------------------------------------

ALLOCATION = {"empty.memory_format", "empty_strided.default", "empty_like.default"}


@pytest.mark.parametrize("kind", ("contiguous", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_training_step_runs_only_the_kernels(kind, dtype):
    """Forward and backward of a training call: the two custom ops (and allocations), no other ATen op
    (no running-stat arithmetic, rsqrt or casts on the host side)."""
    x, dy, _, _ = _case((4, 8, 6, 6), dtype, kind, 11)
    w = torch.ones(8, requires_grad=True)
    b = torch.zeros(8, requires_grad=True)
    rm, rv = torch.zeros(8), torch.ones(8)
    x.requires_grad_()
    with nvae_fast.use_backend("cuda"):
        torch.autograd.grad(bn_swish(x, w, b, rm.clone(), rv.clone(), True), x, dy)  # resolves the backend first
        with RecordedOps() as fwd:
            y = bn_swish(x, w, b, rm, rv, True)
        with RecordedOps() as bwd:
            torch.autograd.grad(y, (x, w, b), dy)
    for what, mode, op in (("forward", fwd, "bn_swish_train_forward"), ("backward", bwd, "bn_swish_backward")):
        names = [f"{f.namespace}.{f._opname}" if f.namespace != "aten" else f"aten.{f._opname}.{f._overloadname}"
                 for f in mode.funcs]
        custom = [name for name in names if not name.startswith("aten.")]
        other = [name for name in names if name.startswith("aten.") and name[5:] not in ALLOCATION]
        assert [name.split(".")[1] for name in custom] == [op], (what, names)
        assert other == [], (what, names)
