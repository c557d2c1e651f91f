"""The NVAE model (Vahdat & Kautz 2020): a bidirectional encoder and a hierarchical top-down decoder.

Data flow for an image batch x (N, C, S, S) in [0, 1] (``quantize``/``binarize`` first, then 2x - 1):

* encoder (bottom-up): stem (WN conv 3×3) -> pre-processing cells (each block ends with a down cell) ->
  for each latent scale, finest first: for each group, ``num_cell_per_cond_enc`` residual cells, whose
  output is that group's encoder feature; a down cell between scales.
* decoder (top-down, coarsest scale first; groups in the reverse order of the encoder): the state starts
  as a learned tensor ``h`` (``top``). For group d: (d > 0) ``num_cell_per_cond_dec`` inverted-residual
  cells, then the prior ``p(z_d | z_<d)`` from the state (ELU, WN 1×1; for d = 0 the fixed N(0, 1.01²)),
  the posterior from the encoder feature (d = 0: through ELU-conv1×1-ELU; d > 0: combined with the
  state by an encoder combiner) as a residual Normal on the prior, a sample z_d (through the flows),
  and the decoder combiner ``conv1x1(cat(state, z_d))``; an up cell between scales.
* output: post-processing cells (each block starts with an up cell), ELU, WN conv 3×3 to the parameters
  of p(x | z).

KL per group: analytic ``KL(q || p)`` without flows; with flows the one-sample estimate
``log q(z) - log p(z)`` at the flowed z (the flows are volume preserving). Distribution parameters are
cast to float32 before any density arithmetic, so autocast only affects the networks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import BNSwish, SpectralNormRegularizer
from .cells import Cell, DecoderCombiner, EncoderCombiner, WNConv2d, decoder_cell, encoder_cell
from .config import NVAEConfig
from .flows import PairedFlow
from .latent import Normal
from .likelihood import binarize, make_likelihood, param_channels, quantize

__all__ = ["NVAE", "NVAEOutput"]


@dataclass
class NVAEOutput:
    """What :meth:`NVAE.forward` returns (N = batch size; groups ordered coarse to fine)."""

    recon_log_prob: torch.Tensor  # (N,) log p(x | z) in nats
    kl_per_group: list  # of (N,) tensors, one per latent group
    log_q: torch.Tensor  # (N,) log q(z | x), flows included, summed over groups
    log_p: torch.Tensor  # (N,) log p(z), summed over groups
    likelihood: object  # DiscMixLogistic or Bernoulli over the image (inside the crop)


class NVAE(nn.Module):
    """NVAE for square images, configured by an :class:`NVAEConfig` (see the module docstring).

    ``forward(x)`` -> :class:`NVAEOutput`; :meth:`sample` draws images from the prior;
    ``spectral_regularizer()`` is the sum of the largest singular values of every conv (effective,
    weight-normalised weights; its power-iteration vectors are buffers of the model);
    :meth:`bn_scale_penalty` the BN scale penalty. Both are weighted in :func:`nvae_loss`.
    :meth:`set_gradient_checkpointing` trades compute for memory: every residual cell then recomputes
    its activations in backward.
    """

    def __init__(self, cfg: NVAEConfig):
        super().__init__()
        if not isinstance(cfg, NVAEConfig):
            raise TypeError(f"NVAE: cfg must be an NVAEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dec_groups_per_scale = cfg.groups_per_scale[::-1]  # coarsest scale first
        mult = self._build_encoder(cfg)
        mult = self._build_decoder(cfg, mult)
        self._build_output(cfg, mult)
        ends = itertools.accumulate(self.dec_groups_per_scale[:-1])
        self._up_after = {end - 1: i for i, end in enumerate(ends)}  # group index -> up cell that follows it
        self.spectral_regularizer = SpectralNormRegularizer(self, n_iter=cfg.spectral_iters, init_iter=10 * cfg.spectral_iters)

    def _build_encoder(self, cfg) -> int:
        """Stem, pre-processing, encoder groups, down cells, combiners and ``enc0``; returns the channel
        multiplier (of ``channels_enc``/``channels_dec``) at the coarsest scale."""
        ce, cd = cfg.channels_enc, cfg.channels_dec
        self.stem = WNConv2d(cfg.image_channels, ce, 3, padding=1)
        mult, cells = 1, []
        for _ in range(cfg.num_preprocess_blocks):
            for c in range(cfg.num_preprocess_cells):
                last = c == cfg.num_preprocess_cells - 1
                cells.append(encoder_cell(ce * mult, "down" if last else "normal", cfg))
                mult *= 2 if last else 1
        self.preprocess = nn.Sequential(*cells)

        enc_groups = cfg.groups_per_scale
        self.enc_groups, self.enc_down, combiners = nn.ModuleList(), nn.ModuleList(), []
        for s, groups in enumerate(enc_groups):
            for g in range(groups):
                self.enc_groups.append(
                    nn.Sequential(*[encoder_cell(ce * mult, "normal", cfg) for _ in range(cfg.num_cell_per_cond_enc)])
                )
                if not (s == len(enc_groups) - 1 and g == groups - 1):
                    combiners.append(EncoderCombiner(ce * mult, cd * mult))
            if s < len(enc_groups) - 1:
                self.enc_down.append(encoder_cell(ce * mult, "down", cfg))
                mult *= 2
        self.enc_combiners = nn.ModuleList(combiners[::-1])  # decoder order: one per group d >= 1
        self.enc0 = nn.Sequential(nn.ELU(), WNConv2d(ce * mult, ce * mult, 1), nn.ELU())
        return mult

    def _build_decoder(self, cfg, mult: int) -> int:
        """``top``, latent heads, flows, decoder cells, combiners and up cells; returns the final multiplier."""
        ce, cd, lat = cfg.channels_enc, cfg.channels_dec, cfg.num_latent_per_group
        top_size = cfg.image_size // 2 ** (cfg.num_preprocess_blocks + cfg.num_latent_scales - 1)
        self.top = nn.Parameter(torch.rand(cd * mult, top_size, top_size))
        self.posterior_heads, self.prior_heads = nn.ModuleList(), nn.ModuleList()
        self.flows, self.dec_cells, self.dec_combiners, self.dec_up = (nn.ModuleList() for _ in range(4))
        for s, groups in enumerate(self.dec_groups_per_scale):
            for g in range(groups):
                self.posterior_heads.append(WNConv2d(ce * mult, 2 * lat, 3, padding=1))
                self.flows.append(nn.ModuleList(PairedFlow(lat) for _ in range(cfg.num_flows)))
                if s or g:
                    self.prior_heads.append(nn.Sequential(nn.ELU(), WNConv2d(cd * mult, 2 * lat, 1)))
                    cells = [decoder_cell(cd * mult, "normal", cfg.dec_expand, cfg) for _ in range(cfg.num_cell_per_cond_dec)]
                    self.dec_cells.append(nn.Sequential(*cells))
                self.dec_combiners.append(DecoderCombiner(cd * mult, lat))
            if s < len(self.dec_groups_per_scale) - 1:
                self.dec_up.append(decoder_cell(cd * mult, "up", cfg.dec_expand, cfg))
                mult //= 2
        return mult

    def _build_output(self, cfg, mult: int) -> None:
        """Post-processing cells and the conv to the likelihood's parameters."""
        cd, cells = cfg.channels_dec, []
        for _ in range(cfg.num_postprocess_blocks):
            for c in range(cfg.num_postprocess_cells):
                cells.append(decoder_cell(cd * mult, "up" if c == 0 else "normal", cfg.post_expand, cfg))
                mult //= 2 if c == 0 else 1
        self.postprocess = nn.Sequential(*cells)
        out_channels = param_channels(cfg.likelihood, cfg.image_channels, cfg.num_mix)
        self.to_params = nn.Sequential(nn.ELU(), WNConv2d(cd * mult, out_channels, 3, padding=1))

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn per-cell gradient checkpointing on or off.

        When on, every residual :class:`~nvae_fast.model.cells.Cell` (pre-/post-processing, encoder,
        decoder, down and up cells) that runs in training mode with grad enabled keeps only its input
        for backward and runs its forward again there (:mod:`nvae_fast.model.checkpointing`): the
        saved activations shrink to the cell inputs plus what lies outside the cells (latent heads,
        combiners, flows, output), for about one more forward pass of the cells per step. Losses,
        gradients and BN running statistics are unchanged. Eval mode and ``torch.no_grad`` are unaffected.
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"set_gradient_checkpointing: enabled must be a bool, got {type(enabled).__name__}")
        for module in self.modules():
            if isinstance(module, Cell):
                module.gradient_checkpointing = enabled

    # ----------------------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The data the model sees: ``binarize(x)`` (Bernoulli) or ``quantize(x, num_x_bits)`` (dmol)."""
        cfg = self.cfg
        expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"NVAE: x must have shape (N, {', '.join(map(str, expected))}), got {shape}")
        return binarize(x) if cfg.likelihood == "bernoulli" else quantize(x, cfg.num_x_bits)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every group, coarsest (top) group first: x already prepared, in [0, 1]."""
        s = self.preprocess(self.stem(2 * x - 1))
        features, group = [], 0
        for scale, groups in enumerate(self.cfg.groups_per_scale):
            for _ in range(groups):
                s = self.enc_groups[group](s)
                features.append(s)
                group += 1
            if scale < len(self.enc_down):
                s = self.enc_down[scale](s)
        return features[::-1]

    def _decode(self, batch: int, features: list[torch.Tensor] | None, temperature: float = 1.0):
        """Run the decoder; with ``features`` sample the posterior and return the KL terms too.

        Returns ``(params, kl_per_group, log_q, log_p)``; the last three are empty/``None`` when sampling
        from the prior (``features is None``).
        """
        state = self.top.unsqueeze(0).expand(batch, -1, -1, -1)
        terms = []  # (kl, log_q, log_p) of each group
        for d in range(self.cfg.num_groups):
            if d == 0:
                lat = self.cfg.num_latent_per_group
                prior_params = state.new_zeros(batch, 2 * lat, state.shape[2], state.shape[3])
            else:
                state = self.dec_cells[d - 1](state)
                prior_params = self.prior_heads[d - 1](state).float()
            prior = Normal.from_params(prior_params, temperature)
            if features is None:
                z = prior.rsample()
            else:
                z, *group_terms = self._posterior(d, features[d], state, prior_params, prior)
                terms.append(group_terms)
            state = self.dec_combiners[d](state, z)
            if d in self._up_after:
                state = self.dec_up[self._up_after[d]](state)
        params = self.to_params(self.postprocess(state)).float()
        if not terms:
            return params, [], None, None
        kls, log_qs, log_ps = zip(*terms)
        return params, list(kls), sum(log_qs), sum(log_ps)

    def _posterior(self, d, feature, state, prior_params, prior):
        """Sample group d of the posterior; returns ``(z, kl, log_q, log_p)`` with (N,) terms."""
        if d == 0:
            ftr = self.enc0(feature)
        else:
            ftr = self.enc_combiners[d - 1](feature, state)
        delta = self.posterior_heads[d](ftr).float()
        q = Normal.from_params(prior_params + delta if self.cfg.residual_posterior else delta)
        z = q.rsample()
        log_q = q.log_prob(z).sum(dim=(1, 2, 3))
        for flow in self.flows[d]:
            z, log_det = flow(z)
            log_q = log_q - log_det
        log_p = prior.log_prob(z).sum(dim=(1, 2, 3))
        kl = log_q - log_p if len(self.flows[d]) else q.kl(prior).sum(dim=(1, 2, 3))
        return z, kl, log_q, log_p

    def forward(self, x: torch.Tensor) -> NVAEOutput:
        """x (N, C, S, S) in [0, 1] -> :class:`NVAEOutput` for one posterior sample."""
        x = self.prepare(x)
        params, kls, log_q, log_p = self._decode(x.shape[0], self.encode(x))
        if self.cfg.crop:
            c = self.cfg.crop
            params, x = params[:, :, c:-c, c:-c], x[:, :, c:-c, c:-c]
        likelihood = make_likelihood(self.cfg, params)
        return NVAEOutput(likelihood.log_prob(x), kls, log_q, log_p, likelihood)

    def decode_prior(self, num: int, temperature: float = 1.0):
        """The distribution p(x | z) for ``num`` latents drawn from the prior (scales times ``temperature``)."""
        params, _, _, _ = self._decode(num, None, temperature)
        return make_likelihood(self.cfg, params)

    @torch.no_grad()
    def sample(self, num: int, temperature: float = 1.0, mean: bool = False) -> torch.Tensor:
        """``num`` images (num, C, S, S) in [0, 1] from the prior (full size, ``crop`` not applied).

        ``temperature`` scales every prior standard deviation; ``mean`` returns the likelihood's mean
        instead of a sample of it. BatchNorm runs in whatever mode the model is in.
        """
        likelihood = self.decode_prior(int(num), float(temperature))
        return likelihood.mean() if mean else likelihood.sample()

    def bn_scale_penalty(self) -> torch.Tensor:
        """``sum over BN layers of max_c |gamma_c|`` (every affine BatchNorm2d and BNSwish), a scalar."""
        maxima = [
            m.weight.abs().max()
            for m in self.modules()
            if isinstance(m, (nn.BatchNorm2d, BNSwish)) and m.weight is not None
        ]
        return torch.stack(maxima).sum()
