"""Shared pieces of the CUDA-extension tests: availability markers, op names, a small model using every op."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast import ops
from nvae_fast.cuda import _library

from .._tensors import randn

#: Every custom op of the extension, e.g. ``bn_swish_stats``.
ALL_OPS = [name for names in _library.OPS.values() for name in names]

#: Skips a test (with the import error as the reason) when the package was installed without ``_C``.
needs_extension = pytest.mark.skipif(
    not _library.available(), reason=f"the extension nvae_fast._C is not built here: {_library.missing()}"
)


#: Where the kernel tests run: the GPU, or the CPU in the emulation of the CUDA kernels (which
#: tests/conftest.py turns on where there is no GPU).
KERNEL_DEVICE = torch.device("cpu" if nvae_fast.backend.cuda_emulated() else "cuda")

_CUDA_BACKEND = nvae_fast.backend_info()["backends"]["cuda"]
#: Skips a test that launches the kernels when they can run neither on a GPU nor in the emulation.
needs_kernels = pytest.mark.skipif(
    not _CUDA_BACKEND["available"], reason=f"the CUDA kernels cannot run here: {_CUDA_BACKEND['reason']}"
)


class Tiny(nn.Module):
    """BN+Swish -> depthwise 5x5 -> squeeze-excitation, plus the spectral norms of two weights."""

    def __init__(self, c: int = 16, hidden: int = 4):
        super().__init__()
        self.bn_weight = nn.Parameter(randn(c, seed=1, scale=0.1, shift=1.0))
        self.bn_bias = nn.Parameter(randn(c, seed=2, scale=0.1))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.dw_weight = nn.Parameter(randn(c, 1, 5, 5, seed=3, scale=0.2))
        self.dw_bias = nn.Parameter(randn(c, seed=4, scale=0.1))
        self.w1 = nn.Parameter(randn(hidden, c, seed=5, scale=0.3))
        self.b1 = nn.Parameter(randn(hidden, seed=6, scale=0.1))
        self.w2 = nn.Parameter(randn(c, hidden, seed=7, scale=0.3))
        self.b2 = nn.Parameter(randn(c, seed=8, scale=0.1))
        self.register_buffer("u0", nn.functional.normalize(randn(c, seed=9), dim=0))
        self.register_buffer("v0", nn.functional.normalize(randn(25, seed=10), dim=0))
        self.register_buffer("u1", nn.functional.normalize(randn(hidden, seed=11), dim=0))
        self.register_buffer("v1", nn.functional.normalize(randn(c, seed=12), dim=0))

    def forward(self, x):
        y = ops.bn_swish(x, self.bn_weight, self.bn_bias, self.running_mean, self.running_var, self.training)
        y = ops.depthwise_conv2d(y, self.dw_weight, self.dw_bias, stride=1, padding=2)
        y = ops.squeeze_excite(y, self.w1, self.b1, self.w2, self.b2)
        sigma = ops.power_iteration([self.dw_weight, self.w1], [self.u0, self.u1], [self.v0, self.v1], 1)
        return y, sigma


def step(model, x):
    """One training step's compute: forward, then backward of a scalar of both outputs."""
    y, sigma = model(x)
    (y.square().mean() + sigma.sum()).backward()
    return y, sigma
