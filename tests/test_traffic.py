"""The traffic counters of benchmarks.traffic: exact on kernels whose traffic is known by hand, launches,
ATen ops and host syncs counted, and the table's JSON rows.

The CUDA counters need the emulation's count flavour, which registers the same op namespace as the
flavour this test process loaded (tests/conftest.py): those checks run in a subprocess. The Triton
counters and the host-work counter run here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import host_work, traffic, triton_traffic
from benchmarks.kernel_launch import Launch, plan

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_KERNELS = ROOT / "tests" / "cuda" / "emulator_kernels.cpp"
interpreting = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def _counting_subprocess(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "NVAE_FAST_CUDA_EMULATE": "count", "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# Runs kernels whose global-memory traffic is known by hand in the count flavour, prints what was counted.
_EMULATED = f"""
import json, torch, nvae_fast
from pathlib import Path
from nvae_fast.cuda import emulation
from benchmarks import emulation_traffic
nvae_fast.reset()
emulation.build("nvae_fast_emu_test", [Path({str(EMULATOR_KERNELS)!r})])
test, ops = torch.ops.nvae_fast_emu_test, torch.ops.nvae_fast_emu
out = {{}}
n, c, hw = 2, 8, 64
x = torch.randn(n, c, 8, 8)
params = [torch.randn(c), torch.rand(c) + 0.5, torch.randn(c), torch.randn(c)]
with emulation_traffic.counting() as launches:
    ops.bn_swish_normalize(x, *params)
out["normalize"] = [l.__dict__ for l in launches]
with emulation_traffic.counting() as launches:
    test.block_sum(torch.randn(4 * 64), 64)
    test.block_sum(torch.randn(3 * 32), 32)
out["block_sum"] = [l.__dict__ for l in launches]
with emulation_traffic.counting() as launches:
    test.read_smem(32)
out["read_smem"] = [l.__dict__ for l in launches]
y = torch.full((n, c, 8, 8), 7.0)
with emulation_traffic.counting(plan_only=True) as launches:
    y = ops.bn_swish_normalize(x, *params)
out["plan_only"] = [l.__dict__ for l in launches]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def emulated() -> dict:
    proc = _counting_subprocess(["-c", _EMULATED])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_emulation_counts_a_kernel_that_reads_x_and_its_channel_constants_once(emulated):
    """bn_swish normalize, y = f(x, mean, invstd, weight, bias): x and the four (C,) tensors read, y written."""
    (launch,) = emulated["normalize"]
    x_bytes, params_bytes = 2 * 8 * 64 * 4, 4 * 8 * 4
    assert launch["kernel"].startswith("channel_map_kernel<BNNormalize<float>")
    assert launch["read"] == x_bytes + params_bytes
    assert launch["written"] == x_bytes
    # every access added up: at least the distinct bytes (the constants are re-read per vector)
    assert launch["read_requested"] >= launch["read"] and launch["written_requested"] == x_bytes


def test_emulation_leaves_out_shared_memory_and_counts_every_launch(emulated):
    """block_sum: x read once, one float per block written; its static __shared__ array and warp shuffles
    are not global memory. read_smem: reads dynamic shared memory only, writes n floats."""
    first, second = emulated["block_sum"]
    counts = ("read", "written", "read_requested", "written_requested")
    assert [first[k] for k in counts] == [1024, 16, 1024, 16]
    assert (second["read"], second["written"]) == (384, 12)
    (smem,) = emulated["read_smem"]
    assert (smem["read"], smem["written"], smem["read_requested"]) == (0, 128, 0)


def test_emulation_plan_only_records_the_kernel_without_running_it(emulated):
    (launch,) = emulated["plan_only"]
    assert launch["kernel"] == emulated["normalize"][0]["kernel"]
    assert launch["read"] is None and launch["written"] is None


if os.environ.get("TRITON_INTERPRET") == "1":
    import triton
    import triton.language as tl

    @triton.jit
    def _copy_kernel(src, dst, n, TWICE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        v = tl.load(src + offs, mask=mask).to(tl.float32)
        if TWICE:
            v += tl.load(src + offs, mask=mask).to(tl.float32)
        tl.store(dst + offs, v.to(dst.dtype.element_ty), mask=mask)


@interpreting
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_counts_masked_elements_once_per_launch(dtype):
    n, block = 1000, 256
    src, dst = torch.randn(n, dtype=dtype), torch.zeros(n, dtype=dtype)
    with triton_traffic.counting() as launches:
        _copy_kernel[(triton.cdiv(n, block),)](src, dst, n, TWICE=False, BLOCK=block)
        _copy_kernel[(triton.cdiv(n, block),)](src, dst, n, TWICE=True, BLOCK=block)
    size = n * src.element_size()
    assert [(l.read, l.written, l.read_requested, l.written_requested) for l in launches] == [
        (size, size, size, size), (size, size, 2 * size, size)]
    assert launches[0].kernel == "_copy_kernel[TWICE=False, BLOCK=256]"
    assert torch.equal(dst, src + src)


@interpreting
def test_triton_plan_only_skips_the_programs():
    src, dst = torch.randn(64), torch.zeros(64)
    with triton_traffic.counting(plan_only=True) as launches:
        _copy_kernel[(1,)](src, dst, 64, TWICE=False, BLOCK=64)
    assert launches == [Launch("_copy_kernel[TWICE=False, BLOCK=64]")]
    assert not dst.any()


def test_host_work_counts_ops_that_write_memory_only():
    x = torch.randn(4, 5)
    with host_work.counting() as work:
        x.view(-1)
        x.contiguous()
        x.to(torch.float32)
        torch.empty(3)
        y = x + 1
        y.add_(1)
        x.t().contiguous()
    assert dict(work.aten_ops) == {"aten.add": 1, "aten.add_": 1, "aten.clone": 1}
    assert not work.host_syncs


def test_host_work_counts_host_syncs():
    x = torch.randn(4, 5)
    with host_work.counting() as work:
        x.sum().item()
        x.tolist()
        float(x[0, 0])
        x.cpu()
    assert dict(work.host_syncs) == {"aten._local_scalar_dense": 2, "Tensor.tolist": 1, "Tensor.cpu": 1}
    assert dict(work.aten_ops) == {"aten.sum": 1}


def test_host_work_restores_the_tensor_methods():
    before = torch.Tensor.tolist
    with host_work.counting():
        pass
    assert torch.Tensor.tolist is before


def test_plan_lists_kernels_in_order_with_counts():
    launches = [Launch("a<1>"), Launch("b"), Launch("a<1>"), Launch("a<2>")]
    assert plan(launches) == "a<1> x2; b; a<2>"
    assert plan([]) == "(no kernels)"


def test_two_pass_rows_model_the_second_pass_as_l2_hits():
    from benchmarks.shapes import OpShape
    from benchmarks.traffic_count import _l2_hits, _l2_note

    pool = Launch("se_reduce_kernel<float, float, Layout::NCHW, false>", read=400, written=8)
    scale = Launch("se_map_kernel<float, Layout::NCHW, 4>", read=408, written=400)
    se_small, se_large = OpShape(op="squeeze_excite", x=(2, 3, 64, 64)), OpShape(op="squeeze_excite", x=(32, 768, 32, 32))
    assert _l2_hits([pool, scale], se_small, "bwd", 4) == (400, True)  # dy and x: 196 KB
    assert _l2_hits([pool, Launch("se_map_kernel<float>", read=300)], se_small, "fwd", 4) == (300, True)
    # x: 96 MB, more than half the L2: the share of the re-read that the last 25 MiB of reads cover
    assert _l2_hits([pool, scale], se_large, "fwd", 4) == (int(400 * (25 << 20) / (32 * 768 * 1024 * 4)), False)
    assert _l2_hits([scale], se_small, "fwd", 4) is None  # no first pass
    note = _l2_note([_l2_hits([pool, scale, pool, scale], se_small, "fwd", 4)], 2432, 1600)
    assert note.startswith(" [modelled DRAM ratio 1.02:") and "50 MB L2, the inputs within half" in note, note
    note = _l2_note([(100, False)], 2432, 1600)
    assert note.startswith(" [modelled DRAM ratio 1.46:") and "last to first" in note, note
    assert _l2_note([], 808, 800) == ""


def test_launches_over_l2_runs_say_what_the_count_assumes():
    from benchmarks.traffic_count import _run_launch_note

    for kernel in ("bn_train_forward_two_pass_kernel<float, Layout::NCHW, 4>", "_bn_backward_two_pass_kernel[BLOCK_A=4]"):
        note = _run_launch_note([Launch(kernel, read=400, written=400)], 1200, 800)
        assert "two passes in one launch" in note and "runs of channels sized to half of an assumed 50 MB L2" in note
        assert "requested/floor 1.50 with every read" in note, note
    note = _run_launch_note([Launch("_resident_kernel[N=1]"), Launch("_steps_kernel[BLOCK_R=32]")], 7200, 800)
    assert "every half-step in one launch" in note and "runs of weights sized" in note and "9.00 with" in note, note
    note = _run_launch_note([Launch("pi_steps_kernel<float>")], 7200, 800)
    assert "every half-step in one launch" in note, note
    assert _run_launch_note([Launch("bn_train_forward_kernel<float, Layout::NCHW, 4, true>")], 800, 800) == ""


def test_traffic_command_writes_rows_with_exactly_the_listed_keys(tmp_path):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    _counting_subprocess(["-m", "benchmarks.traffic", "--ops", "squeeze_excite", "--presets", "cifar10", "--limit", "1",
                          "--dtypes", "float32", "--max-elements", "4096", "--json", str(out_json), "--markdown",
                          str(out_md)])
    rows = json.loads(out_json.read_text())
    assert [tuple(r) for r in rows] == [traffic.ROW_KEYS] * 6
    assert {(r["backend"], r["mode"]) for r in rows} == {(b, m) for b in ("cuda", "triton") for m in traffic.MODES}
    for r in rows:
        assert r["shape"] == {"x": [32, 128, 32, 32], "hidden": 8}
        assert math.prod(r["counted_shape"]["x"]) <= 4096
        assert r["launches"] > 0 and r["host_syncs"] == 0
        assert r["ratio"] == pytest.approx((r["bytes_read"] + r["bytes_written"]) / r["floor_bytes"], rel=1e-3)
    fwd, bwd, both = (next(r for r in rows if r["backend"] == "cuda" and r["mode"] == m) for m in traffic.MODES)
    assert both["bytes_read"] == fwd["bytes_read"] + bwd["bytes_read"]
    assert both["launches"] == fwd["launches"] + bwd["launches"]
    assert "| squeeze_excite | cuda | fwd | float32 | cifar10 |" in out_md.read_text()
