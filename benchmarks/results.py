"""Result rows: schema, validation, and the JSON/CSV files under ``<out>/<date>-<gpu>/``.

One row is one metric of one case. Columns (:data:`FIELDS`):

- case: ``section`` (``ops`` or ``model``), ``op`` (an op name or ``train_step``), ``provider``,
  ``mode`` (``fwd``, ``bwd``, ``fwd+bwd``; ``step`` for the model), ``dtype``, ``layout``
  (``nchw``/``channels_last``), ``shape`` (a label), ``size`` (elements of x, of all weights, or the
  batch size: the x axis of plots), ``shape_set`` (``+``-joined sets, e.g. ``cifar10+celeba64``),
  ``shape_source`` (``model-hooks``, ``paper-config``, ``sweep``, ``issue-target``, ``smoke``);
- value: ``metric``, ``unit``, ``p50``, ``p20``, ``p80`` (percentiles over the timed runs; equal for
  single-valued metrics), ``n`` (number of runs), ``status`` (``ok``, ``skipped``, ``error``) and
  ``reason`` (why not ``ok``), ``traffic_bytes`` (bandwidth rows), ``max_rel_err`` (forward output vs
  the reference: max |out - ref| / max |ref|);
- environment, repeated on every row: ``smoke``, ``device``, ``gpu``, ``copy_bw_GBps``, ``torch``,
  ``triton``, ``cuda``, ``git_commit``, ``date``.

Metrics: ``time_ms`` (device time, host ahead; see :mod:`benchmarks.timing`), ``host_ms`` (host wall
time per call, back to back), ``graph_ms`` (CUDA-graph replay; ``skipped`` with the capture's failure
when not capturable), ``bandwidth_GBps``, ``bandwidth_fraction`` (of the large-copy bandwidth
``copy_bw_GBps``), ``bandwidth_fraction_same_size`` (of a copy of the same bytes, same session) and
``copy_same_size_GBps`` (that copy's rate), ``peak_mem_MiB`` (fwd+bwd above the inputs; whole training step for the model), ``saved_MiB``
(tensors saved for backward), ``images_per_s``, ``max_batch``.

Files: ``<section>.json`` (``{"format", "env", "rows"}``; ``env`` is :func:`benchmarks.env.environment`
of the latest session) and ``<section>.csv`` (the same rows). Writing merges with an existing file:
a new row replaces the row with the same case and metric, so a run can be split into several commands.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

FORMAT = "nvae_fast-bench/1"
SECTIONS = ("ops", "model")
STATUSES = ("ok", "skipped", "error")
KEY = ("section", "op", "provider", "mode", "dtype", "layout", "shape", "metric")
ENV_FIELDS = ("smoke", "device", "gpu", "copy_bw_GBps", "torch", "triton", "cuda", "git_commit", "date")
FIELDS = KEY[:7] + ("size", "shape_set", "shape_source") + KEY[7:] + (
    "unit", "p50", "p20", "p80", "n", "status", "reason", "traffic_bytes", "max_rel_err",
) + ENV_FIELDS
UNITS = {
    "time_ms": "ms",
    "bandwidth_GBps": "GB/s",
    "bandwidth_fraction": "fraction",
    "bandwidth_fraction_same_size": "fraction",
    "copy_same_size_GBps": "GB/s",
    "host_ms": "ms",
    "graph_ms": "ms",
    "peak_mem_MiB": "MiB",
    "saved_MiB": "MiB",
    "images_per_s": "images/s",
    "max_batch": "images",
}


def make_row(case: dict, env: dict, metric: str, values=None, *, n: int = 0, status: str = "ok", reason: str = "", **extra) -> dict:
    """One row: ``case`` holds the case columns, ``values`` is ``(p20, p50, p80)``, a single number, or
    ``None`` (skipped/error rows)."""
    if values is None:
        p20 = p50 = p80 = None
    elif isinstance(values, (int, float)):
        p20 = p50 = p80 = float(values)
    else:
        p20, p50, p80 = (float(v) for v in values)
    row = {f: None for f in FIELDS}
    row.update(case)
    row.update({k: env[k] for k in ENV_FIELDS})
    row.update(metric=metric, unit=UNITS[metric], p20=p20, p50=p50, p80=p80, n=n, status=status, reason=reason)
    row.update(extra)
    return row


def problems(row: dict) -> list[str]:
    """What is wrong with ``row`` (empty when it is well-formed)."""
    out = []
    missing = [f for f in FIELDS if f not in row]
    if missing:
        return [f"missing fields {missing}"]
    extra = sorted(set(row) - set(FIELDS))
    if extra:
        out.append(f"unknown fields {extra}")
    for f in ("op", "provider", "mode", "dtype", "layout", "shape", "gpu", "date", "torch"):
        if not isinstance(row[f], str) or not row[f]:
            out.append(f"{f} must be a non-empty string, got {row[f]!r}")
    if row["section"] not in SECTIONS:
        out.append(f"section must be one of {SECTIONS}, got {row['section']!r}")
    if row["metric"] not in UNITS or row["unit"] != UNITS.get(row["metric"]):
        out.append(f"metric/unit {row['metric']!r}/{row['unit']!r} unknown")
    if row["status"] not in STATUSES:
        out.append(f"status must be one of {STATUSES}, got {row['status']!r}")
    if not isinstance(row["smoke"], bool):
        out.append(f"smoke must be a bool, got {row['smoke']!r}")
    values = (row["p20"], row["p50"], row["p80"])
    if row["status"] == "ok":
        if not all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in values):
            out.append(f"an ok row needs finite non-negative p20/p50/p80, got {values}")
        elif not min(values[0], values[2]) <= values[1] <= max(values[0], values[2]):
            out.append(f"p50 must lie between p20 and p80, got {values}")
        if not isinstance(row["n"], int) or row["n"] < 1:
            out.append(f"an ok row needs n >= 1, got {row['n']!r}")
    else:
        if any(v is not None for v in values):
            out.append(f"a {row['status']} row has no values, got {values}")
        if not row["reason"]:
            out.append(f"a {row['status']} row needs a reason")
    if not (isinstance(row["copy_bw_GBps"], float) and row["copy_bw_GBps"] > 0):
        out.append(f"copy_bw_GBps must be a positive float, got {row['copy_bw_GBps']!r}")
    return out


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def load_section(path: Path) -> tuple[dict, list[dict]]:
    """``(env, rows)`` of one ``<section>.json``."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}, got {data.get('format')!r}")
    return data["env"], data["rows"]


def load_dir(directory: Path) -> tuple[dict, list[dict]]:
    """``(env of the latest section file, all rows)`` of one results directory."""
    env, rows = {}, []
    for section in SECTIONS:
        path = Path(directory) / f"{section}.json"
        if path.exists():
            section_env, section_rows = load_section(path)
            if not env or section_env["date"] > env["date"]:
                env = section_env
            rows += section_rows
    if not rows:
        raise FileNotFoundError(f"{directory}: no result files ({', '.join(s + '.json' for s in SECTIONS)})")
    return env, rows


def write(directory: Path, env: dict, rows: list[dict]) -> list[Path]:
    """Merge ``rows`` into ``directory``'s section files (see module doc); returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for section in SECTIONS:
        new = [r for r in rows if r["section"] == section]
        if not new:
            continue
        path = directory / f"{section}.json"
        merged = {_key(r): r for r in (load_section(path)[1] if path.exists() else [])}
        merged.update({_key(r): r for r in new})
        ordered = list(merged.values())
        path.write_text(json.dumps({"format": FORMAT, "env": env, "rows": ordered}, indent=1) + "\n")
        csv_path = directory / f"{section}.csv"
        with csv_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(ordered)
        written += [path, csv_path]
    return written
