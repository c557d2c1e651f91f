"""The CUDA extension on any machine: registration, fake implementations, argument errors, glue.

Nothing here launches a kernel, so it runs without a GPU wherever ``nvae_fast._C`` was built (tests that
need the extension skip with the import error otherwise). The kernels themselves are tested by
test_cuda_kernels.py, test_cuda_opcheck.py and test_cuda_compile.py, on a GPU or in the CPU emulation. The
tests here run with the emulation off (``cuda_emulation_off``): they are about the real extension's glue.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import nvae_fast.cuda as nvcuda
from nvae_fast.cuda import _library

from .._tensors import in_layout, memory_format, randn
from ._cases import ALL_OPS, needs_extension

pytestmark = pytest.mark.usefixtures("cuda_emulation_off")

OPS = torch.ops.nvae_fast

# The functions of each kernel-set contract (nvae_fast.ops.<op> docstrings).
CONTRACT = {
    "bn_swish": ("supports", "batch_stats", "normalize", "backward_reduce", "backward_dx"),
    "depthwise_conv2d": ("supports", "forward", "backward_input", "backward_weight", "plan"),
    "squeeze_excite": ("supports", "plan", "forward", "backward"),
    "power_iteration": ("supports", "update", "sigmas"),
}


def test_import_does_not_initialise_cuda():
    code = (
        "import torch, nvae_fast, nvae_fast.cuda, nvae_fast.cuda.bn_swish, nvae_fast.cuda.depthwise_conv2d, "
        "nvae_fast.cuda.squeeze_excite, nvae_fast.cuda.power_iteration; print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("op", sorted(CONTRACT))
def test_kernel_sets_follow_the_contract(op):
    module = getattr(nvcuda, op)
    for name in CONTRACT[op]:
        assert callable(getattr(module, name)), f"nvae_fast.cuda.{op} lacks {name}"
    assert set(CONTRACT[op]) <= set(module.__all__)


@needs_extension
def test_extension_imports():
    import nvae_fast._C  # noqa: F401

    assert nvcuda.available() and nvcuda.missing() is None


@needs_extension
def test_every_op_registered():
    registered = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("nvae_fast::")}
    assert registered == set(ALL_OPS)


@needs_extension
@pytest.mark.parametrize("name", ALL_OPS)
def test_op_has_cuda_kernel_and_fake(name):
    """Every op has a CUDA kernel and a fake implementation, or is composite (decomposed into the others)."""
    qualname = f"nvae_fast::{name}"
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeImplicitAutograd")
    assert composite == (name in _library.COMPOSITES)
    if not composite:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"), "no fake implementation registered"


def test_supports_reasons():
    w = torch.empty(4, 1, 3, 3)
    x = torch.empty(2, 4, 8, 8)
    dw = nvcuda.depthwise_conv2d
    assert "dilation" in dw.supports(x, w, (1, 1), (1, 1), (2, 2))
    assert "stride" in dw.supports(x, w, (3, 1), (1, 1), (1, 1))
    assert "kernel size" in dw.supports(x, torch.empty(4, 1, 13, 3), (1, 1), (1, 1), (1, 1))
    assert "padding" in dw.supports(x, w, (1, 1), (2000, 0), (1, 1))
    assert "no elements" in nvcuda.power_iteration.supports([torch.empty(3, 4), torch.empty(0, 5)])
    assert dw.supports(x, w, (2, 1), (1, 0), (1, 1)) is None


def test_glue_without_extension_raises(monkeypatch):
    monkeypatch.setattr(_library, "_IMPORT_ERROR", ImportError("simulated: no _C"))
    x = randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="nvae_fast._C is not built"):
        nvcuda.bn_swish.batch_stats(x)
    with pytest.raises(RuntimeError, match="nvae_fast._C is not built"):
        nvcuda.squeeze_excite.forward(x, randn(2, 3), None, randn(3, 2), None, "relu")


# --- fake implementations: meta tensors (shapes, dtypes, memory formats) and symbolic tracing ---------


def _meta(shape, dtype=torch.float16, kind="contiguous"):
    return in_layout(torch.empty(shape, dtype=dtype, device="meta"), kind)


@needs_extension
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_fake_bn_swish_and_se(dtype, kind):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = _meta((2, 6, 5, 7), dtype, kind)
    vec = torch.empty(6, dtype=acc, device="meta")
    mean, var = OPS.bn_swish_stats(x)
    assert mean.shape == var.shape == (6,) and mean.dtype == var.dtype == acc
    for y in (OPS.bn_swish_normalize(x, vec, vec, vec, vec), OPS.bn_swish_backward_dx(x, x, vec, vec, vec, vec, vec, vec, 70)):
        assert y.shape == x.shape and y.dtype == dtype and y.stride() == x.stride()
    sums = OPS.bn_swish_backward_reduce(x, x, vec, vec, vec, vec)
    assert [s.shape for s in sums] == [(6,), (6,)]
    gate = torch.empty(2, 6, dtype=acc, device="meta")
    w1, w2 = torch.empty(4, 6, dtype=dtype, device="meta"), torch.empty(6, 4, dtype=dtype, device="meta")
    y, m, g = OPS.se_forward(x, w1, None, w2, None, 0)
    assert m.shape == g.shape == (2, 6) and m.dtype == g.dtype == acc
    dx, dw1, db1, dw2, db2 = OPS.se_backward(x, x, gate, gate, w1, None, w2, None, 1)
    for out in (y, dx):
        assert out.shape == x.shape and out.dtype == dtype and out.stride() == x.stride()
    assert (dw1.shape, db1.shape, dw2.shape, db2.shape) == ((4, 6), (4,), (6, 4), (6,)) and dw1.dtype == dtype


@needs_extension
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("stride,padding,kernel", [((1, 1), (2, 2), (5, 5)), ((2, 1), (1, 0), (3, 4)), ((2, 2), (0, 3), (7, 1))])
def test_fake_depthwise(kind, stride, padding, kernel):
    x = _meta((3, 8, 11, 9), torch.bfloat16, kind)
    w = torch.empty(8, 1, *kernel, device="meta")
    y = OPS.dwconv2d_forward(x, w, None, list(stride), list(padding))
    ref = torch.nn.functional.conv2d(x.float(), w, None, stride, padding, 1, 8)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=memory_format(kind))
    dx = OPS.dwconv2d_backward_input(y, w, [11, 9], list(stride), list(padding))
    assert dx.shape == x.shape and dx.stride() == x.stride()
    dw, db = OPS.dwconv2d_backward_weight(y, x, list(kernel), list(stride), list(padding))
    assert dw.shape == (8, 1, *kernel) and db.shape == (8,) and dw.dtype == db.dtype == torch.float32


@needs_extension
def test_fake_power_iteration():
    mats = [torch.empty(4, 27, device="meta"), torch.empty(16, 8, device="meta", dtype=torch.float32)]
    us = [torch.empty(4, device="meta"), torch.empty(16, device="meta")]
    vs = [torch.empty(27, device="meta"), torch.empty(8, device="meta")]
    assert OPS.power_iteration_update(mats, us, vs, 2) is None
    sig = OPS.power_iteration_sigmas(mats, us, vs)
    assert sig.shape == (2,) and sig.dtype == torch.float32
    mats64 = [m.double() for m in mats]
    assert OPS.power_iteration_sigmas(mats64, us, vs).dtype == torch.float64


@needs_extension
def test_symbolic_trace_of_every_kernel_set():
    """make_fx with symbolic shapes runs only the fake implementations: every op must trace."""

    def step(x, bn_w, dw_w, gate, w_mat, u, v):
        mean, var = nvcuda.bn_swish.batch_stats(x)
        invstd = torch.rsqrt(var + 1e-5)
        y = nvcuda.bn_swish.normalize(x, mean, invstd, bn_w, bn_w)
        s1, s2 = nvcuda.bn_swish.backward_reduce(y, x, mean, invstd, bn_w, bn_w)
        dx = nvcuda.bn_swish.backward_dx(y, x, mean, invstd, bn_w, bn_w, s1, s2, 10)
        z = nvcuda.depthwise_conv2d.forward(dx, dw_w, bn_w, (2, 2), (1, 1), (1, 1))
        dz = nvcuda.depthwise_conv2d.backward_input(z, dw_w, x.shape[2:], (2, 2), (1, 1), (1, 1))
        gw, gb = nvcuda.depthwise_conv2d.backward_weight(z, x, dw_w.shape[2:], (2, 2), (1, 1), (1, 1), True)
        se, m, g = nvcuda.squeeze_excite.forward(dz, gate, None, gate.t(), None, "silu")
        out = se + nvcuda.squeeze_excite.backward(dz, x, m, g, gate, None, gate.t(), None, "relu")[0]
        nvcuda.power_iteration.update([w_mat], [u], [v], 1)
        y2, mean2, invstd2 = nvcuda.bn_swish.train_forward(x, bn_w, bn_w, None, None, 0.1, 1e-5)
        dx2 = nvcuda.bn_swish.backward(y2, x, mean2, invstd2, bn_w, bn_w, 10)[0]
        sigma, saved, layout = nvcuda.power_iteration.forward([w_mat], [u], [v], 2)
        dw_mat = nvcuda.power_iteration.backward(saved, layout, sigma)[0]
        return out + dx2, gw, gb, nvcuda.power_iteration.sigmas([w_mat], [u], [v]), dw_mat

    args = (randn(2, 4, 6, 6), randn(4), randn(4, 1, 3, 3), randn(2, 4), randn(5, 7), randn(5), randn(7))
    graph = make_fx(step, tracing_mode="symbolic")(*args)
    targets = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    for name in ALL_OPS:
        if name.endswith("_plan"):  # plan reports for tools, never on a traced path
            continue
        assert any(t.startswith(f"nvae_fast.{name}") for t in targets), f"{name} missing from the traced graph"


# --- argument errors: the C++ checks run before the device check, so CPU tensors reach them ------------


def _acc_vec(c=3):
    return randn(c, seed=1)


ERROR_CASES = {
    "stats_cpu": (lambda: OPS.bn_swish_stats(randn(2, 3, 4, 5)), "x must be a CUDA tensor"),
    "stats_rank": (lambda: OPS.bn_swish_stats(randn(2, 3, 4)), "x must be 4-D"),
    "stats_dtype": (lambda: OPS.bn_swish_stats(torch.ones(2, 3, 4, 5, dtype=torch.int32)), "x must be float16"),
    "stats_strided": (lambda: OPS.bn_swish_stats(in_layout(randn(2, 3, 4, 5), "strided")), "x must be contiguous in NCHW"),
    "normalize_mean_len": (
        lambda: OPS.bn_swish_normalize(randn(2, 3, 4, 5), randn(4), _acc_vec(), _acc_vec(), _acc_vec()),
        "mean must be 1-D with 3 elements",
    ),
    "normalize_weight_dtype": (
        lambda: OPS.bn_swish_normalize(randn(2, 3, 4, 5), _acc_vec(), _acc_vec(), _acc_vec().half(), _acc_vec()),
        "weight must be Float",
    ),
    "reduce_dy_shape": (
        lambda: OPS.bn_swish_backward_reduce(randn(2, 3, 4, 4), randn(2, 3, 4, 5), *[_acc_vec()] * 4),
        "dy must have the shape of x",
    ),
    "reduce_dy_layout": (
        lambda: OPS.bn_swish_backward_reduce(in_layout(randn(2, 3, 4, 5), "channels_last"), randn(2, 3, 4, 5), *[_acc_vec()] * 4),
        "dy must be contiguous in the memory format of x",
    ),
    "dx_count": (
        lambda: OPS.bn_swish_backward_dx(randn(2, 3, 4, 5), randn(2, 3, 4, 5), *[_acc_vec()] * 6, 0),
        "count must be positive",
    ),
    "dx_cpu": (
        lambda: OPS.bn_swish_backward_dx(randn(2, 3, 4, 5), randn(2, 3, 4, 5), *[_acc_vec()] * 6, None),
        "x must be a CUDA tensor",
    ),
    "dw_stride": (lambda: OPS.dwconv2d_forward(randn(1, 3, 8, 8), randn(3, 1, 3, 3), None, [3, 1], [1, 1]), "stride must be 1 or 2"),
    "dw_weight_shape": (
        lambda: OPS.dwconv2d_forward(randn(1, 3, 8, 8), randn(3, 2, 3, 3), None, [1, 1], [1, 1]),
        r"weight must have shape \(C, 1, kh, kw\)",
    ),
    "dw_kernel_size": (
        lambda: OPS.dwconv2d_forward(randn(1, 3, 20, 20), randn(3, 1, 13, 3), None, [1, 1], [1, 1]),
        r"kernel sizes in \[1, 11\]",
    ),
    "dw_too_small": (
        lambda: OPS.dwconv2d_forward(randn(1, 3, 2, 8), randn(3, 1, 5, 5), None, [1, 1], [1, 1]),
        "smaller than the kernel",
    ),
    "dw_bias": (
        lambda: OPS.dwconv2d_forward(randn(1, 3, 8, 8), randn(3, 1, 3, 3), randn(4), [1, 1], [1, 1]),
        "bias must be 1-D with 3 elements",
    ),
    "dw_cpu": (lambda: OPS.dwconv2d_forward(randn(1, 3, 8, 8), randn(3, 1, 3, 3), None, [1, 1], [1, 1]), "x must be a CUDA tensor"),
    "dgrad_input_hw": (
        lambda: OPS.dwconv2d_backward_input(randn(1, 3, 8, 8), randn(3, 1, 3, 3), [9, 8], [1, 1], [1, 1]),
        "is not the output of input_hw",
    ),
    "wgrad_shape": (
        lambda: OPS.dwconv2d_backward_weight(randn(1, 3, 4, 4), randn(1, 3, 8, 8), [3, 3], [1, 1], [1, 1]),
        "is not the output of x",
    ),
    "se_gate_shape": (
        lambda: OPS.se_backward(*[randn(2, 3, 4, 4)] * 2, randn(2, 3), randn(3, 2), randn(2, 3), None, randn(3, 2), None, 0),
        r"gate must have shape \(N, C\)",
    ),
    "se_w2_shape": (
        lambda: OPS.se_forward(randn(2, 3, 4, 4), randn(2, 3), None, randn(2, 3), None, 0), r"w2 must have shape \(C, Ch\)"
    ),
    "se_activation": (
        lambda: OPS.se_forward(randn(2, 3, 4, 4), randn(2, 3), None, randn(3, 2), None, 2), "activation must be 0"
    ),
    "se_cpu": (lambda: OPS.se_forward(randn(2, 3, 4, 4), randn(2, 3), None, randn(3, 2), None, 0), "x must be a CUDA tensor"),
    "pi_u_len": (
        lambda: OPS.power_iteration_update([randn(3, 4), randn(5, 6)], [randn(3), randn(4)], [randn(4), randn(6)], 1),
        r"us\[1\] must be 1-D with 5 elements",
    ),
    "pi_mixed_dtype": (
        lambda: OPS.power_iteration_sigmas([randn(3, 4), randn(5, 6).half()], [randn(3), randn(5)], [randn(4), randn(6)]),
        r"mats\[1\] is Half but mats\[0\] is Float",
    ),
    "pi_n_iter": (
        lambda: OPS.power_iteration_update([randn(3, 4)], [randn(3)], [randn(4)], -1),
        "n_iter must be non-negative",
    ),
    "pi_layout": (
        lambda: OPS.power_iteration_backward(randn(1), randn(7), [1, 2, 2, 3]),  # entry 0 lacks its sizes
        "layout must be power_iteration_layout of the weights",
    ),
    "pi_cpu": (
        lambda: OPS.power_iteration_sigmas([randn(3, 4)], [randn(3)], [randn(4)]),
        r"mats\[0\] must be a CUDA tensor",
    ),
}


@needs_extension
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_argument_errors_name_the_argument(case):
    call, message = ERROR_CASES[case]
    with pytest.raises(RuntimeError, match=message):
        call()


@needs_extension
def test_kernel_sets_reject_cpu_tensors():
    x = randn(2, 3, 4, 5)
    vec = _acc_vec()
    calls = [
        lambda: nvcuda.bn_swish.batch_stats(x),
        lambda: nvcuda.bn_swish.normalize(x, vec, vec, vec, vec),
        lambda: nvcuda.depthwise_conv2d.forward(x, randn(3, 1, 3, 3), None, (1, 1), (1, 1), (1, 1)),
        lambda: nvcuda.squeeze_excite.forward(x, randn(2, 3), None, randn(3, 2), None, "relu"),
        lambda: nvcuda.power_iteration.sigmas([randn(3, 4)], [randn(3)], [randn(4)]),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
            call()


def test_an_extension_lacking_ops_counts_as_not_built(monkeypatch):
    monkeypatch.setitem(_library.OPS, "bn_swish", _library.OPS["bn_swish"] + ("bn_swish_not_an_op",))
    reason = _library._load_extension()
    if reason is not None and "older sources" not in str(reason):
        pytest.skip(f"the extension is not built here: {reason}")
    assert "lacks bn_swish_not_an_op" in str(reason) and str(reason).endswith("; rebuild it")
