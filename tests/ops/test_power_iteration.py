"""power_iteration: every lean backend against the reference (u/v updates, sigmas, weight gradients)."""

import pytest
import torch
import torch.nn.functional as F

import nvae_fast
from nvae_fast.ops import power_iteration, power_iteration_reference

from .._tensors import randn
from ._gpu_shapes import PI_SHAPES, backend_params
from ._helpers import LEAN_BACKENDS, assert_close_scaled, dtype_id, require

SHAPES = [(4, 3, 3, 3), (6, 5), (4, 3, 3, 3), (7, 2, 1, 1), (3, 11), (16, 4, 5, 5), (6, 5)]


def _inputs(dtype, device, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    weights = [randn(*s, dtype=dtype, generator=g).to(device) for s in shapes]
    us = [F.normalize(randn(s[0], generator=g), dim=0).to(device) for s in shapes]
    vs = [F.normalize(randn(w[0].numel(), generator=g), dim=0).to(device) for w in weights]
    return weights, us, vs


def _run(fn, weights, us, vs, n_iter, grad_seed=1):
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    sig = fn(leaves, us, vs, n_iter)
    g = randn(len(weights), generator=torch.Generator().manual_seed(grad_seed)).to(sig.device, sig.dtype)
    return sig, torch.autograd.grad(sig, leaves, g), us, vs


@pytest.mark.parametrize("n_iter", [0, 1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_matches_reference(backend, dtype, n_iter):
    _check_matches_reference(backend, dtype, n_iter, SHAPES)


@pytest.mark.parametrize("n_iter", [1, 4])
@pytest.mark.parametrize("backend, dtype, kind", backend_params(
    [torch.float32, torch.float16, torch.bfloat16], layouts=["contiguous"], cpu_triton=True))
def test_multi_tile_paths_match_reference(backend, dtype, kind, n_iter):
    """Weights that take triton's persistent and item paths and several cuda tiles each (plans in
    _gpu_shapes.py, asserted by test_gpu_plans.py), in one call with a one-tile weight; without a GPU
    in the emulation and the interpreter (whose items are larger, but the paths the same)."""
    _check_matches_reference(backend, dtype, n_iter, PI_SHAPES, seed=11)


def _check_matches_reference(backend, dtype, n_iter, shapes, seed=0):
    device = require(backend)
    weights, us, vs = _inputs(dtype, device, seed=seed, shapes=shapes)

    def lean(*args):
        with nvae_fast.use_backend(backend):
            return power_iteration(*args)

    sig, grads, us_out, vs_out = _run(lean, weights, us, vs, n_iter)
    sig_ref, grads_ref, us_ref, vs_ref = _run(power_iteration_reference, [w.double() for w in weights], us, vs, n_iter)
    assert sig.dtype == torch.float32 and sig.shape == (len(weights),)
    # The weights are the same rounded values on both sides; the backend accumulates in float32.
    assert_close_scaled(sig, sig_ref, torch.float32, "sigma", factor=10)
    for i in range(len(weights)):
        assert grads[i].dtype == dtype and grads[i].shape == weights[i].shape
        assert_close_scaled(grads[i], grads_ref[i], dtype, f"dW[{i}]", factor=2)
        assert_close_scaled(us_out[i], us_ref[i], torch.float32, f"u[{i}]", factor=10)
        assert_close_scaled(vs_out[i], vs_ref[i], torch.float32, f"v[{i}]", factor=10)


@pytest.mark.parametrize("backend", ("reference",) + LEAN_BACKENDS)
def test_converges_to_largest_singular_value(backend):
    device = require(backend) if backend != "reference" else torch.device("cpu")
    weights, us, vs = _inputs(torch.float32, device, seed=7)
    with nvae_fast.use_backend(backend):
        sig = power_iteration(weights, us, vs, 200)
    exact = torch.stack([torch.linalg.matrix_norm(w.reshape(w.shape[0], -1).double(), ord=2) for w in weights])
    torch.testing.assert_close(sig.double(), exact.to(sig.device), rtol=1e-3, atol=0)
    for w, u, v in zip(weights, us, vs):  # u, v were updated in place to unit singular vectors
        torch.testing.assert_close(u.norm().item(), 1.0, rtol=1e-5, atol=0)
        w2 = w.reshape(w.shape[0], -1)
        torch.testing.assert_close(w2 @ v, (u @ w2 @ v) * u, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_gradcheck_float64(backend):
    device = require(backend)
    weights, us, vs = _inputs(torch.float64, device, shapes=SHAPES[:4])
    leaves = [w.requires_grad_() for w in weights]

    def fn(*ws):  # n_iter=0: u, v fixed, so sigma = u^T W v is exactly linear in W
        return power_iteration(list(ws), [u.clone() for u in us], [v.clone() for v in vs], 0)

    with nvae_fast.use_backend(backend):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", LEAN_BACKENDS)
def test_backward_keeps_no_weight(backend):
    """The backward needs u, v and the weights' shapes only: the Function must not keep the weights
    (in NVAE they are weight-normalised, computed tensors that nothing else keeps)."""
    device = require(backend)
    weights, us, vs = _inputs(torch.float32, device)
    leaves = [w.requires_grad_() for w in weights]
    kept = []
    with nvae_fast.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(
        lambda t: kept.append(t) or t, lambda t: t
    ):
        sigma = power_iteration([w * 2 for w in leaves], us, vs, 2)
    # w * 2 (a product with a Python number) saves nothing: every saved tensor is the Function's
    assert kept, "the Function saved nothing (u and v are needed)"
    assert all(t.dim() == 1 for t in kept), [tuple(t.shape) for t in kept]
    grads = torch.autograd.grad(sigma.sum(), leaves)
    assert [g.shape for g in grads] == [w.shape for w in weights]


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bad_inputs_name_the_argument(backend):
    weights, us, vs = _inputs(torch.float32, "cpu", shapes=[(4, 3, 3, 3), (6, 5)])
    with nvae_fast.use_backend(backend):
        with pytest.raises(ValueError, match="one entry per weight"):
            power_iteration(weights, us[:1], vs, 1)
        with pytest.raises(ValueError, match=r"us\[1\] must have 6 and vs\[1\] 5 elements"):
            power_iteration(weights, [us[0], torch.randn(5)], vs, 1)
        with pytest.raises(ValueError, match="n_iter must be a non-negative int"):
            power_iteration(weights, us, vs, -1)
        with pytest.raises(ValueError, match=r"weights\[1\] must have at least 2 dims"):
            power_iteration([weights[0], torch.randn(5)], us, [vs[0], torch.randn(1)], 1)
        with pytest.raises(TypeError, match="non-empty list"):
            power_iteration([], [], [], 1)
        with pytest.raises(ValueError, match=r"us\[0\] is on meta"):
            power_iteration(weights, [us[0].to("meta"), us[1]], vs, 1)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize(
    "where, bad, message",
    [
        ("vs", lambda t: torch.randn(t.numel() + 1), r"us\[1\] must have 6 and vs\[1\] 5 elements"),
        ("us", lambda t: t.view(1, -1), r"us\[1\] must be 1-D"),
        ("weights", lambda t: t.int(), r"weights\[1\] must be float16, bfloat16, float32 or float64"),
        ("vs", lambda t: t.tolist(), r"vs\[1\] must be a torch.Tensor"),
        ("weights", lambda t: t.t(), r"us\[1\] must have 5 and vs\[1\] 6 elements"),  # same numel, other rows
        ("vs", lambda t: t.to("meta"), r"vs\[1\] is on meta"),
    ],
)
def test_bad_entry_among_good_ones_is_named(backend, where, bad, message):
    """One bad entry in the middle of the lists: the checks name it (the all-entries fast check must not
    pass it)."""
    inputs = dict(zip(("weights", "us", "vs"), _inputs(torch.float32, "cpu", shapes=[(4, 3, 3, 3), (6, 5), (2, 7)])))
    inputs[where] = [bad(t) if i == 1 else t for i, t in enumerate(inputs[where])]
    with nvae_fast.use_backend(backend), pytest.raises((TypeError, ValueError), match=message):
        power_iteration(inputs["weights"], inputs["us"], inputs["vs"], 1)
