"""The backend order that ``auto`` should use per op, as decided by benchmark rows.

``nvae_fast.backend.AUTO_ORDER`` lists, per op, the fused backends ``auto`` tries on CUDA tensors; the
faster of ``cuda`` and ``triton`` by measurement should come first. Per op, over every case
(shape, dtype, layout) where both have an ``ok`` forward+backward ``time_ms`` row:

    r_case = p50(cuda) / p50(triton),   ratio = geometric mean of r_case

and ``cuda`` goes first when ratio < 1, ``triton`` when ratio > 1. With no such case, or ratio == 1, the op
keeps its current order and is reported as undecided. The geometric mean weighs a 2x win and a 2x loss
equally, whatever the case's size.

Usage::

    python -m benchmarks.auto_order benchmarks/results/<date>-<gpu>   # prints the table and AUTO_ORDER
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from nvae_fast import backend

from . import results

FUSED = ("cuda", "triton")
MODE = "fwd+bwd"


@dataclass(frozen=True)
class Decision:
    op: str
    order: tuple[str, ...]
    ratio: float | None  # geometric mean of t(cuda) / t(triton); None: no paired case
    cases: int
    cuda_wins: int

    @property
    def decided(self) -> bool:
        return self.ratio is not None and self.ratio != 1.0


def _times(rows: list[dict], op: str, provider: str) -> dict[tuple, float]:
    return {
        (r["shape"], r["dtype"], r["layout"]): r["p50"]
        for r in rows
        if r["op"] == op and r["provider"] == provider and r["mode"] == MODE and r["metric"] == "time_ms"
        and r["status"] == "ok" and r["p50"] > 0
    }


def decide(rows: list[dict], current: dict[str, tuple[str, ...]] | None = None) -> list[Decision]:
    """One decision per op of ``current`` (default: ``nvae_fast.backend.AUTO_ORDER``), see the module doc."""
    current = backend.AUTO_ORDER if current is None else current
    out = []
    for op, order in current.items():
        cuda, triton = _times(rows, op, "cuda"), _times(rows, op, "triton")
        paired = sorted(cuda.keys() & triton.keys())
        if not paired:
            out.append(Decision(op, tuple(order), None, 0, 0))
            continue
        logs = [math.log(cuda[k] / triton[k]) for k in paired]
        ratio = math.exp(sum(logs) / len(logs))
        wins = sum(v < 0 for v in logs)
        if ratio == 1.0:
            new = tuple(order)
        else:
            first = "cuda" if ratio < 1 else "triton"
            new = (first, *(b for b in FUSED if b != first), *(b for b in order if b not in FUSED))
        out.append(Decision(op, new, ratio, len(paired), wins))
    return out


def table_lines(decisions: list[Decision]) -> list[str]:
    """Markdown table of ``decisions`` plus the ``AUTO_ORDER`` literal they give."""
    lines = ["| op | t(cuda) / t(triton), geometric mean | cases (cuda faster) | auto's order |", "|---|---|---|---|"]
    for d in decisions:
        ratio = "not measured" if d.ratio is None else f"{d.ratio:.3f}"
        cases = "—" if d.ratio is None else f"{d.cases} ({d.cuda_wins})"
        order = " > ".join(d.order) + ("" if d.decided else " (unchanged)")
        lines.append(f"| {d.op} | {ratio} | {cases} | {order} |")
    literal = ", ".join(f'"{d.op}": {d.order!r}' for d in decisions)
    return lines + ["", f"`AUTO_ORDER = {{{literal}}}`"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a results directory (benchmarks/results/<date>-<gpu>)")
    args = parser.parse_args(argv)
    _, rows = results.load_dir(args.dir)
    print("\n".join(table_lines(decide(rows))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
