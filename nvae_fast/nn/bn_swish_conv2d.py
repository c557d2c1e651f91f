"""A :class:`BNSwish` followed by an ``nn.Conv2d``, run as one op (:func:`nvae_fast.ops.bn_swish_conv2d`)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import bn_swish_conv2d
from .bn_swish import BNSwish
from .spectral import conv_weight

__all__ = ["BNSwishConv2d", "bn_swish_conv2d_modules"]


def _check_pair(bn, conv) -> None:
    if not isinstance(bn, BNSwish):
        raise TypeError(f"bn_swish_conv2d: bn must be a BNSwish, got {type(bn).__name__}")
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"bn_swish_conv2d: conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.in_channels != bn.num_features:
        raise ValueError(f"bn_swish_conv2d: conv has {conv.in_channels} input channels but bn has {bn.num_features}")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(
            f"bn_swish_conv2d: conv must use numeric zero padding, got padding={conv.padding!r}, "
            f"padding_mode={conv.padding_mode!r}"
        )


def bn_swish_conv2d_modules(bn: BNSwish, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(bn(x))`` computed by the fused op: (N, C, H, W) -> (N, Cout, Ho, Wo).

    Uses ``bn``'s parameters, buffers and momentum rules exactly as :meth:`BNSwish.forward` does (running
    statistics and ``num_batches_tracked`` are updated in training) and the weight ``conv`` convolves with
    (``conv.spectral_weight()`` when it defines one, else ``conv.weight``). A weight-normalised conv says so
    by defining ``weight_norm_params()`` -> ``(V, log_gain, mask or None)`` (its ``spectral_weight()`` being
    ``nvae_fast.ops.weight_norm.weight_norm`` of them): the op then gets ``V`` and recomputes ``W`` in
    backward instead of keeping it.
    When either module has forward hooks (or pre-hooks) the two modules are called one after the other
    instead, so the hooks fire; the result is the same up to rounding.
    """
    _check_pair(bn, conv)
    if any(m._forward_pre_hooks or m._forward_hooks for m in (bn, conv)):
        return conv(bn(x))  # hooks on either module see the calls they were registered for
    weight, bias, running_mean, running_var, use_batch_stats, factor, eps, group = bn.functional_args()
    bn.count_batch()
    if hasattr(conv, "weight_norm_params"):
        direction, log_gain, mask = conv.weight_norm_params()
    else:
        direction, log_gain, mask = conv_weight(conv), None, None
    return bn_swish_conv2d(
        x, weight, bias, running_mean, running_var, use_batch_stats, factor, eps,
        direction, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
        group, wn_log_gain=log_gain, wn_mask=mask,
    )


class BNSwishConv2d(nn.Module):
    """``conv(bn(x))`` for a :class:`BNSwish` ``bn`` and an ``nn.Conv2d`` ``conv`` as one fused op.

    Input (N, C, H, W) -> (N, Cout, Ho, Wo). Holds the two modules (state-dict keys ``bn.*`` and
    ``conv.*``); the backward recomputes ``bn(x)`` instead of keeping it (see
    :func:`nvae_fast.ops.bn_swish_conv2d`).
    """

    def __init__(self, bn: BNSwish, conv: nn.Conv2d):
        super().__init__()
        _check_pair(bn, conv)
        self.bn = bn
        self.conv = conv

    def forward(self, x):
        return bn_swish_conv2d_modules(self.bn, self.conv, x)
