"""What an op's host code does besides launching its own kernels: ATen ops and host synchronisations.

:func:`counting` yields a :class:`HostWork` that counts, while the enclosed code runs:

``aten_ops``
    ATen ops that do device work outside the op's own kernels, seen by a ``TorchDispatchMode`` (below
    autograd, so the op's Python glue, its backward and the autograd engine's own ops are all seen). An
    op counts when it writes memory: it mutates an argument (in-place and ``out=`` ops), or returns a
    tensor that shares no storage with its inputs. Not counted: the op's own kernels (custom ops of the
    ``nvae_fast_emu`` / ``nvae_fast`` namespaces; the ATen ops their C++ host code runs are seen, by
    entering the mode again below them), allocations (``empty*``, ``new_empty*``: no kernel, no traffic),
    views and no-op conversions (results that alias an input: ``view``, ``reshape`` of a contiguous
    tensor, ``to``/``contiguous`` that return their input), in-place metadata ops (``set_``, ``resize_``,
    ops tagged ``inplace_view``), and whatever runs inside a Triton launch of the interpreter (its copies
    of the arguments, :func:`benchmarks.triton_traffic.in_launch`). A composite op is counted once, as
    called (its decomposition runs below the mode).
``host_syncs``
    device-to-host transfers and synchronisations: ``aten._local_scalar_dense`` (``.item()``, ``int()``,
    ``float()``, ``bool()`` of a tensor), ops whose output size depends on the data (``nonzero``,
    ``masked_select``, ``unique``), ``aten.equal``, and calls of ``Tensor.tolist``, ``Tensor.numpy``,
    ``Tensor.cpu`` and ``Tensor.to`` with a CPU device, patched on ``torch.Tensor`` for the duration (on
    the CPU every tensor stands for a device tensor, so every such call counts).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from . import triton_traffic

OWN_KERNELS = ("nvae_fast_emu", "nvae_fast")  # namespaces of the ops' own (CUDA / emulated) kernels
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided"}
METADATA = {"set_", "resize_", "resize_as_", "lift_fresh"}
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
            "unique_consecutive", "equal"}
SYNC_METHODS = ("tolist", "numpy", "cpu")


@dataclass
class HostWork:
    aten_ops: Counter = field(default_factory=Counter)  # op name -> calls
    host_syncs: Counter = field(default_factory=Counter)  # op or method name -> calls


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel() > 0}


def writes_memory(func, args, kwargs, out) -> bool:
    """True when ``func`` (called with ``args``, ``kwargs``, returning ``out``) does device work by the
    rule of the module doc."""
    name = func.overloadpacket.__name__
    if name in ALLOCATIONS or name in METADATA or torch.Tag.inplace_view in func.tags:
        return False
    if any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments):
        return True
    inputs = _storages(t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
    outputs = _storages(t for t in tree_leaves(out) if isinstance(t, torch.Tensor))
    return bool(outputs - inputs)


class _Mode(TorchDispatchMode):
    def __init__(self, work: HostWork):
        super().__init__()
        self.work = work

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if triton_traffic.in_launch():
            return func(*args, **kwargs)
        if func.namespace in OWN_KERNELS:
            with self:  # the ATen ops of the kernel's C++ host code are the op's host work too
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.work.host_syncs[f"aten.{name}"] += 1
        out = func(*args, **kwargs)
        if writes_memory(func, args, kwargs, out):
            self.work.aten_ops[f"aten.{name}"] += 1
        return out


def _to_host(args, kwargs) -> bool:
    targets = list(args) + [kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets)


@contextlib.contextmanager
def counting():
    """Count the enclosed code's host work (see module doc): yields a :class:`HostWork`."""
    work = HostWork()
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS + ("to",)}

    def counted(name):
        def method(self, *args, **kwargs):
            if not triton_traffic.in_launch() and (name != "to" or _to_host(args, kwargs)):
                work.host_syncs[f"Tensor.{name}"] += 1
            return saved[name](self, *args, **kwargs)

        return method

    for name in saved:
        setattr(torch.Tensor, name, counted(name))
    try:
        with _Mode(work):
            yield work
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
