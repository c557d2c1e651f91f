"""Recognisers for torchvision's and timm's BN+activation and squeeze-excitation modules.

Neither library is imported here: a class is looked up only when its module is already loaded, which it is
whenever a model holds one of its instances. Each recogniser returns ``None`` for a module that is not of its
class, else what :func:`nvae_fast.patch` needs and, when the module cannot be replaced, the reason.
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = ["bn_act_parts", "squeeze_excite_parts", "bn_feeds_conv"]

# The SE gate's inner activation classes nvae_fast.ops.squeeze_excite computes, by its name for them.
_SE_ACTIVATIONS = {nn.ReLU: "relu", nn.SiLU: "silu"}


def _class(module: str, name: str):
    return getattr(sys.modules.get(module), name, None)


def bn_act_parts(m: nn.Module):
    """For timm's ``BatchNormAct2d`` with an activation: ``(bn, reason)``, ``reason`` ``None`` when it is
    ``BatchNorm2d`` then ``nn.SiLU`` with no dropout; ``None`` for any other module (or no activation)."""
    cls = _class("timm.layers.norm_act", "BatchNormAct2d")
    if cls is None or type(m) is not cls or type(m.act) is nn.Identity:
        return None
    if type(m.act) is not nn.SiLU:
        return m, f"BatchNormAct2d with {type(m.act).__name__}: only SiLU is fused"
    if type(m.drop) is not nn.Identity:
        return m, f"BatchNormAct2d with dropout ({type(m.drop).__name__}) between BN and SiLU"
    return m, None


def _se_reason(activation: nn.Module, gate: nn.Module) -> str | None:
    if type(gate) is not nn.Sigmoid:
        return f"gate {type(gate).__name__}: only Sigmoid is fused"
    if type(activation) not in _SE_ACTIVATIONS:
        return f"inner activation {type(activation).__name__}: only ReLU and SiLU are fused"
    return None


def squeeze_excite_parts(m: nn.Module):
    """For torchvision's ``SqueezeExcitation`` or timm's EfficientNet ``SqueezeExcite``:
    ``((reduce name, expand name), activation name, reason)``; ``None`` for any other module."""
    torchvision_se = _class("torchvision.ops.misc", "SqueezeExcitation")
    timm_se = _class("timm.models._efficientnet_blocks", "SqueezeExcite")
    if torchvision_se is not None and type(m) is torchvision_se:
        names, activation, gate = ("fc1", "fc2"), m.activation, m.scale_activation
    elif timm_se is not None and type(m) is timm_se:
        names, activation, gate = ("conv_reduce", "conv_expand"), m.act1, m.gate
    else:
        return None
    return names, _SE_ACTIVATIONS.get(type(activation)), _se_reason(activation, gate)


def bn_feeds_conv(m: nn.Module) -> list[tuple[str, str]]:
    """``(bn attribute, conv attribute)`` pairs of a block whose own ``forward`` passes that BN's output only
    to that conv: timm's EfficientNet ``InvertedResidual`` (``bn1`` -> ``conv_dw``); ``[]`` for other modules."""
    inverted_residual = _class("timm.models._efficientnet_blocks", "InvertedResidual")
    if inverted_residual is not None and type(m) is inverted_residual:
        return [("bn1", "conv_dw")]
    return []
