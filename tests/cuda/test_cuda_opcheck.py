"""torch.library.opcheck on every custom op of the extension, on the GPU or, without one, on the CPU
build of the same ops in the emulation (torch.ops.nvae_fast_emu.*, the same fake implementations).

opcheck checks each op's schema (aliasing and mutation: power_iteration_update mutates us and vs), that
its fake implementation gives the real outputs' shapes, dtypes and strides, and that AOTAutograd traces
it with dynamic shapes. Inputs do not require grad: the ops have no autograd formula of their own, the
ops' autograd.Functions compose them.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing._internal.optests.generate_tests import DEFAULT_TEST_UTILS

from nvae_fast.cuda import _library
from nvae_fast.cuda import power_iteration as nvcuda_power_iteration

from .._tensors import in_layout, randn
from ._cases import ALL_OPS, KERNEL_DEVICE, needs_kernels

pytestmark = [needs_kernels]


def _act(shape, dtype, kind, seed):
    return in_layout(randn(*shape, dtype=dtype, seed=seed).to(KERNEL_DEVICE), kind)


def _vec(n, dtype, seed, positive=False):
    v = randn(n, dtype=dtype, seed=seed).to(KERNEL_DEVICE)
    return v.abs() + 0.5 if positive else v


def _samples(dtype, kind):
    """{op name: [args, ...]} for activations of ``dtype`` in memory layout ``kind``."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = _act((2, 8, 6, 5), dtype, kind, 0)
    dy = _act((2, 8, 6, 5), dtype, kind, 1)
    mean, invstd, w, b = _vec(8, acc, 2), _vec(8, acc, 3, True), _vec(8, acc, 4), _vec(8, acc, 5)
    s1, s2 = _vec(8, acc, 6), _vec(8, acc, 7)
    dw = randn(8, 1, 3, 3, dtype=acc, seed=8).to(KERNEL_DEVICE)
    y2 = _act((2, 8, 3, 3), dtype, kind, 9)  # output of a 3x3 stride-2 padding-1 conv of x
    gate = torch.sigmoid(randn(2, 8, dtype=acc, seed=10)).to(KERNEL_DEVICE)
    se_w1, se_b1 = randn(3, 8, dtype=dtype, seed=17).to(KERNEL_DEVICE), randn(3, dtype=dtype, seed=18).to(KERNEL_DEVICE)
    se_w2, se_b2 = randn(8, 3, dtype=dtype, seed=19).to(KERNEL_DEVICE), randn(8, dtype=dtype, seed=20).to(KERNEL_DEVICE)
    mats = [randn(5, 27, dtype=dtype, seed=11).to(KERNEL_DEVICE), randn(16, 8, dtype=dtype, seed=12).to(KERNEL_DEVICE)]
    us = [randn(5, seed=13).to(KERNEL_DEVICE), randn(16, seed=14).to(KERNEL_DEVICE)]
    vs = [randn(27, seed=15).to(KERNEL_DEVICE), randn(8, seed=16).to(KERNEL_DEVICE)]
    weights = [mats[0].view(5, 3, 3, 3), mats[1].view(16, 8, 1, 1)]
    if kind == "channels_last":
        weights = [w.contiguous(memory_format=torch.channels_last) for w in weights]
    saved = randn(5 + 27 + 16 + 8, dtype=acc, seed=17).to(KERNEL_DEVICE)
    code = nvcuda_power_iteration.LAYOUT_DTYPES.index(dtype)
    layout = [2, code, 4, 5, 3, 3, 3, code, 4, 16, 8, 1, 1]  # power_iteration_layout(weights)
    return {
        "bn_swish_stats": [(x,)],
        "bn_swish_normalize": [(x, mean, invstd, w, b)],
        "bn_swish_backward_reduce": [(dy, x, mean, invstd, w, b)],
        "bn_swish_backward_dx": [(dy, x, mean, invstd, w, b, s1, s2, 60), (dy, x, mean, invstd, w, b, s1, s2, None)],
        "bn_swish_train_forward": [(x, w, b, s1.clone(), s2.abs() + 0.5, 0.1, 1e-5), (x, w, b, None, None, 0.1, 1e-5)],
        "bn_swish_backward": [(dy, x, mean, invstd, w, b, 60), (dy, x, mean, invstd, w, b, None)],
        "dwconv2d_forward": [(x, dw, b, [2, 2], [1, 1]), (x, dw, None, [1, 1], [1, 1])],
        "dwconv2d_backward_input": [(y2, dw, [6, 5], [2, 2], [1, 1])],
        "dwconv2d_backward_weight": [(y2, x, [3, 3], [2, 2], [1, 1])],
        "se_plan": [],  # host integers for reports, never called by the op (nothing to trace)
        "se_forward": [(x, se_w1, se_b1, se_w2, se_b2, 0), (x, se_w1, None, se_w2, None, 1)],
        "se_backward": [(dy, x, gate * 0.5, gate, se_w1, se_b1, se_w2, se_b2, 1),
                        (dy, x, gate * 0.5, gate, se_w1, None, se_w2, None, 0)],
        "power_iteration_update": [(mats, us, vs, 2)],
        "power_iteration_sigmas": [(mats, us, vs)],
        "power_iteration_forward": [(weights, us, vs, 3), (weights, us, vs, 1), (weights, us, vs, 0)],
        "power_iteration_backward_packed": [(randn(2, dtype=acc, seed=18).to(KERNEL_DEVICE), saved, layout)],
        "power_iteration_backward": [(randn(2, dtype=acc, seed=18).to(KERNEL_DEVICE), saved, layout)],
        "power_iteration_layout": [(weights,)],
        "power_iteration_plan": [(weights, us, vs)],
    }


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(name, dtype, kind):
    op = getattr(_library.ops(), name).default
    samples = _samples(dtype, kind)
    assert set(samples) == set(ALL_OPS)
    # power_iteration_plan returns the launch table, which holds the tensors' addresses: the AOT
    # dispatch check runs it on copies of the arguments, so its output differs by design.
    utils = [u for u in DEFAULT_TEST_UTILS if name != "power_iteration_plan" or u != "test_aot_dispatch_dynamic"]
    for args in samples[name]:
        torch.library.opcheck(op, args, test_utils=utils)
