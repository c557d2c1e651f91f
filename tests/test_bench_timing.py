"""The timing logic of the benchmark suite (``benchmarks/timing.py``) against a simulated GPU.

:class:`SimGpu` models one CUDA stream with a host clock and a device clock: a launch at host time ``h``
starts on the device at ``max(h + LAUNCH_US, end of the previous work)``; an event records the device
time at its place in the stream; ``synchronize`` moves the host clock to the end of the queued work;
``Event.query()`` says whether the device has reached the event at the current host time. Ops are
functions that spend host time and launch kernels of known device time, so the tests can tell what a
measurement contains: device time only, host time, the flush, or its write-back.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import env as bench_env
from benchmarks import measure, providers, timing

CUDA = torch.device("cuda")
LAUNCH_US = 2.0
CYCLES_PER_US = 1000.0  # the simulated clock of torch.cuda._sleep


class SimGpu:
    def __init__(self):
        self.host = 0.0  # microseconds
        self.device_free = 0.0  # when the queued work ends
        self.kernels = []  # (name, start, end)
        sim = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self, stream=None):
                sim.host += 1.0
                self.t = max(sim.host, sim.device_free)

            def query(self):
                return self.t <= sim.host

            def elapsed_time(self, end):
                assert self.t is not None and end.t is not None
                assert max(self.t, end.t) <= sim.host, "event read before it completed"
                return (end.t - self.t) / 1e3

        self.Event = Event

    def launch(self, name: str, device_us: float, host_us: float = 3.0) -> None:
        self.host += host_us
        start = max(self.host + LAUNCH_US, self.device_free)
        self.device_free = start + device_us
        self.kernels.append((name, start, self.device_free))

    def synchronize(self, device=None):
        self.host = max(self.host, self.device_free)

    def perf_counter(self) -> float:
        return self.host / 1e6

    def install(self, monkeypatch) -> "SimGpu":
        monkeypatch.setattr(torch.cuda, "Event", self.Event)
        monkeypatch.setattr(torch.cuda, "synchronize", self.synchronize)
        monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: self.launch("sleep", cycles / CYCLES_PER_US))
        monkeypatch.setattr(timing.time, "perf_counter", self.perf_counter)
        monkeypatch.setattr(timing, "_cycles_per_ms", {}, raising=False)
        return self


def op(sim: SimGpu, host_us: float, device_us: float):
    """An op that spends ``host_us`` on the host (Python, dispatch) and then launches one kernel."""

    def fn(_state):
        sim.host += host_us
        sim.launch("op", device_us)

    return fn


@pytest.fixture
def sim(monkeypatch):
    s = SimGpu().install(monkeypatch)
    monkeypatch.setattr(timing, "flush_l2", lambda device: s.launch("flush", 70.0))
    return s


@pytest.mark.parametrize("host_us", [0.0, 20.0, 70.0, 200.0, 1000.0])
def test_device_time_excludes_host_work_and_flush(sim, host_us):
    """The timed interval is the op's device time, whatever its host time; with the flush queued right
    before the start event and no hold it would be max(0, host - flush) + device for a host-heavy op."""
    ms = timing.time_runs(op(sim, host_us, 10.0), device=CUDA, smoke=False, budget_s=0.0, min_reps=5, max_reps=5)
    assert len(ms) == 5
    assert ms == pytest.approx([0.010] * 5, abs=1e-6)


def test_host_time_is_reported_not_hidden(sim):
    host = timing.host_runs(op(sim, 150.0, 10.0), device=CUDA, smoke=False, reps=7)
    assert host == pytest.approx([0.153] * 7)  # 150 us of Python plus the 3 us launch
    device = timing.time_runs(op(sim, 150.0, 10.0), device=CUDA, smoke=False, budget_s=0.0, min_reps=3, max_reps=3)
    assert max(device) < min(host) / 10  # a host-bound op: the two figures differ and both are kept


def test_flush_is_not_inside_the_timed_interval(sim):
    timing.time_runs(op(sim, 5.0, 10.0), device=CUDA, smoke=False, budget_s=0.0, min_reps=4, max_reps=4)
    kernels = sim.kernels
    for i, (name, start, end) in enumerate(kernels):
        if name == "op" and i > 0 and kernels[i - 1][0] == "sleep":
            flushes = [k for k in kernels[:i] if k[0] == "flush"]
            assert flushes and flushes[-1][2] <= kernels[i - 1][1]  # the flush ended before the hold began
            assert start == kernels[i - 1][2]  # the op starts the moment the hold ends: the host was ahead


def test_a_hold_too_short_is_detected_and_lengthened(sim, monkeypatch):
    """Warm-up calls are quick, timed calls slow (e.g. a cache miss in the provider's Python): the
    first holds end before the call is queued; those runs are dropped and the hold doubled."""
    calls = {"n": 0}

    def fn(_state):
        calls["n"] += 1
        sim.host += 5.0 if calls["n"] <= 1 + timing.WARMUP_RUNS else 400.0
        sim.launch("op", 10.0)

    ms = timing.time_runs(fn, device=CUDA, smoke=False, budget_s=0.0, min_reps=3, max_reps=3)
    assert ms == pytest.approx([0.010] * 3, abs=1e-6)
    assert calls["n"] > 1 + timing.WARMUP_RUNS + 3  # some runs were repeated


def test_a_host_that_never_gets_ahead_is_an_error(sim, monkeypatch):
    monkeypatch.setattr(timing, "MAX_HOLD_RETRIES", 2)
    state = {"host": 5.0}

    def fn(_state):
        sim.host += state["host"]
        state["host"] *= 10
        sim.launch("op", 1.0)

    with pytest.raises(RuntimeError, match="never got ahead"):
        timing.time_runs(fn, device=CUDA, smoke=False, budget_s=0.0, min_reps=3, max_reps=3)


def test_throughput_counts_host_time_of_a_host_bound_step(sim):
    ms = timing.throughput_runs(op(sim, 500.0, 100.0), device=CUDA, smoke=False, budget_s=0.0, min_reps=5, max_reps=5)
    # host-bound: the step costs its host time (500 us of Python, 3 us launch, 1 us event record)
    assert timing.percentiles(ms)[1] == pytest.approx(0.504) and min(ms) >= 0.5
    ms = timing.throughput_runs(op(sim, 10.0, 800.0), device=CUDA, smoke=False, budget_s=0.0, min_reps=5, max_reps=5)
    assert timing.percentiles(ms)[1] == pytest.approx(0.8) and min(ms) >= 0.8  # device-bound: its device time


def test_flush_reads_and_leaves_no_dirty_lines(monkeypatch):
    """The flush must not write its buffer (a write leaves dirty L2 lines the timed op pays for)."""
    monkeypatch.setattr(timing, "FLUSH_BYTES", 1 << 16)
    monkeypatch.setattr(timing, "_flush_buffers", {})
    cpu = torch.device("cpu")
    timing.flush_l2(cpu)
    buf = timing._flush_buffers[cpu]
    version, before = buf._version, buf.clone()
    timing.flush_l2(cpu)
    timing.flush_l2(cpu)
    assert buf._version == version and torch.equal(buf, before)
    assert buf.numel() * buf.element_size() == 1 << 16


def test_graph_runs_off_cuda_say_why():
    with pytest.raises(timing.NotCapturable, match="CUDA device"):
        timing.graph_runs(lambda _: None, device=torch.device("cpu"), smoke=True)


def test_graph_capture_failure_becomes_a_skipped_row(monkeypatch):
    def boom(*a, **k):
        raise timing.NotCapturable("capture failed: RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(timing, "graph_runs", boom)
    env = {"smoke": False, "device": "cuda", "gpu": "Sim", "copy_bw_GBps": 1000.0, "torch": "2.x", "triton": "3.x",
           "cuda": "13.0", "git_commit": "abc", "date": "2030-01-01T00:00:00+00:00"}
    case = {"section": "ops", "op": "bn_swish", "provider": "torch", "mode": "fwd", "dtype": "float32",
            "layout": "nchw", "shape": "s", "size": 1, "shape_set": "t", "shape_source": "t"}
    row = measure._graph_row(lambda _: None, None, case, env, 0.0, smoke=False, device=CUDA, budget_s=0.0)
    assert row["metric"] == "graph_ms" and row["status"] == "skipped" and "stream is capturing" in row["reason"]
    monkeypatch.setattr(timing, "graph_runs", lambda *a, **k: [0.5, 0.6, 0.7])
    row = measure._graph_row(lambda _: None, None, case, env, 0.0, smoke=False, device=CUDA, budget_s=0.0)
    assert (row["status"], row["p50"], row["n"]) == ("ok", 0.6, 3)
    row = measure._graph_row(lambda _: None, lambda: 1, {**case, "mode": "bwd"}, env, 0.0, smoke=False, device=CUDA,
                             budget_s=0.0)
    assert row["status"] == "skipped" and "bwd" in row["reason"]


def test_copy_bandwidth_same_size_is_cached_per_size(monkeypatch):
    timed = []

    def fake_time_runs(fn, *, device, smoke, **kw):
        timed.append(1)
        return [1.0]  # 1 ms

    monkeypatch.setattr(timing, "time_runs", fake_time_runs)
    monkeypatch.setattr(bench_env, "_same_size_cache", {})
    cpu = torch.device("cpu")
    a = bench_env.copy_bandwidth_at(cpu, 2_000_000, smoke=True)
    b = bench_env.copy_bandwidth_at(cpu, 2_000_000, smoke=True)
    c = bench_env.copy_bandwidth_at(cpu, 4_000_000, smoke=True)
    assert a == b == pytest.approx(2.0) and c == pytest.approx(4.0)  # 2e6 bytes moved in 1 ms = 2 GB/s
    assert len(timed) == 2


def test_baselines_are_named_by_what_runs():
    assert "native conv_depthwise2d" in providers.implementation("depthwise_conv2d", "reference")
    assert "cuDNN" in providers.implementation("depthwise_conv2d", "reference_cl")
    assert "max-autotune-no-cudagraphs" in providers.implementation("bn_swish", "compile_max")
    assert torch.backends.cudnn.benchmark is False
    with providers.cudnn_benchmark():
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


def test_summary_shows_device_host_and_graph_times():
    from benchmarks import results, summarize

    env = {"smoke": False, "device": "cuda", "gpu": "Sim", "copy_bw_GBps": 1000.0, "torch": "2.x", "triton": "3.x",
           "cuda": "13.0", "git_commit": "abc", "date": "2030-01-01T00:00:00+00:00"}
    case = {"section": "ops", "op": "bn_swish", "provider": "triton", "mode": "fwd+bwd", "dtype": "float32",
            "layout": "nchw", "shape": "32x256x16x16", "size": 1, "shape_set": "cifar10", "shape_source": "t"}
    rows = [results.make_row(case, env, m, v, n=3) for m, v in
            (("time_ms", 1.0), ("host_ms", 2.0), ("graph_ms", 0.5), ("bandwidth_fraction_same_size", 0.8))]
    text = "\n".join(summarize._op_lines(rows))
    assert "Device / host / CUDA-graph p50 ms" in text and "| 1 / 2 / 0.5 (80%) |" in text
    old_style = [r for r in rows if r["metric"] == "time_ms"]  # result files from before these metrics
    assert "Device / host" not in "\n".join(summarize._op_lines(old_style))


def test_largest_batch_probe_counts_memory_against_80_gb(monkeypatch):
    from benchmarks import train_step

    peak = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: peak["bytes"])
    runner = object.__new__(train_step.StepRunner)
    param = torch.nn.Parameter(torch.ones(1))
    runner.device, runner.optimizer, runner.images = CUDA, torch.optim.SGD([param], lr=1.0), lambda b: b

    def step(batch):
        peak["bytes"] = batch * 1e9  # 1 GB per image

    runner.step = step
    assert train_step.largest_batch(runner.fits, 32) in range(78, 81)  # fits on an H200 (141 GB), not in 80 GB
