"""Depthwise 2-D convolution: ``y = F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``.

Shapes: ``x`` (N, C, H, W) (NCHW or channels_last), ``weight`` (C, 1, kh, kw), ``bias`` (C,) or ``None``,
``y`` (N, C, Ho, Wo) with ``Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1`` (likewise Wo). Math:

    y[n, c, i, j] = bias[c] + sum_{p, q} weight[c, 0, p, q] x[n, c, i sh - ph + p dh, j sw - pw + q dw]

(out-of-range x reads are zero). Backward: dx is the transposed convolution of dy with the same taps,
dweight[c, 0, p, q] = sum_{n, i, j} dy[n, c, i, j] x[n, c, i sh - ph + p dh, j sw - pw + q dw],
dbias[c] = sum_{n, i, j} dy[n, c, i, j]. Accumulation is float32 (float64 for float64 inputs).

Their kernels implement :class:`DepthwiseConv2dKernels` (``torch``: :class:`TorchKernels`; ``triton``:
``nvae_fast.kernels.depthwise_conv2d``; ``cuda``: ``nvae_fast.cuda.depthwise_conv2d``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .. import backend, selfcheck
from .._accumulation import acc_dtype
from ._checks import (
    check_kernel_fits,
    check_same_device,
    check_tensor,
    check_vector,
    conv_stride_dilation,
    pair,
)

__all__ = [
    "depthwise_conv2d", "depthwise_conv2d_reference", "DepthwiseConv2dKernels", "TorchKernels",
    "DepthwiseConv2dFunction", "OP",
]

_OP = "depthwise_conv2d"


def depthwise_conv2d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """The definition: ``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)``."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])


class DepthwiseConv2dKernels(Protocol):
    """The kernels of one lean backend for :func:`depthwise_conv2d`; every backend implements all of them.

    Inputs are already checked by :func:`depthwise_conv2d`; ``stride``, ``padding``, ``dilation`` arrive as
    pairs of ints. Outputs like ``x`` have x's dtype and (dense) memory format.
    """

    def supports(self, x, weight, stride, padding, dilation) -> str | None:
        """Why the kernels cannot run this convolution (beyond the op's own checks), or ``None``."""

    def forward(self, x, weight, bias, stride, padding, dilation) -> torch.Tensor:
        """y (N, C, Ho, Wo) like x."""

    def backward_input(self, dy, weight, input_hw, stride, padding, dilation) -> torch.Tensor:
        """dx (N, C, H, W) like dy; ``input_hw`` = (H, W)."""

    def backward_weight(self, dy, x, kernel_hw, stride, padding, dilation, with_bias: bool):
        """``(dweight (C, 1, kh, kw), dbias (C,) or None)`` in the accumulation dtype; the
        autograd.Function casts them to the dtypes of weight and bias."""

    def plan(self, x, weight, stride, padding, dilation) -> dict:
        """The launches the backend picks for this convolution, for reports (no kernel runs):
        ``{"forward": ..., "backward_input": ..., "backward_weight": ...}``, each a dict that names its
        kernel (``"kernel"``) and the backend's tiling of it."""


class TorchKernels:
    """ATen kernel set of the lean backend: PyTorch's own convolution kernels, fp32 accumulation."""

    @staticmethod
    def supports(x, weight, stride, padding, dilation):
        return None

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation):
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation, groups=x.shape[1])

    @staticmethod
    def backward_input(dy, weight, input_hw, stride, padding, dilation):
        n, c = dy.shape[:2]
        return torch.nn.grad.conv2d_input(
            (n, c) + tuple(input_hw), weight.to(dy.dtype), dy, stride, padding, dilation, groups=c
        )

    @staticmethod
    def backward_weight(dy, x, kernel_hw, stride, padding, dilation, with_bias):
        acc = acc_dtype(x.dtype)
        c = x.shape[1]
        dweight = torch.nn.grad.conv2d_weight(
            x.to(acc), (c, 1) + tuple(kernel_hw), dy.to(acc), stride, padding, dilation, groups=c
        )
        dbias = dy.to(acc).sum(dim=(0, 2, 3)) if with_bias else None
        return dweight, dbias

    @staticmethod
    def plan(x, weight, stride, padding, dilation):
        return {
            "forward": {"kernel": "torch.nn.functional.conv2d"},
            "backward_input": {"kernel": "torch.nn.grad.conv2d_input"},
            "backward_weight": {"kernel": "torch.nn.grad.conv2d_weight"},
        }


class DepthwiseConv2dFunction(torch.autograd.Function):
    """One autograd node for the depthwise convolution; saves x and weight."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, kernels):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        ctx.has_bias, ctx.kernels = bias is not None, kernels
        ctx.bias_dtype = None if bias is None else bias.dtype
        return kernels.forward(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = ctx.kernels.backward_input(dy, weight, x.shape[2:], stride, padding, dilation)
        want_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_bias:
            dw, db = ctx.kernels.backward_weight(dy, x, weight.shape[2:], stride, padding, dilation, want_bias)
            dweight = dw.to(weight.dtype) if ctx.needs_input_grad[1] else None
            dbias = db.to(ctx.bias_dtype) if want_bias else None
        return dx, dweight, dbias, None, None, None, None


def _padding(padding, kernel_hw, stride, dilation):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("depthwise_conv2d: padding='same' needs stride=1")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_hw)]
            if any(t % 2 for t in total):
                raise ValueError(
                    f"depthwise_conv2d: padding='same' needs an odd effective kernel size, got kernel {tuple(kernel_hw)} "
                    f"with dilation {dilation}"
                )
            return (total[0] // 2, total[1] // 2)
        raise ValueError(f"depthwise_conv2d: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(_OP, "padding", padding)


def _check(x, weight, bias, stride, padding, dilation):
    check_tensor(_OP, "x", x, ndim=4)
    check_tensor(_OP, "weight", weight, ndim=4)
    c = x.shape[1]
    if weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(
            f"depthwise_conv2d: weight must have shape (C, 1, kh, kw) with C={c} (x's channels), got {tuple(weight.shape)}"
        )
    check_vector(_OP, "bias", bias, c)
    check_same_device(_OP, "x", x, weight=weight, bias=bias)
    stride, dilation = conv_stride_dilation(_OP, stride, dilation)
    padding = _padding(padding, weight.shape[2:], stride, dilation)
    check_kernel_fits(_OP, x, weight.shape[2:], padding, dilation)
    return stride, padding, dilation


def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` for weight (C, 1, kh, kw).

    ``stride``/``padding``/``dilation``: ints or pairs; ``padding`` may also be ``'same'`` (stride 1) or
    ``'valid'``. Returns (N, C, Ho, Wo) in ``x``'s dtype and memory format.
    """
    stride, padding, dilation = _check(x, weight, bias, stride, padding, dilation)
    name, kernels = backend.resolve(OP, x.device, x, weight, stride, padding, dilation)
    if name == "reference":
        return depthwise_conv2d_reference(x, weight, bias, stride, padding, dilation)
    return DepthwiseConv2dFunction.apply(x, weight, bias, stride, padding, dilation, kernels)


OP = backend.Op(_OP, TorchKernels, lambda name, device, dtype: selfcheck.run(_OP, depthwise_conv2d, name, device, dtype))
