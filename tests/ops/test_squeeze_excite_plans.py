"""squeeze_excite: the plans the lean kernel sets pick, their boundaries, their launch counts and the
ATen ops around them.

CUDA (``csrc/squeeze_excite.cu``): each sample's H*W pixels are split into ``parts`` (one part when H*W
is at most 128 pixels in NCHW, at most 32 in NHWC, for few (n, c) planes), channels_last channels into
groups of 32-channel columns; the forward is two launches
(pooling with the gate MLP, then the scale), the backward two (the dy x reduction with the MLP
backward and the weight gradients, then dx), and the op dispatches nothing but its one custom op per
direction. Triton: the same two launches per direction (the last program of the reduction grid runs the
MLP), around allocations only.
"""

import pytest
import torch

import nvae_fast
from nvae_fast.ops import squeeze_excite, squeeze_excite_reference

from .._dispatch import RecordedOps
from .._tensors import in_layout, randn
from ._helpers import assert_close_scaled, dtype_id, require

# (layout, x shape, parts, channel groups the CUDA plan takes): the largest H*W of one part and the
# smallest of two; in channels_last also the widest C of one 32-channel group and the narrowest of two.
CUDA_BOUNDARIES = [
    ("contiguous", (2, 3, 8, 16), 1, 1),
    ("contiguous", (2, 3, 1, 129), 2, 1),
    ("channels_last", (2, 3, 4, 8), 1, 1),
    ("channels_last", (2, 3, 3, 11), 2, 1),
    ("channels_last", (2, 32, 3, 11), 2, 1),
    ("channels_last", (2, 33, 3, 11), 2, 2),
]


def _leaves(shape, hidden, dtype, kind, device, bias, seed):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = in_layout(randn(*shape, dtype=dtype, generator=g, shift=0.3), kind).to(device).requires_grad_()
    w1 = randn(hidden, c, generator=g, scale=0.7).to(device, wdtype).requires_grad_()
    w2 = randn(c, hidden, generator=g, scale=0.7).to(device, wdtype).requires_grad_()
    b1 = randn(hidden, generator=g, scale=0.5).to(device, wdtype).requires_grad_() if bias else None
    b2 = randn(c, generator=g, scale=0.5).to(device, wdtype).requires_grad_() if bias else None
    dy = in_layout(randn(*shape, dtype=dtype, generator=g), kind).to(device)
    return (x, w1, b1, w2, b2), dy


def _check(backend, leaves, dy, activation, dtype):
    present = [t for t in leaves if t is not None]
    with nvae_fast.use_backend(backend):
        y = squeeze_excite(*leaves, activation=activation)
    grads = torch.autograd.grad(y, present, dy)
    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    y_ref = squeeze_excite_reference(*ref_leaves, activation=activation)
    grads_ref = torch.autograd.grad(y_ref, [t for t in ref_leaves if t is not None], dy.double())
    assert y.dtype == dtype and y.stride() == leaves[0].stride()
    assert_close_scaled(y, y_ref, dtype, "y")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert_close_scaled(g, g_ref, dtype, f"grad {i}", factor=4)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("case", CUDA_BOUNDARIES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def test_cuda_plan_boundaries_match_reference(case, dtype, activation, bias):
    device = require("cuda")
    kind, shape, parts, channel_blocks = case
    leaves, dy = _leaves(shape, 4, dtype, kind, device, bias, seed=sum(shape))
    _check("cuda", leaves, dy, activation, dtype)
    from nvae_fast.cuda import squeeze_excite as kernels

    plan = kernels.plan(leaves[0])
    assert (plan["parts"], plan["channel_blocks"]) == (parts, channel_blocks), plan
    assert plan["chunk"] * parts >= shape[2] * shape[3], plan
    if kind == "channels_last":
        assert plan["blocks_per_sample"] == parts * channel_blocks, plan


# On one emulated SM (8 target blocks): a scale / dx pass whose blocks take several items (NCHW planes
# wider than one item, NHWC 32-channel columns) and one whose items hold several small planes.
MAP_CASES = [("contiguous", (2, 10, 64, 80)), ("channels_last", (2, 70, 9, 9)), ("contiguous", (2, 100, 3, 5))]


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def test_cuda_scale_items_match_reference(monkeypatch, case, dtype, activation):
    device = require("cuda")
    if device.type == "cuda":
        pytest.skip("the item split depends on the emulated SM count")
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", "1")
    kind, shape = case
    leaves, dy = _leaves(shape, 4, dtype, kind, device, activation == "relu", seed=sum(shape) + 1)
    _check("cuda", leaves, dy, activation, dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_cuda_dispatches_one_custom_op_per_direction(kind, bias):
    """No ATen op runs around the kernels: the gate MLP and its backward are inside them."""
    device = require("cuda")
    leaves, dy = _leaves((2, 6, 5, 7), 3, torch.float32, kind, device, bias, seed=5)
    present = [t for t in leaves if t is not None]
    with nvae_fast.use_backend("cuda"):
        with RecordedOps() as forward:
            y = squeeze_excite(*leaves, activation="silu")
        with RecordedOps() as backward:
            torch.autograd.grad(y, present, dy)
    assert [op.split(".", 1)[1] for op in forward.ops] == ["se_forward.default"], forward.ops
    assert [op.split(".", 1)[1] for op in backward.ops] == ["se_backward.default"], backward.ops


# What the Triton kernel set may dispatch around its launches: allocations (the ticket is a zeroed
# int32), and, in the CPU interpreter only, its copies of the launch arguments.
TRITON_ALLOCATIONS = {"empty.memory_format", "empty_like.default", "zeros.default", "zero_.default", "fill_.Scalar",
                      "new_empty.default", "new_zeros.default"}
INTERPRETER_COPIES = {"copy_.default", "set_.source_Storage", "set_.source_Storage_storage_offset"}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_triton_dispatches_only_allocations(kind, bias):
    device = require("triton")
    leaves, dy = _leaves((2, 6, 5, 7), 3, torch.float32, kind, device, bias, seed=7)
    allowed = TRITON_ALLOCATIONS | (INTERPRETER_COPIES if device.type == "cpu" else set())
    with nvae_fast.use_backend("triton"):
        with RecordedOps() as dispatched:
            y = squeeze_excite(*leaves, activation="silu")
            torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
    names = {op.split(".", 1)[1] for op in dispatched.ops}
    assert names <= allowed, sorted(names - allowed)


@pytest.fixture
def record():
    """``_launches.launches`` (the CUDA launch code on a recorder of 132 SMs)."""
    if not nvae_fast.backend_info()["backends"]["cuda"]["available"]:
        pytest.skip("the cuda backend's emulation cannot be built here, nor can the launch recorder")
    from ..cuda import _launches

    _launches.load()
    return _launches.launches


@pytest.mark.parametrize("hw", [(8, 16), (1, 129), (17, 241)], ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_cuda_launches_two_kernels_per_direction(record, kind, hw):
    n, c, hidden = 3, 10, 4
    x = in_layout(torch.empty(n, c, *hw), kind)
    w1, w2, stats = torch.empty(hidden, c), torch.empty(c, hidden), torch.empty(n, c)
    forward = record("se_forward", x, w1, None, w2, None, 0)
    backward = record("se_backward", x, x, stats, stats, w1, torch.empty(hidden), w2, torch.empty(c), 1)
    parts, chunk, blocks, channel_blocks = torch.ops.nvae_fast_plan.se_plan(x)
    assert blocks == parts * channel_blocks if kind == "channels_last" else channel_blocks == 1
    for launches in (forward, backward):
        assert [launch.name for launch in launches] == ["se_reduce_kernel", "se_map_kernel"], launches
        assert launches[0].grid[:2] == (blocks, n) and launches[0].smem == hidden * 4, launches[0]


class _TritonLaunches:
    """Counts the launches of every Triton kernel of a module (``kernel[grid](...)`` calls)."""

    def __init__(self, monkeypatch, module):
        self.count = 0
        for name in [n for n in vars(module) if n.endswith("_kernel")]:
            monkeypatch.setattr(module, name, self._counting(getattr(module, name)))

    def _counting(self, kernel):
        counter = self

        class Counting:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    counter.count += 1
                    return kernel[grid](*args, **kwargs)

                return launch

        return Counting()


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_triton_launches_two_kernels_per_direction(monkeypatch, kind):
    device = require("triton")
    from nvae_fast.kernels import squeeze_excite as kernels

    launches = _TritonLaunches(monkeypatch, kernels)
    leaves, dy = _leaves((2, 6, 5, 7), 3, torch.float32, kind, device, True, seed=6)
    with nvae_fast.use_backend("triton"):
        y = squeeze_excite(*leaves)
        assert launches.count == 2
        torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
        assert launches.count == 4
