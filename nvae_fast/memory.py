"""Memory accounting: how many bytes a computation keeps alive for its backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SavedMemory", "saved_tensor_bytes"]


@dataclass
class SavedMemory:
    """Bytes saved for backward (each distinct storage counted once) and peak CUDA memory (``None`` on CPU)."""

    saved_bytes: int
    num_tensors: int
    peak_cuda_bytes: int | None
    output: object


def _key(t: torch.Tensor) -> int:
    storage = t.untyped_storage()
    return storage.data_ptr() if storage.data_ptr() else id(storage)


def saved_tensor_bytes(fn, *args, exclude=(), **kwargs) -> SavedMemory:
    """Run ``fn(*args, **kwargs)`` and measure what autograd saves for its backward.

    Every tensor packed by ``torch.autograd.graph.saved_tensors_hooks`` is recorded; tensors sharing a
    storage (views of one buffer, or the same tensor saved twice) count once, by storage size, so inputs
    that are saved count like anything else. Tensors sharing a storage with one in ``exclude`` (e.g. a
    model's parameters, which stay in memory whether or not backward needs them) are not counted.
    On CUDA the peak memory allocated during the call (after a reset of the peak counter) is reported too.
    """
    storages: dict[int, int] = {}
    skip = {_key(t) for t in exclude}
    count = 0

    def pack(t: torch.Tensor):
        nonlocal count
        key = _key(t)
        if key not in skip:
            count += 1
            storages[key] = t.untyped_storage().nbytes()
        return t

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    peak = None
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    return SavedMemory(sum(storages.values()), count, peak, out)
