"""Shared helpers of the op test suite: backends under test, dtypes and tolerances (inputs and layouts:
``tests/_tensors.py``)."""

from __future__ import annotations

import pytest
import torch

import nvae_fast
from nvae_fast import selfcheck

LEAN_BACKENDS = ("torch", "triton", "cuda")

# (atol, rtol) for comparing a backend in this dtype against the float64 reference, relative to the
# output's own scale (see assert_close_scaled): the table auto's self-check uses too. Low precision: the
# inputs are rounded identically for both sides, so the error is the backend's own arithmetic and its
# final rounding.
TOLERANCES = selfcheck.TOLERANCES
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def device_for(backend: str) -> torch.device:
    """Where a backend's tests run: the GPU when there is one, otherwise the CPU (Triton interpreter)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def require(backend: str) -> torch.device:
    """Skip unless ``backend`` is available here; return the device its tests run on."""
    info = nvae_fast.backend_info()["backends"][backend]
    if not info["available"]:
        pytest.skip(f"backend {backend!r} unavailable: {info['reason']}")
    return device_for(backend)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str, factor: float = 1.0):
    """``|actual - expected| <= atol * scale + rtol * |expected|`` with ``scale = max|expected|``.

    ``factor`` widens both tolerances for quantities that sum many rounded terms (reductions).
    """
    atol, rtol = TOLERANCES[dtype]
    expected = expected.to(torch.float64)
    actual = actual.to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, atol=factor * atol * max(scale, 1e-30), rtol=factor * rtol, msg=lambda m: f"{what} ({dtype}): {m}"
    )
