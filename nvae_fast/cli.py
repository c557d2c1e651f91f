"""``nvae-fast``: train, evaluate, sample and benchmark NVAE models.

    nvae-fast train  --preset digits --out runs/digits            # CPU demo, a few minutes
    nvae-fast eval   --checkpoint runs/digits/checkpoint.pt -K 32  # NLL (bits/dim) by importance sampling
    nvae-fast sample --checkpoint runs/digits/checkpoint.pt --temperature 0.8
    nvae-fast bench  --preset cifar10 --batch-size 32 --backend triton --device cuda

Every command takes ``--backend`` (``nvae_fast.set_backend``), ``--device`` and ``--threads``. Training
under ``torchrun --nproc_per_node N -m nvae_fast.cli train ...`` runs data-parallel (NCCL on CUDA, gloo on CPU).

SIGINT (Ctrl-C) and SIGTERM stop a training run after its current step with a checkpoint (a second one
stops it at once); they stop the other commands at once. Either way the command prints one line and
exits with 128 + the signal number (130, 143). User mistakes (arguments, data, checkpoints) are one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "torch", "triton", "cuda"],
                   help="kernel backend of the nvae_fast ops (default: auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads of torch (default: OMP_NUM_THREADS when set, else torch's default "
                        "lowered to the cores that other processes leave free)")


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
    g = p.add_argument_group("optimisation (with --resume the checkpoint's values apply, except --steps)")
    g.add_argument("--steps", type=_positive_int, default=None,
                   help=f"optimizer steps in all (default: {d.steps}); with --resume it lengthens or shortens "
                        "the run, whose schedules keep the checkpoint's length")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"per process (default: {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak Adamax learning rate (default: {d.lr})")
    g.add_argument("--lr-min", type=float, default=d.lr_min, help=f"final cosine learning rate (default: {d.lr_min})")
    g.add_argument("--warmup-steps", type=_non_negative_int, default=d.warmup_steps,
                   help=f"linear LR warm-up (default: {d.warmup_steps})")
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
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    resume.add_argument("--auto-resume", action="store_true",
                        help="continue from <out>/checkpoint.pt when it exists, else start a new run")
    p.add_argument("--log-every", type=_positive_int, default=10, help="steps between logged metrics (default: 10)")
    p.add_argument("--sample-every", type=_non_negative_int, default=100,
                   help="steps between sample grids; 0: only at the end (default: 100)")
    p.add_argument("--ckpt-every", type=_non_negative_int, default=500,
                   help="steps between checkpoints; 0: only at the end and on Ctrl-C/SIGTERM, as always (default: 500)")
    p.add_argument("--num-samples", type=_positive_int, default=64, help="images per sample grid (default: 64)")
    p.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="sampling temperature of the grids (default: 1.0)")
    p.add_argument("--bn-batches", type=_non_negative_int, default=10,
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
    p.add_argument("--temperature", type=_positive_float, default=1.0, help="prior temperature (default: 1.0)")
    p.add_argument("--out", default=None, help="PNG path (default: <checkpoint dir>/samples_t<T>.png)")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row (default: square grid)")
    p.add_argument("--upscale", type=_positive_int, default=2, help="pixel repeat factor of the PNG (default: 2)")
    p.add_argument("--bn-batches", type=_non_negative_int, default=10,
                   help="batches of BN re-adjustment (cached in the checkpoint when it is writable); "
                        "0 disables (default: 10)")
    p.add_argument("--bn-batch-size", type=_positive_int, default=64, help="(default: 64)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bench", help="training throughput (images/s) and peak memory")
    _common(p)
    _model_args(p, "tiny")
    _train_args(p)
    p.add_argument("--timed-steps", type=_positive_int, default=20, help="timed steps (default: 20)")
    p.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed steps first (default: 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _setup(args) -> torch.device:
    import nvae_fast

    nvae_fast.set_backend(args.backend)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads or _default_threads())
    return device


def _free_cores(cores: int, load: float) -> int:
    """The cores that a load average of ``load`` leaves free out of ``cores``, at least 1."""
    return max(1, min(cores, round(cores - load)))


def _default_threads() -> int:
    """Torch's CPU threads when ``--threads`` is not given: OMP_NUM_THREADS when set, else torch's
    default (one per core) lowered to the cores left free by other processes (1-minute load average).

    A thread per core on a machine whose cores are busy makes every parallel region wait for the
    slowest, descheduled thread: ``bench --preset digits --batch-size 32`` on 2 cores at a load average
    of 2.5-2.9 ran 2.1-2.3 images/s with 2 threads and 45-76 with 1. Lowering only, never raising,
    keeps a caller's own setting (``torch.set_num_threads``) as the ceiling.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(torch.get_num_threads(), _free_cores(cores, os.getloadavg()[0]))


def _device_text(device: torch.device) -> str:
    """``cuda:0``, or ``cpu (2 threads)``."""
    if device.type != "cpu":
        return str(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def _model_config(args, channels: int | None = None):
    from .model import preset

    overrides = dict(args.overrides)
    if channels is not None:
        overrides["image_channels"] = channels
    return preset(args.preset, **overrides)


def _train_config(args):
    from .train.trainer import TrainConfig

    return TrainConfig(
        steps=args.steps or TrainConfig.steps, batch_size=args.batch_size, lr=args.lr, lr_min=args.lr_min,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
        kl_warmup_portion=args.kl_warmup_portion, kl_balance=not args.no_kl_balance,
        grad_skip_threshold=args.grad_skip_threshold or None, amp=args.amp,
        grad_checkpointing=args.grad_checkpointing, seed=args.seed,
    )


def _load_data(source: str, split: str, image_size: int, meta: dict):
    from .data import load_dataset

    return load_dataset(source, split, image_size, root=meta.get("data_root", "data"),
                        npz_key=meta.get("npz_key"), download=meta.get("download", False))


# ---------------------------------------------------------------------------------------- checkpoints
def _one_line(exc: BaseException) -> str:
    """A one-line account of ``exc`` (a KeyError's text is only the key)."""
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_checkpoint(ckpt, what: str, build, *args):
    """``build(*args)`` on part ``what`` of checkpoint ``ckpt``; its failure becomes one line naming both."""
    try:
        return build(*args)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise ValueError(f"checkpoint {str(ckpt)!r}: bad {what}: {_one_line(exc)}") from exc


def _check_weights(ckpt, entry: str, model, weights: dict) -> None:
    """Refuse ``weights`` (a state dict) that do not fit ``model``: one line counting the misfits."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & weights.keys()
                      if not isinstance(weights[k], torch.Tensor) or weights[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ValueError(f"checkpoint {str(ckpt)!r}: {entry!r} does not fit its model_config: {len(missing)} "
                         f"tensors missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape "
                         f"or type (e.g. {example!r})")


def _eval_model(state: dict, no_ema: bool, device: torch.device, ckpt):
    """The checkpoint's model with its raw (``no_ema``) or averaged weights, in eval mode on ``device``."""
    from .model import NVAE, NVAEConfig

    cfg = _from_checkpoint(ckpt, "model_config", NVAEConfig.from_dict, state["model_config"])
    model = _from_checkpoint(ckpt, "model_config", NVAE, cfg)
    entry, weights = ("model", state["model"]) if no_ema else ("ema.module", state["ema"]["module"])
    _check_weights(ckpt, entry, model, weights)
    model.load_state_dict(weights)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- train
def _resume_state(args, ckpt: Path) -> dict:
    """The checkpoint to continue, its ``train_config`` set to ``--steps`` steps in all when given."""
    from .train.checkpoint import load_run_checkpoint
    from .train.trainer import TrainConfig

    if not ckpt.exists():
        raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist (start the run without --resume)")
    state = load_run_checkpoint(ckpt)
    config = _from_checkpoint(ckpt, "train_config", TrainConfig.from_dict, state["train_config"])
    if args.steps is not None and args.steps != config.steps:
        if args.steps < state["step"]:
            raise ValueError(f"--steps {args.steps} is below the {state['step']} steps that {ckpt} has done")
        config = config.with_steps(args.steps)
    state["train_config"] = config.to_dict()
    return state


def _resumed_trainer(state: dict, ckpt: Path, device):
    """``(trainer, data)`` continuing checkpoint ``state``."""
    from .model import NVAEConfig
    from .train.trainer import TrainConfig, Trainer

    meta = state["meta"]
    if "dataset" not in meta:
        raise ValueError(f"checkpoint {str(ckpt)!r}: bad 'meta': it names no dataset")
    cfg = _from_checkpoint(ckpt, "model_config", NVAEConfig.from_dict, state["model_config"])
    data = _load_data(meta["dataset"], "train", cfg.image_size, meta)
    trainer = Trainer(cfg, TrainConfig.from_dict(state["train_config"]), data, device, meta)
    _check_weights(ckpt, "model", trainer.model, state["model"])
    _check_weights(ckpt, "ema.module", trainer.ema.module, state["ema"]["module"])
    _from_checkpoint(ckpt, "training state (optimizer, scheduler, scaler, stats, rng)", trainer.load_state_dict, state)
    return trainer, data


def _new_trainer(args, ckpt: Path, device):
    """``(trainer, data)`` of a new run from the command line's preset, data and optimisation settings."""
    from .data import DATASETS
    from .train.trainer import Trainer

    if ckpt.exists():
        raise SystemExit(f"nvae-fast: {ckpt} exists: pass --resume (or --auto-resume) to continue it, "
                         "or choose another --out")
    source = args.dataset or (args.preset if args.preset in DATASETS else "digits")
    meta = {"dataset": source, "data_root": args.data_root, "npz_key": args.npz_key, "download": args.download}
    cfg = _model_config(args)
    data = _load_data(source, "train", cfg.image_size, meta)
    if data.channels != cfg.image_channels:
        cfg = _model_config(args, data.channels)
    return Trainer(cfg, _train_config(args), data, device, meta), data


def _say(*parts) -> None:
    """One status line on stdout, flushed (progress bars and other processes share the terminal)."""
    print(*parts, flush=True)


def _report_stop(trainer, signum: int, out: Path) -> None:
    """The line of a run stopped by a signal: where its checkpoint is and how to continue it."""
    from .train.interrupt import signal_name

    print(f"nvae-fast train: stopped by {signal_name(signum)} after step {trainer.step} of {trainer.config.steps}; "
          f"checkpoint {out / 'checkpoint.pt'}; continue with: nvae-fast train --out {out} --resume",
          file=sys.stderr, flush=True)


def _report_done(trainer, records: list[dict], first_step: int, seconds: float, out: Path) -> None:
    """The summary line of a run that reached its last step."""
    loss = ""
    if records:
        loss = (f"; loss {records[0]['loss']:.4f} (step {records[0]['step']}) -> {records[-1]['loss']:.4f} "
                f"(step {records[-1]['step']})")
    ran = trainer.step - first_step
    _say(f"nvae-fast: {ran} step{'s' if ran != 1 else ''} in {seconds:.1f} s by this process, {trainer.step} of "
         f"{trainer.config.steps} in all{loss}; skipped updates {trainer.stats['skipped']}; "
         f"checkpoint {out / 'checkpoint.pt'}; samples {out / 'samples'}")


def cmd_train(args, signals=None) -> int:
    """Train a new run or continue one; ``signals`` (a :class:`~nvae_fast.train.interrupt.StopSignals`)
    lets SIGINT/SIGTERM end the run after a step with a checkpoint."""
    from .train import distributed as D

    device = _setup(args)
    info = D.init_from_env(device)
    out = Path(args.out or f"runs/{args.preset}")
    ckpt = out / "checkpoint.pt"
    resume = args.resume or (args.auto_resume and ckpt.exists())
    try:
        if resume:
            state = _resume_state(args, ckpt)
            done, total = state["step"], state["train_config"]["steps"]
            if done >= total:
                if info.is_main:
                    _say(f"nvae-fast train: {ckpt} is complete ({done} of {total} steps); to train longer: "
                         f"nvae-fast train --out {out} --resume --steps N (N > {total})")
                return 0
            trainer, data = _resumed_trainer(state, ckpt, info.device)
            if info.is_main:
                _say(f"nvae-fast: resuming {ckpt} at step {trainer.step}/{trainer.config.steps}")
        else:
            trainer, data = _new_trainer(args, ckpt, info.device)
        first_step = trainer.step
        if info.is_main:
            params = sum(p.numel() for p in trainer.model.parameters())
            model = "checkpoint's model" if resume else f"preset {args.preset}"
            _say(f"nvae-fast: {data!r}, {model}, {params:,} parameters, "
                 f"{trainer.config.steps} steps of batch {trainer.config.batch_size} x {info.world_size} "
                 f"on {_device_text(info.device)}, output {out}")
        start = time.perf_counter()
        with signals.deferred() if signals else nullcontext():
            records = trainer.fit(out, log_every=args.log_every, sample_every=args.sample_every,
                                  ckpt_every=args.ckpt_every, progress=not args.no_progress,
                                  tensorboard=not args.no_tensorboard, num_samples=args.num_samples,
                                  temperature=args.temperature, bn_batches=args.bn_batches,
                                  stop_requested=(lambda: signals.received) if signals else None)
        if trainer.stop_code:
            if info.is_main:
                _report_stop(trainer, trainer.stop_code, out)
            return 128 + trainer.stop_code
        if info.is_main:
            _report_done(trainer, records, first_step, time.perf_counter() - start, out)
    finally:
        D.shutdown()
    return 0


# ------------------------------------------------------------------------------- eval, sample, bench
def cmd_eval(args) -> int:
    from .train.checkpoint import load_run_checkpoint
    from .train.evaluate import evaluate

    device = _setup(args)
    torch.manual_seed(args.seed)
    state = load_run_checkpoint(args.checkpoint)
    model = _eval_model(state, args.no_ema, device, args.checkpoint)
    meta = dict(state["meta"])
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


def _cache_in_checkpoint(state: dict, ckpt: Path) -> str | None:
    """Rewrite ``ckpt`` with ``state`` when this process may; returns why it did not (None: it did)."""
    from .train.checkpoint import save_checkpoint

    if not (os.access(ckpt, os.W_OK) and os.access(ckpt.parent, os.W_OK)):
        return "it or its folder is read-only"
    try:
        save_checkpoint(state, ckpt)
    except OSError as exc:
        return exc.strerror or _one_line(exc)
    return None


def _sampling_bn(args, state: dict, model, ckpt: Path) -> None:
    """Give ``model`` BN statistics re-adjusted for sampling: from the checkpoint's cache, or computed and
    cached in the checkpoint when it is writable (in memory only otherwise)."""
    from .train.sampling import load_bn_state, readjust_bn, readjust_key

    key = readjust_key("model" if args.no_ema else "ema", args.temperature, args.bn_batches, args.bn_batch_size)
    cache = state.setdefault("sampling_bn", {})
    if not isinstance(cache, dict):
        raise ValueError(f"checkpoint {str(ckpt)!r}: bad 'sampling_bn': a {type(cache).__name__}, not a dict")
    if key in cache:
        _from_checkpoint(ckpt, f"sampling_bn.{key}", load_bn_state, model, cache[key])
        _say(f"nvae-fast: BN statistics re-adjusted for sampling ({key}) loaded from the checkpoint")
        return
    start = time.perf_counter()
    cache[key] = readjust_bn(model, args.bn_batches, args.bn_batch_size, args.temperature)
    why_not = _cache_in_checkpoint(state, ckpt)
    where = f"cached in {ckpt}" if why_not is None else f"kept in memory only, {ckpt} not rewritten: {why_not}"
    _say(f"nvae-fast: re-adjusted BN statistics for sampling ({key}) in {time.perf_counter() - start:.1f} s; {where}")


def cmd_sample(args) -> int:
    from .train.checkpoint import load_run_checkpoint
    from .train.sampling import sample_images, save_png

    device = _setup(args)
    torch.manual_seed(args.seed)
    ckpt = Path(args.checkpoint)
    state = load_run_checkpoint(ckpt)
    model = _eval_model(state, args.no_ema, device, ckpt)
    if args.bn_batches > 0:
        _sampling_bn(args, state, model, ckpt)
    torch.manual_seed(args.seed)  # the same samples whether or not the BN state came from the cache
    images = sample_images(model, args.num, args.temperature, args.bn_batch_size)
    out = Path(args.out or ckpt.parent / f"samples_t{args.temperature:g}.png")
    try:
        save_png(images, out, args.nrow, args.upscale)
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or _one_line(exc)}; choose another --out") from exc
    _say(f"nvae-fast: {args.num} samples at temperature {args.temperature:g} -> {out}")
    return 0


def cmd_bench(args) -> int:
    from .train.bench import benchmark

    device = _setup(args)
    result = benchmark(_model_config(args), _train_config(args), device, args.timed_steps, args.warmup)
    result.update(preset=args.preset, backend=args.backend, threads=torch.get_num_threads())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.preset} on {_device_text(device)} (backend {args.backend}, amp {result['amp']}, batch "
              f"{result['batch_size']}): {result['images_per_s']:.1f} images/s, peak memory "
              f"{result['peak_memory_bytes'] / 2**20:.1f} MiB ({result['peak_memory_kind']})")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "bench": cmd_bench}


def _run(args, signals) -> int:
    """The command of ``args``; training gets ``signals`` to stop at a step boundary."""
    if args.command == "train":
        return cmd_train(args, signals)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataError
    from .train.interrupt import Interrupted, StopSignals, signal_name

    with StopSignals() as signals:
        try:
            return _run(args, signals)
        except Interrupted as exc:
            lost = "; work since its last checkpoint is lost" if args.command == "train" else ""
            print(f"nvae-fast {args.command}: stopped at once by {signal_name(exc.signum)}{lost}",
                  file=sys.stderr, flush=True)
            return exc.exit_code
        except (DataError, OSError, ValueError, RuntimeError) as exc:
            print(f"nvae-fast {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
