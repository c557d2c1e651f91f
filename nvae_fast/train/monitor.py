"""Training progress output: a tqdm bar, TensorBoard scalars and a ``metrics.jsonl`` file.

Only the main rank writes anything. TensorBoard (``torch.utils.tensorboard``) is optional: without
the ``tensorboard`` package the run prints one notice and goes on.

A run that starts at step ``initial`` (0, or the step of the checkpoint it resumes) owns every step
after it: records of later steps already in ``metrics.jsonl`` (written after the last checkpoint of a
killed run, or by an earlier run into the same folder that saved nothing) are dropped first, and
TensorBoard is told to hide its events from step ``initial + 1`` on (``purge_step``), so every step
appears once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

__all__ = ["Monitor"]

_BAR_KEYS = (("loss", "loss", "{:.3f}"), ("nelbo_bpd", "bpd", "{:.3f}"), ("skipped", "skip", "{:d}"))


class Monitor:
    """Progress of steps ``initial+1 .. total`` written under ``out_dir`` (``tb/``, ``metrics.jsonl``)."""

    def __init__(self, out_dir: str | Path, total: int, initial: int, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True):
        from tqdm import tqdm

        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=not (enabled and progress))
        self.writer = None
        self._jsonl = None
        self._last_time, self._last_step = time.perf_counter(), initial
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = self.out_dir / "metrics.jsonl"
        _drop_records_after(jsonl, initial)
        self._jsonl = open(jsonl, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("nvae-fast: tensorboard is not installed; skipping TensorBoard logs", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=initial + 1)

    def advance(self, metrics: dict) -> None:
        """One step done: refresh the bar with the latest ``metrics``."""
        if not self.enabled:
            return
        self.bar.update(1)
        self.bar.set_postfix(
            {short: fmt.format(metrics[key]) for key, short, fmt in _BAR_KEYS if key in metrics}, refresh=False
        )

    def log(self, step: int, metrics: dict, batch_images: int) -> dict:
        """Record ``metrics`` for ``step`` (plus images/s since the last call); returns the record."""
        now = time.perf_counter()
        record = {"step": step, **metrics}
        if step > self._last_step:
            record["images_per_s"] = batch_images * (step - self._last_step) / (now - self._last_time)
        self._last_time, self._last_step = now, step
        if not self.enabled:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, step)
        return record

    def image(self, tag: str, grid_hwc, step: int) -> None:
        """Add a uint8 (H, W, C) image grid to TensorBoard."""
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, grid_hwc, step, dataformats="HWC")

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self.writer is not None:
            self.writer.close()


def _drop_records_after(path: Path, step: int) -> None:
    """Keep only the records of ``path`` (a metrics.jsonl) up to ``step``; lines cut short by a killed
    process are dropped too. The file is replaced atomically; nothing happens when nothing changes."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _record_step(line: str) -> float:
    """The ``step`` of a metrics.jsonl line; infinity for a line that is not a whole record."""
    try:
        return float(json.loads(line)["step"]) if line.endswith("\n") else float("inf")
    except (ValueError, KeyError, TypeError):
        return float("inf")
