"""Drop-in modules of nvae_fast; each runs its op on the selected backend."""

from .bn_swish import BNSwish, SyncBNSwish, convert_sync_bn_swish
from .bn_swish_conv2d import BNSwishConv2d, bn_swish_conv2d_modules
from .conv_squeeze_excite import ConvSqueezeExcite
from .depthwise_conv2d import DepthwiseConv2d
from .patch import PatchReport, patch
from .spectral import SpectralNormRegularizer, conv_weight
from .squeeze_excite import SqueezeExcite

__all__ = [
    "BNSwish",
    "SyncBNSwish",
    "convert_sync_bn_swish",
    "BNSwishConv2d",
    "bn_swish_conv2d_modules",
    "DepthwiseConv2d",
    "SqueezeExcite",
    "ConvSqueezeExcite",
    "SpectralNormRegularizer",
    "conv_weight",
    "patch",
    "PatchReport",
]
