"""Loading checkpoints of the original NVAE code, tested on synthetic checkpoints of that format.

The checkpoints come from ``_official_checkpoints`` (the original state dict's full key set, derived
``weight_normalized`` entries included, and the entries train.py saves beside it); nothing there comes
from our mapping code.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nvae_fast.model import NVAE
from nvae_fast.model.official import OfficialLoadReport, config_from_official_args, load_official_checkpoint

from ._official_checkpoints import is_parameter, official_checkpoint, official_state, save_checkpoint, train_args


def _args(**kw):
    base = dict(
        dataset="cifar10", arch_instance="res_mbconv", num_channels_enc=8, num_channels_dec=8,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_latent_scales=2, num_groups_per_scale=3, ada_groups=True, min_groups_per_scale=1,
        num_latent_per_group=4, num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, num_nf=1, use_se=True,
        res_dist=True, num_mixture_dec=3, num_x_bits=8, weight_decay_norm=1e-2, weight_decay_norm_init=1.0,
        weight_decay_norm_anneal=False, batch_size=4, learning_rate=1e-2,
    )
    base.update(kw)
    return train_args(**base)


ARGS = {
    "cifar_like_two_scales_flows": _args(),
    "mnist_like": _args(dataset="mnist", num_nf=0, num_latent_scales=2, num_groups_per_scale=2, ada_groups=False,
                        num_preprocess_blocks=2, num_postprocess_blocks=2, num_preprocess_cells=1,
                        num_postprocess_cells=1, num_cell_per_cond_enc=1),
    "celeba_like_no_se": _args(dataset="celeba_64", num_latent_scales=3, num_groups_per_scale=2, use_se=False,
                               num_nf=2, num_cell_per_cond_dec=1, weight_decay_norm_anneal=True),
}


@pytest.mark.parametrize("name", sorted(ARGS))
def test_every_tensor_lands_in_place(tmp_path, name):
    args = ARGS[name]
    state = official_state(args)
    model = load_official_checkpoint(save_checkpoint(tmp_path, args, state))
    ours = model.state_dict()
    assert not model.training
    n_ours = sum(1 for k in ours if not k.startswith("spectral_regularizer."))
    assert n_ours == sum(1 for k in state if not k.endswith(".weight_normalized"))
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for k, t in state.items() if is_parameter(k))
    # Spot checks by role.
    torch.testing.assert_close(ours["top"], state["prior_ftr0"])
    torch.testing.assert_close(ours["to_params.1.bias"], state["image_conditional.1.bias"])
    assert int(ours["preprocess.0.branch.bn_swish1.num_batches_tracked"]) == 7


def test_encoder_combiners_serve_the_decoder_in_reverse_order(tmp_path):
    args = ARGS["cifar_like_two_scales_flows"]
    state = official_state(args)
    model = load_official_checkpoint(save_checkpoint(tmp_path, args, state))
    combiners = sorted({int(k.split(".")[1]) for k in state if k.startswith("enc_tower.") and k.endswith(".conv.bias")})
    # The decoder's second group uses the encoder's last combiner, and so on backwards.
    for d, j in enumerate(reversed(combiners)):
        torch.testing.assert_close(model.enc_combiners[d].conv.bias, state[f"enc_tower.{j}.conv.bias"])
    # Flow cells: nf_cells are numbered group by group; cell2 is the mirrored one.
    torch.testing.assert_close(model.flows[2][0].cell2.shift.bias, state["nf_cells.2.cell2.mu.conv_0.bias"])
    assert model.flows[2][0].cell2.mirror and not model.flows[2][0].cell1.mirror


def _wn(state, p):
    w = state[f"{p}.weight"]
    return torch.exp(state[f"{p}.log_weight_norm"]) * w / (w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-5)


def _bn(state, p, x, swish):
    y = F.batch_norm(x, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"], state[f"{p}.bias"], False)
    return F.silu(y) if swish else y


def _se(state, p, x):
    h = F.relu(F.linear(x.mean((2, 3)), state[f"{p}.se.se.0.weight"], state[f"{p}.se.se.0.bias"]))
    return x * torch.sigmoid(F.linear(h, state[f"{p}.se.se.2.weight"], state[f"{p}.se.se.2.bias"]))[:, :, None, None]


def test_cells_compute_the_original_functions(tmp_path):
    # Evaluate two cells from the original tensors by the paper's definitions (eval-mode BN) and compare.
    args = ARGS["cifar_like_two_scales_flows"]
    state = official_state(args)
    model = load_official_checkpoint(save_checkpoint(tmp_path, args, state))
    g = torch.Generator().manual_seed(3)

    x = torch.randn(2, 8, 8, 8, generator=g)  # pre-processing down cell: 8 channels at 8x8 -> 16 at 4x4
    p = "pre_process.1"
    h = F.conv2d(_bn(state, f"{p}._ops.0.bn_act", x, True), _wn(state, f"{p}._ops.0.conv_0"), state[f"{p}._ops.0.conv_0.bias"], 2, 1)
    h = F.conv2d(_bn(state, f"{p}._ops.1.bn_act", h, True), _wn(state, f"{p}._ops.1.conv_0"), state[f"{p}._ops.1.conv_0.bias"], 1, 1)
    s = F.silu(x)
    phases = [s, s[:, :, 1:, 1:], s[:, :, :, 1:], s[:, :, 1:, :]]
    skip = torch.cat([F.conv2d(t, _wn(state, f"{p}.skip.conv_{i + 1}"), state[f"{p}.skip.conv_{i + 1}.bias"], 2)
                      for i, t in enumerate(phases)], 1)
    torch.testing.assert_close(model.preprocess[1](x), skip + 0.1 * _se(state, p, h), rtol=1e-4, atol=1e-5)

    x = torch.randn(2, 32, 4, 4, generator=g)  # the decoder's up cell: 32 channels at 4x4 -> 16 at 8x8
    ups = [int(k.split(".")[1]) for k in state if k.startswith("dec_tower.") and k.endswith("skip.1.weight")]
    p, q = f"dec_tower.{ups[0]}", f"dec_tower.{ups[0]}._ops.0.conv"
    h = _bn(state, f"{q}.1.bn", F.interpolate(x, scale_factor=2, mode="nearest"), False)
    h = _bn(state, f"{q}.2.conv.1", F.conv2d(h, state[f"{q}.2.conv.0.weight"]), True)
    h = _bn(state, f"{q}.3.conv.1", F.conv2d(h, state[f"{q}.3.conv.0.weight"], padding=2, groups=h.shape[1]), True)
    h = _bn(state, f"{q}.5.bn", F.conv2d(h, state[f"{q}.4.weight"]), False)
    skip = F.conv2d(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), _wn(state, f"{p}.skip.1"))
    torch.testing.assert_close(model.dec_up[0](x), skip + 0.1 * _se(state, p, h), rtol=1e-4, atol=1e-5)


def test_config_from_args():
    cfg = config_from_official_args(ARGS["celeba_like_no_se"])
    assert (cfg.image_size, cfg.image_channels, cfg.num_flows, cfg.use_se) == (64, 3, 2, False)
    assert cfg.reg_lambda_init == 1.0 and cfg.groups_per_scale == [2, 1, 1]
    mnist = config_from_official_args(ARGS["mnist_like"])
    assert (mnist.likelihood, mnist.crop, mnist.image_size, mnist.reg_lambda_init) == ("bernoulli", 2, 32, None)
    with pytest.raises(ValueError, match="arch_instance"):
        config_from_official_args(_args(arch_instance="res_elu"))
    with pytest.raises(ValueError, match="num_mixture_dec"):
        config_from_official_args(_args(num_mixture_dec=1))
    with pytest.raises(ValueError, match="vanilla"):
        config_from_official_args(_args(num_latent_scales=1, num_groups_per_scale=1))


def test_mismatched_checkpoints_are_rejected(tmp_path):
    args = ARGS["mnist_like"]
    state = official_state(args)
    del state["enc0.1.bias"]
    with pytest.raises(ValueError, match="enc0.1.bias"):
        load_official_checkpoint(save_checkpoint(tmp_path, args, state))
    state = official_state(args)
    state["stem.weight"] = state["stem.weight"][:, :, :2]
    with pytest.raises(ValueError, match="stem.weight"):
        load_official_checkpoint(save_checkpoint(tmp_path, args, state))
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(ValueError, match="not an NVAE checkpoint"):
        load_official_checkpoint(bad)


def test_loaded_model_runs(tmp_path):
    args = ARGS["mnist_like"]
    model = load_official_checkpoint(save_checkpoint(tmp_path, args, official_state(args)))
    assert isinstance(model, NVAE)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
        samples = model.sample(2, temperature=0.7)
    assert out.recon_log_prob.shape == (2,) and torch.all(torch.isfinite(out.recon_log_prob))
    assert samples.shape == (2, 1, 32, 32)


# --- The original state dict's full key set: derived `weight_normalized` entries and the file's other entries.

class _ConvWithNormalisedAttribute(nn.Conv2d):
    """The attribute pattern of the original conv (not its code): the (normalised) weight kept as an attribute."""

    def __init__(self, weight_norm):
        super().__init__(2, 3, 1, bias=False)
        self.log_weight_norm = nn.Parameter(torch.zeros(3, 1, 1, 1)) if weight_norm else None
        self.weight_normalized = self.normalize_weight()

    def normalize_weight(self):
        if self.log_weight_norm is None:
            return self.weight
        return self.log_weight_norm.exp() * self.weight / self.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def test_only_unnormalised_convs_save_weight_normalized():
    # Why the fixture holds `weight_normalized` for exactly the convs without weight norm, as an alias.
    plain, normed = _ConvWithNormalisedAttribute(False), _ConvWithNormalisedAttribute(True)
    plain.weight_normalized = plain.normalize_weight()  # what each forward does again
    sd = plain.state_dict()
    assert list(sd) == ["weight", "weight_normalized"] and sd["weight_normalized"].data_ptr() == sd["weight"].data_ptr()
    assert list(normed.state_dict()) == ["weight", "log_weight_norm"]


def test_fixture_has_the_original_key_set(tmp_path):
    args = ARGS["cifar_like_two_scales_flows"]
    state = official_state(args)
    derived = [k for k in state if k.endswith(".weight_normalized")]
    assert len(derived) == 27  # 9 inverted-residual cells (6 decoder, 1 up, 2 post-processing), 3 convs each
    assert "dec_tower.1._ops.0.conv.2.conv.0.weight_normalized" in derived
    assert all(k.endswith(("conv.0.weight_normalized", "conv.4.weight_normalized", "conv.3.weight_normalized"))
               for k in derived)
    checkpoint = official_checkpoint(args, state)
    assert set(checkpoint) == {"epoch", "state_dict", "optimizer", "global_step", "args", "arch_instance",
                               "scheduler", "grad_scalar"}
    path = save_checkpoint(tmp_path, args, state)
    loaded = torch.load(path, weights_only=False)["state_dict"]
    assert all(loaded[k].data_ptr() == loaded[k.replace("weight_normalized", "weight")].data_ptr() for k in derived)


def _outputs(model, args):
    channels = 1 if args.dataset == "mnist" else 3
    x = torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    with torch.no_grad():
        out = model(x)
        samples = model.sample(2, temperature=0.7)
    return out.recon_log_prob, torch.stack(out.kl_per_group), samples


@pytest.mark.parametrize("name", ["cifar_like_two_scales_flows", "mnist_like"])
def test_full_key_set_loads_and_gives_the_same_outputs(tmp_path, name):
    args = ARGS[name]
    state = official_state(args)
    model, report = load_official_checkpoint(save_checkpoint(tmp_path, args, state), return_report=True)
    old = official_state(args, weight_normalized=False)  # same values, without the derived entries
    assert set(state) - set(old) == {k for k in state if k.endswith(".weight_normalized")}
    model_old, report_old = load_official_checkpoint(save_checkpoint(tmp_path, args, old, "old.pt"), return_report=True)
    mine, before = model.state_dict(), model_old.state_dict()
    assert list(mine) == list(before) and all(torch.equal(mine[k], before[k]) for k in mine)
    for a, b in zip(_outputs(model, args), _outputs(model_old, args)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # The report accounts for every state-dict key and every file entry.
    assert isinstance(report, OfficialLoadReport) and report.config == config_from_official_args(args)
    derived = {k: k.removesuffix("_normalized") for k in state if k.endswith(".weight_normalized")}
    assert report.derived == derived and report_old.derived == {}
    assert set(report.loaded) == set(state) - set(derived) and report.loaded == report_old.loaded
    assert sorted(report.loaded.values()) == sorted(k for k in mine if not k.startswith("spectral_regularizer."))
    assert report.initialised == [k for k in mine if k.startswith("spectral_regularizer.")]
    assert set(report.dropped) == {"epoch", "global_step", "optimizer", "scheduler", "grad_scalar"}
    assert report.dropped["epoch"].endswith("= 3")
    assert f"{len(derived)} derived" in str(report) and "\n" not in str(report)


def _single_line_error(match, fn):
    with pytest.raises(ValueError, match=re.escape(match)) as info:
        fn()
    assert "\n" not in str(info.value)


def test_derived_tensors_are_checked(tmp_path):
    args = ARGS["cifar_like_two_scales_flows"]
    key = "dec_tower.1._ops.0.conv.2.conv.0.weight_normalized"
    state = official_state(args)
    state[key] = state[key].clone()
    state[key][0, 0, 0, 0] += 1e-3
    _single_line_error(key, lambda: load_official_checkpoint(save_checkpoint(tmp_path, args, state)))

    state = official_state(args)  # a normalised copy: what weight norm would give, not what is saved
    state[key] = state[key] / state[key].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    _single_line_error(key, lambda: load_official_checkpoint(save_checkpoint(tmp_path, args, state)))

    state = official_state(args)  # some derived entries but not all: not a checkpoint the original writes
    del state["post_process.1._ops.0.conv.3.weight_normalized"]
    _single_line_error("post_process.1._ops.0.conv.3.weight_normalized",
                       lambda: load_official_checkpoint(save_checkpoint(tmp_path, args, state)))

    state = official_state(args)  # weight-normalised convs never save theirs
    state["stem.weight_normalized"] = state["stem.weight"].clone()
    _single_line_error("unexpected ['stem.weight_normalized']",
                       lambda: load_official_checkpoint(save_checkpoint(tmp_path, args, state)))


def test_file_entries_are_checked_or_reported(tmp_path):
    args = ARGS["mnist_like"]
    state = official_state(args)
    cells = {**official_checkpoint(args, state)["arch_instance"], "normal_enc": ["res_bnswish5", "res_bnswish"]}
    path = save_checkpoint(tmp_path, args, state, arch_instance=cells)
    _single_line_error("arch_instance is not res_mbconv's cell choice at ['normal_enc']",
                       lambda: load_official_checkpoint(path))
    _, report = load_official_checkpoint(save_checkpoint(tmp_path, args, state, note="fine-tuned"), return_report=True)
    assert report.dropped["note"] == "not read by this loader = 'fine-tuned'"
    # With 'module.' prefixes (a wrapped model's state dict) and without the optional entries.
    wrapped = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "minimal.pt"
    torch.save({"state_dict": wrapped, "args": args}, path)
    model, report = load_official_checkpoint(path, return_report=True)
    assert report.dropped == {} and len(report.derived) == 27  # 6 decoder, 1 up, 2 post-processing cells
    assert set(report.loaded) | set(report.derived) == set(state)
