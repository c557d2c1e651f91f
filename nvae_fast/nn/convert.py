"""Module conversion: replace the submodules of a model in place, and hand a BatchNorm's tensors to the
module that replaces it."""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["BN_STATE", "rebind_references", "replace_modules", "share_bn_state"]

#: The parameters and buffers of ``nn.BatchNorm2d``, which every BN-like module of nvae_fast keeps too.
BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def replace_modules(module: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with every submodule ``m`` for which ``replacement(m)`` is not ``None`` replaced by it.

    Walks the tree from the top: ``module`` itself first, then its children, each in place in its parent;
    the children of a replaced module are not visited. Returns the replacement of ``module`` when it has
    one, else ``module``.
    """
    new = replacement(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        converted = replace_modules(child, replacement)
        if converted is not child:
            setattr(module, name, converted)
    return module


def rebind_references(module: nn.Module, replaced: dict[nn.Module, nn.Module]) -> None:
    """Point every plain (unregistered) attribute of ``module``'s submodules that refers to a key of
    ``replaced`` at its replacement (registered submodules are :func:`replace_modules`' job)."""
    if not replaced:
        return
    for m in module.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, nn.Module) and value in replaced:
                m.__dict__[name] = replaced[value]


def share_bn_state(new: nn.Module, bn: nn.Module) -> nn.Module:
    """``new`` holding ``bn``'s parameters and buffers (:data:`BN_STATE`, the same tensors, so optimizers
    and EMA keep working on them), in ``bn``'s training mode."""
    for name in BN_STATE:
        setattr(new, name, getattr(bn, name))
    return new.train(bn.training)
