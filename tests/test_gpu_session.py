"""The prepared GPU session (``scripts/gpu_checks.sh session``) and what it relies on, checked without a GPU:
its plan fits the deadline in the required order, its op shapes come from a cache that matches the
model, benchmark cases run in the order their providers are listed, and the build finds ``nvcc`` on
``PATH``."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
import torch

from benchmarks import conftest as bench_conftest
from benchmarks import model_shapes, settings, shapes

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_checks.sh"
STEP_ORDER = [
    "build", "bench-power", "bench-dw", "bench-bn-se", "bench-compile", "bench-model", "probes", "test", "memcheck",
]


def _plan(deadline: int) -> tuple[list[tuple[str, int, int, int]], str, int]:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "session", "--plan"], capture_output=True, text=True,
        env={**os.environ, "GPU_SESSION_S": str(deadline)},
    )
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["step", "cap", "ends_at", "left_after"], proc.stdout
    steps = [(n, int(c), int(e), int(left)) for n, c, e, left in (line.split() for line in lines[1:] if len(line.split()) == 4)]
    return steps, proc.stdout + proc.stderr, proc.returncode


@pytest.mark.parametrize("deadline", [480, 510, 600])
def test_session_plan_fits_its_deadline_in_the_required_order(deadline):
    steps, text, rc = _plan(deadline)
    assert rc == 0, text
    names = [s[0] for s in steps]
    assert names == [n for n in STEP_ORDER if n in names], text
    assert names[:8] == STEP_ORDER[:8], text
    assert sum(cap for _, cap, _, _ in steps) <= deadline, text
    assert steps[-1][3] >= 0, text
    caps = dict((n, c) for n, c, _, _ in steps)
    if "memcheck" in caps:
        assert caps["memcheck"] >= 90, text
    else:
        assert "memcheck left out" in text, text


def test_session_plan_at_the_default_deadline_leaves_memcheck_out_and_says_so():
    steps, text, rc = _plan(480)
    assert rc == 0 and "memcheck" not in [s[0] for s in steps]
    assert "memcheck left out: 0 s left after the other steps, it needs 90" in text
    steps, text, _ = _plan(600)
    assert steps[-1][:2] == ("memcheck", 120)  # 600 - 480


def test_session_plan_over_the_deadline_is_an_error():
    _, text, rc = _plan(300)
    assert rc != 0 and "plan error: the caps add up to 480 s, over the deadline of 300 s" in text


@pytest.mark.xdist_group("model_shapes_cache")
def test_cached_preset_shapes_match_the_models():
    """The committed cache is what the models' hooks record today (rebuild: ``python -m
    benchmarks.model_shapes --write``)."""
    for name in shapes.PRESETS:
        cached = model_shapes.cached_shapes(name)
        assert cached is not None, f"{name} missing from {model_shapes.CACHE}"
        built = model_shapes.model_preset_shapes(name, torch.device("cpu"))
        assert [s.key for s in cached] == [s.key for s in built], (
            f"{model_shapes.CACHE.name} is stale for {name}: run python -m benchmarks.model_shapes --write"
        )
        assert all(s.sets == (name,) and "cached in preset_shapes.json" in s.source for s in cached)


def test_preset_shapes_read_the_cache_without_building_a_model(monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(model_shapes, "build_model", no_model)
    found = model_shapes.preset_shapes("cifar10", torch.device("cpu"))
    assert [s.op for s in found].count("power_iteration") == 1
    assert len(next(s for s in found if s.op == "power_iteration").weights) == 610
    assert model_shapes.cached_shapes("cifar10", tmp_path / "missing.json") is None
    # without the cache the model is asked (here: fails), then the paper's shapes are used
    fallback = model_shapes.preset_shapes("cifar10", torch.device("cpu"), use_cache=False)
    assert all(s.source.startswith("paper-config (model hooks unavailable: AssertionError") for s in fallback)


def _settings(providers: str, dtypes: str = "float32") -> settings.Settings:
    options = {"--bench-providers": providers, "--bench-dtypes": dtypes, "--bench-sets": "target",
               "--bench-ops": "depthwise_conv2d", "--bench-presets": "cifar10", "--smoke": False}
    return settings.from_options(lambda name, default: options.get(name, default))


def test_benchmark_cases_follow_the_listed_provider_order():
    s = _settings("reference,reference_cl,cuda,triton")
    cases = [(shape.label, provider) for shape, provider, _ in bench_conftest.op_cases(s)]
    first_shape = cases[0][0]
    assert [p for label, p in cases if label == first_shape] == ["reference", "reference_cl", "cuda", "triton"]
    steps = bench_conftest.step_cases(_settings("reference,cuda,triton,torch"))
    assert [p for _, p, _ in steps] == ["reference", "cuda", "triton", "torch"]


def _cuda_home_with_nvcc_at(monkeypatch, bin_dir: Path, script: str):
    """``setup.py``'s ``_cuda_home()`` with an ``nvcc`` holding ``script`` first on PATH and no CUDA_HOME."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(script)
    nvcc.chmod(0o755)
    for name in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NVAE_FAST_BUILD_CUDA", "0")
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    return runpy.run_path(str(REPO / "setup.py"))["_cuda_home"]()


def test_setup_finds_nvcc_on_path(monkeypatch, tmp_path):
    toolkit = tmp_path / "cuda-13"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    assert _cuda_home_with_nvcc_at(monkeypatch, toolkit / "bin", "#!/bin/sh\n") == str(toolkit)
    assert os.environ["CUDA_HOME"] == str(toolkit)


def test_setup_skips_an_nvcc_wrapper_outside_the_toolkit(monkeypatch, tmp_path):
    """An ``nvcc`` on PATH that is a wrapper script (as /usr/local/bin/nvcc on some images) says nothing
    about where the toolkit is: the next candidate is used."""
    home = _cuda_home_with_nvcc_at(monkeypatch, tmp_path / "bin", '#!/bin/sh\nexec /opt/elsewhere/nvcc "$@"\n')
    assert home != str(tmp_path)
    assert home == ("/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def test_tests_past_the_deadline_are_skipped_with_the_reason(tmp_path):
    (tmp_path / "test_two.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "tests.conftest",
         str(tmp_path / "test_two.py")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "NVAE_FAST_TEST_DEADLINE": "1"},
    )
    assert "2 skipped" in proc.stdout and "NVAE_FAST_TEST_DEADLINE reached" in proc.stdout, proc.stdout + proc.stderr
