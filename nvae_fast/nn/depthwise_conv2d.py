"""Depthwise convolution module on :func:`nvae_fast.ops.depthwise_conv2d`."""

from __future__ import annotations

from torch import nn

from ..ops import depthwise_conv2d

__all__ = ["DepthwiseConv2d"]


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels)`` computed by nvae_fast.

    Input (N, C, H, W) -> output (N, C, Ho, Wo). ``padding=None`` means ``dilation * (k - 1) // 2``
    ('same' for odd kernels at stride 1). Parameters, initialisation and state-dict keys are
    ``nn.Conv2d``'s (``weight`` (C, 1, kh, kw), ``bias`` (C,)).
    """

    def __init__(self, channels, kernel_size, stride=1, padding=None, bias=True, dilation=1):
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        if padding is None:
            padding = tuple(di * (ki - 1) // 2 for di, ki in zip(d, k))
        super().__init__(channels, channels, k, stride=stride, padding=padding, dilation=d, groups=channels, bias=bias)

    def forward(self, x):
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
