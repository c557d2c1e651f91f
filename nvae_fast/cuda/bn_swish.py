"""CUDA kernel set of :mod:`nvae_fast.ops.bn_swish` (contract: :class:`nvae_fast.ops.bn_swish.BNSwishKernels`).

x: (N, C, H, W), NCHW or channels_last (other layouts are copied to NCHW first); dy is brought to x's
dtype and memory format. Per-channel tensors (C,) are passed to the kernels in the accumulation dtype
(float32, float64 for float64 x); ``weight``/``bias`` of another dtype are converted (tiny copies).

Custom ops (``torch.ops.nvae_fast``): ``bn_swish_train_forward`` and ``bn_swish_backward`` (a whole
training forward / a backward without a process group, one launch each, on the plan that :func:`plan`
names), and for SyncBN ``bn_swish_stats``, ``bn_swish_normalize``,
``bn_swish_backward_reduce``, ``bn_swish_backward_dx``; their fake implementations are registered here.
Statistics and backward sums are deterministic (fixed-order reductions, Welford/Chan merges for the
statistics).

Plans (``csrc/bn_swish.cu``) of the two training ops, by the bytes of the slices one block of 512
threads would keep on chip (forward: x; backward: dy and x; n = N*H*W values per channel, in x's dtype):
``"resident"`` when what its registers do not take (16 16-byte vectors per thread forward, 8 each of dy
and x backward: 128 KiB) fits the device's opt-in dynamic shared memory per block (227 KiB on sm_90,
163 KiB on sm_80; the emulation models sm_90): every input is read once; ``"l2_blocked"`` otherwise: one
launch whose blocks take tickets over runs of channel groups, each run reduced into per-part partials and
then re-read, from L2, by blocks that wait for those partials (runs of at most half the device's L2; the
emulation's is 50 MiB, :data:`ASSUMED_L2_BYTES`, unless ``NVAE_FAST_EMULATE_L2_BYTES`` says otherwise).
In NCHW a group is one channel; in channels_last up
to 32 consecutive channels (fewer until they fit). With 16-byte vectors on sm_90 the forward is resident up to
n = 88K float32 values (176K bfloat16), the backward up to n = 44K (88K): every cifar10 and celeba64
slice (n <= 64K) is, except the float32 backward at n = 64K (celeba64 16x64x64x64 and alike).
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like, memory_format, per_channel

__all__ = [
    "supports",
    "plan",
    "train_forward",
    "batch_stats",
    "normalize",
    "backward",
    "backward_reduce",
    "backward_dx",
]

#: Threads per block and NHWC channels per group of the training kernels (bn_swish.cu).
GROUP_THREADS = 32 * 16
MAX_GROUP_CHANNELS = 32
#: 16-byte vectors of each input a thread of a resident block keeps in registers (forward, backward).
REG_VECS_FORWARD = 16
REG_VECS_BACKWARD = 8
#: L2 bytes of the emulated device (csrc/emulation runtime.cpp, unless NVAE_FAST_EMULATE_L2_BYTES is set).
ASSUMED_L2_BYTES = 50 << 20
#: Opt-in dynamic shared memory per block of the emulated device (sm_90), csrc/emulation/emulation.h.
EMULATED_SMEM_OPTIN = 227 * 1024


def supports(x):
    """``None``: the kernels run every x that :func:`nvae_fast.ops.bn_swish` accepts."""
    return None


def _align16(b: int) -> int:
    return (b + 15) // 16 * 16


def _smem_optin(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return EMULATED_SMEM_OPTIN


def plan(x, backward: bool = False) -> str:
    """The plan of the training forward (``backward=False``) or backward of x: ``"resident"`` or
    ``"l2_blocked"`` (see the module doc; mirrors ``bn_plan`` in csrc/bn_swish.cu)."""
    x = dense(x)
    n, c, h, w = x.shape
    e, acc = x.element_size(), torch.empty((), dtype=acc_dtype(x.dtype)).element_size()
    inputs = 2 if backward else 1
    slot = (2 if backward else 3) * acc  # SumAcc<acc, 2> / WelfordAcc<acc>
    nhwc = memory_format(x) == torch.channels_last
    vv = 16 // e
    vec = vv if x.data_ptr() % 16 == 0 and (c if nhwc else h * w) % vv == 0 else 1
    reg_vecs = (REG_VECS_BACKWARD if backward else REG_VECS_FORWARD) * GROUP_THREADS

    def resident_bytes(cg: int) -> int:
        v = vec if not nhwc or cg % vec == 0 else 1
        scratch = _align16(slot * GROUP_THREADS // 32 * cg) + _align16(slot * cg) + _align16(2 * acc * cg)
        return scratch + inputs * max(0, n * h * w * cg // v - reg_vecs) * v * e

    cg = 1
    if nhwc:
        cg = max(vec, min(MAX_GROUP_CHANNELS, 1 << max(c - 1, 0).bit_length()))
        while cg > 1 and resident_bytes(cg) > _smem_optin(x.device):
            cg //= 2
    return "resident" if resident_bytes(cg) <= _smem_optin(x.device) else "l2_blocked"


def _params(x, mean, invstd, weight, bias):
    acc = acc_dtype(x.dtype)
    return tuple(per_channel(t, acc) for t in (mean, invstd, weight, bias))


def batch_stats(x):
    """Per-channel (mean, biased var) of x over N, H, W: two (C,) tensors in the accumulation dtype."""
    mean, var = _library.ops().bn_swish_stats(dense(x))
    return mean, var


def normalize(x, mean, invstd, weight, bias):
    """y = silu(x * scale + shift) with scale = weight * invstd, shift = bias - mean * scale; like x."""
    x = dense(x)
    return _library.ops().bn_swish_normalize(x, *_params(x, mean, invstd, weight, bias))


def _running(t, acc):
    """A running statistic the kernel can update in place: ``t`` itself, or a copy of another dtype or
    layout (then copied back after the kernel)."""
    if t is None or (t.dtype == acc and t.is_contiguous()):
        return t
    return t.to(acc).contiguous()


def train_forward(x, weight, bias, running_mean, running_var, momentum, eps):
    """``(y, mean, invstd)`` of a training step, running statistics updated in place by the kernels
    (one launch on the resident plan; see :func:`plan`)."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    rm, rv = _running(running_mean, acc), _running(running_var, acc)
    y, mean, invstd = _library.ops().bn_swish_train_forward(
        x, per_channel(weight, acc), per_channel(bias, acc), rm, rv, float(momentum), float(eps)
    )
    for t, updated in ((running_mean, rm), (running_var, rv)):
        if t is not updated:
            t.copy_(updated)
    return y, mean, invstd


def backward(dy, x, mean, invstd, weight, bias, count):
    """``(dx, sum_dz, sum_dz_xhat)`` in one op (one launch on the resident plan; see :func:`plan`)."""
    x = dense(x)
    return _library.ops().bn_swish_backward(
        like(dy, x), x, *_params(x, mean, invstd, weight, bias), None if count is None else int(count)
    )


def backward_reduce(dy, x, mean, invstd, weight, bias):
    """Per-channel (sum dz, sum dz * xhat) with dz = dy * silu'(z): two (C,) accumulation-dtype tensors."""
    x = dense(x)
    sum_dz, sum_dz_xhat = _library.ops().bn_swish_backward_reduce(like(dy, x), x, *_params(x, mean, invstd, weight, bias))
    return sum_dz, sum_dz_xhat


def backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
    """dx like x; ``count`` is n (int) in training, ``None`` in eval (then the sums are ignored)."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    return _library.ops().bn_swish_backward_dx(
        like(dy, x),
        x,
        *_params(x, mean, invstd, weight, bias),
        per_channel(sum_dz, acc),
        per_channel(sum_dz_xhat, acc),
        None if count is None else int(count),
    )


def _channel_pair(x):
    acc = acc_dtype(x.dtype)
    return x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


def _stats_fake(x):
    return _channel_pair(x)


def _normalize_fake(x, mean, invstd, weight, bias):
    return torch.empty_like(x)


def _backward_reduce_fake(dy, x, mean, invstd, weight, bias):
    return _channel_pair(x)


def _backward_dx_fake(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
    return torch.empty_like(x)


def _train_forward_fake(x, weight, bias, running_mean, running_var, momentum, eps):
    return (torch.empty_like(x),) + _channel_pair(x)


def _backward_fake(dy, x, mean, invstd, weight, bias, count):
    return (torch.empty_like(x),) + _channel_pair(x)


_library.register_fakes(
    {
        "bn_swish_stats": _stats_fake,
        "bn_swish_normalize": _normalize_fake,
        "bn_swish_backward_reduce": _backward_reduce_fake,
        "bn_swish_backward_dx": _backward_dx_fake,
        "bn_swish_train_forward": _train_forward_fake,
        "bn_swish_backward": _backward_fake,
    }
)
