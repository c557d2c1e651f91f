"""Static resources of every Triton kernel variant, compiled ahead of time (no GPU needed).

For each entry of each kernel module's ``aot_specs()`` and each target, compile it as the ahead-of-time
test does (``kernels/_aot.py``'s :func:`compile_for`) and read the cubin's resource
usage with the ``cuobjdump -res-usage`` that Triton ships: registers per thread, stack bytes (register
spills), shared memory per block. From them an occupancy *estimate* for an H100/A100 SM (65536
registers, 64 warps, registers allocated per warp in units of 256, shared memory limit per SM):

    warps_by_regs = floor(65536 / (ceil(32 regs / 256) 256)),   blocks = min(floor(warps_by_regs / W),
    floor(smem_sm / shared), floor(64 / W), 32),                occupancy = blocks W / 64

with ``W`` the kernel's warps per block. These are compile-time facts, not timings: they say which
variants spill or run few warps per SM, i.e. where to look first when a benchmark misses its bandwidth.

    python -m benchmarks.kernel_resources [--targets 90,80] [--modules bn_swish,...] [--out file.csv]

Runs without ``TRITON_INTERPRET`` (the interpreter never lowers kernels); prints a CSV to stdout or
``--out``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import re
import subprocess
import sys
import tempfile

FIELDS = ("module", "kernel", "variant", "cc", "num_warps", "registers", "stack_bytes", "shared_bytes",
          "blocks_per_sm", "occupancy")
MODULES = ("bn_swish", "depthwise_conv2d", "squeeze_excite", "power_iteration")
SM_REGISTERS, SM_WARPS, SM_BLOCKS = 65536, 64, 32
SM_SHARED = {80: 164 * 1024, 90: 228 * 1024}  # shared memory per SM (A100, H100)
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)")


def occupancy(registers: int, shared: int, num_warps: int, cc: int) -> tuple[int, float]:
    """``(blocks per SM, active warps / 64)`` of the module docstring's estimate."""
    per_warp = math.ceil(32 * max(registers, 1) / 256) * 256
    limits = [(SM_REGISTERS // per_warp) // num_warps, SM_WARPS // num_warps, SM_BLOCKS]
    if shared:
        limits.append(SM_SHARED[cc] // shared)
    blocks = min(limits)
    return blocks, blocks * num_warps / SM_WARPS


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _variant(constexprs: dict) -> str:
    """The constexpr values that tell variants apart (upper-case names), as ``NAME=value`` pairs."""
    return " ".join(f"{k}={v}" for k, v in constexprs.items() if k.isupper())


def resources(module_name: str, targets=(90,)) -> list[dict]:
    """One row (``FIELDS``) per spec of ``nvae_fast.kernels.<module_name>`` and target."""
    from nvae_fast.kernels._aot import compile_for

    module = importlib.import_module(f"nvae_fast.kernels.{module_name}")
    rows = []
    for entry in module.aot_specs():
        fn, signature, constexprs = entry[0], dict(entry[1]), dict(entry[2])
        options = dict(entry[3]) if len(entry) > 3 else {}
        for cc in targets:
            compiled = compile_for(fn, signature, constexprs, options, cc)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "kernel.cubin")
                with open(path, "wb") as f:
                    f.write(compiled.asm["cubin"])
                report = subprocess.run([_cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True)
            match = _USAGE.search(report.stdout)
            if match is None:
                raise RuntimeError(f"{module_name}.{fn.__name__}: no resource usage in cuobjdump's output:\n{report.stdout}")
            registers, stack, shared = (int(g) for g in match.groups())
            warps = int(options.get("num_warps", 4))
            blocks, occ = occupancy(registers, shared, warps, cc)
            rows.append(dict(module=module_name, kernel=fn.__name__, variant=_variant(constexprs), cc=cc,
                             num_warps=warps, registers=registers, stack_bytes=stack, shared_bytes=shared,
                             blocks_per_sm=blocks, occupancy=round(occ, 3)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="90", help="compute capabilities, e.g. 90,80")
    parser.add_argument("--modules", default=",".join(MODULES), help="kernel modules")
    parser.add_argument("--out", default=None, help="CSV file (default: stdout)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    targets = tuple(int(t) for t in args.targets.split(",") if t)
    rows = [row for name in args.modules.split(",") if name for row in resources(name, targets)]
    if args.out is None:
        _write(sys.stdout, rows)
    else:
        with open(args.out, "w", newline="") as f:
            _write(f, rows)
    return 0


def _write(f, rows: list[dict]) -> None:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
