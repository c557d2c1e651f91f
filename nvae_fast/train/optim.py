"""Optimizer, learning-rate schedule and weight EMA for NVAE training.

- :func:`build_optimizer`: Adamax (the NVAE paper's optimizer) with L2 weight decay added to the
  gradient, as ``torch.optim.Adamax`` applies it.
- :class:`WarmupCosine`: ``lr(t) = lr_max * (t + 1) / warmup`` for ``t < warmup``, then
  ``lr(t) = lr_min + (lr_max - lr_min) * (1 + cos(pi * p)) / 2`` with ``p = (t - warmup) / (total - warmup)``
  clipped to [0, 1]. Its state is the step count.
- :class:`EMA`: an exponential moving average of the parameters, ``θ̄ ← d_t θ̄ + (1 - d_t) θ`` with
  ``d_t = min(decay, (1 + t) / (10 + t))`` (a short run is not dominated by the initial weights); buffers
  (BN running statistics, spectral-norm vectors) are copied, not averaged.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["build_optimizer", "WarmupCosine", "EMA"]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 3e-4, eps: float = 1e-3) -> torch.optim.Adamax:
    """Adamax over ``model``'s trainable parameters (betas (0.9, 0.999))."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adamax(params, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=weight_decay)


class WarmupCosine:
    """Linear warm-up then cosine decay of every param group's ``lr`` of ``optimizer``; see module doc."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_max: float, lr_min: float, warmup: int, total: int):
        if not 0 <= lr_min <= lr_max:
            raise ValueError(f"need 0 <= lr_min <= lr_max, got lr_min={lr_min}, lr_max={lr_max}")
        if warmup < 0 or total < 1:
            raise ValueError(f"need warmup >= 0 and total >= 1, got warmup={warmup}, total={total}")
        self.optimizer = optimizer
        self.lr_max, self.lr_min, self.warmup, self.total = lr_max, lr_min, warmup, total
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr_max * (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        p = min(max((step - self.warmup) / span, 0.0), 1.0)
        return self.lr_min + (self.lr_max - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))

    def _apply(self) -> None:
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Advance one optimizer step and set the new learning rate."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


class EMA:
    """Averaged copy ``self.module`` of ``model`` (same class, eval mode, no grads); see module doc."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s parameters into the copy and copy its buffers (both matched by name)."""
        weight = 1.0 - self.current_decay()
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        shadow = dict(self.module.named_parameters())
        if params.keys() != shadow.keys():
            raise ValueError("EMA.update: model has different parameters than the averaged copy")
        names = list(shadow)
        torch._foreach_lerp_([shadow[n] for n in names], [params[n].detach() for n in names], weight)
        for name, b_avg in self.module.named_buffers():
            b_avg.copy_(buffers[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
