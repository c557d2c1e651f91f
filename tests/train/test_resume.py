"""Resuming from a checkpoint continues bit-exactly: N steps == k steps + save/load + (N - k) steps."""

import math

import pytest
import torch

from nvae_fast.train import Trainer, load_checkpoint
from nvae_fast.train.checkpoint import save_checkpoint

from ._helpers import random_images, tiny_config, train_config


def _assert_same_tree(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _same_numbers(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


# fp16 autocast is slow on CPUs: fewer steps there (the GradScaler state still has to round-trip).
@pytest.mark.parametrize("amp,total,k", [("none", 4, 2), ("fp16", 2, 1)])
def test_resume_is_bit_exact(tmp_path, amp, total, k):
    data = random_images(7, seed=1)  # 3 steps of batch 2 per epoch: the run crosses an epoch boundary
    cfg, tcfg = tiny_config(), train_config(steps=total, amp=amp, batch_size=2)

    full = Trainer(cfg, tcfg, data)
    full_metrics = []
    for t in range(total):
        full_metrics.append(full.train_step())
        if t == 0:
            full.samples(4, 1.0, 1, 4)  # sampling mid-run must not disturb the training RNG stream
    part = Trainer(cfg, tcfg, data)
    for _ in range(k):
        part.train_step()
    path = save_checkpoint(part.state_dict(), tmp_path / "c.pt")
    del part
    torch.manual_seed(12345)  # whatever happened since must not matter
    torch.rand(7)

    resumed = Trainer.from_checkpoint(load_checkpoint(path), data)
    assert resumed.step == k
    resumed_metrics = [resumed.train_step() for _ in range(total - k)]

    assert all(_same_numbers(a, b) for a, b in zip(resumed_metrics, full_metrics[k:], strict=True))
    assert resumed.stats["skipped"] == 0  # real updates were compared
    a, b = full.state_dict(), resumed.state_dict()
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "stats", "step", "rng"):
        _assert_same_tree(a[key], b[key], key)
    assert any(n.startswith("spectral_regularizer.u") for n in a["model"])  # power-iteration vectors travel
    if amp == "fp16":
        assert a["scaler"]["scale"] > 0


def test_resume_rejects_another_model(tmp_path):
    data = random_images(7, seed=1)
    t = Trainer(tiny_config(), train_config(steps=2), data)
    state = t.state_dict()
    other = Trainer(tiny_config(num_latent_per_group=5), train_config(steps=2), data)
    with pytest.raises(ValueError, match="different model configuration"):
        other.load_state_dict(state)
