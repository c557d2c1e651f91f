"""CUDA kernel set of :mod:`nvae_fast.ops.power_iteration` (contract: :class:`nvae_fast.ops.power_iteration.PowerIterationKernels`).

``forward``/``backward`` (the op's path) take the weights as they are (any rank, viewed as (out, rest)):
one custom-op call each, no per-weight work in Python. The C++ side caches the launch table of a set of
weights and vectors (keyed by their addresses and shapes, a few plans deep), so a repeated call builds
nothing. With ``n_iter >= 1`` every step of every weight runs in one launch (a memset of its ticket
counters before it), W read 2 n_iter times, from DRAM once per run of weights sized to half the L2 and
from L2 after that; ``n_iter = 0`` takes 2 launches and 1 read; the backward one launch (see
``csrc/power_iteration.cu``). Weights of mixed dtypes run in float32, non-contiguous ones from contiguous
copies; u/v not contiguous in the accumulation dtype through copies.

``update``/``sigmas`` are the unplanned kernels on (out, rest) matrices (one launch per half-step).

Custom ops (``torch.ops.nvae_fast``): ``power_iteration_update`` (mutates ``us`` and ``vs``),
``power_iteration_sigmas``, ``power_iteration_forward`` (mutates ``us`` and ``vs``),
``power_iteration_backward_packed`` (every dW_i in one buffer), ``power_iteration_backward`` (that buffer's
views in the weights' shapes; composite, no fake), ``power_iteration_layout``, ``power_iteration_plan``;
their fake implementations are registered here.
"""

from __future__ import annotations

import math

import torch

from .._accumulation import acc_dtype
from . import _library

__all__ = ["VALIDATES", "supports", "update", "sigmas", "forward", "backward", "plan", "PLAN_FIELDS", "RUN_FIELDS",
           "LAYOUT_DTYPES"]

PASS_TILE = (64, 256)  # csrc (kRows, kCols)
#: Fields of a weight's entry in the plan table (csrc PlanField), in order.
PLAN_FIELDS = ("w", "rows", "cols", "u", "v", "x_off", "pa_off", "pb_off", "row_tiles", "col_tiles", "vec_ok",
               "save_off", "grad_off")
#: Fields of a run's entry, after the weights' entries and the tiles (csrc RunField), in order; the table
#: has one per weight, those past the runs zero.
RUN_FIELDS = ("weight", "weights", "tile", "tiles")


#: The C++ ops check every weight and vector (the op skips its per-weight checks in Python).
VALIDATES = True


def supports(weights):
    """``None`` when the kernels can run these weights (any rank), else the reason (an empty weight)."""
    if min(map(torch.Tensor.numel, weights)) > 0:  # one C-level pass; the loop below only on a miss
        return None
    i = next(i for i, w in enumerate(weights) if w.numel() == 0)
    return f"weight {i} has no elements (shape {tuple(weights[i].shape)})"


def _uniform(mats):
    dtypes = {m.dtype for m in mats}
    if len(dtypes) > 1:
        mats = [m.to(torch.float32) for m in mats]
    return [m.contiguous() for m in mats]


def update(mats, us, vs, n_iter):
    """``n_iter`` steps of v <- normalize(W^T u), u <- normalize(W v) for every matrix; us/vs in place."""
    _library.ops().power_iteration_update(_uniform(mats), list(us), list(vs), int(n_iter))


def sigmas(mats, us, vs):
    """sigma_i = u_i^T W_i v_i for every matrix: (n,) float32 (float64 when every matrix is float64)."""
    return _library.ops().power_iteration_sigmas(_uniform(mats), list(us), list(vs))


def forward(weights, us, vs, n_iter):
    """``n_iter`` steps for every weight (us/vs in place), then sigma: returns (sigma (n,), [saved],
    layout), saved the packed final (u_i, v_i) in the accumulation dtype and layout the weights' dtypes
    and sizes as a list of ints (``[n, then per weight: dtype code, rank, sizes...]``), for
    :func:`backward`."""
    ops = _library.ops()
    sigma, saved = ops.power_iteration_forward(weights, us, vs, n_iter)
    return sigma, [saved], ops.power_iteration_layout(weights)


def backward(saved, layout, grad):
    """dW_i = grad_i u_i v_i^T for every weight, in its shape and dtype (views of one buffer)."""
    return _library.ops().power_iteration_backward(grad, saved[0], layout)


def plan(weights, us, vs, n_iter):
    """What :func:`forward` runs for these tensors: the runs of weights (``(first weight, weights, first
    tile, tiles)`` each), reads of each W, and the launches of forward and backward. The table comes from
    the C++ plan cache (built there if missing)."""
    table = _library.ops().power_iteration_plan(weights, us, vs)
    n = len(weights)
    entries = table[: n * len(PLAN_FIELDS)].view(n, len(PLAN_FIELDS))
    tiles = int((entries[:, PLAN_FIELDS.index("row_tiles")] * entries[:, PLAN_FIELDS.index("col_tiles")]).sum())
    runs = table[n * len(PLAN_FIELDS) + 3 * tiles :].view(-1, len(RUN_FIELDS))
    return {"runs": [tuple(r) for r in runs.tolist() if r[1] > 0], "weight_reads": [max(1, 2 * n_iter)] * n,
            "forward_launches": ["pass", "finish"] if n_iter == 0 else ["steps"], "backward_launches": ["outer"],
            "table": table}


def _update_fake(mats, us, vs, n_iter):
    return None


def _sigmas_fake(mats, us, vs):
    return mats[0].new_empty(len(mats), dtype=acc_dtype(mats[0].dtype))


def _shared_dtype(weights):
    return weights[0].dtype if len({w.dtype for w in weights}) == 1 else torch.float32


#: The dtypes of the layout codes (csrc kLayoutDtypes).
LAYOUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _layout(weights):
    layout = [len(weights)]
    for w in weights:
        layout += [LAYOUT_DTYPES.index(w.dtype), w.dim(), *w.shape]
    return layout


def _read_layout(layout):
    """[(shape, dtype)] of a layout."""
    out, at = [], 1
    for _ in range(layout[0]):
        rank = layout[at + 1]
        out.append((tuple(layout[at + 2 : at + 2 + rank]), LAYOUT_DTYPES[layout[at]]))
        at += 2 + rank
    return out


def _forward_fake(weights, us, vs, n_iter):
    acc = acc_dtype(_shared_dtype(weights))
    vectors = sum(w.shape[0] + w.numel() // w.shape[0] for w in weights)
    return weights[0].new_empty(len(weights), dtype=acc), weights[0].new_empty(vectors, dtype=acc)


def _backward_packed_fake(grad, saved, layout):
    entries = _read_layout(layout)
    dtypes = {dtype for _, dtype in entries}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return saved.new_empty(sum(math.prod(shape) for shape, _ in entries), dtype=dtype)


def _plan_fake(weights, us, vs):
    tiles = 0
    for w in weights:
        rows, cols = w.shape[0], w.numel() // w.shape[0]
        tiles += -(-rows // PASS_TILE[0]) * -(-cols // PASS_TILE[1])
    return torch.empty(len(weights) * (len(PLAN_FIELDS) + len(RUN_FIELDS)) + 3 * tiles, dtype=torch.int64)


_library.register_fakes(
    {
        "power_iteration_update": _update_fake,
        "power_iteration_sigmas": _sigmas_fake,
        "power_iteration_forward": _forward_fake,
        "power_iteration_backward_packed": _backward_packed_fake,
        "power_iteration_layout": _layout,
        "power_iteration_plan": _plan_fake,
    }
)
