"""SyncBN semantics: bn_swish with a process group over 2 gloo ranks equals one process on the joint batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nvae_fast
from nvae_fast.ops import bn_swish

from ._helpers import require

WORLD = 2


def _joint_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, 3, generator=g, dtype=torch.float64) * 2 + 0.5
    dy = torch.randn(6, 5, 4, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(5, generator=g, dtype=torch.float64) * 0.5 + 1
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    return x, dy, weight, bias


def _step(x, dy, weight, bias, group):
    leaves = [x.detach().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    y = bn_swish(*leaves, rm, rv, True, 0.1, 1e-5, process_group=group)
    return (y, *torch.autograd.grad(y, leaves, dy), rm, rv)


def _worker(rank, backend, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, dy, weight, bias = _joint_inputs()
        # uneven split: rank 0 gets 2 images, rank 1 gets 4
        rows = slice(0, 2) if rank == 0 else slice(2, 6)
        with nvae_fast.use_backend(backend):
            result = _step(x[rows], dy[rows], weight, bias, dist.group.WORLD)
        torch.save([t.detach() for t in result], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_two_ranks_equal_one_process_on_the_joint_batch(backend, tmp_path):
    require(backend)
    if backend != "torch" and torch.cuda.is_available():
        pytest.skip(f"gloo ranks run on CPU tensors; the GPU suite covers {backend} elsewhere")
    mp.spawn(_worker, args=(backend, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    x, dy, weight, bias = _joint_inputs()
    with nvae_fast.use_backend("reference"):
        y, dx, dw, db, rm, rv = _step(x, dy, weight, bias, None)
    torch.testing.assert_close(torch.cat([r0[0], r1[0]]), y)
    torch.testing.assert_close(torch.cat([r0[1], r1[1]]), dx)
    # dweight/dbias stay local (DDP sums/averages them): their sum over ranks is the joint gradient
    torch.testing.assert_close(r0[2] + r1[2], dw)
    torch.testing.assert_close(r0[3] + r1[3], db)
    for r in (r0, r1):  # every rank's running statistics saw the joint batch
        torch.testing.assert_close(r[4], rm)
        torch.testing.assert_close(r[5], rv)
