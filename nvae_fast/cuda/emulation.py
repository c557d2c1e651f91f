"""The CUDA kernels of ``csrc/`` built for the CPU, for testing them on a machine without a GPU.

With ``NVAE_FAST_CUDA_EMULATE=1`` (read by :func:`nvae_fast.reset`, like ``TRITON_INTERPRET=1`` for
the Triton backend), the ``cuda`` backend runs on CPU tensors: the same kernel sources, compiled by the
host compiler with ``-DNVAE_FAST_EMULATE`` against ``csrc/emulation/emulation.h``, which runs every
CUDA thread of a block as a fiber that yields at ``__syncthreads`` and warp shuffles. Host code, grid
sizing (for a 132-SM device, or ``NVAE_FAST_EMULATE_SMS``), vector/scalar paths and the kernels' index
arithmetic are the same as on the GPU; what the emulation does not model (data races, the memory model,
device libm rounding) is listed in that header. It is slow: use small shapes.

The library registers the ops as ``torch.ops.nvae_fast_emu.*`` (CPU dispatch key). This module imports
nothing from nvae_fast: the backend loads the library, registers the fake implementations of
:mod:`nvae_fast.cuda` for its ops (so ``torch.library.opcheck`` runs on them) and points the kernel sets
at it. It is built on first use into a cache directory outside the checkout (:func:`build_root`:
``NVAE_FAST_EMULATION_DIR``, else ``$XDG_CACHE_HOME/nvae_fast/cuda-emulation``, else
``~/.cache/nvae_fast/cuda-emulation``, like torch's extension cache) with torch's C++ extension builder
(ninja; about a minute on 2 cores, rebuilt only when a source changed) and needs no CUDA toolkit, so it
also works with a CPU build of torch.

``NVAE_FAST_CUDA_EMULATE=asan`` builds the kernels with AddressSanitizer instead, so that an access
outside a tensor's memory stops the process with a report naming the kernel (the CPU counterpart of
compute-sanitizer's memcheck). The process must start with the sanitizer's runtime preloaded:
``tests/cuda/run_emulated_asan.sh`` runs the kernel tests so.

``NVAE_FAST_CUDA_EMULATE=count`` builds the kernels so that their global-memory traffic is counted
(``csrc/emulation/traffic.cpp``; read by ``benchmarks.emulation_traffic``): compiled with
``-fsanitize=thread``, whose instrumentation callbacks the library ``nvae_fast_traffic`` (compiled
without it, loaded first, linked by path instead of the sanitizer's runtime) defines to add each access
of a running kernel to the launch's byte counters. It registers the same ``torch.ops.nvae_fast_emu`` ops,
so it cannot share a process with the other flavours.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ENV = "NVAE_FAST_CUDA_EMULATE"
NAMESPACE = "nvae_fast_emu"

_ROOT = Path(__file__).resolve().parents[2]
CSRC = _ROOT / "csrc"
KERNEL_SOURCES = ("bn_swish.cu", "depthwise_conv2d.cu", "squeeze_excite.cu", "power_iteration.cu")
CFLAGS = ("-O2", "-DNVAE_FAST_EMULATE", "-fno-strict-aliasing", "-fvisibility=hidden")
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer")
COUNT_FLAGS = ("-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-DNVAE_FAST_EMULATE_COUNT")
TRAFFIC = "nvae_fast_traffic"

_loaded: set[str] = set()


def requested() -> bool:
    """True when ``NVAE_FAST_CUDA_EMULATE`` asks for the emulation (any value but empty or ``0``)."""
    return os.environ.get(ENV, "0") not in ("", "0")


def sanitized() -> bool:
    """True when ``NVAE_FAST_CUDA_EMULATE=asan`` asks for the AddressSanitizer build."""
    return os.environ.get(ENV, "") == "asan"


def counting() -> bool:
    """True when ``NVAE_FAST_CUDA_EMULATE=count`` asks for the build that counts global-memory traffic."""
    return os.environ.get(ENV, "") == "count"


def build_root() -> Path:
    """Where the emulated libraries are built (see the module doc; read at every build)."""
    configured = os.environ.get("NVAE_FAST_EMULATION_DIR", "").strip()
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nvae_fast" / "cuda-emulation"


def build(name: str, sources: list[Path], asan: bool | None = None) -> None:
    """Compile ``sources`` (with the emulator's runtime) into the library ``name`` and load it.

    ``.cu`` files are compiled as C++ through a one-line ``.cpp`` wrapper that includes them (torch's
    builder hands ``.cu`` files to nvcc). Loading registers whatever ``TORCH_LIBRARY`` blocks they hold.
    Once per process and name; with AddressSanitizer when ``asan`` is true (default: under
    ``NVAE_FAST_CUDA_EMULATE=asan``), else with traffic counting under ``NVAE_FAST_CUDA_EMULATE=count``.
    Raises ``RuntimeError`` when the sources are not there (an installed, non-editable package) or do not
    compile.
    """
    if name in _loaded:
        return
    if not (CSRC / "emulation" / "runtime.cpp").is_file():
        raise RuntimeError(f"the CUDA emulation needs the source checkout's csrc/ (looked in {CSRC})")
    from torch.utils import cpp_extension

    asan = sanitized() if asan is None else asan
    count = counting() and not asan
    flavour = "-asan" if asan else "-count" if count else ""
    # one ABI per torch version
    build_dir = build_root() / f"{name}-torch-{torch.__version__}{flavour}"
    wrappers = build_dir / "src"
    wrappers.mkdir(parents=True, exist_ok=True)
    compiled = [CSRC / "emulation" / "runtime.cpp"]
    for src in sources:
        if src.suffix == ".cu":
            wrapper = wrappers / f"{src.stem}.cpp"
            text = f'#include "{src}"\n'
            if not wrapper.is_file() or wrapper.read_text() != text:
                wrapper.write_text(text)
            src = wrapper
        compiled.append(src)
    cpp_extension.load(
        name=name,
        sources=[str(s) for s in compiled],
        extra_cflags=list(CFLAGS + (ASAN_FLAGS if asan else COUNT_FLAGS if count else ())),
        extra_ldflags=list(ASAN_FLAGS[:1] if asan else (str(_traffic_library()),) if count else ()),
        extra_include_paths=[str(CSRC)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    _loaded.add(name)


def _traffic_library() -> Path:
    """Build (when needed) and load ``csrc/emulation/traffic.cpp`` without instrumentation; its path."""
    build_dir = build_root() / f"{TRAFFIC}-torch-{torch.__version__}"
    if TRAFFIC not in _loaded:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=TRAFFIC,
            sources=[str(CSRC / "emulation" / "traffic.cpp")],
            extra_cflags=list(CFLAGS),
            extra_include_paths=[str(CSRC)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
        _loaded.add(TRAFFIC)
    return build_dir / f"{TRAFFIC}.so"


def load() -> None:
    """Build (when needed) and load the emulated kernels, ``torch.ops.nvae_fast_emu.*`` (the backend then
    registers the fake implementations of ``nvae_fast.cuda`` for them)."""
    build(NAMESPACE, [CSRC / s for s in KERNEL_SOURCES] + [CSRC / "bindings.cpp"])


def ops():
    """The namespace ``torch.ops.nvae_fast_emu`` (after :func:`load`)."""
    return getattr(torch.ops, NAMESPACE)
