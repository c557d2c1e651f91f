"""What a benchmark session runs: device, smoke mode, filters, output directory.

Smoke mode (tiny shapes, each timed once, rows marked ``smoke``; no timing claims) is on with
``--smoke``, with the environment variable ``NVAE_BENCH_SMOKE=1``, and always when no CUDA device is
present. Filters are comma-separated lists; an empty filter means everything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import shapes
from .inputs import DTYPES
from .providers import ALL_PROVIDERS

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_BUDGET_S = 0.1
MODEL_PRESETS = ("cifar10", "celeba64")
SMOKE_MODEL_PRESETS = ("tiny",)
MODEL_PROVIDERS = ("triton", "cuda", "torch", "reference", "compile")


@dataclass(frozen=True)
class Settings:
    smoke: bool
    smoke_reason: str
    device: torch.device
    out: Path
    ops: tuple[str, ...]
    providers: tuple[str, ...]
    dtypes: tuple[str, ...]
    sets: tuple[str, ...]
    presets: tuple[str, ...]
    budget_s: float
    max_batch: bool
    max_minutes: float | None


def _choices(option: str, text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return allowed
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise ValueError(f"{option}: unknown {unknown}; choose from {list(allowed)}")
    return chosen


OPTIONS = {  # name: (default, help); store_true flags default to False
    "--smoke": (False, "tiny shapes, one run each, no timing claims (CI)"),
    "--bench-out": (str(DEFAULT_OUT), "results root (a <date>-<gpu> directory is made in it)"),
    "--bench-ops": ("", f"ops to run, from {','.join(shapes.OPS)}"),
    "--bench-providers": ("", f"providers, from {','.join(ALL_PROVIDERS)}"),
    "--bench-dtypes": ("", f"dtypes, from {','.join(DTYPES)}"),
    "--bench-sets": ("", f"op shape sets, from {','.join(shapes.SETS)}"),
    "--bench-presets": ("", f"training-step presets, from {','.join(MODEL_PRESETS)}"),
    "--bench-budget": (DEFAULT_BUDGET_S, "seconds of timed runs per measurement"),
    "--bench-no-max-batch": (False, "skip the largest-batch search"),
    "--bench-max-minutes": (None, "skip the cases that would start after this many minutes (results so far are kept)"),
}


def add_options(parser) -> None:
    """Register :data:`OPTIONS` on a pytest parser."""
    group = parser.getgroup("nvae_fast benchmarks")
    for name, (default, text) in OPTIONS.items():
        if default is False:
            group.addoption(name, action="store_true", help=text)
        elif name in ("--bench-budget", "--bench-max-minutes"):
            group.addoption(name, type=float, default=default, help=text)
        else:
            group.addoption(name, default=default, help=text)


def from_options(config_getoption) -> Settings:
    """Settings from pytest's ``config.getoption`` and the environment (see module doc). Options that
    were never registered (this conftest loaded late, e.g. by ``pytest .``) take their defaults."""

    def getoption(name):
        return config_getoption(name, OPTIONS[name][0])

    cuda = torch.cuda.is_available()
    if getoption("--smoke"):
        smoke, why = True, "--smoke"
    elif os.environ.get("NVAE_BENCH_SMOKE", "0") not in ("", "0"):
        smoke, why = True, "NVAE_BENCH_SMOKE is set"
    elif not cuda:
        smoke, why = True, "no CUDA device"
    else:
        smoke, why = False, ""
    all_providers = ALL_PROVIDERS + tuple(p for p in MODEL_PROVIDERS if p not in ALL_PROVIDERS)
    return Settings(
        smoke=smoke,
        smoke_reason=why,
        device=torch.device("cuda" if cuda else "cpu"),
        out=Path(getoption("--bench-out")),
        ops=_choices("--bench-ops", getoption("--bench-ops"), shapes.OPS),
        providers=_choices("--bench-providers", getoption("--bench-providers"), all_providers),
        dtypes=_choices("--bench-dtypes", getoption("--bench-dtypes"), tuple(DTYPES)),
        sets=_choices("--bench-sets", getoption("--bench-sets"), shapes.SETS),
        presets=SMOKE_MODEL_PRESETS if smoke else _choices("--bench-presets", getoption("--bench-presets"), MODEL_PRESETS),
        budget_s=float(getoption("--bench-budget")),
        max_batch=not getoption("--bench-no-max-batch"),
        max_minutes=getoption("--bench-max-minutes"),
    )
