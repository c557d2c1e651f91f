"""pytest plugin: the run fails when a backend it must test is unavailable, and says how many tests ran
per backend.

``NVAE_FAST_REQUIRE_BACKENDS`` (comma-separated names; ``make test`` sets ``triton,cuda``) lists the
backends this run must exercise. On a machine without a GPU they are the Triton interpreter and the CUDA
emulation: when one cannot run (a numpy that the interpreter refuses, an emulation that does not build),
their tests would all be skipped and the run would pass having checked nothing, so the session stops at
once with exit status :data:`EXIT_MISSING_BACKEND` and the backend's reason instead.

The terminal summary counts the outcomes per backend. A test belongs to a backend when its parameter id
names it (``test_x[triton-float32-...]``), else by folder: ``tests/kernels`` runs Triton kernels,
``tests/cuda`` the CUDA kernels.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict

import pytest

import nvae_fast

ENV = "NVAE_FAST_REQUIRE_BACKENDS"
EXIT_MISSING_BACKEND = 4
_FOLDER_BACKEND = {"tests/kernels/": "triton", "tests/cuda/": "cuda"}


def required_backends() -> list[str]:
    return [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]


def missing_backends(required: list[str]) -> dict[str, str]:
    """``{name: why}`` for every required backend that is unavailable (or unknown)."""
    info = nvae_fast.backend_info()["backends"]
    return {
        name: info[name]["reason"] if name in info else f"unknown backend (choose from {sorted(info)})"
        for name in required
        if name not in info or not info[name]["available"]
    }


def backend_of(nodeid: str) -> str | None:
    """The backend a test exercises, from its parameter id or its folder (see module doc)."""
    params = re.search(r"\[(.*)\]$", nodeid)
    if params:
        for token in re.split(r"[-_]", params.group(1)):
            if token in nvae_fast.backend.BACKENDS:
                return token
    for folder, name in _FOLDER_BACKEND.items():
        if folder in nodeid.replace("\\", "/"):
            return name
    return None


class BackendGate:
    """The gate (at session start) and the per-backend counts (in the terminal summary)."""

    def __init__(self) -> None:
        self.counts: defaultdict[str, Counter] = defaultdict(Counter)

    def pytest_sessionstart(self, session):
        missing = missing_backends(required_backends())
        if missing:
            why = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
            pytest.exit(f"{ENV} names backends that cannot run here, so their tests would be skipped: {why}",
                        returncode=EXIT_MISSING_BACKEND)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            name = backend_of(report.nodeid)
            if name is not None:
                self.counts[name][report.outcome] += 1

    def pytest_terminal_summary(self, terminalreporter):
        if not self.counts:
            return
        terminalreporter.section("tests per backend")
        for name in sorted(self.counts):
            c = self.counts[name]
            terminalreporter.write_line(f"{name}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")


def pytest_configure(config):
    config.pluginmanager.register(BackendGate(), "nvae_fast_backend_gate")
