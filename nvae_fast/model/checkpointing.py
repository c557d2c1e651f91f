"""Gradient checkpointing of one module: run its forward so that backward recomputes its activations.

:func:`run_with_recompute` calls ``torch.utils.checkpoint.checkpoint`` in its non-reentrant form. What
stays alive for backward is then only the call's inputs (held for the recompute), the module's
parameters and the RNG state at the call (CPU, and that of the inputs' CUDA device, so a stochastic
forward would be replayed exactly). The tensors the ops inside the forward would save are not kept:
backward runs the forward again when it first needs them. Peak memory is thus one module's
activations during backward instead of all of them. Autocast and grad modes of the
call are replayed by ``checkpoint`` itself; the rest of what the forward depended on is replayed by
:class:`Recompute`, the context the recompute runs in:

* the nvae_fast backend selected at the call (:func:`nvae_fast.backend.get_backend`): backward may run
  outside the ``use_backend`` block of the forward, and another backend would compute (and save)
  different tensors;
* the module's buffers. Running the forward twice would update in-place state twice: a
  training-mode ``nn.BatchNorm2d``, :class:`nvae_fast.nn.BNSwish` or the fused BN-Swish-conv op adds
  the batch statistics to ``running_mean``/``running_var`` and increments ``num_batches_tracked`` on
  every call, and the recompute runs in training mode too. Every buffer is copied when the recompute
  starts and written back when it ends (also when autograd stops it early), so after a step the
  buffers hold exactly one update, whichever kernel wrote it. The recompute starts from buffers that
  already hold this step's update; that does not change its result, since a training-mode BN
  normalises with the batch statistics and only writes the running ones (callers checkpoint only in
  training mode).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import backend

__all__ = ["Recompute", "run_with_recompute"]


class Recompute:
    """Context of a recompute: the backend selected when this object was made, ``module``'s buffers
    restored on exit to their values on entry (see the module doc).

    Each ``with`` takes fresh copies, so a graph kept with ``retain_graph=True`` can be recomputed
    more than once.
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"Recompute: module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.selected = backend.get_backend()
        self._outer_backend = None
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        self._saved = [(b, b.detach().clone()) for b in self.module.buffers()]
        self._outer_backend = backend.get_backend()
        backend.set_backend(self.selected)
        return self

    def __exit__(self, *exc):
        backend.set_backend(self._outer_backend)
        with torch.no_grad():
            for buf, value in self._saved:
                buf.copy_(value)
        self._saved = []
        return False


def run_with_recompute(module: nn.Module, forward, *args):
    """``forward(*args)``, with the activations of ``module`` (which ``forward`` runs) recomputed in backward.

    ``forward`` must change no buffers but ``module``'s (only those are restored after the recompute).
    """
    if not callable(forward):
        raise TypeError(f"run_with_recompute: forward must be callable, got {type(forward).__name__}")
    return checkpoint(
        forward, *args,
        use_reentrant=False,
        preserve_rng_state=True,
        context_fn=lambda: (nullcontext(), Recompute(module)),
    )
