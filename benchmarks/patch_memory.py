"""Bytes saved for backward by one training step of a torchvision/timm model, patched over unpatched.

    python -m benchmarks.patch_memory [--model efficientnet_b0] [--size 224] [--batch 8] [--timm]

Random weights (no download), train mode, float32 on the CPU, ``torch`` backend. The step's forward runs
under :func:`nvae_fast.memory.saved_tensor_bytes` with the parameters excluded (resident either way); prints
one row: model, input, unpatched and patched MiB and their ratio, and the patch report's counts.
"""

from __future__ import annotations

import argparse
import copy

import torch

import nvae_fast
from nvae_fast.memory import saved_tensor_bytes


def _build(name: str, use_timm: bool) -> torch.nn.Module:
    if use_timm:
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)()


def _saved_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    params = list(model.parameters())
    saved = saved_tensor_bytes(lambda: model(x).square().mean(), exclude=params)
    saved.output.backward()
    return saved.saved_bytes / 2**20


def measure(name: str, size: int, batch: int, use_timm: bool = False) -> dict:
    """``{"unpatched_MiB", "patched_MiB", "ratio", "report"}`` for one training step of ``name``."""
    torch.manual_seed(0)
    reference = _build(name, use_timm).train()
    model = copy.deepcopy(reference)
    x = torch.randn(batch, 3, size, size)
    with nvae_fast.use_backend("torch"):
        report = nvae_fast.patch(model)
        unpatched, patched = _saved_mib(reference, x), _saved_mib(model, x)
    return {"unpatched_MiB": unpatched, "patched_MiB": patched, "ratio": patched / unpatched, "report": report}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timm", action="store_true", help="build the model with timm instead of torchvision")
    args = parser.parse_args(argv)
    r = measure(args.model, args.size, args.batch, args.timm)
    source = "timm" if args.timm else "torchvision"
    counts = ", ".join(
        f"{field} {len(getattr(r['report'], field))}"
        for field in ("bn_swish", "depthwise", "squeeze_excite", "bn_swish_conv", "skipped")
    )
    print("| model | input | unpatched MiB | patched MiB | ratio | replaced |")
    print(f"| {source} {args.model} | {args.batch}x3x{args.size}x{args.size} | {r['unpatched_MiB']:.1f} | "
          f"{r['patched_MiB']:.1f} | {r['ratio']:.3f} | {counts} |")


if __name__ == "__main__":
    main()
