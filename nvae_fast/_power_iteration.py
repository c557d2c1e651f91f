"""The forward and backward of the power iteration built from a kernel set's ``update`` and ``sigmas``
(for kernel sets without planned whole-call kernels: torch and triton). Shared by those sets; the
kernel packages may import it (it imports nothing of the ops)."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import repeat
from operator import attrgetter

import torch


def matrices(weights):
    """Every weight as its (out, rest) matrix (``flatten(1)``: a view where the strides allow, as
    ``reshape``), in one C-level pass over the list."""
    return list(map(torch.Tensor.flatten, weights, repeat(1)))


def forward_via(steps_and_sigma, weights, us, vs, n_iter):
    """``steps_and_sigma(mats, us, vs, n_iter)`` (the steps, us and vs in place, then the sigmas it returns)
    on the weights' matrices: (sigma, saved, layout), saved = [the final u_i then v_i packed into one
    vector] (a copy: the caller's buffers change on the next call), layout = each weight's (shape, dtype)."""
    sig = steps_and_sigma(matrices(weights), us, vs, n_iter)
    return sig, [torch.cat((*us, *vs))], list(zip(map(torch.Tensor.size, weights), map(attrgetter("dtype"), weights)))


def outer_grads(saved, layout, grad):
    """dW_i = grad_i u_i v_i^T in each weight's shape and dtype (``layout``), batched over weights of one
    shape; ``saved`` as :func:`forward_via` gives it."""
    n = len(layout)
    parts = saved[0].split([shape[0] for shape, _ in layout] + [math.prod(shape[1:]) for shape, _ in layout])
    us, vs = parts[:n], parts[n:]
    groups = defaultdict(list)
    for i, (shape, dtype) in enumerate(layout):
        groups[(tuple(shape), dtype)].append(i)
    grads = [None] * n
    for (shape, dtype), idx in groups.items():
        u = torch.stack([us[i] for i in idx]).to(grad.dtype)
        v = torch.stack([vs[i] for i in idx]).to(grad.dtype)
        outer = grad[idx].view(-1, 1, 1) * u.unsqueeze(2) * v.unsqueeze(1)
        for k, i in enumerate(idx):
            grads[i] = outer[k].reshape(shape).to(dtype)
    return grads
