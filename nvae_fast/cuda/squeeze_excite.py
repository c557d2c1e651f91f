"""CUDA kernel set of :mod:`nvae_fast.ops.squeeze_excite` (contract: :class:`nvae_fast.ops.squeeze_excite.SqueezeExciteKernels`).

x / dy: (N, C, H, W), NCHW or channels_last (other layouts are copied to NCHW first); w1 (Ch, C), b1 (Ch,)
or None, w2 (C, Ch), b2 (C,) or None; mean and gate (N, C) in the accumulation dtype (float32, float64 for
float64 inputs). The weights are passed as they are when they share one dtype, x's or the accumulation
dtype, and copied to the accumulation dtype otherwise.

Custom ops (``torch.ops.nvae_fast``, see ``csrc/squeeze_excite.cu``): ``se_forward`` (2 launches: pooling
and the gate MLP in one kernel, the gate-and-scale pass) and ``se_backward`` (2 launches: the dy x
reduction and the whole MLP backward in one kernel, then dx), each after a memset of its ticket
counters; ``se_plan`` returns the split they pick. Their fake implementations are registered here.
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like

__all__ = ["supports", "plan", "forward", "backward"]

#: The activation codes of the kernels.
ACTIVATIONS = {"relu": 0, "silu": 1}


def supports(x):
    """``None`` when the kernels can run ``x`` (any 4-D float tensor with H * W > 0), else the reason."""
    return None


def plan(x):
    """The split the kernels pick for ``x``: ``{"parts", "chunk", "blocks_per_sample", "channel_blocks"}``:
    every sample's H * W pixels in ``parts`` parts of ``chunk`` pixels, reduced by ``blocks_per_sample``
    blocks (channels_last: ``parts`` times ``channel_blocks`` groups of 32-channel columns)."""
    parts, chunk, blocks, channel_blocks = _library.ops().se_plan(dense(x))
    return {"parts": parts, "chunk": chunk, "blocks_per_sample": blocks, "channel_blocks": channel_blocks}


def _weights(x, w1, b1, w2, b2):
    """The weights in one dtype the kernels take: theirs when they share x's or the accumulation dtype."""
    ws = [w for w in (w1, b1, w2, b2) if w is not None]
    dtype = w1.dtype
    if dtype not in (x.dtype, acc_dtype(x.dtype)) or any(w.dtype != dtype for w in ws):
        dtype = acc_dtype(x.dtype)
    return [None if w is None else w.to(dtype).contiguous() for w in (w1, b1, w2, b2)]


def forward(x, w1, b1, w2, b2, activation):
    """``(y, mean, gate)``: y like x, mean and gate (N, C) in the accumulation dtype."""
    x = dense(x)
    return _library.ops().se_forward(x, *_weights(x, w1, b1, w2, b2), ACTIVATIONS[activation])


def backward(dy, x, mean, gate, w1, b1, w2, b2, activation):
    """``(dx, dw1, db1, dw2, db2)``; dx like x, the weight gradients in the weights' dtypes (db None
    where the bias is None)."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    weights = _weights(x, w1, b1, w2, b2)
    dx, dw1, db1, dw2, db2 = _library.ops().se_backward(
        like(dy, x), x, mean.to(acc).contiguous(), gate.to(acc).contiguous(), *weights, ACTIVATIONS[activation]
    )
    grads = [dw1, db1, dw2, db2]
    for i, w in enumerate((w1, b1, w2, b2)):
        grads[i] = None if w is None else grads[i].to(w.dtype)
    return (dx, *grads)


def _forward_fake(x, w1, b1, w2, b2, activation):
    stats = x.new_empty((x.shape[0], x.shape[1]), dtype=acc_dtype(x.dtype))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _backward_fake(dy, x, mean, gate, w1, b1, w2, b2, activation):
    return (
        torch.empty_like(x), torch.empty_like(w1), w1.new_empty((w1.shape[0],)), torch.empty_like(w2),
        w2.new_empty((w2.shape[0],)),
    )


def _plan_fake(x):
    raise NotImplementedError("se_plan reports the launch plan of a real tensor; it cannot be traced")


_library.register_fakes({"se_plan": _plan_fake, "se_forward": _forward_fake, "se_backward": _backward_fake})
