"""Output distributions p(x | z): discretised mixture of logistics (colour or grey) and Bernoulli.

Images live in [0, 1]. :func:`quantize` maps them to the ``2**bits`` levels the model sees;
:func:`binarize` thresholds them at 0.5 for the Bernoulli output.

Discretised mixture of logistics (PixelCNN++ style; ``M`` components, ``B = 2**bits - 1``): a pixel's
value ``k`` in {0..B} is ``v = 2k/B - 1`` in [-1, 1]. Per component ``j`` and channel ``c`` with mean
``mu`` and log-scale ``s`` (clamped at -7 from below), ``a = (v - mu + 1/B) e^-s``, ``b = (v - mu - 1/B) e^-s``:

    P(k) = sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^(b - a))     (0 < k < B)
    P(0) = sigmoid(a),   P(B) = sigmoid(-b)                                       (the edge bins)

computed in log space with ``logsigmoid`` and ``log(-expm1(b - a))`` (no cancellation in the tails or
for narrow bins, so no density fallback is needed). For colour, channel means are autoregressive:
``mu_g += t0 * v_r`` and ``mu_b += t1 * v_r + t2 * v_g`` (``t = tanh`` of raw coefficients). A pixel's log-probability is ``logsumexp_j(log pi_j + sum_c log P_jc)``.

Parameter layout (channels of the decoder output): colour ``M + 3·3M`` = [logits (M); for each of R, G,
B: means (M), log-scales (M), coefficients (M)], where the coefficient block of channel c holds t_c;
grey ``3M`` = [logits (M); means (M); log-scales (M)]. Bernoulli: one logit per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["quantize", "binarize", "DiscMixLogistic", "Bernoulli", "param_channels", "make_likelihood"]

LOG_SCALE_MIN = -7.0


def quantize(x: torch.Tensor, num_bits: int = 8) -> torch.Tensor:
    """Nearest 8-bit value of ``x`` in [0, 1], reduced to ``num_bits`` bits by dropping low bits: in [0, 1]."""
    x8 = torch.round(x.clamp(0, 1) * 255)
    if num_bits == 8:
        return x8 / 255
    return torch.floor(x8 / 2 ** (8 - num_bits)) / (2**num_bits - 1)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """``1`` where ``x > 0.5``, else ``0`` (same dtype)."""
    return (x > 0.5).to(x.dtype)


def _check_images(name: str, x: torch.Tensor, like: torch.Tensor, channels: int) -> None:
    expected = (like.shape[0], channels) + tuple(like.shape[-2:])
    if x.dim() != 4 or tuple(x.shape) != expected:
        raise ValueError(f"{name}: x must have shape {expected}, got {tuple(x.shape)}")


class DiscMixLogistic:
    """Discretised logistic mixture over ``num_channels`` (1 or 3) channels; ``params`` (N, P, H, W)."""

    def __init__(self, params: torch.Tensor, num_channels: int, num_mix: int, num_bits: int = 8):
        if num_channels not in (1, 3):
            raise ValueError(f"DiscMixLogistic: num_channels must be 1 or 3, got {num_channels}")
        expected = param_channels("dmol", num_channels, num_mix)
        if params.dim() != 4 or params.shape[1] != expected:
            raise ValueError(f"DiscMixLogistic: params must be (N, {expected}, H, W), got {tuple(params.shape)}")
        n, _, h, w = params.shape
        m = num_mix
        self.num_channels, self.num_mix, self.levels = num_channels, m, 2**num_bits - 1
        self.num_bits = num_bits
        self.logits = params[:, :m]  # (N, M, H, W)
        per_channel = 3 if num_channels == 3 else 2
        rest = params[:, m:].reshape(n, num_channels, per_channel, m, h, w)
        self.means = rest[:, :, 0]  # (N, C, M, H, W)
        self.log_scales = rest[:, :, 1].clamp(min=LOG_SCALE_MIN)
        self.coeffs = torch.tanh(rest[:, :, 2]) if num_channels == 3 else None

    def _channel_means(self, v: torch.Tensor) -> torch.Tensor:
        """Autoregressive channel means given pixel values ``v`` (N, C, 1, H, W) in [-1, 1]: (N, C, M, H, W)."""
        if self.coeffs is None:
            return self.means
        r, g, c = v[:, 0], v[:, 1], self.coeffs
        mu = self.means
        return torch.stack([mu[:, 0], mu[:, 1] + c[:, 0] * r, mu[:, 2] + c[:, 1] * r + c[:, 2] * g], dim=1)

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per pixel (all channels jointly): x (N, C, H, W) in [0, 1] -> (N, H, W)."""
        _check_images("DiscMixLogistic.log_prob", x, self.logits, self.num_channels)
        k = torch.round(quantize(x, self.num_bits) * self.levels).unsqueeze(2)  # (N, C, 1, H, W)
        v = 2 * k / self.levels - 1
        centered = v - self._channel_means(v)
        inv_scale = torch.exp(-self.log_scales)
        a = inv_scale * (centered + 1 / self.levels)
        b = inv_scale * (centered - 1 / self.levels)
        width = (inv_scale * (2 / self.levels)).clamp(min=1e-30)  # a - b, kept off 0 for very wide components
        interior = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-width))
        log_p = torch.where(k == 0, F.logsigmoid(a), torch.where(k == self.levels, F.logsigmoid(-b), interior))
        return torch.logsumexp(log_p.sum(dim=1) + F.log_softmax(self.logits, dim=1), dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) of each image: x (N, C, H, W) in [0, 1] -> (N,) nats."""
        return self.log_prob_pixels(x).sum(dim=(1, 2))

    def _combine(self, v: torch.Tensor, coeffs: torch.Tensor | None) -> torch.Tensor:
        """Apply the colour dependencies to per-channel values ``v`` (N, C, H, W), clamping to [-1, 1]."""
        if coeffs is None:
            return v.clamp(-1, 1)
        r = v[:, 0].clamp(-1, 1)
        g = (v[:, 1] + coeffs[:, 0] * r).clamp(-1, 1)
        b = (v[:, 2] + coeffs[:, 1] * r + coeffs[:, 2] * g).clamp(-1, 1)
        return torch.stack([r, g, b], dim=1)

    def sample(self) -> torch.Tensor:
        """One sample per pixel (component by Gumbel-max, logistic noise), continuous in [0, 1]: (N, C, H, W)."""
        u = torch.rand_like(self.logits).clamp(1e-5, 1 - 1e-5)
        choice = torch.argmax(self.logits - torch.log(-torch.log(u)), dim=1, keepdim=True)  # (N, 1, H, W)
        sel = torch.zeros_like(self.logits).scatter_(1, choice, 1.0).unsqueeze(1)  # (N, 1, M, H, W)
        means = (self.means * sel).sum(dim=2)
        log_scales = (self.log_scales * sel).sum(dim=2)
        coeffs = None if self.coeffs is None else (self.coeffs * sel).sum(dim=2)
        e = torch.rand_like(means).clamp(1e-5, 1 - 1e-5)
        v = means + torch.exp(log_scales) * (torch.log(e) - torch.log1p(-e))
        return (self._combine(v, coeffs) + 1) / 2

    def mean(self) -> torch.Tensor:
        """Mixture-weighted component means passed through the colour dependencies: (N, C, H, W) in [0, 1]."""
        weights = torch.softmax(self.logits, dim=1).unsqueeze(1)
        means = (self.means * weights).sum(dim=2)
        coeffs = None if self.coeffs is None else (self.coeffs * weights).sum(dim=2)
        return (self._combine(means, coeffs) + 1) / 2


class Bernoulli:
    """Independent Bernoulli pixels with ``logits`` (N, C, H, W)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(binarize(x)): x (N, C, H, W) in [0, 1] -> (N,) nats."""
        _check_images("Bernoulli.log_prob", x, self.logits, self.logits.shape[1])
        bce = F.binary_cross_entropy_with_logits(self.logits, binarize(x), reduction="none")
        return -bce.sum(dim=(1, 2, 3))

    def sample(self) -> torch.Tensor:
        """Binary images (N, C, H, W) in {0, 1}."""
        return torch.bernoulli(torch.sigmoid(self.logits))

    def mean(self) -> torch.Tensor:
        """Pixel probabilities (N, C, H, W)."""
        return torch.sigmoid(self.logits)


def param_channels(likelihood: str, num_channels: int, num_mix: int) -> int:
    """Channels of the decoder output needed by ``likelihood`` ('dmol' or 'bernoulli')."""
    if likelihood == "bernoulli":
        return num_channels
    if likelihood == "dmol":
        return num_mix + num_channels * (3 if num_channels == 3 else 2) * num_mix
    raise ValueError(f"param_channels: likelihood must be 'dmol' or 'bernoulli', got {likelihood!r}")


def make_likelihood(cfg, params: torch.Tensor):
    """The output distribution of config ``cfg`` for decoder output ``params`` (N, P, H, W)."""
    if cfg.likelihood == "bernoulli":
        return Bernoulli(params)
    return DiscMixLogistic(params, cfg.image_channels, cfg.num_mix, cfg.num_x_bits)
