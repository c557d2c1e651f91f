"""BatchNorm2d followed by Swish (SiLU) as one module: :class:`BNSwish` and its SyncBN form."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import bn_swish
from .convert import rebind_references, replace_modules, share_bn_state

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
        """The arguments after ``x`` of :func:`nvae_fast.ops.bn_swish` for the next forward call of this
        module. Reading them changes no state: a forward reads them, then calls :meth:`count_batch`.

        Applies ``nn.BatchNorm2d``'s rules: batch statistics are used in training or when there are no
        running statistics; with ``momentum=None`` the running statistics are the cumulative average, so the
        batch about to be counted gets the factor ``1 / (num_batches_tracked + 1)``.
        """
        factor = 0.0 if self.momentum is None else self.momentum
        if self.momentum is None and self._counts_batches():
            factor = 1.0 / (float(self.num_batches_tracked) + 1.0)
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

    def count_batch(self) -> None:
        """Count one forward call as ``nn.BatchNorm2d`` does: ``num_batches_tracked += 1`` in training with
        running statistics. Called by every forward that uses :meth:`functional_args`, after reading them."""
        if self._counts_batches():
            self.num_batches_tracked.add_(1)

    def _counts_batches(self) -> bool:
        return self.training and self.track_running_stats

    def _group(self):
        return self.process_group

    def forward(self, x):
        args = self.functional_args()
        self.count_batch()
        return bn_swish(x, *args)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    def sync_form(self, process_group=None) -> BNSwish:
        """This module's SyncBN form (what :func:`convert_sync_bn_swish` puts in its place): a
        :class:`SyncBNSwish` holding its parameters and buffers, in its training mode."""
        return share_bn_state(self._sync_type()(self.num_features, self.eps, self.momentum, self.affine,
                                                self.track_running_stats, process_group), self)

    @staticmethod
    def _sync_type() -> type:
        return SyncBNSwish


class SyncBNSwish(BNSwish):
    """:class:`BNSwish` whose statistics span ``process_group`` (default: the whole world)."""

    def _group(self):
        if self.process_group is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.process_group = torch.distributed.group.WORLD
        return self.process_group


def convert_sync_bn_swish(module: nn.Module, process_group=None) -> nn.Module:
    """Return ``module`` with every :class:`BNSwish` replaced by its SyncBN form (:meth:`BNSwish.sync_form`)
    sharing its tensors. Modules that refer to a replaced one without owning it (the conv that applies a
    BNSwish fused into it by :func:`nvae_fast.patch`) are pointed at the replacement."""
    replaced: dict[nn.Module, nn.Module] = {}

    def sync(m: nn.Module) -> BNSwish | None:
        if not isinstance(m, BNSwish) or isinstance(m, SyncBNSwish):
            return None
        replaced[m] = m.sync_form(process_group)
        return replaced[m]

    module = replace_modules(module, sync)
    rebind_references(module, replaced)
    return module
