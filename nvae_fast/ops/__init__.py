"""Functional, autograd-aware ops of nvae_fast (any float dtype, NCHW or channels_last).

Each op runs on the backend chosen by :mod:`nvae_fast.backend`; the ``*_reference`` functions are the
plain PyTorch compositions that define the semantics.
"""

import torch

from .. import backend
from .bn_swish import OP as _BN_SWISH
from .bn_swish import bn_swish, bn_swish_reference
from .bn_swish_conv2d import bn_swish_conv2d, bn_swish_conv2d_reference
from .depthwise_conv2d import OP as _DEPTHWISE_CONV2D
from .depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_reference
from .power_iteration import OP as _POWER_ITERATION
from .power_iteration import power_iteration, power_iteration_reference
from .squeeze_excite import OP as _SQUEEZE_EXCITE
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
    "run_selfchecks",
]

#: The ops that run on the lean backends, as :func:`nvae_fast.backend.resolve` sees them.
OPS = (_BN_SWISH, _DEPTHWISE_CONV2D, _SQUEEZE_EXCITE, _POWER_ITERATION)


def run_selfchecks(device: torch.device | str | None = None, dtypes=(torch.float32,)) -> list[dict]:
    """Run ``auto``'s self-checks now, for every op and every fused backend that runs on ``device``
    (default: the current CUDA device) in ``dtypes``; returns the verdicts (``backend_info()["selfchecks"]``).
    Call it before ``torch.compile`` or CUDA-graph capture, where no probe can run."""
    return backend.run_selfchecks(OPS, device, dtypes)
