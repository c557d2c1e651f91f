"""The plans of the CUDA depthwise convolution (``nvae_fast.cuda.depthwise_conv2d.plan``) and each plan's
kernels at its boundaries, against float64 references, on the GPU or in the CPU emulation.

Plans (csrc/depthwise_conv2d.cu): forward and backward_input blocks copy a source tile with its halo
(NCHW rows in 16-byte vectors where the addresses allow, scalar heads and tails) and take ``samples``
images each when the images are small; the weight gradient reads x (with the halo) and dy once per
(sample, tile) item for all taps, and splits the items into ``parts`` that a finalize kernel adds in a
fixed order. Every case below asserts the plan it is meant to take, so it fails when a threshold moves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nvae_fast.cuda as nvcuda

from .._tensors import in_layout, randn
from ._cases import KERNEL_DEVICE, needs_kernels

pytestmark = [needs_kernels]

# (atol relative to the largest expected magnitude, rtol), as in test_cuda_kernels
TOL = {
    torch.float64: (1e-11, 1e-10), torch.float32: (2e-6, 2e-5), torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}
ACC_TOL = {torch.float64: (1e-11, 1e-9), torch.float32: (2e-5, 1e-4)}


def _close(actual, expected, tol):
    atol, rtol = tol
    scale = max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _run(shape, k, s, p, dtype, kind, seed=0):
    """The three kernels on fresh random inputs against float64 references; returns the plan."""
    dw = nvcuda.depthwise_conv2d
    n, c, h, w = shape
    acc = _acc(dtype)
    x = in_layout(randn(*shape, dtype=dtype, seed=seed).to(KERNEL_DEVICE), kind)
    weight = randn(c, 1, k, k, dtype=acc, seed=seed + 1, scale=0.3).to(KERNEL_DEVICE)
    bias = randn(c, dtype=acc, seed=seed + 2).to(KERNEL_DEVICE)
    stride, padding, dilation = (s, s), (p, p), (1, 1)
    y = dw.forward(x, weight, bias, stride, padding, dilation)
    _close(y, F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, 1, c), TOL[dtype])
    dy = in_layout(randn(*y.shape, dtype=dtype, seed=seed + 3).to(KERNEL_DEVICE), kind)
    dx = dw.backward_input(dy, weight, (h, w), stride, padding, dilation)
    _close(dx, torch.nn.grad.conv2d_input(x.shape, weight.double(), dy.double(), stride, padding, 1, c), TOL[dtype])
    dweight, dbias = dw.backward_weight(dy, x, (k, k), stride, padding, dilation, True)
    ref = torch.nn.grad.conv2d_weight(x.double(), weight.shape, dy.double(), stride, padding, 1, c)
    _close(dweight, ref, ACC_TOL[acc])
    _close(dbias, dy.double().sum((0, 2, 3)), ACC_TOL[acc])
    return dw.plan(x, weight, stride, padding, dilation)


@pytest.fixture
def sms(monkeypatch):
    """Sets the emulated device's multiprocessors; the tests using it run in the CPU emulation only."""
    if KERNEL_DEVICE.type != "cpu":
        pytest.skip("sets the emulated device's multiprocessors")

    def use(count):
        monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", str(count))

    return use


# --- weight gradient ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("side, tiles", [(64, 1), (65, 4)])
def test_weight_grad_tile_boundary(kind, side, tiles):
    """A 64 x 64 dy is one tile; 65 x 65 takes four, whose x tiles share a halo inside the image."""
    plan = _run((2, 3, side, side), 5, 1, 2, torch.float32, kind)["backward_weight"]
    assert plan["items"] == 2 * tiles and plan["tile"] == (64, 64), plan


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_grad_parts_take_several_items(sms, kind, dtype):
    """On one multiprocessor (8 target blocks) 12 items split into 8 parts: some parts add two items
    (across samples), the finalize kernel adds the parts."""
    sms(1)
    plan = _run((6, 2, 40, 70), 5, 1, 2, dtype, kind)["backward_weight"]
    assert plan["grid"][0] == 1 and plan["items"] == 12 and plan["parts"] == 8, plan


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_weight_grad_parts_capped_by_traffic(kind):
    """Small images: the parts' partial sums would outweigh the bytes read, so one part takes all items
    and writes dweight and dbias itself (no finalize kernel)."""
    plan = _run((3, 9, 4, 5), 5, 1, 2, torch.float32, kind)["backward_weight"]
    assert plan["grid"][0] == 1 and plan["parts"] == 1 < plan["items"] == 3 and not plan["finalize"], plan


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "unaligned"])
@pytest.mark.parametrize("case", [((2, 5, 33, 17), 3, 2, 1), ((1, 3, 23, 29), 7, 2, 3), ((2, 4, 9, 70), 5, 1, 0)],
                         ids=lambda case: f"{'x'.join(map(str, case[0]))}-k{case[1]}-s{case[2]}-p{case[3]}")
def test_weight_grad_strides_and_halos(kind, case):
    """Strides 1 and 2, padding 0 (no halo outside the image) and more, odd sizes, with x tiles whose
    halo reaches past the image border."""
    shape, k, s, p = case
    plan = _run(shape, k, s, p, torch.float32, kind)["backward_weight"]
    assert plan["source_tile"] == ((plan["tile"][0] - 1) * s + k, (plan["tile"][1] - 1) * s + k), plan


def test_weight_grad_float64_halves_the_tile():
    """float64 tiles of 64 x 64 exceed the shared memory: 32 x 64."""
    plan = _run((1, 2, 64, 64), 5, 1, 2, torch.float64, "contiguous")["backward_weight"]
    assert plan["tile"] == (32, 64) and plan["items"] == 2, plan


# --- forward and backward_input: samples per block, vector copies ---------------------------------------


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_small_images_share_the_taps(sms, kind, dtype):
    """8 x 8 images: a block takes several samples (the last group partial, 5 samples) and reads the
    taps once for them; float32 two, 16-bit types three."""
    sms(1)
    plan = _run((5, 6, 8, 8), 5, 1, 2, dtype, kind)
    want = 2 if dtype == torch.float32 else 3
    assert plan["forward"]["kernel"] == "dw_window_kernel", plan
    for key in ("forward", "backward_input"):
        assert plan[key]["samples"] == want, plan[key]


@pytest.mark.parametrize("side, samples", [(8, 2), (9, 1)])
def test_samples_boundary(sms, side, samples):
    """float32 NCHW 5x5: an 8 x 8 output's 12 x 12 source tile is below 8 x the taps' bytes (two
    samples per block); 9 x 9 outputs take a 16 x 20 tile (one sample)."""
    sms(1)
    plan = _run((3, 4, side, side), 5, 1, 2, torch.float32, "contiguous")
    assert plan["forward"]["samples"] == plan["backward_input"]["samples"] == samples, plan


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [((5, 3, 3, 3), 3, 2, 1), ((4, 2, 2, 3), 4, 1, 2)], ids=["k3-s2", "k4-s1"])
def test_general_kernels_take_several_samples(sms, kind, case):
    """The general forward / backward_input kernels (stride 2, even kernels) over several samples."""
    sms(1)
    shape, k, s, p = case
    plan = _run(shape, k, s, p, torch.float32, kind)
    assert plan["forward"]["kernel"] == "dw_forward_kernel" and plan["forward"]["samples"] >= 2, plan
    assert plan["backward_input"]["kernel"] == "dw_backward_input_kernel", plan
    assert plan["backward_input"]["samples"] >= 2, plan


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("height, row_tiles", [(32, 1), (33, 2)])
def test_nhwc_window_row_groups(dtype, height, row_tiles):
    """channels_last 5x5: 8 channels by 32 x 32 outputs per block, each thread 8 groups of 4 rows; 33 rows
    take a second row of tiles (its halo rows read by both)."""
    plan = _run((2, 8, height, 32), 5, 1, 2, dtype, "channels_last")
    for key in ("forward", "backward_input"):
        p = plan[key]
        assert p["kernel"] == "dw_window_kernel" and p["channels"] == 8 and p["tile"] == (32, 32), p
        assert p["row_groups"] == 8 and p["grid"][1] == row_tiles, p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "unaligned"])
@pytest.mark.parametrize("width", [3, 16, 37, 64])
def test_nchw_rows_vector_and_scalar(dtype, kind, width):
    """NCHW tile rows in 16-byte vectors with scalar heads and tails: rows narrower than a vector (all
    scalar), widths that keep every row aligned, odd widths (every row's split differs) and storage one
    element off (no row aligned at its start)."""
    plan = _run((2, 3, 11, width), 5, 1, 2, dtype, kind)
    for key in ("forward", "backward_input", "backward_weight"):
        assert plan[key]["vec"] == 16 // torch.empty((), dtype=dtype).element_size(), plan[key]


# --- the plan is what the host code launches --------------------------------------------------------------

PLAN_CASES = [
    ((2, 3, 7, 9), 3, 1, 1), ((2, 16, 16, 16), 5, 2, 2), ((1, 8, 33, 31), 7, 2, 3), ((2, 24, 12, 10), 11, 2, 5),
    ((2, 32, 64, 64), 5, 1, 2), ((2, 5, 13, 11), 5, 1, 1), ((24, 132, 17, 33), 5, 1, 2), ((16, 3072, 8, 8), 5, 1, 2),
    ((4, 90, 256, 256), 5, 1, 2), ((32, 384, 32, 32), 5, 1, 2), ((4, 5760, 8, 8), 5, 1, 2), ((6, 2, 40, 70), 5, 1, 2),
]


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "unaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda case: f"{'x'.join(map(str, case[0]))}-k{case[1]}-s{case[2]}")
def test_plan_matches_the_launches(monkeypatch, kind, dtype, case):
    """plan() reports the kernel, vector width, grid, block and shared memory that the launch code of
    csrc/ records for a 132-SM device (tests/cuda/launch_recorder.cpp), for all three passes."""
    from ._launches import MULTIPROCESSORS, launches

    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", str(MULTIPROCESSORS))
    (n, c, h, w), k, s, p = case
    acc = _acc(dtype)
    x = in_layout(torch.zeros(n, c, h, w, dtype=dtype), kind)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    dy = in_layout(torch.zeros(n, c, ho, wo, dtype=dtype), kind)
    weight = torch.zeros(c, 1, k, k, dtype=acc)
    plan = nvcuda.depthwise_conv2d.plan(x, weight, (s, s), (p, p), (1, 1))
    recorded = {
        "forward": launches("dwconv2d_forward", x, weight, None, [s, s], [p, p]),
        "backward_input": launches("dwconv2d_backward_input", dy, weight, [h, w], [s, s], [p, p]),
        "backward_weight": launches("dwconv2d_backward_weight", dy, x, [k, k], [s, s], [p, p]),
    }
    for key, runs in recorded.items():
        got, want = runs[0], plan[key]
        assert (got.name, got.grid[:2], got.threads, got.smem, int(got.template_args[2])) == (
            want["kernel"], tuple(want["grid"]), want["block"], want["smem"], want["vec"]), (key, got, want)
    finalize = ["dw_weight_finalize_kernel"] if plan["backward_weight"]["finalize"] else []
    assert [r.name for r in recorded["backward_weight"]] == ["dw_backward_weight_kernel"] + finalize
