"""bn_swish: every lean backend against the float64 reference (outputs, running stats, all gradients)."""

import pytest
import torch

import nvae_fast
from nvae_fast.ops import bn_swish, bn_swish_reference

from .._tensors import LAYOUTS, in_layout, memory_format, randn
from ._gpu_shapes import BN_SHAPES, ON_GPU, backend_params, shape_id
from ._helpers import DTYPES, LEAN_BACKENDS, assert_close_scaled, dtype_id, require

SHAPES = [(2, 3, 5, 7), (1, 5, 3, 4), (3, 6, 1, 1), (4, 7, 9, 11)]


def _inputs(shape, dtype, kind, device, seed=0, param_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = in_layout(randn(*shape, dtype=dtype, generator=g, scale=2.0, shift=0.5, device=device), kind)
    dy = in_layout(randn(*shape, dtype=dtype, generator=g, device=device), kind)
    weight = randn(c, dtype=param_dtype, generator=g, scale=0.5, shift=1.0).to(device)
    bias = randn(c, dtype=param_dtype, generator=g, scale=0.5).to(device)
    running_mean = randn(c, generator=g, scale=0.3).to(device)
    running_var = (randn(c, generator=g).abs() + 0.5).to(device)
    return x, dy, weight, bias, running_mean, running_var


def _reference(x, dy, weight, bias, rm, rv, training):
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    rm64, rv64 = rm.double(), rv.double()
    y = bn_swish_reference(*leaves, rm64, rv64, training, 0.1, 1e-5)
    grads = torch.autograd.grad(y, leaves, dy.double())
    return y, grads, rm64, rv64


def _run(backend, x, dy, weight, bias, rm, rv, training):
    leaves = [x.detach().requires_grad_(), weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()]
    rm, rv = rm.clone(), rv.clone()
    with nvae_fast.use_backend(backend):
        y = bn_swish(*leaves, rm, rv, training, 0.1, 1e-5)
    grads = torch.autograd.grad(y, leaves, dy)
    return y, grads, rm, rv


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_matches_reference(backend, training, dtype, kind, shape):
    _check_matches_reference(backend, training, dtype, kind, shape)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=shape_id)
@pytest.mark.parametrize("training", [True, False] if ON_GPU else [True], ids=lambda t: "train" if t else "eval")
@pytest.mark.parametrize("backend, dtype, kind", backend_params(DTYPES))
def test_multi_tile_and_split_paths_match_reference(monkeypatch, backend, dtype, kind, training, shape):
    """Shapes whose statistics and backward sums take several tiles and parts per channel, and whose
    element-wise passes grid-stride, on a 132-SM GPU (plans in _gpu_shapes.py, asserted by
    test_gpu_plans.py). Without a GPU the cuda backend runs them in the emulation of 132 SMs (training
    only: eval runs a subset of the same kernels)."""
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", "132")
    _check_matches_reference(backend, training, dtype, kind, shape, seed=11)


def _check_matches_reference(backend, training, dtype, kind, shape, seed=0):
    device = require(backend)
    x, dy, weight, bias, rm, rv = _inputs(shape, dtype, kind, device, seed=seed)
    y, (dx, dw, db), rm_out, rv_out = _run(backend, x, dy, weight, bias, rm, rv, training)
    y_ref, (dx_ref, dw_ref, db_ref), rm_ref, rv_ref = _reference(x, dy, weight, bias, rm, rv, training)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == weight.dtype and db.dtype == bias.dtype
    if kind != "strided":
        assert y.is_contiguous(memory_format=memory_format(kind)), "output must keep the input's memory format"
    assert_close_scaled(y, y_ref, dtype, "y")
    assert_close_scaled(dx, dx_ref, dtype, "dx", factor=4)
    # dweight/dbias sum N*H*W terms whose inputs were rounded to dtype: allow for the summation.
    assert_close_scaled(dw, dw_ref, dtype, "dweight", factor=4)
    assert_close_scaled(db, db_ref, dtype, "dbias", factor=4)
    assert_close_scaled(rm_out, rm_ref, torch.float32, "running_mean")
    assert_close_scaled(rv_out, rv_ref, torch.float32, "running_var")


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_params_in_activation_dtype(backend):
    """bfloat16 activations with bfloat16 parameters (no float32 master copy) also work."""
    device = require(backend)
    x, dy, weight, bias, rm, rv = _inputs((2, 5, 6, 3), torch.bfloat16, "contiguous", device, param_dtype=torch.bfloat16)
    y, (dx, dw, db), _, _ = _run(backend, x, dy, weight, bias, rm, rv, True)
    y_ref, (dx_ref, dw_ref, db_ref), _, _ = _reference(x, dy, weight, bias, rm, rv, True)
    assert dw.dtype == torch.bfloat16
    assert_close_scaled(y, y_ref, torch.bfloat16, "y")
    assert_close_scaled(dx, dx_ref, torch.bfloat16, "dx", factor=4)
    assert_close_scaled(dw, dw_ref, torch.bfloat16, "dweight", factor=4)
    assert_close_scaled(db, db_ref, torch.bfloat16, "dbias", factor=4)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_gradcheck_float64(backend, training, kind):
    device = require(backend)
    x, _, weight, bias, rm, rv = _inputs((2, 3, 4, 5), torch.float64, kind, device, param_dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]

    def fn(x, w, b):
        return bn_swish(x, w, b, rm.clone(), rv.clone(), training)

    with nvae_fast.use_backend(backend):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_deterministic(backend):
    """Two runs give bit-identical outputs and gradients."""
    device = require(backend)
    x, dy, weight, bias, rm, rv = _inputs((3, 4, 17, 13), torch.float32, "contiguous", device, seed=3)
    first = _run(backend, x, dy, weight, bias, rm, rv, True)
    second = _run(backend, x, dy, weight, bias, rm, rv, True)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_without_affine_or_running_stats(backend):
    device = require(backend)
    x, dy, *_ = _inputs((2, 3, 4, 5), torch.float32, "contiguous", device)
    xr = x.detach().double().requires_grad_()
    y_ref = bn_swish_reference(xr, None, None, None, None, True)
    xb = x.detach().requires_grad_()
    with nvae_fast.use_backend(backend):
        y = bn_swish(xb, None, None, None, None, True)
    assert_close_scaled(y, y_ref, torch.float32, "y")
    (dx,) = torch.autograd.grad(y, xb, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, dy.double())
    assert_close_scaled(dx, dx_ref, torch.float32, "dx", factor=4)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_inputs_name_the_argument(backend):
    x = torch.randn(2, 3, 4, 5)
    w, b, rm, rv = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="x must be 4-D"):
            bn_swish(x[0], w, b, rm, rv, True)
        with pytest.raises(TypeError, match="x must be float16"):
            bn_swish(x.long(), w, b, rm, rv, True)
        with pytest.raises(ValueError, match="weight must have 3 elements"):
            bn_swish(x, torch.ones(4), b, rm, rv, True)
        with pytest.raises(ValueError, match="running_var must have 3 elements"):
            bn_swish(x, w, b, rm, torch.ones(2), True)
        with pytest.raises(ValueError, match="bias is on meta"):
            bn_swish(x, w, torch.zeros(3, device="meta"), rm, rv, True)
        with pytest.raises(ValueError, match="running_mean and running_var are required"):
            bn_swish(x, w, b, None, None, False)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            bn_swish(torch.randn(1, 3, 1, 1), w, b, rm, rv, True)
