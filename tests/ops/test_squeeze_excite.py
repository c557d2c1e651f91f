"""squeeze_excite: every lean backend against the float64 reference (output and all five gradients), for both
gate activations (relu, silu)."""

import pytest
import torch

import nvae_fast
from nvae_fast.ops import squeeze_excite, squeeze_excite_reference

from .._tensors import LAYOUTS, in_layout, randn
from ._gpu_shapes import SE_CASES, backend_params, shape_id
from ._helpers import DTYPES, LEAN_BACKENDS, assert_close_scaled, dtype_id, require

ACTIVATIONS = ["relu", "silu"]

# (x shape, hidden)
CASES = [((2, 6, 5, 7), 4), ((1, 9, 3, 3), 4), ((3, 5, 1, 1), 2), ((2, 17, 11, 13), 5)]


def _inputs(shape, hidden, dtype, kind, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = in_layout(randn(*shape, dtype=dtype, generator=g, shift=0.3, device=device), kind)
    dy = in_layout(randn(*shape, dtype=dtype, generator=g, device=device), kind)
    params = [
        randn(hidden, c, generator=g, scale=0.7).to(device),
        randn(hidden, generator=g, scale=0.5).to(device),
        randn(c, hidden, generator=g, scale=0.7).to(device),
        randn(c, generator=g, scale=0.5).to(device),
    ]
    return x, dy, params


def _grads(fn, x, dy, params):
    leaves = [x.detach().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy.to(y.dtype))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_matches_reference(backend, dtype, kind, case, activation):
    _check_matches_reference(backend, dtype, kind, case, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("case", SE_CASES, ids=lambda c: shape_id(c[0]))
@pytest.mark.parametrize("backend, dtype, kind", backend_params(DTYPES))
def test_multi_tile_and_split_paths_match_reference(monkeypatch, backend, dtype, kind, case, activation):
    """A shape whose pooling and backward sums take several tiles and parts per (n, c), and whose
    scale and dx passes grid-stride, on a 132-SM GPU (plans in _gpu_shapes.py, asserted by
    test_gpu_plans.py); without a GPU the cuda backend runs it in the emulation of 132 SMs."""
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", "132")
    _check_matches_reference(backend, dtype, kind, case, activation, seed=11)


def _check_matches_reference(backend, dtype, kind, case, activation, seed=0):
    device = require(backend)
    x, dy, params = _inputs(*case, dtype, kind, device, seed=seed)

    def lean(*args):
        with nvae_fast.use_backend(backend):
            return squeeze_excite(*args, activation=activation)

    def ref(x, *params):
        return squeeze_excite_reference(x.double(), *(p.double() for p in params), activation=activation)

    y, grads = _grads(lean, x, dy, params)
    y_ref, grads_ref = _grads(ref, x, dy, params)
    assert y.dtype == dtype and grads[0].dtype == dtype
    if kind == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_scaled(y, y_ref, dtype, "y")
    names = ["dx", "dw1", "db1", "dw2", "db2"]
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close_scaled(g, g_ref, dtype, name, factor=4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_gradcheck_float64(backend, kind, activation):
    device = require(backend)
    x, _, params = _inputs((2, 5, 3, 4), 3, torch.float64, kind, device)
    leaves = [x.detach().requires_grad_()] + [p.double().requires_grad_() for p in params]
    with nvae_fast.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *t: squeeze_excite(*t, activation=activation), leaves)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_no_biases_and_deterministic(backend, activation):
    device = require(backend)
    x, dy, (w1, _, w2, _) = _inputs((3, 8, 19, 17), 4, torch.float32, "contiguous", device, seed=2)
    runs = []
    for _ in range(2):
        leaves = [x.detach().requires_grad_(), w1.clone().requires_grad_(), w2.clone().requires_grad_()]
        with nvae_fast.use_backend(backend):
            y = squeeze_excite(leaves[0], leaves[1], None, leaves[2], None, activation)
        runs.append((y, *torch.autograd.grad(y, leaves, dy)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    y_ref = squeeze_excite_reference(x.double(), w1.double(), None, w2.double(), None, activation)
    assert_close_scaled(runs[0][0], y_ref, torch.float32, "y")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_inputs_name_the_argument(backend):
    x = torch.randn(2, 6, 4, 4)
    w1, b1, w2, b2 = torch.randn(3, 6), torch.randn(3), torch.randn(6, 3), torch.randn(6)
    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="w1 must have shape \\(hidden, C\\) with C=6"):
            squeeze_excite(x, torch.randn(3, 5), b1, w2, b2)
        with pytest.raises(ValueError, match="w2 must have shape \\(C, hidden\\)"):
            squeeze_excite(x, w1, b1, torch.randn(6, 4), b2)
        with pytest.raises(ValueError, match="b1 must have 3 elements"):
            squeeze_excite(x, w1, torch.randn(4), w2, b2)
        with pytest.raises(ValueError, match="x must be 4-D"):
            squeeze_excite(x[0], w1, b1, w2, b2)
        with pytest.raises(ValueError, match="non-empty spatial extent"):
            squeeze_excite(torch.randn(2, 6, 0, 3), w1, b1, w2, b2)
        with pytest.raises(ValueError, match="activation must be one of \\['relu', 'silu'\\], got 'gelu'"):
            squeeze_excite(x, w1, b1, w2, b2, activation="gelu")
