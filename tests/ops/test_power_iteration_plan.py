"""power_iteration, cuda backend: the planned kernels (every step in one launch over runs of weights sized
to the L2, cached launch tables, one-launch backward) against the reference, at the tiles' boundaries and
over several runs, and their cost: launches, ATen ops per call, table reuse."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import nvae_fast
from nvae_fast.cuda.power_iteration import LAYOUT_DTYPES
from nvae_fast.ops import power_iteration, power_iteration_reference

from .._dispatch import RecordedOps
from .._tensors import randn
from ._helpers import assert_close_scaled, dtype_id, require

ROWS, COLS = 64, 256  # a pass tile (csrc kRows, kCols)

# The tiles' boundaries (64 rows: one row tile, 65: two; 256 columns: one column tile, 257: two), square
# and tall and wide weights, conv weights of ranks 2 to 5, one row or one column.
CASES = [(24, 24), (25, 24), (ROWS, 3, 7, 7), (ROWS + 1, 2, 9, 9), (300, COLS), (300, COLS + 1), (5, 3, 1, 1),
         (7, 4, 3), (6, 2, 2, 2, 2), (1, 33), (40, 1)]


def _inputs(shapes, dtype, seed, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    weights = [randn(*s, dtype=dtype, generator=g) for s in shapes]
    if layout == "channels_last":
        weights = [w.to(memory_format=torch.channels_last) if w.dim() == 4 else w for w in weights]
    us = [F.normalize(randn(s[0], generator=g), dim=0) for s in shapes]
    vs = [F.normalize(randn(math.prod(s[1:]), generator=g), dim=0) for s in shapes]
    if dtype == torch.float64:
        us, vs = [u.double() for u in us], [v.double() for v in vs]
    return weights, us, vs


def _run(fn, weights, us, vs, n_iter):
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    sig = fn(leaves, us, vs, n_iter)
    g = randn(len(weights), seed=5).to(sig.dtype)
    return sig, torch.autograd.grad(sig, leaves, g), us, vs


def _cuda(*args):
    with nvae_fast.use_backend("cuda"):
        return power_iteration(*args)


@pytest.mark.parametrize("n_iter", [0, 1, 2, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=dtype_id)
def test_planned_matches_reference(dtype, layout, n_iter):
    """u, v, sigma and dW against the float64 reference on the same rounded weights."""
    require("cuda")
    weights, us, vs = _inputs(CASES, dtype, seed=3 + n_iter, layout=layout)
    sig, grads, u_out, v_out = _run(_cuda, weights, us, vs, n_iter)
    sig_ref, grads_ref, u_ref, v_ref = _run(power_iteration_reference, [w.double() for w in weights], us, vs, n_iter)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert sig.dtype == acc
    assert_close_scaled(sig, sig_ref, acc, "sigma", factor=10)
    for i, shape in enumerate(CASES):
        assert grads[i].shape == shape and grads[i].dtype == dtype
        assert_close_scaled(grads[i], grads_ref[i], dtype, f"dW[{i}]", factor=2)
        assert_close_scaled(u_out[i], u_ref[i], acc, f"u[{i}]", factor=10)
        assert_close_scaled(v_out[i], v_ref[i], acc, f"v[{i}]", factor=10)


@pytest.mark.parametrize("l2_bytes", [50 << 20, 40_000, 1024], ids=["one_run", "runs", "tiny_runs"])
def test_runs_of_weights(monkeypatch, l2_bytes):
    """The weights in runs of consecutive weights whose W take at most half the (emulated) L2, a larger
    weight alone; every step in one launch whatever the runs; results as the reference's; W read 2 n_iter
    times."""
    require("cuda")
    if torch.cuda.is_available():
        pytest.skip("the L2 size is the emulated device's")
    from nvae_fast.cuda import power_iteration as kernels

    monkeypatch.setenv("NVAE_FAST_EMULATE_L2_BYTES", str(l2_bytes))
    weights, us, vs = _inputs(CASES, torch.float32, seed=0)
    plan = kernels.plan(weights, us, vs, 4)
    runs = plan["runs"]
    assert [r[0] for r in runs] == list(itertools.accumulate([0] + [r[1] for r in runs[:-1]]))
    assert sum(r[1] for r in runs) == len(CASES)
    sizes = [math.prod(s) * 4 for s in CASES]
    for first, count, _, _ in runs:
        assert count == 1 or sum(sizes[first:first + count]) <= l2_bytes // 2
    # 512 bytes: every weight but the 5 of at most 336 bytes alone, 3 of those together
    assert len(runs) == {50 << 20: 1, 40_000: len(runs), 1024: 9}[l2_bytes] and (l2_bytes != 40_000 or 1 < len(runs) < 9)
    assert plan["weight_reads"] == [8] * len(CASES) and plan["forward_launches"] == ["steps"]
    assert kernels.plan(weights, us, vs, 0)["forward_launches"] == ["pass", "finish"]
    sig, grads, u_out, v_out = _run(_cuda, weights, us, vs, 4)
    sig_ref, grads_ref, u_ref, v_ref = _run(power_iteration_reference, [w.double() for w in weights], us, vs, 4)
    assert_close_scaled(sig, sig_ref, torch.float32, "sigma", factor=10)
    for i in range(len(CASES)):
        assert_close_scaled(u_out[i], u_ref[i], torch.float32, f"u[{i}]", factor=10)
        assert_close_scaled(v_out[i], v_ref[i], torch.float32, f"v[{i}]", factor=10)


def test_mixed_dtypes_and_vector_copies():
    """Weights of mixed dtypes run in float32; u/v of another dtype go through copies, written back."""
    require("cuda")
    weights, us, vs = _inputs([(8, 12), (5, 7), (9, 3, 2, 2)], torch.float32, seed=9)
    weights[1] = weights[1].half()
    us[0] = us[0].half()
    vs[2] = vs[2].double()
    sig, grads, u_out, v_out = _run(_cuda, weights, us, vs, 3)
    sig_ref, grads_ref, u_ref, v_ref = _run(power_iteration_reference, [w.float() for w in weights], us, vs, 3)
    torch.testing.assert_close(sig, sig_ref, rtol=1e-5, atol=1e-5)
    assert u_out[0].dtype == torch.float16 and v_out[2].dtype == torch.float64 and grads[1].dtype == torch.float16
    for got, want in zip(u_out + v_out, u_ref + v_ref):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


def test_zero_weight_gives_zero_vectors():
    """W = 0: the reference's eps keeps u, v, sigma at 0 (no NaN) in both iterations."""
    require("cuda")
    for n_iter in (1, 3):
        weights = [torch.zeros(6, 10), torch.zeros(10, 4)]
        us = [F.normalize(torch.ones(6), dim=0), F.normalize(torch.ones(10), dim=0)]
        vs = [F.normalize(torch.ones(10), dim=0), F.normalize(torch.ones(4), dim=0)]
        sig, _, u_out, v_out = _run(_cuda, weights, us, vs, n_iter)
        assert torch.equal(sig, torch.zeros(2)) and all(not t.any() for t in u_out + v_out)


def test_table_cached_and_rebuilt():
    """The second call reuses the launch table; replacing or reshaping a weight, or a new u, builds another."""
    require("cuda")
    from nvae_fast.cuda import power_iteration as kernels

    weights, us, vs = _inputs([(16, 4, 3, 3), (32, 16), (8, 8, 1, 1)], torch.float32, seed=1)
    v_buffer = torch.zeros(16)
    vs[2] = v_buffer[:8].copy_(vs[2])
    first = kernels.plan(weights, us, vs, 4)["table"]
    _cuda(weights, us, vs, 4)
    _cuda(weights, us, vs, 4)
    assert kernels.plan(weights, us, vs, 4)["table"].data_ptr() == first.data_ptr()
    replaced = [weights[0], weights[1].clone(), weights[2]]
    assert kernels.plan(replaced, us, vs, 4)["table"].data_ptr() != first.data_ptr()
    # the same addresses, another shape: (4, 16) instead of (8, 8)
    reshaped = [weights[0], weights[1], weights[2].view(4, 16, 1, 1)]
    table = kernels.plan(reshaped, [us[0], us[1], us[2][:4]], [vs[0], vs[1], v_buffer], 4)["table"]
    assert table.data_ptr() != first.data_ptr()
    assert table[kernels.PLAN_FIELDS.index("rows") + 2 * len(kernels.PLAN_FIELDS)] == 4
    assert kernels.plan(weights, [us[0].clone(), us[1], us[2]], vs, 4)["table"].data_ptr() != first.data_ptr()


def test_bad_inputs_name_the_argument():
    """The cuda path checks each weight and vector in C++: one-line errors naming the argument."""
    require("cuda")
    weights, us, vs = _inputs([(4, 3, 3, 3), (6, 5)], torch.float32, seed=4)
    with pytest.raises(RuntimeError, match=r"us\[1\] must be 1-D with 6 elements"):
        _cuda(weights, [us[0], torch.randn(5)], vs, 1)
    with pytest.raises(RuntimeError, match=r"weights\[1\] must have at least 2 dims"):
        _cuda([weights[0], torch.randn(5)], us, [vs[0], torch.randn(1)], 1)
    with pytest.raises(RuntimeError, match=r"vs\[0\] must be 1-D with 27 elements"):
        _cuda(weights, us, [torch.randn(26), vs[1]], 4)
    with pytest.raises(ValueError, match="n_iter must be a non-negative int"):
        _cuda(weights, us, vs, -1)


def _count(n_weights):
    shapes = [(16, 4, 3, 3), (32, 16, 1, 1), (12, 3, 5, 5)] * (n_weights // 3)
    weights, us, vs = _inputs(shapes, torch.float32, seed=2)
    leaves = [w.requires_grad_() for w in weights]
    _cuda(leaves, us, vs, 4)  # builds the plans
    with RecordedOps() as fwd:
        sig = _cuda(leaves, us, vs, 4)
    grad = torch.ones_like(sig)
    with RecordedOps() as bwd:
        torch.autograd.grad(sig, leaves, grad)
    return fwd.ops, bwd.ops


def test_aten_ops_independent_of_weight_count():
    """Once planned, forward and backward dispatch the same ops for 3 weights as for 30: the custom ops
    (the forward, the layout of the weights that the backward reads instead of keeping them, the packed
    gradient) and, per weight, only the view of the packed gradient that is that weight's gradient."""
    require("cuda")
    for n_weights in (3, 30):
        forward, backward = ([name.split(".")[1] for name in names] for names in _count(n_weights))
        assert forward == ["power_iteration_forward", "power_iteration_layout"], forward
        assert backward == ["power_iteration_backward_packed"] + ["as_strided"] * n_weights, backward


def _cifar10_weights():
    from benchmarks.shapes import paper_preset_shapes

    (shape,) = [s for s in paper_preset_shapes("cifar10") if s.op == "power_iteration"]
    return shape.weights, shape.n_iter


def test_cifar10_launches():
    """The whole CIFAR-10 weight set: 1 forward launch with n_iter = 4 (2 with n_iter = 0), 1 backward
    (recorded host code)."""
    require("cuda")
    if torch.cuda.is_available():
        pytest.skip("the recorded plans do not depend on the machine: checked on CPU-only runs")
    from ..cuda import _launches

    shapes, n_iter = _cifar10_weights()
    assert len(shapes) > 300 and n_iter == 4
    weights = [torch.empty(s, dtype=torch.bfloat16) for s in shapes]
    us = [torch.empty(s[0]) for s in shapes]
    vs = [torch.empty(math.prod(s[1:])) for s in shapes]
    forward = _launches.launches("power_iteration_forward", weights, us, vs, n_iter)
    assert [launch.name for launch in forward] == ["pi_steps_kernel"], forward
    tiles = sum(math.ceil(s[0] / ROWS) * math.ceil(math.prod(s[1:]) / COLS) for s in shapes)
    assert forward[0].blocks == n_iter * 2 * (tiles + len(shapes))  # per step: tiles twice, weights twice
    saved = torch.empty(sum(s[0] + math.prod(s[1:]) for s in shapes))
    code = LAYOUT_DTYPES.index(torch.bfloat16)
    layout = [len(shapes)] + [v for s in shapes for v in (code, len(s), *s)]  # the weights' dtypes and sizes
    backward = _launches.launches("power_iteration_backward_packed", torch.empty(len(shapes)), saved, layout)
    assert [launch.name for launch in backward] == ["pi_outer_kernel"]
    for n, count in ((0, 2), (1, 1)):
        assert len(_launches.launches("power_iteration_forward", weights, us, vs, n)) == count
