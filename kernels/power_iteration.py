"""Triton kernel set of :mod:`nvae_fast.ops.power_iteration` (contract: ``PowerIterationKernels`` there).

For every weight matrix W_i (out_i, rest_i) with vectors u_i (out_i,) and v_i (rest_i,), one step is

    t_i = W_i^T u_i,   v_i = t_i / max(||t_i||, eps),   s_i = W_i v_i,   u_i = s_i / max(||s_i||, eps)

and ``sigmas`` returns sigma_i = u_i^T W_i v_i. Accumulation is float32 (float64 when every weight is
float64), whatever the storage dtypes; the iterates live in float32 (float64) work buffers and only the
final u_i, v_i are rounded to the dtypes of the caller's tensors.

Ragged batching. All weights of one call are processed together, whatever their shapes: device tables
hold, per weight, the addresses of W_i, u_i and v_i (the kernels read W_i and read/write u_i, v_i in place,
through their strides: nothing is packed or copied back), the shape, the strides and offsets into flat work
buffers. Two schedules share these tables:

* small weights (at most :data:`PERSISTENT_MAX` elements): one program per weight runs all ``n_iter``
  steps, streaming W_i tile by tile (after the first step from L1/L2), with a block barrier between the
  half-steps. All of them together take a single launch per call.
* large weights are cut into *items*: row blocks of BLOCK_R rows and column blocks of BLOCK_K columns of
  every weight, listed in two item tables. A step is three phases: every row item writes its rows' share
  of W^T u for all columns (partials), every column item adds its columns' partials in a fixed order
  into t (times 1 / max(||s||, eps), the norm from per-item partial squared norms added in a fixed order;
  the first step reads the caller's u_i as given) and writes one partial squared norm, every row item
  computes s = W (t / max(||t||, eps)) for its rows and one partial squared norm; a last pass of items
  writes the normalised u_i, v_i into the caller's tensors. All of it is one launch
  (:func:`_steps_kernel`) whose programs take tickets (:mod:`._tickets`) over runs of weights that take
  at most half the L2: per run, every item of a phase, waiting for the run's items of the phase before;
  the run's weights are read from DRAM by its first phase and from L2 by the other 2 n_iter - 1 reads
  (the schedule: :meth:`_Group.schedule`).

``sigmas`` takes two launches (per-row-block partial sums, then a fixed-order sum per weight). The op's
``forward`` with ``n_iter >= 1`` needs neither: the last half-step's s_i = W_i v_i gives u_i =
s_i / max(||s_i||, eps), hence sigma_i = u_i^T W_i v_i = ||s_i||^2 / max(||s_i||, eps), which the kernels
that normalise u_i write (``SIGMA``): no further read of W. The
backward, dW_i = g_i u_i v_i^T, is one launch over tiles of every weight (:func:`_outer_kernel`), its tile
table cached by the weights' shapes and dtypes. Weights
whose storage dtypes (of W, u, v) differ get launches per dtype combination. No atomics anywhere: results
are bit-identical from run to run. W_i with non-contiguous rows (column stride != 1) are read from a
contiguous copy; any other strides are read in place. The device tables are cached across calls, keyed by
the tensors' addresses, shapes, strides and dtypes (see ``_groups``).
"""

from __future__ import annotations

import math
from itertools import compress, repeat
from operator import and_, attrgetter, not_

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype, shared_acc_dtype
from nvae_fast._power_iteration import forward_via

from ._aot import aot_spec, ptr
from . import _host, _tickets
from ._host import TL_DTYPES, interpreting, num_warps

__all__ = ["supports", "update", "sigmas", "forward", "backward", "aot_specs"]

EPS = 1e-12  # as nvae_fast.ops.power_iteration.EPS
GPU_BLOCKS = (32, 128)  # (BLOCK_R, BLOCK_K): a 4096-element tile, rows of 128 contiguous columns
INTERPRETER_BLOCKS = (64, 256)  # fewer, larger items for the CPU interpreter
SUM_BLOCK = tl.constexpr(128)  # partials added per step of the fixed-order sums
_TILE_FIELDS = tl.constexpr(8)  # int64 fields of one tile of the gradient's tile table (_outer_kernel)
PERSISTENT_MAX = 1 << 18  # weights of at most this many elements run all their steps in one program

# Columns of the per-weight tables (int64): addresses, and sizes/strides/offsets; one row per weight.
_W_ADDR = tl.constexpr(0)
_U_ADDR = tl.constexpr(1)
_V_ADDR = tl.constexpr(2)
ADDR_FIELDS = tl.constexpr(4)
_ROWS = tl.constexpr(0)
_COLS = tl.constexpr(1)
_W_STRIDE = tl.constexpr(2)  # row stride of W_i (its column stride is 1)
_U_STRIDE = tl.constexpr(3)
_V_STRIDE = tl.constexpr(4)
_S_OFF = tl.constexpr(5)  # offset of s_i (out_i,) in the u work buffer
_T_OFF = tl.constexpr(6)  # offset of t_i (rest_i,) in the v work buffer
_ROW_FIRST = tl.constexpr(7)  # first row item of the weight, and their count
_ROW_COUNT = tl.constexpr(8)
_COL_FIRST = tl.constexpr(9)  # first column item of the weight, and their count
_COL_COUNT = tl.constexpr(10)
_OUT = tl.constexpr(11)  # position of sigma_i in the output
_P_OFF = tl.constexpr(12)  # offset of the weight's (row items, cols) partials of W^T u in the partials buffer
META_FIELDS = tl.constexpr(13)


# ----------------------------------------------------------------------------------------------- kernels
# The helpers below are called once per program or per tile block, never per element: the CPU
# interpreter pays for every call of a jit helper. Vectors and partial sums are loaded past L1
# (``.cg``): in :func:`_steps_kernel` other programs of the same launch wrote them.


@triton.jit
def _item(items_ptr, j):
    """(i, start) of item j: its weight and its first column (column items) or row (row items)."""
    return tl.load(items_ptr + 2 * j), tl.load(items_ptr + 2 * j + 1)


@triton.jit
def _io_ptr(addr_ptr, i, FIELD: tl.constexpr, DTYPE: tl.constexpr):
    """Address FIELD (_W_ADDR, _U_ADDR or _V_ADDR) of weight i, as a pointer to DTYPE."""
    return tl.load(addr_ptr + i * ADDR_FIELDS + FIELD).to(tl.pointer_type(DTYPE))


@triton.jit
def _io_ptrs(addr_ptr, i, W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr):
    """(W_i, u_i, v_i): pointers to the caller's weight i and its vectors."""
    return (
        _io_ptr(addr_ptr, i, _W_ADDR, W_DTYPE),
        _io_ptr(addr_ptr, i, _U_ADDR, U_DTYPE),
        _io_ptr(addr_ptr, i, _V_ADDR, V_DTYPE),
    )


@triton.jit
def _shape(meta):
    """(rows, cols, w_stride, u_stride, v_stride) from the meta row ``meta`` of one weight."""
    return (
        tl.load(meta + _ROWS),
        tl.load(meta + _COLS),
        tl.load(meta + _W_STRIDE),
        tl.load(meta + _U_STRIDE),
        tl.load(meta + _V_STRIDE),
    )


@triton.jit
def _fixed_sum(part_ptr, first, count, BLOCK: tl.constexpr):
    """sum(part[first : first + count]), the partials added in a fixed order."""
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for b in range(0, count, BLOCK):
        o = b + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + first + o, mask=o < count, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@triton.jit
def _inv_norm(part_ptr, meta, FIRST: tl.constexpr, COUNT: tl.constexpr, EPS_: tl.constexpr):
    """1 / max(sqrt(sum of one weight's partial squared norms), eps); its items are those at meta fields
    FIRST and COUNT (_ROW_FIRST, _ROW_COUNT or _COL_FIRST, _COL_COUNT)."""
    total = _fixed_sum(part_ptr, tl.load(meta + FIRST), tl.load(meta + COUNT), SUM_BLOCK)
    return 1.0 / tl.maximum(tl.sqrt(total), EPS_)


@triton.jit
def _rows_dot(w, w_stride, r, rmask, x, x_stride, cols, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """(BLOCK_R,) sum_k W[r, k] x[k] over all ``cols`` columns, x read through x_stride; in ACC."""
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
    for k0 in range(0, cols, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < cols
        xv = tl.load(x + k * x_stride, mask=kmask, other=0.0, cache_modifier=".cg").to(ACC)
        wt = tl.load(w + (r * w_stride)[:, None] + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        acc += wt.to(ACC) * xv[None, :]
    return tl.sum(acc, axis=1)


@triton.jit
def _cols_dot(w, w_stride, k, kmask, x, x_stride, rows, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """(BLOCK_K,) sum_r W[r, k] x[r] over all ``rows`` rows, x read through x_stride; in ACC."""
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < rows
        xv = tl.load(x + r * x_stride, mask=rmask, other=0.0, cache_modifier=".cg").to(ACC)
        wt = tl.load(w + (r * w_stride)[:, None] + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        acc += wt.to(ACC) * xv[:, None]
    return tl.sum(acc, axis=0)


@triton.jit
def _store_scaled(dst, dst_stride, src, src_stride, o, mask, scale):
    """dst[o] = src[o] scale where ``mask``: src upcast to scale's dtype, the product rounded to dst's."""
    x = tl.load(src + o * src_stride, mask=mask, other=0.0, cache_modifier=".cg").to(scale.dtype)
    tl.store(dst + o * dst_stride, (x * scale).to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _resident_kernel(
    addr_ptr, meta_ptr, sigma_ptr, N_ITER,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr, ACC: tl.constexpr,
    EPS_: tl.constexpr, SIGMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program i: all N_ITER steps for weight i, which fits one BLOCK_R x BLOCK_K tile: W_i is loaded once
    and stays in registers, as do s, t and their scales; u_i, v_i are written normalised at the end and,
    with SIGMA (N_ITER >= 1), sigma_i (the module doc: ``SIGMA``)."""
    i = tl.program_id(0)
    w, u_io, v_io = _io_ptrs(addr_ptr, i, W_DTYPE, U_DTYPE, V_DTYPE)
    rows, cols, w_stride, u_stride, v_stride = _shape(meta_ptr + i * META_FIELDS)
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    rmask = r < rows
    kmask = k < cols
    w_at = w + (r * w_stride)[:, None] + k[None, :]
    wt = tl.load(w_at, mask=rmask[:, None] & kmask[None, :], other=0.0).to(ACC)
    u_at = u_io + r * u_stride
    v_at = v_io + k * v_stride
    s = tl.load(u_at, mask=rmask, other=0.0).to(ACC)  # the caller's u, scale 1
    t = tl.zeros([BLOCK_K], dtype=ACC)
    inv_u = tl.full([], 1.0, dtype=ACC)
    inv_v = tl.full([], 1.0, dtype=ACC)
    ss = tl.zeros([], dtype=ACC)
    for _ in range(N_ITER):
        t = tl.sum(wt * s[:, None], axis=0) * inv_u
        inv_v = 1.0 / tl.maximum(tl.sqrt(tl.sum(t * t, axis=0)), EPS_)
        s = tl.sum(wt * t[None, :], axis=1) * inv_v
        ss = tl.sum(s * s, axis=0)
        inv_u = 1.0 / tl.maximum(tl.sqrt(ss), EPS_)
    tl.store(u_at, (s * inv_u).to(U_DTYPE), mask=rmask)
    tl.store(v_at, (t * inv_v).to(V_DTYPE), mask=kmask)
    if SIGMA:
        tl.store(sigma_ptr + tl.load(meta_ptr + i * META_FIELDS + _OUT), ss * inv_u)


@triton.jit
def _persistent_kernel(
    addr_ptr, meta_ptr, ws_u_ptr, ws_v_ptr, sigma_ptr, N_ITER,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr, ACC: tl.constexpr,
    EPS_: tl.constexpr, SIGMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program i: all N_ITER steps for weight i, then u_i, v_i written normalised to the caller's tensors
    and, with SIGMA (N_ITER >= 1), sigma_i (the module doc: ``SIGMA``).

    s (rows) and t (cols) are kept unnormalised in the work buffers with their scales inv_u, inv_v; a block
    barrier separates each half-step from the one that reads what it wrote.
    """
    i = tl.program_id(0)
    meta = meta_ptr + i * META_FIELDS
    w, u_io, v_io = _io_ptrs(addr_ptr, i, W_DTYPE, U_DTYPE, V_DTYPE)
    rows, cols, w_stride, u_stride, v_stride = _shape(meta)
    s_buf = ws_u_ptr + tl.load(meta + _S_OFF)
    t_buf = ws_v_ptr + tl.load(meta + _T_OFF)
    inv_u = tl.full([], 1.0, dtype=ACC)
    inv_v = tl.full([], 1.0, dtype=ACC)
    for r0 in range(0, rows, BLOCK_R):  # s = the caller's u, scale 1
        r = r0 + tl.arange(0, BLOCK_R)
        _store_scaled(s_buf, 1, u_io, u_stride, r, r < rows, inv_u)
    ss = tl.zeros([], dtype=ACC)
    for _ in range(N_ITER):
        tl.debug_barrier()
        sq = tl.zeros([BLOCK_K], dtype=ACC)
        for k0 in range(0, cols, BLOCK_K):  # t = W^T (s inv_u)
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < cols
            t = _cols_dot(w, w_stride, k, kmask, s_buf, 1, rows, ACC, BLOCK_R, BLOCK_K) * inv_u
            tl.store(t_buf + k, t, mask=kmask)
            sq += t * t
        inv_v = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), EPS_)
        tl.debug_barrier()
        sq = tl.zeros([BLOCK_R], dtype=ACC)
        for r0 in range(0, rows, BLOCK_R):  # s = W (t inv_v)
            r = r0 + tl.arange(0, BLOCK_R)
            rmask = r < rows
            sv = _rows_dot(w, w_stride, r, rmask, t_buf, 1, cols, ACC, BLOCK_R, BLOCK_K) * inv_v
            tl.store(s_buf + r, sv, mask=rmask)
            sq += sv * sv
        ss = tl.sum(sq, axis=0)
        inv_u = 1.0 / tl.maximum(tl.sqrt(ss), EPS_)
    if SIGMA:
        tl.store(sigma_ptr + tl.load(meta + _OUT), ss * inv_u)
    tl.debug_barrier()
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        _store_scaled(u_io, u_stride, s_buf, 1, r, r < rows, inv_u)
    for k0 in range(0, cols, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        _store_scaled(v_io, v_stride, t_buf, 1, k, k < cols, inv_v)


@triton.jit
def _v_partial(
    addr_ptr, meta_ptr, items_ptr, ws_u_ptr, part_t_ptr, j,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, FIRST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Row item j = BLOCK_R rows r of weight i, the b-th of its row items: part_t[b, k] = sum_r W[r, k] u[r]
    for every column k (the weight's partials at _P_OFF). u is the caller's u_i (FIRST) or the unnormalised
    s_i of the last half-step (its scale is applied by :func:`_v_sum`)."""
    i, r0 = _item(items_ptr, j)
    r = r0 + tl.arange(0, BLOCK_R)
    meta = meta_ptr + i * META_FIELDS
    rows, cols, w_stride, u_stride, _ = _shape(meta)
    w = _io_ptr(addr_ptr, i, _W_ADDR, W_DTYPE)
    if FIRST:
        u = _io_ptr(addr_ptr, i, _U_ADDR, U_DTYPE)
    else:
        u = ws_u_ptr + tl.load(meta + _S_OFF)
        u_stride = 1
    rmask = r < rows
    uv = tl.load(u + r * u_stride, mask=rmask, other=0.0, cache_modifier=".cg").to(ACC)
    out = part_t_ptr + tl.load(meta + _P_OFF) + (j - tl.load(meta + _ROW_FIRST)) * cols
    for k0 in range(0, cols, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < cols
        wt = tl.load(w + (r * w_stride)[:, None] + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        tl.store(out + k, tl.sum(wt.to(ACC) * uv[:, None], axis=0), mask=kmask)


@triton.jit
def _v_sum(
    meta_ptr, items_ptr, ws_v_ptr, part_u_ptr, part_v_ptr, part_t_ptr, j,
    FIRST: tl.constexpr, ACC: tl.constexpr, EPS_: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Column item j = BLOCK_K columns k of weight i: t[k] = scale sum_b part_t[b, k] over the weight's row
    items in order (scale 1 after the caller's u (FIRST), else 1 / max(||s_i||, eps)); part_v[j] =
    sum_k t[k]^2."""
    i, k0 = _item(items_ptr, j)
    k = k0 + tl.arange(0, BLOCK_K)
    meta = meta_ptr + i * META_FIELDS
    cols = tl.load(meta + _COLS)
    n_parts = tl.load(meta + _ROW_COUNT)
    kmask = k < cols
    parts = part_t_ptr + tl.load(meta + _P_OFF)
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC)
    for b0 in range(0, n_parts, BLOCK_R):
        b = b0 + tl.arange(0, BLOCK_R)
        acc += tl.load(parts + (b * cols)[:, None] + k[None, :], mask=(b < n_parts)[:, None] & kmask[None, :],
                       other=0.0, cache_modifier=".cg")
    t = tl.sum(acc, axis=0)
    if not FIRST:
        t = t * _inv_norm(part_u_ptr, meta, _ROW_FIRST, _ROW_COUNT, EPS_)
    tl.store(ws_v_ptr + tl.load(meta + _T_OFF) + k, t, mask=kmask)
    tl.store(part_v_ptr + j, tl.sum(t * t, axis=0))


@triton.jit
def _u_step(
    addr_ptr, meta_ptr, items_ptr, ws_u_ptr, ws_v_ptr, part_u_ptr, part_v_ptr, j,
    W_DTYPE: tl.constexpr, ACC: tl.constexpr, EPS_: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Row item j = BLOCK_R rows r of weight i: s[r] = sum_k W[r, k] v[k]; part_u[j] = sum_r s[r]^2.

    v is the unnormalised t_i of the last half-step times 1 / max(||t_i||, eps).
    """
    i, r0 = _item(items_ptr, j)
    r = r0 + tl.arange(0, BLOCK_R)
    meta = meta_ptr + i * META_FIELDS
    rows, cols, w_stride, _, _ = _shape(meta)
    w = _io_ptr(addr_ptr, i, _W_ADDR, W_DTYPE)
    rmask = r < rows
    scale = _inv_norm(part_v_ptr, meta, _COL_FIRST, _COL_COUNT, EPS_)
    v = ws_v_ptr + tl.load(meta + _T_OFF)
    s = _rows_dot(w, w_stride, r, rmask, v, 1, cols, ACC, BLOCK_R, BLOCK_K) * scale
    tl.store(ws_u_ptr + tl.load(meta + _S_OFF) + r, s, mask=rmask)
    tl.store(part_u_ptr + j, tl.sum(s * s, axis=0))


@triton.jit
def _write_back_u(
    addr_ptr, meta_ptr, row_items_ptr, ws_u_ptr, part_u_ptr, sigma_ptr, j,
    U_DTYPE: tl.constexpr, EPS_: tl.constexpr, SIGMA: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Row item j of weight i: u_i = s_i / max(||s_i||, eps) into the caller's u_i; with SIGMA the weight's
    first row item also writes sigma_i (the module doc: ``SIGMA``)."""
    i, r0 = _item(row_items_ptr, j)
    r = r0 + tl.arange(0, BLOCK_R)
    meta = meta_ptr + i * META_FIELDS
    rows, _, _, u_stride, _ = _shape(meta)
    ss = _fixed_sum(part_u_ptr, tl.load(meta + _ROW_FIRST), tl.load(meta + _ROW_COUNT), SUM_BLOCK)
    scale = 1.0 / tl.maximum(tl.sqrt(ss), EPS_)
    u = _io_ptr(addr_ptr, i, _U_ADDR, U_DTYPE)
    _store_scaled(u, u_stride, ws_u_ptr + tl.load(meta + _S_OFF), 1, r, r < rows, scale)
    if SIGMA:
        tl.store(sigma_ptr + tl.load(meta + _OUT), ss * scale, mask=r0 == 0)


@triton.jit
def _write_back_v(
    addr_ptr, meta_ptr, col_items_ptr, ws_v_ptr, part_v_ptr, j,
    V_DTYPE: tl.constexpr, EPS_: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Column item j of weight i: v_i = t_i / max(||t_i||, eps) into the caller's v_i."""
    i, k0 = _item(col_items_ptr, j)
    k = k0 + tl.arange(0, BLOCK_K)
    meta = meta_ptr + i * META_FIELDS
    _, cols, _, _, v_stride = _shape(meta)
    scale = _inv_norm(part_v_ptr, meta, _COL_FIRST, _COL_COUNT, EPS_)
    v = _io_ptr(addr_ptr, i, _V_ADDR, V_DTYPE)
    _store_scaled(v, v_stride, ws_v_ptr + tl.load(meta + _T_OFF), 1, k, k < cols, scale)


# Kinds of work of a ticket of _steps_kernel.
_FIRST_PARTIAL = tl.constexpr(0)  # a row item's partials of W^T u, first step (the caller's u)
_PARTIAL = tl.constexpr(1)  # a row item's partials of W^T u, later steps
_FIRST_SUM = tl.constexpr(2)  # a column item of t = W^T u from the partials, first step
_SUM = tl.constexpr(3)  # the same, later steps
_U = tl.constexpr(4)  # a row item of s = W v
_WRITE_U = tl.constexpr(5)  # a row item of the write-back (u, sigma)
_WRITE_V = tl.constexpr(6)  # a column item of the write-back (v)
_TICKET_FIELDS = tl.constexpr(5)  # kind, item, counter waited on (-1: none), its target, counter added to (-1)
_PHASES = 3  # counted phases per step: partials, sums, row items


@triton.jit
def _steps_kernel(
    addr_ptr, meta_ptr, row_items_ptr, col_items_ptr, schedule_ptr, counters_ptr, ws_u_ptr, ws_v_ptr,
    part_u_ptr, part_v_ptr, part_t_ptr, sigma_ptr, TOTAL, COUNTERS,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr, ACC: tl.constexpr, EPS_: tl.constexpr,
    SIGMA: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """Every step of every item and the write-back in one launch of TOTAL programs: each takes a ticket
    (:mod:`._tickets`), row t of the schedule (kind, item, counter to wait for and its target, counter to
    add to), waits until the items its work reads are done (the previous phase's items of its run of
    weights), then runs :func:`_v_partial`, :func:`_v_sum`, :func:`_u_step`, :func:`_write_back_u` or
    :func:`_write_back_v`. ``counters``: ticket, finished, one count per (run, step, phase); COUNTERS of
    them, zero on entry and exit."""
    t = _tickets.claim(counters_ptr)
    e = schedule_ptr + t.to(tl.int64) * _TICKET_FIELDS
    kind = tl.load(e)
    j = tl.load(e + 1)
    wait = tl.load(e + 2)
    if wait >= 0:
        _tickets.wait_count(counters_ptr, wait, tl.load(e + 3), INTERPRETED)
    if kind == _FIRST_PARTIAL:
        _v_partial(addr_ptr, meta_ptr, row_items_ptr, ws_u_ptr, part_t_ptr, j, W_DTYPE, U_DTYPE, True, ACC,
                   BLOCK_R, BLOCK_K)
    elif kind == _PARTIAL:
        _v_partial(addr_ptr, meta_ptr, row_items_ptr, ws_u_ptr, part_t_ptr, j, W_DTYPE, U_DTYPE, False, ACC,
                   BLOCK_R, BLOCK_K)
    elif kind == _FIRST_SUM:
        _v_sum(meta_ptr, col_items_ptr, ws_v_ptr, part_u_ptr, part_v_ptr, part_t_ptr, j, True, ACC, EPS_, BLOCK_R,
               BLOCK_K)
    elif kind == _SUM:
        _v_sum(meta_ptr, col_items_ptr, ws_v_ptr, part_u_ptr, part_v_ptr, part_t_ptr, j, False, ACC, EPS_, BLOCK_R,
               BLOCK_K)
    elif kind == _U:
        _u_step(addr_ptr, meta_ptr, row_items_ptr, ws_u_ptr, ws_v_ptr, part_u_ptr, part_v_ptr, j,
                W_DTYPE, ACC, EPS_, BLOCK_R, BLOCK_K)
    elif kind == _WRITE_U:
        _write_back_u(addr_ptr, meta_ptr, row_items_ptr, ws_u_ptr, part_u_ptr, sigma_ptr, j,
                      U_DTYPE, EPS_, SIGMA, BLOCK_R)
    else:
        _write_back_v(addr_ptr, meta_ptr, col_items_ptr, ws_v_ptr, part_v_ptr, j, V_DTYPE, EPS_, BLOCK_K)
    signal = tl.load(e + 4)
    if signal >= 0:
        _tickets.add_count(counters_ptr + signal)
    _tickets.finish(counters_ptr, TOTAL, COUNTERS)


@triton.jit
def _sigma_weight_kernel(
    addr_ptr, meta_ptr, out_ptr,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program i: sigma[out_i] = sum_r u[r] sum_k W[r, k] v[k] for the whole of weight i (the caller's u, v)."""
    i = tl.program_id(0)
    meta = meta_ptr + i * META_FIELDS
    w, u, v = _io_ptrs(addr_ptr, i, W_DTYPE, U_DTYPE, V_DTYPE)
    rows, cols, w_stride, u_stride, v_stride = _shape(meta)
    total = tl.zeros([BLOCK_R], dtype=ACC)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < rows
        wv = _rows_dot(w, w_stride, r, rmask, v, v_stride, cols, ACC, BLOCK_R, BLOCK_K)
        total += wv * tl.load(u + r * u_stride, mask=rmask, other=0.0).to(ACC)
    tl.store(out_ptr + tl.load(meta + _OUT), tl.sum(total, axis=0))


@triton.jit
def _sigma_rows_kernel(
    addr_ptr, meta_ptr, items_ptr, part_ptr,
    W_DTYPE: tl.constexpr, U_DTYPE: tl.constexpr, V_DTYPE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Item j = BLOCK_R rows r of weight i: part[j] = sum_r u[r] sum_k W[r, k] v[k] (the caller's u, v)."""
    j = tl.program_id(0)
    i, r0 = _item(items_ptr, j)
    r = r0 + tl.arange(0, BLOCK_R)
    w, u, v = _io_ptrs(addr_ptr, i, W_DTYPE, U_DTYPE, V_DTYPE)
    rows, cols, w_stride, u_stride, v_stride = _shape(meta_ptr + i * META_FIELDS)
    rmask = r < rows
    wv = _rows_dot(w, w_stride, r, rmask, v, v_stride, cols, ACC, BLOCK_R, BLOCK_K)
    uv = tl.load(u + r * u_stride, mask=rmask, other=0.0).to(ACC)
    tl.store(part_ptr + j, tl.sum(wv * uv, axis=0))


@triton.jit
def _sigma_sum_kernel(meta_ptr, part_ptr, out_ptr, BLOCK: tl.constexpr):
    """sigma[out_i] = sum of weight i's row-item partials, in item order (program i: weight i)."""
    meta = meta_ptr + tl.program_id(0) * META_FIELDS
    total = _fixed_sum(part_ptr, tl.load(meta + _ROW_FIRST), tl.load(meta + _ROW_COUNT), BLOCK)
    tl.store(out_ptr + tl.load(meta + _OUT), total)


# -------------------------------------------------------------------------------------------- host side


@triton.jit
def _outer_kernel(tiles_ptr, saved_ptr, grad_ptr, out_ptr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program t: tile t of the tile table, (weight i, rows R, columns K, u offset, v offset, output offset,
    first row, first column): out[o + r K + k] = grad[i] u[r] v[k] over its BLOCK_R x BLOCK_K block, u and
    v read from the packed saved vector, in grad's dtype."""
    e = tiles_ptr + tl.program_id(0).to(tl.int64) * _TILE_FIELDS
    i = tl.load(e)
    cols = tl.load(e + 2)
    r = tl.load(e + 6) + tl.arange(0, BLOCK_R)
    k = tl.load(e + 7) + tl.arange(0, BLOCK_K)
    rmask = r < tl.load(e + 1)
    kmask = k < cols
    g = tl.load(grad_ptr + i)
    u = tl.load(saved_ptr + tl.load(e + 3) + r, mask=rmask, other=0).to(g.dtype)
    v = tl.load(saved_ptr + tl.load(e + 4) + k, mask=kmask, other=0).to(g.dtype)
    out = out_ptr + tl.load(e + 5) + r[:, None] * cols + k[None, :]
    tl.store(out, ((g * u)[:, None] * v[None, :]).to(out_ptr.dtype.element_ty), mask=rmask[:, None] & kmask[None, :])


def _readable(m: torch.Tensor) -> torch.Tensor:
    """``m`` when its rows are contiguous (column stride 1), else a contiguous copy."""
    return m if m.shape[1] == 1 or m.stride(1) == 1 else m.contiguous()


def _blocks() -> tuple[int, int]:
    return INTERPRETER_BLOCKS if interpreting() else GPU_BLOCKS


def supports(weights):
    """``None``: the kernels run every set of weights that :func:`nvae_fast.ops.power_iteration` accepts."""
    return None


class _Group:
    """Device tables of some weights that share (W, u, v) storage dtypes, and their work buffers.

    ``index`` lists the weights' positions in the call (where their sigmas go), in program order.
    """

    def __init__(self, index, mats, us, vs, acc):
        block_r, block_k = _blocks()
        self.dtypes = tuple(TL_DTYPES[t.dtype] for t in (mats[0], us[0], vs[0]))
        readable = [_readable(m) for m in mats]
        # keeps any copies alive while the kernels read them (a cached group holds no tensors)
        self.copies = [r for r, m in zip(readable, mats) if r is not m]
        addr, meta, row_items, col_items = [], [], [], []
        self.items = []  # per weight: (first row item, row items, first column item, column items, bytes of W)
        sizes = [0, 0, 0]  # s, t, partials of W^T u
        for i, (out, m, u, v) in enumerate(zip(index, readable, us, vs)):
            rows, cols = m.shape
            n_rows, n_cols = triton.cdiv(rows, block_r), triton.cdiv(cols, block_k)
            addr += [m.data_ptr(), u.data_ptr(), v.data_ptr(), 0]
            meta += [rows, cols, m.stride(0), u.stride(0), v.stride(0), sizes[0], sizes[1],
                     len(row_items) // 2, n_rows, len(col_items) // 2, n_cols, out, sizes[2]]
            self.items.append((len(row_items) // 2, n_rows, len(col_items) // 2, n_cols, m.numel() * m.element_size()))
            for b in range(n_rows):
                row_items += [i, b * block_r]
            for b in range(n_cols):
                col_items += [i, b * block_k]
            sizes[0] += rows
            sizes[1] += cols
            sizes[2] += n_rows * cols
        self.n_weights, self.n_rows, self.n_cols = len(mats), len(row_items) // 2, len(col_items) // 2
        tables = torch.tensor(addr + meta + row_items + col_items, dtype=torch.int64)
        device = mats[0].device
        if device.type == "cuda":  # pinned + non_blocking: the copy does not wait for the GPU's queue
            tables = tables.pin_memory().to(device, non_blocking=True)
        self.addr, self.meta, self.row_items, self.col_items = torch.split(
            tables, [len(addr), len(meta), len(row_items), len(col_items)]
        )
        self.acc = acc
        self.blocks = dict(BLOCK_R=block_r, BLOCK_K=block_k, num_warps=num_warps(block_r * block_k))
        self.sizes = tuple(sizes)
        self._schedules: dict[int, tuple] = {}

    def schedule(self, n_iter: int):
        """``(table, tickets, counters)`` of :func:`_steps_kernel` for ``n_iter`` >= 1 steps (cached): the
        weights, in order, in runs whose W take at most half the L2 (:func:`._host.half_l2_bytes`; a larger
        weight alone); per run and step, three phases: every row item's partials of W^T u (as many
        programs as the row items, so the step is as parallel as s = W v), every column item's sum of them
        (t, short), every row item's s = W t; then the write-back's row and column items. Each item waits for
        the run's items of the phase before it (the first for none; the write-back for the last row items)
        and counts itself done in the run's count of its phase (counter 2 + (run n_iter + step) 3 + phase)."""
        if n_iter not in self._schedules:
            budget = _host.half_l2_bytes(self.meta.device)
            runs, used = [], budget
            for weight in self.items:
                if used + weight[4] > budget:
                    runs.append([])
                    used = 0
                runs[-1].append(weight)
                used += weight[4]
            rows = []
            for r, run in enumerate(runs):
                row_items = [j for first, count, _, _, _ in run for j in range(first, first + count)]
                col_items = [j for _, _, first, count, _ in run for j in range(first, first + count)]
                after = (-1, 0)
                for k in range(n_iter):
                    partials, sums, us = (2 + (r * n_iter + k) * _PHASES + p for p in range(_PHASES))
                    kinds = (_PARTIAL, _SUM) if k else (_FIRST_PARTIAL, _FIRST_SUM)
                    rows += [(kinds[0].value, j, *after, partials) for j in row_items]
                    rows += [(kinds[1].value, j, partials, len(row_items), sums) for j in col_items]
                    rows += [(_U.value, j, sums, len(col_items), us) for j in row_items]
                    after = (us, len(row_items))
                last_u = after
                rows += [(_WRITE_U.value, j, *last_u, -1) for j in row_items]
                rows += [(_WRITE_V.value, j, *last_u, -1) for j in col_items]
            table = torch.tensor(rows, dtype=torch.int64).flatten()
            if self.meta.device.type == "cuda":  # pinned + non_blocking: the copy does not wait for the GPU
                table = table.pin_memory().to(self.meta.device, non_blocking=True)
            self._schedules[n_iter] = (table, len(rows), 2 + len(runs) * n_iter * _PHASES)
        return self._schedules[n_iter]

    def work(self, parts: bool):
        """Work buffers (s, t[, per-row-item, per-column-item partial squared norms, partials of W^T u]) in
        the acc dtype."""
        rows, cols, partials = self.sizes
        sizes = [rows, cols] + ([self.n_rows, self.n_cols, partials] if parts else [])
        return torch.split(torch.empty(sum(sizes), dtype=self.acc, device=self.meta.device), sizes)


_GROUP_CACHE: dict[tuple, list] = {}  # key of a call's weights -> its groups, the most recent last
GROUP_CACHE_SIZE = 16  # group lists kept (a call uses up to 5: resident, streamed, items, and sigmas' 2)


def _groups(mats, us, vs, index):
    """One :class:`_Group` per (W, u, v) dtype combination among the weights ``index``.

    Cached: the tables are a function of the tensors' addresses, shapes, strides and dtypes (and the
    call's accumulation dtype and tile), so a call on the same tensors reuses them. Weights read through a
    contiguous copy (rows with a column stride) have new addresses every call and are never cached.
    """
    acc = shared_acc_dtype(mats)
    key = (acc, _blocks(), mats[0].device, tuple(index))
    for tensors in (mats, us, vs):
        key += _fingerprint(list(map(tensors.__getitem__, index)))
    cached = _GROUP_CACHE.pop(key, None)
    if cached is None:
        members: dict[tuple, list[int]] = {}
        for i in index:
            members.setdefault((mats[i].dtype, us[i].dtype, vs[i].dtype), []).append(i)
        cached = [
            _Group(idx, [mats[i] for i in idx], [us[i] for i in idx], [vs[i] for i in idx], acc)
            for idx in members.values()
        ]
        if any(g.copies for g in cached):
            return cached
    return _remember(_GROUP_CACHE, GROUP_CACHE_SIZE, key, cached)


def _fingerprint(tensors) -> tuple:
    """The addresses, shapes, strides and dtypes of ``tensors``, in C-level passes over the list."""
    return (tuple(map(torch.Tensor.data_ptr, tensors)), tuple(map(torch.Tensor.size, tensors)),
            tuple(map(torch.Tensor.stride, tensors)), tuple(map(attrgetter("dtype"), tensors)))


def _remember(cache: dict, size: int, key, value):
    """``value`` stored under ``key`` as the most recent entry of ``cache``, whose oldest entries beyond
    ``size`` are dropped; returns ``value``."""
    cache[key] = value
    while len(cache) > size:
        del cache[next(iter(cache))]
    return value


def update(mats, us, vs, n_iter):
    """``n_iter`` power-iteration steps for every (out_i, rest_i) matrix; ``us``/``vs`` updated in place."""
    _iterate(mats, us, vs, n_iter, None)


def _iterate(mats, us, vs, n_iter, sigma):
    """:func:`update`, and with ``sigma`` (an (n,) acc-dtype tensor; n_iter >= 1) every sigma_i written into
    it by the kernels that normalise u_i (the module doc: ``SIGMA``)."""
    if n_iter == 0 or not mats:
        return
    acc = TL_DTYPES[shared_acc_dtype(mats)]
    with_sigma = dict(SIGMA=sigma is not None)
    sigma = mats[0] if sigma is None else sigma  # an unread placeholder without SIGMA
    small, large = _split(mats)
    block_r, block_k = _blocks()
    chosen = list(map(mats.__getitem__, small))  # whether each fits one tile, in C-level passes:
    in_tile = list(map(and_, map(block_r.__ge__, map(torch.Tensor.size, chosen, repeat(0))),
                       map(block_k.__ge__, map(torch.Tensor.size, chosen, repeat(1)))))
    fits, streamed = list(compress(small, in_tile)), list(compress(small, map(not_, in_tile)))
    for g in _groups(mats, us, vs, fits):
        _resident_kernel[(g.n_weights,)](
            g.addr, g.meta, sigma, n_iter,
            W_DTYPE=g.dtypes[0], U_DTYPE=g.dtypes[1], V_DTYPE=g.dtypes[2], ACC=acc, EPS_=EPS, **with_sigma, **g.blocks,
        )
    for g in _groups(mats, us, vs, streamed):
        _persistent_kernel[(g.n_weights,)](
            g.addr, g.meta, *g.work(parts=False), sigma, n_iter,
            W_DTYPE=g.dtypes[0], U_DTYPE=g.dtypes[1], V_DTYPE=g.dtypes[2], ACC=acc, EPS_=EPS, **with_sigma, **g.blocks,
        )
    for g in _groups(mats, us, vs, large):
        table, tickets, counters = g.schedule(n_iter)
        with _host.ticket_counters(g.meta.device, counters) as counts:
            _steps_kernel[(tickets,)](
                g.addr, g.meta, g.row_items, g.col_items, table, counts, *g.work(parts=True), sigma, tickets,
                counters, W_DTYPE=g.dtypes[0], U_DTYPE=g.dtypes[1], V_DTYPE=g.dtypes[2], ACC=acc, EPS_=EPS,
                INTERPRETED=interpreting(), **with_sigma, **g.blocks,
            )


def _split(mats):
    """(small, large) weight indices, largest first so that the longest programs start first (equal sizes
    in list order)."""
    numels = list(map(torch.Tensor.numel, mats))
    order = sorted(range(len(mats)), key=numels.__getitem__, reverse=True)  # stable: ties keep list order
    n_large = sum(map(PERSISTENT_MAX.__lt__, numels))
    return order[n_large:], order[:n_large]


def sigmas(mats, us, vs):
    """sigma_i = u_i^T W_i v_i for every matrix: an (n,) tensor in the accumulation dtype.

    Small weights: one program each (one launch); large ones: row items, then a fixed-order sum per weight.
    """
    acc = shared_acc_dtype(mats)
    out = torch.empty(len(mats), dtype=acc, device=mats[0].device)
    small, large = _split(mats)
    for g in _groups(mats, us, vs, small):
        _sigma_weight_kernel[(g.n_weights,)](
            g.addr, g.meta, out, W_DTYPE=g.dtypes[0], U_DTYPE=g.dtypes[1], V_DTYPE=g.dtypes[2],
            ACC=TL_DTYPES[acc], **g.blocks,
        )
    for g in _groups(mats, us, vs, large):
        part = torch.empty(g.n_rows, dtype=acc, device=out.device)
        _sigma_rows_kernel[(g.n_rows,)](
            g.addr, g.meta, g.row_items, part, W_DTYPE=g.dtypes[0], U_DTYPE=g.dtypes[1], V_DTYPE=g.dtypes[2],
            ACC=TL_DTYPES[acc], **g.blocks,
        )
        _sigma_sum_kernel[(g.n_weights,)](g.meta, part, out, BLOCK=SUM_BLOCK, num_warps=1)
    return out


def forward(weights, us, vs, n_iter):
    """The steps and sigma on the weights' (out, rest) matrices: (sigma, saved final u and v, the weights'
    shapes and dtypes). With n_iter >= 1 the steps' own kernels write sigma (no :func:`sigmas` launches,
    no further read of W); with n_iter = 0, :func:`sigmas`."""
    return forward_via(_steps_and_sigma, weights, us, vs, n_iter)


def _steps_and_sigma(mats, us, vs, n_iter):
    if n_iter == 0:
        return sigmas(mats, us, vs)
    sigma = torch.empty(len(mats), dtype=shared_acc_dtype(mats), device=mats[0].device)
    _iterate(mats, us, vs, n_iter, sigma)
    return sigma


def backward(saved, layout, grad):
    """dW_i = grad_i u_i v_i^T for every weight, in its shape and dtype: one launch over the tiles of all
    weights (:func:`_outer_kernel`), writing one buffer in the weights' shared dtype (float32 when they
    differ) whose views are the gradients."""
    tiles, numels, shapes, dtype, mixed = _outer_tiles(layout, grad.device)
    flat = torch.empty(sum(numels), dtype=dtype, device=grad.device)
    block_r, block_k = _blocks()
    _outer_kernel[(tiles.shape[0] // _TILE_FIELDS,)](
        tiles, saved[0], grad, flat, BLOCK_R=block_r, BLOCK_K=block_k, num_warps=num_warps(block_r * block_k)
    )
    grads = list(map(torch.Tensor.view, flat.split(numels), shapes))
    return [g.to(d) for g, (_, d) in zip(grads, layout)] if mixed else grads


# key of a layout -> (device tile table, numels, shapes, shared dtype, mixed dtypes), the most recent last
_TILE_CACHE: dict[tuple, tuple] = {}
TILE_CACHE_SIZE = 4


def _outer_tiles(layout, device):
    """The tile table of :func:`_outer_kernel` for weights of ``layout`` (each weight's (shape, dtype), u and
    v packed as :func:`nvae_fast._power_iteration.forward_via` saves them), their numels and shapes, the
    dtype of the gradient buffer (float32 when the weights' dtypes differ) and whether they differ; cached by
    the layout (shapes, dtypes), the device and the tile."""
    blocks = _blocks()
    key = (tuple(layout), device, blocks)
    cached = _TILE_CACHE.pop(key, None)
    if cached is None:
        block_r, block_k = blocks
        rows = [shape[0] for shape, _ in layout]
        cols = [math.prod(shape[1:]) for shape, _ in layout]
        tiles, u_off, v_off, out_off = [], 0, sum(rows), 0
        for i, (r, k) in enumerate(zip(rows, cols)):
            for r0 in range(0, r, block_r):
                for k0 in range(0, k, block_k):
                    tiles += [i, r, k, u_off, v_off, out_off, r0, k0]
            u_off, v_off, out_off = u_off + r, v_off + k, out_off + r * k
        table = torch.tensor(tiles, dtype=torch.int64)
        if device.type == "cuda":  # pinned + non_blocking: the copy does not wait for the GPU's queue
            table = table.pin_memory().to(device, non_blocking=True)
        dtypes = {dtype for _, dtype in layout}
        mixed = len(dtypes) > 1
        shapes = [shape for shape, _ in layout]
        cached = (table, [r * k for r, k in zip(rows, cols)], shapes, torch.float32 if mixed else dtypes.pop(), mixed)
    return _remember(_TILE_CACHE, TILE_CACHE_SIZE, key, cached)


# --------------------------------------------------------------------------------- ahead-of-time specs


def aot_specs() -> list:
    """Every kernel for weights in each float dtype (u, v float32, or float64 throughout), with and without
    sigma, with the GPU tile."""
    block_r, block_k = GPU_BLOCKS
    blocks = {"BLOCK_R": block_r, "BLOCK_K": block_k, "EPS_": EPS}
    warps = num_warps(block_r * block_k)
    tables = {"addr_ptr": "*i64", "meta_ptr": "*i64"}
    specs = []
    for w_dtype in TL_DTYPES:
        acc = acc_dtype(w_dtype)
        a, tw, ta = ptr(acc), TL_DTYPES[w_dtype], TL_DTYPES[acc]
        work = {"ws_u_ptr": a, "ws_v_ptr": a}
        specs += [
            aot_spec(fn, {**tables, **({} if fn is _resident_kernel else work), "sigma_ptr": a, "N_ITER": "i32",
                          "W_DTYPE": tw, "U_DTYPE": ta, "V_DTYPE": ta, "ACC": ta, "SIGMA": sigma, **blocks}, warps)
            for fn in (_resident_kernel, _persistent_kernel) for sigma in (True, False)
        ]
        specs += [
            aot_spec(_sigma_weight_kernel, {**tables, "out_ptr": a, "W_DTYPE": tw, "U_DTYPE": ta, "V_DTYPE": ta,
                                            "ACC": ta, "BLOCK_R": block_r, "BLOCK_K": block_k}, warps),
            aot_spec(_sigma_rows_kernel, {**tables, "items_ptr": "*i64", "part_ptr": a, "W_DTYPE": tw,
                                          "U_DTYPE": ta, "V_DTYPE": ta, "ACC": ta, "BLOCK_R": block_r,
                                          "BLOCK_K": block_k}, warps),
        ]
        specs += [
            aot_spec(_steps_kernel, {**tables, "row_items_ptr": "*i64", "col_items_ptr": "*i64", "schedule_ptr": "*i64",
                                     "counters_ptr": "*i32", **work, "part_u_ptr": a, "part_v_ptr": a, "part_t_ptr": a,
                                     "sigma_ptr": a,
                                     "TOTAL": "i32", "COUNTERS": "i32", "W_DTYPE": tw, "U_DTYPE": ta, "V_DTYPE": ta,
                                     "ACC": ta, "SIGMA": sigma, "INTERPRETED": False, **blocks}, warps)
            for sigma in (True, False)
        ]
    for acc in (torch.float32, torch.float64):
        a, ta = ptr(acc), TL_DTYPES[acc]
        specs.append(aot_spec(_sigma_sum_kernel, {"meta_ptr": "*i64", "part_ptr": a, "out_ptr": a, "BLOCK": SUM_BLOCK}, 1))
    for w_dtype in TL_DTYPES:
        acc = ptr(acc_dtype(w_dtype))
        specs.append(aot_spec(_outer_kernel, {"tiles_ptr": "*i64", "saved_ptr": acc, "grad_ptr": acc,
                                              "out_ptr": ptr(w_dtype), "BLOCK_R": block_r, "BLOCK_K": block_k}, warps))
    return specs
