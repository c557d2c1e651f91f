"""Diagonal Normal distributions of the latent groups, the residual posterior and the analytic KL.

A group's distribution is parameterised by a tensor ``params`` (N, 2L, H, W) = [mu_raw ; log_sigma_raw]
(channel halves). Following the reference configuration both halves are soft-clamped to (-5, 5) by
``5 tanh(t / 5)`` and a floor keeps the scale away from zero:

    mu = 5 tanh(mu_raw / 5),   sigma = temperature * (exp(5 tanh(log_sigma_raw / 5)) + 0.01)

The prior of the top group is ``params = 0`` (mu 0, sigma 1.01). The residual posterior adds the
encoder's output ``delta = [dmu ; dlog_sigma]`` to the prior's raw parameters before the clamps:

    q = N(mu_p + dmu, sigma_p * exp(dlog_sigma))      (exactly, up to the clamps and the floor)

Analytic KL per element, with the actual (clamped, floored) parameters:

    KL(q || p) = 0.5 ((mu_q - mu_p)^2 / sigma_p^2 + sigma_q^2 / sigma_p^2) - 0.5 - log(sigma_q / sigma_p)
"""

from __future__ import annotations

import math

import torch

__all__ = ["Normal", "soft_clamp", "residual_posterior", "SIGMA_FLOOR", "CLAMP"]

CLAMP = 5.0
SIGMA_FLOOR = 1e-2
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def soft_clamp(t: torch.Tensor, bound: float = CLAMP) -> torch.Tensor:
    """``bound * tanh(t / bound)``: smooth, identity near 0, saturating at ``±bound``."""
    return bound * torch.tanh(t / bound)


class Normal:
    """Diagonal Normal with elementwise ``mu`` and ``sigma`` (any shape, usually (N, L, H, W))."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        self.mu, self.sigma = mu, sigma

    @classmethod
    def from_params(cls, params: torch.Tensor, temperature: float = 1.0) -> "Normal":
        """From raw ``params`` (N, 2L, H, W) = [mu_raw ; log_sigma_raw] (see the module docstring)."""
        if params.dim() < 2 or params.shape[1] % 2:
            raise ValueError(f"Normal.from_params: params must have an even channel count, got shape {tuple(params.shape)}")
        mu_raw, log_sigma_raw = params.chunk(2, dim=1)
        sigma = torch.exp(soft_clamp(log_sigma_raw)) + SIGMA_FLOOR
        if temperature != 1.0:
            sigma = sigma * temperature
        return cls(soft_clamp(mu_raw), sigma)

    def rsample(self) -> torch.Tensor:
        """Reparameterised sample ``mu + sigma * eps``, eps ~ N(0, I)."""
        return self.mu + self.sigma * torch.randn_like(self.mu)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log density at ``z`` (same shape as ``mu``)."""
        u = (z - self.mu) / self.sigma
        return -0.5 * u * u - _HALF_LOG_2PI - torch.log(self.sigma)

    def kl(self, other: "Normal") -> torch.Tensor:
        """Elementwise ``KL(self || other)``, analytic."""
        d = (self.mu - other.mu) / other.sigma
        r = self.sigma / other.sigma
        return 0.5 * (d * d + r * r) - 0.5 - torch.log(r)


def residual_posterior(prior_params: torch.Tensor, delta: torch.Tensor) -> Normal:
    """The residual posterior ``N(mu_p + dmu, sigma_p * exp(dlog_sigma))`` from raw parameter tensors."""
    if prior_params.shape != delta.shape:
        raise ValueError(
            f"residual_posterior: delta shape {tuple(delta.shape)} differs from prior_params shape {tuple(prior_params.shape)}"
        )
    return Normal.from_params(prior_params + delta)
