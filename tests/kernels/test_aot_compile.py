"""Every Triton kernel compiles ahead of time for real GPUs (sm_80 and sm_90), on any machine.

The interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` without a GPU) never lowers a kernel
to PTX, so code that the compiler rejects would pass the CPU test suite. This test compiles every kernel
with ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32),
options)`` for cc 80 and 90, in a subprocess started without ``TRITON_INTERPRET``; no GPU is needed
(Triton ships ptxas). Compiled kernels land in Triton's content-addressed cache, so reruns are quick.

Convention for every kernel module ``kernels/<op>.py`` (imported as ``nvae_fast.kernels.<op>``; modules
whose name starts with ``_`` are helpers and are skipped):

* Each kernel launched from the host is a module-level ``@triton.jit`` function whose name ends in
  ``_kernel``. ``@triton.jit`` device helpers that kernels call must not end in ``_kernel``.
* The module defines ``aot_specs()``, returning a list of entries ``(fn, signature, constexprs)`` or
  ``(fn, signature, constexprs, options)``. ``kernels/_aot.py`` has :func:`aot_spec`, which builds one
  (an ``AotSpec`` named tuple) from a single ``{param: type string or constexpr value}`` dict and checks
  that every parameter is named.

  - ``signature`` maps EVERY parameter name of ``fn`` to a Triton type string (``"*fp16"``, ``"*bf16"``,
    ``"*fp32"``, ``"*fp64"``, ``"i32"``, ``"i64"``, ``"fp32"``, ...) or to ``"constexpr"``;
  - ``constexprs`` maps each constexpr parameter name to its value (ints, bools, ``tl.float32``, ...);
  - ``options`` are compile options, e.g. ``{"num_warps": 8}``: use what the host wrapper launches with.

* ``aot_specs()`` names every ``_kernel`` function of the module at least once and covers its meaningful
  constexpr variants: input dtypes (float16, bfloat16, float32, float64), layout and mode flags, and a
  representative full-size tile per layout.
* The JIT specialises an integer argument equal to 1 into the constant 1 (batch of one, 1x1 maps, an
  unsplit reduction), so kernels must also compile that way: ``aot_spec`` takes the value ``1`` for a
  runtime integer parameter, and ``_aot.ones(args, *names)`` sets parameters to 1. Besides the listed
  specs, this test compiles the first spec of each kernel once more with every integer argument set to 1.
* ``aot_specs()`` must not touch a GPU and must work with and without the interpreter; importing a
  kernel module builds no specs.

Kernels named in the module's ``REGISTER_RESIDENT`` (tiles sized to what the registers hold) must also
compile without spilling registers (ptxas ``-v`` on their PTX).

Pointer parameters are compiled with the 16-byte divisibility hint that the JIT gives aligned torch
tensors, so the vectorised code paths that run on a GPU are the ones compiled here.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import types

import pytest
import triton
import triton.language as tl

TARGETS = (80, 90)
# Largest shared memory one block may use (bytes, opt-in dynamic): A100 163 KiB, H100 227 KiB (CUDA
# programming guide, compute capability tables). A kernel over the limit compiles but fails to launch.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
_WORKER_FLAG = "--aot-worker"
_SELFTEST = "<selftest>"


def _kernel_modules() -> list[str]:
    """Names of the kernel modules in ``nvae_fast.kernels`` (without importing them)."""
    package = importlib.import_module("nvae_fast.kernels")
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


# ------------------------------------------------------------------------------ worker (subprocess)


def _compile_module(name: str) -> dict:
    """Compile every spec of ``nvae_fast.kernels.<name>`` for every target; report what failed."""
    try:
        module = importlib.import_module(f"nvae_fast.kernels.{name}")
    except Exception as exc:  # noqa: BLE001 - the report names the failure
        return {"specs": 0, "compiled": 0, "max_shared": 0, "errors": [f"import failed: {exc!r}"]}
    return _compile_specs(module)


def _compile_specs(module) -> dict:
    """Compile ``module.aot_specs()`` for every target and check that they name every ``_kernel``."""
    from triton.runtime.jit import JITFunction

    from nvae_fast.kernels._aot import compile_for

    report = {"specs": 0, "compiled": 0, "max_shared": 0, "checked_spills": 0, "errors": []}
    resident = set(getattr(module, "REGISTER_RESIDENT", ()))
    specs = module.aot_specs() if callable(getattr(module, "aot_specs", None)) else None
    if not isinstance(specs, (list, tuple)) or not specs:
        report["errors"].append("module's aot_specs() gives no non-empty list")
        return report
    kernels = {
        attr for attr, obj in vars(module).items()
        if isinstance(obj, JITFunction) and attr.endswith("_kernel") and obj.fn.__module__ == module.__name__
    }
    jobs, first = [], {}
    for i, entry in enumerate(specs):
        fn, signature, constexprs = entry[0], dict(entry[1]), dict(entry[2])
        options = dict(entry[3]) if len(entry) > 3 else {}
        label = f"aot_specs()[{i}] {getattr(fn, '__name__', fn)} {constexprs}"
        if not isinstance(fn, JITFunction):
            report["errors"].append(f"{label}: not a triton.jit function (got {type(fn).__name__})")
            continue
        missing = [a for a in fn.arg_names if a not in signature]
        if missing:
            report["errors"].append(f"{label}: signature lacks parameters {missing}")
            continue
        jobs.append((label, fn, signature, constexprs, options))
        first.setdefault(fn.__name__, jobs[-1])
    report["specs"] = len(jobs)
    for label, fn, signature, constexprs, options in list(first.values()):
        unit = {a: 1 for a, t in signature.items() if t in ("i32", "i64")}
        if unit:  # the JIT's specialisation of integer arguments equal to 1
            signature = {a: "constexpr" if a in unit else t for a, t in signature.items()}
            jobs.append((f"{label} with {sorted(unit)} = 1", fn, signature, {**constexprs, **unit}, options))
    for label, fn, signature, constexprs, options in jobs:
        for cc in TARGETS:
            try:
                compiled = compile_for(fn, signature, constexprs, options, cc)
                report["compiled"] += 1
                shared = int(compiled.metadata.shared)
                report["max_shared"] = max(report["max_shared"], shared)
                if shared > SHARED_LIMIT[cc]:
                    report["errors"].append(
                        f"{label} sm_{cc}: needs {shared} bytes of shared memory, the device allows {SHARED_LIMIT[cc]}"
                    )
                if fn.__name__ in resident:
                    report["checked_spills"] += 1
                    spilled = _spill_bytes(compiled.asm["ptx"], cc)
                    if spilled:
                        report["errors"].append(f"{label} sm_{cc}: spills {spilled} bytes of registers to local memory")
            except Exception as exc:  # noqa: BLE001 - the report names the failure
                report["errors"].append(f"{label} sm_{cc}: {type(exc).__name__}: {str(exc)[-1500:]}")
    covered = {fn.__name__ for _, fn, _, _, _ in jobs}
    for kernel in sorted(kernels - covered):
        report["errors"].append(f"kernel {kernel} has no entry in aot_specs()")
    return report


def _spill_bytes(ptx: str, cc: int) -> int:
    """Bytes of spill stores ptxas reports for ``ptx`` (Triton's own ptxas, ``-v``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        arch = f"sm_{cc}a" if cc == 90 else f"sm_{cc}"  # Triton's sm_90 PTX targets sm_90a
        proc = subprocess.run([triton.knobs.nvidia.ptxas.path, f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                              capture_output=True, text=True, check=True)
    return sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", proc.stderr))


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _broken_kernel(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)  # BLOCK = 3 is no power of two: rejected by the compiler


@triton.jit
def _count_kernel(x_ptr, n):
    tl.store(x_ptr, n.to(tl.float32))  # fails once n is specialised to the constant 1 (an int has no .to)


@triton.jit
def _greedy_kernel(a_ptr, b_ptr, c_ptr, K: tl.constexpr):
    m = tl.arange(0, 16)
    k = tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * 16 + m[None, :])
    tl.store(c_ptr + m[:, None] * 16 + m[None, :], tl.dot(a, b))  # K = 2048: 256 KiB of staged operands


@triton.jit
def _spilling_kernel(x_ptr, BLOCK: tl.constexpr):
    v = tl.load(x_ptr + tl.arange(0, BLOCK))
    tl.store(x_ptr + tl.arange(0, BLOCK), v / tl.sum(v))  # BLOCK = 8192 live values on one warp: 256 per thread


@triton.jit
def _forgotten_kernel(x_ptr):
    tl.store(x_ptr, 1.0)


def _selftest() -> dict:
    """The harness on a module with a good kernel, a broken one, one that breaks when an argument is
    1, one that needs more shared memory than a block may have, a register-resident one that spills, and
    one without a spec."""
    module = types.ModuleType(__name__)
    for fn in (_copy_kernel, _broken_kernel, _count_kernel, _greedy_kernel, _spilling_kernel, _forgotten_kernel):
        setattr(module, fn.__name__, fn)
    module.REGISTER_RESIDENT = ("_copy_kernel", "_spilling_kernel")
    module.aot_specs = lambda: [
        (_copy_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 128}),
        (_broken_kernel, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 3}, {"num_warps": 1}),
        (_count_kernel, {"x_ptr": "*fp32", "n": "i32"}, {}),
        (_greedy_kernel, {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "K": "constexpr"}, {"K": 2048}),
        (_spilling_kernel, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 8192}, {"num_warps": 1}),
    ]
    return _compile_specs(module)


def _worker() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("the AOT worker must run without TRITON_INTERPRET")
    names = sys.argv[2:]
    print(json.dumps({name: _selftest() if name == _SELFTEST else _compile_module(name) for name in names}))


# ------------------------------------------------------------------------------------------- tests

MODULES = _kernel_modules()
# One worker runs every test of this module under pytest-xdist --dist loadgroup, so the compile runs once.
pytestmark = pytest.mark.xdist_group("aot_compile")


@pytest.fixture(scope="module")
def aot_report():
    """Run the worker once for all kernel modules; its JSON report, keyed by module name."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, __file__, _WORKER_FLAG, _SELFTEST, *MODULES]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"AOT worker exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_harness_reports_broken_and_uncovered_kernels(aot_report):
    report = aot_report[_SELFTEST]
    # per target: _copy_kernel as listed and with n = 1, _count_kernel, _greedy_kernel, _spilling_kernel
    assert report["compiled"] == 5 * len(TARGETS), report
    assert report["checked_spills"] == 3 * len(TARGETS), report  # _copy_kernel twice, _spilling_kernel
    errors = report["errors"]
    assert len(errors) == 4 * len(TARGETS) + 1, report
    t = len(TARGETS)
    assert all("_broken_kernel" in e for e in errors[:t]), report
    assert all("_greedy_kernel" in e and "shared memory" in e for e in errors[t : 2 * t]), report
    assert all("_spilling_kernel" in e and "spills" in e for e in errors[2 * t : 3 * t]), report
    assert all("_count_kernel" in e and "['n'] = 1" in e for e in errors[3 * t : -1]), report
    assert errors[-1] == "kernel _forgotten_kernel has no entry in aot_specs()", report


def test_discovers_the_kernel_modules():
    assert {"bn_swish", "squeeze_excite"} <= set(MODULES), MODULES


def test_register_resident_tiles_do_not_spill(aot_report):
    """The kernels whose tiles are sized to the registers (``REGISTER_RESIDENT`` of their module) were
    checked for spills (errors of test_every_kernel_compiles_for_sm80_and_sm90 otherwise)."""
    assert aot_report["bn_swish"]["checked_spills"] >= 8 * len(TARGETS), aot_report["bn_swish"]


@pytest.mark.parametrize("module", MODULES)
def test_every_kernel_compiles_for_sm80_and_sm90(aot_report, module):
    report = aot_report[module]
    assert not report["errors"], f"{module}: " + "\n".join(report["errors"])
    assert report["compiled"] >= report["specs"] * len(TARGETS) > 0
    assert 0 <= report["max_shared"] <= SHARED_LIMIT[80]


if __name__ == "__main__" and sys.argv[1:2] == [_WORKER_FLAG]:
    _worker()


def test_importing_a_kernel_module_builds_no_specs():
    """The specs are test machinery: importing nvae_fast's kernels must not build them."""
    code = ("import sys, nvae_fast.kernels._aot as aot\n"
            "calls = []\n"
            "real = aot.aot_spec\n"
            "aot.aot_spec = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
            "import nvae_fast.kernels.bn_swish, nvae_fast.kernels.depthwise_conv2d\n"
            "import nvae_fast.kernels.squeeze_excite, nvae_fast.kernels.power_iteration\n"
            "sys.exit(len(calls))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:] or f"{proc.returncode} specs built at import"
