"""Shared builders for the training tests: the real ``tiny`` preset on small random image sets."""

import torch

from nvae_fast.data import ImageSet
from nvae_fast.model import preset
from nvae_fast.train import TrainConfig


def random_images(n: int, channels: int = 3, size: int = 16, seed: int = 0) -> ImageSet:
    """``n`` random uint8 images (smooth enough to be learnable: low-resolution noise upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, size // 4, size // 4, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return ImageSet(x.mul(255).round().to(torch.uint8), f"random{seed}")


def tiny_config(channels: int = 3, **overrides):
    return preset("tiny", image_channels=channels, **overrides)


def train_config(**overrides) -> TrainConfig:
    base = dict(steps=6, batch_size=3, lr=1e-2, lr_min=1e-4, warmup_steps=2, ema_decay=0.9, seed=3)
    return TrainConfig(**{**base, **overrides})
