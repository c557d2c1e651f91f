"""The NVAE model: shapes for every preset, posterior/prior bookkeeping, sampling, regularisers."""

import math

import pytest
import torch
from torch import nn

from nvae_fast.model import NVAE, PRESETS, NVAEOutput, preset
from nvae_fast.model.cells import WNConv2d
from nvae_fast.nn import BNSwish


def _images(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, cfg.image_channels, cfg.image_size, cfg.image_size, generator=g)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return NVAE(preset("tiny"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_of_every_preset_on_meta(name):
    cfg = preset(name)
    with torch.device("meta"):
        model = NVAE(cfg)
        out = model(torch.rand(2, cfg.image_channels, cfg.image_size, cfg.image_size))
        samples = model.sample(3)
    assert isinstance(out, NVAEOutput)
    assert len(out.kl_per_group) == cfg.num_groups == len(model.posterior_heads)
    assert all(k.shape == (2,) for k in out.kl_per_group)
    assert out.recon_log_prob.shape == out.log_q.shape == out.log_p.shape == (2,)
    side = cfg.image_size - 2 * cfg.crop
    assert out.likelihood.logits.shape[-2:] == (side, side)
    assert samples.shape == (3, cfg.image_channels, cfg.image_size, cfg.image_size)
    assert len(model.flows) == cfg.num_groups and all(len(f) == cfg.num_flows for f in model.flows)


def test_forward_on_cpu(tiny):
    cfg = tiny.cfg
    x = _images(cfg, 3)
    out = tiny(x)
    assert torch.all(torch.isfinite(out.recon_log_prob)) and torch.all(out.recon_log_prob < 0)
    # With flows every group's KL is the sample estimate log q - log p, so they add up (float32 sums of ~50).
    torch.testing.assert_close(sum(out.kl_per_group), out.log_q - out.log_p, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.likelihood.log_prob(x), out.recon_log_prob)
    # The latent sample is random, the likelihood of a fixed z is not: two passes differ.
    assert not torch.equal(tiny(x).log_q, out.log_q)


def test_analytic_kl_without_flows_is_non_negative_and_consistent():
    torch.manual_seed(1)
    model = NVAE(preset("tiny", num_flows=0))
    out = model(_images(model.cfg, 4, seed=1))
    assert all(torch.all(k >= 0) for k in out.kl_per_group)
    # Monte Carlo: E_q[log q - log p] = KL. 64 passes of a batch of 4.
    with torch.no_grad():
        model.eval()
        x = _images(model.cfg, 1, seed=2).expand(64, -1, -1, -1)
        est = model(x)
        mc, analytic = (est.log_q - est.log_p).mean(), sum(est.kl_per_group).mean()
        spread = (est.log_q - est.log_p).std() / math.sqrt(64)
    assert abs(mc - analytic) < 5 * spread + 1e-3


def test_bernoulli_with_crop():
    torch.manual_seed(2)
    model = NVAE(preset("tiny", image_channels=1, likelihood="bernoulli", crop=2, num_flows=0))
    x = _images(model.cfg, 2)
    out = model(x)
    assert out.likelihood.logits.shape == (2, 1, 12, 12)
    binary = (x[:, :, 2:-2, 2:-2] > 0.5).float()
    ref = torch.distributions.Bernoulli(logits=out.likelihood.logits).log_prob(binary).sum(dim=(1, 2, 3))
    torch.testing.assert_close(out.recon_log_prob, ref)
    s = model.sample(2)
    assert s.shape == (2, 1, 16, 16) and set(s.unique().tolist()) <= {0.0, 1.0}


def test_sample_temperature_zero_is_deterministic(tiny):
    tiny.eval()
    try:
        a, b = tiny.sample(2, temperature=0.0, mean=True), tiny.sample(2, temperature=0.0, mean=True)
        c = tiny.sample(2, temperature=1.0)
    finally:
        tiny.train()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], a[1])
    assert c.shape == (2, 3, 16, 16) and c.min() >= 0 and c.max() <= 1


def test_input_shape_is_checked(tiny):
    with pytest.raises(ValueError, match="x must have shape"):
        tiny(torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="cfg"):
        NVAE(preset("tiny").to_dict())


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_spectral_regularizer_covers_every_conv_with_effective_weights():
    torch.manual_seed(3)
    model = NVAE(preset("tiny"))
    reg = model.spectral_regularizer
    assert len(reg.names) == len(_convs(model))
    for _ in range(30):
        sigmas = reg.sigmas().detach()
    exact = []
    for m in _convs(model):
        w = m.spectral_weight() if isinstance(m, WNConv2d) else m.weight
        exact.append(torch.linalg.matrix_norm(w.detach().flatten(1), ord=2))
    exact = torch.stack(exact)
    assert torch.all(sigmas <= exact * (1 + 1e-4))
    torch.testing.assert_close(sigmas, exact, rtol=0.05, atol=0)
    # The regulariser sees W = exp(g) V / ||V||: doubling exp(g) doubles sigma of weight-normalised convs.
    wn = torch.tensor([isinstance(m, WNConv2d) for m in _convs(model)])
    with torch.no_grad():
        for m in _convs(model):
            if isinstance(m, WNConv2d):
                m.log_weight_norm += math.log(2)
    doubled = reg.sigmas().detach()
    torch.testing.assert_close(doubled[wn], 2 * sigmas[wn], rtol=1e-3, atol=0)
    torch.testing.assert_close(doubled[~wn], sigmas[~wn], rtol=1e-3, atol=0)
    assert "spectral_regularizer.u0" in model.state_dict()


def test_bn_scale_penalty():
    torch.manual_seed(4)
    model = NVAE(preset("tiny"))
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, BNSwish))]
    assert any(isinstance(m, BNSwish) for m in bns) and any(isinstance(m, nn.BatchNorm2d) for m in bns)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    expected = sum(m.weight.abs().max() for m in bns)
    penalty = model.bn_scale_penalty()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert all(int((m.weight.grad != 0).sum()) == 1 for m in bns)


def test_state_dict_round_trip_reproduces_outputs(tiny):
    clone = NVAE(tiny.cfg)
    clone.load_state_dict(tiny.state_dict())
    tiny.eval(), clone.eval()
    try:
        x = _images(tiny.cfg, 2, seed=9)
        torch.manual_seed(5)
        a = tiny(x)
        torch.manual_seed(5)
        b = clone(x)
    finally:
        tiny.train()
    torch.testing.assert_close(a.recon_log_prob, b.recon_log_prob)
    torch.testing.assert_close(a.log_q, b.log_q)
