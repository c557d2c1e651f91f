"""Backend selection for the nvae_fast ops.

Every op in :mod:`nvae_fast.ops` has one public function and one ``torch.autograd.Function``.
The function checks its inputs, then asks :func:`resolve` which backend runs it, handing it the op's
:class:`Op` (its name, its ``torch`` kernel set and its self-check):

``reference``
    the plain, unfused PyTorch composition (``F.silu(F.batch_norm(...))`` etc.); it defines the
    semantics and is the baseline the others are tested against.
``torch``
    the memory-lean ``autograd.Function`` whose kernels are ATen ops (any device).
``triton``
    the same ``autograd.Function`` with the Triton kernels of ``nvae_fast.kernels.<op>``. Runs on CUDA
    tensors, and on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``).
``cuda``
    the same ``autograd.Function`` with the CUDA C++ kernels of the extension ``nvae_fast._C``
    (``nvae_fast.cuda.<op>``). Runs on CUDA tensors, and on CPU tensors only under the CPU emulation of
    those kernels (``NVAE_FAST_CUDA_EMULATE=1``, :mod:`nvae_fast.cuda.emulation`; then on CPU tensors
    only).
``auto`` (default)
    per op and device: the fastest available backend by the committed benchmarks (:data:`AUTO_ORDER`)
    for CUDA tensors, ``torch`` for anything else. A fused backend is used only once it has passed its
    self-check for the op, device and dtype family (:mod:`nvae_fast.selfcheck`: small probes, forward and
    backward, against ``torch``; run on first use, once per process); one that fails it is skipped for
    the next in the order or ``torch``, with one warning and a record in :func:`backend_info`.
    ``NVAE_FAST_SELFCHECK=0`` turns the self-check off. Inside ``torch.compile`` tracing or CUDA-graph
    capture no probe can run: an op not yet checked there runs on ``torch``
    (:func:`nvae_fast.run_selfchecks` checks ahead of time).

Kernel sets
-----------
A lean backend provides, for each op, a *kernel set*: a module (or class) that implements the op's
contract, the ``typing.Protocol`` next to its reference in ``nvae_fast/ops/<op>.py`` (e.g.
:class:`nvae_fast.ops.bn_swish.BNSwishKernels`), including ``supports(...) -> str | None``, which
returns why inputs that passed the op's argument checks are still beyond the kernels (``None`` if they
are not). Unsupported inputs fall back to the ``torch`` kernel set, with one logged warning per (backend,
op, reason) and a record in :func:`backend_info`; nothing falls back silently. The kernel sets of a
backend are the modules ``nvae_fast.kernels.<op>`` (``triton``) and ``nvae_fast.cuda.<op>`` (``cuda``).

Dependencies point one way: the ops import this module and :mod:`nvae_fast.selfcheck`; this module
imports the kernel sets by name; the kernel sets import neither.

Choose a backend with :func:`set_backend`, the context manager :func:`use_backend`, or the environment
variable ``NVAE_FAST_BACKEND`` (read at import and by :func:`reset`, like ``TRITON_INTERPRET`` and
``NVAE_FAST_CUDA_EMULATE``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = [
    "BACKENDS",
    "AUTO_ORDER",
    "set_backend",
    "get_backend",
    "use_backend",
    "backend_info",
    "reset",
    "resolve",
    "cuda_emulated",
    "run_selfchecks",
    "Op",
    "dtype_family",
]

log = logging.getLogger("nvae_fast")

BACKENDS = ("reference", "torch", "triton", "cuda")
_CHOICES = BACKENDS + ("auto",)
OPS = ("bn_swish", "depthwise_conv2d", "squeeze_excite", "power_iteration")

# Device types on which ``auto`` considers the fused backends (tests add "cpu" to self-check the
# interpreter and the emulation through it).
FUSED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)

# Order in which ``auto`` tries the fused backends for CUDA tensors, per op, as the GPU benchmark
# results under benchmarks/results/ decide (benchmarks/auto_order.py): on an H200, cuda was faster than
# triton for every op (benchmarks/results/2026-12-04-nvidia-h200).
AUTO_ORDER: dict[str, tuple[str, ...]] = {op: ("cuda", "triton") for op in OPS}


@dataclass(frozen=True)
class Op:
    """An op as :func:`resolve` sees it.

    ``name`` is the op's name, which is also the module name of its kernel set in every lean backend;
    ``torch_kernels`` its ATen kernel set; ``selfcheck(backend, device, dtype)`` runs the op's probes
    under ``backend`` and ``torch`` and returns a verdict with ``passed``, ``why`` and ``seconds``
    (:func:`nvae_fast.selfcheck.run`).
    """

    name: str
    torch_kernels: Any
    selfcheck: Callable[[str, torch.device, torch.dtype], Any]


def dtype_family(dtype: torch.dtype) -> str:
    """The dtypes that share kernel plans, and so one self-check: ``half`` (float16, bfloat16),
    ``float32``, ``float64``."""
    return "half" if dtype in (torch.float16, torch.bfloat16) else str(dtype).replace("torch.", "")


class _State:
    """Process-wide selection, what the last probe found, and the record of fallbacks.

    :func:`reset` restores it. The probe (imports of triton, of the kernel modules and of the extension)
    runs once, eagerly, so that :func:`resolve` only reads dictionaries and ``torch.compile`` can trace it.
    """

    def __init__(self) -> None:
        self.selected = "auto"
        self.fallbacks: dict[tuple[str, str, str], int] = {}
        self.status: dict[str, tuple[bool, str]] = {}
        self.kernels: dict[tuple[str, str], Any] = {}
        self.interpreting = False
        self.cuda_emulated = False
        self.selfcheck_on = True
        # (op, backend, device, dtype family) -> nvae_fast.selfcheck.Result
        self.selfchecks: dict[tuple[str, str, str, str], Any] = {}

    def clear(self) -> None:
        from .cuda import emulation

        self.selected = _env_choice()
        self.fallbacks.clear()
        self.selfchecks = {}
        self.selfcheck_on = os.environ.get("NVAE_FAST_SELFCHECK", "1").strip() not in ("0", "false", "no", "off")
        self.interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        self.cuda_emulated = emulation.requested()
        self.status = {"reference": (True, ""), "torch": (True, "")}
        self.kernels = {}
        for name, package, probe in (
            ("triton", "nvae_fast.kernels", self._probe_triton),
            ("cuda", "nvae_fast.cuda", self._probe_cuda),
        ):
            self.status[name] = probe()
            if self.status[name][0]:
                self._load_kernel_sets(name, package)

    def _probe_triton(self) -> tuple[bool, str]:
        try:
            import triton
        except Exception as exc:  # ImportError, or a broken triton install
            return False, f"triton cannot be imported: {exc}"
        if self.interpreting:
            import numpy

            if _minor_version(triton.__version__) < (3, 7) and _minor_version(numpy.__version__) >= (2, 4):
                return False, (
                    f"the interpreter of triton {triton.__version__} fails under numpy {numpy.__version__} (it "
                    "converts 1-element arrays with int(), which numpy 2.4 refuses; fixed in triton 3.7): "
                    "install numpy<2.4 or triton>=3.7"
                )
            return True, ""
        if torch.cuda.is_available():
            return True, ""
        return False, "no CUDA device, and TRITON_INTERPRET=1 is not set"

    def _probe_cuda(self) -> tuple[bool, str]:
        # The kernel sets call the extension's ops, or the emulation's once it is loaded.
        from .cuda import _library, emulation

        _library.use_namespace(_library.EXTENSION)
        if self.cuda_emulated:
            try:
                emulation.load()
            except Exception as exc:  # no source checkout, or a compile error
                return False, f"NVAE_FAST_CUDA_EMULATE=1, but the CPU emulation cannot be built: {exc}"
            _library.use_namespace(emulation.NAMESPACE)
            return True, ""
        try:
            importlib.import_module("nvae_fast._C")
        except ImportError as exc:
            return False, f"the extension nvae_fast._C is not built ({exc})"
        if not torch.cuda.is_available():
            return False, "nvae_fast._C is built, but torch sees no CUDA device"
        return True, ""

    def _load_kernel_sets(self, name: str, package: str) -> None:
        try:
            for op in OPS:
                self.kernels[(op, name)] = importlib.import_module(f"{package}.{op}")
        except Exception as exc:  # a kernel module that does not import makes the backend unavailable
            self.status[name] = (False, f"{package}.{op} cannot be imported: {exc}")


def _minor_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"3.6.0"`` or ``"2.4.0rc1"``."""
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _env_choice() -> str:
    name = os.environ.get("NVAE_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in _CHOICES:
        raise ValueError(f"NVAE_FAST_BACKEND={name!r} is not one of {_CHOICES}")
    return name


_state = _State()


def cuda_emulated() -> bool:
    """True when the ``cuda`` backend runs the CPU emulation of its kernels (``NVAE_FAST_CUDA_EMULATE``
    as read by the last :func:`reset`)."""
    return _state.cuda_emulated


def _status(name: str) -> tuple[bool, str]:
    if name not in _state.status:
        raise ValueError(f"unknown backend {name!r}; choose one of {_CHOICES}")
    return _state.status[name]


def set_backend(name: str) -> None:
    """Select the backend for all ops: one of ``reference``, ``torch``, ``triton``, ``cuda``, ``auto``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` (with the reason) for a backend that is
    not available in this process.
    """
    name = str(name).strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {_CHOICES}")
    if name != "auto":
        ok, why = _status(name)
        if not ok:
            raise RuntimeError(f"backend {name!r} is unavailable: {why}")
    _state.selected = name


def get_backend() -> str:
    """The selected backend name (possibly ``auto``)."""
    return _state.selected


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed code with backend ``name``, then restore the previous one."""
    previous = _state.selected
    set_backend(name)
    try:
        yield
    finally:
        _state.selected = previous


def reset() -> None:
    """Restore the selection from ``NVAE_FAST_BACKEND`` (default ``auto``), forget recorded fallbacks,
    and probe again which backends are available (``TRITON_INTERPRET`` is read here too)."""
    _state.clear()


def backend_info() -> dict[str, Any]:
    """What is selected, what is available (and why not), and every fallback taken so far."""
    backends = {}
    for name in BACKENDS:
        ok, why = _status(name)
        backends[name] = {"available": ok, "reason": why}
    return {
        "selected": _state.selected,
        "backends": backends,
        "auto_order": {op: list(order) for op, order in AUTO_ORDER.items()},
        "fallbacks": [
            {"backend": b, "op": op, "reason": reason, "count": n}
            for (b, op, reason), n in sorted(_state.fallbacks.items())
        ],
        "selfcheck": _state.selfcheck_on,
        "selfchecks": [
            {"op": op, "backend": b, "device": dev, "dtypes": fam, "passed": r.passed, "why": r.why,
             "seconds": round(r.seconds, 4)}
            for (op, b, dev, fam), r in sorted(_state.selfchecks.items())
        ],
        "cuda_emulated": _state.cuda_emulated,
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _record_fallback(backend: str, op: str, reason: str) -> None:
    key = (backend, op, reason)
    if key not in _state.fallbacks:
        log.warning("nvae_fast: %s backend falls back to 'torch' for %s: %s", backend, op, reason)
    _state.fallbacks[key] = _state.fallbacks.get(key, 0) + 1


def _runs_on(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` is available and runs tensors on ``device``."""
    if not _status(name)[0]:
        return False
    if device.type == "cuda":
        return not (name == "cuda" and _state.cuda_emulated)
    return _state.interpreting if name == "triton" else _state.cuda_emulated


def _dtype_of(args) -> torch.dtype:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.dtype
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0].dtype
    return torch.float32


def _passed_selfcheck(op: Op, name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """The self-check's verdict for (op, backend, device, dtype family), running it on first use."""
    if not _state.selfcheck_on:
        return True
    key = (op.name, name, str(device), dtype_family(dtype))
    result = _state.selfchecks.get(key)
    if result is None:
        capturing = device.type == "cuda" and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()
        if torch.compiler.is_compiling() or capturing:
            return False  # no probe can run here: torch for this trace or capture (see the module doc)
        result = _state.selfchecks[key] = op.selfcheck(name, device, dtype)
        if not result.passed:
            message = (f"nvae_fast: {name} backend failed its self-check for {op.name} on {device} "
                       f"({key[3]}): {result.why}; auto uses the next backend instead")
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)
    return result.passed


def run_selfchecks(ops, device: torch.device | str | None = None, dtypes=(torch.float32,)) -> list[dict]:
    """Run ``auto``'s self-checks now, for each :class:`Op` of ``ops`` and every fused backend that runs
    on ``device`` (default: the current CUDA device) in ``dtypes``; returns :func:`backend_info`'s
    ``selfchecks``. :func:`nvae_fast.run_selfchecks` calls it with every op."""
    device = torch.device(device if device is not None else "cuda")
    for op in ops:
        for name in AUTO_ORDER[op.name]:
            if _runs_on(name, device):
                for dtype in dtypes:
                    _passed_selfcheck(op, name, device, dtype)
    return backend_info()["selfchecks"]


def _auto(op: Op, device: torch.device, dtype: torch.dtype) -> str:
    if device.type in FUSED_DEVICE_TYPES:
        for name in AUTO_ORDER[op.name]:
            if _runs_on(name, device) and _passed_selfcheck(op, name, device, dtype):
                return name
    return "torch"


def resolve(op: Op, device: torch.device, *support_args):
    """Pick the backend for one call of ``op`` on tensors living on ``device``.

    Returns ``(name, kernels)``: ``name`` is ``"reference"`` (``kernels`` is then ``None``) or the name of
    the backend whose kernel set ``kernels`` runs the call (``op.torch_kernels`` for ``torch``).
    ``support_args`` are passed to the chosen kernel set's ``supports`` to detect a needed fallback.
    """
    name = _state.selected
    if name == "auto":
        name = _auto(op, device, _dtype_of(support_args))
    if name == "reference":
        return name, None
    if name == "torch":
        return name, op.torch_kernels
    if name == "triton" and device.type != "cuda" and not _state.interpreting:
        raise RuntimeError(
            f"{op.name}: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
            f"got tensors on {device}"
        )
    if name == "cuda" and device.type != ("cpu" if _state.cuda_emulated else "cuda"):
        raise RuntimeError(
            f"{op.name}: backend 'cuda' needs CUDA tensors (CPU tensors under NVAE_FAST_CUDA_EMULATE=1, and only "
            f"those); got tensors on {device}"
        )
    ok, why = _status(name)
    if not ok:
        raise RuntimeError(f"{op.name}: backend {name!r} is unavailable: {why}")
    kernels = _state.kernels[(op.name, name)]
    reason = kernels.supports(*support_args)
    if reason is not None:
        _record_fallback(name, op.name, reason)
        return "torch", op.torch_kernels
    return name, kernels


_state.clear()
