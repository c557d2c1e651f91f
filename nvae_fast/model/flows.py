"""Inverse-autoregressive flow cells applied to posterior samples (volume preserving, as in NVAE).

Ordering: latent elements of one group (L, H, W) are ordered pixel by pixel in raster order (row-major)
and, within a pixel, by channel; a ``mirror`` cell reverses the pixel order (keeping channel order).
A masked convolution only reads inputs that precede its output in this order; ``strict`` masks also
exclude the output's own position (the input channel "block" the output belongs to).

One cell (:class:`IAFCell`) computes a shift ``m(z)`` from a masked network

    m(z) = conv1x1(elu(elu(dwconv_kxk(elu(conv3x3(z))))))      conv3x3 strict, the others not

and returns ``z' = z - m(z)``. Element i of ``m`` depends only on elements of ``z`` strictly before i,
so the Jacobian is triangular with a unit diagonal: log|det| = 0 and the cell is invertible
(:meth:`IAFCell.inverse` solves ``z = y + m(z)`` by fixed-point iteration, exact after L·H·W steps).
:class:`PairedFlow` chains a cell and its mirror. All convolutions are weight-normalised; the output
conv starts with 0.1× its norm so that the flow starts close to the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cells import WNConv2d

__all__ = ["autoregressive_mask", "IAFCell", "PairedFlow"]


def _channel_order(count: int, other: int) -> torch.Tensor:
    """Order index of each of ``count`` channels when ``other`` channels sit on the other side of a conv.

    The side with more channels groups them in consecutive blocks of ``count // other``; each block has
    the index of the single channel it corresponds to on the other side.
    """
    if count % other and other % count:
        raise ValueError(f"autoregressive_mask: channel counts {count} and {other} must divide one another")
    return torch.arange(count) // max(count // other, 1)


def autoregressive_mask(c_in: int, c_out: int, kernel_size: int, groups: int, strict: bool, mirror: bool) -> torch.Tensor:
    """Mask (c_out, c_in // groups, k, k) of a conv that respects the ordering of the module docstring.

    ``groups`` is 1 (full conv) or ``c_in == c_out`` (depthwise: each output reads its own channel).
    Taps strictly before the centre in raster order are all open; the centre tap is open for input
    channels whose order index is ``<=`` the output's (``<`` if ``strict``); taps after it are closed.
    ``mirror`` flips the taps in both spatial directions (reversed pixel order).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"autoregressive_mask: kernel_size must be odd, got {kernel_size}")
    if groups != 1 and not groups == c_in == c_out:
        raise ValueError(f"autoregressive_mask: groups must be 1 or c_in == c_out, got groups={groups}, {c_in} -> {c_out}")
    k, m = kernel_size, (kernel_size - 1) // 2
    mask = torch.zeros(c_out, c_in // groups, k, k)
    mask[:, :, :m, :] = 1
    mask[:, :, m, :m] = 1
    if groups == 1:
        out_order = _channel_order(c_out, c_in).view(-1, 1)
        in_order = _channel_order(c_in, c_out).view(1, -1)
        centre = in_order < out_order if strict else in_order <= out_order
    else:
        centre = torch.full((c_out, 1), not strict)
    mask[:, :, m, m] = centre.float()
    if mirror:
        mask = mask.flip(2, 3)
    return mask


class IAFCell(nn.Module):
    """Volume-preserving IAF step ``z -> z - m(z)`` on (N, L, H, W); see the module docstring."""

    def __init__(self, latent_channels: int, mirror: bool, expand: int = 6, kernel_size: int = 5):
        super().__init__()
        lat, hidden = latent_channels, expand * latent_channels
        self.mirror = mirror
        self.conv1 = WNConv2d(lat, hidden, 3, padding=1, bias=False,
                              mask=autoregressive_mask(lat, hidden, 3, 1, True, mirror))
        self.conv2 = WNConv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False,
                              mask=autoregressive_mask(hidden, hidden, kernel_size, hidden, False, mirror))
        self.shift = WNConv2d(hidden, lat, 1, bias=True, init_scale=0.1,
                              mask=autoregressive_mask(hidden, lat, 1, 1, False, mirror))

    def shift_of(self, z: torch.Tensor) -> torch.Tensor:
        """``m(z)``: (N, L, H, W), each element a function of the elements of ``z`` before it."""
        h = F.elu(self.conv2(F.elu(self.conv1(z))))
        return self.shift(F.elu(h))

    def forward(self, z):
        """Returns ``(z - m(z), log_det)``, log_det = zeros (N,)."""
        return z - self.shift_of(z), z.new_zeros(z.shape[0])

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The ``z`` with ``forward(z)[0] == y``: iterate ``z <- y + m(z)`` once per latent element."""
        z = y
        for _ in range(y[0].numel()):
            z = y + self.shift_of(z)
        return z


class PairedFlow(nn.Module):
    """An :class:`IAFCell` followed by its mirror; forward returns ``(z', log_det (N,))``."""

    def __init__(self, latent_channels: int):
        super().__init__()
        self.cell1 = IAFCell(latent_channels, mirror=False)
        self.cell2 = IAFCell(latent_channels, mirror=True)

    def forward(self, z):
        z, log_det1 = self.cell1(z)
        z, log_det2 = self.cell2(z)
        return z, log_det1 + log_det2

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.cell1.inverse(self.cell2.inverse(y))
