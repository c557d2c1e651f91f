"""torch.compile traces the cuda kernel sets without graph breaks, checked on any machine (no GPU).

Dynamo and AOTAutograd trace with fake tensors, so tracing needs only the fake implementations. The
test compiles ``Tiny`` (all four ops, forward and backward) with ``fullgraph=True`` and a compiler
backend that records the forward and backward graphs. Two stand-ins make this possible on CPU tensors:
``backend.resolve`` hands out the cuda kernel sets directly (it would refuse CPU tensors), and the CPU
kernels of the custom ops (argument checkers that reject CPU tensors) are overridden for the duration of
the test by zero-filled outputs of the fake implementations, so the compiled step runs through backward
and its backward graph gets traced. The real GPU run is test_cuda_compile.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._functorch.aot_autograd import aot_module_simplified

import nvae_fast.cuda as nvcuda
from nvae_fast import backend
from nvae_fast.cuda import _library

from ._cases import ALL_OPS, Tiny, needs_extension, step

pytestmark = pytest.mark.usefixtures("cuda_emulation_off")

FAKES = _library.FAKES


def _zero_filled(fake):
    def zero(out):
        if isinstance(out, (tuple, list)):
            return type(out)(zero(o) for o in out)
        return out.zero_()

    def run(*args):
        out = fake(*args)
        return None if out is None else zero(out)

    return run


@pytest.fixture
def cpu_stand_ins(monkeypatch):
    kernel_sets = {op: getattr(nvcuda, op) for op in nvcuda.OPS}

    def resolve(op, device, *support_args):
        assert kernel_sets[op.name].supports(*support_args) is None
        return "cuda", kernel_sets[op.name]

    monkeypatch.setattr(backend, "resolve", resolve)
    lib = torch.library.Library("nvae_fast", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for name, fake in FAKES.items():
            lib.impl(name, _zero_filled(fake), "CPU", allow_override=True)
    torch._dynamo.reset()
    yield
    lib._destroy()
    torch._dynamo.reset()


@needs_extension
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_fullgraph_trace_of_all_ops(cpu_stand_ins, dynamic):
    assert set(FAKES) == set(ALL_OPS) - set(_library.COMPOSITES)
    graphs = {}

    def recorder(gm, example_inputs):
        def keep(kind):
            def compiler(graph, inputs):
                graphs[kind] = graph
                return graph

            return compiler

        return aot_module_simplified(gm, example_inputs, fw_compiler=keep("forward"), bw_compiler=keep("backward"))

    model = Tiny()
    x = torch.randn(4, 16, 12, 12).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unboxed compiled graphs
        y, sigma = step(torch.compile(model, fullgraph=True, backend=recorder, dynamic=dynamic), x)
    assert y.shape == x.shape and sigma.shape == (2,)

    def called(kind):
        names = set()
        for node in graphs[kind].graph.nodes:
            if node.op == "call_function":
                target = node.args[0] if "auto_functionalized" in str(node.target) else node.target
                names.add(str(target).split(".")[1] if str(target).startswith("nvae_fast.") else str(target))
        return names

    forward, backward = called("forward"), called("backward")
    assert {"bn_swish_train_forward", "dwconv2d_forward", "se_forward", "power_iteration_forward"} <= forward
    assert {"bn_swish_backward", "dwconv2d_backward_input", "dwconv2d_backward_weight", "se_backward",
            "power_iteration_backward_packed"} <= backward
