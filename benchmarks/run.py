"""One command: run the benchmark suites, then plot and summarise.

    python -m benchmarks.run --out benchmarks/results [--sections ops,model] [--ops ...] [--providers ...]
                             [--dtypes ...] [--sets ...] [--presets ...] [--budget S] [--no-max-batch]
                             [--max-minutes M] [--smoke] [-- extra pytest arguments, e.g. -k bn_swish]

Runs ``pytest`` on ``benchmarks/test_bench_ops.py`` (section ``ops``) and/or
``benchmarks/test_bench_train_step.py`` (section ``model``) with the matching ``--bench-*`` options,
which write ``<out>/<date>-<gpu>/{ops,model}.{json,csv}``; then :mod:`benchmarks.plot` draws that
directory's plots and :mod:`benchmarks.summarize` rewrites ``<out>/SUMMARY.md`` (for a smoke run:
``<out>/<date>-<device>-smoke/SUMMARY.md``). Runs append to the day's directory, replacing rows of the
same cases, so a long run can be split into several commands. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

from . import plot, results, summarize
from .settings import DEFAULT_BUDGET_S, DEFAULT_OUT

HERE = Path(__file__).resolve().parent
SECTION_FILES = {"ops": HERE / "test_bench_ops.py", "model": HERE / "test_bench_train_step.py"}


def pytest_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The pytest command line for ``args`` (see module doc)."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTION_FILES]
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from {list(SECTION_FILES)}")
    argv = [str(SECTION_FILES[s]) for s in sections]
    argv += ["-p", "no:cacheprovider", "-q", "--bench-out", str(args.out), "--bench-budget", str(args.budget)]
    for name in ("ops", "providers", "dtypes", "sets", "presets"):
        value = getattr(args, name)
        if value:
            argv += [f"--bench-{name}", value]
    if args.no_max_batch:
        argv.append("--bench-no-max-batch")
    if args.max_minutes is not None:
        argv += ["--bench-max-minutes", str(args.max_minutes)]
    if args.smoke:
        argv.append("--smoke")
    return argv + extra


def written_dirs(out: Path, since: float) -> list[Path]:
    """Result directories under ``out`` whose files changed after ``since`` (a ``time.time()``)."""
    return sorted(
        {p.parent for s in results.SECTIONS for p in Path(out).glob(f"*/{s}.json") if p.stat().st_mtime >= since}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root")
    parser.add_argument("--sections", default="ops,model", help="ops and/or model")
    parser.add_argument("--ops", default="", help="comma-separated ops (default all)")
    parser.add_argument("--providers", default="", help="comma-separated providers (default all)")
    parser.add_argument("--dtypes", default="", help="float32 and/or bfloat16 (default both)")
    parser.add_argument("--sets", default="", help="op shape sets: cifar10,celeba64,celebahq256,sweep,target")
    parser.add_argument("--presets", default="", help="training-step presets: cifar10,celeba64")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds of timed runs per measurement")
    parser.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="skip the cases that would start after this many minutes (results so far are kept)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one run each (CI; no timing claims)")
    parser.add_argument("--no-report", action="store_true", help="do not plot or summarise afterwards")
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, extra = (argv, []) if "--" not in argv else (argv[: argv.index("--")], argv[argv.index("--") + 1 :])
    args = parser.parse_args(argv)
    start = time.time()
    status = pytest.main(pytest_args(args, extra))
    if args.no_report:
        return int(status)
    dirs = written_dirs(args.out, start)
    for d in dirs:
        for path in plot.plot_dir(d):
            print(f"wrote {path}")
    if args.smoke:
        for d in dirs:
            print(f"wrote {summarize.write_summary([d], d / 'SUMMARY.md')}")
    else:
        print(f"wrote {summarize.write_summary(summarize.result_dirs(args.out, False), args.out / 'SUMMARY.md')}")
    return int(status)


if __name__ == "__main__":
    raise SystemExit(main())
