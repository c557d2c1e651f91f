"""The plans of the Triton depthwise convolution (``plan``) at their boundaries, with the tiles a GPU gets,
against the float64 ATen reference in the interpreter.

A channels_last tile loads its source once, with the halo of the taps (``X_PIX`` rows), and gathers each
tap from registers (``STAGED``); an NCHW tile (one channel) loads every tap from memory. So do the
forward pass and the input gradient at stride 1 (the forward kernel with flipped taps and padding
(K - 1) D - P), and the weight gradient (dy once per tile). Strides above 1 take the residue-class
input-gradient kernel. Each case asserts the plan it is meant to take.
"""

import pytest
import torch

from .test_depthwise_conv2d_kernels import _check, _run_all

dw = pytest.importorskip("nvae_fast.kernels.depthwise_conv2d")


@pytest.fixture
def gpu_tiles(monkeypatch):
    """Plans with the tiles a GPU gets (NCHW: one channel by up to 64-wide rows; NHWC: 64 channels)."""
    monkeypatch.setattr(dw, "interpreting", lambda: False)


def _plan(shape, k, stride, padding, dilation, kind, dtype):
    x = torch.empty(shape, dtype=dtype)
    if kind == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    s, p, d = (stride, stride), (padding, padding), (dilation, dilation)
    return dw.plan(x, torch.empty(shape[1], 1, k, k), s, p, d)


def _check_case(case):
    _, _, results = _run_all(*case)
    _check(results, case[-1])
    return _plan(*case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width, tiles", [(64, 1), (65, 2)])
def test_row_tile_boundary(gpu_tiles, dtype, width, tiles):
    """NCHW rows up to 64 wide are one tile; 65 takes two, whose taps read across the tile border. NCHW
    tiles load their taps from memory (no staged source)."""
    plan = _check_case(((1, 2, 5, width), 5, 1, 2, 1, "contiguous", dtype))
    for key in ("forward", "backward_input", "backward_weight"):
        assert plan[key]["tiles"][2] == tiles and plan[key]["meta"]["BLOCK_C"] == 1, plan[key]
    assert plan["backward_input"]["kernel"] == "_forward_kernel"
    for key in ("forward", "backward_weight"):
        assert plan[key]["meta"]["STAGED"] is False and plan[key]["meta"]["X_PIX"] == 1, plan[key]["meta"]


@pytest.mark.parametrize(
    "case",
    [
        ((1, 3, 21, 9), 3, 1, 0, 1, "contiguous", torch.float32),  # no padding: halos only inside the image
        ((2, 2, 7, 11), 3, 1, 3, 1, "contiguous", torch.float16),  # padding > K - 1: negative flipped padding
        ((1, 2, 17, 9), 5, 1, 4, 2, "contiguous", torch.float32),  # dilation 2 at stride 1
        ((2, 70, 5, 6), 5, 1, 2, 1, "channels_last", torch.bfloat16),  # two channel blocks of 64
        ((1, 3, 9, 33), 7, 1, 3, 1, "contiguous", torch.float64),
    ],
    ids=lambda case: f"{'x'.join(map(str, case[0]))}-k{case[1]}-p{case[3]}-d{case[4]}-{case[5]}-{str(case[6])[6:]}",
)
def test_stride_one_gathers(gpu_tiles, case):
    """Stride 1: forward and input gradient through the forward kernel, halos at the image border."""
    plan = _check_case(case)
    assert plan["forward"]["kernel"] == plan["backward_input"]["kernel"] == "_forward_kernel", plan


@pytest.mark.parametrize(
    "case",
    [
        ((1, 2, 19, 70), 5, 2, 2, 1, "contiguous", torch.float32),
        ((2, 9, 11, 13), 3, 2, 1, 1, "channels_last", torch.bfloat16),
        ((1, 3, 14, 9), 4, 2, 0, 1, "contiguous", torch.float32),
    ],
    ids=lambda case: f"{'x'.join(map(str, case[0]))}-k{case[1]}-s2-{case[5]}-{str(case[6])[6:]}",
)
def test_stride_two(gpu_tiles, case):
    """Stride 2: strided source tiles (channels_last) or strided tap loads (NCHW) for the forward pass and
    the weight gradient, the residue-class kernel for the input gradient."""
    plan = _check_case(case)
    assert plan["backward_input"]["kernel"] == "_backward_input_kernel", plan
    k = case[1]
    for key in ("forward", "backward_weight"):
        meta = plan[key]["meta"]
        if case[5] == "channels_last":  # the staged source: the strided tile and the halo, a power of two
            assert meta["STAGED"] is True, meta
            assert meta["X_PIX"] == dw.pow2(((meta["BLOCK_H"] - 1) * 2 + k) * ((meta["BLOCK_W"] - 1) * 2 + k)), meta
        else:
            assert meta["STAGED"] is False and meta["X_PIX"] == 1, meta


def test_weight_gradient_chunks_of_several_tiles(gpu_tiles, monkeypatch):
    """A chunk folds several tiles (dy and x once each) into its per-tap sums."""
    monkeypatch.setattr(dw, "sm_count", lambda device: 1)
    case = ((3, 2, 9, 70), 5, 1, 2, 1, "contiguous", torch.float32)
    plan = _check_case(case)["backward_weight"]
    assert plan["num_tiles"] == 6 and plan["chunks"] == 2 and plan["tiles_per_chunk"] == 3, plan
    assert plan["meta"]["TAPS_P"] == 32 and plan["grid"] == (2 * plan["c_blocks"],), plan
    assert not plan["meta"]["DIRECT"] and plan["reduce_grid"] == (1,), plan


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_interpreter_tiles_take_whole_images(kind):
    """Under the interpreter a tile holds whole images (several of them): the halo is all padding; the
    weight gradient's one chunk writes dweight and dbias itself (no reduction kernel)."""
    plan = _check_case(((3, 5, 6, 7), 5, 1, 2, 1, kind, torch.float32))
    assert plan["forward"]["tiles"] == (1, 1, 1) and plan["forward"]["meta"]["BLOCK_N"] == 4, plan
    weight = plan["backward_weight"]
    assert weight["chunks"] == 1 and weight["meta"]["DIRECT"] and weight["reduce_grid"] is None, weight
