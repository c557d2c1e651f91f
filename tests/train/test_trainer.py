"""Single training steps of the Trainer on the tiny preset: updates, gradient skipping, AMP, gradient
checkpointing, validation."""

import math

import pytest
import torch

from nvae_fast.model.cells import Cell
from nvae_fast.train import TrainConfig, Trainer

from ._helpers import random_images, tiny_config, train_config


def _snapshot(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, {
        k: v.clone() for k, v in trainer.ema.module.state_dict().items()}


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_step_updates_parameters_and_ema(amp):
    trainer = Trainer(tiny_config(), train_config(amp=amp), random_images(7, seed=2))
    params, ema = _snapshot(trainer)
    m = trainer.train_step()
    assert trainer.step == 1 and trainer.stats["skipped"] == 0
    assert all(math.isfinite(m[k]) for k in ("loss", "recon", "kl", "spectral", "bn", "nelbo_bpd", "grad_norm"))
    assert m["lr"] == pytest.approx(0.5e-2)  # first of 2 warm-up steps
    changed = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, params[k])]
    assert len(changed) > 0.5 * len(params)
    assert any(not torch.equal(v, ema[k]) for k, v in trainer.ema.module.state_dict().items())


def _nan_grad_hook(trainer):
    trainer.model.top.register_hook(lambda g: torch.full_like(g, float("nan")))


@pytest.mark.parametrize("cause", ["threshold", "nan"])
def test_bad_gradients_skip_the_update(cause):
    threshold = 1e-6 if cause == "threshold" else 1e9
    trainer = Trainer(tiny_config(), train_config(grad_skip_threshold=threshold), random_images(7, seed=2))
    if cause == "nan":
        _nan_grad_hook(trainer)
    params, ema = _snapshot(trainer)
    opt_state = len(trainer.optimizer.state)
    for expect in (1, 2):
        m = trainer.train_step()
        assert m["skipped"] == trainer.stats["skipped"] == expect
    assert (m["grad_norm"] > threshold) if cause == "threshold" else math.isnan(m["grad_norm"])
    for k, v in trainer.model.state_dict().items():
        if k.endswith(("weight", "bias", "top", "log_weight_norm")):
            assert torch.equal(v, params[k]), k
    for k, v in trainer.ema.module.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert len(trainer.optimizer.state) == opt_state == 0
    assert trainer.step == 2 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # schedule advanced


def test_data_must_match_the_model():
    with pytest.raises(ValueError, match="1 channel.*model expects 3"):
        Trainer(tiny_config(), train_config(), random_images(7, channels=1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(amp="fp8"), "amp"), (dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(grad_skip_threshold=-1.0), "grad_skip_threshold"),
])
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_config_round_trip():
    cfg = train_config(amp="bf16", grad_skip_threshold=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_grad_checkpointing_takes_the_same_steps(amp):
    data = random_images(7, seed=2)
    plain = Trainer(tiny_config(), train_config(amp=amp), data)
    ckpt = Trainer(tiny_config(), train_config(amp=amp, grad_checkpointing=True), data)
    cells = [m for m in ckpt.model.modules() if isinstance(m, Cell)]
    assert cells and all(m.gradient_checkpointing for m in cells)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model.modules())
    for step in range(2):
        metrics = []
        for trainer in (plain, ckpt):
            torch.manual_seed(step)  # the same latent noise (the trainers share the global RNG)
            metrics.append(trainer.train_step())
        assert metrics[1] == metrics[0]  # same CPU kernels on the same inputs: exact
    assert ckpt.stats["skipped"] == 0
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for name, value in plain.ema.module.state_dict().items():
        torch.testing.assert_close(ckpt.ema.module.state_dict()[name], value, rtol=0, atol=0, msg=name)
