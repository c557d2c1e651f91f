"""Ahead-of-time compile specs: what ``tests/kernels/test_aot_compile.py`` compiles for real GPU targets
(built only when asked for, never at import).

Every kernel module ``kernels/<op>.py`` defines ``aot_specs()``, returning a list of :class:`AotSpec` (plain tuples
``(fn, signature, constexprs)`` or ``(fn, signature, constexprs, options)`` are accepted too) that covers
each launched kernel (module-level ``@triton.jit`` functions whose name ends in ``_kernel``) and its
meaningful constexpr variants: input dtypes, layouts, flags, a representative tile shape. The test feeds
each spec to ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc,
32), options)`` for cc 80 and 90, without a GPU and without the interpreter, so a kernel that cannot
lower to PTX/cubin fails the test suite on a CPU-only machine.

``signature`` maps *every* parameter name of ``fn`` to a Triton type string (``"*fp16"``, ``"i32"``,
``"fp32"``, ...) or to ``"constexpr"``; ``constexprs`` maps each constexpr parameter to its value.
:func:`aot_spec` builds both from one dict and checks that no parameter is missing or unknown.

The JIT specialises an integer argument equal to 1 into the constant 1 (``("constexpr", 1)``), so a
kernel also has to compile with any of its integer parameters fixed to 1 (batch of one, 1x1 maps,
an unsplit reduction): give such a parameter the value ``1`` instead of a type string.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import triton.language as tl

POINTER_TYPES = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.int32: "*i32",
}


class AotSpec(NamedTuple):
    """One compile job: the jit function, its full signature, its constexpr values, compile options."""

    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    options: dict[str, Any]


def ptr(dtype: torch.dtype) -> str:
    """Signature type of a pointer to ``dtype`` elements."""
    return POINTER_TYPES[dtype]


def aot_spec(fn, args: dict[str, Any], num_warps: int = 4) -> AotSpec:
    """Spec for ``fn``: ``args`` gives each runtime parameter a type string and each constexpr its value.

    A parameter annotated ``tl.constexpr`` takes its value from ``args``; every other parameter takes a
    type string, or the int 1 to compile it specialised to 1 as the JIT does for that value. Raises
    ``ValueError`` naming any parameter of ``fn`` missing from ``args`` or any key of ``args`` that is
    no parameter of ``fn``.
    """
    params = list(inspect.signature(fn.fn).parameters.values())  # JITFunction or InterpretedFunction
    names = [p.name for p in params]
    missing = [n for n in names if n not in args]
    unknown = [n for n in args if n not in names]
    if missing or unknown:
        raise ValueError(f"aot_spec({fn.__name__}): missing parameters {missing}, unknown parameters {unknown}")
    signature, constexprs = {}, {}
    for p in params:
        value = args[p.name]
        if _is_constexpr(p.annotation) or (type(value) is int and value == 1):
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
        else:
            signature[p.name] = value
    return AotSpec(fn, signature, constexprs, {"num_warps": num_warps})


def _is_constexpr(annotation) -> bool:
    if isinstance(annotation, str):  # postponed annotations: "tl.constexpr"
        return "constexpr" in annotation
    return annotation is tl.constexpr


def ones(args: dict[str, Any], *names: str) -> dict[str, Any]:
    """``args`` with the integer parameters ``names`` (all ``i32``/``i64`` ones if none are named) set to
    1, the JIT's specialisation of that value."""
    names = names or tuple(k for k, v in args.items() if v in ("i32", "i64"))
    return {**args, **{name: 1 for name in names}}


def compile_for(fn, signature: dict[str, str], constexprs: dict[str, Any], options: dict[str, Any], cc: int):
    """``triton.compile`` of one spec for ``GPUTarget("cuda", cc, 32)``, with the 16-byte divisibility hint
    that the JIT gives aligned torch tensors on every pointer; no GPU needed, but not under the interpreter.
    Returns the compiled kernel (``.metadata.shared``, ``.asm["cubin"]``, ...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in signature.items() if t.startswith("*")}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32), options=options)
