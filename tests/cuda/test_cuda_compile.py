"""torch.compile(fullgraph=True) of a small module that uses all four ops on the ``cuda`` backend.

fullgraph=True fails on any graph break, so this checks that dynamo traces the ops' autograd.Functions
and the custom ops inside them (through their fake implementations); the compiled forward, backward,
running statistics and in-place u/v updates must match eager execution of the same backend. On a GPU
with inductor; without one in the emulation with ``aot_eager`` (the same dynamo and AOTAutograd graphs,
functionalisation of the in-place u/v updates included, run op by op instead of through inductor's CPU
code generation, which takes minutes on 2 cores).
"""

from __future__ import annotations

import copy

import pytest
import torch

import nvae_fast

from .._tensors import in_layout, randn
from ._cases import KERNEL_DEVICE, Tiny, needs_kernels, step

pytestmark = [needs_kernels]

COMPILER = "inductor" if KERNEL_DEVICE.type == "cuda" else "aot_eager"


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_module_matches_eager(dtype, kind):
    torch._dynamo.reset()
    eager = Tiny().to(KERNEL_DEVICE)
    compiled_model = copy.deepcopy(eager)
    x = in_layout(randn(4, 16, 12, 12, seed=20, dtype=dtype).to(KERNEL_DEVICE), kind)
    with nvae_fast.use_backend("cuda"):
        y_eager, s_eager = step(eager, x)
        compiled = torch.compile(compiled_model, fullgraph=True, backend=COMPILER)
        y_comp, s_comp = step(compiled, x)
    assert nvae_fast.backend_info()["fallbacks"] == []
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_comp, y_eager, **tol)
    torch.testing.assert_close(s_comp, s_eager, **tol)
    for (name, p_eager), p_comp in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_comp.grad, p_eager.grad, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")
    for (name, b_eager), b_comp in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b_comp, b_eager, **tol, msg=lambda m, name=name: f"buffer {name}: {m}")


def test_compiled_module_dynamic_shapes():
    torch._dynamo.reset()
    model = Tiny().to(KERNEL_DEVICE)
    with nvae_fast.use_backend("cuda"):
        compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=COMPILER)
        for shape in [(2, 16, 10, 10), (3, 16, 7, 9)]:
            y, sigma = step(compiled, randn(*shape, seed=21).to(KERNEL_DEVICE))
            assert y.shape == shape and sigma.shape == (2,)
            assert torch.isfinite(y).all() and torch.isfinite(sigma).all()
