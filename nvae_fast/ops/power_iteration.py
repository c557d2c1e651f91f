"""Batched power iteration: the largest singular value of many weights of different shapes at once.

Each weight ``W_i`` (any rank >= 2) is viewed as the matrix (out_i, rest_i) = ``W_i.reshape(out_i, -1)``;
``us[i]`` is (out_i,) and ``vs[i]`` is (rest_i,). Without gradient, ``n_iter`` steps of

    v_i <- normalize(W_i^T u_i),   u_i <- normalize(W_i v_i),   normalize(a) = a / max(||a||_2, 1e-12)

update ``us``/``vs`` in place (accumulation in float32, float64 when every weight is float64). Then

    sigma_i = u_i^T W_i v_i                       returned as a 1-D tensor (len(weights),)

differentiable w.r.t. each ``W_i`` with u, v held constant: d sigma_i / d W_i = u_i v_i^T.
Used by the spectral regulariser (sum of sigma over every conv of the model).

Their kernels implement :class:`PowerIterationKernels` (``torch``: :class:`TorchKernels`, batched by
shape; ``triton``: ``nvae_fast.kernels.power_iteration``; ``cuda``: ``nvae_fast.cuda.power_iteration``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import repeat
from operator import attrgetter, floordiv
from typing import Protocol

import torch
import torch.nn.functional as F

from .. import backend, selfcheck
from .._accumulation import shared_acc_dtype
from .._power_iteration import forward_via, matrices, outer_grads
from ._checks import FLOAT_DTYPES, check_tensor

__all__ = [
    "power_iteration", "power_iteration_reference", "PowerIterationKernels", "TorchKernels", "PowerIterationFunction",
    "OP",
]

_OP = "power_iteration"
EPS = 1e-12


def power_iteration_reference(weights, us, vs, n_iter):
    """One weight at a time, plain PyTorch: the definition of the op."""
    mats = matrices(weights)
    acc = shared_acc_dtype(mats)
    sig = []
    for w, u_buf, v_buf in zip(mats, us, vs):
        with torch.no_grad():
            wa, u, v = w.to(acc), u_buf.to(acc), v_buf.to(acc)
            for _ in range(n_iter):
                v = F.normalize(wa.t() @ u, dim=0, eps=EPS)
                u = F.normalize(wa @ v, dim=0, eps=EPS)
            u_buf.copy_(u)
            v_buf.copy_(v)
        sig.append(torch.dot(u, w.to(acc) @ v))
    return torch.stack(sig)


def _groups(keys):
    """Indices grouped by equal key (a matrix's shape and dtype), in first-seen order."""
    groups = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return list(groups.values())


def _keys(mats):
    return [(tuple(m.shape), m.dtype) for m in mats]


class PowerIterationKernels(Protocol):
    """The kernels of one lean backend for :func:`power_iteration`; every backend implements all of them.

    ``mats``: the weights as 2-D (out_i, rest_i) matrices, already checked by :func:`power_iteration`;
    ``us[i]`` (out_i,), ``vs[i]`` (rest_i,).
    """

    def supports(self, weights) -> str | None:
        """Why the kernels cannot run these weights (as given, any rank; beyond the op's own checks), or ``None``."""

    def update(self, mats, us, vs, n_iter: int) -> None:
        """``n_iter`` steps of v <- normalize(W^T u), u <- normalize(W v) per matrix; us, vs in place."""

    def sigmas(self, mats, us, vs) -> torch.Tensor:
        """sigma_i = u_i^T W_i v_i: (len(mats),) in the accumulation dtype."""

    def forward(self, weights, us, vs, n_iter: int) -> tuple[torch.Tensor, list[torch.Tensor], object]:
        """The op's forward on the weights as given (any rank >= 2, each read as (out_i, rest_i)):
        ``update`` then ``sigmas``; returns (sigma (len(weights),) in the accumulation dtype, saved,
        layout): saved, the tensors :meth:`backward` needs (the final u_i, v_i; never the weights, which
        the backward does not read); layout, what it needs to know of the weights (shapes and dtypes)."""

    def backward(self, saved: list[torch.Tensor], layout, grad) -> list:
        """dW_i = grad_i u_i v_i^T for every weight, in the weight's shape and dtype; ``grad`` (len(weights),)."""


class TorchKernels:
    """ATen kernel set: stack the weights of each shape and run batched mat-vecs (``torch.bmm``)."""

    @staticmethod
    def supports(weights):
        return None

    @staticmethod
    def update(mats, us, vs, n_iter):
        acc = shared_acc_dtype(mats)
        for idx in _groups(_keys(mats)):
            w = torch.stack([mats[i] for i in idx]).to(acc)
            u = torch.stack([us[i] for i in idx]).to(acc)
            v = torch.stack([vs[i] for i in idx]).to(acc)
            for _ in range(n_iter):
                v = F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1, eps=EPS)
                u = F.normalize(torch.bmm(w, v.unsqueeze(2)).squeeze(2), dim=1, eps=EPS)
            for k, i in enumerate(idx):
                us[i].copy_(u[k])
                vs[i].copy_(v[k])

    @staticmethod
    def forward(weights, us, vs, n_iter):
        return forward_via(TorchKernels._steps_and_sigma, weights, us, vs, n_iter)

    @staticmethod
    def _steps_and_sigma(mats, us, vs, n_iter):
        TorchKernels.update(mats, us, vs, n_iter)
        return TorchKernels.sigmas(mats, us, vs)

    @staticmethod
    def backward(saved, layout, grad):
        return outer_grads(saved, layout, grad)

    @staticmethod
    def sigmas(mats, us, vs):
        acc = shared_acc_dtype(mats)
        out = torch.empty(len(mats), dtype=acc, device=mats[0].device)
        for idx in _groups(_keys(mats)):
            w = torch.stack([mats[i] for i in idx]).to(acc)
            u = torch.stack([us[i] for i in idx]).to(acc)
            v = torch.stack([vs[i] for i in idx]).to(acc)
            out[idx] = torch.bmm(u.unsqueeze(1), torch.bmm(w, v.unsqueeze(2))).flatten()
        return out


class PowerIterationFunction(torch.autograd.Function):
    """sigma_i = u_i^T W_i v_i for every weight; backward gives dW_i = g_i u_i v_i^T (the kernel set's
    ``forward``/``backward``: for cuda one custom-op call each, nothing per weight in Python)."""

    @staticmethod
    def forward(ctx, kernels, us, vs, n_iter, *weights):
        with torch.no_grad():
            sig, saved, layout = kernels.forward(list(weights), us, vs, n_iter)
        ctx.kernels, ctx.layout = kernels, layout
        ctx.save_for_backward(*saved)
        return sig

    @staticmethod
    def backward(ctx, grad):
        grads = ctx.kernels.backward(list(ctx.saved_tensors), ctx.layout, grad.contiguous())
        return (None, None, None, None, *grads)


def _check_call(weights, us, vs, n_iter):
    """The checks of one call that do not look at each weight."""
    if isinstance(weights, torch.Tensor) or not len(weights):
        raise TypeError("power_iteration: weights must be a non-empty list of tensors")
    if len(us) != len(weights) or len(vs) != len(weights):
        raise ValueError(
            f"power_iteration: us and vs must have one entry per weight ({len(weights)}), got {len(us)} and {len(vs)}"
        )
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 0:
        raise ValueError(f"power_iteration: n_iter must be a non-negative int, got {n_iter!r}")
    check_tensor("power_iteration", "weights[0]", weights[0])


def _all_valid(weights, us, vs) -> bool:
    """Whether every check of :func:`_check_each` passes, in C-level passes over the lists (no Python
    per weight); :func:`_check_each` runs its loop, which names the failing argument, only when not."""
    tensors = (*weights, *us, *vs)
    if not all(map(isinstance, tensors, repeat(torch.Tensor))):
        return False
    if not set(map(attrgetter("dtype"), tensors)).issubset(FLOAT_DTYPES):
        return False
    if len(set(map(attrgetter("device"), tensors))) != 1:
        return False
    if set(map(torch.Tensor.dim, (*us, *vs))) != {1} or min(map(torch.Tensor.dim, weights)) < 2:
        return False
    outs = list(map(torch.Tensor.size, weights, repeat(0)))
    if 0 in outs:  # rest is prod(shape[1:]), not numel // out: the loop decides
        return False
    rests = list(map(floordiv, map(torch.Tensor.numel, weights), outs))
    return list(map(torch.Tensor.numel, us)) == outs and list(map(torch.Tensor.numel, vs)) == rests


def _check_each(weights, us, vs):
    """Every weight and vector: float tensors of matching sizes on weights[0]'s device."""
    if _all_valid(weights, us, vs):
        return
    device = weights[0].device
    for i, (w, u, v) in enumerate(zip(weights, us, vs)):
        check_tensor("power_iteration", f"weights[{i}]", w)
        check_tensor("power_iteration", f"us[{i}]", u, ndim=1)
        check_tensor("power_iteration", f"vs[{i}]", v, ndim=1)
        if w.dim() < 2:
            raise ValueError(f"power_iteration: weights[{i}] must have at least 2 dims, got shape {tuple(w.shape)}")
        rest = math.prod(w.shape[1:])
        if u.numel() != w.shape[0] or v.numel() != rest:
            raise ValueError(
                f"power_iteration: us[{i}] must have {w.shape[0]} and vs[{i}] {rest} elements for weights[{i}] of shape "
                f"{tuple(w.shape)}, got {u.numel()} and {v.numel()}"
            )
        for name, t in ((f"weights[{i}]", w), (f"us[{i}]", u), (f"vs[{i}]", v)):
            if t.device != device:
                raise ValueError(f"power_iteration: {name} is on {t.device} but weights[0] is on {device}")


def power_iteration(weights, us, vs, n_iter):
    """``n_iter`` power-iteration steps for every weight (u/v in place), then ``sigma_i = u_i^T W_i v_i``.

    ``weights``: list of tensors of any shapes (each viewed as (out, -1)); ``us[i]``: (out_i,);
    ``vs[i]``: (rest_i,). Returns a 1-D float32 (float64 for all-float64 weights) tensor, differentiable
    w.r.t. the weights.

    A kernel set with ``VALIDATES = True`` (cuda) checks every weight and vector itself, in one compiled
    loop, with errors that name the argument; the per-weight checks here run for the others.
    """
    _check_call(weights, us, vs, n_iter)
    name, kernels = backend.resolve(OP, weights[0].device, weights)
    if not getattr(kernels, "VALIDATES", False):
        _check_each(weights, us, vs)
    if name == "reference":
        return power_iteration_reference(weights, us, vs, n_iter)
    return PowerIterationFunction.apply(kernels, us, vs, n_iter, *weights)


OP = backend.Op(_OP, TorchKernels, lambda name, device, dtype: selfcheck.run(_OP, power_iteration, name, device, dtype))
