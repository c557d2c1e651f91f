"""Synthetic checkpoints in the format the original NVAE training code writes (NVlabs/NVAE).

:func:`official_state` builds the original model's ``state_dict()`` for a training command: every key,
shape and the order ``nn.Module.state_dict()`` gives them, found by walking the original module tree as
the public code lays it out (``model.py``: ``AutoEncoder.__init__`` and its ``init_*`` methods; cells from
``neural_operations.py`` / ``neural_ar_operations.py``). Values are random (seeded), so every tensor is
identifiable. :func:`official_checkpoint` wraps it in the dict ``train.py`` saves. Nothing here comes
from our mapping code.

What the original state dict holds, by module kind (``res_mbconv`` models):

* weight-normalised conv (their ``Conv2D``, the default): ``weight``, ``bias`` (when built with one),
  ``log_weight_norm``. The normalised weight it computes is a plain tensor attribute: not saved.
* conv built without weight norm (inside the conv + BN-Swish pairs of an inverted-residual cell, and the
  cell's projection): ``weight`` and ``weight_normalized``. The attribute holds the ``weight`` parameter
  itself, which ``nn.Module`` registers again under the new name, so both entries share storage.
* autoregressive (flow) conv: ``weight``, ``bias`` (``mu`` only), ``log_weight_norm``; its mask and
  normalised weight are plain attributes.
* BN (BN-Swish, or a plain BN wrapped as ``.bn``): ``weight``, ``bias``, ``running_mean``, ``running_var``,
  ``num_batches_tracked``; SE: two ``nn.Linear``; the model: ``prior_ftr0``.
* not in the state dict: the spectral regulariser's power-iteration vectors (``sr_u`` / ``sr_v``, plain
  dicts) and the lists of conv / BN layers.

The file (``train.py``) holds ``epoch``, ``state_dict``, ``optimizer``, ``global_step``, ``args``,
``arch_instance``, ``scheduler`` and ``grad_scalar``.
"""

from __future__ import annotations

import argparse

import torch

BN_KEYS = ("weight", "bias", "running_mean", "running_var")

# The original train.py's command-line defaults, plus what it sets before training.
TRAIN_DEFAULTS = dict(
    root="/tmp/nasvae/expr", save="/tmp/nasvae/expr/eval-exp", dataset="mnist", data="/tmp/nasvae/data",
    batch_size=200, learning_rate=1e-2, learning_rate_min=1e-4, weight_decay=3e-4, weight_decay_norm=0.0,
    weight_decay_norm_init=10.0, weight_decay_norm_anneal=False, epochs=200, warmup_epochs=5, fast_adamax=False,
    arch_instance="res_mbconv", kl_anneal_portion=0.3, kl_const_portion=1e-4, kl_const_coeff=1e-4, num_nf=0,
    num_x_bits=8, num_latent_scales=1, num_groups_per_scale=10, num_latent_per_group=20, ada_groups=False,
    min_groups_per_scale=1, num_channels_enc=32, num_preprocess_blocks=2, num_preprocess_cells=3,
    num_cell_per_cond_enc=1, num_channels_dec=32, num_postprocess_blocks=2, num_postprocess_cells=3,
    num_cell_per_cond_dec=1, num_mixture_dec=10, use_se=False, res_dist=False, cont_training=False,
    num_proc_node=1, node_rank=0, local_rank=0, global_rank=0, num_process_per_node=1,
    master_address="127.0.0.1", seed=1, distributed=True, num_total_iter=10_000,
)

_RES, _MB6, _MB3 = ["res_bnswish", "res_bnswish"], ["mconv_e6k5g0"], ["mconv_e3k5g0"]
RES_MBCONV_CELLS = dict(normal_enc=_RES, down_enc=_RES, normal_dec=_MB6, up_dec=_MB6, normal_pre=_RES,
                        down_pre=_RES, normal_post=_MB3, up_post=_MB3, ar_nn=[""])


def train_args(**kw) -> argparse.Namespace:
    """The ``args`` namespace the original train.py stores, with ``kw`` as given on its command line."""
    return argparse.Namespace(**{**TRAIN_DEFAULTS, **kw})


class _State(dict):
    """Original state dict under construction, in ``state_dict()`` order; ``g`` makes the values reproducible."""

    def __init__(self, seed, use_se, weight_normalized):
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)
        self.use_se = use_se
        self.weight_normalized = weight_normalized

    def put(self, key, *shape):
        self[key] = torch.randn(shape, generator=self.g) * 0.3

    def wn_conv(self, p, cin, cout, k, bias=True, groups=1):
        self.put(f"{p}.weight", cout, cin // groups, k, k)
        if bias:
            self.put(f"{p}.bias", cout)
        self[f"{p}.log_weight_norm"] = torch.randn(cout, 1, 1, 1, generator=self.g) * 0.1

    def plain_conv(self, p, cin, cout, k, groups=1):
        self.put(f"{p}.weight", cout, cin // groups, k, k)
        if self.weight_normalized:  # the same parameter again: state_dict() detaches each entry separately
            self[f"{p}.weight_normalized"] = self[f"{p}.weight"].detach()

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
        if down:
            for i, c in enumerate([cout // 4] * 3 + [cout - 3 * (cout // 4)]):
                self.wn_conv(f"{p}.skip.conv_{i + 1}", cin, c, 1)
        self.bn(f"{p}._ops.0.bn_act", cin)
        self.wn_conv(f"{p}._ops.0.conv_0", cin, cout, 3)
        self.bn(f"{p}._ops.1.bn_act", cout)
        self.wn_conv(f"{p}._ops.1.conv_0", cout, cout, 3)
        self.se(p, cout)

    def mb_cell(self, p, cin, ex, up):
        cout, hid, seq = (cin // 2 if up else cin), cin * ex, [f"{p}._ops.0.conv.{i}" for i in range(6)]
        if up:
            seq = seq[1:]  # index 0 is the parameter-free nearest up-sampling
            self.wn_conv(f"{p}.skip.1", cin, cout, 1, bias=False)
        self.bn(f"{seq[0]}.bn", cin)
        self.plain_conv(f"{seq[1]}.conv.0", cin, hid, 1)
        self.bn(f"{seq[1]}.conv.1", hid)
        self.plain_conv(f"{seq[2]}.conv.0", hid, hid, 5, groups=hid)
        self.bn(f"{seq[2]}.conv.1", hid)
        self.plain_conv(f"{seq[3]}", hid, cout, 1)
        self.bn(f"{seq[4]}.bn", cout)
        self.se(p, cout)

    def flow(self, p, z):
        for cell in ("cell1", "cell2"):
            self.wn_conv(f"{p}.{cell}.conv.convz.0", z, 6 * z, 3, bias=False)
            self.wn_conv(f"{p}.{cell}.conv.convz.2", 6 * z, 6 * z, 5, bias=False, groups=6 * z)
            self.wn_conv(f"{p}.{cell}.mu.conv_0", 6 * z, z, 1)


def groups_per_scale(a) -> list[int]:
    g, n = [], a.num_groups_per_scale
    for _ in range(a.num_latent_scales):
        g.append(n)
        n = max(a.min_groups_per_scale, n // 2) if a.ada_groups else n
    return g


def official_state(a, seed=0, weight_normalized=True) -> dict:
    """The original model's state dict for training args ``a``; ``weight_normalized=False`` gives the
    key set of checkpoints from before the original conv had that attribute."""
    st = _State(seed, a.use_se, weight_normalized)
    cin = 1 if a.dataset == "mnist" else 3
    size = 32 if a.dataset in ("mnist", "cifar10") else int(a.dataset.split("_")[-1])
    ce, cd, z, groups = a.num_channels_enc, a.num_channels_dec, a.num_latent_per_group, groups_per_scale(a)
    scales = a.num_latent_scales
    top = size // 2 ** (a.num_preprocess_blocks + scales - 1)
    st.put("prior_ftr0", cd * 2 ** (a.num_preprocess_blocks + scales - 1), top, top)
    st.wn_conv("stem", cin, ce, 3)
    mult, i = 1, 0
    for _ in range(a.num_preprocess_blocks):
        for c in range(a.num_preprocess_cells):
            st.res_cell(f"pre_process.{i}", ce * mult, c == a.num_preprocess_cells - 1)
            mult *= 2 if c == a.num_preprocess_cells - 1 else 1
            i += 1
    j = 0
    for s in range(scales):
        for g in range(groups[s]):
            for _ in range(a.num_cell_per_cond_enc):
                st.res_cell(f"enc_tower.{j}", ce * mult, False)
                j += 1
            if not (s == scales - 1 and g == groups[s] - 1):
                st.wn_conv(f"enc_tower.{j}.conv", cd * mult, ce * mult, 1)
                j += 1
        if s < scales - 1:
            st.res_cell(f"enc_tower.{j}", ce * mult, True)
            j += 1
            mult *= 2
    st.wn_conv("enc0.1", ce * mult, ce * mult, 1)
    dec_groups = groups[::-1]
    for kind in ("enc_sampler", "dec_sampler", "nf_cells"):
        m, d, nf = mult, 0, 0
        for s in range(scales):
            for _ in range(dec_groups[s]):
                if kind == "enc_sampler":
                    st.wn_conv(f"enc_sampler.{d}", ce * m, 2 * z, 3)
                elif kind == "dec_sampler" and d > 0:
                    st.wn_conv(f"dec_sampler.{d - 1}.1", cd * m, 2 * z, 1)
                elif kind == "nf_cells":
                    for _ in range(a.num_nf):
                        st.flow(f"nf_cells.{nf}", z)
                        nf += 1
                d += 1
            m //= 2
    d, j = 0, 0
    for s in range(scales):
        for _ in range(dec_groups[s]):
            if d > 0:
                for _ in range(a.num_cell_per_cond_dec):
                    st.mb_cell(f"dec_tower.{j}", cd * mult, 6, up=False)
                    j += 1
            st.wn_conv(f"dec_tower.{j}.conv", cd * mult + z, cd * mult, 1)
            j += 1
            d += 1
        if s < scales - 1:
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


def is_parameter(key: str) -> bool:
    """Whether an original state-dict key is a distinct parameter (not a BN buffer, not an alias)."""
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked", "weight_normalized"))


def official_checkpoint(args, state, epoch=3) -> dict:
    """The dict the original train.py saves for ``state``: its entries and their kinds of content (an
    Adamax and a cosine schedule over the parameters, one step taken; an AMP scaler's state)."""
    params = [torch.nn.Parameter(t.clone().float()) for k, t in state.items() if is_parameter(k)]
    optimizer = torch.optim.Adamax(params, args.learning_rate, weight_decay=args.weight_decay, eps=1e-3)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, float(args.epochs - args.warmup_epochs - 1), eta_min=args.learning_rate_min)
    return {"epoch": epoch, "state_dict": state, "optimizer": optimizer.state_dict(), "global_step": 99 * epoch,
            "args": args, "arch_instance": {k: list(v) for k, v in RES_MBCONV_CELLS.items()},
            "scheduler": scheduler.state_dict(),
            "grad_scalar": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                            "growth_interval": 2000, "_growth_tracker": 17}}


def save_checkpoint(tmp_path, args, state, name="checkpoint.pt", **entries) -> str:
    """Write :func:`official_checkpoint` (entries replaced or added by ``entries``) to ``tmp_path / name``."""
    path = tmp_path / name
    torch.save({**official_checkpoint(args, state), **entries}, path)
    return path
