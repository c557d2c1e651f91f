"""Checkpoint files: atomic writes, safe loads, and the RNG state they carry.

A checkpoint is a dict of tensors and plain Python containers, numbers and strings only, so it loads
with ``torch.load(..., weights_only=True)`` (a checkpoint is untrusted input: nothing in it is
unpickled into arbitrary objects). Layout, written by :class:`nvae_fast.train.trainer.Trainer`::

    format        int, CHECKPOINT_FORMAT
    model_config  NVAEConfig.to_dict()
    train_config  TrainConfig.to_dict()
    step          optimizer steps taken (skipped steps included)
    model, ema, optimizer, scheduler, scaler, stats    state dicts
    rng           list over ranks of rng_state() dicts
    sampling_bn   {key: BN state of the EMA model re-adjusted for sampling} (see sampling.py)
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; errors name ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded safely: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not an nvae_fast checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def rng_state() -> dict:
    """This process's RNG states (torch CPU, every CUDA device, numpy, python) as tensors and ints."""
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "words": list(py_words), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
