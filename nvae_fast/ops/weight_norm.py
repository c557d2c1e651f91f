"""Weight-normalised 2-D convolution whose backward recomputes the weight instead of keeping it.

Shapes: ``x`` (N, Cin, H, W); direction ``v`` (Cout, Cin / groups, kh, kw); log-gain ``g`` (Cout, 1, 1, 1);
optional ``mask`` of ``v``'s shape (a constant); ``bias`` (Cout,) or ``None``; output (N, Cout, Ho, Wo).
Per output channel ``o`` (sums over the input channel and the kernel taps)::

    u = v * mask                  (u = v without a mask)
    n = ||u||_2,  r = 1 / (n + eps),  s = exp(g) * r      (eps = 1e-5)
    W = s * u
    y = conv2d(x, W, bias, stride, padding, dilation, groups)

Autograd on this composition keeps the full-size ``W`` for the convolution's backward (and, with a mask,
``u`` for the norm's). :class:`WeightNormConv2dFunction` keeps only ``x``, ``v``, ``g`` and ``mask`` (the
parameters are resident anyway) and in backward recomputes ``W``, then::

    dx = conv2d_input(dy, W),   dW = conv2d_weight(x, dy),   dbias = sum_{n,i,j} dy
    d = sum(dW * u)                           (per output channel)
    dg = s * d                                (= sum(dW * W))
    du = s * (dW - r * d * u / n)             (dn/du = u / n; the term is 0 where n = 0, since then u = 0)
    dv = du * mask                            (du without a mask)

Under autocast the convolution runs in the autocast dtype (as ``F.conv2d`` would: ``x``, ``W`` and the
bias are cast to it); the weight-norm arithmetic stays in ``v``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._autocast import conv_autocast_dtype

__all__ = ["WN_EPS", "weight_norm", "weight_norm_backward", "wn_conv2d", "WeightNormConv2dFunction"]

WN_EPS = 1e-5


def _scale(u: torch.Tensor, log_gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, s)`` of the module docstring, each (Cout, 1, 1, 1): the one place ``W``'s scale is computed."""
    norm = torch.linalg.vector_norm(u, dim=(1, 2, 3), keepdim=True)
    return norm, torch.exp(log_gain) / (norm + WN_EPS)


def weight_norm(v: torch.Tensor, log_gain: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The effective weight ``W = exp(g) * u / (||u|| + eps)``, ``u = v * mask``; differentiable (plain autograd)."""
    u = v if mask is None else v * mask
    return u * _scale(u, log_gain)[1]


def weight_norm_backward(dw: torch.Tensor, v: torch.Tensor, log_gain: torch.Tensor, mask: torch.Tensor | None,
                         need_v: bool = True, need_gain: bool = True):
    """``(dv, dg)`` from ``dw`` = dL/dW (any float dtype, cast to ``v``'s): the chain rule through
    :func:`weight_norm` as the module docstring states it, recomputing ``u``, ``n``, ``r``, ``s``; an
    entry is ``None`` where its ``need_*`` flag is false."""
    u = v if mask is None else v * mask
    norm, scale = _scale(u, log_gain)
    dw = dw.to(v.dtype)
    dot = (dw * u).sum(dim=(1, 2, 3), keepdim=True)
    dg = (scale * dot).to(log_gain.dtype) if need_gain else None
    dv = None
    if need_v:
        coef = (1.0 / (norm + WN_EPS)) * dot / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # r d / n
        dv = scale * (dw - coef * u)
        if mask is not None:
            dv = dv * mask
    return dv, dg


class WeightNormConv2dFunction(torch.autograd.Function):
    """One autograd node for weight norm + conv2d; saves ``x`` (in the conv dtype), ``v``, ``g``, ``mask``."""

    @staticmethod
    def forward(ctx, x, v, log_gain, bias, mask, conf, conv_dtype):
        stride, padding, dilation, groups = conf
        w = weight_norm(v, log_gain, mask).to(conv_dtype)
        xc = x.to(conv_dtype)
        y = F.conv2d(xc, w, None if bias is None else bias.to(conv_dtype), stride, padding, dilation, groups)
        ctx.save_for_backward(xc, v, log_gain, mask)
        ctx.conf, ctx.x_dtype = conf, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        xc, v, log_gain, mask = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad
        need_w = need[1] or need[2]
        need_b = ctx.bias_dtype is not None and need[3]
        w = weight_norm(v, log_gain, mask).to(xc.dtype)
        dx, dw, db = torch.ops.aten.convolution_backward(
            dy.to(xc.dtype), xc, w, [w.shape[0]] if need_b else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups, [need[0], need_w, need_b],
        )
        del w
        dv, dg = weight_norm_backward(dw, v, log_gain, mask, need[1], need[2]) if need_w else (None, None)
        if dx is not None:
            dx = dx.to(ctx.x_dtype)
        if db is not None:
            db = db.to(ctx.bias_dtype)
        return dx, dv, dg, db, None, None, None


def wn_conv2d(x, v, log_gain, bias=None, mask=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``F.conv2d(x, weight_norm(v, log_gain, mask), bias, stride, padding, dilation, groups)`` through
    :class:`WeightNormConv2dFunction` (which does not keep the weight for backward).

    ``stride``/``padding``/``dilation`` are pairs of ints (as ``nn.Conv2d`` stores them); ``mask`` is a
    constant (no gradient). Shapes as in the module docstring.
    """
    if isinstance(padding, str):
        raise ValueError(f"wn_conv2d: padding must be a pair of ints, got {padding!r}")
    if mask is not None and mask.requires_grad:
        raise ValueError("wn_conv2d: mask must not require grad")
    conv_dtype = conv_autocast_dtype(x.device)
    if conv_dtype is None:
        if v.dtype != x.dtype:
            raise TypeError(f"wn_conv2d: v must have x's dtype {x.dtype}, got {v.dtype}")
        conv_dtype = x.dtype
    conf = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
    return WeightNormConv2dFunction.apply(x, v, log_gain, bias, mask, conf, conv_dtype)
