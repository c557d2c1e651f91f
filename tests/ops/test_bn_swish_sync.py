"""SyncBN semantics: bn_swish with a process group over 2 gloo ranks equals one process on the joint batch.

Each backend with SyncBN (torch, triton, cuda) runs where its op tests run (``_helpers.device_for``): on
a GPU machine both ranks put their tensors on cuda:0 (gloo's all_reduce and all_gather take CUDA
tensors; NCCL cannot run two ranks on one GPU); without a GPU on the CPU, triton in Triton's interpreter
and cuda in the CPU emulation of its kernels. The ranks are spawned processes: they inherit
``TRITON_INTERPRET`` / ``NVAE_FAST_CUDA_EMULATE`` from ``os.environ``, where tests/conftest.py sets them
before anything probes the backends, and report what they ran (the environment, the kernel-set calls,
the fallbacks), which the tests check.

One spawn per backend (ranks start in seconds, the emulation's library loads in each) runs every
configuration in ``CONFIGS``: an odd joint batch of 5 images split unevenly (2 + 3), C = 7, 9 x 5 pixels,
in float64 and float32 (NCHW and channels_last). Tolerances: ``_helpers.TOLERANCES`` of the dtype,
relative to the largest reference value, widened 4x for the sums over N*H*W (dx, dweight, dbias), as in
test_bn_swish; the reference is float64 on the same (rounded) values.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nvae_fast
from nvae_fast.ops import bn_swish

from .._tensors import in_layout, memory_format, randn
from ._helpers import assert_close_scaled, device_for, dtype_id, require

# one worker under pytest-xdist --dist loadgroup, so each backend's ranks are spawned once
pytestmark = pytest.mark.xdist_group("bn_swish_sync")

WORLD = 2
SHAPE = (5, 7, 9, 5)  # the joint batch: rank 0 takes images 0-1, rank 1 images 2-4
ROWS = (slice(0, 2), slice(2, 5))
MOMENTUM, EPS = 0.1, 1e-5
# (x dtype, memory format); parameters are float64 with float64 x, float32 otherwise.
CONFIGS = [(torch.float64, "contiguous"), (torch.float32, "contiguous"), (torch.float32, "channels_last")]
KERNEL_FUNCTIONS = ("batch_stats", "normalize", "backward_reduce", "backward_dx")


def _config_id(config):
    return f"{dtype_id(config[0])}-{config[1]}"


def _joint_inputs(dtype):
    """x (per-channel offsets up to 3 and scales up to 2), dy, weight, bias; rounded to ``dtype`` and
    the parameters' dtype, so the ranks and the reference see the same values."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = SHAPE
    offset = torch.linspace(-3.0, 3.0, c, dtype=torch.float64).view(1, c, 1, 1)
    scale = torch.linspace(0.5, 2.0, c, dtype=torch.float64).view(1, c, 1, 1)
    x = randn(*SHAPE, dtype=dtype, generator=g, scale=scale, shift=offset)
    dy = randn(*SHAPE, dtype=dtype, generator=g)
    param = torch.float64 if dtype == torch.float64 else torch.float32
    weight = randn(c, dtype=param, generator=g, scale=0.5, shift=1.0)
    bias = randn(c, dtype=param, generator=g)
    return x, dy, weight, bias


def _step(x, dy, weight, bias, group):
    """One training forward and backward: (y, dx, dweight, dbias, running_mean, running_var)."""
    leaves = [x.detach().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    rm = torch.zeros(x.shape[1], dtype=weight.dtype, device=x.device)
    rv = torch.ones(x.shape[1], dtype=weight.dtype, device=x.device)
    y = bn_swish(*leaves, rm, rv, True, MOMENTUM, EPS, process_group=group)
    return [t.detach() for t in (y, *torch.autograd.grad(y, leaves, dy), rm, rv)]


def _count_calls(backend):
    """Count the calls of the fused backend's kernel-set functions (this process only)."""
    calls = Counter()
    if backend == "torch":
        return calls
    kernels = nvae_fast.backend._state.kernels[("bn_swish", backend)]

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return run

    for name in KERNEL_FUNCTIONS:
        setattr(kernels, name, counted(name, getattr(kernels, name)))
    return calls


def _worker(rank, backend, device, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        calls = _count_calls(backend)
        results = {}
        for dtype, kind in CONFIGS:
            fmt = memory_format(kind)
            x, dy, weight, bias = (t.to(device) for t in _joint_inputs(dtype))
            x, dy = (in_layout(t[ROWS[rank]], kind) for t in (x, dy))
            before = Counter(calls)
            with nvae_fast.use_backend(backend):
                out = _step(x, dy, weight, bias, dist.group.WORLD)
            results[(dtype, kind)] = {
                "out": [t.cpu() for t in out],
                "calls": dict(calls - before),
                "formats_kept": out[0].is_contiguous(memory_format=fmt) and out[1].is_contiguous(memory_format=fmt),
            }
        info = nvae_fast.backend_info()
        results["env"] = {
            "fallbacks": info["fallbacks"],
            "cuda_emulated": info["cuda_emulated"],
            "triton_interpret": os.environ.get("TRITON_INTERPRET"),
            "device": str(device),
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


_RUNS: dict[str, list] = {}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``run(backend)``: the results of both ranks for every config, spawned once per backend."""

    def run(backend):
        if backend not in _RUNS:
            device = require(backend)
            out = tmp_path_factory.mktemp(f"sync-{backend}")
            mp.spawn(_worker, args=(backend, device, str(out / "init"), str(out)), nprocs=WORLD, join=True)
            _RUNS[backend] = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
        return _RUNS[backend]

    yield run
    _RUNS.clear()


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_ranks_ran_the_backend_on_its_device(two_ranks, backend):
    """Without a GPU, triton ran in the interpreter and cuda in the emulation; on a GPU, on cuda:0.
    The fused backends took no fallback and ran all four kernel-set functions (SyncBN never takes the
    one-read ``train_forward``)."""
    device = require(backend)
    for rank, results in enumerate(two_ranks(backend)):
        env = results["env"]
        assert env["fallbacks"] == [], f"rank {rank}: {env['fallbacks']}"
        assert env["device"] == str(device)
        if device.type == "cpu":  # the environment tests/conftest.py sets without a GPU reached the rank
            assert env["triton_interpret"] == "1" and env["cuda_emulated"] is True
        for config in CONFIGS:
            calls = results[config]["calls"]
            if backend == "torch":
                assert calls == {}
            else:
                assert set(calls) == set(KERNEL_FUNCTIONS), f"rank {rank}, {_config_id(config)}: {calls}"


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_two_ranks_equal_one_process_on_the_joint_batch(two_ranks, backend, config):
    dtype, _ = config
    r0, r1 = (results[config] for results in two_ranks(backend))
    assert r0["formats_kept"] and r1["formats_kept"], "y and dx must keep x's memory format"
    r0, r1 = r0["out"], r1["out"]
    x, dy, weight, bias = _joint_inputs(dtype)
    with nvae_fast.use_backend("reference"):
        y, dx, dw, db, rm, rv = _step(x.double(), dy.double(), weight.double(), bias.double(), None)
    assert r0[0].dtype == r0[1].dtype == dtype and r0[2].dtype == weight.dtype
    assert_close_scaled(torch.cat([r0[0], r1[0]]), y, dtype, "y")
    assert_close_scaled(torch.cat([r0[1], r1[1]]), dx, dtype, "dx", factor=4)
    # dweight/dbias stay local (DDP sums/averages them): their sum over ranks is the joint gradient
    assert_close_scaled(r0[2] + r1[2], dw, dtype, "dweight", factor=4)
    assert_close_scaled(r0[3] + r1[3], db, dtype, "dbias", factor=4)
    for rank, r in enumerate((r0, r1)):  # every rank's running statistics saw the joint batch
        assert_close_scaled(r[4], rm, weight.dtype, f"running_mean (rank {rank})")
        assert_close_scaled(r[5], rv, weight.dtype, f"running_var (rank {rank})")
