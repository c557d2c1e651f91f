"""Loading of the extension ``nvae_fast._C`` and the layout helpers shared by the kernel sets.

Importing this module tries ``import nvae_fast._C``, which registers the custom ops
``torch.ops.nvae_fast.*`` (see ``csrc/bindings.cpp``). It never initialises CUDA. When the extension is
missing, the kernel-set functions raise ``RuntimeError`` with the import error, and ``supports`` reports
it as the reason to fall back. Under ``NVAE_FAST_CUDA_EMULATE=1`` (:mod:`nvae_fast.cuda.emulation`) the
kernel sets call the CPU build of the same kernels, ``torch.ops.nvae_fast_emu.*``, instead.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import backend
from . import emulation

#: Every custom op the extension registers, by kernel set.
OPS: dict[str, tuple[str, ...]] = {
    "bn_swish": ("bn_swish_stats", "bn_swish_normalize", "bn_swish_backward_reduce", "bn_swish_backward_dx"),
    "depthwise_conv2d": ("dwconv2d_forward", "dwconv2d_backward_input", "dwconv2d_backward_weight"),
    "squeeze_excite": ("se_pool", "se_scale", "se_backward_reduce", "se_backward_dx"),
    "power_iteration": ("power_iteration_update", "power_iteration_sigmas"),
}

try:
    from .. import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as exc:
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


#: The fake (meta) implementation of every custom op, by op name: filled by the kernel-set modules.
FAKES: dict[str, Callable] = {}
_registered: set[str] = set()


def register_fakes(fakes: dict[str, Callable]) -> None:
    """Add ``fakes`` (op name -> fake implementation) to :data:`FAKES` and register them for every loaded
    namespace of the ops (:func:`register_loaded_fakes`)."""
    FAKES.update(fakes)
    register_loaded_fakes()


def register_loaded_fakes() -> None:
    """Register :data:`FAKES` with ``torch.library`` for ``torch.ops.nvae_fast`` (when the extension is
    loaded) and ``torch.ops.nvae_fast_emu`` (when the emulation is), each op once."""
    namespaces = ["nvae_fast"] if _IMPORT_ERROR is None else []
    if emulation.loaded():
        namespaces.append(emulation.NAMESPACE)
    for namespace in namespaces:
        for name, fake in FAKES.items():
            qualname = f"{namespace}::{name}"
            if qualname not in _registered:
                torch.library.register_fake(qualname, fake)
                _registered.add(qualname)


def available() -> bool:
    """True when ``nvae_fast._C`` was imported and ``torch.ops.nvae_fast.*`` exist."""
    return _IMPORT_ERROR is None


def missing() -> str | None:
    """Why the CUDA kernels cannot run at all (``None`` when the extension or the emulation is loaded)."""
    if _IMPORT_ERROR is None or backend.cuda_emulated():
        return None
    return f"the extension nvae_fast._C is not built ({_IMPORT_ERROR})"


def ops():
    """The namespace ``torch.ops.nvae_fast`` (``torch.ops.nvae_fast_emu`` under the emulation);
    ``RuntimeError`` when the extension is not built."""
    if backend.cuda_emulated():
        return emulation.ops()
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"nvae_fast.cuda: {missing()}")
    return torch.ops.nvae_fast


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels use for a dense 4-D ``x``: NCHW when contiguous, else channels_last.

    Mirrors ``layout_of`` in ``csrc/checks.h``; the fake implementations use it to predict strides.
    """
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when it is NCHW- or channels_last-contiguous, else a contiguous (NCHW) copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype and memory format of the dense tensor ``x`` (a copy only when needed)."""
    return t.to(x.dtype).contiguous(memory_format=memory_format(x))


def per_channel(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A small parameter/statistics tensor as a contiguous tensor of ``dtype``."""
    return t.to(dtype).contiguous()
