"""Triton kernel set of :mod:`nvae_fast.ops.depthwise_conv2d` (contract: ``DepthwiseConv2dKernels`` there).

Math, for x (N, C, H, W), weight (C, 1, KH, KW), stride (SH, SW), padding (PH, PW), dilation (DH, DW):

    y[n, c, i, j]   = bias[c] + sum_{p, q} w[c, p, q] x[n, c, i SH - PH + p DH, j SW - PW + q DW]
    dx[n, c, h, w]  = sum_{p, q : (h + PH - p DH) % SH == 0, (w + PW - q DW) % SW == 0}
                          w[c, p, q] dy[n, c, (h + PH - p DH) / SH, (w + PW - q DW) / SW]
    dw[c, p, q]     = sum_{n, i, j} dy[n, c, i, j] x[n, c, i SH - PH + p DH, j SW - PW + q DW]
    dbias[c]        = sum_{n, i, j} dy[n, c, i, j]

(out-of-range reads are zero; accumulation in float32, float64 for float64 inputs).

Layouts. Every kernel takes the four strides of each tensor, so NCHW, channels_last and any other strided
view (slices, expanded gradients) are read in place, without a copy. A program works on a register tile of
``BLOCK_N x BLOCK_H x BLOCK_W`` pixels (flattened to the tile's first axis) by ``BLOCK_C`` channels; on a
GPU ``BLOCK_N = 1`` and

* channels_last tensors: ``BLOCK_C`` up to 64 channels, which are contiguous, so the loads of one tap are
  coalesced vectors along C, by a spatial tile 8 pixels wide (about 2048 elements in all);
* NCHW (and every other layout): ``BLOCK_C = 1``: one (n, c) plane per program, a spatial tile of up to
  1024 pixels whose rows are contiguous.

(The CPU interpreter takes whole images, several at a time, and up to 64 channels per tile instead: it
pays per operation, not per element.) Outputs (y, dx) are allocated dense in the layout of the tensor they
follow (x, respectively dy): channels_last when that tensor is channels_last (or, for a non-dense view,
when its channel stride is smaller than its width stride), NCHW otherwise.

Kernel size, stride and dilation are compile-time constants. A channels_last program (and every program
under the interpreter) stages the source pixels its tile needs once -- the tile's rows and columns times
the stride plus the halo of the taps, ``X_PIX`` rows (a power of two) by the channels -- and gathers
every tap's values from those registers (``tl.gather``), so global memory sees each source tile once
instead of once per tap (``STAGED``). An NCHW program on a GPU holds one channel of a 32 x 32 tile,
whose staged source (up to 65 x 65 pixels) would be a gather across every register of the warps (ptxas
takes minutes and the shuffles outnumber the loads); it loads each tap's values from global memory
instead: contiguous rows, the same lines for every tap, so beyond the first tap they are L1 hits and
DRAM still sees the tile about once. The forward pass loops over the
rows of taps and unrolls each row (unrolling all KH x KW taps makes 11 x 11 kernels take minutes to
compile) into a register accumulator. The input gradient at stride 1 is the correlation of dy with the
flipped taps and padding (K - 1) D - P: the forward kernel. For stride > 1 each program handles one
residue class (h % SH, w % SW) of dx pixels, for which a tap either always or never touches dy, so
skipped taps cost nothing; it reads dy tap by tap. The weight gradient gives each program a fixed chunk
of spatial tiles for one channel block; per tile it loads dy and the x tile (with the halo) once, sums
dy * x over the tile for every tap (and dy alone for the bias) into one row each of a (taps, channels)
accumulator, and writes one partial sum per (chunk, tap, channel); a second kernel adds the partials
chunk by chunk in a fixed order (with one chunk, the program writes dweight and dbias itself). There are no atomics: dweight and dbias are bit-identical from run to
run. :func:`plan` reports the launches for a convolution. Kernels up to 11 x 11 run here; larger ones fall back (``supports``).
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype

from ._aot import aot_spec, ptr
from ._host import TL_DTYPES, interpreting, num_warps, pow2, sm_count, tl_acc

__all__ = ["supports", "forward", "backward_input", "backward_weight", "plan", "aot_specs"]

MAX_KERNEL = 11  # largest unrolled kernel side
MAX_INDEX = 2**31 - 1  # offsets inside one image are int32
PIXELS_NCHW = 1024  # pixels per tile for one (n, c) plane
TILE_NHWC = 2048  # pixels x channels per channels_last tile
REDUCE_BLOCK = 1024  # columns per program of the partial-sum reduction
INTERPRETER_TILE = 16384  # pixels x channels per tile under TRITON_INTERPRET=1
WAVES = 4  # weight gradient: target programs per SM


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _tile(t, TILES_H, TILES_W, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """(image, row, column) of every pixel of tile ``t``: BLOCK_N images x BLOCK_H rows x BLOCK_W columns.

    Tiles are numbered row-major over (image blocks, TILES_H, TILES_W); the pixels of a tile likewise.
    """
    tw = t % TILES_W
    t = t // TILES_W
    th = t % TILES_H
    tn = t // TILES_H
    p = tl.arange(0, BLOCK_N * BLOCK_H * BLOCK_W)
    n = tn * BLOCK_N + p // (BLOCK_H * BLOCK_W)
    return n, th * BLOCK_H + (p // BLOCK_W) % BLOCK_H, tw * BLOCK_W + p % BLOCK_W


@triton.jit
def _source_tile(
    src_ptr, t, c, cmask, N, H, W, TILES_H, TILES_W, PAD_H, PAD_W, ssn, ssc, ssh, ssw,
    SH: tl.constexpr, SW: tl.constexpr, XH: tl.constexpr, XW: tl.constexpr, X_PIX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """The source pixels every tap of tile ``t`` reads, loaded once: XH x XW per image (the tile's rows and
    columns times the stride plus the halo of the taps), flattened to X_PIX >= BLOCK_N XH XW rows by the
    channels; zero outside the source and past BLOCK_N XH XW."""
    tw = t % TILES_W
    rest = t // TILES_W
    th = rest % TILES_H
    tn = rest // TILES_H
    s = tl.arange(0, X_PIX)
    n = tn * BLOCK_N + s // (XH * XW)
    ih = th * BLOCK_H * SH - PAD_H + (s // XW) % XH
    iw = tw * BLOCK_W * SW - PAD_W + s % XW
    ok = (s < BLOCK_N * XH * XW) & (n < N) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    off = n.to(tl.int64)[:, None] * ssn + c[None, :] * ssc + (ih * ssh + iw * ssw)[:, None]
    return tl.load(src_ptr + off, mask=ok[:, None] & cmask[None, :], other=0.0).to(ACC)


@triton.jit
def _tap(tile, base, p, q, DH: tl.constexpr, DW: tl.constexpr, XW: tl.constexpr):
    """The source values of tap (p, q) for the tile's output pixels by channel: rows ``base + p DH XW +
    q DW`` of the loaded source tile (``base``: each output pixel's tap (0, 0), broadcast over the
    channels), gathered from registers."""
    return tl.gather(tile, base + (p * DH * XW + q * DW), 0)


@triton.jit
def _tap_load(
    src_ptr, n, oh, ow, c, cmask, pmask, p, q, H, W, PAD_H, PAD_W, ssn, ssc, ssh, ssw,
    SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, ACC: tl.constexpr,
):
    """The source values of tap (p, q) for output pixels (n, oh, ow) by channel, loaded from global memory
    (zero outside the source)."""
    ih = oh * SH - PAD_H + p * DH
    iw = ow * SW - PAD_W + q * DW
    ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    off = n.to(tl.int64)[:, None] * ssn + c[None, :] * ssc + (ih * ssh + iw * ssw)[:, None]
    return tl.load(src_ptr + off, mask=ok[:, None] & cmask[None, :], other=0.0).to(ACC)


@triton.jit
def _tap_base(
    SH: tl.constexpr, SW: tl.constexpr, XH: tl.constexpr, XW: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Row of the source tile that tap (0, 0) of each output pixel of a tile reads, by channel."""
    p = tl.arange(0, BLOCK_N * BLOCK_H * BLOCK_W)
    row = (p // (BLOCK_H * BLOCK_W)) * (XH * XW) + ((p // BLOCK_W) % BLOCK_H) * SH * XW + (p % BLOCK_W) * SW
    return tl.broadcast_to(row[:, None], (BLOCK_N * BLOCK_H * BLOCK_W, BLOCK_C))


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W, HO, WO, TILES_H, TILES_W, C_BLOCKS, PAD_H, PAD_W,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, HAS_BIAS: tl.constexpr, FLIP: tl.constexpr, ACC: tl.constexpr, STAGED: tl.constexpr,
    X_PIX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One y tile: BLOCK_N x BLOCK_H x BLOCK_W output pixels by BLOCK_C channels; grid: tiles x C_BLOCKS.

    Every tap adds w[c, p, q] times its source values: gathered from the tile's source pixels (with the
    halo), loaded once, when STAGED, else loaded tap by tap. FLIP takes the taps flipped in both axes
    (the input gradient at stride 1). The rows of taps are a loop, each row is unrolled.
    """
    XH: tl.constexpr = (BLOCK_H - 1) * SH + (KH - 1) * DH + 1
    XW: tl.constexpr = (BLOCK_W - 1) * SW + (KW - 1) * DW + 1
    pid = tl.program_id(0)
    cb = pid % C_BLOCKS
    t = pid // C_BLOCKS
    n, oh, ow = _tile(t, TILES_H, TILES_W, BLOCK_N, BLOCK_H, BLOCK_W)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    pmask = (n < N) & (oh < HO) & (ow < WO)
    if STAGED:
        xt = _source_tile(x_ptr, t, c, cmask, N, H, W, TILES_H, TILES_W, PAD_H, PAD_W, sxn, sxc, sxh, sxw,
                          SH, SW, XH, XW, X_PIX, ACC, BLOCK_N, BLOCK_H, BLOCK_W)
        base = _tap_base(SH, SW, XH, XW, BLOCK_N, BLOCK_H, BLOCK_W, BLOCK_C)
    w_c = w_ptr + c * (KH * KW)
    acc = tl.zeros([BLOCK_N * BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    for p in range(KH):  # rows of taps: a loop (code size), columns: unrolled
        for q in tl.static_range(KW):
            k = (KH - 1 - p) * KW + (KW - 1 - q) if FLIP else p * KW + q
            wv = tl.load(w_c + k, mask=cmask, other=0.0)
            if STAGED:
                xv = _tap(xt, base, p, q, DH, DW, XW)
            else:
                xv = _tap_load(x_ptr, n, oh, ow, c, cmask, pmask, p, q, H, W, PAD_H, PAD_W, sxn, sxc, sxh, sxw,
                               SH, SW, DH, DW, ACC)
            acc += xv * wv.to(ACC)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)[None, :]
    y_off = n.to(tl.int64)[:, None] * syn + c[None, :] * syc + (oh * syh + ow * syw)[:, None]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _backward_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    N, C, H, W, HO, WO, TILES_H, TILES_W, C_BLOCKS, PAD_H, PAD_W,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx tile: pixels (rh + SH a, rw + SW b) for a tile of (a, b) and one residue class (rh, rw).

    Grid: images x SH*SW residue classes x tiles of the (ceil(H/SH), ceil(W/SW)) grid x C_BLOCKS.
    """
    pid = tl.program_id(0)
    cb = pid % C_BLOCKS
    t = pid // C_BLOCKS
    tiles = TILES_H * TILES_W
    r = (t // tiles) % (SH * SW)
    t = (t // tiles // (SH * SW)) * tiles + t % tiles
    rh = r // SW
    rw = r % SW
    n, a, b = _tile(t, TILES_H, TILES_W, BLOCK_N, BLOCK_H, BLOCK_W)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    ih = rh + a * SH
    iw = rw + b * SW
    pmask = (n < N) & (ih < H) & (iw < W)
    dy_img = dy_ptr + n.to(tl.int64)[:, None] * sdn + c[None, :] * sdc
    w_c = w_ptr + c * (KH * KW)
    acc = tl.zeros([BLOCK_N * BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    for p in range(KH):
        # dy row (ih + PAD_H - p DH) / SH = a + (rh + PAD_H - p DH) / SH: whole for all pixels of the class or none
        num_h = rh + PAD_H - p * DH
        if num_h % SH == 0:
            oh = a + num_h // SH
            row_ok = pmask & (oh >= 0) & (oh < HO)
            dy_row = dy_img + (oh * sdh)[:, None]
            for q in tl.static_range(KW):
                num_w = rw + PAD_W - q * DW
                if num_w % SW == 0:
                    ow = b + num_w // SW
                    ok = row_ok & (ow >= 0) & (ow < WO)
                    g = tl.load(dy_row + (ow * sdw)[:, None], mask=ok[:, None] & cmask[None, :], other=0.0)
                    wv = tl.load(w_c + (p * KW + q), mask=cmask, other=0.0)
                    acc += g.to(ACC) * wv.to(ACC)[None, :]
    dx_off = n.to(tl.int64)[:, None] * sxn + c[None, :] * sxc + (ih * sxh + iw * sxw)[:, None]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _backward_weight_kernel(
    dy_ptr, x_ptr, part_ptr, dw_ptr, db_ptr,
    N, C, H, W, HO, WO, TILES_H, TILES_W, C_BLOCKS, NUM_TILES, TILES_PER_CHUNK, PAD_H, PAD_W,
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr,
    DW: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, STAGED: tl.constexpr, X_PIX: tl.constexpr,
    TAPS_P: tl.constexpr, DIRECT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial sums over one chunk of dy tiles for one channel block; grid: chunks x C_BLOCKS. With one
    chunk (DIRECT) they are the result: written to dw (C, KH KW) and db (C,) instead of part.

    part[chunk, k, c] = sum over the chunk's pixels of dy * x(tap k) for taps k = p KW + q < KH KW (dweight)
    and of dy alone for k = KH KW (dbias, when HAS_BIAS). Each dy tile and its x tile (with the halo)
    are loaded once (STAGED; else every tap loads its x values); every tap gathers its x values from
    registers, and the tile's sums go to row k of a (TAPS_P, BLOCK_C) accumulator, written once.
    """
    XH: tl.constexpr = (BLOCK_H - 1) * SH + (KH - 1) * DH + 1
    XW: tl.constexpr = (BLOCK_W - 1) * SW + (KW - 1) * DW + 1
    TAPS: tl.constexpr = KH * KW + (1 if HAS_BIAS else 0)
    pid = tl.program_id(0)
    cb = pid % C_BLOCKS
    chunk = pid // C_BLOCKS
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    first = chunk * TILES_PER_CHUNK
    last = tl.minimum(first + TILES_PER_CHUNK, NUM_TILES)
    rows = tl.arange(0, TAPS_P)
    base = _tap_base(SH, SW, XH, XW, BLOCK_N, BLOCK_H, BLOCK_W, BLOCK_C)
    acc = tl.zeros([TAPS_P, BLOCK_C], dtype=ACC)
    for t in range(first, last):
        n, oh, ow = _tile(t, TILES_H, TILES_W, BLOCK_N, BLOCK_H, BLOCK_W)
        ok = (n < N) & (oh < HO) & (ow < WO)
        dy_off = n.to(tl.int64)[:, None] * sdn + c[None, :] * sdc + (oh * sdh + ow * sdw)[:, None]
        g = tl.load(dy_ptr + dy_off, mask=ok[:, None] & cmask[None, :], other=0.0).to(ACC)
        if STAGED:
            xt = _source_tile(x_ptr, t, c, cmask, N, H, W, TILES_H, TILES_W, PAD_H, PAD_W, sxn, sxc, sxh, sxw,
                              SH, SW, XH, XW, X_PIX, ACC, BLOCK_N, BLOCK_H, BLOCK_W)
        for k in range(KH * KW):  # a loop, not unrolled: one body of code for all taps
            if STAGED:
                xv = _tap(xt, base, k // KW, k % KW, DH, DW, XW)
            else:
                xv = _tap_load(x_ptr, n, oh, ow, c, cmask, ok, k // KW, k % KW, H, W, PAD_H, PAD_W,
                               sxn, sxc, sxh, sxw, SH, SW, DH, DW, ACC)
            s = tl.sum(g * xv, axis=0)
            acc += tl.where(rows[:, None] == k, s[None, :], 0.0)
        if HAS_BIAS:
            acc += tl.where(rows[:, None] == KH * KW, tl.sum(g, axis=0)[None, :], 0.0)
    if DIRECT:
        tl.store(dw_ptr + c[None, :] * (KH * KW) + rows[:, None], acc, mask=(rows[:, None] < KH * KW) & cmask[None, :])
        if HAS_BIAS:
            db_at = db_ptr + c[None, :] + rows[:, None] * 0
            tl.store(db_at, acc, mask=(rows[:, None] == KH * KW) & cmask[None, :])
    else:
        part = part_ptr + chunk.to(tl.int64) * (TAPS * C) + rows[:, None] * C + c[None, :]
        tl.store(part, acc, mask=(rows[:, None] < TAPS) & cmask[None, :])


@triton.jit
def _reduce_partials_kernel(
    part_ptr, dw_ptr, db_ptr, CHUNKS, C,
    TAPS_W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """dw[c, k] = sum_chunk part[chunk, k, c] (k < TAPS_W), db[c] = sum_chunk part[chunk, TAPS_W, c].

    Chunks are added in increasing order: the result does not depend on scheduling.
    """
    TAPS: tl.constexpr = TAPS_W + (1 if HAS_BIAS else 0)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = TAPS * C
    mask = idx < total
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    rows = part_ptr + idx
    for _ in range(CHUNKS):
        acc += tl.load(rows, mask=mask, other=0.0)
        rows += total
    k = idx // C
    c = idx % C
    tl.store(dw_ptr + c * TAPS_W + k, acc, mask=mask & (k < TAPS_W))
    if HAS_BIAS:
        tl.store(db_ptr + c, acc, mask=mask & (k == TAPS_W))


# -------------------------------------------------------------------------------------------- host side


def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is read (and its outputs written) channels-last; ties (C == 1, H == W == 1) are NCHW."""
    if t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    return t.stride(1) < t.stride(3)


def _empty(shape, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Uninitialised (N, C, H, W) tensor of ``like``'s dtype and device, dense in the chosen layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _span(t: torch.Tensor) -> int:
    """One past the largest offset inside one image of ``t`` (elements)."""
    return 1 + sum((s - 1) * st for s, st in zip(t.shape[1:], t.stride()[1:]))


def _indexable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when int32 offsets reach every element of an image, else a dense copy."""
    if _span(t) <= MAX_INDEX:
        return t
    return t.contiguous(memory_format=torch.channels_last if _channels_last(t) else torch.contiguous_format)


def _gpu_blocks(rows: int, cols: int, channels: int, channels_last: bool) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_H, BLOCK_W, BLOCK_C) on a GPU: one image's pixels by a block of channels.

    channels_last: up to 64 contiguous channels by an 8-wide spatial tile of about 2048 elements in all;
    otherwise one channel by a spatial tile of up to 1024 pixels whose rows are contiguous.
    """
    if channels_last:
        bc = min(64, pow2(channels))
        bw = min(8, pow2(cols))
        return 1, min(pow2(rows), max(1, TILE_NHWC // (bc * bw))), bw, bc
    bw = min(64, pow2(cols))
    return 1, min(pow2(rows), max(1, PIXELS_NCHW // bw)), bw, 1


def _plan(n: int, rows: int, cols: int, channels: int, channels_last: bool) -> dict:
    """Tile sizes and tile counts over an (n, rows, cols) pixel grid of ``channels`` channels.

    The CPU interpreter runs programs one after another at a large fixed cost per operation, so there a
    tile holds whole images (several of them when they are small) and up to 64 channels, whatever the
    layout; the kernels are the same.
    """
    if interpreting():
        bc = min(64, pow2(channels))
        bw = pow2(cols)
        bh = min(pow2(rows), max(1, INTERPRETER_TILE // (bc * bw)))
        bn = min(pow2(n), max(1, INTERPRETER_TILE // (bc * bw * bh)))
    else:
        bn, bh, bw, bc = _gpu_blocks(rows, cols, channels, channels_last)
    return dict(
        tiles=(triton.cdiv(n, bn), triton.cdiv(rows, bh), triton.cdiv(cols, bw)),
        c_blocks=triton.cdiv(channels, bc),
        meta=dict(BLOCK_N=bn, BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc, num_warps=num_warps(bn * bh * bw * bc)),
    )


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _weight_taps(weight: torch.Tensor) -> torch.Tensor:
    """weight (C, 1, KH, KW) as a contiguous (C, KH*KW) matrix (a view when it already is contiguous)."""
    return weight.reshape(weight.shape[0], -1).contiguous()


def supports(x, weight, stride, padding, dilation):
    """``None`` when the Triton kernels run this convolution, else the reason they do not."""
    kh, kw = weight.shape[2:]
    if max(kh, kw) > MAX_KERNEL:
        return f"kernel size {kh}x{kw} is larger than the unrolled maximum {MAX_KERNEL}x{MAX_KERNEL}"
    ho = _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
    wo = _out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
    if _span(x) > MAX_INDEX or x.shape[1] * max(ho * wo, x.shape[2] * x.shape[3]) > MAX_INDEX:
        return f"one image of x {tuple(x.shape)} (or of y) has more than 2**31 - 1 elements (int32 offsets)"
    return None


def _geometry(kernel_hw, stride, padding, dilation) -> tuple[dict, tuple[int, int]]:
    """The compile-time constants (kernel size, stride, dilation) and the padding pair."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_hw, stride, padding, dilation
    return dict(KH=int(kh), KW=int(kw), SH=int(sh), SW=int(sw), DH=int(dh), DW=int(dw)), (int(ph), int(pw))


def _staging(meta: dict, consts: dict, staged: bool) -> dict:
    """STAGED and X_PIX of a tile: the staged source of X_PIX rows, or tap-by-tap loads (X_PIX unused, 1).
    Staged: channels_last tiles, and every tile under the interpreter; not: a GPU's NCHW tiles."""
    return dict(STAGED=staged, X_PIX=_source_pixels(meta, consts) if staged else 1)


def _source_pixels(meta: dict, consts: dict) -> int:
    """X_PIX: the rows of a tile's loaded source (BLOCK_N images of XH x XW pixels, see _source_tile), a
    power of two."""
    xh = (meta["BLOCK_H"] - 1) * consts["SH"] + (consts["KH"] - 1) * consts["DH"] + 1
    xw = (meta["BLOCK_W"] - 1) * consts["SW"] + (consts["KW"] - 1) * consts["DW"] + 1
    return pow2(meta["BLOCK_N"] * xh * xw)


def _forward_plan(n: int, c: int, ho: int, wo: int, channels_last: bool, consts: dict) -> dict:
    """The launch of _forward_kernel over an (n, c, ho, wo) output (forward, or the input gradient at
    stride 1): :func:`_plan`'s tiles, STAGED and X_PIX in its meta, and the grid."""
    plan = _plan(n, ho, wo, c, channels_last)
    plan["meta"].update(_staging(plan["meta"], consts, channels_last or interpreting()))
    plan.update(kernel="_forward_kernel", grid=(math.prod(plan["tiles"]) * plan["c_blocks"],))
    return plan


def _residue_plan(n: int, c: int, h: int, w: int, channels_last: bool, consts: dict) -> dict:
    """The launch of _backward_input_kernel (stride > 1): tiles of one residue class (h % SH, w % SW),
    which has at most ceil(H / SH) x ceil(W / SW) pixels, for every class."""
    sh, sw = consts["SH"], consts["SW"]
    plan = _plan(n, triton.cdiv(h, sh), triton.cdiv(w, sw), c, channels_last)
    plan.update(kernel="_backward_input_kernel", grid=(math.prod(plan["tiles"]) * sh * sw * plan["c_blocks"],))
    return plan


def _weight_plan(n: int, c: int, ho: int, wo: int, channels_last: bool, consts: dict, taps: int, device) -> dict:
    """The launches of the weight gradient: _backward_weight_kernel over chunks of dy tiles (STAGED, X_PIX,
    TAPS_P and DIRECT in its meta) and, with more than one chunk, _reduce_partials_kernel over the taps x c
    partial sums (``reduce_grid``; None with one chunk, whose program writes dweight and dbias itself)."""
    plan = _plan(n, ho, wo, c, channels_last)
    num_tiles = math.prod(plan["tiles"])
    chunks, per_chunk = _chunks(num_tiles, plan["c_blocks"], device)
    staging = _staging(plan["meta"], consts, channels_last or interpreting())
    plan["meta"].update(staging, TAPS_P=pow2(taps), DIRECT=chunks == 1)
    reduce_grid = (triton.cdiv(taps * c, REDUCE_BLOCK),) if chunks > 1 else None
    plan.update(kernel="_backward_weight_kernel", num_tiles=num_tiles, chunks=chunks, tiles_per_chunk=per_chunk,
                grid=(chunks * plan["c_blocks"],), reduce_grid=reduce_grid)
    return plan


def _correlate(src, taps, bias, out, pad, consts, flip):
    """out = the correlation of src with the taps (flipped in both axes when ``flip``) plus bias, as the
    forward pass computes it; out's spatial size, the padding pair ``pad`` and consts give the geometry."""
    n, c, h, w = src.shape
    ho, wo = out.shape[2:]
    plan = _forward_plan(n, c, ho, wo, _channels_last(out), consts)
    _, tiles_h, tiles_w = plan["tiles"]
    _forward_kernel[plan["grid"]](
        src, taps, taps if bias is None else bias, out,
        n, c, h, w, ho, wo, tiles_h, tiles_w, plan["c_blocks"], pad[0], pad[1],
        *src.stride(), *out.stride(),
        **consts, HAS_BIAS=bias is not None, FLIP=flip, ACC=tl_acc(src.dtype), **plan["meta"],
    )


def _flipped_padding(consts: dict, ph: int, pw: int) -> tuple[int, int]:
    """The padding of the input gradient at stride 1 as a correlation of dy: (K - 1) D - P per axis."""
    return (consts["KH"] - 1) * consts["DH"] - ph, (consts["KW"] - 1) * consts["DW"] - pw


def forward(x, weight, bias, stride, padding, dilation):
    """y = depthwise conv of x (N, C, H, W) with weight (C, 1, KH, KW) (+ bias); y in x's dtype and layout."""
    x = _indexable(x)
    n, c, h, w = x.shape
    consts, (ph, pw) = _geometry(weight.shape[2:], stride, padding, dilation)
    ho = _out_size(h, consts["KH"], consts["SH"], ph, consts["DH"])
    wo = _out_size(w, consts["KW"], consts["SW"], pw, consts["DW"])
    y = _empty((n, c, ho, wo), x, _channels_last(x))
    if y.numel() == 0:
        return y
    _correlate(x, _weight_taps(weight), bias, y, (ph, pw), consts, flip=False)
    return y


def backward_input(dy, weight, input_hw, stride, padding, dilation):
    """dx (N, C, H, W), input_hw = (H, W): the transposed convolution of dy; dx in dy's dtype and layout.

    Stride 1: the correlation of dy with the flipped taps (the forward kernel); larger strides: one
    program per tile of a residue class of dx pixels."""
    dy = _indexable(dy)
    n, c, ho, wo = dy.shape
    h, w = (int(s) for s in input_hw)
    consts, (ph, pw) = _geometry(weight.shape[2:], stride, padding, dilation)
    channels_last = _channels_last(dy)
    dx = _empty((n, c, h, w), dy, channels_last)
    if dx.numel() == 0:
        return dx
    if (consts["SH"], consts["SW"]) == (1, 1):
        _correlate(dy, _weight_taps(weight), None, dx, _flipped_padding(consts, ph, pw), consts, flip=True)
        return dx
    plan = _residue_plan(n, c, h, w, channels_last, consts)
    _, tiles_h, tiles_w = plan["tiles"]
    _backward_input_kernel[plan["grid"]](
        dy, _weight_taps(weight), dx,
        n, c, h, w, ho, wo, tiles_h, tiles_w, plan["c_blocks"], ph, pw,
        *dy.stride(), *dx.stride(),
        **consts, ACC=tl_acc(dy.dtype), **plan["meta"],
    )
    return dx


def _chunks(num_tiles: int, c_blocks: int, device: torch.device) -> tuple[int, int]:
    """(chunks, tiles per chunk) for the weight gradient: about WAVES programs per SM in all.

    Depends on the shape and the device only, so the summation order is the same in every run.
    """
    want = max(1, min(num_tiles, triton.cdiv(WAVES * sm_count(device), c_blocks)))
    per_chunk = triton.cdiv(num_tiles, want)
    return triton.cdiv(num_tiles, per_chunk), per_chunk


def backward_weight(dy, x, kernel_hw, stride, padding, dilation, with_bias):
    """(dweight (C, 1, KH, KW), dbias (C,) or None) in the accumulation dtype; bit-identical across runs."""
    dy, x = _indexable(dy), _indexable(x)
    n, c, h, w = x.shape
    ho, wo = dy.shape[2:]
    consts, (ph, pw) = _geometry(tuple(kernel_hw), stride, padding, dilation)
    acc = acc_dtype(x.dtype)
    taps_w = consts["KH"] * consts["KW"]
    taps = taps_w + (1 if with_bias else 0)
    if dy.numel() == 0:
        dbias = torch.zeros(c, dtype=acc, device=x.device) if with_bias else None
        return torch.zeros((c, 1, consts["KH"], consts["KW"]), dtype=acc, device=x.device), dbias
    # every element is written: by the one chunk's programs, or by the reduction
    dweight = torch.empty((c, 1, consts["KH"], consts["KW"]), dtype=acc, device=x.device)
    dbias = torch.empty(c, dtype=acc, device=x.device) if with_bias else None
    plan = _weight_plan(n, c, ho, wo, _channels_last(x), consts, taps, x.device)
    _, tiles_h, tiles_w = plan["tiles"]
    direct = plan["reduce_grid"] is None
    part = dweight if direct else torch.empty((plan["chunks"], taps, c), dtype=acc, device=x.device)
    _backward_weight_kernel[plan["grid"]](
        dy, x, part, dweight, dweight if dbias is None else dbias,
        n, c, h, w, ho, wo, tiles_h, tiles_w, plan["c_blocks"], plan["num_tiles"], plan["tiles_per_chunk"], ph, pw,
        *dy.stride(), *x.stride(),
        **consts, HAS_BIAS=with_bias, ACC=TL_DTYPES[acc], **plan["meta"],
    )
    if direct:
        return dweight, dbias
    _reduce_partials_kernel[plan["reduce_grid"]](
        part, dweight, dweight if dbias is None else dbias, plan["chunks"], c,
        TAPS_W=taps_w, HAS_BIAS=with_bias, BLOCK=REDUCE_BLOCK, num_warps=4,
    )
    return dweight, dbias


def plan(x, weight, stride, padding, dilation):
    """The launches of the Triton kernels for this convolution (the arguments of :func:`forward`; dy is
    taken to have x's layout; the weight gradient with a bias gradient):
    ``{"forward": ..., "backward_input": ..., "backward_weight": ...}``, each a dict with the kernel's
    name, its ``tiles`` (image blocks, rows, columns), ``c_blocks``, ``meta`` (block sizes, X_PIX: the
    rows of a tile's loaded source, num_warps) and ``grid``; the weight gradient adds its ``chunks`` of
    ``tiles_per_chunk`` tiles and the partial-sum reduction's ``reduce_grid`` (None with one chunk)."""
    n, c, h, w = x.shape
    consts, (ph, pw) = _geometry(weight.shape[2:], stride, padding, dilation)
    ho = _out_size(h, consts["KH"], consts["SH"], ph, consts["DH"])
    wo = _out_size(w, consts["KW"], consts["SW"], pw, consts["DW"])
    channels_last = _channels_last(x)
    if (consts["SH"], consts["SW"]) == (1, 1):
        backward_input = _forward_plan(n, c, h, w, channels_last, consts)
    else:
        backward_input = _residue_plan(n, c, h, w, channels_last, consts)
    taps = consts["KH"] * consts["KW"] + 1
    return {
        "forward": _forward_plan(n, c, ho, wo, channels_last, consts),
        "backward_input": backward_input,
        "backward_weight": _weight_plan(n, c, ho, wo, channels_last, consts, taps, x.device),
    }


# --------------------------------------------------------------------------------- ahead-of-time specs


def aot_specs() -> list:
    """Every kernel for each x dtype (weights float32, float64 with float64 x) at 5x5, stride 1, with the
    channels_last tile of NVAE's 32x32x768 decoder maps (the input gradient: the forward kernel with
    flipped taps); the NCHW tile at 3x3, stride 2, without bias (the residue-class input gradient) and
    at 5x5, stride 1 in bfloat16; 11x11 (the largest unrolled row of taps) once; the partial-sum
    reduction per accumulation dtype."""
    ints = ("N", "C", "H", "W", "HO", "WO", "TILES_H", "TILES_W", "C_BLOCKS", "NUM_TILES", "TILES_PER_CHUNK",
            "PAD_H", "PAD_W", "sxn", "sxc", "sxh", "sxw", "syn", "syc", "syh", "syw", "sdn", "sdc", "sdh", "sdw")

    def spec(fn, pointers: dict, consts: dict):
        names = inspect.signature(fn.fn).parameters
        args = {name: "i32" for name in ints if name in names}
        blocks = dict(zip(("BLOCK_N", "BLOCK_H", "BLOCK_W", "BLOCK_C"), consts.pop("blocks")))
        if "X_PIX" in names:
            consts.update(_staging(blocks, consts, blocks["BLOCK_C"] > 1))
        warps = num_warps(blocks["BLOCK_N"] * blocks["BLOCK_H"] * blocks["BLOCK_W"] * blocks["BLOCK_C"])
        return aot_spec(fn, {**args, **pointers, **consts, **blocks}, warps)

    nhwc, nchw = _gpu_blocks(32, 32, 768, True), _gpu_blocks(32, 32, 768, False)
    variants = [(dt, 5, 1, True, nhwc) for dt in TL_DTYPES] + [(torch.float32, 3, 2, False, nchw),
                                                              (torch.bfloat16, 5, 1, False, nchw),
                                                              (torch.float16, 11, 1, True, nhwc)]
    specs = []
    for dtype, k, stride, bias, blocks in variants:
        acc = acc_dtype(dtype)
        x, w, a = ptr(dtype), ptr(acc), ptr(acc)
        geo = dict(KH=k, KW=k, SH=stride, SW=stride, DH=1, DW=1, ACC=TL_DTYPES[acc])
        taps_p = pow2(k * k + (1 if bias else 0))
        forward = {"x_ptr": x, "w_ptr": w, "b_ptr": w, "y_ptr": x}
        specs += [
            spec(_forward_kernel, forward, dict(geo, HAS_BIAS=bias, FLIP=False, blocks=blocks)),
            spec(_backward_weight_kernel, {"dy_ptr": x, "x_ptr": x, "part_ptr": a, "dw_ptr": a, "db_ptr": a},
                 dict(geo, HAS_BIAS=bias, TAPS_P=taps_p, DIRECT=dtype == torch.bfloat16, blocks=blocks)),
        ]
        if stride == 1:  # the input gradient: the forward kernel with the flipped taps
            specs.append(spec(_forward_kernel, forward, dict(geo, HAS_BIAS=False, FLIP=True, blocks=blocks)))
        else:
            specs.append(spec(_backward_input_kernel, {"dy_ptr": x, "w_ptr": w, "dx_ptr": x}, dict(geo, blocks=blocks)))
    for acc in (torch.float32, torch.float64):
        for bias in (True, False):
            specs.append(aot_spec(_reduce_partials_kernel, {
                "part_ptr": ptr(acc), "dw_ptr": ptr(acc), "db_ptr": ptr(acc), "CHUNKS": "i32", "C": "i32",
                "TAPS_W": 25, "HAS_BIAS": bias, "BLOCK": REDUCE_BLOCK}, 4))
    return specs
