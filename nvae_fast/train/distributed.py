"""Data-parallel helpers: process-group setup from ``torchrun``'s environment, synchronised plain
BatchNorm, and small collectives.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) :func:`init_from_env` joins the
default process group with NCCL on CUDA devices and gloo otherwise; each CUDA rank uses device
``cuda:LOCAL_RANK``. Without those variables the run is a single process and nothing is initialised.

:class:`SyncBatchNorm2d` gives the model's plain ``nn.BatchNorm2d`` layers the statistics of the whole
global batch (``nn.SyncBatchNorm`` runs on GPUs only and is no ``nn.BatchNorm2d``, which the BN scale
penalty looks for). Per channel, each rank ``r`` computes its ``n_r`` values' mean ``m_r`` and biased
variance ``v_r`` (two-pass, float32; float64 for float64 input), and the ranks' rows are merged
(Chan et al.) into the statistics of the joint batch, ``n = sum_r n_r``:

    mean = sum_r n_r m_r / n,   var = sum_r n_r (v_r + (m_r - mean)^2) / n

never as E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std. The rows travel in one
all-reduce (each rank fills its own row of a (world, 2C+1) table) whose backward all-reduces the
statistics' gradients (:class:`_AllReduceSum`): with DDP averaging the parameter gradients this is the
gradient of the loss of the joint batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .._accumulation import acc_dtype
from ..nn.convert import replace_modules, share_bn_state
from ..ops.bn_swish import merge_rank_statistics

__all__ = [
    "DistInfo",
    "init_from_env",
    "world",
    "SyncBatchNorm2d",
    "convert_sync_batchnorm",
    "all_reduce_mean",
    "all_reduce_max",
    "all_gather_objects",
    "barrier",
    "shutdown",
]


@dataclass(frozen=True)
class DistInfo:
    """``rank``/``world_size`` of this process and the ``device`` it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(device: torch.device) -> DistInfo:
    """The current process group's rank and size (``0``/``1`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), device)
    return DistInfo(0, 1, device)


def init_from_env(device: str | torch.device) -> DistInfo:
    """Join the process group described by ``torchrun``'s variables, if any.

    ``device`` is the requested device (``cpu``, ``cuda``, ``cuda:k``); under ``torchrun`` a CUDA
    request becomes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        return world(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world(device)


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` over the ranks of ``group``; backward: ``dx_r = sum_r' dy_r'`` (the gradient of
    the sum of every rank's loss)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx = dy.clone()
        dist.all_reduce(dx, group=ctx.group)
        return dx, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys) whose training-mode statistics
    span every rank of ``process_group`` (default: the world); see the module doc. Eval mode, and
    training outside a process group, are plain ``nn.BatchNorm2d``."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        xa = x.to(acc_dtype(x.dtype))
        mean, var, n = self._joint_statistics(xa)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = (xa - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    def _joint_statistics(self, xa: torch.Tensor):
        """Per-channel (mean, biased var) of the joint batch over the group's ranks, and its count n."""
        group = self.process_group or dist.group.WORLD
        c, rank, world = xa.shape[1], dist.get_rank(group), dist.get_world_size(group)
        var, mean = torch.var_mean(xa, dim=(0, 2, 3), correction=0)
        local = torch.cat([mean, var, xa.new_full((1,), xa.numel() / c)])
        rows = torch.stack([local if r == rank else torch.zeros_like(local) for r in range(world)])
        rows = _AllReduceSum.apply(rows, group)
        return merge_rank_statistics(rows[:, 2 * c :], rows[:, :c], rows[:, c : 2 * c])


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every plain ``nn.BatchNorm2d`` replaced by a :class:`SyncBatchNorm2d` sharing its
    parameters and buffers (so optimizers and EMA keep working on the same tensors)."""

    def sync(m: nn.Module) -> SyncBatchNorm2d | None:
        if type(m) is not nn.BatchNorm2d:
            return None
        sync_bn = SyncBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                  process_group=process_group)
        return share_bn_state(sync_bn, m)

    return replace_modules(module, sync)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ranks (returned as a new tensor; identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over ranks (``value`` itself when not distributed); ``device`` is one the
    process group can reduce on (CUDA for NCCL)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    out = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out.item())


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
