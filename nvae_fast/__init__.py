"""nvae_fast: memory-lean fused kernels and a model for NVAE-style deep hierarchical VAEs.

``import nvae_fast`` gives the functional ops (:mod:`nvae_fast.ops`), drop-in modules
(:mod:`nvae_fast.nn`), :func:`patch` for existing models, and the backend switch.
"""

from . import memory, nn, ops
from .backend import backend_info, get_backend, reset, set_backend, use_backend
from .ops import run_selfchecks
from .nn.patch import patch

__version__ = "0.1.0"

__all__ = [
    "ops",
    "nn",
    "memory",
    "patch",
    "set_backend",
    "get_backend",
    "use_backend",
    "backend_info",
    "run_selfchecks",
    "reset",
    "__version__",
]
