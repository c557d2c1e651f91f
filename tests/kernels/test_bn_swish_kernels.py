"""Kernel-level tests of ``nvae_fast.kernels.bn_swish`` against the op's ATen kernel set.

Every kernel-set function runs on identical inputs through Triton (the interpreter on a CPU machine)
and through :class:`nvae_fast.ops.bn_swish.TorchKernels`; tolerances are in ``_plans.TOLERANCES``.
Plans (``_plans.PLANS``) force multi-tile and multi-split reductions on small shapes. The optional
one-read ``train_forward`` is checked against ``TorchKernels.batch_stats`` + ``normalize``, at and
past its size limit, and through the op, which must take it exactly when it applies.
"""

from __future__ import annotations

import pytest
import torch
import triton

import nvae_fast
from nvae_fast.kernels import _host
from nvae_fast.kernels import bn_swish as K
from nvae_fast.ops import bn_swish, bn_swish_reference
from nvae_fast.ops.bn_swish import TorchKernels as T

from .._dispatch import RecordedOps
from .._tensors import LAYOUTS, OTHER_LAYOUT, in_layout, randn
from ._plans import CONFIGS, PLANS, apply_plan, assert_close, assert_same_layout

SHAPES = [(3, 4, 17, 23), (6, 5, 1, 1)]


def _inputs(shape, dtype, kind, param_dtype=None, seed=0):
    """x (mean 0.7, std 1.6) in layout ``kind``, dy in another layout, and per-channel tensors."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    param_dtype = param_dtype or acc
    x = in_layout(randn(shape, dtype=dtype, generator=g, scale=1.6, shift=0.7), kind)
    dy = in_layout(randn(shape, dtype=dtype, generator=g), OTHER_LAYOUT[kind])
    mean = randn(c, dtype=acc, generator=g, scale=0.3, shift=0.7)
    invstd = randn(c, dtype=acc, generator=g, scale=0.1, shift=0.6)
    weight = randn(c, dtype=param_dtype, generator=g, shift=0.5)
    bias = randn(c, dtype=param_dtype, generator=g, scale=0.5)
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


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("plan", ["one_tile", "many_splits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_lower_precision_matches_torch_kernels(monkeypatch, dtype, plan, kind):
    """Half inputs take weight/bias in their own dtype here (the op may pass float32 ones too)."""
    apply_plan(monkeypatch, K, plan)
    param_dtype = dtype if dtype != torch.float32 else None
    _check_all(*_inputs((3, 5, 13, 7), dtype, kind, param_dtype), dtype)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_statistics_are_exact_for_a_large_offset(monkeypatch, kind):
    """float32 x = 3000 + N(0, 1): E[x^2] - E[x]^2 in float32 would lose every digit of the variance."""
    apply_plan(monkeypatch, K, "many_splits")
    g = torch.Generator().manual_seed(1)
    x64 = randn((4, 3, 15, 17), dtype=torch.float64, generator=g, shift=3000.0)
    x = in_layout(x64.float(), kind)
    m, v = K.batch_stats(x)
    v_exact = x.double().var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(m.double(), x.double().mean(dim=(0, 2, 3)), atol=3000 * 1e-6, rtol=0)
    torch.testing.assert_close(v.double(), v_exact, atol=0, rtol=1e-4)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
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
    x, dy, mean, invstd, weight, bias = _inputs((4, 3, 19, 21), torch.float32, "contiguous", seed=3)
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
    assert "int32" in K.supports(torch.empty(2**16, 2**15, 1, 1, device="meta"))  # 2**31 elements


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_plans_reach_multi_tile_and_multi_split_reductions(monkeypatch, kind):
    """Guards the tests above: on their main shape the plans give 1 tile, many tiles, many splits."""
    n, c, h, w = 3, 4, 17, 23
    x = in_layout(torch.randn(n, c, h, w), kind)
    seen = {}
    for plan in PLANS:
        apply_plan(monkeypatch, K, plan)
        block_a, block_b, _, split = K._reduce_plan(x, _host.layout_of(x))
        if kind == "contiguous":  # tiles of block_a samples x block_b pixels
            tiles = -(-n // block_a) * -(-(h * w) // block_b)
        else:  # tiles of block_a pixels x block_b channels
            tiles = -(-(n * h * w) // block_a)
        seen[plan] = (tiles, split)
    assert seen["many_tiles"][0] > 4 and seen["many_tiles"][1] == 1
    assert seen["many_splits"][1] > 1 and seen["many_splits"][0] > seen["many_splits"][1]
    assert seen["one_tile"][1] == 1


# ------------------------------------------------------------------------------ one-read train_forward

EPS = 1e-5


MOMENTUM = 0.3


def _check_train_forward(x, weight, bias, dtype):
    """train_forward matches TorchKernels.batch_stats + normalize, and its in-place update of the running
    statistics (float32 ones, and float64 ones that the kernel set updates through a copy) the formula
    r <- (1 - m) r + m s with the unbiased variance."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c, n = x.shape[1], x.numel() // x.shape[1]
    g = torch.Generator().manual_seed(11)
    rm0 = randn((c,), dtype=torch.float64, generator=g)
    rv0 = randn((c,), dtype=torch.float64, generator=g).abs() + 0.5
    for running_dtype in (acc, torch.float64 if acc == torch.float32 else torch.float32):
        rm, rv = rm0.to(running_dtype, copy=True), rv0.to(running_dtype, copy=True)
        y, m, invstd = K.train_forward(x, weight, bias, rm, rv, MOMENTUM, EPS)
        m_ref, v_ref = T.batch_stats(x)
        assert m.dtype == invstd.dtype == acc and y.dtype == x.dtype
        assert_same_layout(y, x, "train_forward")
        assert_close(m, m_ref, acc, "train_forward mean")
        assert_close(invstd, torch.rsqrt(v_ref + EPS), acc, "train_forward invstd")
        y_ref = T.normalize(x, m_ref, torch.rsqrt(v_ref + EPS), weight, bias)
        assert_close(y, y_ref, dtype, "train_forward y")
        rm_ref = (1 - MOMENTUM) * rm0 + MOMENTUM * m_ref.double()
        rv_ref = (1 - MOMENTUM) * rv0 + MOMENTUM * v_ref.double() * n / (n - 1)
        assert rm.dtype == rv.dtype == running_dtype
        tol = torch.float32 if torch.float32 in (acc, running_dtype) else torch.float64
        assert_close(rm, rm_ref.to(running_dtype), tol, "running_mean")
        assert_close(rv, rv_ref.to(running_dtype), tol, "running_var")


# odd shapes; channels_last: C = 19 and 33 are no multiples of the channel block
TRAIN_SHAPES = [(3, 5, 13, 7), (1, 19, 5, 3), (6, 3, 1, 1), (2, 33, 1, 1), (2, 1, 9, 11)]


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_train_forward_matches_torch_kernels(dtype, kind, shape):
    """Half x with weight/bias in x's dtype (the op may pass float32 ones: see the next test)."""
    x, _, _, _, weight, bias = _inputs(shape, dtype, kind, dtype if dtype != torch.float32 else None, seed=4)
    _check_train_forward(x, weight, bias, dtype)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_train_forward_takes_float32_params_with_half_x(kind):
    x, _, _, _, weight, bias = _inputs((2, 21, 5, 7), torch.bfloat16, kind, torch.float32, seed=5)
    _check_train_forward(x, weight, bias, torch.bfloat16)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_train_forward_statistics_are_exact_for_a_large_offset(kind):
    """float32 x = 3000 + N(0, 1): only a centred second pass keeps the variance's digits."""
    g = torch.Generator().manual_seed(6)
    x = in_layout(randn((4, 3, 15, 17), dtype=torch.float64, generator=g, shift=3000.0).float(), kind)
    _, m, invstd = K.train_forward(x, torch.ones(3), torch.zeros(3), None, None, 0.1, EPS)
    x64 = x.double()
    torch.testing.assert_close(m.double(), x64.mean(dim=(0, 2, 3)), atol=3000 * 1e-6, rtol=0)
    var = x64.var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(invstd.double(), (var + EPS).rsqrt(), atol=0, rtol=1e-4)


# (shape, dtype, layout, fits): N*H*W at the limit (16384 float32 / 8192 float64 accumulators) and
# just past it; 3 * 65 * 64 = 12480 is under the limit but its NCHW tile pads to 4 x 8192.
LIMIT_CASES = [
    ((2, 3, 64, 128), torch.float32, "contiguous", True),
    ((2, 3, 64, 129), torch.float32, "contiguous", False),
    ((1, 2, 128, 128), torch.float16, "channels_last", True),
    ((1, 2, 129, 128), torch.float16, "channels_last", False),
    ((2, 2, 64, 64), torch.float64, "contiguous", True),
    ((2, 2, 64, 65), torch.float64, "channels_last", False),
    ((3, 2, 65, 64), torch.float32, "contiguous", False),
]


def _case_id(value):
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value).replace("torch.", "")


@pytest.mark.parametrize("shape, dtype, kind, fits", LIMIT_CASES, ids=_case_id)
def test_train_forward_reads_once_up_to_its_limit_only(monkeypatch, shape, dtype, kind, fits):
    """Past the limit train_forward takes the two-pass kernel (two reads of x in one launch); right either
    way."""
    x, _, _, _, weight, bias = _inputs(shape, dtype, kind, seed=7)
    launched = _count_launches(monkeypatch)
    _check_train_forward(x, weight, bias, dtype)
    one = "nhwc" if kind == "channels_last" else "nchw"
    two_pass = ["_bn_train_forward_two_pass_kernel"]
    expected = [f"_bn_train_forward_{one}_kernel"] if fits else two_pass
    assert launched == expected * 2  # two calls: see _check_train_forward


def test_train_forward_of_empty_x_takes_two_passes(monkeypatch):
    calls = _record_calls(monkeypatch, ("batch_stats", "normalize"))
    y, mean, invstd = K.train_forward(torch.randn(0, 3, 4, 5), torch.ones(3), torch.zeros(3), None, None, 0.1, EPS)
    assert y.shape == (0, 3, 4, 5) and mean.shape == invstd.shape == (3,)
    assert calls == ["batch_stats", "normalize"]


def _record_calls(monkeypatch, names):
    """Wrap the kernel-set functions ``names`` so that each call appends its name to the returned list."""
    calls = []
    for name in names:
        def spy(*args, _name=name, _original=getattr(K, name)):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(K, name, spy)
    return calls


@pytest.mark.parametrize("shape, one_read", [((2, 3, 64, 128), True), ((2, 3, 64, 129), False)],
                         ids=["at_limit", "past_limit"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_op_takes_the_one_read_path_exactly_when_it_fits(monkeypatch, kind, shape, one_read):
    """Through ``bn_swish`` on the triton backend: training calls train_forward, which takes the two-pass
    kernel past the one-read limit; eval never calls train_forward. Outputs, running statistics and gradients
    match the float64 reference on both paths (float32 tolerances of the op suite)."""
    calls = _record_calls(monkeypatch, ("train_forward", "batch_stats", "normalize"))
    launched = _count_launches(monkeypatch)
    g = torch.Generator().manual_seed(8)
    x = in_layout(randn(shape, dtype=torch.float32, generator=g, scale=1.6, shift=0.7), kind).requires_grad_()
    weight = randn(3, dtype=torch.float32, generator=g, shift=1.0).requires_grad_()
    bias = randn(3, dtype=torch.float32, generator=g, scale=0.5).requires_grad_()
    rm, rv = randn(3, dtype=torch.float32, generator=g, scale=0.3), randn(3, dtype=torch.float32, generator=g).abs() + 0.5
    rm64, rv64 = rm.double(), rv.double()
    with nvae_fast.use_backend("triton"):
        y = bn_swish(x, weight, bias, rm, rv, True)
    assert calls == ["train_forward"]
    one = "nhwc" if kind == "channels_last" else "nchw"
    assert launched == ([f"_bn_train_forward_{one}_kernel"] if one_read
                        else ["_bn_train_forward_two_pass_kernel"])
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = bn_swish_reference(*leaves, rm64, rv64, True)
    dy = randn(shape, dtype=torch.float32, generator=g)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.double())
    tol = dict(atol=1e-4, rtol=1e-4)  # float32 outputs and 16k-term sums against float64
    torch.testing.assert_close(y.double(), y_ref, **tol)
    for what, a, b in zip(("dx", "dweight", "dbias"), grads, grads_ref):
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda m: f"{what}: {m}")
    torch.testing.assert_close(rm.double(), rm64, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rv.double(), rv64, atol=1e-6, rtol=1e-6)
    calls.clear()
    with nvae_fast.use_backend("triton"):
        bn_swish(x.detach(), weight, bias, rm, rv, False)
    assert calls == ["normalize"]


# ------------------------------------------------------------------------- launches and plans of training


def _count_launches(monkeypatch, run=True):
    """Wrap every Triton kernel of the module so that each launch appends the kernel's name to the list
    returned (and runs, unless ``run`` is false)."""
    launched = []

    class Counted:
        def __init__(self, name, kernel):
            self._name, self._kernel = name, kernel

        def __getitem__(self, grid):
            launch = self._kernel[grid]

            def record(*args, **kwargs):
                launched.append(self._name)
                return launch(*args, **kwargs) if run else None

            return record

    for name in dir(K):  # the launched kernels (jit or interpreted), not the device functions they call
        if name.endswith("_kernel") and isinstance(getattr(K, name), triton.runtime.jit.KernelInterface):
            monkeypatch.setattr(K, name, Counted(name, getattr(K, name)))
    return launched


# (shape, dtype, layout, forward plan, backward plan): the backward's one-read limit is half the forward's
PLAN_CASES = [
    ((2, 3, 64, 64), torch.float32, "contiguous", "one_read", "one_read"),
    ((2, 3, 64, 65), torch.float32, "contiguous", "one_read", "two_pass"),
    ((1, 2, 64, 128), torch.bfloat16, "channels_last", "one_read", "one_read"),
    ((1, 2, 65, 128), torch.bfloat16, "channels_last", "one_read", "two_pass"),
    ((2, 2, 32, 64), torch.float64, "contiguous", "one_read", "one_read"),
    ((2, 2, 32, 65), torch.float64, "channels_last", "one_read", "two_pass"),
    ((2, 3, 64, 129), torch.float32, "channels_last", "two_pass", "two_pass"),
]


@pytest.mark.parametrize("shape, dtype, kind, fwd_plan, bwd_plan", PLAN_CASES, ids=_case_id)
def test_training_launches_follow_the_plan(monkeypatch, shape, dtype, kind, fwd_plan, bwd_plan):
    """One launch per direction on either plan (running statistics updated in it); running statistics, dx
    and the sums match TorchKernels either way."""
    x, dy, _, _, weight, bias = _inputs(shape, dtype, kind, seed=12)
    assert (K.plan(x), K.plan(x, backward=True)) == (fwd_plan, bwd_plan)
    launched = _count_launches(monkeypatch)
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rm, rv = torch.zeros(c, dtype=acc), torch.ones(c, dtype=acc)
    _, mean, invstd = K.train_forward(x, weight, bias, rm, rv, 0.1, EPS)
    forward = list(launched)
    rm_ref, rv_ref = torch.zeros(c, dtype=acc), torch.ones(c, dtype=acc)
    T.train_forward(x, weight, bias, rm_ref, rv_ref, 0.1, EPS)
    assert_close(rm, rm_ref, acc, "running_mean")
    assert_close(rv, rv_ref, acc, "running_var")
    launched.clear()
    backward = []
    for count in (x.numel() // c, None):
        dx, sum_dz, sum_dz_xhat = K.backward(dy, x, mean, invstd, weight, bias, count)
        backward = backward or list(launched)  # the training call's
        ref = T.backward(dy, x, mean, invstd, weight, bias, count)
        assert_same_layout(dx, x, "backward")
        assert_close(dx, ref[0], dtype, "dx")
        assert_close(sum_dz, ref[1], acc, "sum_dz")
        assert_close(sum_dz_xhat, ref[2], acc, "sum_dz_xhat")
    one = "nhwc" if kind == "channels_last" else "nchw"
    if fwd_plan == "one_read":
        assert forward == [f"_bn_train_forward_{one}_kernel"]
    else:
        assert forward == ["_bn_train_forward_two_pass_kernel"]
    if bwd_plan == "one_read":
        assert backward == [f"_bn_backward_one_read_{one}_kernel"]
    else:
        assert backward == ["_bn_backward_two_pass_kernel"]


ALLOCATION = {"aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default"}


@pytest.mark.parametrize("shape, one_read", [((4, 8, 6, 6), True), ((2, 8, 64, 129), False)],
                         ids=["one_read", "two_pass"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_training_step_runs_only_the_kernels(monkeypatch, kind, shape, one_read):
    """A training forward and backward through ``bn_swish``: one launch each on the one_read plans, two on
    the two-pass plans, no ATen op besides allocating outputs (the interpreter's own tensor copies are
    kept out by not running the kernels)."""
    x, dy, _, _, _, _ = _inputs(shape, torch.float32, kind, seed=13)
    dy = dy.contiguous(memory_format=x_format(x))
    x.requires_grad_()
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    rm, rv = torch.zeros(8), torch.ones(8)
    with nvae_fast.use_backend("triton"):
        torch.autograd.grad(bn_swish(x, w, b, rm.clone(), rv.clone(), True), (x, w, b), dy)  # resolves the backend
        launched = _count_launches(monkeypatch, run=False)
        with RecordedOps() as fwd:
            y = bn_swish(x, w, b, rm, rv, True)
        forward = list(launched)
        with RecordedOps() as bwd:
            torch.autograd.grad(y, (x, w, b), dy)
    one = "nhwc" if kind == "channels_last" else "nchw"
    if one_read:
        assert forward == [f"_bn_train_forward_{one}_kernel"]
        assert launched[len(forward):] == [f"_bn_backward_one_read_{one}_kernel"]
    else:
        assert forward == ["_bn_train_forward_two_pass_kernel"]
        assert launched[len(forward):] == ["_bn_backward_two_pass_kernel"]
    for what, mode in (("forward", fwd), ("backward", bwd)):
        assert [op for op in mode.ops if op not in ALLOCATION] == [], (what, mode.ops)


def x_format(x):
    return torch.channels_last if not x.is_contiguous() else torch.contiguous_format


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_case_id)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_two_pass_plans_run_in_channel_runs_sized_to_the_l2(monkeypatch, kind, dtype):
    """Past the one-read limit the two passes run per run of channels whose inputs take at most half the L2
    (the second pass finds the run's inputs in L2), all in one launch: here an L2 of 4 channels of x, so
    forward runs of 4 channels (the last of 3) and backward runs of 2; outputs, running statistics and sums
    as TorchKernels', and the ticket counters left zeroed."""
    shape = (2, 11, 64, 129)
    x, dy, _, _, weight, bias = _inputs(shape, dtype, kind, seed=14)
    per_channel = shape[0] * shape[2] * shape[3] * x.element_size()
    monkeypatch.setattr(_host, "half_l2_bytes", lambda device: 4 * per_channel)
    launched = _count_launches(monkeypatch)
    one = "nhwc" if kind == "channels_last" else "nchw"
    acc = torch.float32
    rm, rv, rm_ref, rv_ref = torch.zeros(11), torch.ones(11), torch.zeros(11), torch.ones(11)
    y, mean, invstd = K.train_forward(x, weight, bias, rm, rv, 0.1, EPS)
    assert launched == ["_bn_train_forward_two_pass_kernel"]
    ref = T.train_forward(x, weight, bias, rm_ref, rv_ref, 0.1, EPS)
    assert_close(y, ref[0], dtype, "y")
    sums = dict(rtol=1e-5, atol=1e-5)  # 16512-term float32 sums in another order than TorchKernels'
    for what, got, want in (("mean", mean, ref[1]), ("invstd", invstd, ref[2]), ("running_mean", rm, rm_ref),
                            ("running_var", rv, rv_ref)):
        torch.testing.assert_close(got, want, **sums, msg=lambda m, what=what: f"{what}: {m}")
    launched.clear()
    count = x.numel() // 11
    dx, sum_dz, sum_dz_xhat = K.backward(dy, x, mean, invstd, weight, bias, count)
    assert launched == ["_bn_backward_two_pass_kernel"]
    counters = _host._TICKET_COUNTERS[_host._stream_key(x.device)]
    assert counters.numel() >= 2 + 6 and not counters.any(), counters
    ref = T.backward(dy, x, mean, invstd, weight, bias, count)
    assert_same_layout(dx, x, "backward")
    assert_close(dx, ref[0], dtype, "dx")
    assert_close(sum_dz, ref[1], acc, "sum_dz")
    assert_close(sum_dz_xhat, ref[2], acc, "sum_dz_xhat")


def test_runs_take_half_the_assumed_l2():
    """celeba64's 16x384x64x64 bfloat16 (128 KiB of x per channel): forward runs of 200 channels, backward
    (dy and x) of 100; NHWC runs are whole tiles of channels (64 of them: 192 and 64)."""
    x = torch.empty(16, 384, 64, 64, dtype=torch.bfloat16, device="meta")
    assert K._runs(x, _host.NCHW, 1) == (200, K.MAX_COLS_NHWC) and K._runs(x, _host.NCHW, 2)[0] == 100
    assert K._runs(x, _host.NHWC, 1) == (128, 128) and K._runs(x, _host.NHWC, 2) == (64, 64)
    assert K._runs(x[:, :64], _host.NCHW, 1) == (64, K.MAX_COLS_NHWC)  # all channels fit: one run
