"""Checkpoint files: atomic replacement, weights_only loading, RNG state round trip."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from nvae_fast.train import checkpoint as ck


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"format": ck.CHECKPOINT_FORMAT, "w": torch.randn(3, 5, generator=g), "step": seed, "name": "x",
            "nested": {"a": [1, 2.5, None, True], "t": (torch.ones(2), "s")}}


def test_save_and_load_round_trip(tmp_path):
    path = ck.save_checkpoint(_state(3), tmp_path / "sub" / "c.pt")
    got = ck.load_checkpoint(path)
    assert torch.equal(got["w"], _state(3)["w"]) and got["nested"]["a"] == [1, 2.5, None, True]
    assert os.listdir(tmp_path / "sub") == ["c.pt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ck.save_checkpoint(_state(1), path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint(path)["w"], _state(1)["w"])
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": ck.CHECKPOINT_FORMAT, "x": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="evil.pt.*cannot be loaded safely"):
        ck.load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not an nvae_fast checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_survives_a_weights_only_file(tmp_path):
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    ck.save_checkpoint({"format": ck.CHECKPOINT_FORMAT, "rng": ck.rng_state()}, tmp_path / "r.pt")
    first = (torch.randn(4), np.random.randn(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.randn(4), np.random.randn(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2:] == again[2:]
