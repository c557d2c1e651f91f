"""Kernel-level tests call the Triton kernel sets directly on CPU tensors in Triton's interpreter, with
tiling plans that force multi-tile and multi-program reductions on small shapes. On a machine with a GPU
the interpreter is off, so they are skipped there (and where the interpreter cannot run, with the reason
that :func:`nvae_fast.backend_info` gives); the op suite (tests/ops) runs the same kernels on the
GPU against the reference, and the ahead-of-time compile test runs everywhere.
"""

import pytest
import torch

import nvae_fast


def pytest_collection_modifyitems(config, items):
    triton = nvae_fast.backend_info()["backends"]["triton"]
    if torch.cuda.is_available():
        skip = pytest.mark.skip(reason="interpreter-only kernel test; tests/ops covers the kernels on the GPU")
    elif not triton["available"]:
        skip = pytest.mark.skip(reason=f"the Triton interpreter is unavailable: {triton['reason']}")
    else:
        return
    for item in items:
        if "tests/kernels/" in str(item.fspath) and "test_aot_compile" not in str(item.fspath):
            item.add_marker(skip)
