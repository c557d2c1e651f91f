"""Squeeze-excitation: ``y = x * sigmoid(linear(act(linear(mean_hw(x), w1, b1)), w2, b2))``, ``act`` relu or silu.

Shapes: ``x`` (N, C, H, W) (NCHW or channels_last), ``w1`` (Ch, C), ``b1`` (Ch,) or ``None``,
``w2`` (C, Ch), ``b2`` (C,) or ``None``. Math (accumulation in float32, float64 for float64 input):

    m = mean_{h,w} x                      (N, C)
    q = m w1^T + b1                       (N, Ch)
    a = act(q)                            (N, Ch)     relu (NVAE's gate) or silu (EfficientNet's)
    g = sigmoid(a w2^T + b2)              (N, C)      the gate
    y = x * g[:, :, None, None]

Backward: dg = sum_{h,w} dy x; dp = dg g (1 - g); dw2 = dp^T a; db2 = sum_n dp; da = dp w2;
dq = da act'(q) (relu: [q > 0]; silu: s (1 + q (1 - s)), s = sigmoid(q)); dw1 = dq^T m; db1 = sum_n dq;
dm = dq w1; dx = dy g + dm / (H W).
The lean backends save x, the gate g and the pooled mean m (both N*C, tiny); each kernel set runs the
whole forward (pooling, the gate MLP, the scale) and the whole backward (the dy x reduction, the MLP
backward, dx) itself.

Their kernels implement :class:`SqueezeExciteKernels` (``torch``: :class:`TorchKernels`; ``triton``:
``nvae_fast.kernels.squeeze_excite``; ``cuda``: ``nvae_fast.cuda.squeeze_excite``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .. import backend, selfcheck
from .._accumulation import acc_dtype
from ._checks import check_same_device, check_tensor, check_vector

__all__ = [
    "squeeze_excite", "squeeze_excite_reference", "SqueezeExciteKernels", "TorchKernels", "SqueezeExciteFunction", "OP",
]

_OP = "squeeze_excite"

# The gate's inner activation by name: (function, derivative given the pre-activation q).
ACTIVATIONS = {
    "relu": (F.relu, lambda q: (q > 0).to(q.dtype)),
    "silu": (F.silu, lambda q: torch.sigmoid(q) * (1 + q * (1 - torch.sigmoid(q)))),
}


def squeeze_excite_reference(x, w1, b1, w2, b2, activation="relu"):
    """The unfused composition that defines the semantics."""
    act, _ = ACTIVATIONS[activation]
    m = x.mean(dim=(2, 3))
    g = torch.sigmoid(F.linear(act(F.linear(m, w1, b1)), w2, b2))
    return x * g[:, :, None, None]


class SqueezeExciteKernels(Protocol):
    """The kernels of one lean backend for :func:`squeeze_excite`; every backend implements all of them.

    ``x``, ``dy``: (N, C, H, W) and the weights, already checked by :func:`squeeze_excite`; ``mean`` and
    ``gate`` (N, C) are in the accumulation dtype. Outputs like ``x`` have x's dtype and (dense) memory
    format; weight gradients have their weight's dtype (None for a bias that is None).
    """

    def supports(self, x) -> str | None:
        """Why the kernels cannot run ``x`` (beyond the op's own checks), or ``None``."""

    def plan(self, x) -> dict:
        """The launch plan the kernels pick for ``x`` (names and integers, for reports)."""

    def forward(self, x, w1, b1, w2, b2, activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y, mean, gate)``: m = mean_{h,w} x, gate = sigmoid(w2 act(w1 m + b1) + b2), y = x gate."""

    def backward(self, dy, x, mean, gate, w1, b1, w2, b2, activation: str) -> tuple:
        """``(dx, dw1, db1, dw2, db2)`` of the module docstring, from the saved ``mean`` and ``gate``."""


class TorchKernels:
    """ATen kernel set of the lean backend (runs on any device)."""

    @staticmethod
    def supports(x):
        return None

    @staticmethod
    def plan(x):
        return {"kernels": "aten"}

    @staticmethod
    def forward(x, w1, b1, w2, b2, activation):
        m = x.to(acc_dtype(x.dtype)).mean(dim=(2, 3))
        _, _, g = _mlp(m, w1, b1, w2, b2, activation)
        return (x * g[:, :, None, None]).to(x.dtype), m, g

    @staticmethod
    def backward(dy, x, mean, gate, w1, b1, w2, b2, activation):
        acc = mean.dtype
        q, a, _ = _mlp(mean, w1, b1, w2, b2, activation)
        dg = (dy.to(acc) * x.to(acc)).sum(dim=(2, 3))
        dp = dg * gate * (1 - gate)
        dq = (dp @ w2.to(acc)) * ACTIVATIONS[activation][1](q)
        dm = dq @ w1.to(acc)
        dx = (dy * gate[:, :, None, None] + (dm / (x.shape[2] * x.shape[3]))[:, :, None, None]).to(dy.dtype)
        return (
            dx, (dq.t() @ mean).to(w1.dtype), None if b1 is None else dq.sum(0).to(b1.dtype),
            (dp.t() @ a).to(w2.dtype), None if b2 is None else dp.sum(0).to(b2.dtype),
        )


def _mlp(m, w1, b1, w2, b2, activation):
    """The gate MLP in ``m``'s (accumulation) dtype: ``(q, a, g)`` of the module docstring."""
    acc = m.dtype
    q = F.linear(m, w1.to(acc), None if b1 is None else b1.to(acc))
    a = ACTIVATIONS[activation][0](q)
    g = torch.sigmoid(F.linear(a, w2.to(acc), None if b2 is None else b2.to(acc)))
    return q, a, g


class SqueezeExciteFunction(torch.autograd.Function):
    """One autograd node for SE; saves x, the pooled mean and the gate."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, activation, kernels):
        y, m, g = kernels.forward(x, w1, b1, w2, b2, activation)
        ctx.save_for_backward(x, m, g, w1, b1, w2, b2)
        ctx.kernels, ctx.activation = kernels, activation
        return y

    @staticmethod
    def backward(ctx, dy):
        x, m, g, w1, b1, w2, b2 = ctx.saved_tensors
        dx, dw1, db1, dw2, db2 = ctx.kernels.backward(dy, x, m, g, w1, b1, w2, b2, ctx.activation)
        grads = (dx, dw1, db1, dw2, db2)
        return tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad[:5])) + (None, None)


def _check(x, w1, b1, w2, b2, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"squeeze_excite: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    check_tensor(_OP, "x", x, ndim=4)
    check_tensor(_OP, "w1", w1, ndim=2)
    check_tensor(_OP, "w2", w2, ndim=2)
    c, hidden = x.shape[1], w1.shape[0]
    if w1.shape[1] != c:
        raise ValueError(f"squeeze_excite: w1 must have shape (hidden, C) with C={c} (x's channels), got {tuple(w1.shape)}")
    if tuple(w2.shape) != (c, hidden):
        raise ValueError(f"squeeze_excite: w2 must have shape (C, hidden) = {(c, hidden)}, got {tuple(w2.shape)}")
    check_vector(_OP, "b1", b1, hidden)
    check_vector(_OP, "b2", b2, c)
    check_same_device(_OP, "x", x, w1=w1, b1=b1, w2=w2, b2=b2)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"squeeze_excite: x must have a non-empty spatial extent, got shape {tuple(x.shape)}")


def squeeze_excite(x, w1, b1, w2, b2, activation="relu"):
    """``x * sigmoid(linear(act(linear(mean_hw(x), w1, b1)), w2, b2))[:, :, None, None]``; like ``x``.

    ``activation``: the gate's inner ``act``, ``"relu"`` (default) or ``"silu"``.
    """
    _check(x, w1, b1, w2, b2, activation)
    name, kernels = backend.resolve(OP, x.device, x)
    if name == "reference":
        return squeeze_excite_reference(x, w1, b1, w2, b2, activation)
    return SqueezeExciteFunction.apply(x, w1, b1, w2, b2, activation, kernels)


OP = backend.Op(_OP, TorchKernels, lambda name, device, dtype: selfcheck.run(_OP, squeeze_excite, name, device, dtype))
