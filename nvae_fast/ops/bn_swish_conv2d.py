"""BN+Swish followed by a convolution: ``out = F.conv2d(silu(batch_norm(x)), W, b, stride, padding, dilation, groups)``.

Shapes: ``x`` (N, C, H, W) (NCHW or channels_last); BN tensors ``bn_weight``, ``bias``, ``running_mean``,
``running_var`` (C,) or ``None``; ``conv_weight`` (Cout, C / groups, kh, kw), ``conv_bias`` (Cout,) or ``None``;
``out`` (N, Cout, Ho, Wo). With ``wn_log_gain`` (Cout, 1, 1, 1) the conv is weight-normalised:
``conv_weight`` is the direction ``V`` and the conv uses ``W = weight_norm(V, wn_log_gain, wn_mask)`` of
:mod:`nvae_fast.ops.weight_norm` (``wn_mask``, optional, a constant of ``V``'s shape). The BN+Swish half
is :func:`nvae_fast.ops.bn_swish` (same statistics, running-stat update and SyncBN semantics); the conv
half is ``F.conv2d``, or :func:`nvae_fast.ops.depthwise_conv2d`'s kernel set when the conv is depthwise
(``groups == C == Cout``, weight (C, 1, kh, kw)).

Why fuse: an unfused pair keeps both ``x`` (for BN's backward) and ``y = silu(bn(x))`` (for the conv's
weight gradient). The lean backends keep only ``x``, the per-channel ``mean``/``invstd`` and the parameters;
backward recomputes ``y`` with the bn_swish kernel set's ``normalize``, takes the conv gradients

    dy = conv2d_input(dout, W),   dW = conv2d_weight(y, dout),   db = sum_{n,i,j} dout,

frees ``y`` and finishes with bn_swish's backward on ``dy``. ``W`` is not kept either: a weight-normalised
conv recomputes it from ``V`` and ``g`` and takes ``dV``, ``dg`` with
:func:`~nvae_fast.ops.weight_norm.weight_norm_backward`; a cast of the weight to the autocast dtype is
redone in backward too. Under autocast the conv runs in the autocast dtype (as ``F.conv2d`` would) while
BN+Swish stays in ``x``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend
from .bn_swish import OP as BN_SWISH
from .bn_swish import affine_params, bn_swish_reference, check_args, lean_backward, lean_forward, process_group_size
from .depthwise_conv2d import OP as DEPTHWISE_CONV2D
from .weight_norm import weight_norm, weight_norm_backward
from ._autocast import conv_autocast_dtype
from ._checks import check_kernel_fits, check_same_device, check_tensor, check_vector, conv_stride_dilation, pair

__all__ = ["bn_swish_conv2d", "bn_swish_conv2d_reference", "BNSwishConv2dFunction"]

_OP = "bn_swish_conv2d"


def bn_swish_conv2d_reference(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                              conv_weight, conv_bias=None, stride=1, padding=0, dilation=1, groups=1,
                              wn_log_gain=None, wn_mask=None):
    """The unfused composition that defines the semantics."""
    y = bn_swish_reference(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
    if wn_log_gain is not None:
        conv_weight = weight_norm(conv_weight, wn_log_gain, wn_mask)
    return F.conv2d(y, conv_weight, conv_bias, stride, padding, dilation, groups)


def _effective_weight(conv_weight, wn_log_gain, wn_mask, conv_dtype):
    """The weight the conv runs with, in ``conv_dtype``: ``conv_weight`` or its weight-normalised form."""
    if wn_log_gain is not None:
        conv_weight = weight_norm(conv_weight, wn_log_gain, wn_mask)
    return conv_weight.to(conv_dtype)


def _conv_forward(y, weight, bias, conf, dw_kernels):
    stride, padding, dilation, groups = conf
    if dw_kernels is not None:
        return dw_kernels.forward(y, weight, bias, stride, padding, dilation)
    return F.conv2d(y, weight, bias, stride, padding, dilation, groups)


def _conv_backward(dout, y, weight, conf, dw_kernels, mask):
    """``(dy, dweight, dbias)`` of the conv, each ``None`` where ``mask`` (three bools) says not needed."""
    stride, padding, dilation, groups = conf
    if dw_kernels is None:
        dy, dweight, dbias = torch.ops.aten.convolution_backward(
            dout, y, weight, [weight.shape[0]] if mask[2] else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups, list(mask),
        )
        return dy, dweight, dbias
    dy = dw_kernels.backward_input(dout, weight, y.shape[2:], stride, padding, dilation) if mask[0] else None
    dweight = dbias = None
    if mask[1] or mask[2]:
        dweight, dbias = dw_kernels.backward_weight(dout, y, weight.shape[2:], stride, padding, dilation, mask[2])
    return dy, dweight, dbias


class BNSwishConv2dFunction(torch.autograd.Function):
    """One autograd node for BN+Swish+conv; saves x, mean, invstd and the parameters, never y or W."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                conv_weight, conv_bias, wn_log_gain, wn_mask, conf, process_group, conv_dtype, bn_kernels, dw_kernels):
        y, mean, invstd, count = lean_forward(
            bn_kernels, x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps, process_group
        )
        w = _effective_weight(conv_weight, wn_log_gain, wn_mask, conv_dtype)
        out = _conv_forward(y.to(conv_dtype), w, conv_bias, conf, dw_kernels)
        ctx.save_for_backward(x, mean, invstd, bn_weight, bn_bias, conv_weight, wn_log_gain, wn_mask)
        ctx.count, ctx.conf, ctx.process_group, ctx.conv_dtype = count, conf, process_group, conv_dtype
        ctx.bn_kernels, ctx.dw_kernels = bn_kernels, dw_kernels
        ctx.bias_dtype = None if conv_bias is None else conv_bias.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        x, mean, invstd, bn_weight, bn_bias, conv_weight, wn_log_gain, wn_mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_bn = need[0] or need[1] or need[2]
        need_w = need[8] or (wn_log_gain is not None and need[10])
        mask = (need_bn, need_w, ctx.bias_dtype is not None and need[9])
        dx = dbn_weight = dbn_bias = dconv_weight = dlog_gain = None
        y = ctx.bn_kernels.normalize(x, mean, invstd, bn_weight, bn_bias).to(ctx.conv_dtype)
        w = _effective_weight(conv_weight, wn_log_gain, wn_mask, ctx.conv_dtype)
        dy, dw, dconv_bias = _conv_backward(dout.to(ctx.conv_dtype), y, w, ctx.conf, ctx.dw_kernels, mask)
        del y, w
        if need_bn:
            dx, sum_dz, sum_dz_xhat = lean_backward(
                ctx.bn_kernels, dy.to(x.dtype), x, mean, invstd, bn_weight, bn_bias, ctx.count, ctx.process_group, need[0]
            )
            dbn_weight = sum_dz_xhat.to(bn_weight.dtype) if need[1] else None
            dbn_bias = sum_dz.to(bn_bias.dtype) if need[2] else None
        if dw is not None:
            if wn_log_gain is None:
                dconv_weight = dw.to(conv_weight.dtype)
            else:
                dconv_weight, dlog_gain = weight_norm_backward(dw, conv_weight, wn_log_gain, wn_mask, need[8], need[10])
        if dconv_bias is not None:
            dconv_bias = dconv_bias.to(ctx.bias_dtype)
        return (dx, dbn_weight, dbn_bias, None, None, None, None, None,
                dconv_weight, dconv_bias, dlog_gain, None, None, None, None, None, None)


def _check_conv(x, conv_weight, conv_bias, wn_log_gain, wn_mask, stride, padding, dilation, groups):
    check_tensor(_OP, "conv_weight", conv_weight, ndim=4)
    c = x.shape[1]
    if not isinstance(groups, int) or groups < 1 or c % groups or conv_weight.shape[0] % groups:
        raise ValueError(
            f"{_OP}: groups must be a positive int dividing x's channels ({c}) and conv_weight's outputs "
            f"({conv_weight.shape[0]}), got {groups!r}"
        )
    if conv_weight.shape[1] * groups != c:
        raise ValueError(
            f"{_OP}: conv_weight must have shape (Cout, C / groups, kh, kw) = (*, {c // groups}, *, *), got "
            f"{tuple(conv_weight.shape)}"
        )
    if conv_weight.dtype != x.dtype and conv_autocast_dtype(x.device) is None:
        raise TypeError(f"{_OP}: conv_weight must have x's dtype {x.dtype}, got {conv_weight.dtype}")
    if wn_log_gain is None and wn_mask is not None:
        raise ValueError(f"{_OP}: wn_mask is given without wn_log_gain (the mask belongs to a weight-normalised conv)")
    if wn_log_gain is not None:
        check_tensor(_OP, "wn_log_gain", wn_log_gain, ndim=4)
        if tuple(wn_log_gain.shape) != (conv_weight.shape[0], 1, 1, 1):
            raise ValueError(
                f"{_OP}: wn_log_gain must have shape {(conv_weight.shape[0], 1, 1, 1)}, got {tuple(wn_log_gain.shape)}"
            )
        if wn_log_gain.dtype != conv_weight.dtype:
            raise TypeError(f"{_OP}: wn_log_gain must have conv_weight's dtype {conv_weight.dtype}, got {wn_log_gain.dtype}")
    if wn_mask is not None:
        check_tensor(_OP, "wn_mask", wn_mask, ndim=4)
        if wn_mask.shape != conv_weight.shape or wn_mask.requires_grad:
            raise ValueError(
                f"{_OP}: wn_mask must be a constant (no grad) of conv_weight's shape {tuple(conv_weight.shape)}, "
                f"got {tuple(wn_mask.shape)} (requires_grad={wn_mask.requires_grad})"
            )
    check_vector(_OP, "conv_bias", conv_bias, conv_weight.shape[0])
    if conv_bias is not None and conv_bias.dtype != conv_weight.dtype:
        raise TypeError(f"{_OP}: conv_bias must have conv_weight's dtype {conv_weight.dtype}, got {conv_bias.dtype}")
    check_same_device(_OP, "x", x, conv_weight=conv_weight, conv_bias=conv_bias, wn_log_gain=wn_log_gain, wn_mask=wn_mask)
    if isinstance(padding, str):
        raise ValueError(f"{_OP}: padding must be an int or a pair of ints, got {padding!r}")
    stride, dilation = conv_stride_dilation(_OP, stride, dilation)
    padding = pair(_OP, "padding", padding)
    check_kernel_fits(_OP, x, conv_weight.shape[2:], padding, dilation)
    return stride, padding, dilation


def bn_swish_conv2d(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                    conv_weight, conv_bias=None, stride=1, padding=0, dilation=1, groups=1, process_group=None,
                    wn_log_gain=None, wn_mask=None):
    """``F.conv2d(bn_swish(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
    process_group), W, conv_bias, stride, padding, dilation, groups)`` with ``W = conv_weight``, or
    ``W = weight_norm(conv_weight, wn_log_gain, wn_mask)`` when ``wn_log_gain`` is given.

    ``x`` (N, C, H, W); BN tensors (C,) or ``None`` (running statistics updated in place when
    ``training``); ``conv_weight`` (Cout, C / groups, kh, kw); ``conv_bias`` (Cout,) or ``None``;
    ``wn_log_gain`` (Cout, 1, 1, 1) or ``None``; ``wn_mask`` (conv_weight's shape, no grad) or ``None``;
    ``stride``/``padding``/``dilation`` ints or pairs. Returns (N, Cout, Ho, Wo). The lean backends save
    ``x`` (not the BN+Swish output) and the parameters (not ``W``) for backward.
    """
    check_args(_OP, x, bn_weight, bn_bias, running_mean, running_var, training)
    stride, padding, dilation = _check_conv(x, conv_weight, conv_bias, wn_log_gain, wn_mask, stride, padding, dilation, groups)
    name, bn_kernels = backend.resolve(BN_SWISH, x.device, x)
    if name == "reference":
        if process_group is not None and process_group_size(process_group) > 1:
            raise ValueError(f"{_OP}: the reference backend has no process_group support; use 'torch' for SyncBN")
        return bn_swish_conv2d_reference(x, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps,
                                         conv_weight, conv_bias, stride, padding, dilation, groups, wn_log_gain, wn_mask)
    conv_dtype = conv_autocast_dtype(x.device) or x.dtype
    conv_bias = None if conv_bias is None else conv_bias.to(conv_dtype)  # no-op unless autocast is on
    dw_kernels = None
    c = x.shape[1]
    if groups == c == conv_weight.shape[0] and c > 1:
        _, dw_kernels = backend.resolve(DEPTHWISE_CONV2D, x.device, x, conv_weight, stride, padding, dilation)
    bn_weight, bn_bias = affine_params(x, bn_weight, bn_bias)
    return BNSwishConv2dFunction.apply(
        x, bn_weight, bn_bias, running_mean, running_var, bool(training), float(momentum), float(eps),
        conv_weight, conv_bias, wn_log_gain, wn_mask, (stride, padding, dilation, groups), process_group, conv_dtype,
        bn_kernels, dw_kernels,
    )
