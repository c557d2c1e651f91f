"""Latent Normals: parameterisation, residual posterior and the analytic KL against torch.distributions."""

import math

import pytest
import torch

from nvae_fast.model.latent import SIGMA_FLOOR, Normal, residual_posterior, soft_clamp

from .._tensors import randn


def _params(shape, generator, scale=2.0):
    """Raw Normal parameters (mu and log sigma stacked on dim 1): N(0, scale^2) in float64."""
    return randn(*shape, dtype=torch.float64, generator=generator, scale=scale)


@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (2, 2, 1, 3)])
def test_from_params_clamps_and_floors(shape):
    g = torch.Generator().manual_seed(1)
    params = _params(shape, g, scale=8.0)
    d = Normal.from_params(params, temperature=0.7)
    mu_raw, ls_raw = params.chunk(2, dim=1)
    assert torch.all(d.mu.abs() < 5) and torch.allclose(d.mu, 5 * torch.tanh(mu_raw / 5))
    expected = 0.7 * (torch.exp(5 * torch.tanh(ls_raw / 5)) + SIGMA_FLOOR)
    torch.testing.assert_close(d.sigma, expected)
    assert torch.all(d.sigma >= 0.7 * (math.exp(-5) + SIGMA_FLOOR))


def test_from_params_rejects_odd_channels():
    with pytest.raises(ValueError, match="params"):
        Normal.from_params(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (1, 2, 3, 3)])
def test_residual_kl_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(2)
    prior_params, delta = _params(shape, g), _params(shape, g, scale=0.5)
    prior = Normal.from_params(prior_params)
    q = residual_posterior(prior_params, delta)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mu, q.sigma), torch.distributions.Normal(prior.mu, prior.sigma)
    )
    torch.testing.assert_close(q.kl(prior), ref, rtol=1e-10, atol=1e-12)
    assert torch.all(q.kl(prior) >= 0)


def test_residual_posterior_is_shift_and_scale_of_prior():
    # Inside the clamps' near-linear range: mu_q = mu_p + dmu and sigma_q ~= sigma_p * exp(dlog_sigma).
    g = torch.Generator().manual_seed(3)
    prior_params = _params((2, 4, 3, 3), g, scale=0.01)
    delta = _params((2, 4, 3, 3), g, scale=0.01)
    prior, q = Normal.from_params(prior_params), residual_posterior(prior_params, delta)
    dmu, dls = delta.chunk(2, dim=1)
    torch.testing.assert_close(q.mu, prior.mu + dmu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sigma - SIGMA_FLOOR, (prior.sigma - SIGMA_FLOOR) * torch.exp(dls), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="delta"):
        residual_posterior(prior_params, delta[:, :2])


def test_log_prob_and_rsample_match_torch():
    g = torch.Generator().manual_seed(4)
    d = Normal.from_params(_params((4, 6, 5, 3), g))
    z = torch.randn(4, 3, 5, 3, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(d.mu, d.sigma).log_prob(z)
    torch.testing.assert_close(d.log_prob(z), ref)
    torch.manual_seed(0)
    samples = torch.stack([d.rsample() for _ in range(4000)])
    # Standard error of the mean is sigma / sqrt(4000) ~ 0.016 sigma: 5 standard errors.
    assert torch.all((samples.mean(0) - d.mu).abs() < 5 * d.sigma / math.sqrt(4000))


def test_soft_clamp_is_identity_near_zero_and_bounded():
    t = torch.linspace(-100, 100, 1001, dtype=torch.float64)
    c = soft_clamp(t)
    assert torch.all(c.abs() <= 5) and torch.all(torch.diff(c) >= 0)
    small = t.abs() < 0.1
    torch.testing.assert_close(c[small], t[small], rtol=1e-3, atol=1e-6)
