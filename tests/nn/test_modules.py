"""The drop-in modules: same keys, same numbers as the PyTorch modules they replace."""

import copy

import pytest
import torch
from torch import nn

import nvae_fast
from nvae_fast.nn import BNSwish, BNSwishConv2d, DepthwiseConv2d, SqueezeExcite, SyncBNSwish, convert_sync_bn_swish
from nvae_fast.nn.deferred_bn_swish import BNSwishInputConv2d, DeferredSyncBNSwish, defer_into_conv

from .._tensors import randomise_


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_bn_swish_is_a_drop_in_for_batchnorm_then_silu(backend, momentum):
    bn = nn.BatchNorm2d(6, momentum=momentum)
    floating = [t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()]
    randomise_(floating, torch.Generator().manual_seed(0), scale=0.5, shift=1.0)
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


def test_reading_functional_args_changes_no_state():
    """The op's arguments can be read any number of times; the forward counts its batch once."""
    bn = BNSwish(3, momentum=None)
    before = {key: value.clone() for key, value in bn.state_dict().items()}
    first, second = bn.functional_args(), bn.functional_args()
    assert all(a is b for a, b in zip(first[:4], second[:4])) and first[4:] == second[4:]
    assert first[5] == 1.0  # the cumulative average's factor for the first batch
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    bn(torch.randn(2, 3, 4, 4))
    assert int(bn.num_batches_tracked) == 1 and bn.functional_args()[5] == 0.5


@pytest.mark.parametrize("form", ["module", "fused", "deferred"])
def test_every_bn_swish_forward_counts_batches_like_batchnorm(form):
    """A training forward of BNSwish, of BNSwishConv2d and of the deferred pair counts one batch, and
    momentum=None averages the batches cumulatively, as nn.BatchNorm2d does."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, padding=1).double()
    reference = nn.Sequential(nn.BatchNorm2d(4, momentum=None), nn.SiLU(), copy.deepcopy(conv)).double()
    bn = BNSwish(4, momentum=None).double()
    if form == "module":
        model = nn.Sequential(bn, conv)
    elif form == "fused":
        model = BNSwishConv2d(bn, conv)
    else:
        deferred = defer_into_conv(bn)
        model = nn.Sequential(deferred, BNSwishInputConv2d(conv, deferred))
    with nvae_fast.use_backend("reference"):
        for step in range(3):
            x = torch.randn(2, 4, 5, 6, dtype=torch.float64) + step
            torch.testing.assert_close(model(x), reference(x))
    assert int(bn.num_batches_tracked) == int(reference[0].num_batches_tracked) == 3
    torch.testing.assert_close(bn.running_mean, reference[0].running_mean)
    torch.testing.assert_close(bn.running_var, reference[0].running_var)


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


def test_convert_sync_bn_swish_after_patch_normalises_once():
    """A BNSwish fused into the conv it feeds (``patch``) converts to the deferred SyncBN form, and the conv
    applies that one: without a process group the model computes what it did before the conversion."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BNSwish(4), nn.Conv2d(4, 5, 3, padding=1))
    nvae_fast.patch(model)
    assert isinstance(model[2], BNSwishInputConv2d) and model[2].bn is model[1]
    x = torch.randn(2, 3, 8, 8)
    before, keys = copy.deepcopy(model)(x), list(model.state_dict())
    convert_sync_bn_swish(model)
    assert isinstance(model[1], DeferredSyncBNSwish) and model[2].bn is model[1]
    torch.testing.assert_close(model(x), before)
    assert int(model[1].num_batches_tracked) == 1
    assert list(model.state_dict()) == keys


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
