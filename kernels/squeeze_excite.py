"""Triton kernel set of :mod:`nvae_fast.ops.squeeze_excite` (contract: ``SqueezeExciteKernels`` there).

Shapes: ``x``, ``dy`` (N, C, H, W); w1 (Ch, C), b1 (Ch,) or None, w2 (C, Ch), b2 (C,) or None; ``mean``,
``gate`` (N, C) in the accumulation dtype acc (float64 for float64 x, float32 otherwise)::

    forward:  m[n, c]  = sum_{h,w} x / (H W)          reduction kernel, one read of x
              gate     = sigmoid(w2 act(w1 m + b1) + b2)   ATen, (N, C) work
              y        = x gate[n, c]                 element-wise kernel, one read, one write
    backward: dg[n, c] = sum_{h,w} dy x               reduction kernel, one read of each
              dp, dq, dm and the weight gradients     ATen, (N, C) work
              dx       = dy gate[n, c] + dm[n, c] / (H W)   element-wise kernel, one read, one write

The two reductions share one kernel per layout (``PRODUCT`` multiplies in ``dy``, ``MEAN`` divides by
H*W) and the two element-wise passes share another (``HAS_SHIFT`` adds ``dm / (H W)``). Layouts:
NCHW-contiguous and channels_last tensors are read in place (see :mod:`._host`); any other strides
are copied to NCHW first, and ``dy`` is copied to ``x``'s layout in ``backward`` when it differs.
Outputs have the (dense) layout of their tensor input. When there are too few (n, c) outputs to fill the
GPU, the H*W axis is split too: each program writes a partial result and ``torch.sum`` adds the
partials in a fixed order, so results are bit-identical from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype

from . import _host
from ._aot import aot_spec, ones, ptr

__all__ = ["supports", "plan", "forward", "backward", "aot_specs"]

MAX_COLS_NCHW = 1024  # widest tile along H*W
MAX_COLS_NHWC = 128  # widest tile along C


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _term(x_ptr, y_ptr, offs, mask, PRODUCT: tl.constexpr, ACC: tl.constexpr):
    """x (times y with PRODUCT) at ``offs`` in ACC, 0 outside ``mask``."""
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    if PRODUCT:
        v = v * tl.load(y_ptr + offs, mask=mask, other=0).to(ACC)
    return v


@triton.jit
def _store_total(out_ptrs, acc, mask, HW, AXIS: tl.constexpr, MEAN: tl.constexpr):
    """Store the sums of ``acc`` along its pixel axis AXIS, divided by HW with MEAN."""
    total = tl.sum(acc, AXIS)
    if MEAN:
        total = total / HW
    tl.store(out_ptrs, total, mask=mask)


@triton.jit
def _se_reduce_nchw_kernel(
    x_ptr, y_ptr, out_ptr, ROWS, HW, SPLIT,
    PRODUCT: tl.constexpr, MEAN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(ROWS, BLOCK_R), SPLIT) over the (ROWS = N*C) x HW matrix. Program (i, s) sums the
    column blocks s, s + SPLIT, ... of its rows and stores out[s, row]."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    s = tl.program_id(1)
    rmask = r < ROWS
    cols = tl.arange(0, BLOCK_HW)
    acc = tl.zeros((BLOCK_R, BLOCK_HW), ACC)
    for t in range(s, tl.cdiv(HW, BLOCK_HW), SPLIT):
        q = t * BLOCK_HW + cols
        mask = rmask[:, None] & (q < HW)[None, :]
        acc += _term(x_ptr, y_ptr, r[:, None] * HW + q[None, :], mask, PRODUCT, ACC)
    _store_total(out_ptr + s * ROWS + r, acc, rmask, HW, 1, MEAN)


@triton.jit
def _se_reduce_nhwc_kernel(
    x_ptr, y_ptr, out_ptr, NC, HW, C, SPLIT,
    PRODUCT: tl.constexpr, MEAN: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (N * cdiv(C, BLOCK_C), SPLIT); sample n's values form an HW x C matrix. Program (i, s) sums
    the row blocks s, s + SPLIT, ... of its channel block and stores out[s, n, c] (NC = N*C)."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // c_blocks
    cols = (tl.program_id(0) - n * c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1)
    cmask = cols < C
    rows = tl.arange(0, BLOCK_HW)
    base = n * HW * C
    acc = tl.zeros((BLOCK_HW, BLOCK_C), ACC)
    for t in range(s, tl.cdiv(HW, BLOCK_HW), SPLIT):
        h = t * BLOCK_HW + rows
        mask = (h < HW)[:, None] & cmask[None, :]
        acc += _term(x_ptr, y_ptr, base + h[:, None] * C + cols[None, :], mask, PRODUCT, ACC)
    _store_total(out_ptr + s * NC + n * C + cols, acc, cmask, HW, 0, MEAN)


@triton.jit
def _se_apply_nchw_kernel(
    x_ptr, gate_ptr, shift_ptr, out_ptr, ROWS, HW,
    HAS_SHIFT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(ROWS, BLOCK_R), cdiv(HW, BLOCK_HW)) over the (N*C) x HW matrix; row r = n C + c.
    out = x gate[r] (+ shift[r] / HW)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    q = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    rmask = r < ROWS
    mask = rmask[:, None] & (q < HW)[None, :]
    offs = r[:, None] * HW + q[None, :]
    g = tl.load(gate_ptr + r, mask=rmask, other=0).to(ACC)
    out = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC) * g[:, None]
    if HAS_SHIFT:
        out += (tl.load(shift_ptr + r, mask=rmask, other=0).to(ACC) / HW)[:, None]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _se_apply_nhwc_kernel(
    x_ptr, gate_ptr, shift_ptr, out_ptr, HW, C,
    HAS_SHIFT: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (N * cdiv(HW, BLOCK_HW), cdiv(C, BLOCK_C)); sample n's values form an HW x C matrix.
    out = x gate[n, c] (+ shift[n, c] / HW)."""
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    n = tl.program_id(0) // hw_blocks
    h = (tl.program_id(0) - n * hw_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (h < HW)[:, None] & cmask[None, :]
    offs = n * HW * C + h[:, None] * C + cols[None, :]
    g = tl.load(gate_ptr + n * C + cols, mask=cmask, other=0).to(ACC)
    out = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC) * g[None, :]
    if HAS_SHIFT:
        out += (tl.load(shift_ptr + n * C + cols, mask=cmask, other=0).to(ACC) / HW)[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------ host wrappers


def supports(x):
    """``None`` when the kernels can run ``x``, else the reason (its size beyond int32 indexing)."""
    return _host.too_large(x)


def _reduce_plan(x, layout):
    """Tile, grid and split of the reductions over H*W: (block_a, block_b, programs, split)."""
    n, c, h, w = x.shape
    if layout == _host.NCHW:
        block_a, block_b = _host.tile(n * c, h * w, MAX_COLS_NCHW)  # rows (n, c) x pixels
        programs, chunks = triton.cdiv(n * c, block_a), triton.cdiv(h * w, block_b)
    else:
        block_a, block_b = _host.tile(h * w, c, MAX_COLS_NHWC)  # pixels x channels
        programs, chunks = n * triton.cdiv(c, block_b), triton.cdiv(h * w, block_a)
    return block_a, block_b, programs, _host.split(x.device, programs, chunks)


def _reduce(x, y, layout, mean):
    """sum_{h,w} x (y) [/ HW] as (N, C) in the acc dtype; ``x`` (and ``y``) dense in ``layout``."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    if x.numel() == 0:
        return torch.zeros((n, c), dtype=acc, device=x.device)
    product = y is not None
    block_a, block_b, programs, split = _reduce_plan(x, layout)
    part = torch.empty((split, n, c), dtype=acc, device=x.device)
    flags = {"PRODUCT": product, "MEAN": mean, "ACC": _host.tl_acc(x.dtype)}
    flags["num_warps"] = _host.num_warps(block_a * block_b)
    if layout == _host.NCHW:
        _se_reduce_nchw_kernel[(programs, split)](
            x, y if product else x, part, n * c, h * w, split, BLOCK_R=block_a, BLOCK_HW=block_b, **flags
        )
    else:
        _se_reduce_nhwc_kernel[(programs, split)](
            x, y if product else x, part, n * c, h * w, c, split, BLOCK_HW=block_a, BLOCK_C=block_b, **flags
        )
    return part[0] if split == 1 else part.sum(dim=0)


def _apply(x, gate, shift, hw):
    """x gate[n, c] (+ shift[n, c] / hw) like ``x`` (dtype and dense layout)."""
    x, layout = _host.dense(x)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    n, c, h, w = x.shape
    has_shift = shift is not None
    gate = gate.contiguous()
    shift = shift.contiguous() if has_shift else gate
    flags = {"HAS_SHIFT": has_shift, "ACC": _host.tl_acc(x.dtype)}
    if layout == _host.NCHW:
        block_r, block_hw = _host.tile(n * c, h * w, MAX_COLS_NCHW)
        grid = (triton.cdiv(n * c, block_r), triton.cdiv(h * w, block_hw))
        _se_apply_nchw_kernel[grid](
            x, gate, shift, out, n * c, hw,
            BLOCK_R=block_r, BLOCK_HW=block_hw, num_warps=_host.num_warps(block_r * block_hw), **flags,
        )
    else:
        block_hw, block_c = _host.tile(h * w, c, MAX_COLS_NHWC)
        grid = (n * triton.cdiv(h * w, block_hw), triton.cdiv(c, block_c))
        _se_apply_nhwc_kernel[grid](
            x, gate, shift, out, hw, c,
            BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=_host.num_warps(block_hw * block_c), **flags,
        )
    return out


def _mlp(m, w1, b1, w2, b2, activation):
    """The gate MLP of one (N, C) mean ``m`` in its dtype: ``(q, a, gate)``."""
    acc = m.dtype
    q = torch.nn.functional.linear(m, w1.to(acc), None if b1 is None else b1.to(acc))
    a = torch.relu(q) if activation == "relu" else torch.nn.functional.silu(q)
    return q, a, torch.sigmoid(torch.nn.functional.linear(a, w2.to(acc), None if b2 is None else b2.to(acc)))


def plan(x):
    """The reduction plan for ``x``: tile, grid and split of the pooling and dy x sums."""
    x, layout = _host.dense(x)
    block_a, block_b, programs, split = _reduce_plan(x, layout)
    return {"layout": "nchw" if layout == _host.NCHW else "nhwc", "tile": (block_a, block_b), "programs": programs,
            "split": split}


def forward(x, w1, b1, w2, b2, activation):
    """``(y, mean, gate)``: y like x; mean, gate (N, C) in the acc dtype. The (N, C) gate MLP runs in ATen."""
    xd, layout = _host.dense(x)
    m = _reduce(xd, None, layout, mean=True)
    _, _, g = _mlp(m, w1, b1, w2, b2, activation)
    return _apply(x, g, None, x.shape[2] * x.shape[3]), m, g


def backward(dy, x, mean, gate, w1, b1, w2, b2, activation):
    """``(dx, dw1, db1, dw2, db2)`` (db None where the bias is None); the MLP backward runs in ATen."""
    xd, layout = _host.dense(x)
    dyd, _ = _host.dense(dy, layout)
    dg = _reduce(xd, dyd, layout, mean=False)
    q, a, _ = _mlp(mean, w1, b1, w2, b2, activation)
    dp = dg * gate * (1 - gate)
    da = dp @ w2.to(dp.dtype)
    if activation == "relu":
        dq = da * (q > 0).to(q.dtype)
    else:
        s = torch.sigmoid(q)
        dq = da * s * (1 + q * (1 - s))
    dm = dq @ w1.to(dq.dtype)
    dx = _apply(dy, gate, dm, x.shape[2] * x.shape[3])
    return (
        dx, (dq.t() @ mean).to(w1.dtype), None if b1 is None else dq.sum(0).to(b1.dtype),
        (dp.t() @ a).to(w2.dtype), None if b2 is None else dp.sum(0).to(b2.dtype),
    )


# ------------------------------------------------------------------------ ahead-of-time compile specs


def aot_specs():
    """Both kernels of each layout for every x dtype, with and without their flag, one full-size tile;
    for float32 also with the integer arguments the JIT may specialise to 1 (see :func:`._aot.ones`)."""
    specs = []
    warps = _host.num_warps(_host.TILE_ELEMS)
    for xdt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        acc = acc_dtype(xdt)
        x, a = ptr(xdt), ptr(acc)
        tacc = {"ACC": _host.TL_DTYPES[acc]}
        jobs = []
        for product, mean in ((False, True), (True, False)):
            flags = {"PRODUCT": product, "MEAN": mean, **tacc}
            jobs.append((_se_reduce_nchw_kernel, {
                "x_ptr": x, "y_ptr": x, "out_ptr": a, "ROWS": "i32", "HW": "i32", "SPLIT": "i32",
                "BLOCK_R": 4, "BLOCK_HW": 1024, **flags}))
            jobs.append((_se_reduce_nhwc_kernel, {
                "x_ptr": x, "y_ptr": x, "out_ptr": a, "NC": "i32", "HW": "i32", "C": "i32", "SPLIT": "i32",
                "BLOCK_HW": 32, "BLOCK_C": 128, **flags}))
        for has_shift in (False, True):
            flags = {"HAS_SHIFT": has_shift, **tacc}
            jobs.append((_se_apply_nchw_kernel, {
                "x_ptr": x, "gate_ptr": a, "shift_ptr": a, "out_ptr": x, "ROWS": "i32", "HW": "i32",
                "BLOCK_R": 4, "BLOCK_HW": 1024, **flags}))
            jobs.append((_se_apply_nhwc_kernel, {
                "x_ptr": x, "gate_ptr": a, "shift_ptr": a, "out_ptr": x, "HW": "i32", "C": "i32",
                "BLOCK_HW": 32, "BLOCK_C": 128, **flags}))
        if xdt == torch.float32:
            jobs += [(fn, ones(args, "SPLIT")) for fn, args in jobs if "SPLIT" in args] + [
                (fn, ones(args)) for fn, args in jobs]
        specs += [aot_spec(fn, args, warps) for fn, args in jobs]
    return specs
