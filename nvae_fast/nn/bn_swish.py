"""BatchNorm2d followed by Swish (SiLU) as one module: :class:`BNSwish` and its SyncBN form."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import bn_swish

__all__ = ["BNSwish", "SyncBNSwish", "convert_sync_bn_swish"]


class BNSwish(nn.Module):
    """Drop-in for ``nn.Sequential(nn.BatchNorm2d(num_features), nn.SiLU())``; input (N, C, H, W).

    Parameters and buffers are those of ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), so state dicts move between the two unchanged.
    ``momentum=None`` gives the cumulative moving average, as in ``nn.BatchNorm2d``. With a
    ``process_group`` the batch statistics are those of all ranks (SyncBN semantics).
    It deliberately does not subclass ``nn.BatchNorm2d``: ``nn.SyncBatchNorm.convert_sync_batchnorm`` would
    otherwise turn it into a plain SyncBatchNorm and drop the Swish; use :func:`convert_sync_bn_swish`.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, process_group=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.process_group = process_group
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def functional_args(self) -> tuple:
        """The arguments after ``x`` of :func:`nvae_fast.ops.bn_swish` for one forward call of this module.

        Applies ``nn.BatchNorm2d``'s rules: in training with running statistics ``num_batches_tracked``
        is incremented and ``momentum=None`` becomes ``1 / num_batches_tracked``; batch statistics are
        used in training or when there are no running statistics.
        """
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return (
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            use_batch_stats,
            factor,
            self.eps,
            self._group(),
        )

    def _group(self):
        return self.process_group

    def forward(self, x):
        return bn_swish(x, *self.functional_args())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class SyncBNSwish(BNSwish):
    """:class:`BNSwish` whose statistics span ``process_group`` (default: the whole world)."""

    def _group(self):
        if self.process_group is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.process_group = torch.distributed.group.WORLD
        return self.process_group


def convert_sync_bn_swish(module: nn.Module, process_group=None) -> nn.Module:
    """Return ``module`` with every :class:`BNSwish` replaced by a :class:`SyncBNSwish` sharing its tensors."""
    if isinstance(module, BNSwish) and not isinstance(module, SyncBNSwish):
        sync = SyncBNSwish(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(sync, name, getattr(module, name))  # share, so optimizers keep their parameters
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = convert_sync_bn_swish(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
