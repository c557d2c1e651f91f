"""CUDA kernel set of :mod:`nvae_fast.ops.depthwise_conv2d` (contract: :class:`nvae_fast.ops.depthwise_conv2d.DepthwiseConv2dKernels`).

Supported: kernel sizes 1..11 per axis, stride 1 or 2 per axis, any padding up to 1024, dilation 1
(``supports`` gives the reason for anything else, and the op falls back to the ``torch`` kernels).
x / dy: NCHW or channels_last (other layouts are copied to NCHW first); the result has that layout.
Weight and bias are passed in the accumulation dtype (float32, float64 for float64 inputs).

Custom ops (``torch.ops.nvae_fast``): ``dwconv2d_forward``, ``dwconv2d_backward_input``,
``dwconv2d_backward_weight`` (which always returns the bias gradient too: it is a by-product of the
same pass); their fake implementations are registered here. The weight gradient is deterministic.
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like, memory_format, per_channel

__all__ = ["supports", "forward", "backward_input", "backward_weight"]

MAX_KERNEL = 11
MAX_PADDING = 1024


def supports(x, weight, stride, padding, dilation):
    """``None`` when the kernels can run this convolution, else the reason (stride/padding/dilation: pairs)."""
    if tuple(dilation) != (1, 1):
        return f"dilation {tuple(dilation)} (the CUDA kernels support dilation 1 only)"
    if any(s not in (1, 2) for s in stride):
        return f"stride {tuple(stride)} (the CUDA kernels support strides 1 and 2)"
    kh, kw = weight.shape[2:]
    if not (1 <= kh <= MAX_KERNEL and 1 <= kw <= MAX_KERNEL):
        return f"kernel size {kh}x{kw} (the CUDA kernels support 1 to {MAX_KERNEL} per axis)"
    if max(padding) > MAX_PADDING:
        return f"padding {tuple(padding)} (the CUDA kernels support at most {MAX_PADDING})"
    return None


def forward(x, weight, bias, stride, padding, dilation):
    """y = depthwise conv of x with weight (C, 1, kh, kw) and optional bias (C,); x's dtype and layout."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    b = None if bias is None else per_channel(bias, acc)
    return _library.ops().dwconv2d_forward(x, per_channel(weight, acc), b, list(stride), list(padding))


def backward_input(dy, weight, input_hw, stride, padding, dilation):
    """dx (N, C, *input_hw): the transposed convolution of dy with the same taps; dy's dtype and layout."""
    dy = dense(dy)
    w = per_channel(weight, acc_dtype(dy.dtype))
    return _library.ops().dwconv2d_backward_input(dy, w, list(input_hw), list(stride), list(padding))


def backward_weight(dy, x, kernel_hw, stride, padding, dilation, with_bias):
    """(dweight (C, 1, kh, kw), dbias (C,) or ``None``) in the accumulation dtype."""
    x = dense(x)
    dweight, dbias = _library.ops().dwconv2d_backward_weight(
        like(dy, x), x, list(kernel_hw), list(stride), list(padding)
    )
    return dweight, (dbias if with_bias else None)


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _forward_fake(x, weight, bias, stride, padding):
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    shape = (n, c, _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1]))
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


def _backward_input_fake(dy, weight, input_hw, stride, padding):
    shape = (dy.shape[0], dy.shape[1], input_hw[0], input_hw[1])
    return torch.empty(shape, dtype=dy.dtype, device=dy.device, memory_format=memory_format(dy))


def _backward_weight_fake(dy, x, kernel_hw, stride, padding):
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    return x.new_empty((c, 1, kernel_hw[0], kernel_hw[1]), dtype=acc), x.new_empty(c, dtype=acc)


_library.register_fakes(
    {
        "dwconv2d_forward": _forward_fake,
        "dwconv2d_backward_input": _backward_input_fake,
        "dwconv2d_backward_weight": _backward_weight_fake,
    }
)
