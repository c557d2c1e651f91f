"""CUDA kernel set of :mod:`nvae_fast.ops.bn_swish` (contract: :class:`nvae_fast.ops.bn_swish.BNSwishKernels`).

x: (N, C, H, W), NCHW or channels_last (other layouts are copied to NCHW first); dy is brought to x's
dtype and memory format. Per-channel tensors (C,) are passed to the kernels in the accumulation dtype
(float32, float64 for float64 x); ``weight``/``bias`` of another dtype are converted (tiny copies).

Custom ops (``torch.ops.nvae_fast``): ``bn_swish_stats``, ``bn_swish_normalize``,
``bn_swish_backward_reduce``, ``bn_swish_backward_dx``; their fake implementations are registered here.
Statistics and backward sums are deterministic (two-phase reductions, Welford/Chan merges for the
statistics).
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like, per_channel

__all__ = ["supports", "train_forward", "batch_stats", "normalize", "backward", "backward_reduce", "backward_dx"]


def supports(x):
    """``None``: the kernels run every x that :func:`nvae_fast.ops.bn_swish` accepts."""
    return None


def _params(x, mean, invstd, weight, bias):
    acc = acc_dtype(x.dtype)
    return tuple(per_channel(t, acc) for t in (mean, invstd, weight, bias))


def batch_stats(x):
    """Per-channel (mean, biased var) of x over N, H, W: two (C,) tensors in the accumulation dtype."""
    mean, var = _library.ops().bn_swish_stats(dense(x))
    return mean, var


def normalize(x, mean, invstd, weight, bias):
    """y = silu(x * scale + shift) with scale = weight * invstd, shift = bias - mean * scale; like x."""
    x = dense(x)
    return _library.ops().bn_swish_normalize(x, *_params(x, mean, invstd, weight, bias))


def train_forward(x, weight, bias, eps):
    """``(y, mean, var)`` of a training step: the statistics, then y with them (two passes over x)."""
    mean, var = batch_stats(x)
    return normalize(x, mean, torch.rsqrt(var + eps), weight, bias), mean, var


def backward(dy, x, mean, invstd, weight, bias, count):
    """``(dx, sum_dz, sum_dz_xhat)``: the per-channel sums, then dx with them."""
    sum_dz, sum_dz_xhat = backward_reduce(dy, x, mean, invstd, weight, bias)
    return backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count), sum_dz, sum_dz_xhat


def backward_reduce(dy, x, mean, invstd, weight, bias):
    """Per-channel (sum dz, sum dz * xhat) with dz = dy * silu'(z): two (C,) accumulation-dtype tensors."""
    x = dense(x)
    sum_dz, sum_dz_xhat = _library.ops().bn_swish_backward_reduce(like(dy, x), x, *_params(x, mean, invstd, weight, bias))
    return sum_dz, sum_dz_xhat


def backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
    """dx like x; ``count`` is n (int) in training, ``None`` in eval (then the sums are ignored)."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    return _library.ops().bn_swish_backward_dx(
        like(dy, x),
        x,
        *_params(x, mean, invstd, weight, bias),
        per_channel(sum_dz, acc),
        per_channel(sum_dz_xhat, acc),
        None if count is None else int(count),
    )


def _channel_pair(x):
    acc = acc_dtype(x.dtype)
    return x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


def _stats_fake(x):
    return _channel_pair(x)


def _normalize_fake(x, mean, invstd, weight, bias):
    return torch.empty_like(x)


def _backward_reduce_fake(dy, x, mean, invstd, weight, bias):
    return _channel_pair(x)


def _backward_dx_fake(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
    return torch.empty_like(x)


_library.register_fakes(
    {
        "bn_swish_stats": _stats_fake,
        "bn_swish_normalize": _normalize_fake,
        "bn_swish_backward_reduce": _backward_reduce_fake,
        "bn_swish_backward_dx": _backward_dx_fake,
    }
)
