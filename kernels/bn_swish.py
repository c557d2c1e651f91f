"""Triton kernel set of :mod:`nvae_fast.ops.bn_swish` (contract: ``BNSwishKernels`` there).

Shapes: ``x``, ``dy`` (N, C, H, W); ``mean``, ``invstd``, ``weight``, ``bias``, ``sum_dz``,
``sum_dz_xhat`` (C,). Per channel c over its n = N*H*W values, with acc the accumulation dtype (float64
for float64 x, float32 otherwise)::

    batch_stats:      mean_c, var_c = E[x], E[(x - mean_c)^2]                       (biased)
    normalize:        z = weight_c invstd_c (x - mean_c) + bias_c,   y = z sigmoid(z)
    backward_reduce:  dz = dy s (1 + z (1 - s)) with s = sigmoid(z)  (z recomputed from x)
                      sum_dz_c = sum dz,   sum_dz_xhat_c = sum dz (x - mean_c) invstd_c
    backward_dx:      dx = weight_c invstd_c (dz - sum_dz_c / n - xhat sum_dz_xhat_c / n)   (training)
                      dx = weight_c invstd_c dz                                          (eval)
    train_forward:    batch_stats and normalize, invstd_c = 1 / sqrt(var_c + eps), running_mean and
                      running_var updated in the kernels: in one read of x when a channel's slice
                      fits one program (see below), else in two passes

Layouts: NCHW-contiguous and channels_last tensors are read in place (see :mod:`._host`); any other
strides are copied to NCHW first, and ``dy`` is copied to ``x``'s layout when it differs. Outputs have the
(dense) layout of ``x``. All arithmetic runs in acc right after each load.

Statistics are exact within a tile and merged exactly across tiles: each tile contributes its count,
mean and centred sum of squares M2 (two passes over the tile in registers); tiles fold into a
program's running (count, mean, M2) by Chan et al.'s update, and the per-program partials are merged
by :func:`_bn_stats_finalize_kernel` (or the training pass after the statistics) in a fixed order. The
backward sums follow the same two-phase pattern (per-program partials, then a fixed-order sum:
``torch.sum`` over the partial axis in ``backward_reduce``, the dx kernel's own in training): no atomics,
so repeated runs are bit-identical.

One-read forward. When the tile holding a channel's whole slice, padded to powers of two, has at
most :data:`ONE_READ_ELEMS` float32 values (16 warps x 32 threads x 32 registers, :func:`_one_read_warps`;
half as many float64 values), i.e. N*H*W <= 16384 (8192 for float64) up to that padding, ``train_forward``
launches one program per channel (NCHW: a pow2(N) x pow2(H*W) tile) or per block of channels
(channels_last: pow2(N*H*W) rows by up to one 32-byte sector of channels, fewer when the rows need the
registers).
Each program loads its slice once, computes the mean and then the centred sum of squares in registers
(exact two-pass), and writes y. The grid is only C programs (NCHW) or C / block (channels_last): it
fills a GPU for NVAE's widths (C = 32 ... 768) only partly at the low end; channels_last tiles
narrower than a sector fetch each sector once per program (from L2 after the first).

One-read backward. ``backward`` does the same with dy and x (half the tile each, so N*H*W <= 8192, 4096
for float64): one program per channel (block) loads both once, stores sum dz and sum dz xhat and dx.
Past the limits the training forward and backward take two passes over runs of channels (:func:`_runs`:
as many channels as take at most half the L2, the device's or :data:`._host.ASSUMED_L2_BYTES`, in x, or dy and
x), all in one launch whose programs take tickets (:func:`_two_pass_ticket`): per run, the reduction
programs (per-program partials), then element-wise programs that wait for them, read the run's inputs
again, from L2, merge the partials of their channels in order and write the per-channel outputs (mean,
invstd, running statistics; sum dz, sum dz xhat) from the programs holding each channel's first
element. The ticket counters stay allocated per device and stream and zeroed by the launch itself
(:func:`._host.ticket_counters`), so no ATen op runs; :func:`plan` says which plan a given x takes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype

from . import _host, _tickets
from ._aot import aot_spec, ones, ptr

__all__ = [
    "supports", "plan", "train_forward", "batch_stats", "normalize", "backward", "backward_reduce", "backward_dx", "aot_specs",
]

MAX_COLS_NCHW = 1024  # widest tile along H*W
MAX_COLS_NHWC = 128  # widest tile along C
ONE_READ_ELEMS = 16384  # float32 values one program of the one-read forward holds: 16 warps x 32 x 32
VALUES_PER_WARP = 1024  # one-read tiles: 32 float32 words in each thread's registers
SECTOR_BYTES = 32  # channels_last one-read tiles are at most one memory sector of channels wide


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _channel_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, mask, ACC: tl.constexpr):
    """Per-channel (mean, invstd, scale, shift) with z = scale x + shift; ``ch`` scalar or vector."""
    mean = tl.load(mean_ptr + ch, mask=mask, other=0).to(ACC)
    invstd = tl.load(invstd_ptr + ch, mask=mask, other=0).to(ACC)
    w = tl.load(w_ptr + ch, mask=mask, other=0).to(ACC)
    b = tl.load(b_ptr + ch, mask=mask, other=0).to(ACC)
    scale = w * invstd
    return mean, invstd, scale, b - mean * scale


@triton.jit
def _swish_grad(dy, z):
    """d silu(z) / dz times dy: dy s (1 + z (1 - s)), s = sigmoid(z)."""
    s = tl.sigmoid(z)
    return dy * s * (1 + z * (1 - s))


@triton.jit
def _centre(v, mask, n, AXIS: tl.constexpr):
    """(mean, d, M2) of the n values of v where ``mask`` (v is 0 elsewhere), reduced along AXIS (``None``:
    the whole tile): mean = sum v / n, d = v - mean (0 outside the mask), M2 = sum d^2."""
    mean = tl.sum(v, AXIS) / n
    d = tl.where(mask, v - mean, 0)
    return mean, d, tl.sum(d * d, AXIS)


@triton.jit
def _fold_tile(count, mean, m2, v, mask, n_t, AXIS: tl.constexpr):
    """Running (count, mean, M2) with a tile's n_t values folded in by Chan et al.'s update (the tile's
    mean and M2 from :func:`_centre`, reduced along AXIS)."""
    mean_t, _, m2_t = _centre(v, mask, n_t, AXIS)
    total = count + n_t
    delta = mean_t - mean
    return total, mean + delta * (n_t / total), m2 + (m2_t + delta * delta * (count * n_t / total))


@triton.jit
def _nchw_tile(t, hw_blocks, N, HW, BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Tile t of one channel's N x HW matrix, tiles in row-major order (hw_blocks = cdiv(HW, BLOCK_HW)
    per row): (rows n, columns hw, mask, number of values)."""
    tn = t // hw_blocks
    th = t - tn * hw_blocks
    r = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    q = th * BLOCK_HW + tl.arange(0, BLOCK_HW)
    n_t = tl.minimum(N - tn * BLOCK_N, BLOCK_N) * tl.minimum(HW - th * BLOCK_HW, BLOCK_HW)
    return r, q, (r < N)[:, None] & (q < HW)[None, :], n_t


@triton.jit
def _store_partials(part_ptr, s, c, C, SPLIT, count, mean, m2, mask):
    """part[k, s, c] = (count, mean, M2)[k] of a (SPLIT, C) plane each; ``c`` scalar or vector."""
    out = part_ptr + s * C + c
    plane = SPLIT * C
    tl.store(out, count, mask=mask)
    tl.store(out + plane, mean, mask=mask)
    tl.store(out + 2 * plane, m2, mask=mask)


@triton.jit
def _stats_nchw(x_ptr, part_ptr, N, C, HW, SPLIT, c, s, BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr,
                ACC: tl.constexpr):
    """Folds tiles s, s + SPLIT, ... of channel c's N x HW matrix into (count, mean, M2) and stores them at
    part[k, s, c], k = 0, 1, 2."""
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    row_stride = C * HW
    base = x_ptr + c * HW
    count = tl.zeros((), ACC)
    mean = tl.zeros((), ACC)
    m2 = tl.zeros((), ACC)
    for t in range(s, tl.cdiv(N, BLOCK_N) * hw_blocks, SPLIT):
        r, q, mask, n_t = _nchw_tile(t, hw_blocks, N, HW, BLOCK_N, BLOCK_HW)
        v = tl.load(base + r[:, None] * row_stride + q[None, :], mask=mask, other=0).to(ACC)
        count, mean, m2 = _fold_tile(count, mean, m2, v, mask, n_t.to(ACC), None)
    _store_partials(part_ptr, s, c, C, SPLIT, count, mean, m2, None)


@triton.jit
def _bn_stats_nchw_kernel(
    x_ptr, part_ptr, N, C, HW, SPLIT,
    BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (C, SPLIT): program (c, s) runs :func:`_stats_nchw`."""
    _stats_nchw(x_ptr, part_ptr, N, C, HW, SPLIT, tl.program_id(0), tl.program_id(1), BLOCK_N, BLOCK_HW, ACC)


@triton.jit
def _stats_nhwc(x_ptr, part_ptr, R, C, SPLIT, c0, c_end, s, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                ACC: tl.constexpr):
    """Folds row blocks s, s + SPLIT, ... of the (R = N*H*W) x C matrix's channels c0 + [0, BLOCK_C) below
    c_end into (count, mean, M2) and stores part[k, s, c] like :func:`_stats_nchw`."""
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < c_end
    rows = tl.arange(0, BLOCK_R)
    count = tl.zeros((), ACC)
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    for t in range(s, tl.cdiv(R, BLOCK_R), SPLIT):
        r = t * BLOCK_R + rows
        mask = (r < R)[:, None] & cmask[None, :]
        v = tl.load(x_ptr + r[:, None] * C + cols[None, :], mask=mask, other=0).to(ACC)
        count, mean, m2 = _fold_tile(count, mean, m2, v, mask, tl.minimum(R - t * BLOCK_R, BLOCK_R).to(ACC), 0)
    _store_partials(part_ptr, s, cols, C, SPLIT, tl.zeros((BLOCK_C,), ACC) + count, mean, m2, cmask)


@triton.jit
def _bn_stats_nhwc_kernel(
    x_ptr, part_ptr, R, C, SPLIT,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C), SPLIT): program (j, s) runs :func:`_stats_nhwc` for channels
    j*BLOCK_C + [0, BLOCK_C)."""
    _stats_nhwc(x_ptr, part_ptr, R, C, SPLIT, tl.program_id(0) * BLOCK_C, C, tl.program_id(1), BLOCK_R, BLOCK_C, ACC)


@triton.jit
def _merge_stats(part_ptr, ch, mask, C, SPLIT, ACC: tl.constexpr):
    """(n, mean, M2) of channels ``ch`` (a vector) from their SPLIT partial (count, mean, M2), merged in
    order: mean = sum n_s mean_s / n,  M2 = sum (M2_s + n_s (mean_s - mean)^2); 1, 0, 0 where not ``mask``.
    Read past L1: other programs of the same launch may have written them (the two-pass kernels)."""
    plane = SPLIT * C
    total = tl.zeros(ch.shape, ACC)
    weighted = tl.zeros(ch.shape, ACC)
    for s in range(0, SPLIT):
        n_s = tl.load(part_ptr + s * C + ch, mask=mask, other=0, cache_modifier=".cg")
        mean_s = tl.load(part_ptr + plane + s * C + ch, mask=mask, other=0, cache_modifier=".cg")
        total += n_s
        weighted += n_s * mean_s
    total = tl.where(mask, total, 1)
    mean = weighted / total
    m2 = tl.zeros(ch.shape, ACC)
    for s in range(0, SPLIT):
        n_s = tl.load(part_ptr + s * C + ch, mask=mask, other=0, cache_modifier=".cg")
        mean_s = tl.load(part_ptr + plane + s * C + ch, mask=mask, other=0, cache_modifier=".cg")
        m2_s = tl.load(part_ptr + 2 * plane + s * C + ch, mask=mask, other=0, cache_modifier=".cg")
        d = mean_s - mean
        m2 += m2_s + n_s * d * d
    return total, mean, m2


@triton.jit
def _bn_stats_finalize_kernel(part_ptr, mean_ptr, var_ptr, C, SPLIT, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Grid cdiv(C, BLOCK_C). Merge the SPLIT partial (count, mean, M2) of each channel (see
    :func:`_merge_stats`); store mean and var = M2 / n."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < C
    total, mean, m2 = _merge_stats(part_ptr, cols, mask, C, SPLIT, ACC)
    tl.store(mean_ptr + cols, mean, mask=mask)
    tl.store(var_ptr + cols, m2 / total, mask=mask)


@triton.jit
def _along(v, CHANNEL_ON_ROWS: tl.constexpr):
    """Per-channel vector v broadcast over a tile: a column (channels on its rows) or a row."""
    if CHANNEL_ON_ROWS:
        out = v[:, None]
    else:
        out = v[None, :]
    return out


@triton.jit
def _tile_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, chmask, CHANNEL_ON_ROWS: tl.constexpr, ACC: tl.constexpr):
    """:func:`_channel_affine` of a tile's channels ``ch``, each broadcast over the tile as :func:`_along`
    does (written out here: the CPU interpreter pays for every call of a jit helper)."""
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, chmask, ACC)
    if CHANNEL_ON_ROWS:
        out = mean[:, None], invstd[:, None], scale[:, None], shift[:, None]
    else:
        out = mean[None, :], invstd[None, :], scale[None, :], shift[None, :]
    return out


@triton.jit
def _run_tile(ti, tj, ROWS, COLS, C, C0, RUN, CHANNEL_ON_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_COL: tl.constexpr):
    """Tile (ti, tj), BLOCK_R x BLOCK_COL, of the elements of channels [C0, C0 + RUN) in the layout's
    row-major matrix: (offsets, mask, channels, channel mask, first). NCHW (CHANNEL_ON_ROWS): the run's
    ROWS = N * RUN rows (image n, channel C0 + j) of COLS = H*W; NHWC: ROWS = N*H*W rows by the run's RUN
    channels of COLS = C. ``first``: the channels whose first element (image 0, pixel 0) the tile holds,
    whose per-channel outputs this program writes."""
    q = ti * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tj * BLOCK_COL + tl.arange(0, BLOCK_COL)
    qmask = q < ROWS
    if CHANNEL_ON_ROWS:
        ch = C0 + q % RUN
        kmask = k < COLS
        offs = ((q // RUN) * C + ch)[:, None] * COLS + k[None, :]
        chmask = qmask
        first = qmask & (q < RUN) & (tj == 0)
    else:
        ch = C0 + k
        kmask = k < RUN
        offs = q[:, None] * COLS + ch[None, :]
        chmask = kmask
        first = kmask & (ti == 0)
    return offs, qmask[:, None] & kmask[None, :], ch, chmask, first


@triton.jit
def _bn_normalize_kernel(
    x_ptr, y_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, ROWS, COLS, C,
    CHANNEL_ON_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(ROWS, BLOCK_R), cdiv(COLS, BLOCK_COL)) over the layout's row-major matrix (:func:`_run_tile`
    with every channel in the run): the channel of an element is row % C (NCHW, CHANNEL_ON_ROWS) or its
    column (NHWC). y = silu(scale x + shift)."""
    offs, mask, ch, chmask, _ = _run_tile(tl.program_id(0), tl.program_id(1), ROWS, COLS, C, 0, C, CHANNEL_ON_ROWS,
                                          BLOCK_R, BLOCK_COL)
    _, _, scale, shift = _tile_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, chmask, CHANNEL_ON_ROWS, ACC)
    z = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC) * scale + shift
    y = z * tl.sigmoid(z)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_sums_nchw(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, N, C, HW, SPLIT, c, s,
                        BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    """Sums dz and dz xhat over tiles s, s + SPLIT, ... of channel c and stores them at part[0, s, c] and
    part[1, s, c]."""
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, c, c < C, ACC)
    acc_dz = tl.zeros((BLOCK_N, BLOCK_HW), ACC)
    acc_dzx = tl.zeros((BLOCK_N, BLOCK_HW), ACC)
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    row_stride = C * HW
    for t in range(s, tl.cdiv(N, BLOCK_N) * hw_blocks, SPLIT):
        r, q, mask, _ = _nchw_tile(t, hw_blocks, N, HW, BLOCK_N, BLOCK_HW)
        offs = c * HW + r[:, None] * row_stride + q[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
        g = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
        dz = _swish_grad(g, v * scale + shift)  # 0 where masked (g = 0)
        acc_dz += dz
        acc_dzx += dz * (v - mean)
    out = part_ptr + s * C + c
    tl.store(out, tl.sum(acc_dz))
    tl.store(out + SPLIT * C, tl.sum(acc_dzx) * invstd)


@triton.jit
def _bn_backward_reduce_nchw_kernel(
    dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, N, C, HW, SPLIT,
    BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (C, SPLIT): program (c, s) runs :func:`_backward_sums_nchw`."""
    _backward_sums_nchw(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, N, C, HW, SPLIT,
                        tl.program_id(0), tl.program_id(1), BLOCK_N, BLOCK_HW, ACC)


@triton.jit
def _backward_sums_nhwc(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, R, C, SPLIT, c0, c_end, s,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Over the R x C matrix's channels c0 + [0, BLOCK_C) below c_end: part[0/1, s, c] like
    :func:`_backward_sums_nchw`."""
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < c_end
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, cols, cmask, ACC)
    rows = tl.arange(0, BLOCK_R)
    acc_dz = tl.zeros((BLOCK_R, BLOCK_C), ACC)
    acc_dzx = tl.zeros((BLOCK_R, BLOCK_C), ACC)
    for t in range(s, tl.cdiv(R, BLOCK_R), SPLIT):
        r = t * BLOCK_R + rows
        mask = (r < R)[:, None] & cmask[None, :]
        offs = r[:, None] * C + cols[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
        g = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
        dz = _swish_grad(g, v * scale[None, :] + shift[None, :])  # 0 where masked (g = 0)
        acc_dz += dz
        acc_dzx += dz * (v - mean[None, :])
    out = part_ptr + s * C + cols
    tl.store(out, tl.sum(acc_dz, 0), mask=cmask)
    tl.store(out + SPLIT * C, tl.sum(acc_dzx, 0) * invstd, mask=cmask)


@triton.jit
def _bn_backward_reduce_nhwc_kernel(
    dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, R, C, SPLIT,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C), SPLIT): program (j, s) runs :func:`_backward_sums_nhwc` for channels
    j*BLOCK_C + [0, BLOCK_C)."""
    _backward_sums_nhwc(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, R, C, SPLIT,
                        tl.program_id(0) * BLOCK_C, C, tl.program_id(1), BLOCK_R, BLOCK_C, ACC)


@triton.jit
def _bn_backward_dx_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr, COUNT, ROWS, COLS, C,
    TRAINING: tl.constexpr, CHANNEL_ON_ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr, ACC: tl.constexpr,
):
    """Grid and channel mapping as :func:`_bn_normalize_kernel`. dx = scale (dz - a - xhat b) with
    a = sum_dz / COUNT, b = sum_dz_xhat / COUNT in training, dx = scale dz in eval."""
    offs, mask, ch, chmask, _ = _run_tile(tl.program_id(0), tl.program_id(1), ROWS, COLS, C, 0, C, CHANNEL_ON_ROWS,
                                          BLOCK_R, BLOCK_COL)
    mean, invstd, scale, shift = _tile_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, chmask, CHANNEL_ON_ROWS, ACC)
    if TRAINING:
        inv_n = 1 / tl.cast(COUNT, ACC)
        a = _along(tl.load(sdz_ptr + ch, mask=chmask, other=0).to(ACC) * inv_n, CHANNEL_ON_ROWS)
        bc = _along(tl.load(sdzx_ptr + ch, mask=chmask, other=0).to(ACC) * inv_n, CHANNEL_ON_ROWS)
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    g = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
    dz = _swish_grad(g, v * scale + shift)
    if TRAINING:
        dz = dz - a - (v - mean) * invstd * bc
    tl.store(dx_ptr + offs, (dz * scale).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _train_stats(mean, m2, n, eps, ch, chmask, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, momentum, unbiased,
                 HAS_RUNNING: tl.constexpr, ACC: tl.constexpr):
    """invstd = 1 / sqrt(M2 / n + eps) (square root correctly rounded: ``sqrt_rn`` takes float32 only;
    float64 ``sqrt`` rounds correctly); stores mean and invstd of channels ``ch`` and, with
    HAS_RUNNING, r <- (1 - momentum) r + momentum s for s = mean and var * unbiased (unbiased = n / (n - 1))."""
    var = m2 / n
    if ACC == tl.float64:
        invstd = 1.0 / tl.sqrt(var + eps)
    else:
        invstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(mean_ptr + ch, mean, mask=chmask)
    tl.store(invstd_ptr + ch, invstd, mask=chmask)
    if HAS_RUNNING:
        rm = tl.load(rm_ptr + ch, mask=chmask, other=0).to(ACC)
        rv = tl.load(rv_ptr + ch, mask=chmask, other=0).to(ACC)
        tl.store(rm_ptr + ch, (1 - momentum) * rm + momentum * mean, mask=chmask)
        tl.store(rv_ptr + ch, (1 - momentum) * rv + momentum * (var * unbiased), mask=chmask)
    return invstd


@triton.jit
def _bn_train_forward_nchw_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, N, C, HW, eps, momentum, unbiased,
    BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, HAS_RUNNING: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (C,). Program c loads channel c's whole N x HW slice (BLOCK_N >= N, BLOCK_HW >= HW), stores
    mean_c = E[x], invstd_c = 1 / sqrt(E[(x - mean_c)^2] + eps), updates the running statistics (see
    :func:`_train_stats`) and y = silu(weight_c (x - mean_c) invstd_c + bias_c)."""
    c = tl.program_id(0)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_HW)
    mask = (rows < N)[:, None] & (cols < HW)[None, :]
    offs = c * HW + rows[:, None] * (C * HW) + cols[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    n = tl.cast(N * HW, ACC)
    mean, d, m2 = _centre(v, mask, n, None)
    invstd = _train_stats(mean, m2, n, eps, c, True, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, momentum, unbiased,
                          HAS_RUNNING, ACC)
    w = tl.load(w_ptr + c).to(ACC)
    b = tl.load(b_ptr + c).to(ACC)
    z = d * (w * invstd) + b
    tl.store(y_ptr + offs, (z * tl.sigmoid(z)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_train_forward_nhwc_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, R, C, eps, momentum, unbiased,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HAS_RUNNING: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C),) over the (R = N*H*W) x C matrix, BLOCK_R >= R. Program j does what the
    NCHW one does for channels j*BLOCK_C + [0, BLOCK_C), reducing its tile along the rows."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    n = tl.cast(R, ACC)
    mean, d, m2 = _centre(v, mask, n, 0)
    invstd = _train_stats(mean, m2, n, eps, cols, cmask, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, momentum, unbiased,
                          HAS_RUNNING, ACC)
    w = tl.load(w_ptr + cols, mask=cmask, other=0).to(ACC)
    b = tl.load(b_ptr + cols, mask=cmask, other=0).to(ACC)
    z = d * (w * invstd)[None, :] + b[None, :]
    tl.store(y_ptr + offs, (z * tl.sigmoid(z)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _train_normalize_tile(
    x_ptr, y_ptr, part_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, ti, tj, ROWS, COLS, C, C0, RUN,
    SPLIT, eps, momentum, unbiased,
    CHANNEL_ON_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr, HAS_RUNNING: tl.constexpr,
    ACC: tl.constexpr,
):
    """Second pass of the two-pass training forward on tile (ti, tj) (:func:`_run_tile`) of the run of
    channels [C0, C0 + RUN): merges its channels' partial statistics (:func:`_merge_stats`), writes
    y = silu(weight (x - mean) invstd + bias) and, for the channels whose first element it holds, mean,
    invstd and the running statistics (:func:`_train_stats`)."""
    offs, mask, ch, chmask, first = _run_tile(ti, tj, ROWS, COLS, C, C0, RUN, CHANNEL_ON_ROWS, BLOCK_R, BLOCK_COL)
    n, mean, m2 = _merge_stats(part_ptr, ch, chmask, C, SPLIT, ACC)
    invstd = _train_stats(mean, m2, n, eps, ch, first, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, momentum, unbiased,
                          HAS_RUNNING, ACC)
    scale = tl.load(w_ptr + ch, mask=chmask, other=0).to(ACC) * invstd
    shift = tl.load(b_ptr + ch, mask=chmask, other=0).to(ACC) - mean * scale
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    z = v * _along(scale, CHANNEL_ON_ROWS) + _along(shift, CHANNEL_ON_ROWS)
    tl.store(y_ptr + offs, (z * tl.sigmoid(z)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _train_backward_dx_tile(
    dy_ptr, x_ptr, dx_ptr, part_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr, inv_count,
    ti, tj, ROWS, COLS, C, C0, RUN, SPLIT,
    TRAINING: tl.constexpr, CHANNEL_ON_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr,
    ACC: tl.constexpr,
):
    """Second pass of the two-pass backward on tile (ti, tj) of the run of channels [C0, C0 + RUN): adds
    its channels' SPLIT partial sums (in order, read past L1), writes dx and, for the channels whose first
    element it holds, sum dz and sum dz xhat."""
    offs, mask, ch, chmask, first = _run_tile(ti, tj, ROWS, COLS, C, C0, RUN, CHANNEL_ON_ROWS, BLOCK_R, BLOCK_COL)
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, w_ptr, b_ptr, ch, chmask, ACC)
    sdz = tl.zeros(ch.shape, ACC)
    sdzx = tl.zeros(ch.shape, ACC)
    for s in range(0, SPLIT):
        sdz += tl.load(part_ptr + s * C + ch, mask=chmask, other=0, cache_modifier=".cg")
        sdzx += tl.load(part_ptr + (SPLIT + s) * C + ch, mask=chmask, other=0, cache_modifier=".cg")
    tl.store(sdz_ptr + ch, sdz, mask=first)
    tl.store(sdzx_ptr + ch, sdzx, mask=first)
    v = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    g = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
    dz = _swish_grad(g, v * _along(scale, CHANNEL_ON_ROWS) + _along(shift, CHANNEL_ON_ROWS))
    if TRAINING:
        xhat = (v - _along(mean, CHANNEL_ON_ROWS)) * _along(invstd, CHANNEL_ON_ROWS)
        dz = dz - _along(sdz * inv_count, CHANNEL_ON_ROWS) - xhat * _along(sdzx * inv_count, CHANNEL_ON_ROWS)
    tl.store(dx_ptr + offs, (dz * _along(scale, CHANNEL_ON_ROWS)).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _two_pass_ticket(counters_ptr, N, C, HW, RUN, SPLIT, PER_RUN, CHANNEL_ON_ROWS: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr):
    """This program's work in the two-pass schedule: it takes the next ticket t (:mod:`._tickets`); tickets run
    over runs of RUN channels (PER_RUN tickets per whole run), each run's first-pass programs (the
    reduction: SPLIT per channel, NCHW, or per BLOCK_B channels, NHWC) before its second-pass ones (the
    element-wise tiles of :func:`_run_tile`). Returns (run, c0, channels of the run, first-pass programs
    of the run, second pass?, first-pass channel index j and split s, second-pass tile (ti, tj), ROWS)."""
    t = _tickets.claim(counters_ptr)
    run = t // PER_RUN
    local = t - run * PER_RUN
    c0 = run * RUN
    channels = tl.minimum(RUN, C - c0)
    if CHANNEL_ON_ROWS:
        groups = channels
        rows = N * channels
        col_tiles = tl.cdiv(HW, BLOCK_COL)
    else:
        groups = tl.cdiv(channels, BLOCK_B)
        rows = N * HW
        col_tiles = tl.cdiv(channels, BLOCK_COL)
    firsts = groups * SPLIT
    second = local >= firsts
    m = local - firsts
    return run, c0, channels, firsts, second, local % groups, local // groups, m // col_tiles, m % col_tiles, rows


@triton.jit
def _bn_train_forward_two_pass_kernel(
    x_ptr, y_ptr, part_ptr, counters_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr,
    N, C, HW, RUN, SPLIT, PER_RUN, TOTAL, RUNS, eps, momentum, unbiased,
    CHANNEL_ON_ROWS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_COL: tl.constexpr, HAS_RUNNING: tl.constexpr, ACC: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """The two-pass training forward in one launch of TOTAL programs (:func:`_two_pass_ticket`): first
    passes store the partial statistics of their channel (block) and split (:func:`_stats_nchw`,
    :func:`_stats_nhwc`, tile BLOCK_A x BLOCK_B), second passes wait for their run's first passes and run
    :func:`_train_normalize_tile`. ``counters`` (:mod:`._tickets`: ticket, finished, one count per run of
    first passes done; 2 + RUNS int32) are zero on entry and on exit."""
    run, c0, channels, firsts, second, j, s, ti, tj, rows = _two_pass_ticket(
        counters_ptr, N, C, HW, RUN, SPLIT, PER_RUN, CHANNEL_ON_ROWS, BLOCK_B, BLOCK_R, BLOCK_COL)
    if second:
        _tickets.wait_count(counters_ptr, 2 + run, firsts, INTERPRETED)
        _train_normalize_tile(
            x_ptr, y_ptr, part_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, ti, tj, rows,
            HW if CHANNEL_ON_ROWS else C, C, c0, channels, SPLIT, eps, momentum, unbiased,
            CHANNEL_ON_ROWS, BLOCK_R, BLOCK_COL, HAS_RUNNING, ACC)
    else:
        if CHANNEL_ON_ROWS:
            _stats_nchw(x_ptr, part_ptr, N, C, HW, SPLIT, c0 + j, s, BLOCK_A, BLOCK_B, ACC)
        else:
            _stats_nhwc(x_ptr, part_ptr, N * HW, C, SPLIT, c0 + j * BLOCK_B, c0 + channels, s, BLOCK_A, BLOCK_B, ACC)
        _tickets.add_count(counters_ptr + 2 + run)
    _tickets.finish(counters_ptr, TOTAL, 2 + RUNS)


@triton.jit
def _bn_backward_two_pass_kernel(
    dy_ptr, x_ptr, dx_ptr, part_ptr, counters_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr,
    inv_count, N, C, HW, RUN, SPLIT, PER_RUN, TOTAL, RUNS,
    TRAINING: tl.constexpr, CHANNEL_ON_ROWS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr, ACC: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """The two-pass backward in one launch, scheduled as :func:`_bn_train_forward_two_pass_kernel`: first
    passes store partial sums (:func:`_backward_sums_nchw`, :func:`_backward_sums_nhwc`), second passes run
    :func:`_train_backward_dx_tile`."""
    run, c0, channels, firsts, second, j, s, ti, tj, rows = _two_pass_ticket(
        counters_ptr, N, C, HW, RUN, SPLIT, PER_RUN, CHANNEL_ON_ROWS, BLOCK_B, BLOCK_R, BLOCK_COL)
    if second:
        _tickets.wait_count(counters_ptr, 2 + run, firsts, INTERPRETED)
        _train_backward_dx_tile(
            dy_ptr, x_ptr, dx_ptr, part_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr, inv_count,
            ti, tj, rows, HW if CHANNEL_ON_ROWS else C, C, c0, channels, SPLIT,
            TRAINING, CHANNEL_ON_ROWS, BLOCK_R, BLOCK_COL, ACC)
    else:
        if CHANNEL_ON_ROWS:
            _backward_sums_nchw(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, N, C, HW, SPLIT,
                                c0 + j, s, BLOCK_A, BLOCK_B, ACC)
        else:
            _backward_sums_nhwc(dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, part_ptr, N * HW, C, SPLIT,
                                c0 + j * BLOCK_B, c0 + channels, s, BLOCK_A, BLOCK_B, ACC)
        _tickets.add_count(counters_ptr + 2 + run)
    _tickets.finish(counters_ptr, TOTAL, 2 + RUNS)


@triton.jit
def _one_read_backward(dy, x, mask, mean, invstd, w, b, sdz_ptr, sdzx_ptr, ch, chmask, inv_count,
                       AXIS: tl.constexpr, TRAINING: tl.constexpr):
    """dx of a tile that holds whole channel slices (dy, x in acc, 0 outside ``mask``; per-channel
    operands broadcast against the tile), storing sum dz and sum dz xhat (reduced along AXIS) of
    channels ``ch``."""
    xhat = tl.where(mask, (x - mean) * invstd, 0)
    dz = tl.where(mask, _swish_grad(dy, xhat * w + b), 0)
    sdz = tl.sum(dz, AXIS)
    sdzx = tl.sum(dz * xhat, AXIS)
    tl.store(sdz_ptr + ch, sdz, mask=chmask)
    tl.store(sdzx_ptr + ch, sdzx, mask=chmask)
    if TRAINING:
        if AXIS is None:
            dz = dz - sdz * inv_count - xhat * (sdzx * inv_count)
        else:
            dz = dz - (sdz * inv_count)[None, :] - xhat * (sdzx * inv_count)[None, :]
    return dz * (w * invstd)


@triton.jit
def _bn_backward_one_read_nchw_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr, N, C, HW, inv_count,
    TRAINING: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (C,). Program c loads channel c's whole N x HW slice of dy and x once, stores
    sum dz and sum dz xhat and dx = weight invstd (dz - sum dz / n - xhat sum dz xhat / n) (TRAINING;
    else weight invstd dz), with inv_count = 1 / n."""
    c = tl.program_id(0)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_HW)
    mask = (rows < N)[:, None] & (cols < HW)[None, :]
    offs = c * HW + rows[:, None] * (C * HW) + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
    mean = tl.load(mean_ptr + c).to(ACC)
    invstd = tl.load(invstd_ptr + c).to(ACC)
    w = tl.load(w_ptr + c).to(ACC)
    b = tl.load(b_ptr + c).to(ACC)
    dx = _one_read_backward(dy, x, mask, mean, invstd, w, b, sdz_ptr, sdzx_ptr, c, True, inv_count, None, TRAINING)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_backward_one_read_nhwc_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sdz_ptr, sdzx_ptr, R, C, inv_count,
    TRAINING: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C),) over the (R = N*H*W) x C matrices, BLOCK_R >= R: the NCHW kernel for
    channels j*BLOCK_C + [0, BLOCK_C)."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0).to(ACC)
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
    invstd = tl.load(invstd_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
    w = tl.load(w_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
    b = tl.load(b_ptr + cols, mask=cmask, other=0).to(ACC)[None, :]
    dx = _one_read_backward(dy, x, mask, mean, invstd, w, b, sdz_ptr, sdzx_ptr, cols, cmask, inv_count, 0, TRAINING)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------ host wrappers


def supports(x):
    """``None`` when the kernels can run ``x``, else the reason (its size beyond int32 indexing)."""
    return _host.too_large(x)


def _matrix(x: torch.Tensor, layout: str):
    """(rows, cols, channel_on_rows, max_cols) of the layout's row-major matrix view of ``x``."""
    n, c, h, w = x.shape
    if layout == _host.NCHW:
        return n * c, h * w, True, MAX_COLS_NCHW
    return n * h * w, c, False, MAX_COLS_NHWC


def _reduce_plan(x: torch.Tensor, layout: str, channels: int | None = None, max_cols: int = MAX_COLS_NHWC):
    """Tile, grid and split of the per-channel reductions over ``channels`` channels (all of x's by
    default; NHWC tiles at most ``max_cols`` of them wide): (block_a, block_b, grid, split)."""
    n, c, h, w = x.shape
    channels = c if channels is None else channels
    if layout == _host.NCHW:
        block_n, block_hw = _host.tile(n, h * w, MAX_COLS_NCHW)
        tiles = triton.cdiv(n, block_n) * triton.cdiv(h * w, block_hw)
        split = _host.split(x.device, channels, tiles)
        return block_n, block_hw, (channels, split), split
    rows = n * h * w
    block_r, block_c = _host.tile(rows, channels, max_cols)
    channel_blocks = triton.cdiv(channels, block_c)
    split = _host.split(x.device, channel_blocks, triton.cdiv(rows, block_r))
    return block_r, block_c, (channel_blocks, split), split


def _runs(x: torch.Tensor, layout: str, inputs: int) -> tuple[int, int]:
    """(channels per run, NHWC tile width) of the two-pass training plans over dense x with ``inputs``
    inputs (1: x; 2: dy and x): each run's inputs take at most :func:`._host.half_l2_bytes`, so that its
    second pass finds them in L2; at least one channel (NCHW) or one tile of a power of two of them (NHWC),
    runs of NHWC tiles a multiple of the tile width."""
    n, c, h, w = x.shape
    fit = max(1, _host.half_l2_bytes(x.device) // (inputs * n * h * w * x.element_size()))
    if fit >= c:
        return c, MAX_COLS_NHWC
    if layout == _host.NCHW:
        return fit, MAX_COLS_NHWC
    width = min(MAX_COLS_NHWC, 1 << (fit.bit_length() - 1))
    return fit // width * width, width


def _stat_partials(x, layout, reduce, part):
    """The statistics launch over dense, non-empty x (``reduce``:
    :func:`_reduce_plan`'s plan): each program's (count, mean, M2) per channel into part (3, split, C)."""
    n, c, h, w = x.shape
    block_a, block_b, _, split = reduce
    warps = _host.num_warps(block_a * block_b)
    if layout == _host.NCHW:
        _bn_stats_nchw_kernel[(c, split)](
            x, part, n, c, h * w, split,
            BLOCK_N=block_a, BLOCK_HW=block_b, ACC=_host.tl_acc(x.dtype), num_warps=warps,
        )
    else:
        _bn_stats_nhwc_kernel[(triton.cdiv(c, block_b), split)](
            x, part, n * h * w, c, split,
            BLOCK_R=block_a, BLOCK_C=block_b, ACC=_host.tl_acc(x.dtype), num_warps=warps,
        )


def batch_stats(x):
    """Per-channel ``(mean, var)`` of x (N, C, H, W), biased variance, both (C,) in the acc dtype."""
    x, layout = _host.dense(x)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    mean = torch.empty(c, dtype=acc, device=x.device)
    var = torch.empty(c, dtype=acc, device=x.device)
    if x.numel() == 0:
        return mean.fill_(float("nan")), var.fill_(float("nan"))
    reduce = _reduce_plan(x, layout)
    split = reduce[3]
    part = torch.empty((3, split, c), dtype=acc, device=x.device)
    _stat_partials(x, layout, reduce, part)
    block_c = min(_host.pow2(c), 1024)
    _bn_stats_finalize_kernel[(triton.cdiv(c, block_c),)](
        part, mean, var, c, split, BLOCK_C=block_c, ACC=_host.tl_acc(x.dtype), num_warps=_host.num_warps(block_c)
    )
    return mean, var


def _params(*tensors):
    """Per-channel tensors as contiguous buffers the kernels index linearly."""
    return [t.contiguous() for t in tensors]


def normalize(x, mean, invstd, weight, bias):
    """y = silu(weight (x - mean) invstd + bias), like x (dtype and dense layout)."""
    x, layout = _host.dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    rows, cols, on_rows, max_cols = _matrix(x, layout)
    block_r, block_col = _host.tile(rows, cols, max_cols)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_col))
    _bn_normalize_kernel[grid](
        x, y, *_params(mean, invstd, weight, bias), rows, cols, x.shape[1],
        CHANNEL_ON_ROWS=on_rows, BLOCK_R=block_r, BLOCK_COL=block_col, ACC=_host.tl_acc(x.dtype),
        num_warps=_host.num_warps(block_r * block_col),
    )
    return y


def backward_reduce(dy, x, mean, invstd, weight, bias):
    """Per-channel ``(sum dz, sum dz xhat)``, both (C,) in the acc dtype; deterministic."""
    x, layout = _host.dense(x)
    dy, _ = _host.dense(dy, layout)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    if x.numel() == 0:
        zeros = torch.zeros(c, dtype=acc, device=x.device)
        return zeros, zeros.clone()
    reduce = _reduce_plan(x, layout)
    split = reduce[3]
    part = torch.empty((2, split, c), dtype=acc, device=x.device)
    _backward_partials(dy, x, layout, _params(mean, invstd, weight, bias), reduce, part)
    sums = part[:, 0] if split == 1 else part.sum(dim=1)
    return sums[0], sums[1]


def _backward_partials(dy, x, layout, params, reduce, part):
    """The backward reduction over dense, non-empty dy and x (``reduce``:
    :func:`_reduce_plan`'s plan): each program's sum dz and sum dz xhat per channel into part (2, split, C)."""
    n, c, h, w = x.shape
    block_a, block_b, _, split = reduce
    warps = _host.num_warps(block_a * block_b)
    if layout == _host.NCHW:
        _bn_backward_reduce_nchw_kernel[(c, split)](
            dy, x, *params, part, n, c, h * w, split,
            BLOCK_N=block_a, BLOCK_HW=block_b, ACC=_host.tl_acc(x.dtype), num_warps=warps,
        )
    else:
        _bn_backward_reduce_nhwc_kernel[(triton.cdiv(c, block_b), split)](
            dy, x, *params, part, n * h * w, c, split,
            BLOCK_R=block_a, BLOCK_C=block_b, ACC=_host.tl_acc(x.dtype), num_warps=warps,
        )


def backward(dy, x, mean, invstd, weight, bias, count):
    """``(dx, sum_dz, sum_dz_xhat)``: in one launch that reads dy and x once when a channel's slices of
    both fit one program (:func:`_one_read_tile` with two inputs), else in one launch of
    :func:`_bn_backward_two_pass_kernel` (the backward reduction, then dx with the partial sums added)."""
    layout = _host.layout_of(x) or _host.NCHW
    tile = _one_read_tile(x, layout, inputs=2)
    if x.numel() == 0:
        sum_dz, sum_dz_xhat = backward_reduce(dy, x, mean, invstd, weight, bias)
        return backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count), sum_dz, sum_dz_xhat
    x, _ = _host.dense(x, layout)
    dy, _ = _host.dense(dy.to(x.dtype), layout)
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    sum_dz = torch.empty(c, dtype=mean.dtype, device=x.device)
    sum_dz_xhat = torch.empty(c, dtype=mean.dtype, device=x.device)
    params = _params(mean, invstd, weight, bias)
    inv_count = 1.0 / count if count is not None else 1.0
    if tile is None:  # two passes per run in one launch: the reduction, then dx with the partial sums added
        programs, sizes, meta, split, runs = _two_pass(x, layout, inputs=2)
        part = torch.empty((2, split, c), dtype=mean.dtype, device=x.device)
        with _host.ticket_counters(x.device, 2 + runs) as counters:
            _bn_backward_two_pass_kernel[(programs,)](
                dy, x, dx, part, counters, *params, sum_dz, sum_dz_xhat, inv_count, n, c, h * w, *sizes,
                TRAINING=count is not None, ACC=_host.tl_acc(x.dtype), **meta,
            )
        return dx, sum_dz, sum_dz_xhat
    block_a, block_b = tile
    args = (dy, x, dx, *params, sum_dz, sum_dz_xhat)
    warps = _one_read_warps(2 * block_a * block_b, acc_dtype(x.dtype))
    common = dict(TRAINING=count is not None, ACC=_host.tl_acc(x.dtype), num_warps=warps)
    if layout == _host.NCHW:
        _bn_backward_one_read_nchw_kernel[(c,)](*args, n, c, h * w, inv_count, BLOCK_N=block_a, BLOCK_HW=block_b, **common)
    else:
        _bn_backward_one_read_nhwc_kernel[(triton.cdiv(c, block_b),)](
            *args, n * h * w, c, inv_count, BLOCK_R=block_a, BLOCK_C=block_b, **common
        )
    return dx, sum_dz, sum_dz_xhat


def backward_dx(dy, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count):
    """dx like x; ``count`` is n (training) or ``None`` (eval: the sums are ignored)."""
    x, layout = _host.dense(x)
    dy, _ = _host.dense(dy, layout)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    training = count is not None
    if not training:
        sum_dz = sum_dz_xhat = mean  # unread placeholders
    rows, cols, on_rows, max_cols = _matrix(x, layout)
    block_r, block_col = _host.tile(rows, cols, max_cols)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_col))
    _bn_backward_dx_kernel[grid](
        dy, x, dx, *_params(mean, invstd, weight, bias, sum_dz, sum_dz_xhat), int(count) if training else 1,
        rows, cols, x.shape[1],
        TRAINING=training, CHANNEL_ON_ROWS=on_rows, BLOCK_R=block_r, BLOCK_COL=block_col,
        ACC=_host.tl_acc(x.dtype), num_warps=_host.num_warps(block_r * block_col),
    )
    return dx


def _one_read_warps(elems: int, acc: torch.dtype) -> int:
    """Warps of a one-read program holding ``elems`` values in ``acc``: the usual 16 per thread for small
    tiles, 32 float32 words per thread for larger ones (16 warps at the limit). Twice as many words per
    thread (32K values) would need 16 warps of 128 registers: ptxas spills the pointers and masks."""
    words = elems * acc.itemsize // 4
    return max(_host.num_warps(elems), min(16, words // VALUES_PER_WARP))


def _one_read_limit(dtype: torch.dtype) -> int:
    """Elements of x one program of the one-read forward holds: :data:`ONE_READ_ELEMS` float32 words."""
    return ONE_READ_ELEMS * 4 // acc_dtype(dtype).itemsize


def _one_read_tile(x: torch.Tensor, layout: str, inputs: int = 1) -> tuple[int, int] | None:
    """Tile (block_a, block_b) of the one-read forward (``inputs`` = 1: x) or backward (2: dy and x) for
    ``x`` in ``layout`` (NCHW: pow2(N) x pow2(H*W); NHWC: pow2(N*H*W) x a block of channels), or ``None``
    when its ``inputs`` tiles exceed :func:`_one_read_limit`."""
    n, c, h, w = x.shape
    limit = _one_read_limit(x.dtype) // inputs
    if layout == _host.NCHW:
        block_a, block_b = _host.pow2(n), _host.pow2(h * w)
    else:
        block_a = _host.pow2(n * h * w)
        block_b = min(_host.pow2(c), max(1, SECTOR_BYTES // x.element_size()), max(1, limit // block_a))
    return (block_a, block_b) if block_a * block_b <= limit else None


def _running(t, acc):
    """A running statistic a kernel can update in place: ``t`` itself, or a copy of another dtype or
    layout (copied back afterwards)."""
    if t is None or (t.dtype == acc and t.is_contiguous()):
        return t
    return t.to(acc).contiguous()


def plan(x, backward: bool = False) -> str:
    """The plan of the training forward (``backward=False``) or backward of x: ``"one_read"`` (one
    program per channel slice, or block of channels, reads x (dy and x) once, see :func:`_one_read_tile`)
    or ``"two_pass"`` (per run of channels (:func:`_runs`), a reduction over x (dy and x), then an
    element-wise pass that reads them again)."""
    tile = _one_read_tile(x, _host.layout_of(x) or _host.NCHW, inputs=2 if backward else 1)
    return "one_read" if tile is not None and x.numel() > 0 else "two_pass"


def _two_pass(x, layout, inputs):
    """The one launch of the two-pass plan over dense, non-empty x with ``inputs`` inputs (1: x; 2: dy and
    x): ``(programs, scalars, constexprs, split, runs)`` with scalars (RUN, SPLIT, PER_RUN, TOTAL, RUNS) and
    the tiles of both passes (:func:`_two_pass_ticket`): runs of :func:`_runs`, first passes as
    :func:`_reduce_plan`, second-pass tiles sized for a whole run (the last, shorter run leaves some
    masked)."""
    n, c, h, w = x.shape
    nchw = layout == _host.NCHW
    run, width = _runs(x, layout, inputs)
    block_a, block_b, _, split = _reduce_plan(x, layout, run, width)
    rows, cols = (n * run, h * w) if nchw else (n * h * w, run)
    block_r, block_col = _host.tile(rows, cols, MAX_COLS_NCHW if nchw else width)

    def programs(channels):
        groups = channels if nchw else triton.cdiv(channels, block_b)
        rows, cols = (n * channels, h * w) if nchw else (n * h * w, channels)
        return groups * split + triton.cdiv(rows, block_r) * triton.cdiv(cols, block_col)

    runs = triton.cdiv(c, run)
    total = programs(run) * (runs - 1) + programs(c - run * (runs - 1))
    warps = max(_host.num_warps(block_a * block_b), _host.num_warps(block_r * block_col))
    meta = dict(CHANNEL_ON_ROWS=nchw, BLOCK_A=block_a, BLOCK_B=block_b, BLOCK_R=block_r, BLOCK_COL=block_col,
                INTERPRETED=_host.interpreting(), num_warps=warps)
    return total, (run, split, programs(run), total, runs), meta, split, runs


def train_forward(x, weight, bias, running_mean, running_var, momentum, eps):
    """``(y, mean, invstd)`` of the training forward, running statistics updated in place: in one read of
    x and one launch when a channel's slice fits one program (see :func:`_one_read_tile`), else in one
    launch of :func:`_bn_train_forward_two_pass_kernel` (the statistics, then y). Mean, invstd and the
    running update are computed in the kernels.

    y like x (dtype and dense layout); mean, invstd (C,) in the acc dtype, invstd = 1 / sqrt(var + eps)
    with the biased var; y = silu(weight (x - mean) invstd + bias); running_var gets var n / (n - 1).
    """
    layout = _host.layout_of(x) or _host.NCHW
    tile = _one_read_tile(x, layout)
    count = x.numel() // x.shape[1]
    if x.numel() == 0:
        mean, var = batch_stats(x)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_((var * (count / (count - 1))).to(running_var.dtype), alpha=momentum)
        invstd = torch.rsqrt(var + eps)
        return normalize(x, mean, invstd, weight, bias), mean, invstd
    x, _ = _host.dense(x, layout)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    y = torch.empty_like(x)
    mean = torch.empty(c, dtype=acc, device=x.device)
    invstd = torch.empty(c, dtype=acc, device=x.device)
    rm, rv = _running(running_mean, acc), _running(running_var, acc)
    # without running statistics the kernel leaves its pointers alone (HAS_RUNNING false)
    has_running = rm is not None and rv is not None
    if not has_running and (rm is not None or rv is not None):
        rm = rm if rm is not None else torch.empty(c, dtype=acc, device=x.device)
        rv = rv if rv is not None else torch.empty(c, dtype=acc, device=x.device)
        has_running = True
    running = (rm, rv) if has_running else (mean, invstd)
    scalars = (float(eps), float(momentum), count / (count - 1))
    if tile is None:  # two passes per run in one launch: the statistics, then y with them merged
        programs, sizes, meta, split, runs = _two_pass(x, layout, inputs=1)
        part = torch.empty((3, split, c), dtype=acc, device=x.device)
        with _host.ticket_counters(x.device, 2 + runs) as counters:
            _bn_train_forward_two_pass_kernel[(programs,)](
                x, y, part, counters, *_params(weight, bias), mean, invstd, *running, n, c, h * w, *sizes, *scalars,
                HAS_RUNNING=has_running, ACC=_host.tl_acc(x.dtype), **meta,
            )
        return _copy_back_running(running_mean, running_var, rm, rv, y, mean, invstd)
    block_a, block_b = tile
    common = dict(HAS_RUNNING=has_running, ACC=_host.tl_acc(x.dtype), num_warps=_one_read_warps(block_a * block_b, acc))
    if layout == _host.NCHW:
        _bn_train_forward_nchw_kernel[(c,)](
            x, y, *_params(weight, bias), mean, invstd, *running, n, c, h * w, *scalars,
            BLOCK_N=block_a, BLOCK_HW=block_b, **common,
        )
    else:
        _bn_train_forward_nhwc_kernel[(triton.cdiv(c, block_b),)](
            x, y, *_params(weight, bias), mean, invstd, *running, n * h * w, c, *scalars,
            BLOCK_R=block_a, BLOCK_C=block_b, **common,
        )
    return _copy_back_running(running_mean, running_var, rm, rv, y, mean, invstd)


def _copy_back_running(running_mean, running_var, rm, rv, *outputs):
    """Copy the kernel-updated running statistics rm, rv back where they are copies (see :func:`_running`);
    return ``outputs``."""
    for t, updated in ((running_mean, rm), (running_var, rv)):
        if t is not None and t is not updated:
            t.copy_(updated)
    return outputs


# ------------------------------------------------------------------------ ahead-of-time compile specs

#: The one-read kernels: their tiles are sized to the registers (the AOT test checks that none spills).
REGISTER_RESIDENT = ("_bn_train_forward_nchw_kernel", "_bn_train_forward_nhwc_kernel",
                     "_bn_backward_one_read_nchw_kernel", "_bn_backward_one_read_nhwc_kernel")


def _aot_warps(fn, args, warps):
    """The warps the host launches ``fn`` with for the tile in ``args``."""
    if fn is _bn_stats_finalize_kernel:
        return _host.num_warps(256)
    if fn.__name__ in REGISTER_RESIDENT:
        rows, cols = (args["BLOCK_N"], args["BLOCK_HW"]) if "BLOCK_N" in args else (args["BLOCK_R"], args["BLOCK_C"])
        acc = torch.float64 if args["ACC"] == tl.float64 else torch.float32
        return _one_read_warps(rows * cols * (2 if "dy_ptr" in args else 1), acc)
    return warps


def aot_specs():
    """Every kernel for each x dtype (parameters float32, or float64 with float64 x; normalize and the
    one-read forward also with parameters in x's half dtype), both layouts, training and eval, one
    full-size tile per layout; for float32 also with the integer arguments the JIT may specialise to 1
    (see :func:`._aot.ones`)."""
    specs = []
    combos = [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.float32),
              (torch.float64, torch.float64)]
    nchw_tile = {"BLOCK_N": 4, "BLOCK_HW": 1024}
    nhwc_tile = {"BLOCK_R": 32, "BLOCK_C": 128}
    warps = _host.num_warps(_host.TILE_ELEMS)
    for xdt, pdt in combos:
        acc = acc_dtype(xdt)
        x, a, p = ptr(xdt), ptr(acc), ptr(pdt)
        tacc = {"ACC": _host.TL_DTYPES[acc]}
        jobs = [
            (_bn_stats_nchw_kernel, {"x_ptr": x, "part_ptr": a, "N": "i32", "C": "i32", "HW": "i32", "SPLIT": "i32",
                                     **nchw_tile, **tacc}),
            (_bn_stats_nhwc_kernel, {"x_ptr": x, "part_ptr": a, "R": "i32", "C": "i32", "SPLIT": "i32",
                                     **nhwc_tile, **tacc}),
            (_bn_backward_reduce_nchw_kernel, {
                "dy_ptr": x, "x_ptr": x, "mean_ptr": a, "invstd_ptr": a, "w_ptr": p, "b_ptr": p, "part_ptr": a,
                "N": "i32", "C": "i32", "HW": "i32", "SPLIT": "i32", **nchw_tile, **tacc}),
            (_bn_backward_reduce_nhwc_kernel, {
                "dy_ptr": x, "x_ptr": x, "mean_ptr": a, "invstd_ptr": a, "w_ptr": p, "b_ptr": p, "part_ptr": a,
                "R": "i32", "C": "i32", "SPLIT": "i32", **nhwc_tile, **tacc}),
        ]
        param_dtypes = [pdt] if xdt == pdt else [pdt, xdt]
        schedule = {"counters_ptr": ptr(torch.int32), "N": "i32", "C": "i32", "HW": "i32", "RUN": "i32", "SPLIT": "i32",
                    "PER_RUN": "i32", "TOTAL": "i32", "RUNS": "i32"}
        for on_rows, (br, bc) in ((True, (4, 1024)), (False, (32, 128))):
            tiles = {"CHANNEL_ON_ROWS": on_rows, "BLOCK_R": br, "BLOCK_COL": bc, **tacc}
            two_pass = {**schedule, **tiles, "BLOCK_A": br, "BLOCK_B": bc, "INTERPRETED": False}
            for q in param_dtypes:
                jobs.append((_bn_normalize_kernel, {
                    "x_ptr": x, "y_ptr": x, "mean_ptr": a, "invstd_ptr": a, "w_ptr": ptr(q), "b_ptr": ptr(q),
                    "ROWS": "i32", "COLS": "i32", "C": "i32", **tiles}))
                for has_running in (True, False):
                    jobs.append((_bn_train_forward_two_pass_kernel, {
                        "x_ptr": x, "y_ptr": x, "part_ptr": a, "w_ptr": ptr(q), "b_ptr": ptr(q), "mean_ptr": a,
                        "invstd_ptr": a, "rm_ptr": a, "rv_ptr": a, "eps": "fp32", "momentum": "fp32", "unbiased": "fp32",
                        "HAS_RUNNING": has_running, **two_pass}))
            for training in (True, False):
                jobs.append((_bn_backward_dx_kernel, {
                    "dy_ptr": x, "x_ptr": x, "dx_ptr": x, "mean_ptr": a, "invstd_ptr": a, "w_ptr": p, "b_ptr": p,
                    "sdz_ptr": a, "sdzx_ptr": a, "COUNT": "i32", "ROWS": "i32", "COLS": "i32", "C": "i32",
                    "TRAINING": training, **tiles}))
                jobs.append((_bn_backward_two_pass_kernel, {
                    "dy_ptr": x, "x_ptr": x, "dx_ptr": x, "part_ptr": a, "mean_ptr": a, "invstd_ptr": a, "w_ptr": p,
                    "b_ptr": p, "sdz_ptr": a, "sdzx_ptr": a, "inv_count": "fp32", "TRAINING": training, **two_pass}))
        limit, sector = _one_read_limit(xdt), SECTOR_BYTES // xdt.itemsize  # the largest one-read tiles
        for q in param_dtypes:
            for has_running in (True, False):
                common = {"x_ptr": x, "y_ptr": x, "w_ptr": ptr(q), "b_ptr": ptr(q), "mean_ptr": a,
                          "invstd_ptr": a, "rm_ptr": a, "rv_ptr": a, "C": "i32", "eps": "fp32",
                          "momentum": "fp32", "unbiased": "fp32", "HAS_RUNNING": has_running, **tacc}
                jobs += [
                    (_bn_train_forward_nchw_kernel,
                     {**common, "N": "i32", "HW": "i32", "BLOCK_N": limit // 1024, "BLOCK_HW": 1024}),
                    (_bn_train_forward_nhwc_kernel,
                     {**common, "R": "i32", "BLOCK_R": limit // sector, "BLOCK_C": sector}),
                ]
        for training in (True, False):
            common = {"dy_ptr": x, "x_ptr": x, "dx_ptr": x, "mean_ptr": a, "invstd_ptr": a, "w_ptr": p, "b_ptr": p,
                      "sdz_ptr": a, "sdzx_ptr": a, "C": "i32", "inv_count": "fp32", "TRAINING": training, **tacc}
            jobs += [
                (_bn_backward_one_read_nchw_kernel,
                 {**common, "N": "i32", "HW": "i32", "BLOCK_N": limit // 2048, "BLOCK_HW": 1024}),
                (_bn_backward_one_read_nhwc_kernel,
                 {**common, "R": "i32", "BLOCK_R": limit // 2 // sector, "BLOCK_C": sector}),
            ]
        finalize = {"part_ptr": a, "mean_ptr": a, "var_ptr": a, "C": "i32", "SPLIT": "i32", "BLOCK_C": 256, **tacc}
        if xdt in (torch.float32, torch.float64):
            jobs.append((_bn_stats_finalize_kernel, finalize))
        if xdt == torch.float32:
            jobs += [(fn, ones(args, "SPLIT")) for fn, args in jobs if "SPLIT" in args] + [
                (fn, ones(args)) for fn, args in jobs]
        specs += [aot_spec(fn, args, _aot_warps(fn, args, warps)) for fn, args in jobs]
    return specs
