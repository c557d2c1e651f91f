"""The GPU-plan shapes of the op tests (``_gpu_shapes.py``) take the multi-tile and split paths of every
triton and cuda kernel on a 132-SM GPU (H100 SXM / H200), checked from the host code on any machine.

triton: the kernel modules' plan functions, with 132 SMs and the GPU's tiles (``sm_count`` and
``interpreting`` patched; the interpreter plans for 2 SMs and larger tiles). cuda: the launch code of
``csrc/`` itself, built against a launch recorder that reports 132 SMs and records each launch instead of
running it (``tests/cuda/_launches.py``). If a threshold moves and a shape stops taking its path, these
tests fail: choose new shapes (and update the plans written next to them).
"""

from __future__ import annotations

import pytest
import torch

import nvae_fast
import nvae_fast.cuda as nvcuda

from .._tensors import in_layout
from ._gpu_shapes import BN_SHAPES, DW_CASES, PI_SHAPES, SE_CASES, shape_id

# one worker under pytest-xdist --dist loadgroup: the launch recorder is built and loaded once
pytestmark = pytest.mark.xdist_group("gpu_plans")

SMS = 132
NATIVE = ("nchw", "nhwc")  # a strided x is copied to NCHW before any kernel runs
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _empty(shape, dtype, layout, device="meta"):
    kind = "channels_last" if layout == "nhwc" else "contiguous"
    return in_layout(torch.empty(shape, dtype=dtype, device=device), kind)


def _dw_geometry(case):
    (n, c, h, w), k, stride, padding = case
    padding = k // 2 if padding == "same" else padding
    return n, c, h, w, k, stride, padding, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def _dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------------------- triton


@pytest.fixture
def triton_gpu(monkeypatch):
    """The Triton kernel modules planning for a 132-SM GPU: (bn_swish, squeeze_excite, depthwise, power)."""
    pytest.importorskip("triton")
    from nvae_fast.kernels import _host, bn_swish, depthwise_conv2d, power_iteration, squeeze_excite

    monkeypatch.setattr(_host, "sm_count", lambda device: SMS)
    monkeypatch.setattr(depthwise_conv2d, "sm_count", lambda device: SMS)
    monkeypatch.setattr(depthwise_conv2d, "interpreting", lambda: False)
    monkeypatch.setattr(power_iteration, "interpreting", lambda: False)
    return bn_swish, squeeze_excite, depthwise_conv2d, power_iteration


@pytest.mark.parametrize("shape", BN_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_triton_bn_swish(triton_gpu, dtype, layout, shape):
    """No one-read forward (the statistics kernels run in training), and programs that fold several tiles
    of a channel in a split reduction (statistics and backward sums share the plan)."""
    K = triton_gpu[0]
    n, c, h, w = shape
    x = _empty(shape, dtype, layout)
    assert K._one_read_tile(x, layout) is None
    block_a, block_b, grid, split = K._reduce_plan(x, layout)
    tiles = cdiv(n, block_a) * cdiv(h * w, block_b) if layout == "nchw" else cdiv(n * h * w, block_a)
    assert grid[1] == split and split >= 2, (block_a, block_b, grid)
    assert tiles > split, f"{tiles} tiles per channel, split {split}: no program folds two tiles"


@pytest.mark.parametrize("case", SE_CASES, ids=lambda case: shape_id(case[0]))
@pytest.mark.parametrize("layout", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_triton_squeeze_excite(triton_gpu, dtype, layout, case):
    """Pooling and the backward sum: split reductions over H*W whose programs fold several tiles."""
    K = triton_gpu[1]
    n, c, h, w = case[0]
    block_a, block_b, programs, split = K._reduce_plan(_empty(case[0], dtype, layout), layout)
    tiles = cdiv(h * w, block_b if layout == "nchw" else block_a)
    assert split >= 2, (block_a, block_b, programs, split)
    assert tiles > split, f"{tiles} tiles per output, split {split}: no program folds two tiles"


@pytest.mark.parametrize("case", DW_CASES, ids=lambda case: shape_id(case[0]) + f"-k{case[1]}-s{case[2]}")
@pytest.mark.parametrize("layout", NATIVE)
def test_triton_depthwise_conv2d(triton_gpu, layout, case):
    """Several tiles per image for the forward and the input gradient (per residue class of the
    stride), and a weight gradient in several chunks of several tiles each."""
    K = triton_gpu[2]
    n, c, h, w, k, s, p, ho, wo = _dw_geometry(case)
    channels_last = layout == "nhwc"
    forward = K._plan(n, ho, wo, c, channels_last)
    assert forward["meta"]["BLOCK_N"] == 1  # the GPU's tiles, not the interpreter's
    assert forward["tiles"][1] * forward["tiles"][2] >= 2, forward
    backward_input = K._plan(n, cdiv(h, s), cdiv(w, s), c, channels_last)
    assert backward_input["tiles"][1] * backward_input["tiles"][2] >= 2, backward_input
    num_tiles = forward["tiles"][0] * forward["tiles"][1] * forward["tiles"][2]
    chunks, per_chunk = K._chunks(num_tiles, forward["c_blocks"], torch.device("meta"))
    assert chunks >= 2 and per_chunk >= 2, f"{num_tiles} tiles, {forward['c_blocks']} blocks: {chunks} x {per_chunk}"


def test_triton_power_iteration(triton_gpu):
    """One call holds weights of all three schedules: item path (several row and column items each),
    persistent (several tiles), resident (one tile)."""
    K = triton_gpu[3]
    mats = [torch.empty(s[0], torch.Size(s[1:]).numel(), device="meta") for s in PI_SHAPES]
    block_r, block_k = K._blocks()
    assert (block_r, block_k) == K.GPU_BLOCKS
    small, large = K._split(mats)
    shapes = [tuple(m.shape) for m in mats]
    assert sorted(large) == [0, 2], shapes
    for i in large:
        assert cdiv(shapes[i][0], block_r) >= 2 and cdiv(shapes[i][1], block_k) >= 2, shapes[i]
    rows, cols = shapes[1]
    assert 1 in small and rows > block_r and cdiv(rows, block_r) >= 2 and cdiv(cols, block_k) >= 2  # persistent
    assert 3 in small and shapes[3][0] <= block_r and shapes[3][1] <= block_k  # resident


# --------------------------------------------------------------------------------------------------- cuda


@pytest.fixture(scope="module")
def record():
    """``_launches.launches``: the CUDA launch code on a recorder of 132 SMs (built once, ~1.5 min)."""
    if torch.cuda.is_available():
        pytest.skip("the recorded plans do not depend on the machine: they are checked on CPU-only runs "
                    "(saves a host-compiler build of csrc/ on the GPU machine)")
    if not nvae_fast.backend_info()["backends"]["cuda"]["available"]:
        pytest.skip("the cuda backend's emulation cannot be built here, nor can the launch recorder")
    from ..cuda import _launches

    _launches.load()
    return _launches.launches


def _names(launches):
    return [launch.name for launch in launches]


def _reduce_parts_and_steps(launch, n, hw, per_sample):
    """(parts, loop steps per thread) of a launch_channel_reduce kernel (csrc/reduce.cuh) for x (n, ., h, w):
    NCHW, part y covers ``chunk = cdiv(vectors, parts)`` vectors of one output, TPR threads striding over
    them; NHWC, part z covers ``chunk = cdiv(rows, parts)`` rows, blockDim.y threads striding over them."""
    if launch.name == "reduce_inner_kernel":
        tpr, vec = int(launch.template_args[1]), int(launch.template_args[2])
        parts = launch.grid[1]
        vectors = (1 if per_sample else n) * hw // vec
        return parts, cdiv(cdiv(vectors, parts), tpr)
    assert launch.name == "reduce_columns_kernel", launch
    parts = launch.grid[2]
    rows = hw if per_sample else n * hw
    return parts, cdiv(cdiv(rows, parts), launch.block[1])


def _assert_split_reduction(launches, n, hw, per_sample):
    assert _names(launches) in (["reduce_inner_kernel", "reduce_finalize_kernel"],
                                ["reduce_columns_kernel", "reduce_finalize_kernel"]), launches
    parts, steps = _reduce_parts_and_steps(launches[0], n, hw, per_sample)
    assert parts >= 2 and steps >= 2, f"{launches[0]}: {parts} parts, {steps} steps per thread"


def _assert_grid_stride(launches, n, c, hw):
    """launch_channel_map (csrc/elementwise.cuh): blockIdx.y walks the samples, the x threads stride over
    a sample's C*H*W / V vectors; at least two steps each."""
    assert _names(launches) == ["channel_map_kernel"], launches
    (launch,) = launches
    vec = int(launch.template_args[2])
    steps = cdiv(c * hw // vec, launch.grid[0] * launch.block[0])
    assert launch.grid[1] == n and steps >= 2, f"{launch}: {steps} grid-stride steps"


@pytest.mark.parametrize("shape", BN_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_cuda_bn_swish(record, dtype, layout, shape):
    n, c, h, w = shape
    x = _empty(shape, dtype, layout, "cpu")
    acc = torch.empty(c)
    _assert_split_reduction(record("bn_swish_stats", x), n, h * w, per_sample=False)
    _assert_split_reduction(record("bn_swish_backward_reduce", x, x, acc, acc, acc, acc), n, h * w, per_sample=False)
    _assert_grid_stride(record("bn_swish_normalize", x, acc, acc, acc, acc), n, c, h * w)
    _assert_grid_stride(record("bn_swish_backward_dx", x, x, acc, acc, acc, acc, acc, acc, n * h * w), n, c, h * w)


@pytest.mark.parametrize("case", SE_CASES, ids=lambda case: shape_id(case[0]))
@pytest.mark.parametrize("layout", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_cuda_squeeze_excite(record, dtype, layout, case):
    n, c, h, w = case[0]
    x = _empty(case[0], dtype, layout, "cpu")
    hidden = case[1]
    w1, w2, stats = torch.empty(hidden, c, dtype=dtype), torch.empty(c, hidden, dtype=dtype), torch.empty(n, c)
    parts, chunk, blocks, channel_blocks = torch.ops.nvae_fast_plan.se_plan(x)  # the recorder's 132 SMs
    for launches in (record("se_forward", x, w1, None, w2, None, 0),
                     record("se_backward", x, x, stats, stats, w1, None, w2, None, 1)):
        assert [launch.name for launch in launches[:1]] == ["se_reduce_kernel"], launches
        reduce = launches[0]
        # Every sample's pixels split into parts over several blocks, each block's warps (NCHW) or
        # 8-row steps (NHWC) looping more than once.
        assert reduce.grid[:2] == (blocks, n) and parts >= 2 and blocks >= 2, (reduce, parts, blocks)
        if layout == "nchw":
            assert cdiv(c * parts, blocks * 8) >= 2, (reduce, parts)
        else:
            assert blocks == parts * channel_blocks and cdiv(chunk, 8) >= 2, (reduce, chunk)
            assert channel_blocks >= 2 and cdiv(cdiv(c, 32), channel_blocks) >= 2, (reduce, channel_blocks)
        (scale,) = launches[1:]
        # The scale / dx pass: sample n's items (channels times pixel parts) over several blocks.
        assert scale.name == "se_map_kernel" and scale.grid[:2][1] == n and scale.grid[0] >= 2, scale


@pytest.mark.parametrize("case", DW_CASES, ids=lambda case: shape_id(case[0]) + f"-k{case[1]}-s{case[2]}")
@pytest.mark.parametrize("layout", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_cuda_depthwise_conv2d(record, monkeypatch, dtype, layout, case):
    """Several spatial tiles (grid.y) for the forward and the input gradient; a weight gradient whose
    (sample, tile) items are split into parts (grid.y, at least two), one per item on a device with
    1024 SMs (8192 target blocks), where the items cap them."""
    n, c, h, w, k, s, p, ho, wo = _dw_geometry(case)
    x = _empty((n, c, h, w), dtype, layout, "cpu")
    dy = _empty((n, c, ho, wo), dtype, layout, "cpu")
    weight, bias = torch.empty(c, 1, k, k), torch.empty(c)
    tiled = "dw_window_kernel" if k in (3, 5) and s == 1 else None
    (forward,) = record("dwconv2d_forward", x, weight, bias, [s, s], [p, p])
    (backward_input,) = record("dwconv2d_backward_input", dy, weight, [h, w], [s, s], [p, p])
    assert forward.name == (tiled or "dw_forward_kernel") and forward.grid[1] >= 2, forward
    assert backward_input.name == (tiled or "dw_backward_input_kernel") and backward_input.grid[1] >= 2, backward_input

    weight_grad = record("dwconv2d_backward_weight", dy, x, [k, k], [s, s], [p, p])
    assert _names(weight_grad) == ["dw_backward_weight_kernel", "dw_weight_finalize_kernel"], weight_grad
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", str(SMS))
    plan = nvcuda.depthwise_conv2d.plan(x, weight, (s, s), (p, p), (1, 1))["backward_weight"]
    parts, items = weight_grad[0].grid[1], plan["items"]
    assert weight_grad[0].grid[:2] == plan["grid"] and items == n * cdiv(ho, plan["tile"][0]) * cdiv(wo, plan["tile"][1])
    assert 2 <= parts <= items, f"{weight_grad[0]}: {parts} parts over {items} items"
    wide = record("dwconv2d_backward_weight", dy, x, [k, k], [s, s], [p, p], multiprocessors=1024)[0]
    assert wide.grid[0] == weight_grad[0].grid[0] and wide.grid[1] == items, wide


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_cuda_power_iteration(record, dtype):
    """One block per 64 x 256 tile: several for every weight but the last, one call for all of them."""
    mats = [torch.empty(s[0], torch.Size(s[1:]).numel(), dtype=dtype) for s in PI_SHAPES]
    us = [torch.empty(m.shape[0]) for m in mats]
    vs = [torch.empty(m.shape[1]) for m in mats]
    tiles = []
    for m, u, v in zip(mats, us, vs):
        launches = record("power_iteration_update", [m], [u], [v], 1)
        assert _names(launches) == ["pi_tiles_kernel", "pi_normalize_kernel"] * 2, launches
        tiles.append(launches[0].grid[0])
    assert all(t >= 2 for t in tiles[:-1]) and tiles[-1] == 1, tiles
    launches = record("power_iteration_update", mats, us, vs, 2)
    assert [launch.grid[0] for launch in launches] == [sum(tiles), len(mats)] * 4
    launches = record("power_iteration_sigmas", mats, us, vs)
    assert _names(launches) == ["pi_tiles_kernel", "pi_sigma_kernel"] and launches[0].grid[0] == sum(tiles)
