"""Fused BatchNorm + Swish: ``y = silu(batch_norm(x))``.

Shapes: ``x`` is (N, C, H, W) (NCHW or channels_last, any float dtype); ``weight``, ``bias``,
``running_mean``, ``running_var`` are (C,) or ``None``. Math, per channel c over the N*H*W values:

    training:  mean_c = E[x],  var_c = E[(x - mean_c)^2]  (biased; accumulated in float32, float64
               for float64 input), running_mean <- (1-m) running_mean + m mean_c,
               running_var  <- (1-m) running_var  + m var_c * n / (n - 1)   (n = N*H*W)
    eval:      mean_c = running_mean_c, var_c = running_var_c
    invstd_c = 1 / sqrt(var_c + eps),  xhat = (x - mean_c) invstd_c,  z = weight_c xhat + bias_c,
    y = z sigmoid(z)

Backward (s = sigmoid(z)): dz = dy s (1 + z (1 - s)), dbias = sum dz, dweight = sum dz xhat, and
    training: dx = weight invstd (dz - sum(dz)/n - xhat sum(dz xhat)/n)
    eval:     dx = weight invstd dz
With a ``process_group`` the statistics and the two backward sums are reduced across its ranks
(SyncBatchNorm semantics; dweight and dbias stay local, as in PyTorch, for DDP to average).

The lean backends save only ``x`` and the per-channel ``mean``/``invstd`` for backward and recompute
``z`` there. Their kernels implement :class:`BNSwishKernels` (``torch``: :class:`TorchKernels`;
``triton``: ``nvae_fast.kernels.bn_swish``; ``cuda``: ``nvae_fast.cuda.bn_swish``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .. import backend, selfcheck
from .._accumulation import acc_dtype
from ._checks import check_same_device, check_tensor, check_vector

__all__ = ["bn_swish", "bn_swish_reference", "BNSwishKernels", "TorchKernels", "BNSwishFunction", "OP"]


def bn_swish_reference(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """The unfused composition that defines the semantics: ``F.silu(F.batch_norm(...))``."""
    return F.silu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))


class BNSwishKernels(Protocol):
    """The kernels of one lean backend for :func:`bn_swish`; every backend implements all of them.

    ``x``, ``dy``: (N, C, H, W), already checked by :func:`bn_swish`; ``mean``, ``invstd``, ``sum_*``:
    (C,) in the accumulation dtype (:func:`acc_dtype` of x's dtype); ``weight``, ``bias``: (C,) tensors
    in their own dtype (ones/zeros where the caller passed ``None``). Outputs like ``x`` have x's dtype
    and (dense) memory format.
    """

    def supports(self, x: torch.Tensor) -> str | None:
        """Why the kernels cannot run ``x`` (beyond the op's own checks), or ``None``."""

    def train_forward(
        self, x, weight, bias, running_mean, running_var, momentum: float, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y, mean, invstd)`` of a training step without a process group: y like x, the batch mean
        and invstd = 1 / sqrt(var + eps) (C,, var biased); y = silu(weight (x - mean) invstd + bias).
        ``running_mean``/``running_var`` (C,) or ``None`` are updated in place:
        r <- (1 - momentum) r + momentum s with s = mean, and var n / (n - 1) (n = N*H*W)."""

    def batch_stats(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(mean, biased var)`` over N, H, W (for SyncBN, which merges them across ranks)."""

    def normalize(self, x, mean, invstd, weight, bias) -> torch.Tensor:
        """y = silu(weight (x - mean) invstd + bias), like x."""

    def backward(self, dy, x, mean, invstd, weight, bias, count: int | None):
        """``(dx, sum_dz, sum_dz_xhat)`` without a process group; ``count`` is n in training, ``None``
        in eval (then dx = weight invstd dz)."""

    def backward_reduce(self, dy, x, mean, invstd, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(sum dz, sum dz xhat)`` (for SyncBN, which sums them across ranks)."""

    def backward_dx(self, dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count: int | None) -> torch.Tensor:
        """dx from the (possibly all-rank) sums; ``count`` as in :meth:`backward`."""


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


class TorchKernels:
    """ATen kernel set of the lean backend (runs on any device).

    It leans on PyTorch's own batch-norm kernels: the statistics come from a training-mode
    ``native_batch_norm`` with ``eps = 0`` (var = invstd^-2), ``z`` from an eval-mode ``batch_norm`` with
    the batch mean, a zero variance and ``eps = 1`` (so the scale is exactly ``weight * invstd``), and the
    fused :meth:`backward` from ``native_batch_norm_backward``.
    """

    @staticmethod
    def supports(x):
        return None

    @staticmethod
    def batch_stats(x):
        _, mean, invstd = torch.ops.aten.native_batch_norm(x.to(acc_dtype(x.dtype)), None, None, None, None, True, 0.0, 0.0)
        return mean, invstd.pow(-2)

    @staticmethod
    def _z(x, mean, invstd, weight, bias):
        acc = mean.dtype
        zero = torch.zeros_like(mean)
        return F.batch_norm(x.to(acc), mean, zero, weight.to(acc) * invstd, bias.to(acc), False, 0.0, 1.0)

    @staticmethod
    def normalize(x, mean, invstd, weight, bias):
        z = TorchKernels._z(x, mean, invstd, weight, bias)
        return F.silu(z, inplace=True).to(x.dtype)

    @staticmethod
    def train_forward(x, weight, bias, running_mean, running_var, momentum, eps):
        mean, var = TorchKernels.batch_stats(x)
        count = x.numel() // x.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
        return TorchKernels.normalize(x, mean, torch.rsqrt(var + eps), weight, bias), mean, torch.rsqrt(var + eps)

    @staticmethod
    def _dz(dy, x, mean, invstd, weight, bias):
        z = TorchKernels._z(x, mean, invstd, weight, bias)
        return torch.ops.aten.silu_backward(dy.to(z.dtype), z)  # dy s (1 + z (1 - s)), s = sigmoid(z)

    @staticmethod
    def _native_backward(dz, x, mean, invstd, weight, mask):
        acc = mean.dtype
        return torch.ops.aten.native_batch_norm_backward(
            dz, x.to(acc), weight.to(acc), None, None, mean, invstd, True, 0.0, mask
        )

    @staticmethod
    def backward_reduce(dy, x, mean, invstd, weight, bias):
        dz = TorchKernels._dz(dy, x, mean, invstd, weight, bias)
        _, sum_dz_xhat, sum_dz = TorchKernels._native_backward(dz, x, mean, invstd, weight, [False, True, True])
        return sum_dz, sum_dz_xhat

    @staticmethod
    def backward(dy, x, mean, invstd, weight, bias, count):
        dz = TorchKernels._dz(dy, x, mean, invstd, weight, bias)
        if count is None:
            dx = dz * _bcast(weight.to(mean.dtype) * invstd)
            _, sum_dz_xhat, sum_dz = TorchKernels._native_backward(dz, x, mean, invstd, weight, [False, True, True])
        else:
            dx, sum_dz_xhat, sum_dz = TorchKernels._native_backward(dz, x, mean, invstd, weight, [True, True, True])
        return dx.to(x.dtype), sum_dz, sum_dz_xhat

    @staticmethod
    def backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
        dz = TorchKernels._dz(dy, x, mean, invstd, weight, bias)
        scale = weight.to(mean.dtype) * invstd
        if count is None:
            return (dz * _bcast(scale)).to(x.dtype)
        # dx = scale (dz - sum_dz / n - xhat sum_dz_xhat / n), with xhat = (x - mean) invstd
        centered = x.to(mean.dtype) - _bcast(mean)
        rest = torch.addcmul(_bcast(-scale * sum_dz / count), centered, _bcast(-scale * invstd * sum_dz_xhat / count))
        return torch.addcmul(rest, dz, _bcast(scale)).to(x.dtype)


def update_running_stats(running_mean, running_var, mean, var, count, momentum) -> None:
    """In place: r <- (1 - momentum) r + momentum s for s = mean (running_mean) and the unbiased
    var * count / (count - 1) (running_var); either may be ``None``."""
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        unbiased = var * (count / (count - 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def process_group_size(process_group) -> int:
    """Ranks in ``process_group``; 1 without one or without an initialised ``torch.distributed``."""
    if process_group is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size(process_group)


def merge_rank_statistics(counts, means, variances):
    """Per-channel statistics of a joint batch from those of its parts (Chan et al.).

    ``counts``: (R, 1) values per part; ``means``, ``variances`` (biased): (R, C). Returns
    ``(mean, var, n)`` with n = sum_r counts_r, mean = sum_r counts_r means_r / n and
    var = sum_r counts_r (variances_r + (means_r - mean)^2) / n (differentiable; no E[x^2] - E[x]^2)."""
    n = counts.sum()
    mean = (counts * means).sum(0) / n
    var = (counts * (variances + (means - mean) ** 2)).sum(0) / n
    return mean, var, n


def _sync_stats(mean, var, count, process_group):
    """Combine per-rank (count, mean, biased var) into the statistics of the joint batch."""
    world = torch.distributed.get_world_size(process_group)
    local = torch.cat([mean.new_tensor([float(count)]), mean, var])
    gathered = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(gathered, local, group=process_group)
    table = torch.stack(gathered)  # (world, 1 + 2C)
    c = mean.numel()
    joint_mean, joint_var, total = merge_rank_statistics(table[:, :1], table[:, 1 : 1 + c], table[:, 1 + c :])
    return joint_mean, joint_var, int(total.item())


def lean_forward(kernels, x, weight, bias, running_mean, running_var, training, momentum, eps, process_group):
    """Forward of the lean backends: ``(y, mean, invstd, count)``.

    ``mean``/``invstd`` (C,) are the statistics used (the batch's, or the running ones in eval; with a
    ``process_group`` those of all ranks), ``count`` is n = N*H*W over all ranks when training, ``None`` in
    eval. Running statistics are updated in place when training. ``weight``/``bias`` must be tensors.
    """
    if not training:
        acc = acc_dtype(x.dtype)
        mean, invstd = running_mean.to(acc), torch.rsqrt(running_var.to(acc) + eps)
        return kernels.normalize(x, mean, invstd, weight, bias), mean, invstd, None
    count = x.numel() // x.shape[1]
    if process_group_size(process_group) <= 1:
        _check_count(count, x)
        y, mean, invstd = kernels.train_forward(x, weight, bias, running_mean, running_var, momentum, eps)
        return y, mean, invstd, count
    mean, var = kernels.batch_stats(x)
    mean, var, count = _sync_stats(mean, var, count, process_group)
    _check_count(count, x)
    invstd = torch.rsqrt(var + eps)
    y = kernels.normalize(x, mean, invstd, weight, bias)
    update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y, mean, invstd, count


def _check_count(count: int, x: torch.Tensor) -> None:
    if count <= 1:
        raise ValueError(f"bn_swish: expected more than 1 value per channel when training, got x of shape {tuple(x.shape)}")


def lean_backward(kernels, dy, x, mean, invstd, weight, bias, count, process_group, need_dx):
    """Backward of the lean backends from ``dy`` = dL/dy: ``(dx or None, sum_dz, sum_dz_xhat)``.

    ``sum_dz``/``sum_dz_xhat`` (C,) are this rank's dbias/dweight in the accumulation dtype; ``dx`` (only
    when ``need_dx``) uses the sums over every rank of ``process_group`` (SyncBN).
    """
    synced = count is not None and process_group_size(process_group) > 1
    if need_dx and not synced:
        return kernels.backward(dy, x, mean, invstd, weight, bias, count)
    sum_dz, sum_dz_xhat = kernels.backward_reduce(dy, x, mean, invstd, weight, bias)
    if not need_dx:
        return None, sum_dz, sum_dz_xhat
    # dx needs the sums over every rank; dweight/dbias stay local for DDP
    both = torch.cat([sum_dz, sum_dz_xhat])
    torch.distributed.all_reduce(both, group=process_group)
    global_dz, global_dz_xhat = both.chunk(2)
    dx = kernels.backward_dx(dy, x, mean, invstd, weight, bias, global_dz, global_dz_xhat, count)
    return dx, sum_dz, sum_dz_xhat


class BNSwishFunction(torch.autograd.Function):
    """One autograd node for BN+Swish; saves x, mean and invstd only."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, process_group, kernels):
        y, mean, invstd, count = lean_forward(
            kernels, x, weight, bias, running_mean, running_var, training, momentum, eps, process_group
        )
        ctx.save_for_backward(x, mean, invstd, weight, bias)
        ctx.count, ctx.kernels, ctx.process_group = count, kernels, process_group
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, weight, bias = ctx.saved_tensors
        dx, sum_dz, sum_dz_xhat = lean_backward(
            ctx.kernels, dy, x, mean, invstd, weight, bias, ctx.count, ctx.process_group, ctx.needs_input_grad[0]
        )
        dweight = sum_dz_xhat.to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = sum_dz.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None, None, None, None, None


def check_args(op, x, weight, bias, running_mean, running_var, training):
    """Validate bn_swish's tensor arguments (errors name ``op`` and the argument)."""
    check_tensor(op, "x", x, ndim=4)
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        check_vector(op, name, t, c)
    check_same_device(op, "x", x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: running_mean and running_var are required when training=False")


def affine_params(x, weight, bias):
    """``weight``/``bias`` as tensors: ones/zeros (C,) in the accumulation dtype where ``None``."""
    c = x.shape[1]
    if weight is None:
        weight = x.new_ones(c, dtype=acc_dtype(x.dtype))
    if bias is None:
        bias = x.new_zeros(c, dtype=acc_dtype(x.dtype))
    return weight, bias


def bn_swish(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, process_group=None):
    """``F.silu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))``.

    ``x``: (N, C, H, W); per-channel tensors: (C,) or ``None``. Running statistics are updated in place
    when ``training`` (unbiased variance, like PyTorch). With ``process_group`` the batch statistics are
    those of all ranks' batches together (SyncBN). Returns a tensor like ``x``.
    """
    check_args(OP.name, x, weight, bias, running_mean, running_var, training)
    name, kernels = backend.resolve(OP, x.device, x)
    if name == "reference":
        if process_group is not None and process_group_size(process_group) > 1:
            raise ValueError("bn_swish: the reference backend has no process_group support; use 'torch' for SyncBN")
        return bn_swish_reference(x, weight, bias, running_mean, running_var, training, momentum, eps)
    weight, bias = affine_params(x, weight, bias)
    return BNSwishFunction.apply(
        x, weight, bias, running_mean, running_var, bool(training), float(momentum), float(eps), process_group, kernels
    )


OP = backend.Op("bn_swish", TorchKernels, lambda name, device, dtype: selfcheck.run("bn_swish", bn_swish, name, device, dtype))
