"""Host-side helpers shared by the kernel modules: dtypes, memory layouts, tile shapes and grid sizes.

Layouts. The kernels read a 4-D tensor (N, C, H, W) in one of two dense layouts:

``NCHW``
    ``t.is_contiguous()``: element (n, c, h, w) at ``(n C + c) HW + h W + w``; viewed as a row-major
    matrix of N*C rows (one per (n, c)) by HW columns.
``NHWC``
    ``t.is_contiguous(memory_format=torch.channels_last)``: element at ``(n HW + h W + w) C + c``; viewed
    as a row-major matrix of N*HW rows by C columns.

Any other strides (non-dense views, expanded gradients) are copied once into NCHW by :func:`dense`
before a kernel runs; outputs are allocated with :func:`torch.empty_like` of the dense input, so they
come back in that input's layout.

Tiles. Every kernel works on 2-D tiles of about :data:`TILE_ELEMS` elements whose last (fast) axis runs
along the contiguous dimension, so loads coalesce and vectorise. Reductions split their work into
``split`` chunks per output so that the grid has about :data:`WAVES` programs per SM; the split depends
on the shape and the device only, so results are bit-identical from run to run.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from nvae_fast._accumulation import acc_dtype

NCHW = "nchw"
NHWC = "nhwc"

TILE_ELEMS = 4096  # elements per tile: 8 warps x 32 threads x 16 elements
WAVES = 4  # target programs per SM for the split reductions
INTERPRETER_SMS = 2  # the CPU interpreter runs programs one by one: keep grids small, splits > 1
MAX_ELEMS = 2**31 - 1  # kernels index with int32

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tl_acc(dtype: torch.dtype):
    """The Triton accumulation dtype for tensors of torch ``dtype``."""
    return TL_DTYPES[acc_dtype(dtype)]


def too_large(x: torch.Tensor) -> str | None:
    """Why the kernels cannot run ``x``, a tensor the op has checked (``None`` when they can): its size."""
    if x.numel() > MAX_ELEMS:
        return f"x has {x.numel()} elements; the Triton kernels index with int32 (at most {MAX_ELEMS})"
    return None


def layout_of(t: torch.Tensor) -> str | None:
    """``NCHW`` or ``NHWC`` when ``t`` is dense in that layout (NCHW preferred when both), else ``None``."""
    if t.is_contiguous():
        return NCHW
    if t.is_contiguous(memory_format=torch.channels_last):
        return NHWC
    return None


def dense(t: torch.Tensor, layout: str | None = None) -> tuple[torch.Tensor, str]:
    """``(t, its layout)``, copying ``t`` when it is not dense in ``layout`` (any native one if ``None``).

    The copy is NCHW-contiguous, or channels_last when ``layout`` asks for ``NHWC``.
    """
    if layout is None:
        found = layout_of(t)
        if found is not None:
            return t, found
        return t.contiguous(), NCHW
    fmt = torch.channels_last if layout == NHWC else torch.contiguous_format
    return t.contiguous(memory_format=fmt), layout


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def tile(rows: int, cols: int, max_cols: int) -> tuple[int, int]:
    """Tile ``(block_rows, block_cols)`` of about :data:`TILE_ELEMS` for a rows x cols matrix whose
    columns are contiguous: at most ``max_cols`` wide, unless there are too few rows to fill it."""
    block_rows = min(pow2(rows), max(1, TILE_ELEMS // min(pow2(cols), max_cols)))
    block_cols = min(pow2(cols), max(max_cols, TILE_ELEMS // block_rows))
    return block_rows, block_cols


def num_warps(block_elems: int) -> int:
    """Warps for a tile of ``block_elems`` elements: 16 elements per thread, 1 to 8 warps."""
    return max(1, min(8, block_elems // 512))


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; :data:`INTERPRETER_SMS` for the CPU interpreter."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


ASSUMED_L2_BYTES = 50 << 20  # the L2 that plans sized to stay in it assume off a GPU (an H100's)


def half_l2_bytes(device: torch.device) -> int:
    """What one run of a plan that re-reads its inputs from L2 may read: half the device's L2
    (:data:`ASSUMED_L2_BYTES` off a GPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size // 2
    return ASSUMED_L2_BYTES // 2


def split(device: torch.device, programs: int, chunks: int) -> int:
    """How many parts to cut each of ``programs`` reductions into (at most ``chunks``, at least 1)."""
    want = triton.cdiv(WAVES * sm_count(device), max(programs, 1))
    return max(1, min(want, chunks))


# Ticket counters of the kernels whose programs take work in ticket order, per (device, stream): int32
# zeros that each launch leaves zeroed again (its last program resets them), so no launch needs a fill.
_TICKET_COUNTERS: dict[tuple, torch.Tensor] = {}


def _stream_key(device: torch.device) -> tuple:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return (str(device), stream)


@contextlib.contextmanager
def ticket_counters(device: torch.device, count: int):
    """``count`` zeroed int32 counters on ``device`` for launches on its current stream, which the launch
    in the block must leave zeroed. Allocated (a fill) the first time and when more are needed; dropped
    when the block raises (a launch cut short may leave them dirty)."""
    key = _stream_key(device)
    counters = _TICKET_COUNTERS.get(key)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(max(count, 64), dtype=torch.int32, device=device)
        _TICKET_COUNTERS[key] = counters
    try:
        yield counters
    except BaseException:
        _TICKET_COUNTERS.pop(key, None)
        raise
