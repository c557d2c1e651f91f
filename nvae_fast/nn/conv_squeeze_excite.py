"""Squeeze-excitation whose gate MLP is a pair of 1x1 convolutions (torchvision's and timm's layout)."""

from __future__ import annotations

from torch import nn

from ..ops import squeeze_excite

__all__ = ["ConvSqueezeExcite"]


class ConvSqueezeExcite(nn.Module):
    """``x * sigmoid(expand(act(reduce(mean_hw(x)))))`` with ``reduce``/``expand`` 1x1 ``nn.Conv2d``.

    Input (N, C, H, W), output like it. ``reduce``: C -> hidden, ``expand``: hidden -> C, both 1x1,
    stride 1, no padding, one group; their weights (hidden, C, 1, 1) and (C, hidden, 1, 1) go to
    :func:`nvae_fast.ops.squeeze_excite` as (hidden, C) and (C, hidden) views, so gradients reach the
    convs' own parameters. ``names`` are the attribute names the two convs are held under (e.g.
    ``("fc1", "fc2")`` for torchvision, ``("conv_reduce", "conv_expand")`` for timm), which keeps the
    state-dict keys of the module this one replaces. ``activation``: ``"relu"`` or ``"silu"``.
    """

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d, activation: str, names=("fc1", "fc2")):
        super().__init__()
        for arg, conv in (("reduce", reduce), ("expand", expand)):
            if not is_pointwise(conv):
                raise ValueError(f"ConvSqueezeExcite: {arg} must be a 1x1 nn.Conv2d with stride 1, no padding and one group")
        if expand.in_channels != reduce.out_channels or expand.out_channels != reduce.in_channels:
            raise ValueError(
                f"ConvSqueezeExcite: expand must map {reduce.out_channels} -> {reduce.in_channels} channels, got "
                f"{expand.in_channels} -> {expand.out_channels}"
            )
        self.names, self.activation = tuple(names), activation
        self.add_module(self.names[0], reduce)
        self.add_module(self.names[1], expand)

    def forward(self, x):
        reduce, expand = (getattr(self, name) for name in self.names)
        return squeeze_excite(
            x, reduce.weight.flatten(1), reduce.bias, expand.weight.flatten(1), expand.bias, self.activation
        )

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is exactly an ``nn.Conv2d`` computing a per-pixel linear map (1x1, stride 1, no padding)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )
