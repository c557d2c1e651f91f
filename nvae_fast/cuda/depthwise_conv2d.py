"""CUDA kernel set of :mod:`nvae_fast.ops.depthwise_conv2d` (contract: :class:`nvae_fast.ops.depthwise_conv2d.DepthwiseConv2dKernels`).

Supported: kernel sizes 1..11 per axis, stride 1 or 2 per axis, any padding up to 1024, dilation 1
(``supports`` gives the reason for anything else, and the op falls back to the ``torch`` kernels).
x / dy: NCHW or channels_last (other layouts are copied to NCHW first); the result has that layout.
Weight and bias are passed in the accumulation dtype (float32, float64 for float64 inputs).

Custom ops (``torch.ops.nvae_fast``): ``dwconv2d_forward``, ``dwconv2d_backward_input``,
``dwconv2d_backward_weight`` (which always returns the bias gradient too: it is a by-product of the
same pass); their fake implementations are registered here. The weight gradient is deterministic.

:func:`plan` reports the launches ``csrc/depthwise_conv2d.cu`` picks for a convolution (kernels, tiles,
vector widths, grids, shared memory); ``tests/ops/test_gpu_plans.py`` checks it against the launches the
host code records.
"""

from __future__ import annotations

import os

import torch

from .._accumulation import acc_dtype
from . import _library
from ._library import dense, like, memory_format, per_channel

__all__ = ["supports", "forward", "backward_input", "backward_weight", "plan"]

MAX_KERNEL = 11
MAX_PADDING = 1024

# The constants of the launch code in csrc/depthwise_conv2d.cu and csrc/launch.h that the plans follow.
_THREADS = 256  # threads per block
_SMEM_BUDGET = 48 * 1024  # bytes of shared memory per block
_ROWS_PER_THREAD = 4  # the most output rows one thread computes
_TAP_SHARE = 8  # taps at most 1 / 8 of a block's source-tile bytes (samples per block)
_WINDOW_CHANNELS = 8  # channels per block of the NHWC register-window kernel
_WGRAD_TILE = 64  # largest weight-gradient dy tile side
_PART_SHARE = 8  # weight-gradient partial sums at most 1 / 8 of the bytes their items read
_MAX_GRID_YZ = 65535
_EMULATED_SMS = 132  # the CPU emulation's device unless NVAE_FAST_EMULATE_SMS says otherwise


def supports(x, weight, stride, padding, dilation):
    """``None`` when the kernels can run this convolution, else the reason (stride/padding/dilation: pairs)."""
    if tuple(dilation) != (1, 1):
        return f"dilation {tuple(dilation)} (the CUDA kernels support dilation 1 only)"
    if any(s not in (1, 2) for s in stride):
        return f"stride {tuple(stride)} (the CUDA kernels support strides 1 and 2)"
    kh, kw = weight.shape[2:]
    if not (1 <= kh <= MAX_KERNEL and 1 <= kw <= MAX_KERNEL):
        return f"kernel size {kh}x{kw} (the CUDA kernels support 1 to {MAX_KERNEL} per axis)"
    if max(padding) > MAX_PADDING:
        return f"padding {tuple(padding)} (the CUDA kernels support at most {MAX_PADDING})"
    return None


def forward(x, weight, bias, stride, padding, dilation):
    """y = depthwise conv of x with weight (C, 1, kh, kw) and optional bias (C,); x's dtype and layout."""
    x = dense(x)
    acc = acc_dtype(x.dtype)
    b = None if bias is None else per_channel(bias, acc)
    return _library.ops().dwconv2d_forward(x, per_channel(weight, acc), b, list(stride), list(padding))


def backward_input(dy, weight, input_hw, stride, padding, dilation):
    """dx (N, C, *input_hw): the transposed convolution of dy with the same taps; dy's dtype and layout."""
    dy = dense(dy)
    w = per_channel(weight, acc_dtype(dy.dtype))
    return _library.ops().dwconv2d_backward_input(dy, w, list(input_hw), list(stride), list(padding))


def backward_weight(dy, x, kernel_hw, stride, padding, dilation, with_bias):
    """(dweight (C, 1, kh, kw), dbias (C,) or ``None``) in the accumulation dtype."""
    x = dense(x)
    dweight, dbias = _library.ops().dwconv2d_backward_weight(
        like(dy, x), x, list(kernel_hw), list(stride), list(padding)
    )
    return dweight, (dbias if with_bias else None)


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _cdiv(a, b):
    return -(-a // b)


def _pow2(v):
    p = 1
    while p < v:
        p <<= 1
    return p


def _row_chunks(tile_w, vec):
    """Accesses per NCHW tile row: one per column, or with vec-element vectors a head, full vectors and a tail."""
    return tile_w if vec == 1 else _cdiv(tile_w, vec) + 1


def _sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return int(os.environ.get("NVAE_FAST_EMULATE_SMS", _EMULATED_SMS))


def _plan_tiles(g, nchw, transposed, acc_size, size, nhwc_vec, window, sms):
    """The forward / backward_input tiling of ``plan_tiles`` for geometry g (a dict, as ConvGeom)."""
    n, c, kk = g["N"], g["C"], g["kh"] * g["kw"]
    rg = 1
    if window and not nchw:
        cb = min(c, _WINDOW_CHANNELS)
        if nhwc_vec > 1 and cb >= nhwc_vec:
            cb -= cb % nhwc_vec
        bx = min(32, _pow2(g["dst_w"]))
        by = max(1, min(_pow2(_cdiv(g["dst_h"], _ROWS_PER_THREAD)), _THREADS // (cb * bx)))
        rpt = min(_ROWS_PER_THREAD, _cdiv(g["dst_h"], by))
        rg = min(max(1, 32 // (by * rpt)), _cdiv(g["dst_h"], by * rpt))
    elif nchw:
        bx = min(32, _pow2(g["dst_w"]))
        if window:
            by = min(_pow2(_cdiv(g["dst_h"], _ROWS_PER_THREAD)), _THREADS // bx)
            cb = min(c, _THREADS // (bx * by))
            rpt = min(_ROWS_PER_THREAD, _cdiv(g["dst_h"], by))
        else:
            by = min(_pow2(g["dst_h"]), _THREADS // bx)
            cb = min(c, _THREADS // (bx * by))
            full = bx * by == _THREADS and g["dst_h"] > by
            rpt = min(_ROWS_PER_THREAD, _cdiv(g["dst_h"], by)) if full else 1
    else:
        cb = min(c, 16)
        if nhwc_vec > 1 and cb >= nhwc_vec:
            cb -= cb % nhwc_vec
        bx = min(8, _pow2(g["dst_w"]))
        by = max(1, min(_pow2(g["dst_h"]), _THREADS // cb // bx))
        rpt = min(_ROWS_PER_THREAD, _cdiv(g["dst_h"], by)) if g["dst_h"] > by else 1

    def dims():
        th, tw = by * rpt * rg, bx
        if transposed:
            tile = ((th + g["kh"] - 2) // g["sh"] + 2, (tw + g["kw"] - 2) // g["sw"] + 2)
        else:
            tile = ((th - 1) * g["sh"] + g["kh"], (tw - 1) * g["sw"] + g["kw"])
        plane = tile[0] * tile[1]
        return tile, plane if nchw else plane | 1

    tile, plane = dims()
    while cb * (plane + kk) * acc_size > _SMEM_BUDGET:
        if rg > 1:
            rg -= 1
        elif rpt > 1:
            rpt -= 1
        elif cb > 1:
            cb = (cb + 1) // 2
        elif by > 1:
            by //= 2
        elif bx > 1:
            bx //= 2
        else:
            break
        tile, plane = dims()
    vec = 16 // size if nchw else (nhwc_vec if cb % nhwc_vec == 0 else 1)
    groups = _cdiv(c, cb)
    tiles = _cdiv(g["dst_w"], bx) * _cdiv(g["dst_h"], by * rpt * rg)
    want = _cdiv(_TAP_SHARE * kk * acc_size, tile[0] * tile[1] * size)
    spb = max(1, min(want, max(1, n * groups * tiles // sms), n))
    kernel = "dw_window_kernel" if window else "dw_backward_input_kernel" if transposed else "dw_forward_kernel"
    return dict(kernel=kernel, vec=vec, channels=cb, tile=(by * rpt * rg, bx), source_tile=tile, rows_per_thread=rpt,
                row_groups=rg, samples=spb, grid=(_cdiv(n, spb) * groups, tiles), block=cb * bx * by,
                smem=cb * (plane + kk) * acc_size)


def _plan_wgrad(g, nchw, acc_size, size, aligned, sms):
    """The weight-gradient tiling of ``plan_wgrad``: dy tiles, channels per block, parts over the items."""
    vv = 16 // size
    taps = g["kh"] * g["kw"] + 1
    cb = max(1, min(g["C"], 32, _THREADS // taps))
    can_vec = not nchw and g["C"] % vv == 0 and aligned
    if can_vec and cb >= vv:
        cb -= cb % vv
    min_cb = vv if can_vec and cb >= vv else 1
    th, tw = min(_WGRAD_TILE, g["dst_h"]), min(_WGRAD_TILE, g["dst_w"])

    def smem():
        tile_h, tile_w = (th - 1) * g["sh"] + g["kh"], (tw - 1) * g["sw"] + g["kw"]
        pairs = cb * taps
        return (cb * (((tile_h * tile_w) | 1) + ((th * tw) | 1)) + (_THREADS // pairs) * pairs) * acc_size

    while smem() > _SMEM_BUDGET:
        if cb > min_cb:
            cb = max(min_cb, (cb + 1) // 2)
            if min_cb > 1:
                cb -= cb % min_cb
        elif th > 1 and th >= tw:
            th = (th + 1) // 2
        elif tw > 1:
            tw = (tw + 1) // 2
        elif cb > 1:
            cb = (cb + 1) // 2
        else:
            break
    vec = vv if nchw or (can_vec and cb % vv == 0) else 1
    tiles = _cdiv(g["dst_w"], tw) * _cdiv(g["dst_h"], th)
    items = g["N"] * tiles
    groups = _cdiv(g["C"], cb)
    source = ((th - 1) * g["sh"] + g["kh"], (tw - 1) * g["sw"] + g["kw"])
    max_parts = max(1, items * (source[0] * source[1] + th * tw) * size // (_PART_SHARE * 2 * taps * acc_size))
    parts = max(1, min(_cdiv(8 * sms, groups), max_parts, items, _MAX_GRID_YZ))
    return dict(kernel="dw_backward_weight_kernel", vec=vec, channels=cb, tile=(th, tw), source_tile=source,
                items=items, parts=parts, finalize=parts > 1, grid=(groups, parts), block=_THREADS, smem=smem())


def plan(x, weight, stride, padding, dilation):
    """The launches of the CUDA kernels for this convolution (the arguments of :func:`forward`; dy is taken
    to have x's layout and alignment): ``{"forward": ..., "backward_input": ..., "backward_weight": ...}``,
    each a dict with the kernel's name, ``vec`` (elements per tile-copy access, 1: scalar), ``channels``
    per block, the output (``tile``) and source tile (with the halo), ``grid``, ``block`` and ``smem``
    (bytes); the passes add ``rows_per_thread``, ``row_groups`` (the window kernel's groups of them) and
    ``samples`` per block, the weight gradient its
    ``items`` ((sample, tile) pairs), ``parts`` and ``finalize`` (whether a second kernel adds the parts'
    partial sums; with one part the kernel writes dweight and dbias itself).
    """
    x = dense(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[2:], stride, padding
    ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    nchw = memory_format(x) == torch.contiguous_format
    size, acc_size = x.element_size(), torch.empty((), dtype=acc_dtype(x.dtype)).element_size()
    aligned = x.data_ptr() % 16 == 0
    nhwc_vec = 16 // size if not nchw and aligned and c % (16 // size) == 0 else 1
    sms = _sms(x.device)
    conf = dict(N=n, C=c, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
    fwd = dict(conf, src_h=h, src_w=w, dst_h=ho, dst_w=wo)
    bwd = dict(conf, src_h=ho, src_w=wo, dst_h=h, dst_w=w)
    window = x.dtype != torch.float64 and kh == kw and kh in (3, 5) and (sh, sw) == (1, 1)
    if window:  # backward_input: dy correlated with the flipped taps, padding K - 1 - p
        bwd.update(ph=kh - 1 - ph, pw=kw - 1 - pw)
    return {
        "forward": _plan_tiles(fwd, nchw, False, acc_size, size, nhwc_vec, window, sms),
        "backward_input": _plan_tiles(bwd, nchw, not window, acc_size, size, nhwc_vec, window, sms),
        "backward_weight": _plan_wgrad(fwd, nchw, acc_size, size, aligned, sms),
    }


def _forward_fake(x, weight, bias, stride, padding):
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    shape = (n, c, _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1]))
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


def _backward_input_fake(dy, weight, input_hw, stride, padding):
    shape = (dy.shape[0], dy.shape[1], input_hw[0], input_hw[1])
    return torch.empty(shape, dtype=dy.dtype, device=dy.device, memory_format=memory_format(dy))


def _backward_weight_fake(dy, x, kernel_hw, stride, padding):
    c = x.shape[1]
    acc = acc_dtype(x.dtype)
    return x.new_empty((c, 1, kernel_hw[0], kernel_hw[1]), dtype=acc), x.new_empty(c, dtype=acc)


_library.register_fakes(
    {
        "dwconv2d_forward": _forward_fake,
        "dwconv2d_backward_input": _backward_input_fake,
        "dwconv2d_backward_weight": _backward_weight_fake,
    }
)
