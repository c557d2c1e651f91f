"""The CPU emulation of CUDA (csrc/emulation, nvae_fast.cuda.emulation) on kernels of its own
(emulator_kernels.cpp): the execution model that the kernel tests rely on, and the errors it raises
where a GPU would fail or behave undefinedly. Runs on any machine with a C++ compiler.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nvae_fast
import nvae_fast.cuda
from nvae_fast.cuda import emulation
from nvae_fast.ops.squeeze_excite import OP as SQUEEZE_EXCITE


@pytest.fixture(scope="module")
def emu():
    emulation.build("nvae_fast_emu_test", [Path(__file__).with_name("emulator_kernels.cpp")])
    return torch.ops.nvae_fast_emu_test


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (5, 3, 2)), ((1, 1, 1), (64, 1, 1)), ((2, 1, 1), (8, 8, 4))])
def test_every_thread_runs_once_with_its_coordinates(emu, grid, block):
    got = emu.indices(list(grid), list(block))
    want = [
        (bx, by, bz, tx, ty, tz)
        for bz, by, bx in itertools.product(range(grid[2]), range(grid[1]), range(grid[0]))
        for tz, ty, tx in itertools.product(range(block[2]), range(block[1]), range(block[0]))
    ]
    assert got.tolist() == [list(w) for w in want]


@pytest.mark.parametrize("block_x", [64, 8], ids=["1d", "2d"])
@pytest.mark.parametrize("delta", [1, 5, 16])
def test_shuffle_down_reads_the_lane_delta_above_within_the_warp(emu, block_x, delta):
    x = torch.randn(128, dtype=torch.float64)
    out = emu.shuffle_down(x, block_x, delta)
    lane = torch.arange(128) % 32
    want = torch.where(lane + delta < 32, x.roll(-delta), x)
    assert torch.equal(out, want)


@pytest.mark.parametrize("threads", [32, 256, 1024])
def test_block_reduction_with_shuffles_and_barrier(emu, threads):
    x = torch.randn(5 * threads)
    torch.testing.assert_close(emu.block_sum(x, threads), x.view(5, threads).double().sum(1).float())


def test_dynamic_shared_memory_starts_as_nan(emu):
    assert torch.isnan(emu.read_smem(48)).all()


@pytest.mark.parametrize(
    "which,message",
    [
        (0, r"can never finish: 32 threads wait at __syncthreads, 32 at a shuffle, 0 have exited"),
        (1, r"thread \(1, 0, 0\): a shuffle with mask 1 that leaves out the calling lane 1"),
        (2, r"waits for lane 16, which has exited"),
        (3, r"at a shuffle with different masks"),
        (4, r"a shuffle reads lane 16, which its mask 65535 leaves out"),
    ],
    ids=["divergent-barrier", "caller-not-in-mask", "exited-lane", "mask-mismatch", "source-not-in-mask"],
)
def test_misuse_raises_naming_the_kernel(emu, which, message):
    with pytest.raises(RuntimeError, match=message) as err:
        emu.misuse(which)
    assert "misuse_kernel" in str(err.value)
    emu.block_sum(torch.ones(64), 32)  # the emulation is usable again after the error


@pytest.mark.parametrize(
    "grid,block,smem,message",
    [
        ((1, 1, 1), (2048, 1, 1), 0, r"invalid block \(2048, 1, 1\)"),
        ((1, 1, 1), (1, 1, 65), 0, r"invalid block"),
        ((1, 70000, 1), (32, 1, 1), 0, r"invalid grid \(1, 70000, 1\)"),
        ((1, 1, 1), (32, 1, 1), 64 * 1024, r"65536 bytes of dynamic shared memory"),
    ],
)
def test_invalid_launch_configuration_raises(emu, grid, block, smem, message):
    with pytest.raises(RuntimeError, match=message):
        emu.bad_launch(list(grid), list(block), smem)


def test_multiprocessor_count_from_the_environment(monkeypatch):
    emulation.load()
    x = torch.randn(64, 8, 16, 16)
    stats = {}
    for sms in ("132", "1"):
        monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", sms)
        stats[sms] = emulation.ops().bn_swish_stats(x)
    for got, want in zip(stats["1"], stats["132"]):  # one part per channel vs split: the same up to rounding
        torch.testing.assert_close(got, want)
    monkeypatch.setenv("NVAE_FAST_EMULATE_SMS", "0")
    with pytest.raises(RuntimeError, match="NVAE_FAST_EMULATE_SMS must be a number of multiprocessors in"):
        emulation.ops().bn_swish_stats(x)


def test_backend_runs_cpu_tensors_under_emulation(monkeypatch):
    monkeypatch.setenv(emulation.ENV, "1")
    nvae_fast.reset()
    info = nvae_fast.backend_info()
    assert info["cuda_emulated"] and info["backends"]["cuda"]["available"]
    x = torch.randn(2, 3, 4, 5)
    with nvae_fast.use_backend("cuda"):
        y = nvae_fast.ops.squeeze_excite(x, torch.randn(2, 3), torch.randn(2), torch.randn(3, 2), torch.randn(3))
    assert nvae_fast.backend_info()["fallbacks"] == []
    assert torch.isfinite(y).all()


def test_emulated_backend_takes_cpu_tensors_only(monkeypatch):
    monkeypatch.setenv(emulation.ENV, "1")
    monkeypatch.setenv("NVAE_FAST_SELFCHECK", "0")  # no probe on a CUDA device this machine may lack
    nvae_fast.reset()
    kernels = nvae_fast.backend._state.kernels[("squeeze_excite", "cuda")]
    with nvae_fast.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="CPU tensors under NVAE_FAST_CUDA_EMULATE=1, and only those"):
            nvae_fast.backend.resolve(SQUEEZE_EXCITE, torch.device("cuda"))
        assert nvae_fast.backend.resolve(SQUEEZE_EXCITE, torch.device("cpu"), torch.empty(1, 1, 1, 1)) == (
            "cuda",
            kernels,
        )
    # auto never picks the emulation, for CUDA tensors neither
    assert nvae_fast.backend._auto(SQUEEZE_EXCITE, torch.device("cuda"), torch.float32) != "cuda"


def test_emulation_is_off_unless_requested(monkeypatch):
    monkeypatch.setenv(emulation.ENV, "0")
    nvae_fast.reset()
    info = nvae_fast.backend_info()
    assert not info["cuda_emulated"]
    assert info["backends"]["cuda"]["available"] == (torch.cuda.is_available() and nvae_fast.cuda.available())


ASAN_SCRIPT = Path(__file__).with_name("run_emulated_asan.sh")


def _asan_available() -> bool:
    cxx = shutil.which("c++")
    if cxx is None:
        return False
    lib = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return os.path.isabs(lib) and os.path.exists(lib)


needs_asan = pytest.mark.skipif(not _asan_available(), reason="the C++ compiler has no AddressSanitizer runtime")


@pytest.mark.slow
@needs_asan
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, compute-sanitizer checks the real kernels")
def test_kernel_tests_pass_under_address_sanitizer():
    """run_emulated_asan.sh: the CUDA kernel tests with every memory access of the emulated kernels
    checked (float16 left out: the same code paths as bfloat16)."""
    proc = subprocess.run(["bash", str(ASAN_SCRIPT), "-x", "-k", "not float16"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout.splitlines()[-1], proc.stdout[-1000:]


@pytest.mark.slow
@needs_asan
def test_address_sanitizer_build_reports_an_access_past_the_end():
    """The check behind run_emulated_asan.sh is live: a kernel that reads one element past a tensor's
    memory stops the process with AddressSanitizer's report naming the kernel."""
    code = (
        "import torch; from pathlib import Path; from nvae_fast.cuda import emulation; "
        f"emulation.build('nvae_fast_emu_test', [Path({str(Path(__file__).with_name('emulator_kernels.cpp'))!r})], "
        "asan=True); "
        "torch.ops.nvae_fast_emu_test.read_past_end(torch.randn(37))"
    )
    proc = subprocess.run(
        ["bash", str(ASAN_SCRIPT), "--command", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NVAE_FAST_CUDA_EMULATE": "0"},
    )
    assert proc.returncode != 0
    assert "heap-buffer-overflow" in proc.stderr and "read_past_end_kernel" in proc.stderr, proc.stderr[-3000:]


def test_build_root_is_a_cache_outside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("NVAE_FAST_EMULATION_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert emulation.build_root() == tmp_path / "xdg" / "nvae_fast" / "cuda-emulation"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert emulation.build_root() == tmp_path / "home" / ".cache" / "nvae_fast" / "cuda-emulation"
    monkeypatch.setenv("NVAE_FAST_EMULATION_DIR", str(tmp_path / "mine"))
    assert emulation.build_root() == tmp_path / "mine"
    assert emulation.CSRC.parent not in emulation.build_root().parents


def test_l2_size_from_the_environment(monkeypatch):
    """A bad NVAE_FAST_EMULATE_L2_BYTES is a one-line error; a good one sizes the two-pass BN runs (see
    test_cuda_bn_swish_train.py for their results)."""
    emulation.load()
    x, vec = torch.randn(1, 2, 320, 320), torch.ones(2)  # 102400 values per channel: the l2_blocked plan
    monkeypatch.setenv("NVAE_FAST_EMULATE_L2_BYTES", "12kB")
    with pytest.raises(RuntimeError, match="NVAE_FAST_EMULATE_L2_BYTES must be a number of bytes >= 1024, got '12kB'"):
        emulation.ops().bn_swish_train_forward(x, vec, vec, None, None, 0.1, 1e-5)
    monkeypatch.setenv("NVAE_FAST_EMULATE_L2_BYTES", "1024")
    emulation.ops().bn_swish_train_forward(x, vec, vec, None, None, 0.1, 1e-5)
