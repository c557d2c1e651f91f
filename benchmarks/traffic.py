"""Minimum-traffic model: the bytes an ideal implementation must move, per op and mode.

Rule: every tensor a mode consumes is read from device memory exactly once and every tensor it
produces is written exactly once; intermediates (z, sigmoid(z), pooled means, hidden activations,
partial sums) never touch memory. Real kernels usually do more (a training BN reads x twice: once for
the statistics, once to normalise), so ``bandwidth = min_bytes / time`` is a lower bound on the traffic
actually moved and its fraction of the copy bandwidth is the figure of merit (1.0 = as fast as a copy
of the same bytes).

Notation: M = N*C*H*W elements of x (= elements of y, dy, dx: every op keeps x's shape), e = element
size of the benchmark dtype, C channels, h squeeze-excite width, k depthwise kernel size, and for the
power iteration W_i (out_i x rest_i) in the benchmark dtype and u_i (out_i), v_i (rest_i), sigma in
float32 (4 bytes). Per-channel BN tensors are float32 (4 bytes) in every benchmark, as in mixed
precision training.

| op / mode                 | reads                                          | writes                                   |
|---------------------------|------------------------------------------------|------------------------------------------|
| bn_swish fwd (training)   | x; weight, bias, running_mean, running_var     | y; running_mean, running_var; mean, invstd (saved for bwd) |
| bn_swish bwd              | dy, x; weight, bias, mean, invstd              | dx; dweight, dbias                       |
| depthwise_conv2d fwd      | x; weight (C*k*k)                              | y                                        |
| depthwise_conv2d bwd      | dy, x; weight                                  | dx; dweight                              |
| squeeze_excite fwd        | x; w1 (h*C), b1 (h), w2 (C*h), b2 (C)          | y                                        |
| squeeze_excite bwd        | dy, x; w1, b1, w2, b2                          | dx; dw1, db1, dw2, db2                   |
| power_iteration fwd       | every W_i; every u_i, v_i                      | every u_i, v_i (in place); sigma         |
| power_iteration bwd       | dsigma; every u_i, v_i                         | every dW_i                               |

``fwd+bwd`` is the sum of the two rows. In bytes, for the activation ops: bn_swish fwd = 2*M*e + 32*C,
bwd = 3*M*e + 24*C; depthwise fwd = 2*M*e + C*k*k*e, bwd = 3*M*e + 2*C*k*k*e; squeeze-excite fwd =
2*M*e + (2*h*C + h + C)*e, bwd = 3*M*e + 2*(2*h*C + h + C)*e. The benchmarks use no depthwise bias
(NVAE's depthwise convs have none: a BN follows them).
"""

from __future__ import annotations

import math

from .shapes import OpShape

MODES = ("fwd", "bwd", "fwd+bwd")
F32 = 4


def _activation_bytes(shape: OpShape, mode: str, e: int) -> int:
    n, c, h, w = shape.x
    m = n * c * h * w
    if shape.op == "bn_swish":
        # fwd: 4 params/stats read, 2 running stats + 2 saved stats written; bwd: 4 read, 2 grads written.
        return {"fwd": 2 * m * e + 8 * c * F32, "bwd": 3 * m * e + 6 * c * F32}[mode]
    if shape.op == "depthwise_conv2d":
        p = c * shape.kernel**2
        return {"fwd": 2 * m * e + p * e, "bwd": 3 * m * e + 2 * p * e}[mode]
    if shape.op == "squeeze_excite":
        p = 2 * shape.hidden * c + shape.hidden + c
        return {"fwd": 2 * m * e + p * e, "bwd": 3 * m * e + 2 * p * e}[mode]
    raise ValueError(f"traffic: unknown op {shape.op!r}")


def _power_iteration_bytes(shape: OpShape, mode: str, e: int) -> int:
    weights = sum(math.prod(w) for w in shape.weights)
    vectors = sum(w[0] + math.prod(w[1:]) for w in shape.weights)
    sigmas = len(shape.weights)
    if mode == "fwd":
        return weights * e + 2 * vectors * F32 + sigmas * F32
    return sigmas * F32 + vectors * F32 + weights * e


def min_bytes(shape: OpShape, mode: str, element_size: int) -> int:
    """Minimum bytes moved by ``shape.op`` in ``mode`` (``fwd``, ``bwd`` or ``fwd+bwd``); see module doc."""
    if mode not in MODES:
        raise ValueError(f"traffic: mode must be one of {MODES}, got {mode!r}")
    one = _power_iteration_bytes if shape.op == "power_iteration" else _activation_bytes
    if mode == "fwd+bwd":
        return one(shape, "fwd", element_size) + one(shape, "bwd", element_size)
    return one(shape, mode, element_size)
