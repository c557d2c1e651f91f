"""Kernel sets of the ``cuda`` backend: python glue over the CUDA C++ extension ``nvae_fast._C``.

``nvae_fast.cuda.<op>`` implements the kernel-set contract written in the docstring of
``nvae_fast.ops.<op>`` by calling custom ops ``torch.ops.nvae_fast.*``. The ops are defined and
implemented in C++ (``csrc/``, registered with ``torch.library`` for CUDA tensors); each module hands
their fake (meta) implementations to ``_library.register_fakes``, so ``torch.compile`` traces models that
use them without graph breaks. :mod:`nvae_fast.cuda.emulation` builds the same kernels for CPU tensors,
to test them without a GPU. The op's single ``autograd.Function`` composes these
primitive ops; none of them needs autograd itself.

Inputs: float16/bfloat16/float32/float64 (float32 accumulation, float64 for float64), NCHW or
channels_last natively; activations in any other memory layout are copied to contiguous NCHW first.

Importing this package never initialises CUDA and works without the extension (then
:func:`available` is false and the kernel-set functions raise ``RuntimeError``).
"""

from . import bn_swish, depthwise_conv2d, power_iteration, squeeze_excite
from ._library import OPS, available, missing

__all__ = ["OPS", "available", "missing", "bn_swish", "depthwise_conv2d", "squeeze_excite", "power_iteration"]
