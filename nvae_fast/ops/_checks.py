"""Input validation shared by the ops: every error names the offending argument."""

from __future__ import annotations

import torch


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, t, *, ndim: int | None = None, float_only: bool = True) -> None:
    """Require ``t`` to be a tensor of a floating dtype (and of rank ``ndim`` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_same_device(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    """Require every tensor in ``others`` (``None`` allowed) to live on ``ref``'s device."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_vector(op: str, name: str, t, length: int) -> None:
    """Require ``t`` (unless ``None``) to be a float 1-D tensor of ``length`` elements."""
    if t is None:
        return
    check_tensor(op, name, t, ndim=1)
    if t.numel() != length:
        raise ValueError(f"{op}: {name} must have {length} elements (one per channel), got {t.numel()}")


def pair(op: str, name: str, value) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair of non-negative ints."""
    if isinstance(value, int):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if a < 0 or b < 0:
        raise ValueError(f"{op}: {name} must be non-negative, got {value!r}")
    return a, b


def conv_stride_dilation(op: str, stride, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """Normalise a convolution's stride and dilation to pairs, each entry >= 1."""
    stride, dilation = pair(op, "stride", stride), pair(op, "dilation", dilation)
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    return stride, dilation


def check_kernel_fits(op: str, x: torch.Tensor, kernel_hw, padding, dilation) -> None:
    """Require the padded spatial extent of ``x`` (N, C, H, W) to hold the dilated kernel."""
    for axis, size in enumerate(x.shape[2:]):
        span = dilation[axis] * (kernel_hw[axis] - 1) + 1
        if size + 2 * padding[axis] < span:
            raise ValueError(
                f"{op}: x's spatial size {tuple(x.shape[2:])} with padding {padding} is smaller than the dilated "
                f"kernel {span}"
            )
