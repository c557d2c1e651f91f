"""Counted rows of the traffic table: one op case (shape, backend, dtype), each mode measured.

A *call* is the public op (``nvae_fast.ops.<op>``, training mode, inputs of :mod:`benchmarks.inputs`
that require gradients) under ``nvae_fast.use_backend(backend)``; ``fwd`` is that call, ``bwd`` is
``torch.autograd.grad`` of its output (with a random output gradient made beforehand) with respect to
the differentiable inputs, ``fwd+bwd`` their sum. During each, the backend's launch counter
(:mod:`benchmarks.emulation_traffic` for ``cuda``, :mod:`benchmarks.triton_traffic` for ``triton``)
and :mod:`benchmarks.host_work` run.

Two runs per case. The full shape runs with the kernels skipped (plan-only: the host code runs, the
kernels only record their launch, at no emulation cost): its launches give the rows' ``launches`` and
``plan``, its host work ``aux_aten_ops`` and ``host_syncs``. The *counted shape* runs the kernels: its
byte counts give ``bytes_read``, ``bytes_written`` and, with ``floor_bytes`` of the same shape,
``ratio``.

Counted shape. Emulating a full preset shape takes too long (the Triton interpreter needs about 30 us
per element and mode), so the bytes are counted on a *candidate* of at most ``max_elements`` elements
(of x; of all weights for the power iteration; per backend, :data:`benchmarks.traffic.MAX_ELEMENTS`)
chosen by its *plan*: the kernel variants (kernels with their template or constexpr arguments) launched
in fwd and in bwd. Candidates of an activation shape (N, C, H, W): N or 1, times C halved 0 or more
times, times H and W halved 0 or more times, largest first (ties: larger H*W, then larger C). The
counted one is the largest within the budget with the full shape's plan; failing that, the largest
within the budget with the same kernels (other tile or vector arguments); failing that, the smallest
with the same kernels of at most :data:`OVERRUN` times the budget; failing that, the largest within the
budget. A power-iteration case keeps one weight of each distinct shape and drops the largest weights one
at a time while the plan holds (so it may stay above the budget). Where the counted shape's plan differs
from the full shape's, the row's ``plan`` gives both. ``max_elements=0`` counts full shapes. The CUDA
plans depend on the reduction length per channel (N*H*W), so their candidates mostly keep N, H, W and
drop channels; the Triton plans carry tile sizes that follow C and H*W, so many Triton rows are counted
on the same kernels with other tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import traceback
from dataclasses import dataclass, field

import torch

import nvae_fast
import nvae_fast.ops

from . import emulation_traffic, host_work, providers, traffic, triton_traffic
from .inputs import DTYPES, make_inputs
from .kernel_launch import Launch, plan, variants
from .shapes import OpShape

OVERRUN = 16  # how far above the budget a candidate may be to keep the full shape's kernels
# First passes of two-pass plans (squeeze-excite, both backends): the next launch of the call reads their
# inputs again, from L2 as far as they stay in it in between: all of them when the call's inputs (x forward,
# dy and x backward) take at most half the assumed L2; else the second pass runs the samples last to first,
# and the share of its re-reads that the last half-L2 of the first pass's reads covers.
L2_FIRST_PASSES = {"se_reduce_kernel", "_se_reduce_nchw_kernel", "_se_reduce_nhwc_kernel"}
# Launches that read their inputs more than once over runs sized to half the assumed L2 (BN+Swish's two
# passes, every step of the power iteration, in both backends): their distinct bytes
# count each input once, as the L2 hits the re-reads are on the GPU when a run stays in L2;
# requested/floor counts every read. What the plan's note says of each.
L2_RUN_LAUNCHES = {
    "bn_train_forward_two_pass_kernel": "two passes in one launch: the counted bytes take each run's second"
                                        " read of its inputs as an L2 hit, runs of channels",
    "_steps_kernel": "every half-step in one launch: the counted bytes take each read of a weight after its"
                     " run's first half-step as an L2 hit, runs of weights",
}
for _kernel in ("bn_train_backward_two_pass_kernel", "_bn_train_forward_two_pass_kernel",
                "_bn_backward_two_pass_kernel"):
    L2_RUN_LAUNCHES[_kernel] = L2_RUN_LAUNCHES["bn_train_forward_two_pass_kernel"]
L2_RUN_LAUNCHES["pi_steps_kernel"] = L2_RUN_LAUNCHES["_steps_kernel"]
_CPU = torch.device("cpu")


@dataclass
class Call:
    """What one mode of one call did: its kernel launches and its host work."""

    launches: list[Launch]
    work: host_work.HostWork = field(default_factory=host_work.HostWork)


def _counter(backend: str):
    return emulation_traffic.counting if backend == "cuda" else triton_traffic.counting


def run(shape: OpShape, backend: str, dtype: str, kernels: bool = True, host: bool = True) -> dict[str, Call]:
    """``{"fwd": Call, "bwd": Call}`` of one call of ``shape.op`` (see module doc). ``kernels=False``
    skips the kernels (only their launches are recorded: the plan); ``host=False`` leaves the host work
    uncounted. Raises ``RuntimeError`` when the backend falls back to ``torch`` for these inputs."""
    inputs = make_inputs(shape, DTYPES[dtype], _CPU)
    fn = getattr(nvae_fast.ops, shape.op)
    count = _counter(backend)
    work = host_work.counting if host else (lambda: contextlib.nullcontext(host_work.HostWork()))
    before = providers.fallback_counts(backend, shape.op)
    with nvae_fast.use_backend(backend):
        with count(plan_only=not kernels) as fwd_launches, work() as fwd_work:
            out = providers.call(shape.op, fn, inputs.tensors)
        grad = torch.randn_like(out)
        with count(plan_only=not kernels) as bwd_launches, work() as bwd_work:
            torch.autograd.grad(out, inputs.differentiable, grad, allow_unused=True)
    after = providers.fallback_counts(backend, shape.op)
    fell_back = [reason for reason, n in after.items() if n > before.get(reason, 0)]
    if fell_back:
        raise RuntimeError(f"{backend} fell back to torch: {'; '.join(fell_back)}")
    return {"fwd": Call(fwd_launches, fwd_work), "bwd": Call(bwd_launches, bwd_work)}


def _plan_of(shape: OpShape, backend: str, dtype: str) -> tuple:
    return _plan(run(shape, backend, dtype, kernels=False, host=False))[0]


def _plan(calls: dict[str, Call]) -> tuple[tuple, str]:
    """The kernel variants of fwd and bwd (what must agree) and the plan text ``fwd plan | bwd plan``."""
    key = tuple(variants(calls[mode].launches) for mode in ("fwd", "bwd"))
    return key, f"{plan(calls['fwd'].launches)} | {plan(calls['bwd'].launches)}"


def _kernels(key: tuple) -> tuple:
    """The kernels of a plan key without their template or constexpr arguments."""
    return tuple(frozenset(v.split("<")[0].split("[")[0] for v in mode) for mode in key)


def _activation_candidates(shape: OpShape, max_elements: int) -> list[OpShape]:
    """Reductions of an activation shape of at most ``max_elements`` elements, largest first (module doc)."""
    n, c, h, w = shape.x
    sizes = set()
    for nn in {n, 1}:
        cc = c
        while cc >= 1:
            hh, ww = h, w
            while hh >= 1 and ww >= 1:
                if nn * cc * hh * ww <= max_elements and (shape.op != "bn_swish" or nn * hh * ww > 1):
                    sizes.add((nn, cc, hh, ww))  # (training BN needs more than one value per channel)
                hh, ww = hh // 2, ww // 2
            cc //= 2
    order = sorted(sizes, key=lambda x: (math.prod(x), x[2] * x[3], x[1]), reverse=True)
    return [dataclasses.replace(shape, x=x) for x in order]


def _smaller_activation(shape, backend, dtype, full_key, max_elements) -> OpShape:
    """The counted candidate of an activation shape (see module doc)."""
    candidates = _activation_candidates(shape, OVERRUN * max_elements)
    within = [c for c in candidates if c.size <= max_elements]
    above = [c for c in reversed(candidates) if c.size > max_elements]  # smallest first
    keys: dict[tuple, tuple] = {}

    def key(c: OpShape) -> tuple:
        if c.x not in keys:
            keys[c.x] = _plan_of(c, backend, dtype)
        return keys[c.x]

    for found in (
        next((c for c in within if key(c) == full_key), None),
        next((c for c in within if _kernels(key(c)) == _kernels(full_key)), None),
        next((c for c in above if _kernels(key(c)) == _kernels(full_key)), None),
    ):
        if found is not None:
            return found
    return within[0] if within else shape


def _fewer_weights(shape, backend, dtype, full_key, max_elements) -> OpShape:
    """The distinct weight shapes, with the largest removed one at a time while the plan holds."""
    weights = sorted(dict.fromkeys(shape.weights), key=math.prod, reverse=True)

    def same(ws) -> bool:
        return _plan_of(dataclasses.replace(shape, weights=tuple(ws)), backend, dtype) == full_key

    i = 0
    while sum(math.prod(w) for w in weights) > max_elements and i < len(weights) and len(weights) > 1:
        trial = weights[:i] + weights[i + 1:]
        if same(trial):
            weights = trial
        else:
            i += 1
    return dataclasses.replace(shape, weights=tuple(weights))


def choose_counted(shape: OpShape, backend: str, dtype: str, max_elements: int) -> tuple[OpShape, dict[str, Call], str]:
    """``(counted shape, the full shape's calls, plan text)``. The calls are run with the kernels skipped
    (launches and host work only); the plan text is the full shape's plan, followed by the counted
    shape's when they differ (see module doc). The host work is a second call's: what a first call sets up
    once per device and stream (the ticket counters of :mod:`nvae_fast.kernels._host`) is not per call."""
    run(shape, backend, dtype, kernels=False, host=False)
    full = run(shape, backend, dtype, kernels=False)
    full_key, full_plan = _plan(full)
    if max_elements <= 0 or shape.size <= max_elements:
        return shape, full, full_plan
    smaller = _fewer_weights if shape.op == "power_iteration" else _smaller_activation
    counted = smaller(shape, backend, dtype, full_key, max_elements)
    key, text = _plan(run(counted, backend, dtype, kernels=False, host=False))
    return counted, full, full_plan if key == full_key else f"{full_plan} [counted shape's plan: {text}]"


@dataclass
class Row:
    """One row of the table: :data:`benchmarks.traffic.ROW_KEYS` plus the details the Markdown report
    shows (requested bytes, the names of the ATen ops and host syncs, shape labels). Counts are None when
    not measured."""

    op: str
    backend: str
    mode: str
    dtype: str
    preset: str
    shape: dict
    counted_shape: dict
    floor_bytes: int
    plan: str
    bytes_read: int | None = None
    bytes_written: int | None = None
    ratio: float | None = None
    launches: int | None = None
    aux_aten_ops: int | None = None
    host_syncs: int | None = None
    requested_bytes: int | None = None
    aux_names: dict = field(default_factory=dict)
    sync_names: dict = field(default_factory=dict)
    label: str = ""
    counted_label: str = ""

    def as_json(self) -> dict:
        return {key: getattr(self, key) for key in traffic.ROW_KEYS}


def shape_record(shape: OpShape) -> dict:
    """The JSON form of a shape: its non-empty fields (``x``, ``kernel``, ``hidden``; ``weights``, ``n_iter``)."""
    fields = ("weights", "n_iter") if shape.op == "power_iteration" else ("x", "kernel", "hidden")
    return {f: getattr(shape, f) for f in fields if getattr(shape, f) is not None}


def _total(launches: list[Launch], attr: str) -> int | None:
    values = [getattr(launch, attr) for launch in launches]
    return None if any(v is None for v in values) else sum(values)


def rows(shape: OpShape, counted: OpShape, full: dict[str, Call] | None, measured: dict[str, Call] | None,
         backend: str, dtype: str, preset: str, plan_text: str) -> list[Row]:
    """The fwd, bwd and fwd+bwd rows of a case: launches and host work from ``full`` (the full shape's
    calls), bytes from ``measured`` (the counted shape's); None: not measured, those counts None."""

    def with_sum(calls):
        if calls is None:
            return None
        fwd, bwd = calls["fwd"], calls["bwd"]
        both = host_work.HostWork(fwd.work.aten_ops + bwd.work.aten_ops, fwd.work.host_syncs + bwd.work.host_syncs)
        return {**calls, "fwd+bwd": Call(fwd.launches + bwd.launches, both)}

    full, measured = with_sum(full), with_sum(measured)
    out = []
    for mode in traffic.MODES:
        floor = traffic.min_bytes(counted, mode, DTYPES[dtype].itemsize)
        row = Row(op=shape.op, backend=backend, mode=mode, dtype=dtype, preset=preset, shape=shape_record(shape),
                  counted_shape=shape_record(counted), floor_bytes=floor, plan=plan_text, label=shape.label,
                  counted_label=counted.label)
        if full is not None:
            call = full[mode]
            row.launches = len(call.launches)
            row.aux_aten_ops, row.host_syncs = sum(call.work.aten_ops.values()), sum(call.work.host_syncs.values())
            row.aux_names, row.sync_names = dict(call.work.aten_ops), dict(call.work.host_syncs)
        if measured is not None:
            launches = measured[mode].launches
            row.bytes_read, row.bytes_written = _total(launches, "read"), _total(launches, "written")
            if row.bytes_read is not None and row.bytes_written is not None:
                row.ratio = round((row.bytes_read + row.bytes_written) / floor, 4)
            requested = (_total(launches, "read_requested"), _total(launches, "written_requested"))
            row.requested_bytes = None if None in requested else sum(requested)
            if row.ratio is not None:
                modes = ("fwd", "bwd") if mode == "fwd+bwd" else (mode,)
                hits = [_l2_hits(measured[m].launches, shape, m, DTYPES[dtype].itemsize) for m in modes]
                row.plan += _l2_note([h for h in hits if h is not None], row.bytes_read + row.bytes_written, floor)
                row.plan += _run_launch_note(launches, row.requested_bytes, floor)
        out.append(row)
    return out


def _l2_hits(launches: list[Launch], shape: OpShape, mode: str, itemsize: int) -> tuple[int, bool] | None:
    """``(bytes, whole)`` that the launches after a first pass (:data:`L2_FIRST_PASSES`) of ``mode`` find
    in L2, or None when there is no first pass. The bytes: what the first passes read, at most what the
    other launches read (a second pass may read only some of the inputs again, e.g. dy but not x), all of
    it (``whole``) when the full shape's inputs take at most half the assumed L2, else the share of it that
    half the L2 holds (the second pass re-reads the most recently read samples first)."""
    from nvae_fast.cuda.bn_swish import ASSUMED_L2_BYTES

    first = [launch for launch in launches if _base_name(launch.kernel) in L2_FIRST_PASSES]
    if not first:
        return None
    inputs = math.prod(shape.x) * itemsize * (2 if mode == "bwd" else 1) if shape.x else 0
    others = sum(launch.read for launch in launches if _base_name(launch.kernel) not in L2_FIRST_PASSES)
    reread = min(sum(launch.read for launch in first), others)
    if inputs <= ASSUMED_L2_BYTES // 2:
        return reread, True
    return int(reread * (ASSUMED_L2_BYTES // 2) / inputs), False


def _base_name(kernel: str) -> str:
    """A launch's kernel name without its template (cuda) or constexpr (triton) arguments."""
    return kernel.split("<")[0].split("[")[0]


def _l2_note(hits: list[tuple[int, bool]], counted: int, floor: int) -> str:
    """The plan's note on the modelled DRAM ratio of two-pass plans whose second pass reads from L2 (the
    counted bytes less the L2 hits, see :func:`_l2_hits`); "" when none does."""
    if not hits:
        return ""
    from nvae_fast.cuda.bn_swish import ASSUMED_L2_BYTES

    how = ("the inputs within half of it" if all(whole for _, whole in hits)
           else "the second pass re-reading the samples last to first, half of it holding the last ones read")
    dram = counted - sum(reread for reread, _ in hits)
    return (f" [modelled DRAM ratio {dram / floor:.2f}: the second pass re-reads its inputs from an assumed"
            f" {ASSUMED_L2_BYTES >> 20} MB L2, {how}]")


def _run_launch_note(launches: list[Launch], requested: int | None, floor: int) -> str:
    """The plan's note for launches that re-read their inputs over runs sized to the L2
    (:data:`L2_RUN_LAUNCHES`); "" when none does."""
    notes = dict.fromkeys(L2_RUN_LAUNCHES[name] for name in map(_base_name, (l.kernel for l in launches))
                          if name in L2_RUN_LAUNCHES)
    if not notes:
        return ""
    from nvae_fast.cuda.bn_swish import ASSUMED_L2_BYTES

    both = f" {requested / floor:.2f} with" if requested is not None else ""
    return (f" [{'; '.join(notes)} sized to half of an assumed {ASSUMED_L2_BYTES >> 20} MB L2; requested/floor"
            f"{both} every read]")


class CaseCounter:
    """Measures cases, reusing the counts of a counted shape that several cases share (presets with the
    same shape at different batch sizes reduce to one counted shape)."""

    def __init__(self, max_elements: dict[str, int]):
        self.max_elements = max_elements  # budget per backend
        self._measured: dict[tuple, dict[str, Call]] = {}

    def case(self, shape: OpShape, backend: str, dtype: str, preset: str) -> list[Row]:
        """The rows of one case; a case that cannot run gives rows without counts whose plan says why."""
        try:
            counted, full, plan_text = choose_counted(shape, backend, dtype, self.max_elements[backend])
            key = (backend, dtype, counted.key)
            if key not in self._measured:
                self._measured[key] = run(counted, backend, dtype, host=False)
            measured = self._measured[key]
        except Exception as exc:  # a kernel error, a fallback, an interpreter error: the row says which
            traceback.print_exc(file=sys.stderr)
            counted, full, measured, plan_text = shape, None, None, f"not counted: {type(exc).__name__}: {exc}"
        return rows(shape, counted, full, measured, backend, dtype, preset, plan_text)
