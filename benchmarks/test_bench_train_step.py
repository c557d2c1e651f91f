"""Whole-model benchmark: one training step per (preset, provider, dtype) (see :mod:`benchmarks.train_step`)."""

from . import train_step
from .test_bench_ops import _report


def test_train_step(step_case, benchmark, bench_settings, bench_env, bench_rows):
    preset, provider, dtype = step_case
    s = bench_settings
    benchmark.group = f"train_step {preset} {dtype}"
    rows = benchmark.pedantic(
        train_step.run_step_case,
        args=(preset, provider, dtype),
        kwargs=dict(smoke=s.smoke, device=s.device, env=bench_env, budget_s=s.budget_s, max_batch=s.max_batch),
        rounds=1,
        iterations=1,
    )
    bench_rows.extend(rows)
    _report(benchmark, rows)
