"""The NVAE training loop: one :class:`Trainer` per process (rank).

One step (``t`` = steps taken so far, ``T`` = ``TrainConfig.steps``):

1. ``x`` = this rank's batch of step ``t`` (:class:`nvae_fast.data.EpochSampler`), on ``device``.
2. ``out = model(x)`` under autocast when ``amp`` is ``bf16``/``fp16``; then
   ``loss = nvae_loss(model, out, kl_coefficient(t, T, ...), reg_coefficient(t, T, ...))`` in float32.
3. backward (scaled by the ``GradScaler`` for ``fp16``, starting at ``fp16_init_scale``: NVAE's
   per-image losses are sums over pixels, so PyTorch's default 2**16 overflows for many steps; DDP
   averages gradients over ranks).
4. ``g = ||grad||_2`` over all parameters (after unscaling). The update is skipped, and counted in
   ``skipped``, when ``g`` is NaN/Inf or above ``grad_skip_threshold``; otherwise Adamax steps and the
   EMA of the weights is updated.
5. the learning rate follows :class:`~nvae_fast.train.optim.WarmupCosine`; ``t`` advances either way.

The schedules (learning rate, KL and regularisation warm-ups) span ``TrainConfig.schedule_length``:
``T`` itself, or, for a run given another length on resuming (:meth:`TrainConfig.with_steps`), the
``T`` it was planned with.

Everything a run depends on (model, EMA, optimizer, schedule, scaler, step, counters, RNG states of
every rank) is in :meth:`Trainer.state_dict`, and the data order is a function of ``(seed, t)``, so a
run resumed from a checkpoint continues bit-exactly on the same hardware, backend and world size.
"""

from __future__ import annotations

import copy
import math
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import EpochSampler, ImageSet
from . import distributed as D
from .checkpoint import CHECKPOINT_FORMAT, rng_state, save_checkpoint, set_rng_state
from .monitor import Monitor
from .optim import EMA, WarmupCosine, build_optimizer
from .sampling import make_grid, readjust_bn, readjust_key, sample_images, save_png

__all__ = ["TrainConfig", "Trainer", "AMP_DTYPES"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DATA_ON_GPU_BYTES = 4 * 2**30


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (JSON-able; stored in checkpoints). ``batch_size`` is per rank.

    The defaults make the README's CPU example (``digits``, a few minutes on two cores); the paper's
    runs use the same optimiser (Adamax, lr 1e-2, cosine to 1e-4, weight decay 3e-4, eps 1e-3) for
    hundreds of epochs, with ``ema_decay`` 0.9999 and a warm-up of a few epochs.
    ``grad_skip_threshold``: the loss is a per-image sum over pixels, so healthy gradient norms are
    large (up to ~3e4 in the digits example) and grow with image size; the default only catches
    blow-ups. ``None`` skips only NaN/Inf gradients.
    ``schedule_steps``: the length of the learning-rate cosine and of the KL/regularisation warm-ups when
    it differs from ``steps`` (``None``: ``steps``); :meth:`with_steps` sets it.
    """

    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-2
    lr_min: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 3e-4
    adamax_eps: float = 1e-3
    ema_decay: float = 0.99
    kl_warmup_portion: float = 0.3
    kl_const_portion: float = 1e-4
    kl_min_coeff: float = 1e-4
    kl_balance: bool = True
    reg_warmup_portion: float = 0.3
    grad_skip_threshold: float | None = 1e6
    amp: str = "none"
    fp16_init_scale: float = 256.0
    grad_checkpointing: bool = False
    seed: int = 0
    schedule_steps: int | None = None

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ValueError(f"schedule_steps must be >= 1 or None, got {self.schedule_steps}")
        if self.grad_skip_threshold is not None and not self.grad_skip_threshold > 0:
            raise ValueError(f"grad_skip_threshold must be positive or None, got {self.grad_skip_threshold}")

    @property
    def schedule_length(self) -> int:
        """Steps spanned by the learning-rate cosine and the KL/regularisation warm-ups."""
        return self.schedule_steps or self.steps

    def with_steps(self, steps: int) -> "TrainConfig":
        """This run with ``steps`` steps in all and its schedules unchanged, so that continuing a finished
        run goes on where it ended (learning rate ``lr_min``, KL coefficient 1) instead of restarting."""
        return replace(self, steps=steps, schedule_steps=self.schedule_length)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def _enable_grad_checkpointing(model: nn.Module) -> None:
    if not hasattr(model, "set_gradient_checkpointing"):
        raise ValueError("grad_checkpointing=True, but this model offers no set_gradient_checkpointing()")
    model.set_gradient_checkpointing(True)


class Trainer:
    """Builds the model, optimizer, schedule, EMA and data order of a run and takes its steps.

    ``model_config`` is an :class:`nvae_fast.model.NVAEConfig`; ``data`` the training images (their
    channels and size must match the config); ``meta`` is a JSON-able dict stored in checkpoints as is
    (the CLI records the data source there). Under ``torch.distributed`` every BN+Swish becomes a
    :class:`~nvae_fast.nn.SyncBNSwish`, every plain BatchNorm2d a
    :class:`~nvae_fast.train.distributed.SyncBatchNorm2d`, and the model is wrapped in DDP. The EMA
    copy keeps unsynchronised BN (it is only evaluated, and sampled from on the main rank).
    """

    def __init__(self, model_config, train_config: TrainConfig, data: ImageSet, device="cpu", meta=None):
        from ..model import NVAE

        self.model_config, self.config, self.data = model_config, train_config, data
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.dist = D.world(self.device)
        if (data.channels, data.size) != (model_config.image_channels, model_config.image_size):
            raise ValueError(
                f"data {data.name!r} has {data.channels} channel(s) of {data.size}x{data.size} pixels, but the "
                f"model expects {model_config.image_channels} of {model_config.image_size}x{model_config.image_size}"
            )
        if self.device.type == "cuda" and data.images.numel() <= _DATA_ON_GPU_BYTES:
            self.data = data.to(self.device)  # uint8 on the GPU: no host-to-device copy per step
        cfg = train_config
        _seed_everything(cfg.seed)
        self.model = NVAE(model_config).to(self.device)
        if cfg.grad_checkpointing:
            _enable_grad_checkpointing(self.model)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            from ..nn import convert_sync_bn_swish

            convert_sync_bn_swish(self.model)
            D.convert_sync_batchnorm(self.model)
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        _seed_everything(cfg.seed + self.dist.rank)  # ranks draw different latent noise
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.adamax_eps)
        self.scheduler = WarmupCosine(self.optimizer, cfg.lr, cfg.lr_min, cfg.warmup_steps, cfg.schedule_length)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=cfg.fp16_init_scale,
                                          enabled=cfg.amp == "fp16")
        self.sampler = EpochSampler(len(data), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size)
        self.step = 0
        self.stats = {"skipped": 0}
        self.stop_code = 0
        self._bn_cache: tuple[int, dict] = (-1, {})

    # ------------------------------------------------------------------ one step
    def coefficients(self, step: int) -> tuple[float, float]:
        """``(kl_coeff, reg_coeff)`` of ``step``; the regularisation weight and its annealing start come
        from the model config (``reg_lambda``, ``reg_lambda_init``)."""
        from ..model import kl_coefficient, reg_coefficient

        cfg, mc = self.config, self.model_config
        length = cfg.schedule_length
        kl = kl_coefficient(step, length, cfg.kl_warmup_portion, cfg.kl_const_portion, cfg.kl_min_coeff)
        reg = reg_coefficient(step, length, cfg.reg_warmup_portion, mc.reg_lambda, mc.reg_lambda_init)
        return kl, reg

    def train_step(self) -> dict[str, float]:
        """Take step ``self.step`` (see module doc); returns this rank's metrics as floats."""
        from ..model import nvae_loss

        cfg = self.config
        x = self.data.batch(self.sampler.indices(self.step)).to(self.device, non_blocking=True)
        kl_coeff, reg_coeff = self.coefficients(self.step)
        self.net.train()
        amp_dtype = AMP_DTYPES[cfg.amp]
        autocast = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with autocast:
            out = self.net(x)
        loss, metrics = nvae_loss(self.model, out, kl_coeff, reg_coeff, kl_balance=cfg.kl_balance)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(_grad_norm(self.params))
        limit = cfg.grad_skip_threshold
        ok = math.isfinite(grad_norm) and (limit is None or grad_norm <= limit)
        if ok:
            self.scaler.step(self.optimizer)
        else:
            self.stats["skipped"] += 1
        self.scaler.update()
        if ok:
            self.ema.update(self.model)
        lr = self.scheduler.get_last_lr()
        self.scheduler.step()
        self.step += 1
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(grad_norm=grad_norm, lr=lr, kl_coeff=kl_coeff, reg_coeff=reg_coeff,
                       skipped=self.stats["skipped"])
        return metrics

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The checkpoint of this run (collective under DDP: every rank must call it)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "meta": self.meta,
            "world_size": self.dist.world_size,
            "step": self.step,
            "data": {"name": self.data.name, "size": len(self.data), "epoch": self.sampler.position(self.step)[0],
                     "batch_in_epoch": self.sampler.position(self.step)[1]},
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stats": dict(self.stats),
            "rng": D.all_gather_objects(rng_state()),
        }
        step, cache = self._bn_cache
        if step == self.step and cache:
            state["sampling_bn"] = dict(cache)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a checkpoint of a run with the same configs)."""
        if state["model_config"] != self.model_config.to_dict():
            raise ValueError("checkpoint was written for a different model configuration")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.stats = dict(state["stats"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # a different world size cannot continue the same noise: reseed deterministically
            _seed_everything(self.config.seed + 7919 * self.step + self.dist.rank)

    @classmethod
    def from_checkpoint(cls, state: dict, data: ImageSet, device="cpu") -> "Trainer":
        """A trainer with the configs of checkpoint ``state``, continued from it."""
        from ..model import NVAEConfig

        trainer = cls(NVAEConfig.from_dict(state["model_config"]), TrainConfig.from_dict(state["train_config"]),
                      data, device, state.get("meta"))
        trainer.load_state_dict(state)
        return trainer

    def save(self, path: str | Path) -> None:
        """Write the checkpoint to ``path`` (main rank; collective under DDP)."""
        state = self.state_dict()
        if self.dist.is_main:
            save_checkpoint(state, path)
        D.barrier()

    # ------------------------------------------------------------------ samples
    def samples(self, num: int, temperature: float, bn_batches: int, bn_batch_size: int) -> torch.Tensor:
        """``num`` samples of the EMA model with BN statistics re-adjusted (``bn_batches`` > 0) on a
        copy. Uses its own RNG stream (seed of the run), so training randomness is untouched; the
        re-adjusted BN state is kept for the checkpoint of the current step."""
        model = copy.deepcopy(self.ema.module)
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            if bn_batches > 0:
                bn = readjust_bn(model, bn_batches, bn_batch_size, temperature)
                key = readjust_key("ema", temperature, bn_batches, bn_batch_size)
                step, cache = self._bn_cache
                self._bn_cache = (self.step, {**(cache if step == self.step else {}), key: bn})
            images = sample_images(model, num, temperature, bn_batch_size)
        return images

    # ------------------------------------------------------------------ loop
    def fit(
        self,
        out_dir: str | Path,
        log_every: int = 10,
        sample_every: int = 0,
        ckpt_every: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        num_samples: int = 64,
        temperature: float = 1.0,
        bn_batches: int = 10,
        stop_requested: Callable[[], int] | None = None,
    ) -> list[dict]:
        """Train up to ``config.steps``, logging every ``log_every`` steps, writing sample grids
        (``samples/step_XXXXXX.png``) and ``checkpoint.pt`` every ``sample_every``/``ckpt_every`` steps
        (0: only at the end) into ``out_dir``. Returns the logged records.

        ``stop_requested()``, asked before every step, ends the loop early when nonzero (the CLI returns
        the number of a signal received): the step reached is checkpointed so that no work is lost, and
        the value, agreed on by all ranks, stays in ``stop_code`` (0 when the loop ran to the end).
        """
        out_dir = Path(out_dir)
        ckpt = out_dir / "checkpoint.pt"
        total = self.config.steps
        monitor = Monitor(out_dir, total, self.step, enabled=self.dist.is_main, progress=progress,
                          tensorboard=tensorboard)
        records, saved = [], None
        try:
            while self.step < total:
                self.stop_code = self._agreed_stop(stop_requested)
                if self.stop_code:
                    break
                metrics = self.train_step()
                monitor.advance(metrics)
                last = self.step == total
                if self.step % log_every == 0 or last:
                    records.append(self._log(monitor, metrics))
                if self.dist.is_main and ((sample_every and self.step % sample_every == 0) or last):
                    self._write_samples(monitor, out_dir, num_samples, temperature, bn_batches)
                if (ckpt_every and self.step % ckpt_every == 0) or last:
                    self.save(ckpt)
                    saved = self.step
            if self.stop_code and saved != self.step:
                self.save(ckpt)
        finally:
            monitor.close()
        return records

    def _agreed_stop(self, stop_requested: Callable[[], int] | None) -> int:
        """``stop_requested()``, the largest over ranks (every rank stops at the same step); 0 without it."""
        if stop_requested is None:
            return 0
        return D.all_reduce_max(int(stop_requested()), self.device)

    def _log(self, monitor: Monitor, metrics: dict) -> dict:
        """Average this step's ``metrics`` over ranks and record them."""
        keys = sorted(metrics)
        mean = D.all_reduce_mean(torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device))
        averaged = dict(zip(keys, mean.tolist()))
        averaged["skipped"] = int(metrics["skipped"])
        return monitor.log(self.step, averaged, self.config.batch_size * self.dist.world_size)

    def _write_samples(self, monitor: Monitor, out_dir: Path, num: int, temperature: float, bn_batches: int) -> None:
        """The sample grid of this step: ``samples/step_XXXXXX.png`` and TensorBoard (main rank)."""
        images = self.samples(num, temperature, bn_batches, min(num, 64))
        path = save_png(images, out_dir / "samples" / f"step_{self.step:06d}.png", upscale=2)
        monitor.image("samples", make_grid(images), self.step)
        monitor.write(f"step {self.step}: samples -> {path}")
