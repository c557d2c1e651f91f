"""Triton kernel set of :mod:`nvae_fast.ops.squeeze_excite` (contract: ``SqueezeExciteKernels`` there).

Shapes: ``x``, ``dy`` (N, C, H, W); w1 (Ch, C), b1 (Ch,) or None, w2 (C, Ch), b2 (C,) or None; ``mean``,
``gate`` (N, C) in the accumulation dtype acc (float64 for float64 x, float32 otherwise)::

    forward:  one launch: split sums of x over H*W into part[s, n, c]; the last program of the grid
              (an atomic ticket) adds the parts in order, m = sum / (H W), and runs the gate MLP
              a = act(w1 m + b1), gate = sigmoid(w2 a + b2) for every sample;
              then y = x gate[n, c] (element-wise kernel, one read, one write).
    backward: one launch: split sums of dy x; the last program forms dp = dg g (1 - g), a, dq, dm and
              the weight gradients (sums over the samples in order);
              then dx = dy gate[n, c] + dm[n, c] / (H W) (element-wise kernel).

The reductions share one kernel per layout (``BACKWARD`` multiplies in ``dy`` and runs the MLP backward)
and the two element-wise passes share another (``HAS_SHIFT`` adds ``dm / (H W)``). Layouts:
NCHW-contiguous and channels_last tensors are read in place (see :mod:`._host`); any other strides
are copied to NCHW first, and ``dy`` is copied to ``x``'s layout in ``backward`` when it differs.
Outputs have the (dense) layout of their tensor input. When there are too few (n, c) outputs to fill the
GPU, the H*W axis is split too: each program writes a partial result and the last program adds the
partials in a fixed order, so results are bit-identical from run to run. The ticket is an int32 of
:func:`._host.ticket_counters`, which the last program zeroes again. The element-wise pass runs the
samples last to first: the reduction read them first to last, so the samples it read last, still in L2
when the inputs are larger than it, are the ones read again first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype

from . import _host, _tickets
from ._aot import aot_spec, ones, ptr

__all__ = ["supports", "plan", "forward", "backward", "aot_specs"]

MAX_COLS_NCHW = 1024  # widest tile along H*W
MAX_COLS_NHWC = 128  # widest tile along C
MLP_BLOCK_C, MLP_BLOCK_J = 128, 16  # tile of the gate MLP (channels x hidden units) in the last program


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _term(x_ptr, y_ptr, offs, mask, PRODUCT: tl.constexpr, ACC: tl.constexpr):
    """x (times y with PRODUCT) at ``offs`` in ACC, 0 outside ``mask``."""
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    if PRODUCT:
        v = v * tl.load(y_ptr + offs, mask=mask, other=0).to(ACC)
    return v


@triton.jit
def _act(q, SILU: tl.constexpr):
    """act(q): silu with SILU, else relu."""
    if SILU:
        return q / (1 + tl.exp(-q))
    return tl.maximum(q, 0)


@triton.jit
def _act_grad(q, SILU: tl.constexpr):
    """act'(q): s (1 + q (1 - s)) with s = sigmoid(q) for silu, [q > 0] for relu."""
    if SILU:
        s = 1 / (1 + tl.exp(-q))
        return s * (1 + q * (1 - s))
    return tl.where(q > 0, 1.0, 0.0).to(q.dtype)


@triton.jit
def _last_program(ticket_ptr):
    """True in the program that takes the last ticket of the (1-D) grid (:func:`._tickets.is_last`). That
    program also puts the ticket back to zero for the next launch."""
    last = _tickets.is_last(ticket_ptr, tl.num_programs(0))
    if last:
        tl.store(ticket_ptr, 0)
    tl.debug_barrier()
    return last


@triton.jit
def _sum_parts(part_ptr, i, mask, PLANE, SPLIT, ACC: tl.constexpr):
    """sum_p part[p, i] over the SPLIT planes of PLANE values each, in plane order (0 where not ``mask``)."""
    total = tl.zeros(i.shape, ACC)
    for p in range(0, SPLIT):
        total += tl.load(part_ptr + p * PLANE + i, mask=mask, other=0)
    return total


@triton.jit
def _matvec(w_ptr, row_stride, col_stride, x_ptr, rows, rmask, COLS, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum_k W[r, k] x[k] for the rows ``rows`` (where ``rmask``) of a COLS-column matrix W with element
    (r, k) at ``w_ptr + r row_stride + k col_stride``; x: COLS values; BLOCK_K columns at a time."""
    ks = tl.arange(0, BLOCK_K)
    out = tl.zeros(rows.shape, ACC)
    for k0 in range(0, COLS, BLOCK_K):
        k = k0 + ks
        km = k < COLS
        w = tl.load(w_ptr + rows[:, None] * row_stride + k[None, :] * col_stride, mask=rmask[:, None] & km[None, :],
                    other=0).to(ACC)
        out += tl.sum(w * tl.load(x_ptr + k, mask=km, other=0)[None, :], 1)
    return out


@triton.jit
def _se_gate(
    part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, a_ptr, N, C, CH, HW, SPLIT,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr,
    ACC: tl.constexpr,
):
    """mean = sum_s part[s] / HW, a = act(w1 mean + b1) into a_ptr, gate = sigmoid(w2 a + b2); all (N, .)."""
    cs = tl.arange(0, BLOCK_C)
    js = tl.arange(0, BLOCK_J)
    for i0 in range(0, N * C, BLOCK_C):
        i = i0 + cs
        mask = i < N * C
        tl.store(mean_ptr + i, _sum_parts(part_ptr, i, mask, N * C, SPLIT, ACC) / HW, mask=mask)
    tl.debug_barrier()
    for n in range(0, N):
        for j0 in range(0, CH, BLOCK_J):
            j = j0 + js
            jm = j < CH
            q = _matvec(w1_ptr, C, 1, mean_ptr + n * C, j, jm, C, ACC, BLOCK_C)
            if HAS_B1:
                q += tl.load(b1_ptr + j, mask=jm, other=0).to(ACC)
            tl.store(a_ptr + n * CH + j, _act(q, SILU), mask=jm)
    tl.debug_barrier()
    for n in range(0, N):
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            cm = c < C
            z = _matvec(w2_ptr, CH, 1, a_ptr + n * CH, c, cm, CH, ACC, BLOCK_J)
            if HAS_B2:
                z += tl.load(b2_ptr + c, mask=cm, other=0).to(ACC)
            tl.store(gate_ptr + n * C + c, 1 / (1 + tl.exp(-z)), mask=cm)


@triton.jit
def _se_gate_backward(
    part_ptr, w1_ptr, b1_ptr, w2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr, dm_ptr,
    dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, SPLIT,
    HAS_B1: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr,
):
    """From part[s] (sums of dy x): dp = dg g (1 - g), a and dq = (dp w2) act'(q), dm = dq w1 (all (N, .)),
    then dw1 = dq^T mean, db1 = sum_n dq, dw2 = dp^T a, db2 = sum_n dp, sums in sample order."""
    cs = tl.arange(0, BLOCK_C)
    js = tl.arange(0, BLOCK_J)
    for i0 in range(0, N * C, BLOCK_C):
        i = i0 + cs
        mask = i < N * C
        dg = _sum_parts(part_ptr, i, mask, N * C, SPLIT, ACC)
        g = tl.load(gate_ptr + i, mask=mask, other=0)
        tl.store(dp_ptr + i, dg * g * (1 - g), mask=mask)
    tl.debug_barrier()
    for n in range(0, N):
        for j0 in range(0, CH, BLOCK_J):
            j = j0 + js
            jm = j < CH
            q = _matvec(w1_ptr, C, 1, mean_ptr + n * C, j, jm, C, ACC, BLOCK_C)
            da = _matvec(w2_ptr, 1, CH, dp_ptr + n * C, j, jm, C, ACC, BLOCK_C)  # (dp w2)[j]
            if HAS_B1:
                q += tl.load(b1_ptr + j, mask=jm, other=0).to(ACC)
            tl.store(a_ptr + n * CH + j, _act(q, SILU), mask=jm)
            tl.store(dq_ptr + n * CH + j, da * _act_grad(q, SILU), mask=jm)
    tl.debug_barrier()
    for n in range(0, N):
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            cm = c < C
            dm = _matvec(w1_ptr, 1, C, dq_ptr + n * CH, c, cm, CH, ACC, BLOCK_J)  # (dq w1)[c]
            tl.store(dm_ptr + n * C + c, dm, mask=cm)
    for j0 in range(0, CH, BLOCK_J):
        j = j0 + js
        jm = j < CH
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            cm = c < C
            dw1 = tl.zeros((BLOCK_J, BLOCK_C), ACC)
            dw2 = tl.zeros((BLOCK_J, BLOCK_C), ACC)  # transposed: [j, c] holds dw2[c, j]
            for n in range(0, N):
                dq = tl.load(dq_ptr + n * CH + j, mask=jm, other=0)
                a = tl.load(a_ptr + n * CH + j, mask=jm, other=0)
                dw1 += dq[:, None] * tl.load(mean_ptr + n * C + c, mask=cm, other=0)[None, :]
                dw2 += a[:, None] * tl.load(dp_ptr + n * C + c, mask=cm, other=0)[None, :]
            wm = jm[:, None] & cm[None, :]
            tl.store(dw1_ptr + j[:, None] * C + c[None, :], dw1.to(dw1_ptr.dtype.element_ty), mask=wm)
            tl.store(dw2_ptr + c[None, :] * CH + j[:, None], dw2.to(dw2_ptr.dtype.element_ty), mask=wm)
        db1 = tl.zeros((BLOCK_J,), ACC)
        for n in range(0, N):
            db1 += tl.load(dq_ptr + n * CH + j, mask=jm, other=0)
        tl.store(db1_ptr + j, db1.to(db1_ptr.dtype.element_ty), mask=jm)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cs
        cm = c < C
        db2 = tl.zeros((BLOCK_C,), ACC)
        for n in range(0, N):
            db2 += tl.load(dp_ptr + n * C + c, mask=cm, other=0)
        tl.store(db2_ptr + c, db2.to(db2_ptr.dtype.element_ty), mask=cm)


@triton.jit
def _se_epilogue(
    part_ptr, ticket_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr, dm_ptr,
    dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, HW, SPLIT,
    BACKWARD: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr,
):
    """The last program of the grid runs the gate MLP (forward) or its backward (BACKWARD)."""
    if _last_program(ticket_ptr):
        if BACKWARD:
            _se_gate_backward(
                part_ptr, w1_ptr, b1_ptr, w2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr, dm_ptr,
                dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, SPLIT, HAS_B1, SILU, BLOCK_C, BLOCK_J, ACC,
            )
        else:
            _se_gate(part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, a_ptr, N, C, CH, HW, SPLIT,
                     HAS_B1, HAS_B2, SILU, BLOCK_C, BLOCK_J, ACC)


@triton.jit
def _se_reduce_nchw_kernel(
    x_ptr, y_ptr, part_ptr, ticket_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr,
    dm_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, HW, SPLIT,
    BACKWARD: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr,
):
    """Grid cdiv(N*C, BLOCK_R) * SPLIT over the (N*C) x HW matrix, program i * SPLIT + s (rows in order,
    so samples in order). Program (i, s) sums x (BACKWARD: dy x, y_ptr = dy) over the column blocks s,
    s + SPLIT, ... of its rows into part[s, row]; the last program then runs :func:`_se_epilogue`."""
    rows = N * C
    r = (tl.program_id(0) // SPLIT) * BLOCK_R + tl.arange(0, BLOCK_R)
    s = tl.program_id(0) % SPLIT
    rmask = r < rows
    cols = tl.arange(0, BLOCK_HW)
    acc = tl.zeros((BLOCK_R, BLOCK_HW), ACC)
    for t in range(s, tl.cdiv(HW, BLOCK_HW), SPLIT):
        q = t * BLOCK_HW + cols
        mask = rmask[:, None] & (q < HW)[None, :]
        acc += _term(x_ptr, y_ptr, r[:, None] * HW + q[None, :], mask, BACKWARD, ACC)
    tl.store(part_ptr + s * rows + r, tl.sum(acc, 1), mask=rmask)
    _se_epilogue(
        part_ptr, ticket_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr, dm_ptr,
        dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, HW, SPLIT, BACKWARD, HAS_B1, HAS_B2, SILU, BLOCK_C, BLOCK_J, ACC,
    )


@triton.jit
def _se_reduce_nhwc_kernel(
    x_ptr, y_ptr, part_ptr, ticket_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr,
    dm_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, HW, SPLIT,
    BACKWARD: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_CT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr,
):
    """Grid N * cdiv(C, BLOCK_CT) * SPLIT, program i * SPLIT + s (samples in order); sample n's values form
    an HW x C matrix. Program (i, s) sums the row blocks s, s + SPLIT, ... of its channel block into
    part[s, n, c]; the last program then runs :func:`_se_epilogue`."""
    c_blocks = tl.cdiv(C, BLOCK_CT)
    i = tl.program_id(0) // SPLIT
    n = i // c_blocks
    cols = (i - n * c_blocks) * BLOCK_CT + tl.arange(0, BLOCK_CT)
    s = tl.program_id(0) % SPLIT
    cmask = cols < C
    rows = tl.arange(0, BLOCK_HW)
    base = n * HW * C
    acc = tl.zeros((BLOCK_HW, BLOCK_CT), ACC)
    for t in range(s, tl.cdiv(HW, BLOCK_HW), SPLIT):
        h = t * BLOCK_HW + rows
        mask = (h < HW)[:, None] & cmask[None, :]
        acc += _term(x_ptr, y_ptr, base + h[:, None] * C + cols[None, :], mask, BACKWARD, ACC)
    tl.store(part_ptr + s * N * C + n * C + cols, tl.sum(acc, 0), mask=cmask)
    _se_epilogue(
        part_ptr, ticket_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mean_ptr, gate_ptr, dp_ptr, dq_ptr, a_ptr, dm_ptr,
        dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH, HW, SPLIT, BACKWARD, HAS_B1, HAS_B2, SILU, BLOCK_C, BLOCK_J, ACC,
    )


@triton.jit
def _se_apply_nchw_kernel(
    x_ptr, gate_ptr, shift_ptr, out_ptr, ROWS, HW,
    HAS_SHIFT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid cdiv(ROWS, BLOCK_R) * cdiv(HW, BLOCK_HW) over the (N*C) x HW matrix; row r = n C + c.
    out = x gate[r] (+ shift[r] / HW). Row blocks run last to first: the reduction read the last samples
    most recently, so the first programs here find them in L2."""
    col_blocks = tl.cdiv(HW, BLOCK_HW)
    i = tl.cdiv(ROWS, BLOCK_R) - 1 - tl.program_id(0) // col_blocks
    r = i * BLOCK_R + tl.arange(0, BLOCK_R)
    q = (tl.program_id(0) % col_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)
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
    """Grid N * cdiv(HW, BLOCK_HW) * cdiv(C, BLOCK_C); sample n's values form an HW x C matrix.
    out = x gate[n, c] (+ shift[n, c] / HW). Samples run last to first, as :func:`_se_apply_nchw_kernel`'s."""
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    c_blocks = tl.cdiv(C, BLOCK_C)
    i = tl.num_programs(0) // c_blocks - 1 - tl.program_id(0) // c_blocks
    n = i // hw_blocks
    h = (i - n * hw_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cols = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
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


def _reduce(x, dy, layout, w1, b1, w2, b2, activation, mean=None, gate=None):
    """One launch: the split sums of x (forward) or dy x (backward, ``mean`` and ``gate`` given) and the
    gate MLP or its backward in the last program. ``x`` (and ``dy``) dense in ``layout``.

    Forward returns ``(mean, gate)``; backward ``(dm, dw1, db1, dw2, db2)`` (db in the weight's dtype
    even when the bias is None)."""
    n, c, h, w = x.shape
    hidden = w1.shape[0]
    acc = acc_dtype(x.dtype)
    backward = mean is not None
    if n * c == 0:  # no program to run: empty statistics, zero weight gradients
        stats = torch.zeros((n, c), dtype=acc, device=x.device)
        if not backward:
            return stats, stats.clone()
        zeros = [torch.zeros_like(t) for t in (w1, w2)]
        return (stats, zeros[0], w1.new_zeros((hidden,)) if b1 is None else torch.zeros_like(b1), zeros[1],
                w2.new_zeros((c,)) if b2 is None else torch.zeros_like(b2))
    block_a, block_b, programs, split = _reduce_plan(x, layout)
    part = torch.empty((split, n, c), dtype=acc, device=x.device)
    w1, w2 = w1.contiguous(), w2.contiguous()
    b1_arg = w1 if b1 is None else b1.contiguous()
    b2_arg = w2 if b2 is None else b2.contiguous()
    a = torch.empty((n, hidden), dtype=acc, device=x.device)
    if backward:
        dp, dm, dq = torch.empty((n, c), dtype=acc, device=x.device), torch.empty_like(mean), torch.empty_like(a)
        dw1, dw2 = torch.empty_like(w1), torch.empty_like(w2)
        db1 = torch.empty((hidden,), dtype=w1.dtype if b1 is None else b1.dtype, device=x.device)
        db2 = torch.empty((c,), dtype=w2.dtype if b2 is None else b2.dtype, device=x.device)
        outs = (dm, dw1, db1, dw2, db2)
    else:
        mean, gate = torch.empty((n, c), dtype=acc, device=x.device), torch.empty((n, c), dtype=acc, device=x.device)
        dp = dm = dq = dw1 = db1 = dw2 = db2 = mean  # not written in the forward
        outs = (mean, gate)
    flags = {
        "BACKWARD": backward, "HAS_B1": b1 is not None, "HAS_B2": b2 is not None, "SILU": activation == "silu",
        "BLOCK_C": MLP_BLOCK_C, "BLOCK_J": MLP_BLOCK_J, "ACC": _host.tl_acc(x.dtype),
        "num_warps": _host.num_warps(block_a * block_b),
    }
    args = (x, dy if backward else x, part, w1, b1_arg, w2, b2_arg, mean, gate, dp, dq, a, dm,
            dw1, db1, dw2, db2, n, c, hidden, h * w, split)
    with _host.ticket_counters(x.device, 1) as ticket:
        args = args[:3] + (ticket,) + args[3:]
        if layout == _host.NCHW:
            _se_reduce_nchw_kernel[(programs * split,)](*args, BLOCK_R=block_a, BLOCK_HW=block_b, **flags)
        else:
            _se_reduce_nhwc_kernel[(programs * split,)](*args, BLOCK_HW=block_a, BLOCK_CT=block_b, **flags)
    return outs


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
        grid = (triton.cdiv(n * c, block_r) * triton.cdiv(h * w, block_hw),)
        _se_apply_nchw_kernel[grid](
            x, gate, shift, out, n * c, hw,
            BLOCK_R=block_r, BLOCK_HW=block_hw, num_warps=_host.num_warps(block_r * block_hw), **flags,
        )
    else:
        block_hw, block_c = _host.tile(h * w, c, MAX_COLS_NHWC)
        grid = (n * triton.cdiv(h * w, block_hw) * triton.cdiv(c, block_c),)
        _se_apply_nhwc_kernel[grid](
            x, gate, shift, out, hw, c,
            BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=_host.num_warps(block_hw * block_c), **flags,
        )
    return out


def plan(x):
    """The reduction plan for ``x``: tile, grid and split of the pooling and dy x sums."""
    x, layout = _host.dense(x)
    block_a, block_b, programs, split = _reduce_plan(x, layout)
    return {"layout": "nchw" if layout == _host.NCHW else "nhwc", "tile": (block_a, block_b), "programs": programs,
            "split": split}


def forward(x, w1, b1, w2, b2, activation):
    """``(y, mean, gate)``: y like x; mean, gate (N, C) in the acc dtype. Two launches."""
    xd, layout = _host.dense(x)
    mean, gate = _reduce(xd, None, layout, w1, b1, w2, b2, activation)
    return _apply(xd, gate, None, x.shape[2] * x.shape[3]), mean, gate


def backward(dy, x, mean, gate, w1, b1, w2, b2, activation):
    """``(dx, dw1, db1, dw2, db2)`` (db None where the bias is None); two launches."""
    xd, layout = _host.dense(x)
    dyd, _ = _host.dense(dy, layout)
    dm, dw1, db1, dw2, db2 = _reduce(
        xd, dyd, layout, w1, b1, w2, b2, activation, mean.to(acc_dtype(x.dtype)).contiguous(), gate.contiguous()
    )
    dx = _apply(dyd, gate, dm, x.shape[2] * x.shape[3])
    return dx, dw1, None if b1 is None else db1, dw2, None if b2 is None else db2


# ------------------------------------------------------------------------ ahead-of-time compile specs


def aot_specs():
    """Both kernels of each layout for every x dtype (weights in the accumulation dtype), forward and
    backward, relu with biases and silu without, one full-size tile; for float32 also with the integer
    arguments the JIT may specialise to 1 (see :func:`._aot.ones`)."""
    specs = []
    warps = _host.num_warps(_host.TILE_ELEMS)
    for xdt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        acc = acc_dtype(xdt)
        x, a = ptr(xdt), ptr(acc)
        tacc = {"ACC": _host.TL_DTYPES[acc]}
        jobs = []
        for backward, bias, silu in ((False, True, False), (False, False, True), (True, True, False), (True, False, True)):
            args = {
                "x_ptr": x, "y_ptr": x, "part_ptr": a, "ticket_ptr": "*i32", "w1_ptr": a, "b1_ptr": a, "w2_ptr": a,
                "b2_ptr": a, "mean_ptr": a, "gate_ptr": a, "dp_ptr": a, "dq_ptr": a, "a_ptr": a, "dm_ptr": a,
                "dw1_ptr": a, "db1_ptr": a, "dw2_ptr": a, "db2_ptr": a, "N": "i32", "C": "i32", "CH": "i32",
                "HW": "i32", "SPLIT": "i32", "BACKWARD": backward, "HAS_B1": bias, "HAS_B2": bias, "SILU": silu,
                "BLOCK_C": MLP_BLOCK_C, "BLOCK_J": MLP_BLOCK_J, **tacc,
            }
            jobs.append((_se_reduce_nchw_kernel, {**args, "BLOCK_R": 4, "BLOCK_HW": 1024}))
            jobs.append((_se_reduce_nhwc_kernel, {**args, "BLOCK_HW": 32, "BLOCK_CT": 128}))
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
