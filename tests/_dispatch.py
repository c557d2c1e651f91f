"""A dispatch mode that records the ATen and custom ops a piece of code runs (for the tests that an op
runs only its kernels and allocations)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class RecordedOps(TorchDispatchMode):
    """``with RecordedOps() as mode: ...`` leaves in ``mode.funcs`` every op dispatched inside, in order
    (``torch._ops.OpOverload``), and in ``mode.ops`` their names (``str(func)``, e.g. ``aten.add.Tensor``)."""

    def __init__(self):
        super().__init__()
        self.funcs = []

    @property
    def ops(self) -> list[str]:
        return [str(f) for f in self.funcs]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))
