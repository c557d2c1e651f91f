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

:func:`load_run_checkpoint` checks that layout (``RUN_LAYOUT``), so that a damaged or foreign file is
refused with one line naming what is wrong instead of failing later on a missing key.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "RUN_LAYOUT",
    "save_checkpoint",
    "load_checkpoint",
    "load_run_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1

# The entries of a Trainer checkpoint that commands read ("a.b": entry b of dict a) and their types.
RUN_LAYOUT = {
    "model_config": dict,
    "train_config": dict,
    "meta": dict,
    "step": int,
    "model": dict,
    "ema": dict,
    "ema.module": dict,
    "ema.updates": int,
    "ema.decay": (float, int),
    "optimizer": dict,
    "optimizer.state": dict,
    "optimizer.param_groups": list,
    "scheduler": dict,
    "scheduler.step_count": int,
    "scaler": dict,
    "stats": dict,
    "stats.skipped": int,
    "rng": list,
}


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
    """Load a checkpoint with ``weights_only=True``; errors (one line each) name ``path``."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f"; did you mean {str(inside)!r}?" if inside.is_file() else ""
        raise ValueError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else fails obscurely in torch.load
        raise ValueError(f"checkpoint {str(path)!r} is not a file written by torch.save")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded safely: {reason}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not an nvae_fast checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def load_run_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """:func:`load_checkpoint` of a checkpoint written by a Trainer, refused with a ``ValueError`` naming
    the first entry of ``RUN_LAYOUT`` that is missing or of another type."""
    state = load_checkpoint(path, map_location)
    problem = _layout_problem(state)
    if problem:
        raise ValueError(f"checkpoint {str(path)!r} is malformed: {problem}")
    return state


def _layout_problem(state: dict) -> str | None:
    """What is wrong with ``state`` against ``RUN_LAYOUT`` (None: nothing)."""
    for name, kind in RUN_LAYOUT.items():
        value = state
        for part in name.split("."):
            if part not in value:
                return f"{name!r} is missing"
            value = value[part]
        if not isinstance(value, kind) or isinstance(value, bool):
            kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            return f"{name!r} should be of type {kinds}, not {type(value).__name__}"
    if state["step"] < 0:
        return f"'step' is negative ({state['step']})"
    return None


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
