"""SyncBatchNorm2d over 2 gloo ranks equals nn.BatchNorm2d (float64) on the joint batch.

The input's channel means are large against its standard deviation (|mean| / std up to 400), where
statistics computed as E[x^2] - E[x]^2 in float32 lose about three significant digits of the variance;
the merged two-pass statistics keep float32 accuracy.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nvae_fast.train.distributed import SyncBatchNorm2d, convert_sync_batchnorm

from .._tensors import randn

WORLD, C = 2, 5
ROWS = (slice(0, 2), slice(2, 7))  # uneven split of the joint batch of 7 images


def _joint_inputs():
    g = torch.Generator().manual_seed(3)
    offset = torch.tensor([400.0, -250.0, 30.0, 0.0, 1000.0], dtype=torch.float64).view(1, C, 1, 1)
    scale = torch.tensor([1.0, 2.5, 0.5, 1.0, 2.0], dtype=torch.float64).view(1, C, 1, 1)
    # float32 values held in float64: the ranks and the reference see the same numbers
    x = randn(7, C, 6, 5, generator=g, scale=scale, shift=offset).double()
    dy = randn(7, C, 6, 5, generator=g).double()
    weight = randn(C, dtype=torch.float64, generator=g, scale=0.5, shift=1.0)
    bias = randn(C, dtype=torch.float64, generator=g)
    return x, dy, weight, bias


def _step(bn, x, dy):
    """Two training forwards (running statistics move twice), gradients of the second."""
    bn(x)
    x = x.detach().requires_grad_()
    y = bn(x)
    dx, dw, db = torch.autograd.grad(y, (x, bn.weight, bn.bias), dy)
    return [y.detach(), dx, dw, db, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, dy, weight, bias = _joint_inputs()
        plain = nn.BatchNorm2d(C, momentum=0.3)
        with torch.no_grad():
            plain.weight.copy_(weight)
            plain.bias.copy_(bias)
        bn = convert_sync_batchnorm(nn.Sequential(plain))[0]
        assert isinstance(bn, SyncBatchNorm2d) and bn.weight is plain.weight
        rows = ROWS[rank]
        result = _step(bn, x[rows].float(), dy[rows].float())
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process_on_the_joint_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    x, dy, weight, bias = _joint_inputs()
    bn = nn.BatchNorm2d(C, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    y, dx, dw, db, rm, rv, steps = _step(bn, x, dy)
    # Even exact statistics rounded to float32 move x - mean by ~|mean| * 6e-8, i.e. x_hat by up to
    # 1000 * 6e-8 / 2 = 3e-5 (channel 4); the E[x^2] - E[x]^2 variance is off by ~1e-2 relative here.
    torch.testing.assert_close(torch.cat([r0[0], r1[0]]).double(), y, rtol=1e-5, atol=2e-4)
    torch.testing.assert_close(torch.cat([r0[1], r1[1]]).double(), dx, rtol=1e-5, atol=5e-4)
    # dweight/dbias stay local (DDP sums/averages them): their sum over ranks is the joint gradient
    torch.testing.assert_close((r0[2] + r1[2]).double(), dw, rtol=1e-5, atol=2e-3)
    torch.testing.assert_close((r0[3] + r1[3]).double(), db, rtol=1e-5, atol=1e-4)
    for r in (r0, r1):  # every rank's running statistics saw the joint batch
        torch.testing.assert_close(r[4].double(), rm, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(r[5].double(), rv, rtol=1e-5, atol=1e-5)
        assert int(r[6]) == int(steps) == 2
