"""Random inputs of one op case, the same for every provider (fixed seed).

Activations and weights use the benchmark dtype, except the per-channel BN tensors and the power
iteration vectors ``u``/``v``, which are float32 as in mixed-precision training (BN parameters stay
float32; the spectral regulariser keeps float32 vectors). Every input is non-trivial: BN inputs have a
non-zero mean and a scale other than one, weights are scaled like a fan-in initialisation.

``differentiable`` lists the leaf tensors the backward pass produces gradients for; ``stateful`` the
names of tensors the op updates in place (BN running statistics, power-iteration vectors), which the
correctness check clones so that every provider starts from the same state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .shapes import OpShape

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class OpInputs:
    """Keyword arguments of the op (``tensors``) and the leaves to differentiate (``differentiable``)."""

    tensors: dict
    differentiable: list[torch.Tensor]
    stateful: tuple[str, ...]

    def with_fresh_state(self) -> dict:
        """``tensors`` with every stateful tensor (or list of tensors) cloned."""
        fresh = dict(self.tensors)
        for name in self.stateful:
            value = fresh[name]
            fresh[name] = [t.clone() for t in value] if isinstance(value, list) else value.clone()
        return fresh

    def in_float64(self) -> tuple[dict, list[torch.Tensor]]:
        """Float64 copies of ``tensors`` (fresh state, same memory formats) and of ``differentiable``, in
        its order, as new leaves: the inputs of the float64 reference that the correctness check uses."""
        leaves = {id(t): t.detach().double().requires_grad_() for t in self.differentiable}

        def up(t):
            if not isinstance(t, torch.Tensor):
                return t
            return leaves[id(t)] if id(t) in leaves else t.detach().double()

        tensors = {
            name: [up(t) for t in value] if isinstance(value, list) else up(value)
            for name, value in self.with_fresh_state().items()
        }
        return tensors, [leaves[id(t)] for t in self.differentiable]


def make_inputs(shape: OpShape, dtype: torch.dtype, device: torch.device, channels_last: bool = False, seed: int = 0) -> OpInputs:
    """Inputs for ``shape.op`` (see module doc); ``channels_last`` applies to x and the conv weight."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(size, generator=g, device=device, dtype=torch.float32) * scale + shift).to(dt)

    def leaf(t):
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_()

    if shape.op == "power_iteration":
        weights = [leaf(randn(*w, scale=1 / math.sqrt(math.prod(w[1:])))) for w in shape.weights]
        us = [F.normalize(randn(w[0], dt=torch.float32), dim=0) for w in shape.weights]
        vs = [F.normalize(randn(math.prod(w[1:]), dt=torch.float32), dim=0) for w in shape.weights]
        tensors = {"weights": weights, "us": us, "vs": vs, "n_iter": shape.n_iter}
        return OpInputs(tensors, weights, ("us", "vs"))

    n, c, h, w = shape.x
    x = leaf(randn(n, c, h, w, scale=1.5, shift=0.3))
    if shape.op == "bn_swish":
        weight = leaf(randn(c, scale=0.2, shift=1.0, dt=torch.float32))
        bias = leaf(randn(c, scale=0.2, dt=torch.float32))
        running_mean = randn(c, scale=0.1, dt=torch.float32)
        running_var = randn(c, scale=0.1, shift=1.0, dt=torch.float32).abs_()
        tensors = dict(x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
        return OpInputs(tensors, [x, weight, bias], ("running_mean", "running_var"))
    if shape.op == "depthwise_conv2d":
        k = shape.kernel
        weight = leaf(randn(c, 1, k, k, scale=1 / k))
        return OpInputs(dict(x=x, weight=weight), [x, weight], ())
    if shape.op == "squeeze_excite":
        hidden = shape.hidden
        w1 = leaf(randn(hidden, c, scale=1 / math.sqrt(c)))
        b1 = leaf(randn(hidden, scale=0.1))
        w2 = leaf(randn(c, hidden, scale=1 / math.sqrt(hidden)))
        b2 = leaf(randn(c, scale=0.1))
        return OpInputs(dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2), [x, w1, b1, w2, b2], ())
    raise ValueError(f"make_inputs: unknown op {shape.op!r}")
