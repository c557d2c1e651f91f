"""Spectral regularisation of every convolution of a model: sum of the largest singular values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import power_iteration

__all__ = ["SpectralNormRegularizer", "conv_weight"]


def conv_weight(module: nn.Module):
    """The weight a module convolves with, or ``None`` if it is no convolution.

    A module may define ``spectral_weight()`` to return its effective weight (e.g. a weight-normalised
    conv); otherwise every ``nn.Conv1d/2d/3d`` (and transposed conv) contributes its ``weight``.
    """
    if hasattr(module, "spectral_weight"):
        return module.spectral_weight()
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.weight
    return None


class SpectralNormRegularizer(nn.Module):
    """``forward() = sum_i sigma_max(W_i)`` over every conv weight ``W_i`` of ``module`` (each viewed as
    (out, -1)), estimated by :func:`nvae_fast.ops.power_iteration` in one batched call.

    The power-iteration vectors ``u_i`` (out_i,) and ``v_i`` (rest_i,) are buffers ``u{i}``/``v{i}`` (so they
    are in the state dict and a resumed run continues warm; ``i`` follows ``module.named_modules()``
    order). Each call runs ``n_iter`` steps (``init_iter`` on the first call after construction), updating
    them in place. The scanned module is held by reference, not registered as a submodule, so the
    regulariser can itself be an attribute of that module.
    """

    def __init__(self, module: nn.Module, n_iter: int = 1, init_iter: int = 10):
        super().__init__()
        self.n_iter, self.init_iter = n_iter, init_iter
        with torch.no_grad():
            found = [(name, m, conv_weight(m)) for name, m in module.named_modules()]
        found = [(name, m, w) for name, m, w in found if w is not None]
        if not found:
            raise ValueError("SpectralNormRegularizer: module has no convolution weights")
        self._targets = [(name, m) for name, m, _ in found]
        generator = torch.Generator().manual_seed(0)
        for i, (_, _, w) in enumerate(found):
            out, rest = w.shape[0], w.numel() // w.shape[0]
            u = F.normalize(torch.randn(out, generator=generator), dim=0)
            v = F.normalize(torch.randn(rest, generator=generator), dim=0)
            self.register_buffer(f"u{i}", u.to(w.device))
            self.register_buffer(f"v{i}", v.to(w.device))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._warm = False  # steps > 0 once seen; avoids reading the buffer (a GPU sync) on every call
        self._vectors = None  # ([u_i], [v_i]): the buffers, gathered once (again after _apply replaces them)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._vectors = None
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._warm = False  # the loaded step count decides again
        self._vectors = None  # load_state_dict(assign=True) replaces the buffers

    @property
    def names(self) -> list[str]:
        """Qualified names (in the scanned module) of the regularised convolutions, in buffer order."""
        return [name for name, _ in self._targets]

    def sigmas(self) -> torch.Tensor:
        """Run the power iteration and return every sigma_i, a 1-D tensor differentiable w.r.t. the weights."""
        weights = [conv_weight(m) for _, m in self._targets]
        if self._vectors is None:
            n = len(weights)
            self._vectors = ([getattr(self, f"u{i}") for i in range(n)], [getattr(self, f"v{i}") for i in range(n)])
        us, vs = self._vectors
        n_iter = self.n_iter if self._warm or int(self.steps) > 0 else self.init_iter
        self.steps.add_(1)
        self._warm = True
        return power_iteration(weights, us, vs, n_iter)

    def forward(self) -> torch.Tensor:
        return self.sigmas().sum()
