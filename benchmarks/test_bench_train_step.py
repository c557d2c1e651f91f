"""Whole-model benchmark: one training step per (preset, provider, dtype) (see :mod:`benchmarks.train_step`)."""

from . import train_step
from .test_bench_ops import run_once


def test_train_step(step_case, benchmark, bench_settings, bench_env, bench_rows):
    preset, provider, dtype = step_case
    s = bench_settings
    run_once(benchmark, bench_rows, f"train_step {preset} {dtype}", train_step.run_step_case, preset, provider, dtype,
             smoke=s.smoke, device=s.device, env=bench_env, budget_s=s.budget_s, max_batch=s.max_batch)
