"""Squeeze-excitation module on :func:`nvae_fast.ops.squeeze_excite`."""

from __future__ import annotations

from torch import nn

from ..ops import squeeze_excite

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(act(fc1(mean_hw(x)))))``; input (N, C, H, W), output like it.

    ``fc1``: C -> hidden, ``fc2``: hidden -> C, with ``hidden = max(channels // reduction, min_hidden)``;
    ``activation`` names ``act``: ``"relu"`` (NVAE) or ``"silu"`` (EfficientNet).
    """

    def __init__(self, channels, reduction=16, min_hidden=4, activation="relu"):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.activation = activation
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
