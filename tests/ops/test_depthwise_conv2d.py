"""depthwise_conv2d: every lean backend against the float64 reference (output, dx, dweight, dbias)."""

import pytest
import torch

import nvae_fast
from nvae_fast.ops import depthwise_conv2d, depthwise_conv2d_reference

from .._tensors import LAYOUTS, in_layout, randn
from ._gpu_shapes import DW_CASES, backend_params
from ._helpers import DTYPES, LEAN_BACKENDS, assert_close_scaled, dtype_id, require

# (x shape, kernel size, stride, padding)
CASES = [
    ((2, 3, 9, 7), 5, 1, "same"),
    ((1, 4, 8, 11), 3, 2, 1),
    ((2, 5, 8, 9), 7, 1, 0),
    ((3, 2, 13, 10), 5, 2, 2),
    ((1, 3, 5, 5), 11, 1, 5),
    ((2, 2, 12, 9), 9, 2, (4, 3)),
    ((2, 6, 1, 1), 3, 1, 1),
]


def _case_id(case):
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p if not isinstance(p, tuple) else '%dx%d' % p}"


def _inputs(shape, k, dtype, kind, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = in_layout(randn(*shape, dtype=dtype, generator=g, device=device), kind)
    weight = randn(c, 1, k, k, dtype=torch.float32, generator=g, scale=0.3).to(device)
    bias = randn(c, dtype=torch.float32, generator=g).to(device)
    return x, weight, bias


def _grads(fn, x, weight, bias, dy_gen, dy_dtype, kind):
    leaves = [x.detach().requires_grad_(), weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()]
    y = fn(*leaves)
    dy = in_layout(randn(*y.shape, dtype=dy_dtype, generator=torch.Generator().manual_seed(dy_gen), device=y.device), kind)
    return y, torch.autograd.grad(y, leaves, dy)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_matches_reference(backend, dtype, kind, case):
    _check_matches_reference(backend, dtype, kind, case)


@pytest.mark.parametrize("case", DW_CASES, ids=_case_id)
@pytest.mark.parametrize("backend, dtype, kind", backend_params(DTYPES))
def test_multi_tile_and_split_paths_match_reference(monkeypatch, backend, dtype, kind, case):
    """Shapes with several spatial tiles per image and weight gradients split into parts that each take
    several tiles, on a 132-SM GPU (plans in _gpu_shapes.py, asserted by test_gpu_plans.py); without a
    GPU the cuda backend runs them in the emulation of 132 SMs."""
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", "132")
    _check_matches_reference(backend, dtype, kind, case, seed=11)


def _check_matches_reference(backend, dtype, kind, case, seed=0):
    device = require(backend)
    shape, k, stride, padding = case
    x, weight, bias = _inputs(shape, k, dtype, kind, device, seed=seed)

    def lean(x, w, b):
        with nvae_fast.use_backend(backend):
            return depthwise_conv2d(x, w, b, stride, padding)

    def ref(x, w, b):
        return depthwise_conv2d_reference(x.double(), w.double(), b.double(), stride, padding if padding != "same" else k // 2)

    y, (dx, dw, db) = _grads(lean, x, weight, bias, seed + 1, dtype, kind)
    y_ref, (dx_ref, dw_ref, db_ref) = _grads(ref, x, weight, bias, seed + 1, dtype, kind)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == weight.dtype and db.dtype == bias.dtype
    if kind == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    elif kind == "contiguous":
        assert y.is_contiguous()
    assert_close_scaled(y, y_ref, dtype, "y", factor=2)
    assert_close_scaled(dx, dx_ref, dtype, "dx", factor=2)
    assert_close_scaled(dw, dw_ref, dtype, "dweight", factor=4)
    assert_close_scaled(db, db_ref, dtype, "dbias", factor=4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_gradcheck_float64(backend, kind, stride):
    device = require(backend)
    g = torch.Generator().manual_seed(0)
    x = in_layout(randn(2, 3, 7, 6, dtype=torch.float64, generator=g, device=device), kind).requires_grad_()
    w = randn(3, 1, 5, 5, dtype=torch.float64, generator=g).to(device).requires_grad_()
    b = randn(3, dtype=torch.float64, generator=g).to(device).requires_grad_()
    # fast_mode checks random directional derivatives instead of the full Jacobian: the full one runs the
    # backward once per output element, which takes minutes in the Triton interpreter.
    with nvae_fast.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda x, w, b: depthwise_conv2d(x, w, b, stride, 2), (x, w, b), fast_mode=backend != "torch"
        )


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_no_bias_and_deterministic(backend):
    device = require(backend)
    x, weight, _ = _inputs((3, 4, 15, 14), 5, torch.float32, "contiguous", device, seed=5)

    def lean(x, w):
        with nvae_fast.use_backend(backend):
            return depthwise_conv2d(x, w, None, 1, 2)

    runs = []
    for _ in range(2):
        leaves = [x.detach().requires_grad_(), weight.detach().clone().requires_grad_()]
        y = lean(*leaves)
        runs.append((y, *torch.autograd.grad(y, leaves, torch.ones_like(y).mul_(0.5).add_(y.detach()))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert_close_scaled(runs[0][0], depthwise_conv2d_reference(x.double(), weight.double(), None, 1, 2), torch.float32, "y")


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_dilation(backend):
    """Dilation > 1 is computed correctly (a backend without it falls back visibly, see test_backend)."""
    device = require(backend)
    x, weight, bias = _inputs((2, 3, 11, 9), 3, torch.float32, "contiguous", device)
    with nvae_fast.use_backend(backend):
        y = depthwise_conv2d(x, weight, bias, 1, 2, 2)
    assert_close_scaled(y, depthwise_conv2d_reference(x.double(), weight.double(), bias.double(), 1, 2, 2), torch.float32, "y")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_inputs_name_the_argument(backend):
    x, w = torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3)
    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="weight must have shape \\(C, 1, kh, kw\\) with C=3"):
            depthwise_conv2d(x, torch.randn(4, 1, 3, 3))
        with pytest.raises(ValueError, match="weight must be 4-D"):
            depthwise_conv2d(x, torch.randn(3, 3, 3))
        with pytest.raises(ValueError, match="bias must have 3 elements"):
            depthwise_conv2d(x, w, torch.randn(2))
        with pytest.raises(ValueError, match="stride must be >= 1"):
            depthwise_conv2d(x, w, stride=0)
        with pytest.raises(ValueError, match="padding='same' needs stride=1"):
            depthwise_conv2d(x, w, stride=2, padding="same")
        with pytest.raises(ValueError, match="padding must be an int"):
            depthwise_conv2d(x, w, padding="full")
        with pytest.raises(ValueError, match="smaller than the dilated kernel"):
            depthwise_conv2d(torch.randn(1, 3, 2, 2), w)
        with pytest.raises(TypeError, match="x must be float16"):
            depthwise_conv2d(x.int(), w)
