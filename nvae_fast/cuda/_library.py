"""Loading of the extension ``nvae_fast._C``, the namespace the kernel sets call, and the layout helpers
they share.

Importing this module tries ``import nvae_fast._C``, which registers the custom ops
``torch.ops.nvae_fast.*`` (see ``csrc/bindings.cpp``). It never initialises CUDA. The kernel sets call
the ops through :func:`ops`, by default in the extension's namespace; when the extension is missing,
:func:`ops` raises ``RuntimeError`` with the import error and :func:`missing` returns it as a reason. The
backend, which alone knows whether ``NVAE_FAST_CUDA_EMULATE=1`` asks for the CPU emulation
(:mod:`nvae_fast.cuda.emulation`), points the kernel sets at the emulation's copy of the ops,
``torch.ops.nvae_fast_emu.*``, with :func:`use_namespace`; this package never imports the backend.
"""

from __future__ import annotations

from typing import Callable

import torch

#: The namespace of the extension's ops, ``torch.ops.nvae_fast``.
EXTENSION = "nvae_fast"

#: Every custom op the extension registers, by kernel set.
OPS: dict[str, tuple[str, ...]] = {
    "bn_swish": (
        "bn_swish_stats",
        "bn_swish_normalize",
        "bn_swish_backward_reduce",
        "bn_swish_backward_dx",
        "bn_swish_train_forward",
        "bn_swish_backward",
    ),
    "depthwise_conv2d": ("dwconv2d_forward", "dwconv2d_backward_input", "dwconv2d_backward_weight"),
    "squeeze_excite": ("se_plan", "se_forward", "se_backward"),
    "power_iteration": (
        "power_iteration_update", "power_iteration_sigmas", "power_iteration_forward",
        "power_iteration_backward_packed", "power_iteration_backward", "power_iteration_layout",
        "power_iteration_plan",
    ),
}
#: The ops of :data:`OPS` that the extension defines in terms of the others (CompositeImplicitAutograd):
#: tracing decomposes them, so they have no fake implementation.
COMPOSITES = ("power_iteration_backward",)



def _load_extension() -> ImportError | None:
    """Import ``nvae_fast._C`` (which registers its ops); why it cannot serve, or ``None``. An extension
    built from older sources lacks ops that the kernel sets call: it counts as not built."""
    try:
        from .. import _C  # noqa: F401
    except ImportError as exc:
        return exc
    lacking = [name for names in OPS.values() for name in names if not hasattr(torch.ops.nvae_fast, name)]
    if lacking:
        return ImportError(f"it was built from older sources and lacks {', '.join(lacking)}; rebuild it")
    return None


_IMPORT_ERROR: ImportError | None = _load_extension()


#: The fake (meta) implementation of every custom op, by op name: filled by the kernel-set modules.
FAKES: dict[str, Callable] = {}
# Namespaces whose ops get the fakes (the extension's when it loaded, and each one use_namespace chose),
# and the qualified op names registered so far.
_fake_namespaces: list[str] = [EXTENSION] if _IMPORT_ERROR is None else []
_registered: set[str] = set()
# The namespace that ops() returns; the backend chooses it at every reset.
_namespace = EXTENSION


def register_fakes(fakes: dict[str, Callable]) -> None:
    """Add ``fakes`` (op name -> fake implementation) to :data:`FAKES` and register them with
    ``torch.library`` for every namespace that holds the ops, each op once."""
    FAKES.update(fakes)
    _register_fakes()


def _register_fakes() -> None:
    for namespace in _fake_namespaces:
        for name, fake in FAKES.items():
            qualname = f"{namespace}::{name}"
            if qualname not in _registered:
                torch.library.register_fake(qualname, fake)
                _registered.add(qualname)


def use_namespace(namespace: str) -> None:
    """Make the kernel sets call ``torch.ops.<namespace>``: :data:`EXTENSION`, or a loaded library that
    defines the same ops (the emulation's), whose ops then get the fakes too (so that ``torch.compile``
    and ``torch.library.opcheck`` can trace them)."""
    global _namespace
    if namespace != EXTENSION and namespace not in _fake_namespaces:
        _fake_namespaces.append(namespace)
        _register_fakes()
    _namespace = namespace


def available() -> bool:
    """True when ``nvae_fast._C`` was imported and ``torch.ops.nvae_fast.*`` exist."""
    return _IMPORT_ERROR is None


def missing() -> str | None:
    """Why the kernel sets cannot call their ops at all: the extension's import error while they call the
    extension's namespace, else ``None``."""
    if _IMPORT_ERROR is None or _namespace != EXTENSION:
        return None
    return f"the extension nvae_fast._C is not built ({_IMPORT_ERROR})"


def ops():
    """The namespace the kernel sets call, ``torch.ops.nvae_fast`` unless :func:`use_namespace` chose
    another; ``RuntimeError`` when that is the extension's and it is not built."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(f"nvae_fast.cuda: {reason}")
    return getattr(torch.ops, _namespace)


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
