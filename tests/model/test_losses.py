"""Training objective and schedules: KL warm-up, regularisation annealing, KL balancing, nvae_loss."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nvae_fast.model import NVAE, kl_balance_weights, kl_coefficient, nvae_loss, preset, reg_coefficient
from nvae_fast.model.losses import balanced_kl


def test_kl_coefficient_schedule():
    total = 10_000
    assert kl_coefficient(0, total) == 1e-4
    assert kl_coefficient(1, total) == 1e-4  # still inside the constant portion (1 step)
    assert kl_coefficient(1501, total) == pytest.approx((1501 - 1) / 3000)
    assert kl_coefficient(3001, total) == 1.0 and kl_coefficient(9999, total) == 1.0
    assert kl_coefficient(5, total, warmup_portion=0.0) == 1.0
    assert kl_coefficient(0, 100, min_coeff=0.2) == 0.2
    with pytest.raises(ValueError, match="total_steps"):
        kl_coefficient(0, 0)


def test_reg_coefficient_schedule():
    assert reg_coefficient(0, 100, 0.3, 1e-2, None) == 1e-2
    total, init, final = 1000, 1.0, 1e-2
    assert reg_coefficient(0, total, 0.3, final, init) == pytest.approx(init, rel=1e-3)
    assert reg_coefficient(total, total, 0.3, final, init) == pytest.approx(final)
    mid_step = 150 + 0.1  # k = 0.5 (constant portion 0.1 steps)
    assert reg_coefficient(mid_step, total, 0.3, final, init) == pytest.approx(math.sqrt(init * final))
    with pytest.raises(ValueError, match="lambda_init"):
        reg_coefficient(0, total, 0.3, final, -1.0)


def test_kl_balance_weights_follow_area_over_group_count():
    alpha = kl_balance_weights([5, 10])  # MNIST decoder: coarse scale 5 groups, fine scale 10 groups
    torch.testing.assert_close(alpha, torch.tensor([1.0] * 5 + [2.0] * 10))
    alpha = kl_balance_weights([5, 10, 20])
    torch.testing.assert_close(alpha, torch.tensor([1.0] * 5 + [2.0] * 10 + [4.0] * 20))
    torch.testing.assert_close(kl_balance_weights([30]), torch.ones(30))


def test_balanced_kl():
    g = torch.Generator().manual_seed(0)
    kl = (torch.rand(6, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1, 2.0], dtype=torch.float64))
    kl.requires_grad_()
    alpha = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(balanced_kl(kl, alpha, 1.0), kl.sum(1))
    torch.testing.assert_close(balanced_kl(kl, alpha, 0.5, balance=False), 0.5 * kl.sum(1))
    out = balanced_kl(kl, alpha, 0.5)
    gamma = (kl.detach().abs().mean(0) + 0.01) / alpha
    gamma = gamma / gamma.mean()
    torch.testing.assert_close(out, 0.5 * (kl * gamma).sum(1))
    out.sum().backward()  # gamma is a constant: d/dKL = 0.5 gamma
    torch.testing.assert_close(kl.grad, 0.5 * gamma.expand(6, -1))


def test_balanced_kl_makes_no_distributed_call_without_a_process_group(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.distributed was called in a single-process run")

    assert not dist.is_initialized()
    for name in ("all_reduce", "get_world_size", "get_rank"):
        monkeypatch.setattr(dist, name, forbidden)
    kl = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)) + 2
    alpha = torch.tensor([1.0, 2.0, 2.0])
    gamma = (kl.abs().mean(0) + 0.01) / alpha
    torch.testing.assert_close(balanced_kl(kl, alpha, 0.4), 0.4 * (kl * gamma / gamma.mean()).sum(1))


SHARDS = (3, 6)  # uneven rows per rank


def _joint_kl(dtype):
    """(9, 5) group KLs of both signs whose rows of rank 0 and rank 1 have very different magnitudes."""
    g = torch.Generator().manual_seed(7)
    kl = torch.randn(sum(SHARDS), 5, generator=g, dtype=torch.float64) + 0.5
    kl[: SHARDS[0]] *= torch.tensor([6.0, 0.2, 1.0, 3.0, 0.05], dtype=torch.float64)
    alpha = torch.tensor([1.0, 1.0, 2.0, 2.0, 4.0], dtype=torch.float64)
    weights = torch.randn(sum(SHARDS), generator=g, dtype=torch.float64)
    return kl.to(dtype), alpha.to(dtype), weights.to(dtype)


def _balanced_with_grad(kl, alpha, weights, process_group):
    """``(balanced_kl(kl), d sum(weights * balanced_kl) / d kl)`` at kl_coeff 0.3."""
    kl = kl.detach().requires_grad_()
    out = balanced_kl(kl, alpha, 0.3, True, process_group)
    (grad,) = torch.autograd.grad((weights * out).sum(), kl)
    return out.detach(), grad


def _kl_rank(rank, dtype, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(SHARDS))
    try:
        kl, alpha, weights = _joint_kl(dtype)
        rows = slice(sum(SHARDS[:rank]), sum(SHARDS[: rank + 1]))
        results = {"default": _balanced_with_grad(kl[rows], alpha, weights[rows], None),
                   "explicit": _balanced_with_grad(kl[rows], alpha, weights[rows], dist.new_group([0, 1]))}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_balanced_kl_on_two_gloo_ranks_equals_the_joint_batch(dtype, tmp_path):
    mp.spawn(_kl_rank, args=(dtype, str(tmp_path / "init"), str(tmp_path)), nprocs=len(SHARDS), join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(len(SHARDS))]
    kl, alpha, weights = _joint_kl(dtype)
    joint, joint_grad = _balanced_with_grad(kl, alpha, weights, None)
    for group in ("default", "explicit"):  # float32: default tolerances (rtol 1.3e-6); float64: rtol 1e-7
        torch.testing.assert_close(torch.cat([r[group][0] for r in ranks]), joint, msg=group)
        torch.testing.assert_close(torch.cat([r[group][1] for r in ranks]), joint_grad, msg=group)
    # the shards' own statistics give other weights: the all-reduce is what makes the outputs equal
    local = balanced_kl(kl[: SHARDS[0]], alpha, 0.3)
    assert not torch.allclose(local, joint[: SHARDS[0]], rtol=1e-2)


def test_nvae_loss_composition():
    torch.manual_seed(0)
    model = NVAE(preset("tiny"))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = model(x)
    loss, metrics = nvae_loss(model, out, kl_coeff=0.3, reg_coeff=0.05)
    kl_all = torch.stack(out.kl_per_group, 1)
    alpha = kl_balance_weights(model.dec_groups_per_scale)
    objective = (-out.recon_log_prob + balanced_kl(kl_all, alpha, 0.3)).mean()
    penalty = metrics["spectral"] + metrics["bn"]
    assert float(loss.detach()) == pytest.approx(float(objective.detach()) + 0.05 * penalty, rel=1e-5)
    nelbo = float((-out.recon_log_prob + kl_all.sum(1)).mean().detach())
    assert metrics["nelbo"] == pytest.approx(nelbo, rel=1e-5)
    assert metrics["nelbo_bpd"] == pytest.approx(nelbo / (3 * 16 * 16 * math.log(2)), rel=1e-5)
    assert metrics["recon"] == pytest.approx(-float(out.recon_log_prob.mean().detach()), rel=1e-5)
    assert all(isinstance(v, float) for v in metrics.values())
    assert {"loss", "recon", "kl", "spectral", "bn", "nelbo_bpd"} <= set(metrics)
    loss.backward()
    assert model.top.grad is not None and model.stem.log_weight_norm.grad is not None


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = NVAE(preset("tiny"))
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2, eps=1e-3)
    # Smooth images (random 4x4 patterns upsampled): compressible, unlike pixel noise.
    coarse = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    x = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=True)
    losses = []
    for step in range(30):
        loss, metrics = nvae_loss(model, model(x), kl_coefficient(step, 100), reg_coefficient(step, 100, 0.3, 1e-2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["nelbo"])
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # measured: 0.84
