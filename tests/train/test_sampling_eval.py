"""BN re-adjustment for sampling and the importance-sampled log-likelihood, on the real tiny model."""

import copy
import math

import pytest
import torch

from nvae_fast.model import NVAE
from nvae_fast.train.evaluate import evaluate, log_likelihood
from nvae_fast.train.sampling import bn_layers, bn_state, load_bn_state, readjust_bn, sample_images

from ._helpers import random_images, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = NVAE(tiny_config())
    m.train()
    with torch.no_grad():  # give the BN layers some training statistics first
        m(random_images(6, seed=2).batch(torch.arange(6)))
    return m.eval()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_readjust_bn_averages_generation_statistics(model, temperature):
    m = copy.deepcopy(model)
    before = bn_state(m)
    momenta = {n: l.momentum for n, l in bn_layers(m)}
    tracked = {n: l.num_batches_tracked.clone() for n, l in bn_layers(m)}

    # Expected: the mean of each layer's per-batch input means over the same generated batches.
    probe = copy.deepcopy(model).train()
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, n=name: inputs.setdefault(n, []).append(
        args[0].detach().double().mean(dim=(0, 2, 3)))) for name, layer in bn_layers(probe)]
    torch.manual_seed(7)
    for _ in range(2):
        probe.sample(5, temperature=temperature)
    for h in hooks:
        h.remove()

    torch.manual_seed(7)
    state = readjust_bn(m, num_batches=2, batch_size=5, temperature=temperature)
    assert not m.training
    assert inputs, "generation reached no BN layer"
    for name, layer in bn_layers(m):
        assert layer.momentum == momenta[name] and torch.equal(layer.num_batches_tracked, tracked[name])
        if name in inputs:
            expect = torch.stack(inputs[name]).mean(dim=0).float()
            torch.testing.assert_close(layer.running_mean, expect, rtol=1e-4, atol=1e-5)
            assert not torch.equal(layer.running_mean, before[f"{name}.running_mean"])
        else:  # encoder layers: untouched by generation
            assert torch.equal(layer.running_mean, before[f"{name}.running_mean"])
            assert torch.equal(layer.running_var, before[f"{name}.running_var"])
    assert any(not n.startswith(("stem", "preprocess", "enc")) for n in inputs)

    fresh = copy.deepcopy(model)
    load_bn_state(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(bn_state(fresh).values(), state.values()))
    with pytest.raises(ValueError, match="BN state does not match"):
        load_bn_state(fresh, {"nope.running_mean": torch.zeros(1)})


def test_sample_images_range_and_count(model):
    x = sample_images(copy.deepcopy(model), 5, 0.8, batch_size=2)
    assert x.shape == (5, 3, 16, 16) and x.min() >= 0 and x.max() <= 1 and x.std() > 0


@pytest.mark.parametrize("k", [1, 3])
def test_log_likelihood_is_logmeanexp_of_weights(model, k):
    x = random_images(4, seed=5).batch(torch.arange(4))
    torch.manual_seed(11)
    ll, elbo = log_likelihood(model, x, k)
    torch.manual_seed(11)
    logw = []
    with torch.no_grad():
        for _ in range(k):
            out = model(x)
            logw.append((out.recon_log_prob + out.log_p - out.log_q).double())
    logw = torch.stack(logw)
    torch.testing.assert_close(ll, torch.logsumexp(logw, 0) - math.log(k), rtol=0, atol=1e-9)
    torch.testing.assert_close(elbo, logw.mean(0), rtol=0, atol=1e-9)
    assert (ll >= elbo - 1e-9).all()  # Jensen
    if k == 1:
        assert torch.equal(ll, elbo)


def test_evaluate_reports_bits_per_dim(model):
    data = random_images(5, seed=6)
    torch.manual_seed(3)
    result = evaluate(model, data, num_samples=2, batch_size=3, device=torch.device("cpu"), progress=False)
    torch.manual_seed(3)
    lls = torch.cat([log_likelihood(model, data.batch(torch.arange(0, 3)), 2)[0],
                     log_likelihood(model, data.batch(torch.arange(3, 5)), 2)[0]])
    assert result["images"] == 5
    assert result["nll_bpd"] == pytest.approx(-lls.mean().item() / (3 * 16 * 16 * math.log(2)), rel=1e-9)
    assert 0 < result["nll_bpd"] <= result["nelbo_bpd"]
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(model, data.batch(torch.arange(2)), 0)
