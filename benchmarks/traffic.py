"""Minimum-traffic model: the bytes an ideal implementation must move, per op and mode.

Rule: every tensor a mode consumes is read from device memory exactly once and every tensor it
produces is written exactly once; intermediates (z, sigmoid(z), pooled means, hidden activations,
partial sums) never touch memory. Real kernels usually do more (a training BN reads x twice: once for
the statistics, once to normalise), so ``bandwidth = min_bytes / time`` is a lower bound on the traffic
actually moved and its fraction of the copy bandwidth is the figure of merit (1.0 = as fast as a copy
of the same bytes).

Notation: M = N*C*H*W elements of x (= elements of y, dy, dx: every op keeps x's shape), e = element
size of the benchmark dtype, C channels, h squeeze-excite width, k depthwise kernel size, and for the
power iteration W_i (out_i x rest_i) in the benchmark dtype and u_i (out_i), v_i (rest_i), sigma in
float32 (4 bytes). Per-channel BN tensors are float32 (4 bytes) in every benchmark, as in mixed
precision training.

| op / mode                 | reads                                          | writes                                   |
|---------------------------|------------------------------------------------|------------------------------------------|
| bn_swish fwd (training)   | x; weight, bias, running_mean, running_var     | y; running_mean, running_var; mean, invstd (saved for bwd) |
| bn_swish bwd              | dy, x; weight, bias, mean, invstd              | dx; dweight, dbias                       |
| depthwise_conv2d fwd      | x; weight (C*k*k)                              | y                                        |
| depthwise_conv2d bwd      | dy, x; weight                                  | dx; dweight                              |
| squeeze_excite fwd        | x; w1 (h*C), b1 (h), w2 (C*h), b2 (C)          | y                                        |
| squeeze_excite bwd        | dy, x; w1, b1, w2, b2                          | dx; dw1, db1, dw2, db2                   |
| power_iteration fwd       | every W_i; every u_i, v_i                      | every u_i, v_i (in place); sigma         |
| power_iteration bwd       | dsigma; every u_i, v_i                         | every dW_i                               |

``fwd+bwd`` is the sum of the two rows. In bytes, for the activation ops: bn_swish fwd = 2*M*e + 32*C,
bwd = 3*M*e + 24*C; depthwise fwd = 2*M*e + C*k*k*e, bwd = 3*M*e + 2*C*k*k*e; squeeze-excite fwd =
2*M*e + (2*h*C + h + C)*e, bwd = 3*M*e + 2*(2*h*C + h + C)*e. The benchmarks use no depthwise bias
(NVAE's depthwise convs have none: a BN follows them).

Measured traffic
----------------
``python -m benchmarks.traffic`` (CPU only, in a fresh process: it selects ``TRITON_INTERPRET=1`` and
``NVAE_FAST_CUDA_EMULATE=count`` itself) runs every op at the shapes of the ``cifar10``, ``celeba64`` and
``celebahq256`` presets and gives, per op x backend (``cuda``, ``triton``) x mode x dtype (``float32``,
``bfloat16``) x preset shape, one row of :data:`ROW_KEYS`. The table in ``benchmarks/results/traffic/``
is remade by

    OMP_NUM_THREADS=1 python -m benchmarks.traffic --out benchmarks/results/traffic

(6 minutes on 2 cores, plus 2 minutes the first time to build the emulation's count flavour;
``--ops``, ``--presets``, ``--backends``, ``--dtypes`` and ``--limit`` select less). Columns:

``bytes_read``, ``bytes_written``
    global-memory bytes the op's own kernels read and write, counted while they run: the CUDA kernels in
    the CPU emulation's ``count`` flavour (:mod:`benchmarks.emulation_traffic`), the Triton kernels in the
    interpreter (:mod:`benchmarks.triton_traffic`). Each byte counts once per launch (a cache that holds
    everything a launch re-reads), so launches that each read x add up; the Markdown report also gives
    ``requested/floor``, every access added up (re-reads of per-channel constants or stencil neighbours
    included). ATen ops outside the kernels are not in these bytes (see ``aux_aten_ops``).
``floor_bytes``, ``ratio``
    :func:`min_bytes` of the counted shape, and ``(bytes_read + bytes_written) / floor_bytes``.
``launches``
    kernel launches per call (emulated ``run_grid`` calls; Triton launches), at the full shape.
``aux_aten_ops``, ``host_syncs``
    ATen ops that do device work outside the op's kernels, and device-to-host transfers or
    synchronisations, per call at the full shape (:mod:`benchmarks.host_work` says what counts).
``plan``
    the kernel variants the host code launches at the full shape (``fwd | bwd``), from a run that skips
    the kernels (as are the launches and host work above). Two-pass plans whose second pass re-reads
    inputs the first left in L2 add ``[modelled DRAM ratio r: ...]``: the counted bytes less those
    re-reads, over the floor, on an assumed 50 MB L2 (H100/H200): always for the BN+Swish two-pass plans
    of both backends (they size their runs of channels to half the L2), for squeeze-excite when the full
    shape's inputs (x forward, dy and x backward) take at most half of it
    (:func:`benchmarks.traffic_count._l2_hits`). A GPU run checks the model.
``shape``, ``counted_shape``
    the preset's shape, and the smaller shape with the same plan on which the bytes were counted
    (:mod:`benchmarks.traffic_count`; ``--max-elements`` sets the budget, 0 counts full shapes). All
    byte figures of a row, ``floor_bytes`` included, are those of ``counted_shape``.

Limits: the CUDA counts are of the host compiler's code for the kernel sources (loads it keeps in
registers are not counted; a GPU compiler may schedule otherwise); the Triton host code picks the
interpreter's tiles and 2 "SMs" for its splits where it asks (``kernels/_host.py``), so Triton rows show
the interpreter's plan, not the GPU's; host-to-device copies of staging tables are no-ops on the CPU and
are not seen.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from .shapes import OPS, PRESETS, OpShape

MODES = ("fwd", "bwd", "fwd+bwd")
F32 = 4
ROW_KEYS = (
    "op", "backend", "mode", "dtype", "preset", "shape", "counted_shape", "bytes_read", "bytes_written",
    "floor_bytes", "ratio", "launches", "aux_aten_ops", "host_syncs", "plan",
)
BACKENDS = ("cuda", "triton")
# Budget of a counted shape per backend (benchmarks.traffic_count): a few seconds per case.
MAX_ELEMENTS = {"cuda": 1 << 16, "triton": 1 << 17}


def _activation_bytes(shape: OpShape, mode: str, e: int) -> int:
    n, c, h, w = shape.x
    m = n * c * h * w
    if shape.op == "bn_swish":
        # fwd: 4 params/stats read, 2 running stats + 2 saved stats written; bwd: 4 read, 2 grads written.
        return {"fwd": 2 * m * e + 8 * c * F32, "bwd": 3 * m * e + 6 * c * F32}[mode]
    if shape.op == "depthwise_conv2d":
        p = c * shape.kernel**2
        return {"fwd": 2 * m * e + p * e, "bwd": 3 * m * e + 2 * p * e}[mode]
    if shape.op == "squeeze_excite":
        p = 2 * shape.hidden * c + shape.hidden + c
        return {"fwd": 2 * m * e + p * e, "bwd": 3 * m * e + 2 * p * e}[mode]
    raise ValueError(f"traffic: unknown op {shape.op!r}")


def _power_iteration_bytes(shape: OpShape, mode: str, e: int) -> int:
    weights = sum(math.prod(w) for w in shape.weights)
    vectors = sum(w[0] + math.prod(w[1:]) for w in shape.weights)
    sigmas = len(shape.weights)
    if mode == "fwd":
        return weights * e + 2 * vectors * F32 + sigmas * F32
    return sigmas * F32 + vectors * F32 + weights * e


def min_bytes(shape: OpShape, mode: str, element_size: int) -> int:
    """Minimum bytes moved by ``shape.op`` in ``mode`` (``fwd``, ``bwd`` or ``fwd+bwd``); see module doc."""
    if mode not in MODES:
        raise ValueError(f"traffic: mode must be one of {MODES}, got {mode!r}")
    one = _power_iteration_bytes if shape.op == "power_iteration" else _activation_bytes
    if mode == "fwd+bwd":
        return one(shape, "fwd", element_size) + one(shape, "bwd", element_size)
    return one(shape, mode, element_size)


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def _budget(text: str, defaults: dict[str, int]) -> dict[str, int]:
    """``--max-elements``: ``N`` (every backend) or ``backend=N,...`` (the others keep ``defaults``)."""
    if "=" not in text:
        return {backend: int(text) for backend in defaults}
    pairs = dict(item.split("=", 1) for item in text.split(","))
    _choices(",".join(pairs), tuple(defaults), "backends")
    return {**defaults, **{backend: int(n) for backend, n in pairs.items()}}


def _counting_process() -> None:
    """Select the Triton interpreter and the emulation's count flavour, and check that both count. They
    must be chosen before triton and ``nvae_fast`` load their kernels: run in a fresh process."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("benchmarks.traffic: triton was imported without TRITON_INTERPRET=1 "
                         "(run it in a fresh process)")
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["NVAE_FAST_CUDA_EMULATE"] = "count"
    import nvae_fast

    from . import emulation_traffic

    nvae_fast.reset()
    reason = emulation_traffic.unavailable()
    if reason is not None:
        raise SystemExit(f"benchmarks.traffic: {reason} (run it in a fresh process)")


def _cases(presets: tuple[str, ...], ops: tuple[str, ...], limit: int) -> list[tuple[str, OpShape]]:
    """``(preset, shape)`` of every preset shape of ``ops``, at most ``limit`` per op and preset (0: all)."""
    from . import model_shapes

    cases = []
    for preset in presets:
        shapes = model_shapes.preset_shapes(preset)
        for op in ops:
            chosen = [s for s in shapes if s.op == op]
            cases += [(preset, s) for s in (chosen[:limit] if limit else chosen)]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.traffic",
        description="Counted global-memory traffic, launches and host work of the nvae_fast kernels at the preset "
                    "shapes (see the docstring of benchmarks/traffic.py).",
    )
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--max-elements", default=",".join(f"{b}={n}" for b, n in MAX_ELEMENTS.items()),
                        help="budget of a counted shape (elements of x, or of all weights): N for every backend, or "
                             "backend=N,...; 0: full shapes")
    parser.add_argument("--limit", type=int, default=0, help="at most this many shapes per op and preset (0: all)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--markdown", type=Path, help="write the report here (none of the three: print it)")
    parser.add_argument("--out", type=Path, help="write traffic.json and traffic.md here (benchmarks/results/traffic)")
    args = parser.parse_args(argv)
    if args.out:
        args.json, args.markdown = args.json or args.out / "traffic.json", args.markdown or args.out / "traffic.md"
    ops = _choices(args.ops, OPS, "ops")
    presets = _choices(args.presets, PRESETS, "presets")
    backends = _choices(args.backends, BACKENDS, "backends")
    dtypes = _choices(args.dtypes, ("float32", "bfloat16"), "dtypes")
    budget = _budget(args.max_elements, MAX_ELEMENTS)

    _counting_process()
    from . import traffic_count, traffic_report

    counter = traffic_count.CaseCounter(budget)
    cases = _cases(presets, ops, args.limit)
    start = time.time()
    rows = []
    for i, (preset, shape) in enumerate(cases, 1):
        for backend in backends:
            for dtype in dtypes:
                t = time.time()
                rows += counter.case(shape, backend, dtype, preset)
                print(f"[{i}/{len(cases)}] {shape.op} {backend} {dtype} {preset} {shape.label} -> "
                      f"{rows[-1].counted_label}: {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    command = " ".join(["python -m benchmarks.traffic", *(sys.argv[1:] if argv is None else argv)])
    preamble = traffic_report.preamble(command, len(cases), len(rows), time.time() - start, budget)
    if args.json:
        traffic_report.write_json(rows, args.json)
    if args.markdown:
        traffic_report.write_markdown(rows, preamble, args.markdown)
    if not args.json and not args.markdown:
        print(traffic_report.markdown(rows, preamble))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
