"""Test configuration shared by every test directory.

Without a CUDA device the Triton kernels run in Triton's CPU interpreter and the CUDA kernels in their
CPU emulation (:mod:`nvae_fast.cuda.emulation`, built on first use): ``TRITON_INTERPRET=1`` and
``NVAE_FAST_CUDA_EMULATE=1`` must be set before nvae_fast probes its backends, so they are set here,
first thing.
"""

import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NVAE_FAST_CUDA_EMULATE", "1")

import pytest  # noqa: E402
import torch._functorch.config  # noqa: E402

# A custom op whose outputs alias its inputs or each other fails the AOT checks in every run, as it does
# where the CI variable is set (elsewhere torch only warns).
torch._functorch.config.error_on_custom_op_aliasing = True

import nvae_fast  # noqa: E402

pytest_plugins = ("tests.backend_gate",)

# Under pytest-xdist the workers share the cores: torch's default of one thread per core in every worker
# would oversubscribe them (N workers, N threads each, on N cores), which makes the suite much slower, so
# each worker gets its share of the cores.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s on a 2-core CPU machine")
    config.addinivalue_line("markers", "xdist_group(name): tests that pytest-xdist --dist loadgroup keeps in one worker")


def pytest_runtest_setup(item):
    # A time-boxed run (the GPU session's test step) sets NVAE_FAST_TEST_DEADLINE, a Unix time: tests
    # that would start after it are skipped, so that pytest still ends normally and writes its summary.
    deadline = os.environ.get("NVAE_FAST_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("NVAE_FAST_TEST_DEADLINE reached before this test started")


@pytest.fixture
def cuda_emulation_off(monkeypatch):
    """The backends as without NVAE_FAST_CUDA_EMULATE: the cuda kernel sets call the real extension."""
    monkeypatch.setenv("NVAE_FAST_CUDA_EMULATE", "0")
    nvae_fast.reset()


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Every test starts from the default selection with no recorded fallbacks, and leaves it so."""
    nvae_fast.reset()
    yield
    nvae_fast.reset()
