"""The ``nvae-fast`` process at its edges: signals, re-runs, resumes, read-only and malformed checkpoints,
rejected arguments and the CPU thread default.

Most tests drive the real console script (``make train`` too) on the ``tiny`` preset and a small .npz
data set. A signal is sent to training once it has logged a step (its handlers are in place by then),
and to the other commands once they catch SIGTERM (/proc/<pid>/status), which nvae-fast's handlers do.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from nvae_fast import cli
from nvae_fast.train import load_checkpoint
from nvae_fast.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

REPO = Path(__file__).resolve().parents[2]
# As a user runs it: without the kernel emulation switches that tests/conftest.py sets for this process.
ENV = {**{k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NVAE_FAST_CUDA_EMULATE")},
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COMMAND = [shutil.which("nvae-fast")] if shutil.which("nvae-fast") else [sys.executable, "-m", "nvae_fast.cli"]
CPU = ["--backend", "torch", "--device", "cpu"]
TIMEOUT = 90


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """128 random 16x16 RGB images (enough for a batch of 128: a step long enough to signal inside)."""
    path = tmp_path_factory.mktemp("data") / "imgs.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, size=(128, 16, 16, 3), dtype=np.uint8))
    return path


def _train_args(npz, out, *extra) -> list[str]:
    return ["train", "--preset", "tiny", "--dataset", str(npz), "--out", str(out), "--batch-size", "8",
            "--no-progress", "--bn-batches", "1", "--num-samples", "4", *CPU, *extra]


def _run(args, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(COMMAND + args, env=ENV, capture_output=True, text=True, timeout=timeout)


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(COMMAND + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def _wait(proc: subprocess.Popen, ready, what: str) -> None:
    """Poll ``ready()`` until true; fail with the process's output if it ends first or takes too long."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            rc, out, err = _finish(proc)
            pytest.fail(f"never {what} (exit {rc}):\n{out}\n{err}")
        time.sleep(0.02)


def _handlers_installed(pid: int) -> bool:
    """Whether process ``pid`` catches SIGTERM, which nvae-fast does only once its handlers are in place."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _start_training(args, out: Path, min_step: int = 1) -> subprocess.Popen:
    """A training process that has logged step ``min_step`` or later."""
    proc = _start(args)
    _wait(proc, lambda: max(_steps(out), default=0) >= min_step, f"logged step {min_step}")
    return proc


def _start_with_handlers(args, within: float = 30.0) -> subprocess.Popen:
    """A process that catches SIGTERM, or has run ``within`` seconds (a version without handlers is
    then signalled mid-work, as a user would)."""
    proc = _start(args)
    deadline = time.monotonic() + within
    while not _handlers_installed(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    return proc


def _assert_clean(err: str) -> None:
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _message_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("nvae-fast")]


@pytest.fixture(scope="module")
def finished(npz, tmp_path_factory):
    """A finished 2-step run's checkpoint (read, not modified, by the tests)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = _run(_train_args(npz, out, "--steps", "2", "--no-tensorboard"))
    assert result.returncode == 0, result.stderr
    return out / "checkpoint.pt"


# ------------------------------------------------------------------------------------ signals: train
def test_sigint_finishes_the_step_saves_and_says_how_to_resume(npz, tmp_path):
    """Default intervals (checkpoint every 500 steps): Ctrl-C at step ~2 still leaves a checkpoint."""
    out = tmp_path / "run"
    proc = _start_training(_train_args(npz, out, "--steps", "1000", "--log-every", "1"), out)
    proc.send_signal(signal.SIGINT)
    rc, stdout, err = _finish(proc)
    assert rc == 130
    _assert_clean(err)
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert _message_lines(err) == [
        f"nvae-fast train: stopped by SIGINT after step {step} of 1000; checkpoint {out / 'checkpoint.pt'}; "
        f"continue with: nvae-fast train --out {out} --resume"
    ]
    assert _steps(out) == list(range(1, step + 1))  # the step under way when the signal came was finished
    assert "on cpu (1 thread)" in stdout  # OMP_NUM_THREADS=1 is respected

    resumed = _run(_train_args(npz, out, "--resume", "--steps", str(step + 2), "--log-every", "1"))
    assert resumed.returncode == 0, resumed.stderr
    assert "2 steps in" in resumed.stdout and f"by this process, {step + 2} of {step + 2} in all" in resumed.stdout
    assert _steps(out) == list(range(1, step + 3))


def test_sigterm_stops_like_sigint_with_143(npz, tmp_path):
    out = tmp_path / "run"
    proc = _start_training(_train_args(npz, out, "--steps", "1000", "--log-every", "1", "--no-tensorboard"), out)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc == 143
    _assert_clean(err)
    assert len(_message_lines(err)) == 1 and "stopped by SIGTERM" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] >= 1


def test_second_sigint_stops_at_once(npz, tmp_path):
    """Steps of batch 128 take about a second: the second signal arrives within the step the first
    one asked to finish."""
    out = tmp_path / "run"
    proc = _start_training(_train_args(npz, out, "--steps", "1000", "--log-every", "1", "--batch-size", "128",
                                       "--no-tensorboard"), out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc, _, err = _finish(proc)
    assert rc == 130
    _assert_clean(err)
    assert _message_lines(err) == ["nvae-fast train: stopped at once by SIGINT; work since its last checkpoint is lost"]
    assert not list(out.glob(".checkpoint.pt.*"))  # an interrupted checkpoint write leaves no temporary file


# ------------------------------------------------------------------------------ logs of resumed runs
def test_resume_drops_records_logged_after_the_checkpoint(npz, tmp_path):
    """A run killed (SIGKILL) after its checkpoint at step c has logged steps past c; resuming from c
    must log every step once, in metrics.jsonl and in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = _train_args(npz, out, "--steps", "1000", "--log-every", "1", "--ckpt-every", "3")
    proc = _start_training(args, out, min_step=4)
    _wait(proc, lambda: _steps(out)[-1] % 3 == 1, "logged the step after a checkpoint")
    proc.kill()
    _finish(proc)
    c = load_checkpoint(out / "checkpoint.pt")["step"]
    assert c >= 3 and _steps(out)[-1] > c

    resumed = _run(_train_args(npz, out, "--resume", "--steps", str(c + 2), "--log-every", "1"))
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(out) == list(range(1, c + 3))
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, c + 3))


def test_a_new_run_replaces_the_records_of_one_that_saved_nothing(tmp_path):
    """metrics.jsonl of an aborted run without checkpoint (and a line cut short) does not continue."""
    from nvae_fast.train.monitor import Monitor

    (tmp_path / "metrics.jsonl").write_text('{"step": 10}\n{"step": 20}\n{"st')
    monitor = Monitor(tmp_path, total=20, initial=0, progress=False, tensorboard=False)
    monitor.log(10, {"loss": 1.0}, 8)
    monitor.close()
    assert _steps(tmp_path) == [10]


# ------------------------------------------------------------------------------ make train, re-runs
def test_make_train_twice_completes_then_extends(npz, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = tmp_path / "run"

    def make_train(*extra):
        train_args = " ".join(_train_args(npz, out, "--no-tensorboard", *extra)[1:])
        return subprocess.run(["make", "-s", "-C", str(REPO), "-o", "setup", "train", f"TRAIN_ARGS={train_args}"],
                              env=ENV, capture_output=True, text=True, timeout=TIMEOUT)

    first = make_train("--steps", "2")
    assert first.returncode == 0, first.stderr
    again = make_train()
    assert again.returncode == 0, again.stderr
    assert f"{out / 'checkpoint.pt'} is complete (2 of 2 steps); to train longer" in again.stdout
    longer = make_train("--steps", "3")
    assert longer.returncode == 0, longer.stderr
    assert "1 step in" in longer.stdout and "3 of 3 in all" in longer.stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["train_config"]["schedule_steps"] == 2


def test_resume_with_fewer_steps_than_done_is_refused(finished, tmp_path):
    assert cli.main(["train", "--out", str(finished.parent), "--resume", "--steps", "1", "--no-progress"]) == 2


# ---------------------------------------------------------------------------- eval, sample, bench
@pytest.mark.parametrize("command,signum", [
    (["eval", "-K", "500"], signal.SIGINT),
    (["sample", "--num", "4", "--bn-batches", "5000"], signal.SIGTERM),
    (["bench", "--preset", "tiny", "--timed-steps", "10000"], signal.SIGINT),
])
def test_other_commands_stop_at_once_without_traceback(finished, tmp_path, command, signum):
    checkpoint = ["--checkpoint", str(finished)] if command[0] != "bench" else []
    proc = _start_with_handlers(command + checkpoint + CPU + ["--no-progress"])
    time.sleep(0.5)
    proc.send_signal(signum)
    rc, _, err = _finish(proc)
    assert rc == 128 + signum
    _assert_clean(err)
    assert _message_lines(err) == [f"nvae-fast {command[0]}: stopped at once by {signal.Signals(signum).name}"]


# ---------------------------------------------------------------------------- read-only checkpoints
@contextmanager
def _read_only(folder: Path):
    """``folder`` (and its files) read-only, even for root (immutable attribute), for the block."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_sample_from_a_read_only_checkpoint_keeps_bn_in_memory(finished, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(finished, folder / "checkpoint.pt")
    before = (folder / "checkpoint.pt").read_bytes()
    with _read_only(folder):
        result = _run(["sample", "--checkpoint", str(folder / "checkpoint.pt"), "--num", "4", "--bn-batches", "1",
                       "--bn-batch-size", "3", "--out", str(tmp_path / "s.png"), *CPU])
    assert result.returncode == 0, result.stderr
    _assert_clean(result.stderr)
    assert "kept in memory only" in result.stdout and (tmp_path / "s.png").is_file()
    assert (folder / "checkpoint.pt").read_bytes() == before


# ---------------------------------------------------------------------------- malformed checkpoints
def _damaged(finished: Path, tmp_path: Path, change) -> Path:
    state = load_checkpoint(finished)
    change(state)
    return save_checkpoint(state, tmp_path / "damaged" / "checkpoint.pt")


def test_malformed_checkpoints_are_one_line_in_the_real_process(finished, tmp_path):
    folder = _run(["eval", "--checkpoint", str(finished.parent), *CPU])
    assert folder.returncode == 2 and _message_lines(folder.stderr) == [
        f"nvae-fast eval: error: checkpoint {str(finished.parent)!r} is a folder, not a checkpoint file; "
        f"did you mean {str(finished)!r}?"]
    path = _damaged(finished, tmp_path, lambda s: s.pop("model_config"))
    missing = _run(["sample", "--checkpoint", str(path), *CPU])
    assert missing.returncode == 2 and _message_lines(missing.stderr) == [
        f"nvae-fast sample: error: checkpoint {str(path)!r} is malformed: 'model_config' is missing"]
    _assert_clean(folder.stderr + missing.stderr)


def _set_config(key, value):
    return lambda s: s["model_config"].update({key: value})


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update(step="3"), "'step' should be of type int, not str"),
    (lambda s: s["ema"].pop("module"), "'ema.module' is missing"),
    (lambda s: s.update(rng={}), "'rng' should be of type list, not dict"),
    (_set_config("no_such_field", 1), "bad model_config: NVAEConfig.from_dict: unknown keys"),
    (_set_config("channels_enc", 16), "'ema.module' does not fit its model_config"),
    (lambda s: s["train_config"].update(steps="many"), "bad train_config"),
    (lambda s: s["optimizer"].update(param_groups=[]), "bad training state"),
    (lambda s: s.update(sampling_bn=[]), "bad 'sampling_bn'"),
])
def test_every_malformed_checkpoint_is_named_in_one_line(finished, tmp_path, capsys, change, match):
    path = _damaged(finished, tmp_path, change)
    codes = [cli.main(["sample", "--checkpoint", str(path), "--num", "1", "--bn-batches", "1", "--out",
                       str(tmp_path / "s.png"), "--device", "cpu"]),
             cli.main(["train", "--out", str(path.parent), "--resume", "--steps", "3", "--no-progress",
                       "--no-tensorboard", "--device", "cpu"])]
    lines = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in lines if match in line]
    assert failed and all(line.startswith("nvae-fast ") for line in lines), lines
    assert 2 in codes and set(codes) <= {0, 2}  # some damage matters to one command only


def test_a_file_that_torch_did_not_write_is_named(tmp_path, capsys):
    (tmp_path / "c.pt").write_text("hello")
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a file written by torch.save")


# ----------------------------------------------------------------------------------------- arguments
def test_negative_interval_is_rejected_by_the_process():
    result = _run(["train", "--ckpt-every", "-1"])
    assert result.returncode == 2
    assert "argument --ckpt-every: expected a non-negative integer, got '-1'" in result.stderr


@pytest.mark.parametrize("args,match", [
    (["train", "--sample-every", "-1"], "argument --sample-every: expected a non-negative integer"),
    (["train", "--bn-batches", "-2"], "argument --bn-batches: expected a non-negative integer"),
    (["train", "--warmup-steps", "-1"], "argument --warmup-steps: expected a non-negative integer"),
    (["train", "--temperature", "0"], "argument --temperature: expected a positive number"),
    (["sample", "--checkpoint", "c.pt", "--temperature", "-1"], "argument --temperature: expected a positive number"),
    (["sample", "--checkpoint", "c.pt", "--temperature", "nan"], "argument --temperature: expected a positive number"),
    (["bench", "--warmup", "-1"], "argument --warmup: expected a non-negative integer"),
    (["bench", "--threads", "0"], "argument --threads: expected a positive integer"),
    (["train", "--resume", "--auto-resume"], "not allowed with argument"),
])
def test_bad_arguments_are_rejected(capsys, args, match):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(args)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("cores,load,free", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 2.9, 1), (8, 3.2, 5), (4, 0.0, 4)])
def test_free_cores(cores, load, free):
    assert cli._free_cores(cores, load) == free


def test_default_threads_follow_load_unless_omp_num_threads_is_set(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli._default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli._default_threads() == min(threads, len(os.sched_getaffinity(0)))  # lowered, never raised
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    assert cli._default_threads() == threads
