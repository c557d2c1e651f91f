"""Functional, autograd-aware ops of nvae_fast (any float dtype, NCHW or channels_last).

Each op runs on the backend chosen by :mod:`nvae_fast.backend`; the ``*_reference`` functions are the
plain PyTorch compositions that define the semantics.
"""

from .bn_swish import bn_swish, bn_swish_reference
from .bn_swish_conv2d import bn_swish_conv2d, bn_swish_conv2d_reference
from .depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_reference
from .power_iteration import power_iteration, power_iteration_reference
from .squeeze_excite import squeeze_excite, squeeze_excite_reference
from .weight_norm import weight_norm, wn_conv2d

__all__ = [
    "bn_swish",
    "bn_swish_reference",
    "bn_swish_conv2d",
    "bn_swish_conv2d_reference",
    "depthwise_conv2d",
    "depthwise_conv2d_reference",
    "squeeze_excite",
    "squeeze_excite_reference",
    "power_iteration",
    "power_iteration_reference",
    "weight_norm",
    "wn_conv2d",
]
