"""Build script for nvae_fast.

The Triton kernels in ``kernels/`` ship as the subpackage ``nvae_fast.kernels``.
The CUDA C++ extension ``nvae_fast._C`` is built from ``csrc/`` when torch has CUDA
and a CUDA toolkit is found. Environment overrides:

- ``NVAE_FAST_BUILD_CUDA=1`` forces the extension (the build fails loudly if it cannot),
  ``NVAE_FAST_BUILD_CUDA=0`` skips it.
- ``TORCH_CUDA_ARCH_LIST`` picks the architectures (default ``8.0;9.0+PTX``).
- ``CUDA_HOME`` (or ``CUDA_PATH``) points at the toolkit; otherwise the ``nvcc`` on ``PATH`` says where it
  is, else ``/usr/local/cuda`` when it exists.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    flag = os.environ.get("NVAE_FAST_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        return False, "NVAE_FAST_BUILD_CUDA=0"
    import torch

    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU build"
    elif not _cuda_home():
        reason = "no CUDA toolkit found (set CUDA_HOME)"
    elif not glob.glob(os.path.join(ROOT, "csrc", "*.cu")):
        reason = "no CUDA sources in csrc/"
    else:
        return True, ""
    if flag in ("1", "true", "yes", "on"):
        sys.exit(f"NVAE_FAST_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    return False, reason


def _cuda_home():
    """The CUDA toolkit's root: ``CUDA_HOME``, ``CUDA_PATH``, the folder above the ``nvcc`` on ``PATH``
    (when it holds ``include/cuda_runtime.h``), or ``/usr/local/cuda``; exported as ``CUDA_HOME`` for
    torch's extension builder."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = shutil.which("nvcc")
        # (an nvcc on PATH may be a wrapper script elsewhere: its folder counts only if it holds the headers)
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else ""
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            home = root
        elif os.path.exists("/usr/local/cuda/bin/nvcc"):
            home = "/usr/local/cuda"
    if home:
        os.environ["CUDA_HOME"] = home
    return home


def _extensions():
    ok, reason = _want_cuda()
    if not ok:
        print(f"nvae_fast: skipping the CUDA extension: {reason}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    include_dirs = [os.path.join(ROOT, "csrc")]
    # pip's CUDA 13 wheels keep CCCL/cuda headers here; nvcc needs them next to torch's.
    import site

    for base in site.getsitepackages() + [site.getusersitepackages()]:
        cu13 = os.path.join(base, "nvidia", "cu13", "include")
        if os.path.isdir(cu13):
            include_dirs.append(cu13)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    ext = CUDAExtension(
        name="nvae_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        # No -std flag: torch's BuildExtension adds the C++ standard its headers need (C++20 for
        # torch 2.14); the sources compile as C++17 and C++20.
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="nvae_fast",
    version="0.1.0",
    description="Memory-lean fused kernels (Triton and CUDA) and a model for NVAE-style hierarchical VAEs",
    packages=find_packages(include=["nvae_fast", "nvae_fast.*"]) + ["nvae_fast.kernels"],
    package_dir={"nvae_fast.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.11,<2.15", "numpy"],
    extras_require={"triton": ["triton>=3.6,<3.10"]},
    entry_points={"console_scripts": ["nvae-fast=nvae_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
