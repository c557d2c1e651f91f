"""Learning-rate schedule, Adamax construction and the weight EMA of nvae_fast.train.optim."""

import math

import pytest
import torch
from torch import nn

from nvae_fast.train.optim import EMA, WarmupCosine, build_optimizer


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1))


@pytest.mark.parametrize("warmup,total", [(0, 7), (3, 11), (10, 10), (5, 40)])
def test_warmup_cosine_values(warmup, total):
    lr_max, lr_min = 0.02, 3e-4
    opt = build_optimizer(_net(0), lr_max)
    sched = WarmupCosine(opt, lr_max, lr_min, warmup, total)
    seen = []
    for t in range(total + 3):
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    for t, lr in enumerate(seen):
        if t < warmup:
            expect = lr_max * (t + 1) / warmup
        else:
            p = min((t - warmup) / max(total - warmup, 1), 1.0)
            expect = lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr == pytest.approx(expect, rel=1e-12)
    assert max(seen) <= lr_max + 1e-15 and seen[-1] == pytest.approx(lr_min)
    if warmup > 1:
        assert seen[0] < seen[warmup - 1]


def test_schedule_state_round_trip():
    opt = build_optimizer(_net(0), 0.01)
    a = WarmupCosine(opt, 0.01, 1e-4, 4, 30)
    for _ in range(9):
        a.step()
    opt2 = build_optimizer(_net(0), 0.01)
    b = WarmupCosine(opt2, 0.01, 1e-4, 4, 30)
    b.load_state_dict(a.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == a.lr_at(9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr_max=0.01, lr_min=0.1, warmup=1, total=5), "lr_min"),
    (dict(lr_max=0.01, lr_min=0.0, warmup=-1, total=5), "warmup"),
    (dict(lr_max=0.01, lr_min=0.0, warmup=0, total=0), "total"),
])
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(build_optimizer(_net(0), 0.01), **kwargs)


def test_build_optimizer_is_adamax_over_trainable_params():
    net = _net(1)
    net[0].bias.requires_grad_(False)
    opt = build_optimizer(net, 0.01, weight_decay=3e-4, eps=1e-3)
    assert isinstance(opt, torch.optim.Adamax)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in net.parameters() if p.requires_grad)
    assert opt.defaults["eps"] == 1e-3 and opt.defaults["weight_decay"] == 3e-4
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(net, 0.0)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99])
def test_ema_matches_closed_form(decay):
    net = _net(2)
    ema = EMA(net, decay)
    expect = [p.detach().clone() for p in net.parameters()]
    gen = torch.Generator().manual_seed(3)
    for t in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
            net[1].running_mean.add_(torch.rand(5, generator=gen))
        d = min(decay, (1 + t) / (10 + t))
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, net.parameters())]
        ema.update(net)
    for e, p in zip(expect, ema.module.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)  # buffers copied
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = EMA(_net(5), 0.3)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 6 and restored.decay == decay
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(_net(0), 1.0)
