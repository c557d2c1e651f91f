"""Launches and global-memory traffic of the Triton kernels, counted in Triton's CPU interpreter.

Needs ``TRITON_INTERPRET=1`` (set before ``triton.jit`` decorates the kernels). Inside :func:`counting`
two methods of the interpreter are wrapped, both with the same meaning in triton 3.6 to 3.9 (checked in
their sources; the wrappers pass every argument through, whatever the version's signature):

``InterpretedFunction.run(*args, grid=, warmup=, **kwargs)``
    one launch (``kernel[grid](...)`` calls it): recorded with the kernel's name and its constexpr
    arguments (and ``num_warps``); with ``plan_only=True`` it returns without running the programs.
``InterpreterBuilder.create_masked_load(ptrs, mask, ...)`` / ``create_masked_store(ptrs, value, mask, ...)``
    every ``tl.load`` / ``tl.store`` of a pointer tensor (the unmasked ``create_load`` / ``create_store``
    delegate to them): the active elements of the mask are the accesses, each of the loaded (stored)
    array's element size, at the addresses in ``ptrs``.

Per launch, ``read``/``written`` count each byte once (distinct addresses) and ``*_requested`` every
access. Block pointers, tensor descriptors and atomics use other builder methods: they are wrapped too,
only to mark the launch uncounted (bytes ``None``), since their accesses are not sized here.
:func:`in_launch` tells whether a launch is running, so that the ATen ops the interpreter itself runs
(copying arguments to and from its host view) can be told apart from the host code's.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import numpy as np

from .kernel_launch import Launch

# Builder methods that access memory in ways the counter does not size.
UNSIZED = (
    "create_tensor_pointer_load", "create_tensor_pointer_store", "create_descriptor_load",
    "create_descriptor_store", "create_descriptor_gather", "create_descriptor_scatter", "create_atomic_rmw",
    "create_atomic_cas",
)
_DEDUP_AT = 1 << 22  # addresses kept per direction before they are reduced to distinct ones


@dataclass
class _Direction:
    """Accesses of one direction (read or written) of a launch, by element size."""

    requested: int = 0
    addresses: dict[int, list[np.ndarray]] = field(default_factory=dict)
    pending: int = 0

    def add(self, ptrs: np.ndarray, mask, itemsize: int) -> None:
        active = ptrs if mask is None else ptrs[np.broadcast_to(mask, ptrs.shape)]
        self.requested += active.size * itemsize
        held = self.addresses.setdefault(itemsize, [])
        held.append(active.ravel().astype(np.uint64, copy=False))
        self.pending += active.size
        if self.pending > _DEDUP_AT:
            for size, arrays in self.addresses.items():
                self.addresses[size] = [np.unique(np.concatenate(arrays))]
            self.pending = 0

    def distinct(self) -> int:
        return sum(np.unique(np.concatenate(a)).size * size for size, a in self.addresses.items() if a)


@dataclass
class _Open:
    kernel: str
    read: _Direction = field(default_factory=_Direction)
    written: _Direction = field(default_factory=_Direction)
    unsized: str | None = None

    def close(self, ran: bool) -> Launch:
        if not ran or self.unsized is not None:
            return Launch(self.kernel)
        return Launch(self.kernel, self.read.distinct(), self.written.distinct(), self.read.requested,
                      self.written.requested)


_current: list[_Open] = []  # the launch that runs (at most one: the interpreter runs launches in turn)


def in_launch() -> bool:
    """True while the interpreter runs a kernel launch inside :func:`counting`."""
    return bool(_current)


def _is_constexpr(annotation) -> bool:
    import triton.language as tl

    return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.split(".")[-1] == "constexpr")


def variant(fn, args, kwargs) -> str:
    """``name[CONST=value, ..., num_warps=w]`` of a launch of the interpreted kernel ``fn``."""
    params = inspect.signature(fn.fn).parameters
    bound = inspect.signature(fn.fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params})
    consts = [f"{name}={bound.arguments[name]}" for name, p in params.items()
              if _is_constexpr(p.annotation) and name in bound.arguments]
    if "num_warps" in kwargs:
        consts.append(f"num_warps={kwargs['num_warps']}")
    return f"{fn.__name__}[{', '.join(consts)}]"


@contextlib.contextmanager
def counting(plan_only: bool = False):
    """Record the Triton launches of the enclosed code: yields a list of
    :class:`~benchmarks.kernel_launch.Launch`, filled as launches end."""
    from triton.runtime import interpreter

    launches: list[Launch] = []
    builder, function = interpreter.InterpreterBuilder, interpreter.InterpretedFunction
    saved = {(cls, name): cls.__dict__[name] for cls, names in (
        (function, ("run",)),
        (builder, ("create_masked_load", "create_masked_store") + tuple(n for n in UNSIZED if n in builder.__dict__)),
    ) for name in names}

    def run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return saved[(function, "run")](self, *args, grid=grid, warmup=warmup, **kwargs)
        _current.append(_Open(variant(self, args, kwargs)))
        try:
            if not plan_only:
                return saved[(function, "run")](self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            launches.append(_current.pop().close(ran=not plan_only))

    def load(self, ptrs, mask, *rest, **kwargs):
        out = saved[(builder, "create_masked_load")](self, ptrs, mask, *rest, **kwargs)
        if _current:
            _current[-1].read.add(ptrs.data, None if mask is None else mask.data, out.data.dtype.itemsize)
        return out

    def store(self, ptrs, value, mask, *rest, **kwargs):
        if _current:
            _current[-1].written.add(ptrs.data, None if mask is None else mask.data, value.data.dtype.itemsize)
        return saved[(builder, "create_masked_store")](self, ptrs, value, mask, *rest, **kwargs)

    def unsized(name):
        def method(self, *args, **kwargs):
            if _current:
                _current[-1].unsized = name
            return saved[(builder, name)](self, *args, **kwargs)

        return method

    wrappers = {"run": run, "create_masked_load": load, "create_masked_store": store}
    for cls, name in saved:
        setattr(cls, name, wrappers.get(name) or unsized(name))
    try:
        yield launches
    finally:
        for (cls, name), original in saved.items():
            setattr(cls, name, original)
