"""Loading checkpoints of the original NVAE code, tested on synthetic checkpoints of that format.

``_official_state`` builds the original model's state dict (names and shapes) for a training command
by walking the original module tree as the public code lays it out; the values are random, so every
tensor is identifiable. Nothing here comes from our mapping code.
"""

import argparse

import pytest
import torch
import torch.nn.functional as F

from nvae_fast.model import NVAE
from nvae_fast.model.official import config_from_official_args, load_official_checkpoint

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class _State(dict):
    """Original state dict under construction; ``g`` makes the random values reproducible."""

    def __init__(self, seed, use_se):
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)
        self.use_se = use_se

    def put(self, key, *shape):
        self[key] = torch.randn(shape, generator=self.g) * 0.3

    def wn_conv(self, p, cin, cout, k, bias=True, groups=1):
        self.put(f"{p}.weight", cout, cin // groups, k, k)
        self[f"{p}.log_weight_norm"] = torch.randn(cout, 1, 1, 1, generator=self.g) * 0.1
        if bias:
            self.put(f"{p}.bias", cout)

    def bn(self, p, c):
        for k in BN_KEYS:
            self.put(f"{p}.{k}", c)
        self[f"{p}.running_var"] = self[f"{p}.running_var"].abs() + 0.5
        self[f"{p}.weight"] = self[f"{p}.weight"] + 1.0
        self[f"{p}.num_batches_tracked"] = torch.tensor(7)

    def se(self, p, c):
        if not self.use_se:
            return
        h = max(c // 16, 4)
        self.put(f"{p}.se.se.0.weight", h, c)
        self.put(f"{p}.se.se.0.bias", h)
        self.put(f"{p}.se.se.2.weight", c, h)
        self.put(f"{p}.se.se.2.bias", c)

    def res_cell(self, p, cin, down):
        cout = 2 * cin if down else cin
        self.bn(f"{p}._ops.0.bn_act", cin)
        self.wn_conv(f"{p}._ops.0.conv_0", cin, cout, 3)
        self.bn(f"{p}._ops.1.bn_act", cout)
        self.wn_conv(f"{p}._ops.1.conv_0", cout, cout, 3)
        if down:
            for i, c in enumerate([cout // 4] * 3 + [cout - 3 * (cout // 4)]):
                self.wn_conv(f"{p}.skip.conv_{i + 1}", cin, c, 1)
        self.se(p, cout)

    def mb_cell(self, p, cin, ex, up):
        cout, hid, seq = (cin // 2 if up else cin), cin * ex, [f"{p}._ops.0.conv.{i}" for i in range(6)]
        if up:
            seq = seq[1:]  # index 0 is the parameter-free nearest up-sampling
            self.wn_conv(f"{p}.skip.1", cin, cout, 1, bias=False)
        self.bn(f"{seq[0]}.bn", cin)
        self.put(f"{seq[1]}.conv.0.weight", hid, cin, 1, 1)
        self.bn(f"{seq[1]}.conv.1", hid)
        self.put(f"{seq[2]}.conv.0.weight", hid, 1, 5, 5)
        self.bn(f"{seq[2]}.conv.1", hid)
        self.put(f"{seq[3]}.weight", cout, hid, 1, 1)
        self.bn(f"{seq[4]}.bn", cout)
        self.se(p, cout)

    def flow(self, p, z):
        for cell in ("cell1", "cell2"):
            self.wn_conv(f"{p}.{cell}.conv.convz.0", z, 6 * z, 3, bias=False)
            self.wn_conv(f"{p}.{cell}.conv.convz.2", 6 * z, 6 * z, 5, bias=False, groups=6 * z)
            self.wn_conv(f"{p}.{cell}.mu.conv_0", 6 * z, z, 1)


def _groups(a):
    g, n = [], a.num_groups_per_scale
    for _ in range(a.num_latent_scales):
        g.append(n)
        n = max(a.min_groups_per_scale, n // 2) if a.ada_groups else n
    return g


def _official_state(a, seed=0):
    st = _State(seed, a.use_se)
    cin = 1 if a.dataset == "mnist" else 3
    size = 32 if a.dataset in ("mnist", "cifar10") else int(a.dataset.split("_")[-1])
    ce, cd, z, groups = a.num_channels_enc, a.num_channels_dec, a.num_latent_per_group, _groups(a)
    st.wn_conv("stem", cin, ce, 3)
    mult, i = 1, 0
    for _ in range(a.num_preprocess_blocks):
        for c in range(a.num_preprocess_cells):
            st.res_cell(f"pre_process.{i}", ce * mult, c == a.num_preprocess_cells - 1)
            mult *= 2 if c == a.num_preprocess_cells - 1 else 1
            i += 1
    tower = []
    for s in range(a.num_latent_scales):
        for g in range(groups[s]):
            tower += [("res", ce * mult)] * a.num_cell_per_cond_enc
            if not (s == a.num_latent_scales - 1 and g == groups[s] - 1):
                tower.append(("comb", ce * mult, cd * mult))
        if s < a.num_latent_scales - 1:
            tower.append(("down", ce * mult))
            mult *= 2
    for j, (kind, *ch) in enumerate(tower):
        if kind == "comb":
            st.wn_conv(f"enc_tower.{j}.conv", ch[1], ch[0], 1)
        else:
            st.res_cell(f"enc_tower.{j}", ch[0], kind == "down")
    st.wn_conv("enc0.1", ce * mult, ce * mult, 1)
    top = size // 2 ** (a.num_preprocess_blocks + a.num_latent_scales - 1)
    st.put("prior_ftr0", cd * mult, top, top)
    d, nf, j = 0, 0, 0
    for s in range(a.num_latent_scales):
        for g in range(groups[a.num_latent_scales - s - 1]):
            st.wn_conv(f"enc_sampler.{d}", ce * mult, 2 * z, 3)
            for _ in range(a.num_nf):
                st.flow(f"nf_cells.{nf}", z)
                nf += 1
            if d > 0:
                st.wn_conv(f"dec_sampler.{d - 1}.1", cd * mult, 2 * z, 1)
                for _ in range(a.num_cell_per_cond_dec):
                    st.mb_cell(f"dec_tower.{j}", cd * mult, 6, up=False)
                    j += 1
            st.wn_conv(f"dec_tower.{j}.conv", cd * mult + z, cd * mult, 1)
            j += 1
            d += 1
        if s < a.num_latent_scales - 1:
            st.mb_cell(f"dec_tower.{j}", cd * mult, 6, up=True)
            j += 1
            mult //= 2
    i = 0
    for _ in range(a.num_postprocess_blocks):
        for c in range(a.num_postprocess_cells):
            st.mb_cell(f"post_process.{i}", cd * mult, 3, up=c == 0)
            mult //= 2 if c == 0 else 1
            i += 1
    out = 1 if a.dataset == "mnist" else 10 * a.num_mixture_dec
    st.wn_conv("image_conditional.1", cd * mult, out, 3)
    return dict(st)


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
    return argparse.Namespace(**base)


def _save(tmp_path, args, state):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": state, "args": args, "global_step": 99,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-2, "params": [0]}]},
                "arch_instance": {"normal_enc": ["res_bnswish", "res_bnswish"]}}, path)
    return path


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
    state = _official_state(args)
    model = load_official_checkpoint(_save(tmp_path, args, state))
    ours = model.state_dict()
    assert not model.training
    n_ours = sum(1 for k in ours if not k.startswith("spectral_regularizer."))
    assert n_ours == len(state)
    assert sum(p.numel() for p in model.parameters()) == sum(
        t.numel() for k, t in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    # Spot checks by role.
    torch.testing.assert_close(ours["top"], state["prior_ftr0"])
    torch.testing.assert_close(ours["to_params.1.bias"], state["image_conditional.1.bias"])
    assert int(ours["preprocess.0.branch.bn_swish1.num_batches_tracked"]) == 7


def test_encoder_combiners_serve_the_decoder_in_reverse_order(tmp_path):
    args = ARGS["cifar_like_two_scales_flows"]
    state = _official_state(args)
    model = load_official_checkpoint(_save(tmp_path, args, state))
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
    state = _official_state(args)
    model = load_official_checkpoint(_save(tmp_path, args, state))
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
    state = _official_state(args)
    del state["enc0.1.bias"]
    with pytest.raises(ValueError, match="enc0.1.bias"):
        load_official_checkpoint(_save(tmp_path, args, state))
    state = _official_state(args)
    state["stem.weight"] = state["stem.weight"][:, :, :2]
    with pytest.raises(ValueError, match="stem.weight"):
        load_official_checkpoint(_save(tmp_path, args, state))
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(ValueError, match="not an NVAE checkpoint"):
        load_official_checkpoint(bad)


def test_loaded_model_runs(tmp_path):
    args = ARGS["mnist_like"]
    model = load_official_checkpoint(_save(tmp_path, args, _official_state(args)))
    assert isinstance(model, NVAE)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
        samples = model.sample(2, temperature=0.7)
    assert out.recon_log_prob.shape == (2,) and torch.all(torch.isfinite(out.recon_log_prob))
    assert samples.shape == (2, 1, 32, 32)
