"""The CUDA kernel sets against float64 computations of their contracts, on the GPU or, without one,
in the CPU emulation of the kernels (nvae_fast.cuda.emulation).

Each case targets a code path of the kernels: 16-byte vector and scalar (odd sizes, unaligned storage)
loads, NCHW and NHWC, single-pass and split (two-phase) reductions, every stride/kernel-size branch of
the depthwise convolution, single and multiple tiles of the power iteration. The backend-agnostic op
suite (tests/ops) checks the ops end to end; these call the kernel-set functions directly.

Tolerances are relative to the scale of the compared values: the float64 oracle against the kernel's
output rounded to its dtype (float32 accumulation) -- see ``TOL``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nvae_fast
import nvae_fast.cuda as nvcuda

from .._tensors import in_layout, randn
from ._cases import KERNEL_DEVICE, needs_kernels

pytestmark = [needs_kernels]

# In the emulation every test runs for a device of 132 multiprocessors (the grids of an H100 / H200: split
# reductions on the larger shapes) and of 1 (grid-stride loops and single-pass reductions, which a real
# device takes only for large tensors); on a GPU once, for that GPU.
SM_COUNTS = ("132", "1") if nvae_fast.backend.cuda_emulated() else (None,)


@pytest.fixture(autouse=True, params=SM_COUNTS, ids=lambda sms: f"sms{sms}" if sms else "gpu")
def multiprocessors(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", request.param)

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KINDS = ("contiguous", "channels_last", "unaligned", "strided")
# (atol, rtol), atol relative to max |oracle|: results stored in this dtype (one final rounding) ...
TOL = {torch.float64: (1e-11, 1e-10), torch.float32: (2e-6, 2e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}
# ... and sums over many elements returned in the accumulation dtype.
ACC_TOL = {torch.float64: (1e-11, 1e-9), torch.float32: (2e-5, 1e-4)}


def dtype_id(d):
    return str(d).replace("torch.", "")


def close(actual, expected, dtype, acc=False):
    """assert_close with (atol, rtol) of ``dtype`` (ACC_TOL for accumulated sums, ``acc=True``); atol is
    scaled by the largest expected magnitude."""
    atol, rtol = (ACC_TOL if acc else TOL)[dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * max(scale, 1e-30), rtol=rtol)


def acc_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_input(shape, dtype, kind, seed, scale=1.0, shift=0.0):
    return in_layout(randn(*shape, dtype=dtype, seed=seed, scale=scale, shift=shift).to(KERNEL_DEVICE), kind)


# --- BN + Swish ----------------------------------------------------------------------------------------

# (2,3,5,7): odd sizes, scalar paths; (4,16,8,8): vector paths; (8,32,64,64): split reductions;
# (3,5,1,1): H = W = 1; (64,24,4,4): many rows, NHWC with C % 8 == 0 only for 16-bit types;
# (2,5,16,16): grid-stride steps of the element-wise passes that wrap the channel cursor (with few SMs).
BN_SHAPES = [(2, 3, 5, 7), (4, 16, 8, 8), (8, 32, 64, 64), (3, 5, 1, 1), (64, 24, 4, 4), (2, 5, 16, 16)]


def _bn_oracle(x, dy, mean, invstd, w, b):
    xd, dyd = x.double(), dy.double()
    sh = (1, -1, 1, 1)
    scale = (w.double() * invstd.double()).view(sh)
    shift = b.double().view(sh) - mean.double().view(sh) * scale
    z = xd * scale + shift
    s = torch.sigmoid(z)
    dz = dyd * s * (1 + z * (1 - s))
    xhat = (xd - mean.double().view(sh)) * invstd.double().view(sh)
    return z * s, dz, xhat, scale


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_bn_swish(dtype, kind, shape):
    acc = acc_of(dtype)
    x = kernel_input(shape, dtype, kind, 0, scale=2.0, shift=0.5)
    dy = kernel_input(shape, dtype, kind, 1)
    c = shape[1]
    w = randn(c, dtype=acc, seed=2, scale=0.5, shift=1.0).to(KERNEL_DEVICE)
    b = randn(c, dtype=acc, seed=3, scale=0.5).to(KERNEL_DEVICE)
    k = nvcuda.bn_swish

    mean, var = k.batch_stats(x)
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert mean.dtype == var.dtype == acc
    close(mean, mean_ref, acc, acc=True)
    close(var, var_ref, acc, acc=True)

    invstd = torch.rsqrt(var + 1e-5)
    y_ref, dz, xhat, scale = _bn_oracle(x, dy, mean, invstd, w, b)
    y = k.normalize(x, mean, invstd, w, b)
    assert y.dtype == dtype and y.stride() == x.contiguous(memory_format=_fmt(x)).stride()
    close(y, y_ref, dtype)

    sum_dz, sum_dz_xhat = k.backward_reduce(dy, x, mean, invstd, w, b)
    close(sum_dz, dz.sum((0, 2, 3)), acc, acc=True)
    close(sum_dz_xhat, (dz * xhat).sum((0, 2, 3)), acc, acc=True)

    n = x.numel() // c
    dx = k.backward_dx(dy, x, mean, invstd, w, b, sum_dz, sum_dz_xhat, n)
    sh = (1, -1, 1, 1)
    dx_ref = (dz - sum_dz.double().view(sh) / n - xhat * sum_dz_xhat.double().view(sh) / n) * scale
    close(dx, dx_ref, dtype)
    close(k.backward_dx(dy, x, mean, invstd, w, b, sum_dz, sum_dz_xhat, None), dz * scale, dtype)


def _fmt(x):
    return torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


@pytest.mark.parametrize("kind", ("contiguous", "channels_last"))
def test_bn_stats_large_mean(kind):
    """Welford/Chan statistics keep the variance of data far from zero (naive sum of squares would not)."""
    x = kernel_input((16, 8, 32, 32), torch.float32, kind, 4, scale=1e-2, shift=1e3)
    mean, var = nvcuda.bn_swish.batch_stats(x)
    var_ref, mean_ref = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var_ref, rtol=1e-3, atol=0)


@pytest.mark.parametrize("kind", ("contiguous", "channels_last"))
def test_bn_reductions_deterministic(kind):
    x = kernel_input((8, 32, 64, 64), torch.float16, kind, 5)
    dy = kernel_input((8, 32, 64, 64), torch.float16, kind, 6)
    k = nvcuda.bn_swish
    first = k.batch_stats(x)
    mean, var = first
    invstd = torch.rsqrt(var + 1e-5)
    ones = torch.ones_like(mean)
    sums = k.backward_reduce(dy, x, mean, invstd, ones, ones)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(k.batch_stats(x), first))
        assert all(torch.equal(a, b) for a, b in zip(k.backward_reduce(dy, x, mean, invstd, ones, ones), sums))


# --- depthwise convolution -----------------------------------------------------------------------------

# (shape, kernel, stride, padding)
DW_CASES = [
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1)),
    ((2, 16, 16, 16), (5, 5), (1, 1), (2, 2)),
    ((2, 16, 16, 16), (5, 5), (2, 2), (2, 2)),
    ((1, 8, 33, 31), (7, 7), (2, 2), (3, 3)),
    ((1, 8, 33, 31), (3, 5), (1, 2), (0, 3)),
    ((2, 24, 12, 10), (11, 11), (2, 1), (5, 5)),
    ((2, 24, 13, 12), (11, 11), (1, 1), (0, 0)),
    ((3, 40, 8, 8), (1, 1), (2, 2), (0, 0)),
    ((2, 32, 64, 64), (5, 5), (1, 1), (2, 2)),
    ((1, 4, 5, 5), (4, 4), (1, 1), (3, 3)),
    ((2, 9, 4, 4), (9, 9), (2, 2), (4, 4)),
    # the register-window kernel (stride 1, 3x3 / 5x5): odd heights leave a partial last row block,
    # padding above K - 1 makes backward_input's flipped padding negative, C = 17 defeats vector copies
    ((2, 5, 13, 11), (5, 5), (1, 1), (1, 3)),
    ((1, 6, 6, 19), (3, 3), (1, 1), (3, 0)),
    ((3, 17, 9, 5), (3, 3), (1, 1), (0, 1)),
    ((1, 16, 2, 40), (5, 5), (1, 1), (2, 2)),
]


def _dw_id(case):
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k[0]}x{k[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}"


@pytest.mark.parametrize("case", DW_CASES, ids=_dw_id)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_depthwise_conv2d(dtype, kind, case):
    shape, kernel, stride, padding = case
    acc = acc_of(dtype)
    c = shape[1]
    x = kernel_input(shape, dtype, kind, 10)
    w = randn(c, 1, *kernel, dtype=acc, seed=11, scale=0.3).to(KERNEL_DEVICE)
    b = randn(c, dtype=acc, seed=12).to(KERNEL_DEVICE)
    k = nvcuda.depthwise_conv2d
    dil = (1, 1)

    y = k.forward(x, w, b, stride, padding, dil)
    y_ref = F.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, c)
    assert y.shape == y_ref.shape and y.dtype == dtype
    close(y, y_ref, dtype)
    assert y.is_contiguous(memory_format=_fmt(x))

    dy = kernel_input(tuple(y.shape), dtype, kind, 13)
    dx = k.backward_input(dy, w, x.shape[2:], stride, padding, dil)
    dx_ref = torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), stride, padding, 1, c)
    close(dx, dx_ref, dtype)

    dw, db = k.backward_weight(dy, x, kernel, stride, padding, dil, True)
    dw_ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), stride, padding, 1, c)
    assert dw.dtype == db.dtype == acc and dw.shape == w.shape
    close(dw, dw_ref, acc, acc=True)
    close(db, dy.double().sum((0, 2, 3)), acc, acc=True)
    assert k.backward_weight(dy, x, kernel, stride, padding, dil, False)[1] is None


def test_depthwise_weight_grad_deterministic():
    x = kernel_input((16, 32, 32, 32), torch.bfloat16, "channels_last", 14)
    dy = kernel_input((16, 32, 32, 32), torch.bfloat16, "channels_last", 15)
    k = nvcuda.depthwise_conv2d
    first = k.backward_weight(dy, x, (5, 5), (1, 1), (2, 2), (1, 1), True)
    for _ in range(3):
        again = k.backward_weight(dy, x, (5, 5), (1, 1), (2, 2), (1, 1), True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


# --- squeeze-excitation --------------------------------------------------------------------------------

# (shape, hidden): odd sizes (scalar paths); one part per sample; many parts and blocks (split pooling);
# H = W = 1; C not a multiple of the 32-channel NHWC column block; hidden 1.
SE_SHAPES = [((2, 3, 5, 7), 4), ((4, 16, 8, 8), 4), ((2, 64, 64, 64), 4), ((5, 24, 1, 1), 6), ((3, 40, 9, 3), 5),
             ((2, 5, 16, 16), 1)]


def _se_oracle(x, dy, w1, b1, w2, b2, activation):
    """(y, mean, dx, dw1, db1, dw2, db2) in float64 by autograd of the reference (None for absent biases)."""
    from nvae_fast.ops.squeeze_excite import squeeze_excite_reference

    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w1, b1, w2, b2)]
    y = squeeze_excite_reference(*leaves, activation)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy.double())
    it = iter(grads)
    grads = [None if t is None else next(it) for t in leaves]
    return (y.detach(), leaves[0].detach().mean((2, 3)), *grads)


@pytest.mark.parametrize("case", SE_SHAPES, ids=lambda case: str(case[0]))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_squeeze_excite(dtype, kind, case):
    """forward and backward of the kernel set against float64 autograd: relu with biases in x's dtype, silu
    without biases in the accumulation dtype."""
    shape, hidden = case
    acc = acc_of(dtype)
    n, c, h, w = shape
    x = kernel_input(shape, dtype, kind, 20, shift=0.3)
    dy = kernel_input(shape, dtype, kind, 21)
    k = nvcuda.squeeze_excite
    for activation, wdtype, bias in (("relu", dtype, True), ("silu", acc, False)):
        w1 = randn(hidden, c, dtype=wdtype, seed=22, scale=c**-0.5).to(KERNEL_DEVICE)
        w2 = randn(c, hidden, dtype=wdtype, seed=23, scale=hidden**-0.5).to(KERNEL_DEVICE)
        b1 = randn(hidden, dtype=wdtype, seed=24).to(KERNEL_DEVICE) if bias else None
        b2 = randn(c, dtype=wdtype, seed=25).to(KERNEL_DEVICE) if bias else None
        y_ref, m_ref, dx_ref, dw1_ref, db1_ref, dw2_ref, db2_ref = _se_oracle(x, dy, w1, b1, w2, b2, activation)
        y, m, g = k.forward(x, w1, b1, w2, b2, activation)
        assert m.dtype == g.dtype == acc and m.shape == g.shape == (n, c)
        assert y.dtype == dtype and y.is_contiguous(memory_format=_fmt(x))
        close(m, m_ref, acc, acc=True)
        # The gate from the kernels' own mean (the oracle's gate is ill-conditioned where x sums to ~0).
        q = F.linear(m.double(), w1.double(), None if b1 is None else b1.double())
        a = F.relu(q) if activation == "relu" else F.silu(q)
        close(g, torch.sigmoid(F.linear(a, w2.double(), None if b2 is None else b2.double())), acc, acc=True)
        close(y, y_ref, dtype)
        dx, dw1, db1, dw2, db2 = k.backward(dy, x, m, g, w1, b1, w2, b2, activation)
        assert dx.dtype == dtype and dx.is_contiguous(memory_format=_fmt(x))
        close(dx, dx_ref, dtype)
        for got, ref, weight in ((dw1, dw1_ref, w1), (db1, db1_ref, b1), (dw2, dw2_ref, w2), (db2, db2_ref, b2)):
            if weight is None:
                assert got is None
                continue
            assert got.dtype == weight.dtype and got.shape == weight.shape
            close(got, ref, weight.dtype, acc=weight.dtype == acc)


# --- power iteration -----------------------------------------------------------------------------------

PI_SHAPES = [(3, 27), (64, 576), (300, 17), (1, 1000), (513, 257), (16, 16), (130, 8)]


def _pi_oracle(mats, us, vs, n_iter):
    out_u, out_v, sig = [], [], []
    for w, u, v in zip(mats, us, vs):
        wd, u, v = w.double(), u.double(), v.double()
        for _ in range(n_iter):
            v = F.normalize(wd.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(wd @ v, dim=0, eps=1e-12)
        out_u.append(u)
        out_v.append(v)
        sig.append(u @ wd @ v)
    return out_u, out_v, torch.stack(sig)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_power_iteration(dtype, n_iter):
    acc = acc_of(dtype)
    mats = [randn(*s, dtype=dtype, seed=30 + i, scale=0.2).to(KERNEL_DEVICE) for i, s in enumerate(PI_SHAPES)]
    mats.append(in_layout(randn(1, 1, 5, 24, dtype=dtype, seed=40).to(KERNEL_DEVICE), "unaligned").view(5, 24))
    us = [F.normalize(randn(m.shape[0], seed=50 + i), dim=0).to(KERNEL_DEVICE) for i, m in enumerate(mats)]
    vs = [F.normalize(randn(m.shape[1], seed=70 + i), dim=0).to(KERNEL_DEVICE) for i, m in enumerate(mats)]
    u_ref, v_ref, _ = _pi_oracle(mats, us, vs, n_iter)
    k = nvcuda.power_iteration
    k.update(mats, us, vs, n_iter)
    for got, want in zip(us + vs, u_ref + v_ref):
        close(got, want, got.dtype, acc=True)  # u, v are float32 buffers: written back rounded to float32
    sig = k.sigmas(mats, us, vs)
    assert sig.dtype == acc and sig.shape == (len(mats),)
    close(sig, _pi_oracle(mats, us, vs, 0)[2], acc, acc=True)  # sigma of the u, v as stored
    assert torch.equal(sig, k.sigmas(mats, us, vs))


def test_power_iteration_mixed_dtypes_and_buffers():
    mats = [randn(8, 12, dtype=torch.float16, seed=80).to(KERNEL_DEVICE), randn(5, 7, dtype=torch.float64, seed=81).to(KERNEL_DEVICE)]
    us = [randn(8, dtype=torch.float16, seed=82).to(KERNEL_DEVICE), randn(5, dtype=torch.float64, seed=83).to(KERNEL_DEVICE)]
    vs = [randn(12, seed=84).to(KERNEL_DEVICE), randn(7, seed=85).to(KERNEL_DEVICE)]
    u_ref, v_ref, _ = _pi_oracle([m.float() for m in mats], [u.float() for u in us], vs, 2)
    nvcuda.power_iteration.update(mats, us, vs, 2)
    assert us[0].dtype == torch.float16 and us[1].dtype == torch.float64
    close(us[0], u_ref[0], torch.float16)
    close(us[1], u_ref[1], torch.float32, acc=True)
    close(vs[1], v_ref[1], torch.float32, acc=True)
