"""CUDA kernel set of :mod:`nvae_fast.ops.squeeze_excite` (contract: :class:`nvae_fast.ops.squeeze_excite.SqueezeExciteKernels`).

x / dy: (N, C, H, W), NCHW or channels_last (other layouts are copied to NCHW first); gate and dmean
(N, C) are passed in the accumulation dtype (float32, float64 for float64 inputs).

Custom ops (``torch.ops.nvae_fast``): ``se_pool``, ``se_scale``, ``se_backward_reduce``,
``se_backward_dx``; their fake implementations are registered here. The (N, C) MLP of the gate is not a
kernel: the op's ``autograd.Function`` runs it with ATen.
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like, per_channel

__all__ = ["supports", "pool", "scale", "backward_reduce", "backward_dx"]


def supports(x):
    """``None`` when the kernels can run ``x`` (any 4-D float tensor with H * W > 0), else the reason."""
    return None


def pool(x):
    """m = mean over H, W of x: (N, C) in the accumulation dtype."""
    return _library.ops().se_pool(dense(x))


def scale(x, gate):
    """y = x * gate[:, :, None, None]; like x."""
    x = dense(x)
    return _library.ops().se_scale(x, per_channel(gate, acc_dtype(x.dtype)))


def backward_reduce(dy, x):
    """dg = sum over H, W of dy * x: (N, C) in the accumulation dtype."""
    x = dense(x)
    return _library.ops().se_backward_reduce(like(dy, x), x)


def backward_dx(dy, gate, dmean, hw):
    """dx = dy * gate + dmean / hw (per (n, c)), like dy; ``hw`` must be H * W of dy."""
    dy = dense(dy)
    if hw != dy.shape[2] * dy.shape[3]:
        raise ValueError(f"nvae_fast.cuda.squeeze_excite.backward_dx: hw={hw} is not H * W of dy {tuple(dy.shape)}")
    acc = acc_dtype(dy.dtype)
    return _library.ops().se_backward_dx(dy, per_channel(gate, acc), per_channel(dmean, acc))


def _per_sample_fake(x):
    return x.new_empty((x.shape[0], x.shape[1]), dtype=acc_dtype(x.dtype))


def _pool_fake(x):
    return _per_sample_fake(x)


def _scale_fake(x, gate):
    return torch.empty_like(x)


def _backward_reduce_fake(dy, x):
    return _per_sample_fake(x)


def _backward_dx_fake(dy, gate, dmean):
    return torch.empty_like(dy)


_library.register_fakes(
    {
        "se_pool": _pool_fake,
        "se_scale": _scale_fake,
        "se_backward_reduce": _backward_reduce_fake,
        "se_backward_dx": _backward_dx_fake,
    }
)
