"""Sampling: BatchNorm re-adjustment for generation, image grids and PNG files.

BN re-adjustment (NVAE paper, Sec. 5): the running statistics that BN layers collect while training
come from the posterior path (encoder inputs), which makes samples drawn in eval mode poor. Before
sampling, :func:`readjust_bn` resets every BN layer's running mean/variance and re-estimates them by
generating ``num_batches`` batches with ``model.sample`` in train mode at the sampling temperature,
with ``momentum=None`` (the running statistics become the plain average over those batches). Layers
that generation does not reach keep their statistics. The result is a small dict of tensors
(:func:`bn_state`) that a checkpoint caches under a key naming temperature, batches and batch size
(:func:`readjust_key`), so it is computed once per checkpoint and setting.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "bn_layers",
    "bn_state",
    "load_bn_state",
    "readjust_bn",
    "readjust_key",
    "sample_images",
    "make_grid",
    "save_png",
]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer with BN running statistics (``nn.BatchNorm*``, ``BNSwish``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "reset_running_stats") and getattr(m, "running_mean", None) is not None
    ]


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{f"{layer}.running_mean" | f"{layer}.running_var": tensor}`` of every BN layer (CPU copies)."""
    state = {}
    for name, m in bn_layers(model):
        state[f"{name}.running_mean"] = m.running_mean.detach().cpu().clone()
        state[f"{name}.running_var"] = m.running_var.detach().cpu().clone()
    return state


def load_bn_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the running statistics of ``state`` (from :func:`bn_state`) into ``model``'s BN layers."""
    layers = dict(bn_layers(model))
    expected = {f"{n}.{s}" for n in layers for s in ("running_mean", "running_var")}
    if set(state) != expected:
        raise ValueError("BN state does not match the model's BN layers (was it made for another model?)")
    for key, value in state.items():
        name, stat = key.rsplit(".", 1)
        getattr(layers[name], stat).copy_(value)


def readjust_key(weights: str, temperature: float, num_batches: int, batch_size: int) -> str:
    """Cache key of a re-adjusted BN state in a checkpoint's ``sampling_bn`` dict; ``weights`` is
    ``"ema"`` or ``"model"`` (which weights were re-adjusted)."""
    return f"{weights}:t={float(temperature):g},batches={int(num_batches)},batch={int(batch_size)}"


@torch.no_grad()
def readjust_bn(model: nn.Module, num_batches: int, batch_size: int, temperature: float) -> dict[str, torch.Tensor]:
    """Re-estimate ``model``'s BN running statistics from its own samples (see module doc), in place.

    Leaves ``model`` in eval mode and returns :func:`bn_state` of the result.
    """
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    layers = bn_layers(model)
    saved = {name: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for name, m in layers}
    for _, m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for _ in range(num_batches):
            model.sample(batch_size, temperature=temperature)
    finally:
        model.eval()
        for name, m in layers:
            momentum, mean, var, tracked = saved[name]
            if int(m.num_batches_tracked) == 0:  # not on the generative path: keep training statistics
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
            m.momentum = momentum
    return bn_state(model)


@torch.no_grad()
def sample_images(model: nn.Module, num: int, temperature: float, batch_size: int) -> torch.Tensor:
    """``num`` samples (num, C, S, S) in [0, 1] on the CPU, generated in eval mode ``batch_size`` at a time."""
    if num < 1:
        raise ValueError(f"number of samples must be >= 1, got {num}")
    model.eval()
    out = []
    for start in range(0, num, batch_size):
        out.append(model.sample(min(batch_size, num - start), temperature=temperature).float().cpu())
    return torch.cat(out).clamp_(0, 1)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile ``images`` (N, C, H, W) in [0, 1] into a uint8 array (rows*(H+p)+p, nrow*(W+p)+p, C);
    ``nrow`` images per row (default ``ceil(sqrt(N))``), white ``padding`` pixels between them."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].detach().float().cpu().clamp(0, 1)
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, upscale: int = 1) -> Path:
    """Write ``images`` (N, C, H, W) in [0, 1] as one PNG grid at ``path`` (pixels repeated ``upscale`` times)."""
    from PIL import Image

    grid = make_grid(images, nrow)
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
