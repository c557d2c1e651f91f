"""Plots (PNG, matplotlib) of one results directory.

Usage: ``python -m benchmarks.plot DIR [--out DIR/plots]``. Writes:

- ``sweep-<op>-<dtype>.png``: for the ``sweep`` shapes, p50 time (band: p20-p80) and fraction of the
  copy bandwidth against size, one line per provider, one column per mode (fwd, bwd, fwd+bwd);
- ``memory-<op>.png``: peak memory of forward+backward (CUDA) and bytes saved for backward against
  size, one line per provider and dtype;
- ``presets-<op>-<dtype>.png``: forward+backward speedup over the eager reference at every preset and
  target shape, one bar per provider;
- ``model.png``: training-step images/s and peak memory per preset, dtype and provider.

Sizes are elements of x (activation ops) or of all weights (power iteration). Titles carry the GPU
name, and "SMOKE" for smoke runs.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import results  # noqa: E402
from .providers import PROVIDERS  # noqa: E402
from .settings import MODEL_PROVIDERS  # noqa: E402
from .traffic import MODES  # noqa: E402

DPI = 110


def _title(env: dict, text: str) -> str:
    return f"{text} — {env['gpu']}" + (" — SMOKE (no timing claims)" if env["smoke"] else "")


def _save(fig, path: Path) -> Path:
    """Lay out, write (PNG at :data:`DPI`) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _ok(rows, **match):
    return [r for r in rows if r["status"] == "ok" and all(r[k] == v for k, v in match.items())]


def _series(rows: list[dict]) -> tuple[list, list, list, list]:
    rows = sorted(rows, key=lambda r: r["size"])
    return [r["size"] for r in rows], [r["p50"] for r in rows], [r["p20"] for r in rows], [r["p80"] for r in rows]


def plot_sweep(rows: list[dict], env: dict, op: str, dtype: str, out: Path) -> Path | None:
    sweep = [r for r in rows if r["op"] == op and r["dtype"] == dtype and "sweep" in r["shape_set"].split("+")]
    if not _ok(sweep):
        return None
    fig, axes = plt.subplots(2, len(MODES), figsize=(5 * len(MODES), 8), squeeze=False)
    for col, mode in enumerate(MODES):
        for row_i, (metric, label, scale) in enumerate((("time_ms", "time [ms]", 1.0), ("bandwidth_fraction", "% of copy bandwidth", 100.0))):
            ax = axes[row_i][col]
            for provider in PROVIDERS[op]:
                x, p50, p20, p80 = _series(_ok(sweep, provider=provider, mode=mode, metric=metric))
                if not x:
                    continue
                ax.plot(x, [v * scale for v in p50], marker="o", label=provider)
                ax.fill_between(x, [v * scale for v in p20], [v * scale for v in p80], alpha=0.2)
            ax.set_xscale("log")
            if metric == "time_ms":
                ax.set_yscale("log")
            ax.set_title(f"{mode}")
            ax.set_xlabel("elements" if op != "power_iteration" else "weight elements")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(_title(env, f"{op} {dtype}: size sweep"))
    return _save(fig, out / f"sweep-{op}-{dtype}.png")


def plot_memory(rows: list[dict], env: dict, op: str, out: Path) -> Path | None:
    panels = (("peak_mem_MiB", "fwd+bwd", "peak memory of fwd+bwd [MiB]"), ("saved_MiB", "fwd", "saved for backward [MiB]"))
    if not any(_ok(rows, op=op, metric=m) for m, _, _ in panels):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    for ax, (metric, mode, label) in zip(axes[0], panels):
        data = _ok(rows, op=op, metric=metric, mode=mode)
        groups = defaultdict(list)
        for r in data:
            groups[(r["provider"], r["dtype"])].append(r)
        for (provider, dtype), group in sorted(groups.items()):
            x, p50, _, _ = _series(group)
            ax.plot(x, p50, marker="o", linestyle="-" if dtype == "float32" else "--", label=f"{provider} {dtype}")
        if not data:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize="small")
        ax.set_xlabel("elements")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(_title(env, f"{op}: memory"))
    return _save(fig, out / f"memory-{op}.png")


def plot_presets(rows: list[dict], env: dict, op: str, dtype: str, out: Path) -> Path | None:
    times = [r for r in _ok(rows, op=op, dtype=dtype, mode="fwd+bwd", metric="time_ms") if r["shape_set"] != "sweep"]
    ref = {r["shape"]: r["p50"] for r in times if r["provider"] == "reference"}
    shapes = sorted({r["shape"] for r in times if r["shape"] in ref}, key=lambda s: next(r["size"] for r in times if r["shape"] == s))
    if not shapes:
        return None
    providers = [p for p in PROVIDERS[op] if any(r["provider"] == p for r in times)]
    width = 0.8 / max(len(providers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(shapes) + 3), 4.5))
    for i, provider in enumerate(providers):
        t = {r["shape"]: r["p50"] for r in times if r["provider"] == provider}
        xs = [j + i * width for j, s in enumerate(shapes) if s in t]
        ax.bar(xs, [ref[s] / t[s] for s in shapes if s in t], width=width, label=provider)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=35, ha="right", fontsize="small")
    ax.set_ylabel("speedup over eager reference (fwd+bwd)")
    ax.legend(fontsize="small")
    ax.set_title(_title(env, f"{op} {dtype}: preset shapes"))
    return _save(fig, out / f"presets-{op}-{dtype}.png")


def plot_model(rows: list[dict], env: dict, out: Path) -> Path | None:
    data = _ok(rows, op="train_step")
    if not data:
        return None
    cases = sorted({(r["shape"], r["dtype"]) for r in data})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, label) in zip(axes, (("images_per_s", "images/s"), ("peak_mem_MiB", "peak memory [MiB]"))):
        providers = [p for p in MODEL_PROVIDERS if any(r["provider"] == p and r["metric"] == metric for r in data)]
        width = 0.8 / max(len(providers), 1)
        for i, provider in enumerate(providers):
            v = {(r["shape"], r["dtype"]): r["p50"] for r in data if r["provider"] == provider and r["metric"] == metric}
            xs = [j + i * width for j, c in enumerate(cases) if c in v]
            ax.bar(xs, [v[c] for c in cases if c in v], width=width, label=provider)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], [f"{s}\n{d}" for s, d in cases], fontsize="small")
        ax.set_ylabel(label)
        if providers:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(_title(env, "training step"))
    return _save(fig, out / "model.png")


def plot_dir(directory: Path, out: Path | None = None) -> list[Path]:
    """Every plot of ``directory`` into ``out`` (default ``directory/plots``); returns the files."""
    env, rows = results.load_dir(directory)
    out = Path(out or Path(directory) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    dtypes = sorted({r["dtype"] for r in rows})
    made = []
    for op in PROVIDERS:
        made += [plot_sweep(rows, env, op, d, out) for d in dtypes]
        made.append(plot_memory(rows, env, op, out))
        made += [plot_presets(rows, env, op, d, out) for d in dtypes]
    made.append(plot_model(rows, env, out))
    return [p for p in made if p is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a results directory (<date>-<gpu>)")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: DIR/plots)")
    args = parser.parse_args(argv)
    for path in plot_dir(args.dir, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
