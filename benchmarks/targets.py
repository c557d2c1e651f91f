"""The performance targets of nvae_fast and their evaluation on result rows.

Every target is evaluated on forward+backward rows (``mode == "fwd+bwd"``), separately for each fused
provider (:data:`PROVIDERS`) and dtype, over the shapes it names:

| target                                                        | shapes                          | measured quantity                     | pass if      |
|---------------------------------------------------------------|---------------------------------|---------------------------------------|--------------|
| BN+Swish >= 85% of copy bandwidth                             | the preset shapes               | bandwidth_fraction p50                | median >= 0.85 |
| BN+Swish >= 2x eager                                          | the preset shapes               | t(reference) / t(provider)            | median >= 2  |
| BN+Swish faster than torch.compile                            | the preset shapes               | t(compile) / t(provider)              | median > 1   |
| depthwise 5x5 >= 2x ATen native NCHW / cuDNN channels_last    | N=32, C=768 (one row per shape) | t(reference or reference_cl) / t(p)   | >= 2         |
| squeeze-excite >= 2x eager                                    | the preset shapes               | t(reference) / t(provider)            | median >= 2  |
| power iteration >= 5x stack+bmm                               | every conv of the CIFAR-10 model, 4 steps | t(stack_bmm) / t(provider)  | >= 5         |

Times are the p50 of each case. "The preset shapes" are those whose ``shape_set`` names one of the
presets (CIFAR-10, CelebA-64, 256x256); the measured value is the median over them, reported with the
minimum and maximum. The depthwise baselines are named by what runs
(:func:`benchmarks.providers.implementation`): ``reference`` on NCHW is ATen's native
``conv_depthwise2d`` in float32 and bfloat16 (cuDNN is not used), ``reference_cl`` is cuDNN channels_last
with ``cudnn.benchmark = True``. A target without rows for the provider (or its baseline) is ``not measured``,
with the reason recorded in the skipped/error rows when there is one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .shapes import PRESETS

PROVIDERS = ("triton", "cuda")
DTYPES = ("float32", "bfloat16")
MODE = "fwd+bwd"


@dataclass(frozen=True)
class Target:
    name: str
    op: str
    threshold: float
    baseline: str | None  # None: the bandwidth fraction itself is compared
    sets: tuple[str, ...] = PRESETS
    shape: str | None = None  # one exact shape label instead of sets
    strict: bool = False  # pass needs value > threshold (instead of >=)

    def matches(self, row: dict) -> bool:
        if self.shape is not None:
            return row["shape"] == self.shape
        return any(s in self.sets for s in row["shape_set"].split("+"))


TARGETS = (
    Target("BN+Swish fwd+bwd >= 85% of copy bandwidth", "bn_swish", 0.85, None),
    Target("BN+Swish fwd+bwd >= 2x eager", "bn_swish", 2.0, "reference"),
    Target("BN+Swish fwd+bwd faster than torch.compile", "bn_swish", 1.0, "compile", strict=True),
    *(
        Target(f"depthwise 5x5 fwd+bwd >= 2x {name}, N=32 C=768 {s}x{s}", "depthwise_conv2d", 2.0, base,
               shape=f"32x768x{s}x{s}-k5")
        for s in (16, 32)
        for name, base in (("ATen native NCHW (conv_depthwise2d)", "reference"),
                           ("cuDNN channels_last", "reference_cl"))
    ),
    Target("squeeze-excite fwd+bwd >= 2x eager", "squeeze_excite", 2.0, "reference"),
    Target("power iteration, every conv of CIFAR-10, fwd+bwd >= 5x stack+bmm", "power_iteration", 5.0, "stack_bmm",
           sets=("cifar10",)),
)


@dataclass
class Verdict:
    target: Target
    provider: str
    dtype: str
    median: float | None
    low: float | None
    high: float | None
    n_shapes: int
    status: str  # "pass", "FAIL" or "not measured"
    note: str = ""

    @property
    def measured(self) -> str:
        if self.median is None:
            return "—"
        fmt = "{:.0%}" if self.target.baseline is None else "{:.2f}x"
        text = fmt.format(self.median)
        if self.n_shapes > 1:
            text += f" [{fmt.format(self.low)} – {fmt.format(self.high)}]"
        return text


def _p50(rows: list[dict], metric: str, provider: str, target: Target, dtype: str) -> dict[str, float]:
    return {
        r["shape"]: r["p50"]
        for r in rows
        if r["op"] == target.op and r["provider"] == provider and r["dtype"] == dtype and r["mode"] == MODE
        and r["metric"] == metric and r["status"] == "ok" and target.matches(r)
    }


def _why_missing(rows: list[dict], target: Target, providers: tuple[str, ...], dtype: str) -> str:
    reasons = {
        f"{r['provider']}: {r['reason']}"
        for r in rows
        if r["op"] == target.op and r["provider"] in providers and r["dtype"] == dtype and r["status"] != "ok"
        and target.matches(r)
    }
    return "; ".join(sorted(reasons)) or "no rows for these shapes"


def evaluate(target: Target, rows: list[dict], provider: str, dtype: str) -> Verdict:
    """The verdict of ``target`` for ``provider`` and ``dtype`` on ``rows`` (see module doc)."""
    if target.baseline is None:
        values = _p50(rows, "bandwidth_fraction", provider, target, dtype)
        needed = (provider,)
    else:
        mine = _p50(rows, "time_ms", provider, target, dtype)
        base = _p50(rows, "time_ms", target.baseline, target, dtype)
        values = {s: base[s] / mine[s] for s in mine.keys() & base.keys() if mine[s] > 0}
        needed = (provider, target.baseline)
    if not values:
        return Verdict(target, provider, dtype, None, None, None, 0, "not measured", _why_missing(rows, target, needed, dtype))
    v = list(values.values())
    median = statistics.median(v)
    ok = median > target.threshold if target.strict else median >= target.threshold
    return Verdict(target, provider, dtype, median, min(v), max(v), len(v), "pass" if ok else "FAIL")


def evaluate_all(rows: list[dict]) -> list[Verdict]:
    """Every target for every fused provider and dtype."""
    return [evaluate(t, rows, p, d) for t in TARGETS for p in PROVIDERS for d in DTYPES]
