"""CUDA kernel set of :mod:`nvae_fast.ops.power_iteration` (contract: :class:`nvae_fast.ops.power_iteration.PowerIterationKernels`).

All matrices go to the kernels in one dtype: their own when they share one, float32 otherwise (the
accumulation dtype is float64 only when every matrix is float64). Each matrix must be contiguous
(views of contiguous weights are); others are copied. One launch per half-step serves every matrix of
every shape (ragged batch described by an offsets table); u/v are updated in place.

Custom ops (``torch.ops.nvae_fast``): ``power_iteration_update`` (mutates ``us`` and ``vs``) and
``power_iteration_sigmas``; their fake implementations are registered here.
"""

from __future__ import annotations

import torch

from .._accumulation import acc_dtype
from . import _library

__all__ = ["supports", "update", "sigmas"]


def supports(mats):
    """``None`` when the kernels can run these (R_i, K_i) matrices, else the reason."""
    for i, m in enumerate(mats):
        if m.numel() == 0:
            return f"matrix {i} has no elements (shape {tuple(m.shape)})"
    return None


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


def _update_fake(mats, us, vs, n_iter):
    return None


def _sigmas_fake(mats, us, vs):
    return mats[0].new_empty(len(mats), dtype=acc_dtype(mats[0].dtype))


_library.register_fakes(
    {
        "power_iteration_update": _update_fake,
        "power_iteration_sigmas": _sigmas_fake,
    }
)
