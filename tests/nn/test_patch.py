"""nvae_fast.patch on a user's model: what it replaces, and that the model computes the same."""

import copy

import torch
from torch import nn

import nvae_fast
from nvae_fast.nn import BNSwish, DepthwiseConv2d


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
    report = nvae_fast.patch(model)
    assert report.bn_swish == ["1", "6"]
    assert report.depthwise == ["3"]
    assert "2 BatchNorm2d+SiLU pairs" in str(report)
    assert isinstance(model[1], BNSwish) and isinstance(model[2], nn.Identity)
    assert isinstance(model[3], DepthwiseConv2d)
    assert type(model[4][0]) is nn.BatchNorm2d and type(model[5]) is nn.Conv2d
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 10, 9)
    for mode in (True, False):  # train mode updates the running statistics of both alike
        model.train(mode), reference.train(mode)
        torch.testing.assert_close(model(x), reference(x))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
