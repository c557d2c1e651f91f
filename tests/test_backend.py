"""The backend switch: selection, errors, the context manager, the env variable and visible fallbacks."""

import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import nvae_fast
from nvae_fast import backend
from nvae_fast.ops import bn_swish


def test_default_is_auto_and_info_lists_every_backend():
    info = nvae_fast.backend_info()
    assert info["selected"] == "auto"
    assert set(info["backends"]) == {"reference", "torch", "triton", "cuda"}
    assert info["backends"]["torch"] == {"available": True, "reason": ""}
    for name in ("triton", "cuda"):
        entry = info["backends"][name]
        assert entry["available"] or entry["reason"], f"an unavailable {name} backend must say why"
    assert info["fallbacks"] == []


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        nvae_fast.set_backend("fastest")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend may be available with a GPU")
@pytest.mark.usefixtures("cuda_emulation_off")
def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: "):
        nvae_fast.set_backend("cuda")
    assert nvae_fast.get_backend() == "auto"


def test_use_backend_restores_the_previous_selection_even_on_error():
    nvae_fast.set_backend("reference")
    with pytest.raises(KeyError):
        with nvae_fast.use_backend("torch"):
            assert nvae_fast.get_backend() == "torch"
            raise KeyError
    assert nvae_fast.get_backend() == "reference"


def test_env_variable_selects_and_reset_rereads_it(monkeypatch):
    monkeypatch.setenv("NVAE_FAST_BACKEND", "reference")
    nvae_fast.reset()
    assert nvae_fast.get_backend() == "reference"
    monkeypatch.setenv("NVAE_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="NVAE_FAST_BACKEND='nonsense'"):
        nvae_fast.reset()


def test_env_variable_at_import():
    code = "import nvae_fast; print(nvae_fast.get_backend())"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"NVAE_FAST_BACKEND": "torch", "PATH": ""}, capture_output=True, text=True
    )
    assert out.stdout.strip() == "torch", out.stderr


def test_auto_uses_torch_on_cpu():
    x = torch.randn(2, 3, 4, 4)
    op = backend.Op("bn_swish", "torch-kernels", None)
    name, kernels = backend.resolve(op, x.device, x)
    assert (name, kernels) == ("torch", "torch-kernels")


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend._state, "interpreting", False)
    backend._state.selected = "triton"
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors"):
        bn_swish(torch.randn(2, 3, 4, 4), None, None, None, None, True)


@pytest.mark.parametrize("triton_version,numpy_version,usable", [
    ("3.6.0", "2.4.1", False), ("3.6.0", "2.3.5", True), ("3.7.1", "2.4.1", True), ("3.10.0", "2.10.0", True),
])
def test_interpreter_probe_names_the_triton_numpy_clash(monkeypatch, triton_version, numpy_version, usable):
    """Triton 3.6's interpreter calls int() on 1-element arrays, which numpy 2.4 refuses: reported, not a crash."""
    import numpy
    import triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    nvae_fast.reset()
    info = nvae_fast.backend_info()["backends"]["triton"]
    assert info["available"] is usable, info
    if not usable:
        assert f"triton {triton_version}" in info["reason"] and "numpy<2.4" in info["reason"]


def test_unsupported_inputs_fall_back_visibly(monkeypatch, caplog):
    """A kernel set that declines the inputs leads to the torch kernels, one warning, and a record."""
    declining = types.SimpleNamespace(supports=lambda *args: "no kernel for this test")
    monkeypatch.setitem(backend._state.status, "triton", (True, ""))
    monkeypatch.setitem(backend._state.kernels, ("bn_swish", "triton"), declining)
    backend._state.selected = "triton"
    x = torch.randn(2, 3, 4, 4)
    with caplog.at_level(logging.WARNING, logger="nvae_fast"):
        y1 = bn_swish(x, None, None, None, None, True)
        y2 = bn_swish(x, None, None, None, None, True)
    torch.testing.assert_close(y1, y2)
    warnings = [r for r in caplog.records if "falls back to 'torch'" in r.getMessage()]
    assert len(warnings) == 1 and "no kernel for this test" in warnings[0].getMessage()
    assert nvae_fast.backend_info()["fallbacks"] == [
        {"backend": "triton", "op": "bn_swish", "reason": "no kernel for this test", "count": 2}
    ]
    nvae_fast.reset()
    assert nvae_fast.backend_info()["fallbacks"] == []


def test_resolve_is_traceable_by_torch_compile():
    """resolve only reads what the probe cached, so a fullgraph compile of an op does not break."""
    nvae_fast.set_backend("torch")
    fn = torch.compile(lambda x: bn_swish(x, None, None, None, None, True), fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(fn(x), bn_swish(x, None, None, None, None, True))


def test_every_backend_gives_the_same_answer_through_the_public_api():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    outs = {}
    for name in ("reference", "torch"):
        with nvae_fast.use_backend(name):
            outs[name] = bn_swish(x, None, None, None, None, True)
    torch.testing.assert_close(outs["reference"], outs["torch"])


# ---------------------------------------------------------------- the CI gate (tests/backend_gate.py)
_GATE_RUN = """
import sys
import pytest
import nvae_fast
from nvae_fast.cuda import emulation

if sys.argv[1] == "broken-emulation":
    def load():
        raise RuntimeError("csrc/bn_swish.cu: error: expected ';' (a deliberate break)")
    emulation.load = load
    nvae_fast.reset()
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "tests.backend_gate", sys.argv[2]]))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gate's CPU case: interpreter and emulation")
@pytest.mark.parametrize("break_", ["none", "broken-emulation", "no-interpreter"])
def test_ci_gate_fails_when_a_required_backend_cannot_run(tmp_path, break_):
    """``make test`` requires the interpreter and the emulation: a run without either exits 4 naming it."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    env = {**os.environ, "NVAE_FAST_REQUIRE_BACKENDS": "triton,cuda", "TRITON_INTERPRET": "1", "NVAE_FAST_CUDA_EMULATE": "1"}
    if break_ == "no-interpreter":
        env["TRITON_INTERPRET"] = "0"
    proc = subprocess.run([sys.executable, "-c", _GATE_RUN, break_, str(tmp_path / "test_one.py")],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    out = proc.stdout + proc.stderr
    if break_ == "none":
        assert proc.returncode == 0 and "1 passed" in out, out
    else:
        assert proc.returncode == 4, out
        assert "NVAE_FAST_REQUIRE_BACKENDS names backends that cannot run here" in out
        assert ("cuda: NVAE_FAST_CUDA_EMULATE=1, but the CPU emulation cannot be built" in out
                if break_ == "broken-emulation" else "triton: no CUDA device, and TRITON_INTERPRET=1 is not set" in out)


def test_backend_of_a_test_id():
    from tests.backend_gate import backend_of

    assert backend_of("tests/ops/test_bn_swish.py::test_x[triton-float32-contiguous-2x3x4x5]") == "triton"
    assert backend_of("tests/ops/test_bn_swish.py::test_x[float32-cuda]") == "cuda"
    assert backend_of("tests/kernels/test_bn_swish_kernels.py::test_stats[float32]") == "triton"
    assert backend_of("tests/cuda/test_cuda_kernels.py::test_dw[3x3]") == "cuda"
    assert backend_of("tests/model/test_nvae.py::test_forward") is None
