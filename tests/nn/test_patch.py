"""nvae_fast.patch on a user's model: what it replaces, and that the model computes the same."""

import copy

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast.nn import BNSwish, ConvSqueezeExcite, DepthwiseConv2d
from nvae_fast.nn.deferred_bn_swish import BNSwishInputConv2d, DeferredBNSwish


def _user_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 8, 5, padding=2, groups=8),
        nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()),  # not followed by SiLU: kept
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped, not depthwise: kept
        nn.BatchNorm2d(8),
        nn.SiLU(),
    )


def test_patch_replaces_pairs_and_depthwise_convs_keeping_weights():
    torch.manual_seed(0)
    model = _user_model()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = nvae_fast.patch(model, fuse_conv=False)
    assert report.bn_swish == ["1", "6"]
    assert report.depthwise == ["3"]
    assert report.skipped == [("4.0", "BatchNorm2d followed by ReLU: only SiLU is fused")]
    assert "2 BatchNorm2d+SiLU pairs" in str(report) and "left alone: 4.0" in str(report)
    assert isinstance(model[1], BNSwish) and isinstance(model[2], nn.Identity)
    assert isinstance(model[3], DepthwiseConv2d)
    assert type(model[4][0]) is nn.BatchNorm2d and type(model[5]) is nn.Conv2d
    assert list(model.state_dict()) == keys
    _assert_same_model(model, reference)


def test_patch_fuses_bn_swish_into_the_conv_it_feeds():
    torch.manual_seed(0)
    model = _user_model()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = nvae_fast.patch(model)
    assert report.bn_swish_conv == ["1 -> 3"]  # model[6] ends the chain: its output is the model's
    assert type(model[1]) is DeferredBNSwish and type(model[3]) is BNSwishInputConv2d
    assert model[3].bn is model[1] and type(model[6]) is BNSwish
    assert list(model.state_dict()) == keys
    _assert_same_model(model, reference)


def _assert_same_model(model, reference):
    x = torch.randn(2, 3, 10, 9)
    for mode in (True, False):  # train mode updates the running statistics of both alike
        model.train(mode), reference.train(mode)
        torch.testing.assert_close(model(x), reference(x))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_patch_leaves_hardsigmoid_squeeze_excitation_alone_and_says_why():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (scripts/setup.sh installs it)")
    se = torchvision.ops.SqueezeExcitation
    model = nn.Sequential(se(8, 4, scale_activation=nn.Hardsigmoid), se(8, 4, activation=nn.Hardswish), se(8, 4))
    report = nvae_fast.patch(model)
    assert report.skipped == [
        ("0", "gate Hardsigmoid: only Sigmoid is fused"),
        ("1", "inner activation Hardswish: only ReLU and SiLU are fused"),
    ]
    assert report.squeeze_excite == ["2"] and type(model[2]) is ConvSqueezeExcite and model[2].activation == "relu"
