"""The drop-in modules: same keys, same numbers as the PyTorch modules they replace."""

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast.nn import BNSwish, DepthwiseConv2d, SqueezeExcite, SyncBNSwish, convert_sync_bn_swish


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g) * 0.5 + 1.0)
    return module


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bn_swish_is_a_drop_in_for_batchnorm_then_silu(backend, momentum):
    bn = _randomise(nn.BatchNorm2d(6, momentum=momentum))
    ours = BNSwish(6, momentum=momentum)
    assert list(ours.state_dict()) == list(bn.state_dict())
    ours.load_state_dict(bn.state_dict())
    seq = nn.Sequential(bn, nn.SiLU())
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64)
    seq.double(), ours.double()
    with nvae_fast.use_backend(backend):
        for step in range(3):
            for mode in (True, False):
                seq.train(mode), ours.train(mode)
                torch.testing.assert_close(ours(x + step), seq(x + step))
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


def test_bn_swish_without_running_stats_uses_batch_stats_in_eval():
    ours, bn = BNSwish(3, track_running_stats=False).eval(), nn.BatchNorm2d(3, track_running_stats=False).eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), nn.functional.silu(bn(x)))
    assert list(ours.state_dict()) == list(bn.state_dict())


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_depthwise_conv_is_a_drop_in_for_grouped_conv(backend):
    ours = DepthwiseConv2d(5, 5, stride=2)
    ref = nn.Conv2d(5, 5, 5, stride=2, padding=2, groups=5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.weight.shape == ref.weight.shape == (5, 1, 5, 5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 9, 8)
    with nvae_fast.use_backend(backend):
        torch.testing.assert_close(ours(x), ref(x))


def test_depthwise_conv_default_padding_keeps_size():
    for k in (3, 5, 7):
        assert DepthwiseConv2d(4, k)(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_squeeze_excite_matches_its_definition(backend):
    se = SqueezeExcite(40, reduction=16, min_hidden=4)
    assert se.fc1.out_features == 4 and se.fc2.out_features == 40
    assert SqueezeExcite(128).fc1.out_features == 8
    x = torch.randn(3, 40, 6, 7)
    expected = x * torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))[:, :, None, None]
    with nvae_fast.use_backend(backend):
        torch.testing.assert_close(se(x), expected)


def test_convert_sync_bn_swish_shares_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BNSwish(4), nn.Sequential(BNSwish(4)))
    weight = model[1].weight
    converted = convert_sync_bn_swish(model)
    assert converted is model
    assert isinstance(model[1], SyncBNSwish) and isinstance(model[2][0], SyncBNSwish)
    assert model[1].weight is weight
    x = torch.randn(2, 3, 6, 6)
    model(x)  # without an initialised process group it behaves like BNSwish
    assert int(model[1].num_batches_tracked) == 1
