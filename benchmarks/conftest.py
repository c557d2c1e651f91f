"""pytest wiring of the benchmark suites: options, case parametrisation, and the result files.

Every test appends its rows (:mod:`benchmarks.results`) to the session's collector; they are merged into
``<--bench-out>/<date>-<gpu>[-smoke]/{ops,model}.{json,csv}`` every :data:`FLUSH_EVERY_S` seconds, after
every training-step case and at the end of the session (so a killed run keeps what it measured), and the
files are printed in the terminal summary. With ``--bench-max-minutes`` the cases that would start after
the deadline are skipped.
"""

from __future__ import annotations

import time

import pytest
import torch

from . import env as E
from . import results, settings, shapes
from .providers import PROVIDERS
from .settings import MODEL_PROVIDERS

_SETTINGS = pytest.StashKey()
_ROWS = pytest.StashKey()
_ENV = pytest.StashKey()
_WRITTEN = pytest.StashKey()
_CLOCK = pytest.StashKey()
FLUSH_EVERY_S = 30.0


def pytest_addoption(parser):
    settings.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    s = settings.from_options(config.getoption)
    config.stash[_SETTINGS] = s
    config.stash[_ROWS] = []
    config.stash[_CLOCK] = {"start": time.monotonic(), "flushed": time.monotonic()}
    if s.smoke:
        if hasattr(config.option, "benchmark_disable"):
            config.option.benchmark_disable = True  # pytest-benchmark runs each case once, prints no table
        if s.device.type == "cpu":
            torch.set_num_threads(1)  # smoke runs time nothing; one thread avoids oversubscribing shared CI cores


def op_cases(s: settings.Settings) -> list[tuple]:
    """(shape, provider, dtype) for every op case the settings select: shapes in plan order, then
    providers in the order the settings list them (a short session measures its baselines first)."""
    return [
        (shape, provider, dtype)
        for shape in shapes.plan(s.smoke, s.sets, s.ops)
        for provider in s.providers
        if provider in PROVIDERS[shape.op]
        for dtype in s.dtypes
    ]


def step_cases(s: settings.Settings) -> list[tuple]:
    """(preset, provider, dtype) for every training-step case the settings select, providers in the
    settings' order."""
    return [(p, prov, d) for p in s.presets for prov in s.providers if prov in MODEL_PROVIDERS for d in s.dtypes]


def pytest_generate_tests(metafunc):
    s = metafunc.config.stash[_SETTINGS]
    if "op_case" in metafunc.fixturenames:
        cases = op_cases(s)
        ids = [f"{shape.op}-{shape.label}-{provider}-{dtype}" for shape, provider, dtype in cases]
        metafunc.parametrize("op_case", cases, ids=ids)
    if "step_case" in metafunc.fixturenames:
        cases = step_cases(s)
        metafunc.parametrize("step_case", cases, ids=["-".join(c) for c in cases])


@pytest.fixture(scope="session")
def bench_settings(pytestconfig) -> settings.Settings:
    return pytestconfig.stash[_SETTINGS]


@pytest.fixture(scope="session")
def bench_env(pytestconfig, bench_settings) -> dict:
    """The environment of this session, copy bandwidth measured once."""
    env = E.environment(bench_settings.device, bench_settings.smoke)
    pytestconfig.stash[_ENV] = env
    return env


@pytest.fixture(scope="session")
def bench_rows(pytestconfig) -> list:
    return pytestconfig.stash[_ROWS]


def _flush(config) -> None:
    rows, env = config.stash[_ROWS], config.stash.get(_ENV, None)
    if rows and env is not None:
        directory = config.stash[_SETTINGS].out / E.results_dir_name(env)
        config.stash[_WRITTEN] = results.write(directory, env, rows)
    config.stash[_CLOCK]["flushed"] = time.monotonic()


def pytest_runtest_setup(item):
    s, clock = item.config.stash[_SETTINGS], item.config.stash[_CLOCK]
    if s.max_minutes is not None and time.monotonic() - clock["start"] > 60 * s.max_minutes:
        pytest.skip(f"--bench-max-minutes {s.max_minutes} reached before this case started")


def pytest_runtest_teardown(item):
    # A training-step case takes seconds to minutes: its rows are written at once, so that a command
    # killed during the next case (a torch.compile of the whole model, say) keeps them.
    if "step_case" in item.fixturenames or time.monotonic() - item.config.stash[_CLOCK]["flushed"] > FLUSH_EVERY_S:
        _flush(item.config)


def pytest_sessionfinish(session, exitstatus):
    _flush(session.config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    s = config.stash[_SETTINGS]
    written = config.stash.get(_WRITTEN, [])
    if s.smoke:
        terminalreporter.write_line(f"nvae_fast benchmarks: SMOKE mode ({s.smoke_reason}): no timing claims")
    for path in written:
        terminalreporter.write_line(f"nvae_fast benchmarks: wrote {path}")
