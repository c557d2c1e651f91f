"""Launches and global-memory traffic of the CUDA kernels, counted in the CPU emulation.

Needs the emulation's ``count`` flavour (``NVAE_FAST_CUDA_EMULATE=count`` in the environment before
``nvae_fast`` probes its backends; see :mod:`nvae_fast.cuda.emulation`), which registers
``torch.ops.nvae_fast_traffic``: ``csrc/emulation/traffic.cpp`` counts, per launch of ``run_grid``, the
bytes the kernel reads and writes in tensor memory (live allocations of the CPU allocator), each byte
once (``read``, ``written``) and every access (``*_requested``). Fibers' stacks, shared memory and
kernel arguments are not tensor memory and are never counted. Tensors must be allocated after the
library is loaded (``nvae_fast.reset()`` with that environment loads it) to be tracked.

:func:`counting` records the launches of the enclosed code as :class:`~benchmarks.kernel_launch.Launch`;
with ``plan_only=True`` the kernels do not run (outputs stay uninitialised) and only their variants are
recorded, so a full-size shape's plan costs no emulation time.
"""

from __future__ import annotations

import contextlib
import re

import torch

from .kernel_launch import Launch

NAMESPACE = "nvae_fast_traffic"
# Qualifiers dropped from kernel names: they carry no variant information.
_QUALIFIERS = re.compile(r"\bnvae_fast::|\{anonymous\}::|\(anonymous namespace\)::|\bc10::|\bat::")


def unavailable() -> str | None:
    """Why the emulation's traffic counters cannot be read in this process, or ``None``."""
    import nvae_fast

    from nvae_fast.cuda import emulation

    if not emulation.counting():
        return f"{emulation.ENV}=count is not set (the counters exist only in that build of the emulation)"
    status = nvae_fast.backend_info()["backends"]["cuda"]
    if not status["available"]:
        return f"the cuda backend is unavailable: {status['reason']}"
    if not hasattr(torch.ops, NAMESPACE) or not hasattr(getattr(torch.ops, NAMESPACE), "take"):
        return f"torch.ops.{NAMESPACE} is not registered (the count flavour did not load)"
    return None


def _library():
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"emulation traffic counters: {reason}")
    return getattr(torch.ops, NAMESPACE)


def _parse(text: str, counted: bool) -> list[Launch]:
    out = []
    for line in text.splitlines():
        kernel, *counts = line.split("\t")
        read, written, read_requested, written_requested = (int(c) if counted else None for c in counts)
        out.append(Launch(_QUALIFIERS.sub("", kernel), read, written, read_requested, written_requested))
    return out


@contextlib.contextmanager
def counting(plan_only: bool = False):
    """Record the emulated launches of the enclosed code: yields a list, filled on exit."""
    lib = _library()
    lib.take()  # launches before the block are not its own
    lib.set_plan_only(plan_only)
    launches: list[Launch] = []
    try:
        yield launches
    finally:
        lib.set_plan_only(False)
        launches.extend(_parse(lib.take(), counted=not plan_only))
