"""The traffic table as files: JSON (the rows, exactly :data:`benchmarks.traffic.ROW_KEYS` each) and a
Markdown report (the worst rows per op, backend and mode, every row, the plans, and the names of the
ATen ops and host syncs outside the kernels)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import env
from .traffic_count import Row


def preamble(command: str, cases: int, rows: int, seconds: float, budget: dict[str, int]) -> list[str]:
    """The report's heading: how it was made (command, versions, time, budgets) and what the columns mean."""
    versions = env.versions()
    return [
        "# Counted global-memory traffic of the nvae_fast kernels",
        "",
        f"`{command}` (git {env.git_commit()}, torch {versions['torch']}, triton {versions['triton']}): {cases} "
        f"shapes, {rows} rows in {seconds / 60:.1f} min on {os.cpu_count()} CPU cores; bytes counted on shapes of "
        f"at most {', '.join(f'{b}: {n}' for b, n in budget.items())} elements (0: full shapes) chosen by their "
        "plan (`benchmarks/traffic_count.py`).",
        "",
        "Bytes: global memory of the op's own kernels, each byte once per launch (`requested/floor`: every "
        "access added up); floor: `benchmarks.traffic.min_bytes`; all byte figures are of the counted shape. "
        "Launches, aux ATen ops, host syncs and the plan are of the full shape (a run with the kernels "
        "skipped). aux ATen ops: ATen ops doing device work outside the kernels, whose bytes are not counted "
        "(allocations, views and no-op conversions are not ops here); host syncs: `.item()`-like reads, "
        "data-dependent sizes, `.cpu()`, `.tolist()`, `.numpy()`. Triton rows show the interpreter's plan "
        "(its tiles and split counts). See the docstrings of `benchmarks/traffic.py` and the modules it names.",
    ]


def write_json(rows: list[Row], path: Path) -> None:
    """The rows as a JSON list, one row a line (so that a re-run shows as a readable diff)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[\n" + ",\n".join(json.dumps(r.as_json()) for r in rows) + "\n]\n")


def _num(v) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3g}"


def _ratio(r: Row) -> str:
    return "-" if r.ratio is None else f"{r.ratio:.2f}"


def _requested(r: Row) -> str:
    return "-" if r.requested_bytes is None else f"{r.requested_bytes / r.floor_bytes:.2f}"


def _names(counts: dict) -> str:
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def markdown(rows: list[Row], preamble: list[str]) -> str:
    """The report: ``preamble`` lines, then the tables (see module doc)."""
    plans: dict[str, str] = {}
    for r in rows:
        plans.setdefault(f"{r.op} {r.backend} {r.dtype}: {r.plan}", f"P{len(plans) + 1}")

    def plan_id(r: Row) -> str:
        return plans[f"{r.op} {r.backend} {r.dtype}: {r.plan}"]

    worst: dict[tuple, Row] = {}
    for r in rows:
        key = (r.op, r.backend, r.mode)
        if key not in worst or (r.ratio or 0) > (worst[key].ratio or 0):
            worst[key] = r
    out = list(preamble)
    out += ["", "## Worst ratio per op, backend and mode", ""]
    out += _table(
        ["op", "backend", "mode", "dtype", "preset", "shape", "counted", "ratio", "requested/floor", "launches",
         "aux ATen ops", "host syncs", "plan"],
        [[r.op, r.backend, r.mode, r.dtype, r.preset, r.label, r.counted_label, _ratio(r), _requested(r),
          _num(r.launches), _num(r.aux_aten_ops), _num(r.host_syncs), plan_id(r)] for r in worst.values()],
    )
    out += ["", "## Every row", ""]
    out += _table(
        ["op", "backend", "mode", "dtype", "preset", "shape", "counted", "bytes_read", "bytes_written", "floor_bytes",
         "ratio", "requested/floor", "launches", "aux ATen ops", "host syncs", "plan"],
        [[r.op, r.backend, r.mode, r.dtype, r.preset, r.label, r.counted_label, _num(r.bytes_read),
          _num(r.bytes_written), _num(r.floor_bytes), _ratio(r), _requested(r), _num(r.launches),
          _num(r.aux_aten_ops), _num(r.host_syncs), plan_id(r)] for r in rows],
    )
    out += ["", "## Plans (kernel variants at the full shape: fwd | bwd)", ""]
    out += _table(["id", "op, backend, dtype: plan"], [[pid, text.replace("|", "\\|")] for text, pid in plans.items()])
    work: dict[tuple, int] = {}
    for r in rows:
        if r.mode != "fwd+bwd" and r.launches is not None:
            key = (r.op, r.backend, r.mode, r.dtype, _names(r.aux_names), _names(r.sync_names))
            work[key] = work.get(key, 0) + 1
    out += ["", "## ATen ops and host syncs outside the kernels, per call", ""]
    out += _table(["op", "backend", "mode", "dtype", "aux ATen ops", "host syncs", "rows"],
                  [list(key) + [str(n)] for key, n in work.items()])
    return "\n".join(out) + "\n"


def write_markdown(rows: list[Row], preamble: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows, preamble))
