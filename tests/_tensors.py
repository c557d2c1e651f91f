"""Test inputs shared by every suite: random values, and the same values in a chosen memory layout."""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: The layouts an (N, C, H, W) input of every op may come in (see :func:`in_layout`).
LAYOUTS = ("contiguous", "channels_last", "strided")

#: Another layout for each of :data:`LAYOUTS`: a second input (e.g. the upstream gradient) in it checks that
#: a kernel reads each input by its own strides.
OTHER_LAYOUT = {"contiguous": "channels_last", "channels_last": "strided", "strided": "contiguous"}


def randn(*shape, dtype=torch.float32, device="cpu", generator=None, seed=0, scale=1.0, shift=0.0) -> torch.Tensor:
    """``shift + scale * N(0, 1)`` of ``shape``, drawn in float64 and rounded to ``dtype``: every dtype gets
    the same values up to its rounding. Drawn from ``generator``, else from a fresh one seeded with ``seed``.
    ``scale`` and ``shift`` may be tensors that broadcast against ``shape``."""
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    drawn = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return (drawn * scale + shift).to(device=device, dtype=dtype)


def randomise_(tensors: Iterable[torch.Tensor], generator: torch.Generator, scale=1.0, shift=0.0) -> None:
    """Overwrite each of ``tensors`` in place with ``shift + scale * N(0, 1)`` drawn in its own dtype."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * scale + shift)


def in_layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The values of ``x`` (N, C, H, W, floating) stored as ``kind``:

    ``contiguous``     dense NCHW;
    ``channels_last``  dense NHWC;
    ``strided``        every other column of an (N, C, H, 2W + 1) buffer, from column 1: dense in no format
                       and not at the start of its storage; the columns between hold NaN, so a kernel that
                       reads them spoils its result;
    ``unaligned``      dense NCHW one element into its storage: no 16-byte vector loads.
    """
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        n, c, h, w = x.shape
        wide = torch.full((n, c, h, 2 * w + 1), float("nan"), dtype=x.dtype, device=x.device)
        wide[..., 1::2] = x
        return wide[..., 1::2]
    if kind == "unaligned":
        flat = torch.zeros(x.numel() + 1, dtype=x.dtype, device=x.device)
        flat[1:] = x.reshape(-1)
        return flat[1:].view(x.shape)
    raise ValueError(f"unknown layout {kind!r}")


def memory_format(kind: str) -> torch.memory_format:
    """The dense format an op's output takes for an input in layout ``kind``: NHWC for ``channels_last``,
    NCHW for the others (an input dense in no format is copied to NCHW)."""
    return torch.channels_last if kind == "channels_last" else torch.contiguous_format
