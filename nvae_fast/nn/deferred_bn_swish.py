"""BN+Swish applied by the convolution it feeds: the model keeps only the BN input for backward.

In a chain ``... -> BNSwish -> conv -> ...`` (modules called one after the other by ``nn.Sequential``,
possibly nested) :func:`defer_into_conv` replaces the two modules in place: the BNSwish becomes a
:class:`DeferredBNSwish`, which passes its input through unchanged, and the conv a :class:`BNSwishInputConv2d`,
which computes ``conv(silu(bn(x)))`` with :func:`nvae_fast.ops.bn_swish_conv2d` using the BN's parameters and
buffers. Both keep the state-dict keys and tensors of the modules they replace. The BN's output then exists
only inside the fused op, so the pair saves ``x`` for backward instead of ``x`` and ``silu(bn(x))``.
"""

from __future__ import annotations

from torch import nn

from ..ops import bn_swish_conv2d
from .bn_swish import BNSwish, SyncBNSwish
from .convert import share_bn_state

__all__ = ["DeferredBNSwish", "DeferredSyncBNSwish", "BNSwishInputConv2d", "can_defer_into", "defer_into_conv"]


class DeferredBNSwish(BNSwish):
    """A :class:`BNSwish` whose normalisation is done by the :class:`BNSwishInputConv2d` it feeds.

    ``forward(x)`` returns ``x``: (N, C, H, W) unchanged. Parameters and buffers are the BNSwish's.
    """

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + ", applied by the next conv"

    @staticmethod
    def _sync_type() -> type:
        return DeferredSyncBNSwish


class DeferredSyncBNSwish(DeferredBNSwish, SyncBNSwish):
    """The SyncBN form of a :class:`DeferredBNSwish`: its conv normalises with statistics over
    ``process_group`` (default: the whole world); ``forward(x)`` returns ``x``."""


class BNSwishInputConv2d(nn.Module):
    """``conv(silu(bn(x)))`` for a conv fed by a :class:`DeferredBNSwish` ``bn``; (N, C, H, W) -> (N, Cout, Ho, Wo).

    Holds the conv's ``weight`` (Cout, C / groups, kh, kw) and ``bias`` (Cout,) or ``None`` (the conv's keys)
    and its geometry. ``bn`` is referenced, not registered: it stays (and is saved) where it was.
    """

    def __init__(self, conv: nn.Conv2d, bn: DeferredBNSwish):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.__dict__["bn"] = bn  # a plain attribute: not a submodule, so keys and parameters are not duplicated

    def forward(self, x):
        weight, bias, running_mean, running_var, use_batch_stats, factor, eps, group = self.bn.functional_args()
        self.bn.count_batch()
        return bn_swish_conv2d(
            x, weight, bias, running_mean, running_var, use_batch_stats, factor, eps,
            self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, group,
        )

    def extra_repr(self) -> str:
        cout, cin_per_group, kh, kw = self.weight.shape
        return (
            f"{cin_per_group * self.groups}, {cout}, kernel_size={(kh, kw)}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, input from the previous BNSwish"
        )


def can_defer_into(bn: nn.Module, conv: nn.Module) -> bool:
    """Whether ``bn`` (a plain BNSwish) and ``conv`` (an ``nn.Conv2d`` or subclass with numeric zero padding,
    matching channels) can be fused; neither may have forward hooks, which would see the moved computation."""
    return (
        type(bn) is BNSwish
        and isinstance(conv, nn.Conv2d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.in_channels == bn.num_features
        and not any(m._forward_hooks or m._forward_pre_hooks for m in (bn, conv))
    )


def defer_into_conv(bn: BNSwish) -> DeferredBNSwish:
    """A :class:`DeferredBNSwish` sharing ``bn``'s parameters and buffers, in ``bn``'s training mode."""
    new = DeferredBNSwish(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.process_group)
    return share_bn_state(new, bn)
