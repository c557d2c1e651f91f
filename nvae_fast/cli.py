"""``nvae-fast``: train, evaluate, sample and benchmark NVAE models.

    nvae-fast train  --preset digits --out runs/digits            # CPU demo, a few minutes
    nvae-fast eval   --checkpoint runs/digits/checkpoint.pt -K 32  # NLL (bits/dim) by importance sampling
    nvae-fast sample --checkpoint runs/digits/checkpoint.pt --temperature 0.8
    nvae-fast bench  --preset cifar10 --batch-size 32 --backend triton --device cuda

Every command takes ``--backend`` (``nvae_fast.set_backend``) and ``--device``. Training under
``torchrun --nproc_per_node N -m nvae_fast.cli train ...`` runs data-parallel (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "torch", "triton", "cuda"],
                   help="kernel backend of the nvae_fast ops (default: auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--dataset", default=None,
                   help=f"digits, mnist, cifar10, celeba64, a folder of images or a .npz file ({default_help})")
    p.add_argument("--data-root", default="data", help="where torchvision datasets live (default: data)")
    p.add_argument("--npz-key", default=None, help="array name inside a .npz dataset (default: its only array)")
    p.add_argument("--download", action="store_true", help="let torchvision download mnist/cifar10/celeba64")


def _model_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, help=f"model preset (default: {default_preset})")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                   metavar="KEY=VALUE", help="override a model config field (JSON value), repeatable")


def _train_args(p: argparse.ArgumentParser) -> None:
    from .train.trainer import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("optimisation (ignored with --resume: the checkpoint's values apply)")
    g.add_argument("--steps", type=_positive_int, default=d.steps, help=f"optimizer steps (default: {d.steps})")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"per process (default: {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak Adamax learning rate (default: {d.lr})")
    g.add_argument("--lr-min", type=float, default=d.lr_min, help=f"final cosine learning rate (default: {d.lr_min})")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help=f"linear LR warm-up (default: {d.warmup_steps})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay})")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help=f"weight EMA decay (default: {d.ema_decay})")
    g.add_argument("--kl-warmup-portion", type=float, default=d.kl_warmup_portion,
                   help=f"fraction of steps of KL warm-up (default: {d.kl_warmup_portion})")
    g.add_argument("--no-kl-balance", action="store_true", help="disable KL balancing during warm-up")
    g.add_argument("--grad-skip-threshold", type=float, default=d.grad_skip_threshold,
                   help=f"skip updates whose gradient norm exceeds this; 0 disables (default: {d.grad_skip_threshold})")
    g.add_argument("--amp", default=d.amp, choices=["none", "bf16", "fp16"], help="mixed precision (default: none)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvae-fast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model", description="Train an NVAE; writes checkpoint.pt, "
                       "samples/*.png, metrics.jsonl and tb/ (TensorBoard) into --out.")
    _common(p)
    _model_args(p, "digits")
    _data_args(p, "default: the preset's dataset, or digits")
    _train_args(p)
    p.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--log-every", type=_positive_int, default=10, help="steps between logged metrics (default: 10)")
    p.add_argument("--sample-every", type=int, default=100,
                   help="steps between sample grids; 0: only at the end (default: 100)")
    p.add_argument("--ckpt-every", type=int, default=500,
                   help="steps between checkpoints; 0: only at the end (default: 500)")
    p.add_argument("--num-samples", type=_positive_int, default=64, help="images per sample grid (default: 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the grids (default: 1.0)")
    p.add_argument("--bn-batches", type=int, default=10,
                   help="batches of BN re-adjustment before sampling; 0 disables (default: 10)")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")

    p = sub.add_parser("eval", help="negative log-likelihood in bits/dim by importance sampling")
    _common(p)
    _data_args(p, "default: the dataset the checkpoint was trained on")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    p.add_argument("--split", default="test", choices=["train", "test"], help="(default: test)")
    p.add_argument("-K", "--importance-samples", type=_positive_int, default=16,
                   help="importance samples per image (default: 16)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--max-images", type=_positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("sample", help="write a PNG grid of samples")
    _common(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    p.add_argument("--num", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior temperature (default: 1.0)")
    p.add_argument("--out", default=None, help="PNG path (default: <checkpoint dir>/samples_t<T>.png)")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row (default: square grid)")
    p.add_argument("--upscale", type=_positive_int, default=2, help="pixel repeat factor of the PNG (default: 2)")
    p.add_argument("--bn-batches", type=int, default=10,
                   help="batches of BN re-adjustment (cached in the checkpoint); 0 disables (default: 10)")
    p.add_argument("--bn-batch-size", type=_positive_int, default=64, help="(default: 64)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bench", help="training throughput (images/s) and peak memory")
    _common(p)
    _model_args(p, "tiny")
    _train_args(p)
    p.add_argument("--timed-steps", type=_positive_int, default=20, help="timed steps (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _setup(args) -> torch.device:
    import nvae_fast

    nvae_fast.set_backend(args.backend)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_config(args, channels: int | None = None):
    from .model import preset

    overrides = dict(args.overrides)
    if channels is not None:
        overrides["image_channels"] = channels
    return preset(args.preset, **overrides)


def _train_config(args):
    from .train.trainer import TrainConfig

    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_min=args.lr_min,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
        kl_warmup_portion=args.kl_warmup_portion, kl_balance=not args.no_kl_balance,
        grad_skip_threshold=args.grad_skip_threshold or None, amp=args.amp,
        grad_checkpointing=args.grad_checkpointing, seed=args.seed,
    )


def _load_data(source: str, split: str, image_size: int, meta: dict):
    from .data import load_dataset

    return load_dataset(source, split, image_size, root=meta.get("data_root", "data"),
                        npz_key=meta.get("npz_key"), download=meta.get("download", False))


def cmd_train(args) -> int:
    from .data import DATASETS
    from .model import NVAEConfig
    from .train import distributed as D
    from .train.checkpoint import load_checkpoint
    from .train.trainer import Trainer

    device = _setup(args)
    info = D.init_from_env(device)
    out = Path(args.out or f"runs/{args.preset}")
    ckpt = out / "checkpoint.pt"
    try:
        if args.resume:
            state = load_checkpoint(ckpt)
            meta = state["meta"]
            cfg = NVAEConfig.from_dict(state["model_config"])
            data = _load_data(meta["dataset"], "train", cfg.image_size, meta)
            trainer = Trainer.from_checkpoint(state, data, info.device)
            if info.is_main:
                print(f"nvae-fast: resuming {ckpt} at step {trainer.step}/{trainer.config.steps}")
        else:
            if ckpt.exists():
                raise SystemExit(f"nvae-fast: {ckpt} exists: pass --resume to continue it, or choose another --out")
            source = args.dataset or (args.preset if args.preset in DATASETS else "digits")
            meta = {"dataset": source, "data_root": args.data_root, "npz_key": args.npz_key, "download": args.download}
            cfg = _model_config(args)
            data = _load_data(source, "train", cfg.image_size, meta)
            if data.channels != cfg.image_channels:
                cfg = _model_config(args, data.channels)
            trainer = Trainer(cfg, _train_config(args), data, info.device, meta)
        if info.is_main:
            params = sum(p.numel() for p in trainer.model.parameters())
            model = "checkpoint's model" if args.resume else f"preset {args.preset}"
            print(f"nvae-fast: {data!r}, {model}, {params:,} parameters, "
                  f"{trainer.config.steps} steps of batch {trainer.config.batch_size} x {info.world_size} "
                  f"on {info.device}, output {out}")
        start = time.perf_counter()
        records = trainer.fit(out, log_every=args.log_every, sample_every=args.sample_every,
                              ckpt_every=args.ckpt_every, progress=not args.no_progress,
                              tensorboard=not args.no_tensorboard, num_samples=args.num_samples,
                              temperature=args.temperature, bn_batches=args.bn_batches)
        if info.is_main and records:
            print(f"nvae-fast: {trainer.step} steps in {time.perf_counter() - start:.1f} s; loss "
                  f"{records[0]['loss']:.4f} (step {records[0]['step']}) -> {records[-1]['loss']:.4f} "
                  f"(step {records[-1]['step']}); skipped updates {trainer.stats['skipped']}; "
                  f"checkpoint {ckpt}; samples {out / 'samples'}")
    finally:
        D.shutdown()
    return 0


def _eval_model(state: dict, no_ema: bool, device: torch.device):
    from .model import NVAE, NVAEConfig

    model = NVAE(NVAEConfig.from_dict(state["model_config"]))
    if no_ema:
        model.load_state_dict(state["model"])
    else:
        model.load_state_dict(state["ema"]["module"])
    return model.to(device).eval()


def cmd_eval(args) -> int:
    from .train.checkpoint import load_checkpoint
    from .train.evaluate import evaluate

    device = _setup(args)
    torch.manual_seed(args.seed)
    state = load_checkpoint(args.checkpoint)
    model = _eval_model(state, args.no_ema, device)
    meta = dict(state.get("meta", {}))
    if args.dataset:
        meta.update(dataset=args.dataset, data_root=args.data_root, npz_key=args.npz_key, download=args.download)
    if "dataset" not in meta:
        raise SystemExit("nvae-fast eval: the checkpoint names no dataset; pass --dataset")
    data = _load_data(meta["dataset"], args.split, model.cfg.image_size, meta)
    result = evaluate(model, data, args.importance_samples, args.batch_size, device, args.max_images,
                      progress=not args.no_progress)
    result.update(dataset=data.name, weights="model" if args.no_ema else "ema", step=state["step"])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{data.name}: NLL {result['nll_bpd']:.4f} bits/dim (K={result['num_samples']}), "
              f"negative ELBO {result['nelbo_bpd']:.4f} bits/dim, {result['images']} images, step {result['step']}")
    return 0


def cmd_sample(args) -> int:
    from .train.checkpoint import load_checkpoint, save_checkpoint
    from .train.sampling import load_bn_state, readjust_bn, readjust_key, sample_images, save_png

    device = _setup(args)
    torch.manual_seed(args.seed)
    state = load_checkpoint(args.checkpoint)
    model = _eval_model(state, args.no_ema, device)
    if args.bn_batches > 0:
        key = readjust_key("model" if args.no_ema else "ema", args.temperature, args.bn_batches, args.bn_batch_size)
        cache = state.setdefault("sampling_bn", {})
        if key in cache:
            load_bn_state(model, cache[key])
            print(f"nvae-fast: BN statistics re-adjusted for sampling ({key}) loaded from the checkpoint")
        else:
            start = time.perf_counter()
            cache[key] = readjust_bn(model, args.bn_batches, args.bn_batch_size, args.temperature)
            save_checkpoint(state, args.checkpoint)
            print(f"nvae-fast: re-adjusted BN statistics for sampling ({key}) in "
                  f"{time.perf_counter() - start:.1f} s; cached in {args.checkpoint}")
    torch.manual_seed(args.seed)  # the same samples whether or not the BN state came from the cache
    images = sample_images(model, args.num, args.temperature, args.bn_batch_size)
    out = Path(args.out or Path(args.checkpoint).parent / f"samples_t{args.temperature:g}.png")
    save_png(images, out, args.nrow, args.upscale)
    print(f"nvae-fast: {args.num} samples at temperature {args.temperature:g} -> {out}")
    return 0


def cmd_bench(args) -> int:
    from .train.bench import benchmark

    device = _setup(args)
    result = benchmark(_model_config(args), _train_config(args), device, args.timed_steps, args.warmup)
    result.update(preset=args.preset, backend=args.backend)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} on {result['device']} (backend {args.backend}, amp {result['amp']}, batch "
              f"{result['batch_size']}): {result['images_per_s']:.1f} images/s, peak memory "
              f"{result['peak_memory_bytes'] / 2**20:.1f} MiB ({result['peak_memory_kind']})")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataError

    try:
        return COMMANDS[args.command](args)
    except (DataError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"nvae-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
