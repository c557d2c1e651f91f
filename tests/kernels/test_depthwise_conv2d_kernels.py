"""The Triton depthwise-conv2d kernel set against the float64 ATen reference, kernel by kernel.

Runs on the GPU when there is one, otherwise in the Triton interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``). Every comparison uses the same rounded inputs on both sides, so the tolerances
measure the kernels' own arithmetic: float32 accumulation plus the final rounding of y / dx to the input
dtype (dweight and dbias are returned in float32 and must match to float32 accuracy for every dtype).
"""

import pytest
import torch

from nvae_fast.ops.depthwise_conv2d import TorchKernels

from .._tensors import in_layout, randn

dw = pytest.importorskip("nvae_fast.kernels.depthwise_conv2d")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# |actual - expected| <= TOL * max|expected|: rounding of the output to the dtype, with headroom.
OUT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GRAD_W_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

# (shape, kernel, stride, padding, dilation, layout, dtype)
CASES = [
    ((2, 3, 9, 7), 5, 1, 2, 1, "contiguous", torch.float32),
    ((2, 3, 9, 7), 5, 1, 2, 1, "channels_last", torch.float16),
    ((1, 4, 8, 11), 3, 2, 1, 1, "channels_last", torch.bfloat16),
    ((3, 2, 13, 10), 5, 2, 2, 1, "strided", torch.float32),
    ((2, 5, 8, 9), 7, 1, 0, 1, "contiguous", torch.bfloat16),
    ((1, 3, 12, 10), 9, 2, (4, 3), 1, "channels_last", torch.float32),
    ((1, 2, 6, 5), 11, 1, 5, 1, "contiguous", torch.float16),
    ((2, 3, 11, 9), 3, 1, 2, 2, "channels_last", torch.float32),
    ((1, 3, 10, 9), (3, 5), (1, 2), (0, 3), 1, "contiguous", torch.float32),
    ((2, 70, 6, 5), 5, 2, 2, 1, "channels_last", torch.float32),
    ((2, 3, 7, 6), 5, 2, 2, 1, "contiguous", torch.float64),
    ((2, 6, 1, 1), 3, 1, 1, 1, "channels_last", torch.float32),
    ((1, 2, 9, 10), 3, 3, 1, 1, "strided", torch.float16),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _case_id(case):
    shape, k, s, p, d, kind, dtype = case
    return f"{'x'.join(map(str, shape))}-k{_pair(k)}-s{_pair(s)}-p{_pair(p)}-d{d}-{kind}-{str(dtype)[6:]}"


def _assert_close(actual, expected, tol, what):
    expected = expected.to(torch.float64)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.to(torch.float64) - expected).abs().max().item() if expected.numel() else 0.0
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3g} > {tol:g} x max|expected| {scale:.3g}"


def _run_all(shape, k, stride, padding, dilation, kind, dtype, seed=0, with_bias=True):
    """Kernel outputs and float64 references for one case: {name: (actual, expected, tol)}."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = in_layout(randn(*shape, dtype=dtype, device=DEVICE, generator=gen), kind)
    weight = randn(shape[1], 1, kh, kw, dtype=torch.float32, device=DEVICE, generator=gen, scale=0.3)
    bias = randn(shape[1], dtype=torch.float32, device=DEVICE, generator=gen) if with_bias else None
    x64, w64 = x.double(), weight.double()
    b64 = None if bias is None else bias.double()
    y = dw.forward(x, weight, bias, stride, padding, dilation)
    y_ref = TorchKernels.forward(x64, w64, b64, stride, padding, dilation)
    dy = in_layout(randn(*y_ref.shape, dtype=dtype, device=DEVICE, generator=gen), kind)
    dx = dw.backward_input(dy, weight, shape[2:], stride, padding, dilation)
    dx_ref = TorchKernels.backward_input(dy.double(), w64, shape[2:], stride, padding, dilation)
    dweight, dbias = dw.backward_weight(dy, x, (kh, kw), stride, padding, dilation, with_bias)
    dweight_ref, dbias_ref = TorchKernels.backward_weight(
        dy.double(), x64, (kh, kw), stride, padding, dilation, with_bias
    )
    out = {
        "y": (y, y_ref, OUT_TOL[dtype]),
        "dx": (dx, dx_ref, OUT_TOL[dtype]),
        "dweight": (dweight, dweight_ref, GRAD_W_TOL[dtype]),
    }
    if with_bias:
        out["dbias"] = (dbias, dbias_ref, GRAD_W_TOL[dtype])
    else:
        assert dbias is None
    return x, dy, out


def _check(results, dtype):
    for name, (actual, expected, tol) in results.items():
        _assert_close(actual, expected, tol, f"{name} ({dtype})")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernels_match_reference(case):
    shape, k, stride, padding, dilation, kind, dtype = case
    x, dy, results = _run_all(*case)
    _check(results, dtype)
    (y, *_), (dx, *_), (dweight, *_) = results["y"], results["dx"], results["dweight"]
    assert y.dtype == dx.dtype == dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert dweight.dtype == results["dbias"][0].dtype == acc and dweight.is_contiguous()
    channels_last = kind == "channels_last" and shape[1] > 1 and shape[2] * shape[3] > 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), "y must come back in x's layout"
    assert dx.is_contiguous(memory_format=fmt), "dx must come back in dy's layout"


def test_without_bias():
    x, dy, results = _run_all((2, 4, 7, 8), 3, 1, 1, 1, "channels_last", torch.float32, with_bias=False)
    _check(results, torch.float32)


def test_expanded_gradient_is_read_in_place():
    """dy = ones expanded from one element (all strides 0), as autograd hands out for y.sum()."""
    gen = torch.Generator().manual_seed(3)
    x = randn(2, 3, 8, 7, dtype=torch.float32, device=DEVICE, generator=gen)
    weight = randn(3, 1, 5, 5, dtype=torch.float32, device=DEVICE, generator=gen)
    dy = torch.ones(1, 1, 1, 1, device=DEVICE).expand(2, 3, 8, 7)
    dx = dw.backward_input(dy, weight, (8, 7), (1, 1), (2, 2), (1, 1))
    ref = TorchKernels.backward_input(dy.double(), weight.double(), (8, 7), (1, 1), (2, 2), (1, 1))
    _assert_close(dx, ref, 1e-5, "dx")
    dweight, dbias = dw.backward_weight(dy, x, (5, 5), (1, 1), (2, 2), (1, 1), True)
    dweight_ref, dbias_ref = TorchKernels.backward_weight(dy.double(), x.double(), (5, 5), (1, 1), (2, 2), (1, 1), True)
    _assert_close(dweight, dweight_ref, 1e-5, "dweight")
    _assert_close(dbias, dbias_ref, 1e-5, "dbias")


@pytest.fixture
def gpu_tiles(monkeypatch):
    """Launch with the tiles a GPU gets (several tiles and channel blocks, several weight-gradient chunks)."""
    monkeypatch.setattr(dw, "interpreting", lambda: False)


@pytest.mark.parametrize(
    "case",
    [
        ((1, 2, 20, 70), 3, 1, 1, 1, "contiguous", torch.float32),
        ((1, 70, 9, 19), 3, 2, 1, 1, "channels_last", torch.float16),
    ],
    ids=_case_id,
)
def test_gpu_tiling_matches_reference(gpu_tiles, case):
    shape, k, stride, padding, dilation, kind, dtype = case
    _, _, results = _run_all(*case)
    _check(results, dtype)


def test_gpu_tiling_plans_several_tiles_and_chunks(gpu_tiles):
    plan = dw._plan(1, 20, 70, 2, channels_last=False)
    assert plan["meta"]["BLOCK_C"] == 1 and plan["tiles"][1] * plan["tiles"][2] > 1
    tiles = plan["tiles"][0] * plan["tiles"][1] * plan["tiles"][2]
    assert dw._chunks(tiles, plan["c_blocks"], torch.device("cpu"))[0] > 1
    plan = dw._plan(2, 5, 10, 70, channels_last=True)
    assert plan["meta"]["BLOCK_C"] == 64 and plan["c_blocks"] == 2


def test_weight_gradient_is_deterministic(gpu_tiles):
    gen = torch.Generator().manual_seed(11)
    x = randn(2, 3, 15, 14, dtype=torch.float32, device=DEVICE, generator=gen, scale=10.0)
    dy = randn(2, 3, 15, 14, dtype=torch.float32, device=DEVICE, generator=gen)
    assert dw._chunks(2, 3, x.device)[0] == 2  # two chunks of partial sums per channel
    runs = [dw.backward_weight(dy, x, (3, 3), (1, 1), (1, 1), (1, 1), True) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_empty_batch():
    x = torch.empty(0, 3, 6, 6, device=DEVICE)
    weight = torch.randn(3, 1, 3, 3, device=DEVICE)
    y = dw.forward(x, weight, None, (1, 1), (1, 1), (1, 1))
    assert y.shape == (0, 3, 6, 6)
    dweight, dbias = dw.backward_weight(y, x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert dweight.shape == (3, 1, 3, 3) and not dweight.any() and not dbias.any()


def test_supports_names_the_reason():
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    assert dw.supports(x, torch.randn(3, 1, 11, 11), (1, 1), (5, 5), (1, 1)) is None
    reason = dw.supports(x, torch.randn(3, 1, 13, 13), (1, 1), (6, 6), (1, 1))
    assert reason is not None and "13x13" in reason
