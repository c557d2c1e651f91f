"""The op shapes of NVAE presets, read from ``nvae_fast.model`` with forward hooks.

A preset's model is built on the benchmark device and run forward once (training mode, no gradient) on
a batch of two random images, on the ``torch`` backend. Forward hooks on every :class:`nvae_fast.nn.BNSwish`, every depthwise
convolution (:class:`nvae_fast.nn.DepthwiseConv2d`, or any ``nn.Conv2d`` with
``groups == in_channels == out_channels > 1``) and every :class:`nvae_fast.nn.SqueezeExcite` record
their input shapes; the batch dimension is then set to the preset's per-GPU training batch
(:data:`TRAIN_BATCH`, the paper's Table 6). The power-iteration case is every convolution weight the
spectral regulariser sees (:func:`nvae_fast.nn.conv_weight` over all modules) with the configuration's
``spectral_iters`` steps.

``nvae_fast.model`` has no 256x256 preset; :data:`CELEBAHQ256` builds one from the ``celeba64`` preset
with the paper's 256x256 settings (Table 6 and the authors' published command: 30 initial channels,
5 latent scales, 16 groups at the finest scale halved per scale down to 4, 2 flows, 5-bit data).
When the model cannot be built, :func:`preset_shapes` falls back to the paper-derived shapes of
:mod:`benchmarks.shapes` and says why in each shape's ``source``.

Building the 130M-parameter models takes more time than a time-limited GPU run can spare, so the shapes
the hooks record are kept in :data:`CACHE` (``benchmarks/preset_shapes.json``), which
:func:`preset_shapes` reads first. ``python -m benchmarks.model_shapes --write`` rebuilds it on the CPU (about a minute), and a test
rebuilds it and fails when the committed file differs from what the model gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

import nvae_fast

from . import shapes as S

TRAIN_BATCH = {"cifar10": 32, "celeba64": 16, "celebahq256": 4}
CELEBAHQ256 = dict(
    image_size=256, channels_enc=30, channels_dec=30, num_latent_scales=5, num_groups_per_scale=16,
    adaptive_groups=True, min_groups_per_scale=4, num_flows=2, num_x_bits=5, reg_lambda=1e-2,
)
PROBE_BATCH = 2
CACHE = Path(__file__).resolve().parent / "preset_shapes.json"


class ModelUnavailable(RuntimeError):
    """``nvae_fast.model`` cannot build the requested preset (the message says why)."""


def model_api():
    """The module ``nvae_fast.model`` with ``preset``, ``NVAE`` and ``nvae_loss``, or :class:`ModelUnavailable`."""
    try:
        import nvae_fast.model as api
    except Exception as exc:  # ImportError, or an error while the model package is being written
        raise ModelUnavailable(f"nvae_fast.model cannot be imported: {exc!r}") from exc
    missing = [name for name in ("preset", "NVAE", "nvae_loss") if not hasattr(api, name)]
    if missing:
        raise ModelUnavailable(f"nvae_fast.model lacks {', '.join(missing)}")
    return api


def model_config(name: str):
    """The ``NVAEConfig`` of preset ``name`` (``celebahq256``: see :data:`CELEBAHQ256`)."""
    api = model_api()
    if name == "celebahq256":
        return api.preset("celeba64", **CELEBAHQ256)
    return api.preset(name)


def build_model(name: str, device: torch.device) -> tuple[nn.Module, object]:
    """``(NVAE(config), config)`` for preset ``name`` on ``device``, in training mode."""
    cfg = model_config(name)
    try:
        model = model_api().NVAE(cfg).to(device)
    except Exception as exc:
        raise ModelUnavailable(f"nvae_fast.model.NVAE({name!r}) failed: {exc!r}") from exc
    return model.train(), cfg


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1


def record_op_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, list[dict]]:
    """Run ``model(x)`` without gradient and return, per op, one record per call of a hooked module:
    ``{"x": input shape}`` plus ``kernel`` (depthwise) or ``hidden`` (squeeze-excite)."""
    from nvae_fast.nn import BNSwish, SqueezeExcite

    found: dict[str, list[dict]] = {op: [] for op in S.OPS if op != "power_iteration"}
    handles = []

    def hook(op, extra):
        def record(module, args, output):
            found[op].append({"x": tuple(args[0].shape), **extra(module)})

        return record

    for m in model.modules():
        if isinstance(m, BNSwish):
            handles.append(m.register_forward_hook(hook("bn_swish", lambda m: {})))
        elif isinstance(m, SqueezeExcite):
            handles.append(m.register_forward_hook(hook("squeeze_excite", lambda m: {"hidden": m.fc1.out_features})))
        elif _is_depthwise(m):
            handles.append(m.register_forward_hook(hook("depthwise_conv2d", _depthwise_extra)))
    try:
        with torch.no_grad(), nvae_fast.use_backend("torch"):  # shapes do not depend on the backend
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _depthwise_extra(m: nn.Conv2d) -> dict:
    k = m.kernel_size
    if k[0] != k[1] or m.stride != (1, 1) or m.dilation != (1, 1) or m.padding != (k[0] // 2, k[1] // 2):
        raise ModelUnavailable(
            f"depthwise conv with kernel {k}, stride {m.stride}, padding {m.padding}, dilation {m.dilation}: "
            "the benchmark covers square 'same' kernels at stride 1 only"
        )
    return {"kernel": k[0]}


def conv_weight_shapes(model: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Shapes of every weight the spectral regulariser sees, in module order."""
    from nvae_fast.nn import conv_weight

    with torch.no_grad():
        weights = [conv_weight(m) for m in model.modules()]
    return tuple(tuple(w.shape) for w in weights if w is not None)


def shapes_from_model(name: str, model: nn.Module, cfg, device: torch.device, batch: int) -> list[S.OpShape]:
    """The distinct :class:`~benchmarks.shapes.OpShape` of preset ``name``'s model at training batch
    ``batch`` (see module doc)."""
    x = torch.rand(PROBE_BATCH, cfg.image_channels, cfg.image_size, cfg.image_size, device=device)
    source = f"model-hooks ({name})"
    out = []
    for op, records in record_op_inputs(model, x).items():
        for rec in {tuple(sorted(r.items())): r for r in records}.values():
            shape = (batch,) + rec["x"][1:]
            out.append(
                S.activation_shape(op, shape, (name,), source, kernel=rec.get("kernel", S.DW_KERNEL), hidden=rec.get("hidden"))
            )
    out.append(
        S.OpShape("power_iteration", weights=conv_weight_shapes(model), n_iter=cfg.spectral_iters, sets=(name,), source=source)
    )
    return out


def _shape_record(shape: S.OpShape) -> dict:
    return {
        "op": shape.op, "x": shape.x, "kernel": shape.kernel, "hidden": shape.hidden,
        "weights": shape.weights, "n_iter": shape.n_iter,
    }


def _shape_from_record(rec: dict, name: str, source: str) -> S.OpShape:
    def tup(v):
        return None if v is None else tuple(tup(e) if isinstance(e, list) else e for e in v)

    return S.OpShape(
        op=rec["op"], x=tup(rec["x"]), kernel=rec["kernel"], hidden=rec["hidden"], weights=tup(rec["weights"]),
        n_iter=rec["n_iter"], sets=(name,), source=source,
    )


def model_preset_shapes(name: str, device: torch.device) -> list[S.OpShape]:
    """Op shapes of preset ``name`` recorded from its model on ``device`` (raises when it cannot be built)."""
    model, cfg = build_model(name, device)
    result = shapes_from_model(name, model, cfg, device, TRAIN_BATCH[name])
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def write_cache(path: Path = CACHE, presets: tuple[str, ...] = S.PRESETS) -> Path:
    """Record every preset's shapes from its model on the CPU and write them to ``path`` (JSON)."""
    data = {name: [_shape_record(s) for s in model_preset_shapes(name, torch.device("cpu"))] for name in presets}
    lines = ",\n".join(
        f"{json.dumps(name)}: [\n" + ",\n".join(json.dumps(r) for r in records) + "\n]" for name, records in data.items()
    )
    path.write_text("{\n" + lines + "\n}\n")  # one shape a line, so that a change shows as a readable diff
    return path


def cached_shapes(name: str, path: Path = CACHE) -> list[S.OpShape] | None:
    """Preset ``name``'s shapes from the cache file, or None when the file or the preset is missing."""
    if not path.exists():
        return None
    records = json.loads(path.read_text()).get(name)
    if records is None:
        return None
    return [_shape_from_record(r, name, f"model-hooks ({name}, cached in {path.name})") for r in records]


def preset_shapes(name: str, device: torch.device | None = None, use_cache: bool = True) -> list[S.OpShape]:
    """Op shapes of preset ``name``: from :data:`CACHE`, else from the model's hooks if it can be built,
    else from the paper."""
    if use_cache:
        cached = cached_shapes(name)
        if cached is not None:
            return cached
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return model_preset_shapes(name, device)
    except Exception as exc:  # ModelUnavailable, or the model failing on the probe batch
        why = f" (model hooks unavailable: {type(exc).__name__}: {exc})"
        return [dataclasses.replace(s, source=s.source + why) for s in S.paper_preset_shapes(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the cached preset op shapes (benchmarks/preset_shapes.json).")
    parser.add_argument("--write", action="store_true", help="rebuild the cache from the models on the CPU")
    parser.add_argument("--out", type=Path, default=CACHE, help="the cache file")
    args = parser.parse_args(argv)
    if not args.write:
        parser.print_help()
        return 2
    print(f"wrote {write_cache(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
