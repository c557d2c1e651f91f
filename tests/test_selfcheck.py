"""``auto``'s self-check of the fused backends (:mod:`nvae_fast.selfcheck`), run on the CPU through the Triton
interpreter and the CUDA emulation: ``auto`` is made to consider them for CPU tensors here, as it does for
CUDA tensors on a GPU."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

import nvae_fast
from nvae_fast import backend, selfcheck
from nvae_fast.ops import bn_swish, depthwise_conv2d
from nvae_fast.ops import OPS
from nvae_fast.ops.bn_swish import OP as BN_SWISH
from nvae_fast.ops.depthwise_conv2d import OP as DEPTHWISE
from nvae_fast.ops.squeeze_excite import OP as SQUEEZE_EXCITE

CPU = torch.device("cpu")


def _need(*names):
    info = nvae_fast.backend_info()["backends"]
    for name in names:
        if not info[name]["available"]:
            pytest.skip(f"{name} unavailable: {info[name]['reason']}")


@pytest.fixture
def auto_on_cpu(monkeypatch):
    """``auto`` considers the fused backends for CPU tensors, with one small probe per op."""
    if torch.cuda.is_available():
        pytest.skip("the CPU form of the self-check (interpreter and emulation)")
    monkeypatch.setattr(backend, "FUSED_DEVICE_TYPES", ("cuda", "cpu"))
    for op, cases in selfcheck.PROBE_SHAPES.items():
        monkeypatch.setitem(selfcheck.PROBE_SHAPES, op, cases[:1])
    nvae_fast.reset()


class _Off:
    """A kernel set like ``kernels`` whose every floating output is 3 % too large."""

    def __init__(self, kernels):
        self._kernels = kernels

    def __getattr__(self, name):
        fn = getattr(self._kernels, name)
        if name == "supports" or not callable(fn):
            return fn

        def off(*args, **kwargs):
            out = fn(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                return out * 1.03
            if isinstance(out, tuple):
                return tuple(o * 1.03 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
            return out

        return off


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, 4, generator=g) * 2 + 0.5, torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)


def _call(x, w, b):
    return bn_swish(x, w, b, None, None, True)


def test_auto_uses_a_fused_backend_once_it_passes_its_selfcheck(auto_on_cpu, monkeypatch):
    _need("cuda")
    runs = []
    real_run = selfcheck.run
    monkeypatch.setattr(selfcheck, "run", lambda *a: runs.append(a) or real_run(*a))
    x, w, b = _inputs()
    name, _ = backend.resolve(BN_SWISH, CPU, x)
    assert name == backend.AUTO_ORDER["bn_swish"][0] == "cuda"
    backend.resolve(BN_SWISH, CPU, x)
    backend.resolve(BN_SWISH, CPU, x.double())
    assert [(a[0], a[2], a[4]) for a in runs] == [("bn_swish", "cuda", torch.float32), ("bn_swish", "cuda", torch.float64)]
    records = nvae_fast.backend_info()["selfchecks"]
    assert [(r["op"], r["backend"], r["device"], r["dtypes"], r["passed"], r["why"]) for r in records] == [
        ("bn_swish", "cuda", "cpu", "float32", True, ""), ("bn_swish", "cuda", "cpu", "float64", True, ""),
    ]
    assert all(r["seconds"] > 0 for r in records)


def test_a_wrong_kernel_set_is_caught_warned_once_and_avoided(auto_on_cpu, monkeypatch):
    _need("cuda", "triton")
    monkeypatch.setitem(backend._state.kernels, ("bn_swish", "cuda"), _Off(backend._state.kernels[("bn_swish", "cuda")]))
    x, w, b = _inputs()
    with pytest.warns(RuntimeWarning, match="cuda backend failed its self-check for bn_swish on cpu .float32.: probe"):
        y = _call(x, w, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the verdict is kept
        _call(x, w, b)
    assert backend.resolve(BN_SWISH, CPU, x)[0] == "triton"  # the next backend in the order
    with nvae_fast.use_backend("torch"):
        torch.testing.assert_close(y, _call(x, w, b))
    (record, passing) = nvae_fast.backend_info()["selfchecks"]
    assert (record["backend"], record["passed"]) == ("cuda", False)
    assert record["why"].startswith("probe (3, 5, 7, 6): y: max |fused - torch| exceeds the tolerance")
    assert (passing["backend"], passing["passed"]) == ("triton", True)


def test_with_every_fused_backend_wrong_auto_runs_torch(auto_on_cpu, monkeypatch):
    _need("cuda", "triton")
    for name in ("cuda", "triton"):
        key = ("depthwise_conv2d", name)
        monkeypatch.setitem(backend._state.kernels, key, _Off(backend._state.kernels[key]))
    x = torch.randn(2, 3, 6, 7)
    with pytest.warns(RuntimeWarning):
        assert backend.resolve(DEPTHWISE, CPU, x, torch.randn(3, 1, 3, 3), (1, 1), (1, 1), (1, 1))[0] == "torch"
    assert [r["passed"] for r in nvae_fast.backend_info()["selfchecks"]] == [False, False]


def test_a_kernel_that_raises_fails_its_selfcheck_with_the_error(auto_on_cpu, monkeypatch):
    _need("cuda")

    def broken(*args, **kwargs):
        raise RuntimeError("an illegal memory access was encountered")

    kernels = types.SimpleNamespace(**{n: getattr(backend._state.kernels[("squeeze_excite", "cuda")], n)
                                       for n in ("supports", "plan", "forward")}, backward=broken)
    monkeypatch.setitem(backend._state.kernels, ("squeeze_excite", "cuda"), kernels)
    result = SQUEEZE_EXCITE.selfcheck("cuda", CPU, torch.float32)
    assert not result.passed and result.why == "RuntimeError: an illegal memory access was encountered"


def test_selfcheck_off_trusts_the_fused_backend(auto_on_cpu, monkeypatch):
    _need("cuda")
    monkeypatch.setenv("NVAE_FAST_SELFCHECK", "0")
    nvae_fast.reset()
    x, _, _ = _inputs()
    assert backend.resolve(BN_SWISH, CPU, x)[0] == "cuda"
    info = nvae_fast.backend_info()
    assert info["selfcheck"] is False and info["selfchecks"] == []


def test_no_probe_inside_torch_compile_tracing_then_checked_ahead(auto_on_cpu):
    _need("cuda")
    x, w, b = _inputs()
    compiled = torch.compile(_call, fullgraph=True, backend="eager")
    with nvae_fast.use_backend("torch"):
        expected = _call(x, w, b)
    torch.testing.assert_close(compiled(x, w, b), expected)
    assert nvae_fast.backend_info()["selfchecks"] == []  # traced on torch, nothing probed
    records = nvae_fast.run_selfchecks("cpu")
    assert {(r["op"], r["backend"]) for r in records} == {(op, b) for op in backend.OPS for b in ("cuda", "triton")}
    assert all(r["passed"] for r in records), records
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(_call, fullgraph=True, backend="eager")(x, w, b), expected)


def test_the_caller_random_state_and_grad_mode_are_untouched(auto_on_cpu):
    _need("cuda")
    x, weight = torch.randn(2, 3, 4, 4), torch.randn(3, 1, 3, 3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        depthwise_conv2d(x, weight, None, 1, 1, 1)  # the first call: the self-check runs here
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.rand(3), expected)
    assert nvae_fast.backend_info()["selfchecks"][0]["passed"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_real_probes_pass_on_the_emulated_cuda_kernels(dtype):
    """The full probe set (single- and multi-tile plans of a 132-SM device), as a GPU would run it."""
    _need("cuda")
    if torch.cuda.is_available():
        pytest.skip("on a GPU the self-check runs on the device itself")
    for op in OPS:
        result = op.selfcheck("cuda", CPU, dtype)
        assert result.passed, (op, result.why)
