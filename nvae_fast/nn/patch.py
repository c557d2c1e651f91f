"""``nvae_fast.patch``: put nvae_fast modules into an existing model, keeping its weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .bn_swish import BNSwish
from .depthwise_conv2d import DepthwiseConv2d

__all__ = ["PatchReport", "patch"]


@dataclass
class PatchReport:
    """What :func:`patch` replaced: qualified module names."""

    bn_swish: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"nvae_fast.patch: {len(self.bn_swish)} BatchNorm2d+SiLU pairs -> BNSwish, "
            f"{len(self.depthwise)} depthwise Conv2d -> DepthwiseConv2d"
        )


def _is_depthwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == m.in_channels == m.out_channels
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _bn_swish_from(bn: nn.BatchNorm2d) -> BNSwish:
    new = BNSwish(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(bn, name))
    return new.train(bn.training)


def _depthwise_from(conv: nn.Conv2d) -> DepthwiseConv2d:
    new = DepthwiseConv2d(
        conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias is not None, conv.dilation
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    return new.train(conv.training)


def patch(model: nn.Module) -> PatchReport:
    """Replace, in place, BatchNorm2d→SiLU pairs and depthwise ``nn.Conv2d`` by nvae_fast modules.

    A pair is a ``nn.BatchNorm2d`` (exactly that class) directly followed by a ``nn.SiLU`` in the same
    ``nn.Sequential``; the BN becomes a :class:`BNSwish` sharing its parameters and buffers and the SiLU an
    ``nn.Identity``, so state-dict keys are unchanged. A depthwise conv is an ``nn.Conv2d`` with
    ``groups == in_channels == out_channels`` and zero padding given as numbers. Returns a :class:`PatchReport`.
    """
    report = PatchReport()
    for prefix, parent in list(model.named_modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            qualified = f"{prefix}.{name}" if prefix else name
            if (
                isinstance(parent, nn.Sequential)
                and type(child) is nn.BatchNorm2d
                and i + 1 < len(names)
                and type(parent._modules[names[i + 1]]) is nn.SiLU
            ):
                parent._modules[name] = _bn_swish_from(child)
                parent._modules[names[i + 1]] = nn.Identity()
                report.bn_swish.append(qualified)
            elif _is_depthwise(child):
                parent._modules[name] = _depthwise_from(child)
                report.depthwise.append(qualified)
    return report
