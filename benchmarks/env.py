"""The environment a result was measured in: device, versions, git commit, date, copy bandwidth.

Every result file stores :func:`environment`'s dict, and every row repeats the fields that a reader of
a single CSV line needs (device name, copy bandwidth, versions, commit, date).

Copy bandwidth: ``dst.copy_(src)`` of two ``nbytes`` buffers on the device, timed like any benchmark
(:mod:`benchmarks.timing`); one copy moves ``2 * nbytes`` (read ``src`` + write ``dst``), so

    copy_bandwidth = 2 * nbytes / median_time        [GB/s, 1 GB = 1e9 bytes]

Two rates are measured:

- the *large-copy* rate, ``nbytes`` = 1 GiB (32 MiB on a CPU), once per session: stored as
  ``copy_bw_GBps`` in the environment and every row, the denominator of every ``bandwidth_fraction``;
- the *same-size* rate (:func:`copy_bandwidth_at`): a copy that moves as many bytes as the row's
  minimum traffic (``nbytes = traffic / 2``), measured in the same session, cached per size: the
  denominator of ``bandwidth_fraction_same_size``. A copy of 8 to 17 MB is itself well below the
  large-copy rate (launch, ramp-up, tail), so this is "as fast as copying the same bytes".
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from . import timing

REPO_ROOT = Path(__file__).resolve().parent.parent

# 1 GiB per buffer on a GPU: far beyond any L2, small next to 80 GB of HBM.
GPU_COPY_BYTES = 1 << 30
CPU_COPY_BYTES = 32 << 20


def device_name(device: torch.device) -> str:
    """The GPU's marketing name, or ``cpu (<processor>)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (for directory names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def git_commit() -> str:
    """``HEAD``'s hash (``-dirty`` appended when the tree has changes), or ``unknown``; the environment
    variable ``NVAE_BENCH_GIT_COMMIT`` overrides it (a device machine may get the tree without ``.git``)."""
    if os.environ.get("NVAE_BENCH_GIT_COMMIT"):
        return os.environ["NVAE_BENCH_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """torch, triton, CUDA runtime (as torch sees it) and Python versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
    }


def _copy_rate(device: torch.device, nbytes: int, smoke: bool, flush: bool) -> float:
    """GB/s of ``dst.copy_(src)`` over ``nbytes``-byte buffers (read plus write counted), p50 of timed runs."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    samples = timing.time_runs(lambda _: dst.copy_(src), device=device, smoke=smoke, flush=flush)
    return 2 * nbytes / (max(timing.percentiles(samples)[1], 1e-9) * 1e-3) / 1e9


def copy_bandwidth(device: torch.device, smoke: bool) -> float:
    """Measured device-to-device copy bandwidth in GB/s (see the module docstring)."""
    return _copy_rate(device, GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES, smoke, flush=False)


_same_size_cache: dict[tuple[str, int, bool], float] = {}


def copy_bandwidth_at(device: torch.device, traffic_bytes: int, smoke: bool) -> float:
    """GB/s of a device-to-device copy moving ``traffic_bytes`` in all (``traffic_bytes // 2`` read and
    as many written), timed like the ops (L2 flushed, device time); measured once per size and device."""
    nbytes = max(1, int(traffic_bytes) // 2)
    key = (str(device), nbytes, bool(smoke))
    if key not in _same_size_cache:
        _same_size_cache[key] = _copy_rate(device, nbytes, smoke, flush=True)
    return _same_size_cache[key]


def driver_version(device: torch.device) -> str:
    """The NVIDIA driver's version as ``nvidia-smi`` reports it (``"none"`` off a CUDA device)."""
    if device.type != "cuda":
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out[0] if out else "unknown"


def environment(device: torch.device, smoke: bool) -> dict:
    """Everything a result file records about where and when it was measured."""
    name = device_name(device)
    return {
        "device": device.type,
        "gpu": name,
        "gpu_slug": slug(name.split(" (")[0] if device.type == "cpu" else name),
        "copy_bw_GBps": copy_bandwidth(device, smoke),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "smoke": smoke,
        "driver": driver_version(device),
        "timing": timing.TIMING_METHOD,
        **versions(),
    }


def results_dir_name(env: dict) -> str:
    """``<date>-<gpu>`` (``-smoke`` appended for smoke runs), e.g. ``2025-01-31-nvidia-h100-80gb-hbm3``."""
    return f"{env['date'][:10]}-{env['gpu_slug']}" + ("-smoke" if env["smoke"] else "")
