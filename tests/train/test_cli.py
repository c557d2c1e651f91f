"""The nvae-fast CLI end to end on the tiny preset: train, resume, eval, sample (BN cache), bench, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nvae_fast.cli import main
from nvae_fast.train import load_checkpoint


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(9, 16, 16, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, npz):
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["train", "--preset", "tiny", "--dataset", str(npz), "--steps", "2", "--batch-size", "2",
                 "--out", str(out), "--num-samples", "4", "--bn-batches", "1", "--log-every", "1",
                 "--no-progress", "--backend", "torch", "--device", "cpu", "--warmup-steps", "1"])
    assert code == 0
    return out


def test_train_writes_checkpoint_samples_and_logs(run_dir, npz):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 2 and state["meta"]["dataset"] == str(npz)
    assert state["model_config"]["image_channels"] == 3 and state["train_config"]["batch_size"] == 2
    assert list(state["sampling_bn"]) == ["ema:t=1,batches=1,batch=4"]
    with Image.open(run_dir / "samples" / "step_000002.png") as img:
        assert img.size == (2 * (2 * 17 + 1),) * 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert any((run_dir / "tb").iterdir())


def test_train_refuses_to_overwrite_and_resumes(run_dir, capsys):
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "--preset", "tiny", "--out", str(run_dir), "--no-progress"])
    assert main(["train", "--out", str(run_dir), "--resume", "--no-progress", "--no-tensorboard"]) == 0
    assert "is complete (2 of 2 steps)" in capsys.readouterr().out


def test_eval_prints_bits_per_dim(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "-K", "2", "--max-images", "3",
                 "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 3 and result["num_samples"] == 2 and result["weights"] == "ema"
    assert 0 < result["nll_bpd"] <= result["nelbo_bpd"] < 20


def test_sample_caches_readjusted_bn(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoint.pt"
    args = ["sample", "--checkpoint", str(ckpt), "--num", "3", "--temperature", "0.7", "--bn-batches", "1",
            "--bn-batch-size", "3", "--upscale", "1"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert "cached in" in capsys.readouterr().out
    cached = load_checkpoint(ckpt)["sampling_bn"]["ema:t=0.7,batches=1,batch=3"]
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    assert "loaded from the checkpoint" in capsys.readouterr().out
    again = load_checkpoint(ckpt)["sampling_bn"]["ema:t=0.7,batches=1,batch=3"]
    assert all(torch.equal(cached[k], again[k]) for k in cached)
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert a.size == (2 * 17 + 1, 2 * 17 + 1)
        assert np.array_equal(np.array(a), np.array(b))  # same seed, same BN state: same samples


def test_bench_reports_throughput(capsys):
    assert main(["bench", "--preset", "tiny", "--batch-size", "2", "--timed-steps", "1", "--warmup", "0",
                 "--json", "--device", "cpu", "--backend", "reference"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images_per_s"] > 0 and result["peak_memory_bytes"] > 0 and result["backend"] == "reference"


@pytest.mark.parametrize("dataset,match", [("missing_dir/", "missing_dir"), ("nope.npz", "nope.npz")])
def test_bad_dataset_is_a_clear_error(tmp_path, capsys, dataset, match):
    assert main(["train", "--dataset", str(tmp_path / dataset), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and match in err


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--steps", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--set", "novalue"])
    with pytest.raises(SystemExit):
        main(["bench", "--backend", "nonsense"])


@pytest.mark.parametrize("args,match", [
    (["--set", "image_size=15"], "image_size"),
    (["--set", "no_such_field=1"], "no_such_field"),
    (["--preset", "huge"], "huge"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, capsys, args, match):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "o"), "--steps", "1", "--no-progress"]
                + args) == 2
    assert match in capsys.readouterr().err
