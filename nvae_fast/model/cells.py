"""Building blocks of the NVAE towers: weight-normalised convolution, residual cells and combiners.

Every cell computes ``skip(x) + 0.1 * SE(branch(x))`` (SE: squeeze-excitation, optional):

* encoder / pre-processing cells (:func:`encoder_cell`): branch = (BN-Swish, conv 3×3) twice; a
  ``down`` cell halves the resolution (stride 2 in the first conv) and doubles the channels, its skip is
  a factorised reduction (Swish, then four 1×1 stride-2 convs on the four pixel phases, concatenated);
* decoder / post-processing cells (:func:`decoder_cell`): inverted residual branch = BN, 1×1 conv
  expanding ``E`` times, BN-Swish, depthwise ``k×k`` conv, BN-Swish, 1×1 conv, BN; an ``up`` cell
  doubles the resolution (nearest-neighbour in the branch, before everything) and halves the channels,
  its skip is bilinear up-sampling followed by a 1×1 conv.

BN-Swish is :class:`nvae_fast.nn.BNSwish`, the depthwise conv :class:`nvae_fast.nn.DepthwiseConv2d`, the
squeeze-excitation :class:`nvae_fast.nn.SqueezeExcite`; the backend switch changes only how they run. Each
BN-Swish and the conv after it run as one op (:func:`nvae_fast.nn.bn_swish_conv2d_modules`), which keeps
only the BN-Swish input for backward; the modules (and state-dict keys) stay separate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import backend
from ..nn import BNSwish, DepthwiseConv2d, SqueezeExcite, bn_swish_conv2d_modules
from ..ops import depthwise_conv2d
from ..ops.weight_norm import weight_norm, wn_conv2d
from .checkpointing import run_with_recompute

__all__ = [
    "WNConv2d",
    "Cell",
    "ResidualBranch",
    "InvertedResidualBranch",
    "FactorizedReduce",
    "UpsampleSkip",
    "encoder_cell",
    "decoder_cell",
    "EncoderCombiner",
    "DecoderCombiner",
    "RESIDUAL_SCALE",
]

RESIDUAL_SCALE = 0.1


class WNConv2d(nn.Conv2d):
    """Weight-normalised ``nn.Conv2d``: convolves with ``W = exp(g) * V / (||V|| + 1e-5)``.

    ``V`` is the parameter ``weight`` (out, in/groups, kh, kw), ``g`` the parameter ``log_weight_norm``
    (out, 1, 1, 1), initialised to ``log(||V|| + 0.01) + log(init_scale)``; norms are per output channel
    over (in, kh, kw). An optional ``mask`` (a non-persistent buffer of ``V``'s shape) multiplies ``V``
    first (masked convolutions of the flows). :meth:`spectral_weight` returns ``W``, which is what
    :class:`nvae_fast.nn.SpectralNormRegularizer` regularises. Depthwise instances run
    :func:`nvae_fast.ops.depthwise_conv2d` on ``W`` (their weights are tiny). Under the ``reference``
    backend the others run ``F.conv2d`` on ``W`` (autograd keeps ``W``); under any other backend they run
    :func:`nvae_fast.ops.wn_conv2d`, whose backward recomputes ``W`` instead of keeping it.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True,
                 mask: torch.Tensor | None = None, init_scale: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        if mask is not None and tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"WNConv2d: mask must have the weight's shape {tuple(self.weight.shape)}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(self._direction(), dim=(1, 2, 3), keepdim=True)
        self.log_weight_norm = nn.Parameter(torch.log(norm + 1e-2) + math.log(init_scale))
        self._depthwise = groups == in_channels == out_channels and groups > 1

    def _direction(self) -> torch.Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def spectral_weight(self) -> torch.Tensor:
        """The effective (normalised, masked) weight ``W``."""
        return weight_norm(*self.weight_norm_params())

    def weight_norm_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(V, g, mask)``: what :func:`nvae_fast.ops.weight_norm.weight_norm` turns into ``W`` (the fused
        BN-Swish-conv takes these, so that it recomputes ``W`` in backward)."""
        return self.weight, self.log_weight_norm, self.mask

    def forward(self, x):
        if self._depthwise:
            return depthwise_conv2d(x, self.spectral_weight(), self.bias, self.stride, self.padding, self.dilation)
        if backend.get_backend() == "reference" or isinstance(self.padding, str):
            return self._conv_forward(x, self.spectral_weight(), self.bias)
        return wn_conv2d(x, self.weight, self.log_weight_norm, self.bias, self.mask,
                         self.stride, self.padding, self.dilation, self.groups)


class ResidualBranch(nn.Module):
    """BN-Swish, WN conv 3×3 (stride ``stride``), BN-Swish, WN conv 3×3: (N, Cin, H, W) -> (N, Cout, H/s, W/s)."""

    def __init__(self, cin, cout, stride, bn_eps, bn_momentum):
        super().__init__()
        self.bn_swish1 = BNSwish(cin, eps=bn_eps, momentum=bn_momentum)
        self.conv1 = WNConv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn_swish2 = BNSwish(cout, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = WNConv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        h = bn_swish_conv2d_modules(self.bn_swish1, self.conv1, x)
        return bn_swish_conv2d_modules(self.bn_swish2, self.conv2, h)


class InvertedResidualBranch(nn.Module):
    """[nearest ×2 if ``up``], BN, 1×1 (Cin -> E·Cin), BN-Swish, depthwise k×k, BN-Swish, 1×1 (-> Cout), BN.

    The 1×1 and depthwise convs have no bias and no weight normalisation (BN follows each of them).
    """

    def __init__(self, cin, cout, expand, kernel_size, up, bn_eps, bn_momentum):
        super().__init__()
        hidden = int(round(cin * expand))
        self.up = up
        self.bn_in = nn.BatchNorm2d(cin, eps=bn_eps, momentum=bn_momentum)
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn_swish1 = BNSwish(hidden, eps=bn_eps, momentum=bn_momentum)
        self.depthwise = DepthwiseConv2d(hidden, kernel_size, bias=False)
        self.bn_swish2 = BNSwish(hidden, eps=bn_eps, momentum=bn_momentum)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn_out = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = bn_swish_conv2d_modules(self.bn_swish1, self.depthwise, self.expand(self.bn_in(x)))
        return self.bn_out(bn_swish_conv2d_modules(self.bn_swish2, self.project, x))


class FactorizedReduce(nn.Module):
    """Down-sampling skip: ``cat_k(conv_k(swish(x)[phase_k]))`` over the four 2×2 pixel phases.

    (N, Cin, H, W) -> (N, Cout, H/2, W/2); conv_k are WN 1×1 stride-2 convs with Cout/4 outputs (the last
    one takes the remainder); the phases are offsets (0,0), (1,1), (0,1), (1,0) in (row, column).
    """

    PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))

    def __init__(self, cin, cout):
        super().__init__()
        if cout % 2:
            raise ValueError(f"FactorizedReduce: cout must be even, got {cout}")
        quarter = cout // 4
        sizes = (quarter, quarter, quarter, cout - 3 * quarter)
        self.convs = nn.ModuleList(WNConv2d(cin, c, 1, stride=2) for c in sizes)

    def forward(self, x):
        x = F.silu(x)
        return torch.cat([conv(x[:, :, dy:, dx:]) for conv, (dy, dx) in zip(self.convs, self.PHASES)], dim=1)


class UpsampleSkip(nn.Module):
    """Up-sampling skip: bilinear ×2 (align_corners=True), then a WN 1×1 conv without bias."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = WNConv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class Cell(nn.Module):
    """``skip(x) + 0.1 * se(branch(x))``; ``skip`` is ``nn.Identity`` for resolution-preserving cells.

    With ``gradient_checkpointing`` set (see :meth:`nvae_fast.model.NVAE.set_gradient_checkpointing`) a
    training-mode forward under grad mode keeps only its input for backward and recomputes the rest
    there (:func:`nvae_fast.model.checkpointing.run_with_recompute`; BN running statistics are
    updated once). Eval mode and ``torch.no_grad`` run the plain forward.
    """

    def __init__(self, skip: nn.Module, branch: nn.Module, channels_out: int, use_se: bool):
        super().__init__()
        self.skip = skip
        self.branch = branch
        self.se = SqueezeExcite(channels_out) if use_se else nn.Identity()
        self.gradient_checkpointing = False

    def _residual(self, x):
        return self.skip(x) + RESIDUAL_SCALE * self.se(self.branch(x))

    def forward(self, x):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return run_with_recompute(self, self._residual, x)
        return self._residual(x)


def encoder_cell(cin: int, kind: str, cfg) -> Cell:
    """Residual cell of the encoder or pre-processing: ``kind`` 'normal' (C -> C) or 'down' (C -> 2C, H/2)."""
    if kind == "normal":
        return Cell(nn.Identity(), ResidualBranch(cin, cin, 1, cfg.bn_eps, cfg.bn_momentum), cin, cfg.use_se)
    if kind == "down":
        cout = 2 * cin
        branch = ResidualBranch(cin, cout, 2, cfg.bn_eps, cfg.bn_momentum)
        return Cell(FactorizedReduce(cin, cout), branch, cout, cfg.use_se)
    raise ValueError(f"encoder_cell: kind must be 'normal' or 'down', got {kind!r}")


def decoder_cell(cin: int, kind: str, expand: int, cfg) -> Cell:
    """Inverted-residual cell of the decoder or post-processing: 'normal' (C -> C) or 'up' (C -> C/2, 2H)."""
    if kind == "normal":
        branch = InvertedResidualBranch(cin, cin, expand, cfg.dec_kernel, False, cfg.bn_eps, cfg.bn_momentum)
        return Cell(nn.Identity(), branch, cin, cfg.use_se)
    if kind == "up":
        cout = cin // 2
        branch = InvertedResidualBranch(cin, cout, expand, cfg.dec_kernel, True, cfg.bn_eps, cfg.bn_momentum)
        return Cell(UpsampleSkip(cin, cout), branch, cout, cfg.use_se)
    raise ValueError(f"decoder_cell: kind must be 'normal' or 'up', got {kind!r}")


class EncoderCombiner(nn.Module):
    """``enc + conv1x1(dec)``: mixes the decoder state (N, Cdec, H, W) into an encoder feature (N, Cenc, H, W)."""

    def __init__(self, channels_enc, channels_dec):
        super().__init__()
        self.conv = WNConv2d(channels_dec, channels_enc, 1)

    def forward(self, enc, dec):
        return enc + self.conv(dec)


class DecoderCombiner(nn.Module):
    """``conv1x1(cat(state, z))``: (N, C, H, W) and latent (N, L, H, W) -> new state (N, C, H, W)."""

    def __init__(self, channels, latent_channels):
        super().__init__()
        self.conv = WNConv2d(channels + latent_channels, channels, 1)

    def forward(self, state, z):
        return self.conv(torch.cat([state, z], dim=1))
