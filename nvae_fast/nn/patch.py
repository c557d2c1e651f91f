"""``nvae_fast.patch``: put nvae_fast modules into an existing model, keeping its weights and state-dict keys.

Recognised (exact classes; anything else is left as it is):

* ``nn.BatchNorm2d`` directly followed by ``nn.SiLU`` in an ``nn.Sequential`` (torchvision's
  ``Conv2dNormActivation`` is one) -> :class:`BNSwish` + ``nn.Identity``;
* timm's ``BatchNormAct2d`` with ``nn.SiLU`` and no dropout -> :class:`BNSwish`;
* a depthwise ``nn.Conv2d`` (``groups == in_channels == out_channels``, numeric zero padding) ->
  :class:`DepthwiseConv2d`;
* torchvision's ``SqueezeExcitation`` and timm's EfficientNet ``SqueezeExcite`` with a sigmoid gate, a ReLU
  or SiLU inner activation and 1x1 convs -> :class:`ConvSqueezeExcite`;
* then, with ``fuse_conv``, a :class:`BNSwish` whose output goes straight into a conv (the next module of the
  same ``nn.Sequential`` chain, nested Sequentials flattened, or timm's ``InvertedResidual`` ``bn1`` ->
  ``conv_dw``) -> :mod:`deferred_bn_swish`'s pair.

A BatchNorm2d followed by another activation and an SE block with another gate or activation are listed in
``PatchReport.skipped`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .bn_swish import BNSwish
from .conv_squeeze_excite import ConvSqueezeExcite, is_pointwise
from .convert import share_bn_state
from .deferred_bn_swish import BNSwishInputConv2d, can_defer_into, defer_into_conv
from .depthwise_conv2d import DepthwiseConv2d
from .foreign import bn_act_parts, bn_feeds_conv, squeeze_excite_parts

__all__ = ["PatchReport", "patch"]


@dataclass
class PatchReport:
    """What :func:`patch` did, by qualified module name.

    ``bn_swish``: BatchNorm2d+SiLU pairs and BN+SiLU modules now a :class:`BNSwish`; ``depthwise``: convs now a
    :class:`DepthwiseConv2d`; ``squeeze_excite``: SE blocks now a :class:`ConvSqueezeExcite`; ``bn_swish_conv``:
    ``"bn -> conv"`` pairs now computed by one fused op; ``skipped``: ``(name, reason)`` of candidates left alone.
    """

    bn_swish: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    squeeze_excite: list[str] = field(default_factory=list)
    bn_swish_conv: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"nvae_fast.patch: {len(self.bn_swish)} BatchNorm2d+SiLU pairs -> BNSwish, "
            f"{len(self.depthwise)} depthwise Conv2d -> DepthwiseConv2d, "
            f"{len(self.squeeze_excite)} squeeze-excitation -> ConvSqueezeExcite, "
            f"{len(self.bn_swish_conv)} BNSwish fused into the conv they feed, {len(self.skipped)} left alone"
        ]
        lines += [f"  left alone: {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _is_depthwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == m.in_channels == m.out_channels
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _bn_swish_from(bn: nn.BatchNorm2d) -> BNSwish:
    return share_bn_state(BNSwish(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats), bn)


def _depthwise_from(conv: nn.Conv2d) -> DepthwiseConv2d:
    new = DepthwiseConv2d(
        conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias is not None, conv.dilation
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    return new.train(conv.training)


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ == nn.SiLU.__module__


def _replace_children(parent: nn.Module, prefix: str, report: PatchReport) -> None:
    """Replace the recognised children of ``parent`` (one level) in place, recording them in ``report``."""
    names = list(parent._modules)
    for i, name in enumerate(names):
        child = parent._modules[name]
        qualified = f"{prefix}.{name}" if prefix else name
        after = parent._modules[names[i + 1]] if isinstance(parent, nn.Sequential) and i + 1 < len(names) else None
        if type(child) is nn.BatchNorm2d and type(after) is nn.SiLU:
            parent._modules[name] = _bn_swish_from(child)
            parent._modules[names[i + 1]] = nn.Identity()
            report.bn_swish.append(qualified)
        elif type(child) is nn.BatchNorm2d and after is not None and _is_activation(after):
            report.skipped.append((qualified, f"BatchNorm2d followed by {type(after).__name__}: only SiLU is fused"))
        elif _is_depthwise(child):
            parent._modules[name] = _depthwise_from(child)
            report.depthwise.append(qualified)
        elif (parts := bn_act_parts(child)) is not None:
            bn, reason = parts
            if reason is None:
                parent._modules[name] = _bn_swish_from(bn)
                report.bn_swish.append(qualified)
            else:
                report.skipped.append((qualified, reason))
        elif (parts := squeeze_excite_parts(child)) is not None:
            se_names, activation, reason = parts
            reduce, expand = (getattr(child, n) for n in se_names)
            if reason is None and not (is_pointwise(reduce) and is_pointwise(expand)):
                reason = "its reduce/expand convs are not 1x1, stride 1, unpadded, ungrouped nn.Conv2d"
            if reason is None:
                parent._modules[name] = ConvSqueezeExcite(reduce, expand, activation, se_names).train(child.training)
                report.squeeze_excite.append(qualified)
            else:
                report.skipped.append((qualified, reason))


def _is_chain(m: nn.Module) -> bool:
    """An ``nn.Sequential`` (or subclass) that runs its children one after the other, unmodified."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and not (
        m._forward_hooks or m._forward_pre_hooks
    )


def _chain_leaves(seq: nn.Module, prefix: str) -> list[tuple[nn.Module, str, str]]:
    """``(parent, name, qualified name)`` of the modules ``seq`` calls in order, nested chains flattened."""
    out = []
    for name, child in seq._modules.items():
        qualified = f"{prefix}.{name}" if prefix else name
        if _is_chain(child):
            out += _chain_leaves(child, qualified)
        elif child is not None:
            out.append((seq, name, qualified))
    return out


def _fuse_pair(bn_leaf, conv_leaf, report: PatchReport) -> None:
    """Fuse ``bn_leaf`` into ``conv_leaf`` (each ``(parent, name, qualified name)``) when they can be."""
    (bn_parent, bn_name, bn_q), (conv_parent, conv_name, conv_q) = bn_leaf, conv_leaf
    bn, conv = bn_parent._modules[bn_name], conv_parent._modules[conv_name]
    if can_defer_into(bn, conv):
        deferred = defer_into_conv(bn)
        bn_parent._modules[bn_name] = deferred
        conv_parent._modules[conv_name] = BNSwishInputConv2d(conv, deferred).train(conv.training)
        report.bn_swish_conv.append(f"{bn_q} -> {conv_q}")


def _fuse_into_convs(model: nn.Module, report: PatchReport) -> None:
    """Fuse each BNSwish whose output only feeds a conv (identities in between) into that conv."""
    inner = {id(c) for m in model.modules() if _is_chain(m) for c in m.children() if _is_chain(c)}
    for prefix, parent in list(model.named_modules()):
        for bn_name, conv_name in bn_feeds_conv(parent):
            _fuse_pair(*((parent, n, f"{prefix}.{n}" if prefix else n) for n in (bn_name, conv_name)), report)
        if not _is_chain(parent) or id(parent) in inner:
            continue
        leaves = [leaf for leaf in _chain_leaves(parent, prefix) if type(leaf[0]._modules[leaf[1]]) is not nn.Identity]
        for bn_leaf, conv_leaf in zip(leaves, leaves[1:]):
            _fuse_pair(bn_leaf, conv_leaf, report)


def patch(model: nn.Module, fuse_conv: bool = True) -> PatchReport:
    """Replace, in place, the modules listed in this module's docstring by nvae_fast modules.

    Replacements share the original parameters and buffers, so state-dict keys and values are unchanged and
    a state dict loads into the model before or after patching. ``fuse_conv=False`` skips the BNSwish->conv
    fusion; with it, a fused BNSwish module returns its input (the conv after it normalises), so a hook
    registered on it later sees that input.
    Returns a :class:`PatchReport`.
    """
    report = PatchReport()
    for prefix, parent in list(model.named_modules()):
        _replace_children(parent, prefix, report)
    if fuse_conv:
        _fuse_into_convs(model, report)
    return report
