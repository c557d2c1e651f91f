"""Output distributions: the discretised logistic mixture normalises over all levels; Bernoulli."""

import itertools

import pytest
import torch

from nvae_fast.model.likelihood import Bernoulli, DiscMixLogistic, binarize, param_channels, quantize


def _params(channels, mix, h, w, generator, n=2):
    p = torch.randn(n, param_channels("dmol", channels, mix), h, w, generator=generator, dtype=torch.float64)
    return p * 1.5


@pytest.mark.parametrize("bits", [8, 5])
@pytest.mark.parametrize("mix", [1, 4])
def test_grey_dmol_sums_to_one_over_levels(bits, mix):
    g = torch.Generator().manual_seed(bits * 10 + mix)
    levels = 2**bits
    params = _params(1, mix, 1, 1, g, n=1).expand(levels, -1, -1, -1)
    d = DiscMixLogistic(params, 1, mix, bits)
    x = (torch.arange(levels, dtype=torch.float64) / (levels - 1)).view(levels, 1, 1, 1)
    total = torch.logsumexp(d.log_prob(x), dim=0).exp()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("mix", [1, 3])
def test_colour_dmol_sums_to_one_over_all_colours(mix):
    # Every (r, g, b) of a 4-bit image: 16**3 values of one pixel, autoregressive channel means included.
    g = torch.Generator().manual_seed(mix)
    bits, levels = 4, 16
    params = _params(3, mix, 1, 1, g, n=1)
    params[:, mix:] *= 0.5  # keep the components inside [-1, 1] so that no level is negligible
    colours = torch.tensor(list(itertools.product(range(levels), repeat=3)), dtype=torch.float64) / (levels - 1)
    x = colours.view(-1, 3, 1, 1)
    d = DiscMixLogistic(params.expand(x.shape[0], -1, -1, -1), 3, mix, bits)
    total = torch.logsumexp(d.log_prob(x), dim=0).exp()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9)


def test_dmol_matches_direct_cdf_difference():
    # One grey component: P(k) = sigmoid((v - mu + 1/B)/s) - sigmoid((v - mu - 1/B)/s) with the edge bins open.
    mu, log_s = 0.3, -2.5
    params = torch.tensor([0.0, mu, log_s], dtype=torch.float64).view(1, 3, 1, 1).expand(256, -1, -1, -1)
    d = DiscMixLogistic(params, 1, 1, 8)
    k = torch.arange(256, dtype=torch.float64)
    v, s = 2 * k / 255 - 1, torch.exp(torch.tensor(log_s, dtype=torch.float64))
    upper = torch.where(k == 255, torch.ones_like(v), torch.sigmoid((v - mu + 1 / 255) / s))
    lower = torch.where(k == 0, torch.zeros_like(v), torch.sigmoid((v - mu - 1 / 255) / s))
    expected = torch.log(upper - lower)
    got = d.log_prob((k / 255).view(256, 1, 1, 1))
    finite = (upper - lower) > 1e-12  # the direct formula loses everything further out
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-8, atol=1e-10)
    assert torch.all(torch.isfinite(got))


def test_dmol_log_prob_is_finite_with_extreme_parameters():
    params = torch.tensor([[0.0, 0.0, 200.0], [0.0, 50.0, -50.0]], dtype=torch.float32).view(2, 3, 1, 1)
    params = params.requires_grad_()
    d = DiscMixLogistic(params, 1, 1, 8)
    lp = d.log_prob(torch.tensor([0.5, 0.2]).view(2, 1, 1, 1))
    lp.sum().backward()
    assert torch.all(torch.isfinite(lp)) and torch.all(torch.isfinite(params.grad))


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_sample_and_mean_shapes_and_range(channels):
    g = torch.Generator().manual_seed(channels)
    d = DiscMixLogistic(_params(channels, 5, 7, 9, g, n=3).float(), channels, 5)
    for img in (d.sample(), d.mean()):
        assert img.shape == (3, channels, 7, 9)
        assert img.min() >= 0 and img.max() <= 1


def test_dmol_sample_concentrates_on_narrow_component():
    params = torch.zeros(1, param_channels("dmol", 3, 2), 4, 4)
    params[:, 0] = 10.0  # component 0 almost surely
    params[:, 2] = 0.4  # red mean of component 0 (layout: logits(2), then per channel means(2), scales(2), coeffs(2))
    params[:, 4:6] = -7.0  # tiny red scales
    params[:, 8:10] = 0.0
    params[:, 10:12] = -7.0
    params[:, 14:16] = 0.0
    params[:, 16:18] = -7.0
    d = DiscMixLogistic(params, 3, 2)
    red = d.sample()[:, 0]
    torch.testing.assert_close(red, torch.full_like(red, 0.7), atol=0.02, rtol=0)


def test_dmol_rejects_bad_shapes():
    with pytest.raises(ValueError, match="params"):
        DiscMixLogistic(torch.randn(2, 7, 3, 3), 3, 1)
    d = DiscMixLogistic(torch.randn(2, 10, 3, 3), 3, 1)
    with pytest.raises(ValueError, match="x must have shape"):
        d.log_prob(torch.rand(2, 1, 3, 3))


def test_bernoulli_log_prob_sample_mean():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 1, 5, 6, generator=g, dtype=torch.float64)
    x = torch.rand(4, 1, 5, 6, generator=g, dtype=torch.float64)
    d = Bernoulli(logits)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob((x > 0.5).double()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(d.log_prob(x), ref)
    torch.testing.assert_close(d.mean(), torch.sigmoid(logits))
    s = d.sample()
    assert s.shape == x.shape and set(s.unique().tolist()) <= {0.0, 1.0}
    # All 2**4 binary images of a 2x2 Bernoulli: probabilities sum to 1.
    small = Bernoulli(logits[:1, :, :2, :2].expand(16, -1, -1, -1))
    imgs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 1, 2, 2)
    torch.testing.assert_close(torch.logsumexp(small.log_prob(imgs), 0).exp(), torch.tensor(1.0, dtype=torch.float64))


def test_quantize_and_binarize():
    x = torch.tensor([0.0, 0.2, 0.5, 0.50001, 0.999, 1.0, 1.3, -0.2])
    assert torch.equal(binarize(x), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    q8 = quantize(x, 8)
    torch.testing.assert_close(q8 * 255, torch.round(q8 * 255))
    assert q8.min() >= 0 and q8.max() <= 1
    k = torch.arange(256, dtype=torch.float32)
    torch.testing.assert_close(quantize(k / 255, 8), k / 255)
    torch.testing.assert_close(quantize(k / 255, 5), torch.floor(k / 8) / 31)
