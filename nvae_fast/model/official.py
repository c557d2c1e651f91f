"""Load checkpoints written by the original NVAE training code into an :class:`~nvae_fast.model.NVAE`.

An original checkpoint is a dict with ``'state_dict'`` (the model's parameters and BN buffers, plus derived
copies) and ``'args'`` (the ``argparse.Namespace`` of the training command), plus training state that is
dropped and reported (all listed below). The
architecture must be the public one (``arch_instance='res_mbconv'``: residual BN-Swish encoder cells,
inverted-residual decoder cells, expansion 6 and 3, kernel 5) with more than one latent group.

Parameter names of the original model, by role (our names after the arrow):

* ``stem``, ``enc0.1``, ``enc_sampler.{d}``, ``dec_sampler.{d-1}.1``, ``image_conditional.1``: weight-normalised
  convs (``weight``, ``log_weight_norm``, ``bias``) -> ``stem``, ``enc0.1``, ``posterior_heads.{d}``,
  ``prior_heads.{d-1}.1``, ``to_params.1``; ``prior_ftr0`` -> ``top``.
* ``pre_process.{i}``, ``post_process.{i}`` -> ``preprocess.{i}``, ``postprocess.{i}``.
* ``enc_tower.{j}``: in order, per scale (finest first) and group: the group's cells, then (except after
  the very last group) an encoder combiner ``conv``; a down cell after each scale but the last.
* ``dec_tower.{j}``: in order, per scale (coarsest first) and group: the group's cells (none for the first
  group), the decoder combiner ``conv``; an up cell after each scale but the last.
* ``nf_cells.{d * num_flows + n}.cell{1,2}``: ``conv.convz.0`` / ``conv.convz.2`` / ``mu.conv_0`` masked
  weight-normalised convs -> ``flows.{d}.{n}.cell{1,2}.conv1`` / ``conv2`` / ``shift``.
* a cell: ``skip`` (``conv_1..4`` of a factorised reduction, or ``1`` after the bilinear up-sampling),
  ``se.se.0`` / ``se.se.2`` -> ``se.fc1`` / ``se.fc2``; residual ops ``_ops.{0,1}.bn_act`` / ``.conv_0``
  -> ``branch.bn_swish{1,2}`` / ``branch.conv{1,2}``; inverted-residual ``_ops.0.conv.{k}`` (k shifted by
  one in up cells, whose index 0 is the nearest up-sampling): BN (``.bn`` inside), 1×1 conv + BN-Swish
  (``.conv.0`` / ``.conv.1``), depthwise conv + BN-Swish, 1×1 conv, BN -> ``branch.bn_in``,
  ``branch.expand`` / ``bn_swish1``, ``branch.depthwise`` / ``bn_swish2``, ``branch.project``, ``branch.bn_out``.

The original ``state_dict()`` holds more than parameters and BN buffers, and the checkpoint file more
than the model; :func:`load_official_checkpoint` accounts for every entry (see its :class:`OfficialLoadReport`):

* loaded: the tensors above (parameters, and BN ``running_mean`` / ``running_var`` / ``num_batches_tracked``).
* derived, checked and not loaded: ``*.weight_normalized`` of each conv built *without* weight norm, i.e. the
  three convs of an inverted-residual cell (``_ops.0.conv.{k}.conv.0`` of the 1×1 expansion and the depthwise
  conv, and the projection ``_ops.0.conv.{k}``): 3 per decoder / post-processing cell. The original conv keeps
  its normalised weight in an attribute; without weight norm that value is the ``weight`` parameter itself,
  so ``nn.Module`` registers it a second time and the state dict holds it twice (same storage). It must equal
  its ``weight`` exactly; a mismatch is an error naming the key. Weight-normalised convs keep a computed
  tensor there, which ``nn.Module`` does not register, so no other ``weight_normalized`` (nor any other key)
  is accepted. Checkpoints from before this attribute have none; a state dict with only some is rejected.
* not in the file, so initialised here: the spectral regulariser's power-iteration vectors (the original
  keeps them in plain dicts on the model) -> our ``spectral_regularizer.*`` buffers start fresh. BN
  re-adjustment (re-estimating BN statistics by sampling in train mode) is done at evaluation time and
  saves nothing.
* file entries besides ``state_dict``: ``args`` gives the config; ``arch_instance`` (the cell choice, if
  present) must be ``res_mbconv``'s; the training state ``epoch``, ``global_step``, ``optimizer`` (Adamax
  moments), ``scheduler`` (cosine LR) and ``grad_scalar`` (AMP loss scale), and any other entry, are
  dropped, each listed in the report.

Known difference: the original discretised-logistic likelihood treats values above 0.99 (in [-1, 1]) as
the top bin, which at 8 bits includes level 254 as well as 255; ours uses exactly the top level. Network
outputs, latents and KL terms are the same function; ``recon_log_prob`` differs only on pixels at level 254.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

from .config import NVAEConfig
from .nvae import NVAE

__all__ = [
    "load_official_checkpoint", "config_from_official_args", "official_key_map", "official_derived_keys",
    "OfficialLoadReport",
]

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WN = ("weight", "log_weight_norm", "bias")
_BINARY = {"mnist", "omniglot"}
_CROPPED = {"mnist", "omniglot", "stacked_mnist"}
_RES = ["res_bnswish", "res_bnswish"]
# The cell choice (cell type -> ops) that the original code records as 'arch_instance' for 'res_mbconv'.
_RES_MBCONV_CELLS = {
    "normal_enc": _RES, "down_enc": _RES, "normal_dec": ["mconv_e6k5g0"], "up_dec": ["mconv_e6k5g0"],
    "normal_pre": _RES, "down_pre": _RES, "normal_post": ["mconv_e3k5g0"], "up_post": ["mconv_e3k5g0"],
    "ar_nn": [""],
}
# Checkpoint entries that are training state, not the model: what each holds.
_TRAINING_STATE = {
    "epoch": "epochs trained",
    "global_step": "optimiser steps taken",
    "optimizer": "optimiser state (Adamax moments)",
    "scheduler": "learning-rate scheduler state",
    "grad_scalar": "AMP gradient-scaler state",
}


def _image_size(dataset: str) -> int:
    if dataset in _BINARY or dataset == "cifar10":
        return 32
    if dataset == "ffhq":
        return 256
    if dataset.split("_")[0] in ("celeba", "imagenet", "lsun") and dataset.split("_")[-1].isdigit():
        return int(dataset.split("_")[-1])
    raise ValueError(f"config_from_official_args: unsupported dataset {dataset!r}")


def config_from_official_args(args) -> NVAEConfig:
    """The :class:`NVAEConfig` of an original training command (``argparse.Namespace`` or dict)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)

    def get(name, default=None):
        if name in a:
            return a[name]
        if default is None:
            raise ValueError(f"config_from_official_args: args lacks {name!r}")
        return default

    arch = get("arch_instance", "res_mbconv")
    if arch != "res_mbconv":
        raise ValueError(f"config_from_official_args: only arch_instance 'res_mbconv' is supported, got {arch!r}")
    dataset = get("dataset")
    binary = dataset in _BINARY
    num_mix = get("num_mixture_dec", 10)
    if not binary and num_mix < 2:
        raise ValueError("config_from_official_args: num_mixture_dec=1 (a Normal decoder) is not supported")
    if get("num_latent_scales") == 1 and get("num_groups_per_scale") == 1:
        raise ValueError("config_from_official_args: a single latent group (the 'vanilla VAE' variant) is not supported")
    anneal = bool(get("weight_decay_norm_anneal", False))
    return NVAEConfig(
        image_channels=1 if binary else 3,
        image_size=_image_size(dataset),
        likelihood="bernoulli" if binary else "dmol",
        num_mix=num_mix,
        num_x_bits=get("num_x_bits", 8),
        crop=2 if dataset in _CROPPED else 0,
        channels_enc=get("num_channels_enc"),
        channels_dec=get("num_channels_dec"),
        num_preprocess_blocks=get("num_preprocess_blocks"),
        num_preprocess_cells=get("num_preprocess_cells"),
        num_postprocess_blocks=get("num_postprocess_blocks"),
        num_postprocess_cells=get("num_postprocess_cells"),
        num_latent_scales=get("num_latent_scales"),
        num_groups_per_scale=get("num_groups_per_scale"),
        adaptive_groups=bool(get("ada_groups", False)),
        min_groups_per_scale=get("min_groups_per_scale", 1),
        num_latent_per_group=get("num_latent_per_group"),
        num_cell_per_cond_enc=get("num_cell_per_cond_enc"),
        num_cell_per_cond_dec=get("num_cell_per_cond_dec"),
        num_flows=get("num_nf", 0),
        use_se=bool(get("use_se", False)),
        residual_posterior=bool(get("res_dist", False)),
        reg_lambda=float(get("weight_decay_norm", 0.0)),
        reg_lambda_init=float(get("weight_decay_norm_init")) if anneal else None,
    )


def _leaves(mine: str, theirs: str, names) -> dict[str, str]:
    return {f"{mine}.{n}": f"{theirs}.{n}" for n in names}


def _se(mine: str, theirs: str, cfg) -> dict[str, str]:
    if not cfg.use_se:
        return {}
    return {**_leaves(f"{mine}.se.fc1", f"{theirs}.se.se.0", ("weight", "bias")),
            **_leaves(f"{mine}.se.fc2", f"{theirs}.se.se.2", ("weight", "bias"))}


def _encoder_cell(mine: str, theirs: str, down: bool, cfg) -> dict[str, str]:
    m = {}
    for i in (1, 2):
        m.update(_leaves(f"{mine}.branch.bn_swish{i}", f"{theirs}._ops.{i - 1}.bn_act", _BN))
        m.update(_leaves(f"{mine}.branch.conv{i}", f"{theirs}._ops.{i - 1}.conv_0", _WN))
    if down:
        for k in range(4):
            m.update(_leaves(f"{mine}.skip.convs.{k}", f"{theirs}.skip.conv_{k + 1}", _WN))
    return {**m, **_se(mine, theirs, cfg)}


def _decoder_cell(mine: str, theirs: str, up: bool, cfg) -> dict[str, str]:
    o, ops, b = int(up), f"{theirs}._ops.0.conv", f"{mine}.branch"
    m = {
        **_leaves(f"{b}.bn_in", f"{ops}.{o}.bn", _BN),
        f"{b}.expand.weight": f"{ops}.{o + 1}.conv.0.weight",
        **_leaves(f"{b}.bn_swish1", f"{ops}.{o + 1}.conv.1", _BN),
        f"{b}.depthwise.weight": f"{ops}.{o + 2}.conv.0.weight",
        **_leaves(f"{b}.bn_swish2", f"{ops}.{o + 2}.conv.1", _BN),
        f"{b}.project.weight": f"{ops}.{o + 3}.weight",
        **_leaves(f"{b}.bn_out", f"{ops}.{o + 4}.bn", _BN),
    }
    if up:
        m.update(_leaves(f"{mine}.skip.conv", f"{theirs}.skip.1", ("weight", "log_weight_norm")))
    return {**m, **_se(mine, theirs, cfg)}


def official_key_map(cfg: NVAEConfig) -> dict[str, str]:
    """``{our state-dict key: original key}`` for every parameter and BN buffer of ``NVAE(cfg)``."""
    m = {"top": "prior_ftr0", **_leaves("stem", "stem", _WN), **_leaves("enc0.1", "enc0.1", _WN),
         **_leaves("to_params.1", "image_conditional.1", _WN)}
    i = 0
    for _ in range(cfg.num_preprocess_blocks):
        for c in range(cfg.num_preprocess_cells):
            m.update(_encoder_cell(f"preprocess.{i}", f"pre_process.{i}", c == cfg.num_preprocess_cells - 1, cfg))
            i += 1
    i = 0
    for _ in range(cfg.num_postprocess_blocks):
        for c in range(cfg.num_postprocess_cells):
            m.update(_decoder_cell(f"postprocess.{i}", f"post_process.{i}", c == 0, cfg))
            i += 1

    enc_groups, num_groups = cfg.groups_per_scale, cfg.num_groups
    j, group = 0, 0  # index in enc_tower; encoder group (finest first)
    for s, groups in enumerate(enc_groups):
        for _ in range(groups):
            for c in range(cfg.num_cell_per_cond_enc):
                m.update(_encoder_cell(f"enc_groups.{group}.{c}", f"enc_tower.{j}", False, cfg))
                j += 1
            if group < num_groups - 1:  # its combiner serves decoder group num_groups - 1 - group
                m.update(_leaves(f"enc_combiners.{num_groups - 2 - group}.conv", f"enc_tower.{j}.conv", _WN))
                j += 1
            group += 1
        if s < len(enc_groups) - 1:
            m.update(_encoder_cell(f"enc_down.{s}", f"enc_tower.{j}", True, cfg))
            j += 1

    j, d = 0, 0  # index in dec_tower; decoder group (coarsest first)
    dec_groups = enc_groups[::-1]
    for s, groups in enumerate(dec_groups):
        for _ in range(groups):
            if d > 0:
                for c in range(cfg.num_cell_per_cond_dec):
                    m.update(_decoder_cell(f"dec_cells.{d - 1}.{c}", f"dec_tower.{j}", False, cfg))
                    j += 1
                m.update(_leaves(f"prior_heads.{d - 1}.1", f"dec_sampler.{d - 1}.1", _WN))
            m.update(_leaves(f"dec_combiners.{d}.conv", f"dec_tower.{j}.conv", _WN))
            m.update(_leaves(f"posterior_heads.{d}", f"enc_sampler.{d}", _WN))
            for n in range(cfg.num_flows):
                for cell in ("cell1", "cell2"):
                    mine, theirs = f"flows.{d}.{n}.{cell}", f"nf_cells.{d * cfg.num_flows + n}.{cell}"
                    m.update(_leaves(f"{mine}.conv1", f"{theirs}.conv.convz.0", ("weight", "log_weight_norm")))
                    m.update(_leaves(f"{mine}.conv2", f"{theirs}.conv.convz.2", ("weight", "log_weight_norm")))
                    m.update(_leaves(f"{mine}.shift", f"{theirs}.mu.conv_0", _WN))
            j += 1
            d += 1
        if s < len(dec_groups) - 1:
            m.update(_decoder_cell(f"dec_up.{s}", f"dec_tower.{j}", True, cfg))
            j += 1
    return m


_UNNORMALISED = ("branch.expand.weight", "branch.depthwise.weight", "branch.project.weight")


def official_derived_keys(cfg: NVAEConfig) -> dict[str, str]:
    """``{original key: original key it equals}`` for the derived ``weight_normalized`` entries of the
    original state dict: one per conv built without weight norm (the three convs of each inverted-residual
    cell), equal to that conv's ``weight`` (see the module docstring)."""
    return {
        theirs.removesuffix("weight") + "weight_normalized": theirs
        for mine, theirs in official_key_map(cfg).items()
        if mine.endswith(_UNNORMALISED)
    }


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_checkpoint` did with every entry of an original checkpoint.

    State-dict keys are the original ones (less a ``module.`` prefix). Together, ``loaded`` and ``derived``
    cover the whole state dict; ``args``, ``arch_instance`` and the ``dropped`` entries the rest of the file.
    """

    config: NVAEConfig  # from the checkpoint's 'args'
    loaded: dict[str, str] = field(default_factory=dict)  # original key -> our key
    derived: dict[str, str] = field(default_factory=dict)  # original key -> the original key it equals (checked)
    initialised: list[str] = field(default_factory=list)  # our keys without a source, left as constructed
    dropped: dict[str, str] = field(default_factory=dict)  # file entry -> what it holds (training state)

    def __str__(self) -> str:
        return (
            f"load_official_checkpoint: {len(self.loaded)} tensors loaded, {len(self.derived)} derived "
            f"weight_normalized checked, {len(self.initialised)} initialised (spectral regulariser), "
            f"dropped {sorted(self.dropped) or 'nothing'}"
        )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def _convert(state: dict, cfg: NVAEConfig, model: NVAE, report: OfficialLoadReport) -> dict:
    """Our state dict from the original ``state``, filling ``report``; raises naming missing, surplus,
    mis-shaped keys and derived tensors that differ from their source."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = model.state_dict()
    mapping = official_key_map(cfg)
    derived = official_derived_keys(cfg)
    present = [k for k in derived if k in state]
    # Derived entries are all there (current code) or none (checkpoints from before the attribute existed).
    expected = set(mapping.values()) | (set(derived) if present else set())
    unmapped = sorted(k for k in ours if k not in mapping and not k.startswith("spectral_regularizer."))
    missing = sorted(k for k in expected if k not in state)
    surplus = sorted(set(state) - expected)
    if unmapped or missing or surplus:
        raise ValueError(
            "load_official_checkpoint: state_dict does not match the architecture of its args: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {surplus[:8]}"
            f"{'...' if len(surplus) > 8 else ''}, ours without a source {unmapped[:8]}"
        )
    for key in present:
        if not _same(state[key], state[derived[key]]):
            raise ValueError(
                f"load_official_checkpoint: {key} differs from {derived[key]}, which the original code saves "
                f"as the same tensor (a conv without weight norm)"
            )
        report.derived[key] = derived[key]
    converted = {}
    for key, source in mapping.items():
        tensor = state[source]
        if tuple(tensor.shape) != tuple(ours[key].shape):
            raise ValueError(
                f"load_official_checkpoint: {source} has shape {tuple(tensor.shape)}, expected {tuple(ours[key].shape)} for {key}"
            )
        converted[key] = tensor
        report.loaded[source] = key
    fresh = {k: v for k, v in ours.items() if k.startswith("spectral_regularizer.")}
    converted.update(fresh)
    report.initialised.extend(fresh)
    return converted


def load_official_checkpoint(path, *, return_report: bool = False):
    """An :class:`NVAE` with the weights of an original NVAE checkpoint file (see the module docstring).

    Accepted: the file ``train.py`` of the original code writes, a dict with ``'state_dict'`` and ``'args'``
    (required) and ``'arch_instance'``, ``'epoch'``, ``'global_step'``, ``'optimizer'``, ``'scheduler'``,
    ``'grad_scalar'``. The state dict must hold exactly the original model's tensors for those args:
    parameters, BN buffers and, optionally (all or none), the derived ``*.weight_normalized`` copies of the
    un-normalised convs, which are checked against their ``weight`` and not loaded. Anything else is an error.
    The spectral regulariser's power-iteration vectors start fresh (the original code does not store them).

    The file is read with ``torch.load(weights_only=True)``, allowing only ``argparse.Namespace`` beyond
    tensors and containers. The model is returned in eval mode on the CPU; with ``return_report=True``,
    as ``(model, report)``, the :class:`OfficialLoadReport` listing what was loaded, derived, initialised
    and dropped.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "args" not in checkpoint:
        raise ValueError(f"load_official_checkpoint: {path} is not an NVAE checkpoint (a dict with 'state_dict' and 'args')")
    cfg = config_from_official_args(checkpoint["args"])
    cells = checkpoint.get("arch_instance", _RES_MBCONV_CELLS)
    if not isinstance(cells, dict):
        raise ValueError(f"load_official_checkpoint: arch_instance is a {type(cells).__name__}, not a dict")
    differ = sorted(
        k for k in set(cells) | set(_RES_MBCONV_CELLS)
        if not isinstance(cells.get(k), (list, tuple)) or list(cells[k]) != _RES_MBCONV_CELLS.get(k)
    )
    if differ:
        raise ValueError(f"load_official_checkpoint: arch_instance is not res_mbconv's cell choice at {differ}")
    report = OfficialLoadReport(config=cfg)
    for name, value in checkpoint.items():
        if name not in ("state_dict", "args", "arch_instance"):
            what = _TRAINING_STATE.get(name, "not read by this loader")
            report.dropped[name] = f"{what} = {value!r}" if isinstance(value, (int, float, str)) else what
    model = NVAE(cfg)
    model.load_state_dict(_convert(checkpoint["state_dict"], cfg, model, report))
    model.eval()
    return (model, report) if return_report else model
