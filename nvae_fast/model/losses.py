"""The NVAE training objective: warmed-up, balanced KL, spectral and BN regularisation, and schedules.

Per image, with G latent groups (coarse to fine) and KL_g the group KLs (nats):

    nelbo = -log p(x | z) + sum_g KL_g
    loss  = mean_batch[-log p(x | z) + beta * sum_g gamma_g KL_g] + lambda * (sum_conv sigma_max + sum_BN max|gamma_BN|)

``beta`` is the KL warm-up coefficient (:func:`kl_coefficient`), ``lambda`` the regularisation weight
(:func:`reg_coefficient`). KL balancing (only while ``beta < 1``): ``gamma_g`` proportional to
``(mean_batch |KL_g| + 0.01) / alpha_g``, normalised to mean 1 over groups and treated as a constant
(no gradient), where ``alpha_g`` is proportional to (spatial area of g's scale relative to the
coarsest) / (number of groups in that scale) (:func:`kl_balance_weights`). Under ``torch.distributed``
``mean_batch |KL_g|`` is the mean over the joint batch of every rank (:func:`balanced_kl`), so data-parallel
training balances exactly as one process over the joint batch does.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .._accumulation import acc_dtype

__all__ = ["kl_coefficient", "reg_coefficient", "kl_balance_weights", "balanced_kl", "nvae_loss"]


def kl_coefficient(step, total_steps, warmup_portion=0.3, const_portion=1e-4, min_coeff=1e-4) -> float:
    """KL warm-up: ``max(min((step - const_portion T) / (warmup_portion T), 1), min_coeff)``, T = total_steps."""
    if total_steps <= 0:
        raise ValueError(f"kl_coefficient: total_steps must be positive, got {total_steps}")
    warmup = warmup_portion * total_steps
    if warmup <= 0:
        return 1.0
    return float(max(min((step - const_portion * total_steps) / warmup, 1.0), min_coeff))


def reg_coefficient(step, total_steps, warmup_portion=0.3, lambda_final=1e-2, lambda_init=None) -> float:
    """Regularisation weight: ``lambda_final``, or (``lambda_init`` given) annealed geometrically from
    ``lambda_init`` to ``lambda_final`` as the KL coefficient k goes from 0 to 1:
    ``exp((1 - k) log lambda_init + k log lambda_final)``."""
    if lambda_init is None:
        return float(lambda_final)
    if lambda_init <= 0 or lambda_final <= 0:
        raise ValueError(
            f"reg_coefficient: lambda_init and lambda_final must be positive to anneal, got {lambda_init} and {lambda_final}"
        )
    k = kl_coefficient(step, total_steps, warmup_portion)
    return float(math.exp((1 - k) * math.log(lambda_init) + k * math.log(lambda_final)))


def kl_balance_weights(groups_per_scale_coarse_first, device=None) -> torch.Tensor:
    """``alpha`` (G,), coarse groups first: scale i (0 = coarsest) with n_i groups gets ``4**i / n_i``,
    divided by the smallest value."""
    alpha = torch.cat([torch.full((n,), 4.0**i / n) for i, n in enumerate(groups_per_scale_coarse_first)])
    return (alpha / alpha.min()).to(device)


def _joint_abs_mean(kl: torch.Tensor, process_group) -> torch.Tensor:
    """``mean_batch |KL_g|`` (G,) of the detached kl (N, G), over the joint batch of ``process_group``'s ranks.

    With ``S_r = sum_n |KL_rng|`` (G,) and ``N_r`` rows on rank ``r``: ``sum_r S_r / sum_r N_r``, from one
    all-reduce of the packed ``[S_r, N_r]`` (G+1,), accumulated in float32 (float64 for float64 input).
    Batch sizes may differ between ranks. A group of one rank: the local mean, without communication;
    ``torch.distributed`` not initialised: the local mean, with no ``torch.distributed`` call at all.
    """
    acc = acc_dtype(kl.dtype)
    packed = torch.cat([kl.to(acc).abs().sum(dim=0), kl.new_full((1,), kl.shape[0], dtype=acc)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1:
        dist.all_reduce(packed, group=process_group)
    return (packed[:-1] / packed[-1]).to(kl.dtype)


def balanced_kl(kl_all: torch.Tensor, alpha: torch.Tensor, kl_coeff: float, balance: bool = True,
                process_group=None) -> torch.Tensor:
    """``beta * sum_g gamma_g KL_g`` per image: kl_all (N, G), alpha (G,) -> (N,), ``beta = kl_coeff``.

    ``gamma = 1`` unless ``balance`` and ``kl_coeff < 1``; then
    ``gamma_g = G c_g / sum_g' c_g'`` with ``c_g = (mean_batch |KL_g| + 0.01) / alpha_g``, computed from
    detached values (no gradient flows through gamma, nor through any communication).

    Under an initialised ``torch.distributed`` with more than one rank in ``process_group`` (``None``:
    the default group), ``mean_batch`` runs over the joint batch of all its ranks (ranks may hold
    different ``N``), so the per-rank outputs, concatenated, equal the output for the concatenated
    ``kl_all``. That is a collective: while balancing is active every rank of the group must call it.
    """
    if balance and kl_coeff < 1.0:
        gamma = (_joint_abs_mean(kl_all.detach(), process_group) + 0.01) / alpha
        gamma = gamma / gamma.mean()
        return kl_coeff * (kl_all * gamma).sum(dim=1)
    return kl_coeff * kl_all.sum(dim=1)


def nvae_loss(model, out, kl_coeff: float, reg_coeff: float, kl_balance: bool = True, process_group=None):
    """The training loss of ``model`` for its output ``out`` (see the module docstring).

    ``kl_balance`` switches KL balancing on; ``process_group`` is the group whose joint batch the
    balancing statistics span under ``torch.distributed`` (``None``: the default group; see
    :func:`balanced_kl`). The loss and metrics themselves are this rank's batch means.

    Returns ``(loss, metrics)``: ``loss`` a scalar tensor; ``metrics`` python floats: ``loss``,
    ``recon`` (mean -log p(x|z), nats), ``kl`` (mean sum of group KLs, nats), ``nelbo`` (their sum),
    ``nelbo_bpd`` (nelbo in bits per data dimension), ``spectral`` (sum of sigma_max), ``bn`` (BN penalty),
    ``kl_coeff``, ``reg_coeff``.
    """
    kl_all = torch.stack(out.kl_per_group, dim=1)
    alpha = kl_balance_weights(model.dec_groups_per_scale, device=kl_all.device)
    recon = out.recon_log_prob
    objective = (-recon + balanced_kl(kl_all, alpha, kl_coeff, kl_balance, process_group)).mean()
    spectral = model.spectral_regularizer()
    bn = model.bn_scale_penalty()
    loss = objective + reg_coeff * (spectral + bn)
    with torch.no_grad():
        nll = -recon.mean()
        kl = kl_all.sum(dim=1).mean()
        nelbo = nll + kl
        dims = model.cfg.data_dims
        metrics = {
            "loss": float(loss.detach()),
            "recon": float(nll),
            "kl": float(kl),
            "nelbo": float(nelbo),
            "nelbo_bpd": float(nelbo) / (dims * math.log(2)),
            "spectral": float(spectral.detach()),
            "bn": float(bn.detach()),
            "kl_coeff": float(kl_coeff),
            "reg_coeff": float(reg_coeff),
        }
    return loss, metrics
