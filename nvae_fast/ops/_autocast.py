"""The dtype a convolution runs in under autocast (shared by the ops that wrap ``F.conv2d``)."""

from __future__ import annotations

import torch

__all__ = ["conv_autocast_dtype"]


def conv_autocast_dtype(device: torch.device):
    """The dtype autocast gives convolutions on ``device``, or ``None`` when autocast is off there."""
    kind = device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)
