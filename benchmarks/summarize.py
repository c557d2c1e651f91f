"""Write the Markdown summary of benchmark results (``benchmarks/results/SUMMARY.md``).

Usage::

    python -m benchmarks.summarize                      # every GPU result dir under benchmarks/results
    python -m benchmarks.summarize DIR [DIR ...] --out FILE [--include-smoke]

For each results directory (newest first): the environment (GPU, copy bandwidth, versions, commit),
the "target vs measured" table (:mod:`benchmarks.targets`), the backend order for ``auto`` that the
rows decide (:mod:`benchmarks.auto_order`), per op and dtype a table of forward+backward
p50 times at the preset and target shapes with each provider's speedup over the eager reference and its
fraction of the copy bandwidth, the whole-model table, links to the plots made by
:mod:`benchmarks.plot`, and every provider that was skipped or failed with its reason. Smoke
directories are left out unless ``--include-smoke`` (their numbers are no measurements).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

from . import auto_order, results, targets
from .providers import PROVIDERS, implementation
from .settings import DEFAULT_OUT, MODEL_PROVIDERS
from .timing import TIMING_METHOD

HERE = Path(__file__).resolve().parent
SMOKE_WARNING = "**SMOKE RUN: tiny shapes, one run each, on whatever device CI had. These numbers are no measurements.**"


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _index(rows: list[dict]) -> dict:
    return {(r["op"], r["provider"], r["mode"], r["dtype"], r["shape"], r["metric"]): r for r in rows}


def _env_lines(env: dict) -> list[str]:
    return [
        f"- GPU: **{env['gpu']}**, measured device-to-device copy bandwidth **{env['copy_bw_GBps']:.4g} GB/s**",
        f"- driver {env.get('driver', 'unknown')}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"Python {env['python']}",
        f"- git commit `{env['git_commit']}`, date {env['date']}",
    ]


def _target_lines(rows: list[dict]) -> list[str]:
    verdicts = {(v.target.name, v.provider, v.dtype): v for v in targets.evaluate_all(rows)}
    columns = [(p, d) for p in targets.PROVIDERS for d in targets.DTYPES]
    body, missing = [], {}
    for t in targets.TARGETS:
        cells = [t.name]
        for p, d in columns:
            v = verdicts[(t.name, p, d)]
            if v.status == "not measured":
                cells.append("not measured")
                missing.setdefault(v.note, []).append(f"{t.name} / {p} / {d}")
            else:
                cells.append(f"{v.measured} **{v.status}**")
        body.append(cells)
    lines = [
        "### Target vs measured",
        "",
        "Forward+backward; the median over the target's shapes [min – max] (`benchmarks/targets.py`).",
        "",
        *_table(["target", *(f"{p} {d}" for p, d in columns)], body),
    ]
    if missing:
        lines += ["", "Not measured:"] + [f"- {why} ({len(cases)} cells)" for why, cases in missing.items()]
    return lines


# What a results directory's ``time_ms`` means, by its environment's ``timing`` (absent: the first method).
TIME_LABELS = {
    TIMING_METHOD: "p50 device time",
    None: ("p50 time, first timing method (CUDA events around each call, the L2 flush queued before the start "
           "event, so part of the host's launch work is inside; the depthwise `reference_cl` baseline ran with "
           "`cudnn.benchmark=False`)"),
}


def _op_lines(rows: list[dict], timing: str | None = TIMING_METHOD) -> list[str]:
    idx = _index(rows)
    out = []
    for op, providers in PROVIDERS.items():
        for dtype in targets.DTYPES:
            shapes = {}
            for r in rows:
                if r["op"] == op and r["dtype"] == dtype and r["shape_set"] != "sweep" and r["mode"] == "fwd+bwd":
                    shapes.setdefault(r["shape"], r["shape_set"])
            if not shapes:
                continue
            body = []
            for shape, sets in shapes.items():
                ref = idx.get((op, "reference", "fwd+bwd", dtype, shape, "time_ms"))
                cells = [f"`{shape}`", sets]
                for p in providers:
                    t = idx.get((op, p, "fwd+bwd", dtype, shape, "time_ms"))
                    if t is None or t["status"] != "ok":
                        cells.append("—" if t is None else t["status"])
                        continue
                    frac = idx.get((op, p, "fwd+bwd", dtype, shape, "bandwidth_fraction"))
                    cell = f"{t['p50']:.3g} ms"
                    if ref is not None and ref["status"] == "ok":
                        cell += f" ({ref['p50'] / t['p50']:.2f}x)"
                    if frac is not None and frac["status"] == "ok":
                        cell += f" {frac['p50']:.0%}"
                    cells.append(cell)
                body.append(cells)
            out += [f"#### {op}, {dtype}, forward+backward", "",
                    f"{TIME_LABELS.get(timing, timing)} (speedup over `reference`) and fraction of the large-copy bandwidth "
                    "(minimum-traffic model, `benchmarks/traffic.py`).", "",
                    *_table(["shape", "sets", *providers], body), "",
                    "Providers: " + "; ".join(f"`{p}` = {implementation(op, p)}" for p in providers) + ".", ""]
            out += _host_graph_lines(idx, op, dtype, shapes, providers)
    return out


def _host_graph_lines(idx: dict, op: str, dtype: str, shapes: dict, providers) -> list[str]:
    """Per shape and provider: device / host / CUDA-graph p50 ms and the fraction of a same-size copy
    (only for rows that have them: result files before these metrics have none)."""
    body = []
    for shape, sets in shapes.items():
        cells, any_new = [f"`{shape}`", sets], False
        for p in providers:
            get = {m: idx.get((op, p, "fwd+bwd", dtype, shape, m))
                   for m in ("time_ms", "host_ms", "graph_ms", "bandwidth_fraction_same_size")}
            ok = {m: r["p50"] for m, r in get.items() if r is not None and r["status"] == "ok"}
            any_new |= any(m in ok for m in ("host_ms", "graph_ms", "bandwidth_fraction_same_size"))
            if "time_ms" not in ok:
                cells.append("—")
                continue
            frac = ok.get("bandwidth_fraction_same_size")
            cells.append(f"{_fmt(ok['time_ms'])} / {_fmt(ok.get('host_ms'))} / {_fmt(ok.get('graph_ms'))}"
                         + ("" if frac is None else f" ({frac:.0%})"))
        if any_new:
            body.append(cells)
    if not body:
        return []
    return [f"Device / host / CUDA-graph p50 ms (fraction of a copy of the same bytes), {op}, {dtype}, "
            "forward+backward:", "", *_table(["shape", "sets", *providers], body), ""]


def _model_lines(rows: list[dict]) -> list[str]:
    idx = _index(rows)
    cases = sorted({(r["shape"], r["dtype"]) for r in rows if r["op"] == "train_step"})
    if not cases:
        return []
    body = []
    for shape, dtype in cases:
        for p in MODEL_PROVIDERS:
            get = {m: idx.get(("train_step", p, "step", dtype, shape, m)) for m in
                   ("images_per_s", "time_ms", "peak_mem_MiB", "max_batch")}
            if all(v is None for v in get.values()):
                continue
            cells = [f"`{shape}`", dtype, p]
            for m, v in get.items():
                if v is None:
                    cells.append("—")
                elif v["status"] != "ok":
                    cells.append(v["status"])
                elif m == "images_per_s":
                    cells.append(f"{v['p50']:.4g} [{v['p20']:.4g} – {v['p80']:.4g}]")
                else:
                    cells.append(_fmt(v["p50"], ".4g"))
            body.append(cells)
    header = ["preset-batch", "dtype", "provider", "images/s p50 [p20 – p80]", "step ms", "peak MiB", "max batch"]
    return ["### Whole model: one training step", "", *_table(header, body), ""]


def _skip_lines(rows: list[dict]) -> list[str]:
    reasons = defaultdict(int)
    for r in rows:
        if r["status"] != "ok":
            reasons[(r["status"], r["op"], r["provider"], r["reason"])] += 1
    if not reasons:
        return []
    body = [[s, op, p, reason.replace("|", "/"), str(n)] for (s, op, p, reason), n in sorted(reasons.items())]
    return ["### Skipped and failed", "", *_table(["status", "op", "provider", "reason", "rows"], body), ""]


def _plot_lines(directory: Path, summary_path: Path) -> list[str]:
    plots = sorted((directory / "plots").glob("*.png"))
    if not plots:
        return []
    rel = [Path(os.path.relpath(p, summary_path.parent)).as_posix() for p in plots]
    return ["### Plots", "", *[f"- [{p.stem}]({r})" for p, r in zip(plots, rel)], ""]


def summarize_dir(directory: Path, summary_path: Path) -> list[str]:
    """The Markdown section of one results directory."""
    env, rows = results.load_dir(directory)
    lines = [f"## {directory.name}", ""]
    if env["smoke"]:
        lines += [SMOKE_WARNING, ""]
    lines += _env_lines(env) + [""]
    lines += _target_lines(rows) + [""]
    lines += ["### auto's backend order", "",
              "The faster fused backend per op by these rows (`benchmarks/auto_order.py`); "
              "`nvae_fast.backend.AUTO_ORDER` should read so.", "",
              *auto_order.table_lines(auto_order.decide(rows)), ""]
    lines += ["### Ops", ""] + (_op_lines(rows, env.get("timing")) or ["No preset or target shapes in this run (the sweep is plotted).", ""])
    lines += _model_lines(rows) + _plot_lines(directory, summary_path) + _skip_lines(rows)
    return lines


def result_dirs(root: Path, include_smoke: bool) -> list[Path]:
    """Result directories under ``root``, newest first."""
    dirs = [d for d in Path(root).iterdir() if any((d / f"{s}.json").exists() for s in results.SECTIONS)]
    if not include_smoke:
        dirs = [d for d in dirs if not d.name.endswith("-smoke")]
    return sorted(dirs, key=lambda d: d.name, reverse=True)


def write_summary(dirs: list[Path], out: Path) -> Path:
    """Write the summary of ``dirs`` to ``out``."""
    readme = HERE / "README.md"
    if out.resolve().is_relative_to(HERE.parent):
        readme_ref = f"[benchmarks/README.md]({Path(os.path.relpath(readme, out.resolve().parent)).as_posix()})"
    else:
        readme_ref = "`benchmarks/README.md`"
    lines = [
        "# nvae_fast benchmark summary",
        "",
        f"Generated by `python -m benchmarks.summarize` from the result files; how the numbers are measured is in {readme_ref}.",
        "",
    ]
    if not dirs:
        lines += ["No GPU results yet. On a CUDA machine run `python -m benchmarks.run --out benchmarks/results` "
                  "(see the README), then commit the new directory and this file.", ""]
    for d in dirs:
        lines += summarize_dir(d, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="results directories (default: all under --root)")
    parser.add_argument("--root", type=Path, default=DEFAULT_OUT, help="results root")
    parser.add_argument("--out", type=Path, default=None, help="summary file (default: <root>/SUMMARY.md)")
    parser.add_argument("--include-smoke", action="store_true", help="also summarise smoke directories")
    args = parser.parse_args(argv)
    dirs = args.dirs or result_dirs(args.root, args.include_smoke)
    path = write_summary(dirs, args.out or args.root / "SUMMARY.md")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
