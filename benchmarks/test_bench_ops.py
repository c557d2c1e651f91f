"""Per-op benchmarks: every (shape, provider, dtype) case is one test (see :mod:`benchmarks.measure`).

The CUDA-event statistics are the results (files written by ``conftest.py``, also in pytest-benchmark's
``extra_info``); pytest-benchmark's own timing of the test is the wall time of the whole measurement
loop (warm-up, flushes, all modes) and means nothing by itself.
"""

import pytest

from . import measure, results


def run_once(benchmark, bench_rows, group, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` (which measures a case and returns its rows) once under pytest-benchmark's
    ``group``, keep its rows for the result files and report them: a failed row fails the test, a
    skipped timing skips it."""
    benchmark.group = group
    rows = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=1, iterations=1)
    bench_rows.extend(rows)
    _report(benchmark, rows)


def _report(benchmark, rows):
    benchmark.extra_info.update(
        {f"{r['mode']} {r['metric']} p50": r["p50"] for r in rows if r["status"] == "ok"}
    )
    problems = [f"{r['metric']}/{r['mode']}: {p}" for r in rows for p in results.problems(r)]
    assert not problems, problems
    errors = [r["reason"] for r in rows if r["status"] == "error"]
    if errors:
        pytest.fail(errors[0])
    skipped = [r["reason"] for r in rows if r["status"] == "skipped" and r["metric"] == "time_ms"]
    if skipped:
        pytest.skip(skipped[0])


def test_op(op_case, benchmark, bench_settings, bench_env, bench_rows):
    shape, provider, dtype = op_case
    s = bench_settings
    run_once(benchmark, bench_rows, f"{shape.op} {shape.label} {dtype}", measure.run_case, shape, provider, dtype,
             smoke=s.smoke, device=s.device, env=bench_env, budget_s=s.budget_s)
