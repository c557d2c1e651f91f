"""One kernel launch as the traffic counters record it, and the plan that a sequence of launches makes.

``kernel`` names the variant: for the CUDA kernels ``name<template arguments>`` (namespaces dropped),
for the Triton kernels ``name[CONSTEXPR=value, ..., num_warps=w]``. Byte counts are those of global
memory during the launch (see :mod:`benchmarks.emulation_traffic` and :mod:`benchmarks.triton_traffic`):
``read``/``written`` count each byte once per launch, ``*_requested`` add up every access. They are
``None`` when the launch was not counted (a plan-only run, or an access the counter cannot size).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    kernel: str
    read: int | None = None
    written: int | None = None
    read_requested: int | None = None
    written_requested: int | None = None


def plan(launches: list[Launch]) -> str:
    """The distinct kernel variants of ``launches`` in order of first launch, ``"; "``-separated, each
    with ``xN`` when it was launched N > 1 times; ``"(no kernels)"`` for none."""
    counts = Counter(launch.kernel for launch in launches)
    if not counts:
        return "(no kernels)"
    return "; ".join(kernel if n == 1 else f"{kernel} x{n}" for kernel, n in counts.items())


def variants(launches: list[Launch]) -> frozenset[str]:
    """The set of kernel variants launched: what must agree for two shapes to take the same plan."""
    return frozenset(launch.kernel for launch in launches)
