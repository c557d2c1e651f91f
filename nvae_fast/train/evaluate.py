"""Test log-likelihood by importance sampling.

With the approximate posterior as proposal, for each image ``x`` and ``K`` draws ``z_k ~ q(z|x)``:

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)          (model outputs recon_log_prob, log_p, log_q)
    log p(x) ≈ logsumexp_k(log w_k) - log K                      (a lower bound, tight as K grows)

reported in bits per modelled dimension, ``-log p(x) / (D·ln 2)`` with ``D = model.cfg.data_dims``
(``C·H·W`` inside the likelihood's crop). ``K = 1`` gives the negative ELBO.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data import ImageSet

__all__ = ["log_likelihood", "evaluate"]


@torch.no_grad()
def log_likelihood(model: nn.Module, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x), elbo)`` in nats, each (N,), for images ``x`` (N, C, S, S) in [0, 1]; eval mode."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    model.eval()
    log_w = []
    for _ in range(num_samples):
        out = model(x)
        log_w.append((out.recon_log_prob + out.log_p - out.log_q).double())
    log_w = torch.stack(log_w)
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples), log_w.mean(dim=0)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Mean negative log-likelihood (``nll_bpd``, with ``num_samples`` importance samples) and negative
    ELBO (``nelbo_bpd``, the mean of the single-sample bounds) over the first ``max_images`` images of ``data``."""
    from tqdm import tqdm

    n = len(data) if max_images is None else min(max_images, len(data))
    if n < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    dims = model.cfg.data_dims
    total_ll, total_elbo, done = 0.0, 0.0, 0
    with tqdm(total=n, desc=f"eval K={num_samples}", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            ll, elbo = log_likelihood(model, data.batch(idx).to(device), num_samples)
            total_ll += float(ll.sum())
            total_elbo += float(elbo.sum())
            done += len(idx)
            bar.update(len(idx))
            bar.set_postfix(nll_bpd=f"{-total_ll / (done * dims * math.log(2)):.4f}")
    scale = n * dims * math.log(2)
    return {"nll_bpd": -total_ll / scale, "nelbo_bpd": -total_elbo / scale, "images": n, "num_samples": num_samples}
