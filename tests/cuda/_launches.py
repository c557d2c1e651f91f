"""The launch plans of the CUDA kernels' host code for a 132-SM device, without a GPU and without running them.

:func:`launches` calls one op of ``csrc/`` built against ``launch_recorder.cpp`` (a stand-in for the
emulation's runtime that records each launch's kernel, grid, block and shared memory instead of running
it, on a device of 132 multiprocessors unless asked for another count) and returns the launches. The
sources are the unchanged ``csrc/*.cu`` and ``csrc/bindings.cpp``, registered as
``torch.ops.nvae_fast_plan.*``; the library is compiled once (host compiler, -O0, like the emulation:
about a minute on 2 cores) into ``nvae_fast_plan-torch-<version>/`` of the emulation's build directory
(``emulation.build_root()``). Its ops take CPU tensors of any content (the kernels never run; outputs
stay uninitialised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from nvae_fast.cuda import emulation

NAMESPACE = "nvae_fast_plan"
MULTIPROCESSORS = 132  # launch_recorder.cpp's device
_RECORDER = Path(__file__).with_name("launch_recorder.cpp")
_loaded = False


@dataclass(frozen=True)
class Launch:
    kernel: str  # e.g. "nvae_fast::reduce_inner_kernel<nvae_fast::{anonymous}::BNStats<float>, 256, 1>"
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int

    @property
    def name(self) -> str:
        """The kernel's unqualified name without template arguments, e.g. ``reduce_inner_kernel``."""
        return self.kernel.split("<", 1)[0].rsplit("::", 1)[-1]

    @property
    def template_args(self) -> list[str]:
        """The top-level template arguments, e.g. ``['...BNStats<float>', '256', '1']``."""
        inner = self.kernel[self.kernel.index("<") + 1 : self.kernel.rindex(">")] if "<" in self.kernel else ""
        args, depth, start = [], 0, 0
        for i, ch in enumerate(inner):
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "," and depth == 0:
                args.append(inner[start:i].strip())
                start = i + 1
        return args + ([inner[start:].strip()] if inner else [])

    @property
    def blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def threads(self) -> int:
        return math.prod(self.block)


def load():
    """Build (once) and load the recorder library; returns ``torch.ops.nvae_fast_plan``."""
    global _loaded
    if not _loaded:
        from torch.utils import cpp_extension

        build_dir = emulation.build_root() / f"{NAMESPACE}-torch-{torch.__version__}"
        wrappers = build_dir / "src"
        wrappers.mkdir(parents=True, exist_ok=True)
        sources = [_RECORDER]
        for name in emulation.KERNEL_SOURCES + ("bindings.cpp",):
            # .cu through a .cpp wrapper (torch's builder hands .cu to nvcc); bindings.cpp registers its
            # ops as nvae_fast_emu under NVAE_FAST_EMULATE: renamed here, so both libraries can be loaded.
            text = f"#define nvae_fast_emu {NAMESPACE}\n#include \"{emulation.CSRC / name}\"\n"
            wrapper = wrappers / f"{Path(name).stem}.cpp"
            if not wrapper.is_file() or wrapper.read_text() != text:
                wrapper.write_text(text)
            sources.append(wrapper)
        flags = [f for f in emulation.CFLAGS if f != "-O2"] + ["-O0"]  # host code only: fast to compile
        cpp_extension.load(
            name=NAMESPACE,
            sources=[str(s) for s in sources],
            extra_cflags=flags,
            extra_include_paths=[str(emulation.CSRC)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
        _loaded = True
    return getattr(torch.ops, NAMESPACE)


def launches(op: str, *args, multiprocessors: int = MULTIPROCESSORS) -> list[Launch]:
    """The kernel launches of ``torch.ops.nvae_fast_plan.<op>(*args)``, in order, on a device of
    ``multiprocessors`` SMs (default 132: an H100 SXM / H200)."""
    lib = load()
    lib.take_launches()
    lib.set_multiprocessors(multiprocessors)
    try:
        getattr(lib, op)(*args)
    finally:
        lib.set_multiprocessors(MULTIPROCESSORS)
    out = []
    for line in lib.take_launches().splitlines():
        kernel, grid, block, smem = line.split("|")
        out.append(Launch(kernel, tuple(map(int, grid.split())), tuple(map(int, block.split())), int(smem)))
    return out
