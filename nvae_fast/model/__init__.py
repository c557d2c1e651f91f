"""The NVAE model on nvae_fast ops: config and presets, model, losses and schedules, official checkpoints."""

import torch

from .config import PRESETS, NVAEConfig, preset
from .losses import kl_balance_weights, kl_coefficient, nvae_loss, reg_coefficient
from .nvae import NVAE, NVAEOutput
from .official import load_official_checkpoint

__all__ = [
    "NVAE",
    "NVAEOutput",
    "NVAEConfig",
    "PRESETS",
    "preset",
    "kl_coefficient",
    "reg_coefficient",
    "kl_balance_weights",
    "nvae_loss",
    "load_official_checkpoint",
    "parameter_count",
]


def parameter_count(cfg: NVAEConfig) -> int:
    """Number of trainable parameters of ``NVAE(cfg)`` (built on the meta device: no weight memory)."""
    with torch.device("meta"):
        model = NVAE(cfg)
    return sum(p.numel() for p in model.parameters())
