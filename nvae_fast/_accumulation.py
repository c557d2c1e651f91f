"""The accumulation dtype of every backend: the dtype that sums, statistics and per-channel parameters
are kept in, for inputs of a given dtype.

float64 inputs accumulate in float64; float16, bfloat16 and float32 inputs in float32. A leaf module
(it imports only torch), so that the ops, the kernel sets and the self-checks share one rule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["acc_dtype", "shared_acc_dtype"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for any other dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def shared_acc_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """One accumulation dtype for tensors of possibly different dtypes: float64 only when every tensor is
    float64, float32 otherwise."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32
