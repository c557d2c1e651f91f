"""NVAEConfig: presets of the public configurations, JSON round trip, validation."""

import json

import pytest

from nvae_fast.model import PRESETS, NVAEConfig, parameter_count, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json(name):
    cfg = preset(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert NVAEConfig.from_dict(data) == cfg


def test_public_configurations():
    mnist, cifar, celeba = preset("mnist"), preset("cifar10"), preset("celeba64")
    assert (mnist.channels_enc, mnist.num_latent_scales, mnist.groups_per_scale) == (32, 2, [10, 5])
    assert (mnist.likelihood, mnist.image_size, mnist.crop, mnist.num_flows) == ("bernoulli", 32, 2, 0)
    assert mnist.data_dims == 28 * 28
    assert (cifar.channels_enc, cifar.groups_per_scale, cifar.num_flows, cifar.likelihood) == (128, [30], 1, "dmol")
    assert (celeba.channels_enc, celeba.groups_per_scale, celeba.num_flows, celeba.image_size) == (64, [20, 10, 5], 1, 64)
    assert celeba.reg_lambda == 1e-1 and cifar.reg_lambda == 1e-2
    tiny = preset("tiny")
    assert tiny.num_latent_scales == 2 and tiny.channels_enc <= 16


def test_overrides_and_adaptive_minimum():
    cfg = preset("celeba64", min_groups_per_scale=8)
    assert cfg.groups_per_scale == [20, 10, 8]
    assert preset("mnist", adaptive_groups=False).groups_per_scale == [10, 10]
    assert preset("tiny", num_flows=0).num_flows == 0


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("likelihood", "gauss", "likelihood"),
        ("image_size", 18, "image_size"),
        ("channels_enc", 0, "channels_enc"),
        ("num_flows", -1, "num_flows"),
        ("num_x_bits", 9, "num_x_bits"),
        ("dec_kernel", 4, "dec_kernel"),
        ("num_postprocess_blocks", 2, "num_postprocess_blocks"),
        ("image_channels", 2, "image_channels"),
        ("reg_lambda_init", -1.0, "reg_lambda_init"),
    ],
)
def test_invalid_fields_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        preset("tiny", **{field: value})


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        NVAEConfig.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="imagenet"):
        preset("imagenet")


def test_parameter_counts_grow_with_the_presets():
    counts = {name: parameter_count(preset(name)) for name in ("tiny", "digits", "mnist")}
    assert 0 < counts["tiny"] < counts["digits"] < counts["mnist"]
