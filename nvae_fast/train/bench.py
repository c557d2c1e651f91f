"""Training-step throughput and peak memory of a model configuration.

Runs ``warmup`` untimed then ``steps`` timed :meth:`Trainer.train_step` calls on random images of the
configuration's shape and reports ``images_per_s = batch_size * steps / seconds`` and the peak memory:
``torch.cuda.max_memory_allocated`` over the timed steps on CUDA, the process's peak resident set size
(``ru_maxrss``, whole process) on the CPU.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from ..data import ImageSet
from .trainer import TrainConfig, Trainer

__all__ = ["benchmark"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(model_config, train_config: TrainConfig, device, steps: int = 20, warmup: int = 3) -> dict:
    """Time ``steps`` training steps after ``warmup`` (see module doc); returns a JSON-able dict."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = torch.device(device)
    c, s, b = model_config.image_channels, model_config.image_size, train_config.batch_size
    gen = torch.Generator().manual_seed(train_config.seed)
    images = torch.randint(0, 256, (b * (steps + warmup), c, s, s), dtype=torch.uint8, generator=gen)
    trainer = Trainer(model_config, train_config, ImageSet(images, "random"), device)
    for _ in range(warmup):
        trainer.train_step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, kind = rss if sys.platform == "darwin" else rss * 1024, "process_max_rss"
    return {
        "batch_size": b,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": b * steps / seconds,
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": kind,
        "amp": train_config.amp,
        "device": str(device),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
