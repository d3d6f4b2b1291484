r"""Train a CIFAR ResNet or a video ResNet, optionally with attention: ``python -m nltutorial.train``.

Example (a quick CPU run on the offline subset)::

    python -m nltutorial.train --data-dir ../shared/data/cifar-10-subset --model resnet20 \
        --attention se --epochs 2 --batch-size 64 --train-subset 256 --test-subset 128 \
        --device cpu --out runs/quick

Data and models
---------------
``--data cifar10`` (default) trains ``--model resnet20|resnet56|resnet18`` (default resnet20)
with ``--attention none|se|cbam|bam|gc|nl|danet`` (:func:`nltutorial.models.cifar_resnet`).
The video data sets train ``--model c2d|i3d`` (default c2d) with ``--attention none|nl3d``
(:func:`nltutorial.video_models.video_resnet`), on clips (B, 3, T, H, W) from a
:class:`nltutorial.video.ClipLoader` (random left-right flips, Kinetics mean/std):

``--data moving-shapes``    the generated same/different task of :func:`nltutorial.video.moving_shapes`
                            (2 classes; fixed data seed 0, ``--seed`` varies the initialisation
                            and the batch order). ``--train-subset`` / ``--test-subset`` give the
                            number of clips generated (default 4000 / 1000), ``--frames`` T
                            (default 8), ``--size`` H = W (default 32).
``--data kinetics-folder``  a Kinetics-style folder ``--data-dir DIR`` read by
                            :func:`nltutorial.kinetics.load_kinetics_folder` (PyAV): its train
                            and val splits, ``--frames`` (8) frames ``--frame-stride`` (2) apart,
                            resized and cropped to ``--size`` (112). ``--train-subset N`` keeps N
                            clips evenly spaced over the (class-sorted) list.

For example, the video chapter's runs (one to two minutes each on a CPU for C2D)::

    python -m nltutorial.train --data moving-shapes --model c2d --attention nl3d --epochs 10 \
        --batch-size 32 --lr 0.1 --label-smoothing 0 --device cpu --seed 0 --out runs/c2d-nl3d

Options that do not apply to the chosen data or model (``--per-batch`` or ``--channels-last``
with video, ``--frames`` with CIFAR-10, ``--model c2d`` with CIFAR-10, ``--attention se`` with a
video model, …) are errors that name the flags. For video, "images" in the metrics and the
summary count clips, and ``flops`` is per clip (an input of shape (1, C, T, H, W)).

Outputs in ``--out DIR``:

``metrics.jsonl``  one JSON line per epoch: epoch (1-based), train_loss, train_accuracy,
                   test_loss, test_accuracy (fractions), lr (at the epoch's first step),
                   epoch_seconds (train + test), images_per_second (training images / training
                   seconds, this rank's share times the number of ranks).
``summary.json``   at the end: test_accuracy, params, flops (forward, per image), throughput,
                   wall_seconds, device, torch, commit, command, data and all options.
``model.pt``       at the end: the trained weights alone (``model.state_dict()``), to load
                   with ``cifar_resnet(model, attention=...).load_state_dict(torch.load(...))``.
``checkpoint.pt``  after every epoch (atomically: temporary file + ``os.replace``), and
                   mid-epoch on SIGTERM/SIGINT: model, optimizer, scheduler, grad scaler,
                   epochs done, step in the epoch, running sums, RNG states, loader state.

Resuming: ``--resume`` continues from ``DIR/checkpoint.pt`` (or starts afresh when there is
none); the options that shape the run (model, data, seed, schedule, epochs, …) must match the
checkpoint's. On a CPU a resumed run ends with exactly the metrics of an uninterrupted one.
``--stop-after K`` ends the run (exit 0) once K epochs are done, with the schedule still
spanning ``--epochs``: a planned interruption, for tests or time-sliced jobs. A run into a
folder that already holds a checkpoint needs ``--resume`` or ``--overwrite``.

Signals: SIGTERM or SIGINT finishes the current step, writes a (mid-epoch) checkpoint and
exits with 128 + the signal number; see :mod:`nltutorial.engine`.

Distributed: under ``torchrun --nproc-per-node N`` (environment WORLD_SIZE > 1) the model is
wrapped in DistributedDataParallel (backend nccl on CUDA, gloo on CPU). ``--batch-size`` is
the per-process batch; every process draws the same global batch of N × batch-size images
from the same seeded loader and trains on its own slice, so the run equals a single-process
run with batch N × batch-size (up to BatchNorm statistics, which stay per process). Rank 0
writes the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from . import engine
from .cost import count_flops, count_parameters
from .data import cifar10, cifar10_source, data_root
from .loader import DeviceLoader
from .models import cifar_resnet
from .video import ClipLoader, moving_shapes
from .video_models import video_resnet

__all__ = ["build_parser", "main", "parse_args", "train"]

CIFAR_MODELS = ("resnet20", "resnet56", "resnet18")
VIDEO_MODELS = ("c2d", "i3d")
MODELS = CIFAR_MODELS + VIDEO_MODELS
CIFAR_ATTENTIONS = ("none", "se", "cbam", "bam", "gc", "nl", "danet")
VIDEO_ATTENTIONS = ("none", "nl3d")
ATTENTIONS = CIFAR_ATTENTIONS + ("nl3d",)
VIDEO_DATA = ("moving-shapes", "kinetics-folder")
DATASETS = ("cifar10",) + VIDEO_DATA
#: Defaults of the video options, per data set (None: the option does not apply).
VIDEO_DEFAULTS = {"moving-shapes": {"frames": 8, "frame_stride": None, "size": 32},
                  "kinetics-folder": {"frames": 8, "frame_stride": 2, "size": 112}}
#: Clips generated for --data moving-shapes when --train-subset / --test-subset are not given.
MOVING_SHAPES_CLIPS = (4000, 1000)
AMPS = ("bf16", "fp16", "off")
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
               "epoch_seconds", "images_per_second")

#: Options that must match between a checkpoint and the run that resumes it.
RESUME_KEYS = ("data", "data_dir", "model", "attention", "epochs", "batch_size", "lr", "momentum",
               "weight_decay", "schedule", "label_smoothing", "seed", "per_batch", "train_subset", "test_subset",
               "world_size", "frames", "frame_stride", "size")


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m nltutorial.train``."""
    p = argparse.ArgumentParser(prog="python -m nltutorial.train",
                                description="Train a CIFAR ResNet with optional attention on CIFAR-10, or a "
                                            "C2D/I3D video ResNet with optional space-time non-local blocks.")
    p.add_argument("--data", default="cifar10", choices=DATASETS,
                   help="data set: cifar10 (default), moving-shapes (generated clips) or kinetics-folder")
    p.add_argument("--data-dir", default=None,
                   help="cifar10: folder holding cifar-10-batches-py (default $NLTUTORIAL_DATA or "
                        "~/.cache/nltutorial); kinetics-folder: the data set folder (required)")
    p.add_argument("--per-batch", type=_positive_int("--per-batch"), default=None,
                   help="use the first N images of every batch file (1000: the offline subset's images)")
    p.add_argument("--train-subset", type=_positive_int("--train-subset"), default=None,
                   help="train on the first N training images only (moving-shapes: generate N training "
                        "clips, default 4000; kinetics-folder: N clips evenly spaced over the list)")
    p.add_argument("--test-subset", type=_positive_int("--test-subset"), default=None,
                   help="test on the first N test images only (moving-shapes: generate N validation "
                        "clips, default 1000; kinetics-folder: N clips evenly spaced over the list)")
    p.add_argument("--model", default=None, choices=MODELS,
                   help="cifar10: resnet20 (default), resnet56, resnet18; video data: c2d (default), i3d")
    p.add_argument("--attention", default="none", choices=ATTENTIONS,
                   help="cifar10: none, se, cbam, bam, gc, nl, danet; video data: none, nl3d")
    p.add_argument("--frames", type=_positive_int("--frames"), default=None,
                   help="video data: frames per clip, T (default 8)")
    p.add_argument("--frame-stride", type=_positive_int("--frame-stride"), default=None,
                   help="kinetics-folder: frames between sampled frames (default 2)")
    p.add_argument("--size", type=_positive_int("--size"), default=None,
                   help="video data: frame height = width (moving-shapes 32, kinetics-folder 112)")
    p.add_argument("--epochs", type=_positive_int("--epochs"), default=30)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=128,
                   help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on conv/linear weights only")
    p.add_argument("--schedule", default="onecycle", choices=engine.SCHEDULES)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default=None, choices=AMPS,
                   help="autocast precision (default bf16 on CUDA, off on CPU); fp16 needs CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a checkpoint")
    p.add_argument("--stop-after", type=_positive_int("--stop-after"), default=None,
                   help="stop (exit 0) once this many epochs are done; the schedule still spans --epochs")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal; needs tqdm)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _check_family(args: argparse.Namespace, models, attentions, other: str) -> None:
    """--model and --attention must both belong to the family that --data needs."""
    for flag, value, allowed in (("--model", args.model, models), ("--attention", args.attention, attentions)):
        if value not in allowed:
            raise ValueError(f"{flag} {value} is for {other}; --data {args.data} takes "
                             f"{flag} {' / '.join(allowed)}")


def _validate_data_model(args: argparse.Namespace) -> None:
    """Check that data, model, attention and the data options fit together; fill defaults."""
    video = args.data in VIDEO_DATA
    if args.model is None:
        args.model = "c2d" if video else "resnet20"
    if video:
        _check_family(args, VIDEO_MODELS, VIDEO_ATTENTIONS, "the CIFAR ResNets")
        if args.per_batch is not None:
            raise ValueError(f"--per-batch applies to --data cifar10, not --data {args.data}")
        if args.channels_last:
            raise ValueError(f"--channels-last applies to --data cifar10 (4-D images), not --data {args.data}")
        defaults = VIDEO_DEFAULTS[args.data]
        if args.data == "moving-shapes":
            if args.data_dir is not None:
                raise ValueError("--data-dir does not apply to --data moving-shapes (the clips are generated)")
            if args.frame_stride is not None:
                raise ValueError("--frame-stride applies to --data kinetics-folder, not --data moving-shapes")
            if args.frames is not None and args.frames < 3:
                raise ValueError(f"--frames must be >= 3 for --data moving-shapes, got {args.frames}")
        elif args.data_dir is None:
            raise ValueError("--data kinetics-folder needs --data-dir DIR (the data set folder)")
        for key in ("frames", "frame_stride", "size"):
            if getattr(args, key) is None:
                setattr(args, key, defaults[key])
        if args.size < 16:
            raise ValueError(f"--size must be >= 16 for the video models (three stride-2 stages), got {args.size}")
    else:
        _check_family(args, CIFAR_MODELS, CIFAR_ATTENTIONS, "the video models")
        for flag, value in (("--frames", args.frames), ("--frame-stride", args.frame_stride),
                            ("--size", args.size)):
            if value is not None:
                raise ValueError(f"{flag} applies to the video data sets (--data {' / '.join(VIDEO_DATA)}), "
                                 f"not --data {args.data}")


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check option values argparse cannot; raise ValueError naming the flag."""
    _validate_data_model(args)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (0.0 <= args.momentum < 1.0):
        raise ValueError(f"--momentum must be in [0, 1), got {args.momentum}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not (0.0 <= args.label_smoothing < 1.0):
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if args.stop_after is not None and args.stop_after > args.epochs:
        raise ValueError(f"--stop-after ({args.stop_after}) must be <= --epochs ({args.epochs})")
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA (use bf16 or off on a CPU)")
    return args


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and validate; errors exit through ``parser.error`` (status 2) naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_metrics(path: Path, history) -> None:
    """Rewrite metrics.jsonl from the history (atomically): no duplicates after a resume."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in history))
    os.replace(tmp, path)


def _log(rank: int, *msg) -> None:
    if rank == 0:
        print(*msg, flush=True)


def _setup_distributed(device_name: str):
    """Initialise torch.distributed under torchrun; return (rank, world_size, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, local


def train(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> dict:
    """Run training as described by ``args`` (from :func:`parse_args`); return the summary.

    Raises ValueError on bad options and :class:`nltutorial.engine.TrainingInterrupted`
    after a signal (a checkpoint has then been written).
    """
    validate(args)
    wall0 = time.perf_counter()
    rank, world, local = _setup_distributed(args.device)
    args.world_size = world
    device = resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    amp = args.amp or ("bf16" if device.type == "cuda" else "off")
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    if progress and engine._tqdm is None:
        _log(rank, "[nltutorial.train] tqdm is not installed: no progress bar (pip install tqdm)")
        progress = False
    progress = progress and rank == 0

    out = Path(args.out)
    ckpt_path, metrics_path, summary_path = out / CHECKPOINT, out / METRICS, out / SUMMARY
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if ckpt_path.exists():
        if args.resume:
            checkpoint = engine.load_checkpoint(ckpt_path)
        elif not args.overwrite:
            raise ValueError(f"--out {out} already holds {CHECKPOINT}: pass --resume to continue or "
                             f"--overwrite to start afresh")
    config = {k: getattr(args, k) for k in RESUME_KEYS}
    if checkpoint is not None:
        for k in RESUME_KEYS:
            if checkpoint["config"].get(k) != config[k]:
                flag = "--" + k.replace("_", "-")
                raise ValueError(f"{flag} is {config[k]!r} but the checkpoint in {out} was made with "
                                 f"{checkpoint['config'].get(k)!r}")

    # ---- data
    video = args.data in VIDEO_DATA
    global_batch = args.batch_size * world
    if video:
        train_images, train_labels, test_images, test_labels, data_info = _video_data(args)
        num_classes = len(data_info["classes"])
        root = data_info["root"]
    else:
        root = data_root(args.data_dir)
        train_images, train_labels = cifar10(root, train=True, per_batch=args.per_batch)
        test_images, test_labels = cifar10(root, train=False, per_batch=args.per_batch)
        if args.train_subset is not None:
            train_images, train_labels = train_images[: args.train_subset], train_labels[: args.train_subset]
        if args.test_subset is not None:
            test_images, test_labels = test_images[: args.test_subset], test_labels[: args.test_subset]
        num_classes = 10
        data_info = {"source": cifar10_source(root)}
    if len(train_images) < global_batch:
        raise ValueError(f"--batch-size {args.batch_size} (x {world} processes) exceeds the "
                         f"{len(train_images)} training {'clips' if video else 'images'}")
    if video:
        train_loader = ClipLoader(train_images, train_labels, global_batch, train=True, device=device,
                                  seed=args.seed)
        test_loader = ClipLoader(test_images, test_labels, global_batch, train=False, device=device,
                                 seed=args.seed)
    else:
        train_loader = DeviceLoader(train_images, train_labels, global_batch, train=True, device=device,
                                    seed=args.seed, channels_last=args.channels_last)
        test_loader = DeviceLoader(test_images, test_labels, global_batch, train=False, device=device,
                                   channels_last=args.channels_last, seed=args.seed)
    steps = len(train_loader)
    shard = None
    if world > 1:
        def shard(x, y):
            sl = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
            return x[sl], y[sl]

    # ---- model, optimiser, schedule
    torch.manual_seed(args.seed)
    attention = None if args.attention == "none" else args.attention
    if video:
        model = video_resnet(args.model, num_classes=num_classes, attention=attention).to(device)
        flops_input = torch.zeros(1, *train_images.shape[1:], device=device)   # (1, C, T, H, W)
    else:
        model = cifar_resnet(args.model, num_classes=10, attention=attention).to(device)
        flops_input = torch.zeros(1, 3, 32, 32, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model)
    model.eval()
    flops = count_flops(model, flops_input)
    model.train()
    optimizer = engine.build_optimizer(model, args.lr, args.weight_decay, args.momentum)
    scheduler = engine.build_scheduler(optimizer, args.schedule, args.lr, args.epochs * steps)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    start_epoch, history, epoch_state, elapsed = 0, [], None, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        train_loader.load_state_dict(checkpoint["loader"])
        start_epoch, history = checkpoint["epoch"], list(checkpoint["history"])
        elapsed = float(checkpoint.get("wall_seconds", 0.0))
        if checkpoint.get("epoch_state") is not None:
            epoch_state = dict(checkpoint["epoch_state"])
            epoch_state["loss_sum"] = epoch_state["loss_sum"].to(device)
            epoch_state["correct"] = epoch_state["correct"].to(device)
        _log(rank, f"[nltutorial.train] resuming {ckpt_path}: {start_epoch} epochs done"
             + (f", step {epoch_state['step']}/{steps} of epoch {start_epoch + 1}" if epoch_state else ""))
    if rank == 0:
        _write_metrics(metrics_path, history)

    step_model = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        step_model = torch.compile(step_model)

    def save(epoch_done: int, state: Optional[dict]) -> None:
        if rank != 0:
            return
        engine.atomic_save({
            "format": 1,
            "config": config,
            "args": vars(args),
            "epoch": epoch_done,
            "epoch_state": None if state is None else {**state, "loss_sum": state["loss_sum"].cpu(),
                                                        "correct": state["correct"].cpu()},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "loader": {"epoch": epoch_done, "seed": train_loader.seed},
            "rng": engine.get_rng_state(),
            "history": history,
            "wall_seconds": elapsed + time.perf_counter() - wall0,
            "torch": torch.__version__,
        }, ckpt_path)

    unit = "clip" if video else "image"
    _log(rank, f"[nltutorial.train] {args.model} attention={args.attention} on {device} "
         f"(amp {amp}, {world} process{'es' if world > 1 else ''}): {params:,} parameters, "
         f"{flops / 1e6:.1f} MFLOPs/{unit}, {len(train_images)} train / {len(test_images)} test {unit}s, "
         f"{steps} steps/epoch")

    last_epoch = args.stop_after or args.epochs
    with engine.StopOnSignal() as stop:
        def on_stop(state):
            save(epoch, state)
            if world > 1:
                torch.distributed.barrier()
            raise engine.TrainingInterrupted(stop.signum or 15, ckpt_path)

        for epoch in range(start_epoch, last_epoch):
            if epoch_state is not None:  # mid-epoch resume: RNG state as at the checkpoint
                engine.set_rng_state(checkpoint["rng"])
            else:
                engine.seed_epoch(args.seed, epoch)
            train_loader.set_epoch(epoch)
            state = engine.train_epoch(step_model, train_loader, optimizer, scheduler, criterion,
                                       device=device, amp=amp, scaler=scaler, state=epoch_state,
                                       steps=steps, stop=stop, on_stop=on_stop, shard=shard,
                                       progress=progress, desc=f"epoch {epoch + 1}/{args.epochs}")
            epoch_state = None
            summary = engine.epoch_summary(state)
            if not math.isfinite(summary["train_loss"]):
                raise FloatingPointError(f"epoch {epoch + 1}: training loss is {summary['train_loss']}")
            t_eval = time.perf_counter()
            test = engine.evaluate(step_model, test_loader, device=device, amp=amp, shard=shard)
            row = {"epoch": epoch + 1, "train_loss": summary["train_loss"],
                   "train_accuracy": summary["train_accuracy"], **test, "lr": state["lr"],
                   "epoch_seconds": state["seconds"] + (time.perf_counter() - t_eval),
                   "images_per_second": summary["train_images"] / max(state["seconds"], 1e-9)}
            history.append(row)
            if rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            save(epoch + 1, None)
            _log(rank, f"epoch {epoch + 1}/{args.epochs}  train loss {row['train_loss']:.4f} "
                 f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} "
                 f"acc {row['test_accuracy']:.4f}  lr {row['lr']:.4g}  {row['epoch_seconds']:.1f} s  "
                 f"{row['images_per_second']:.0f} img/s")
            if engine.any_rank(stop.requested, device):
                if world > 1:
                    torch.distributed.barrier()
                raise engine.TrainingInterrupted(stop.signum or 15, ckpt_path)

    rates = sorted(m["images_per_second"] for m in history)
    summary = {
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "test_loss": history[-1]["test_loss"] if history else None,
        "train_accuracy": history[-1]["train_accuracy"] if history else None,
        "train_loss": history[-1]["train_loss"] if history else None,
        "epochs_done": len(history),
        "finished": len(history) == args.epochs,
        "params": params,
        "flops": flops,
        "images_per_second": rates[len(rates) // 2] if rates else None,
        "wall_seconds": elapsed + time.perf_counter() - wall0,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device_type": device.type,
        "world_size": world,
        "amp": amp,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "command": " ".join(shlex.quote(a) for a in
                            [sys.executable, "-m", "nltutorial.train",
                             *(sys.argv[1:] if argv is None else argv)]),
        "data": {"name": args.data, "root": None if root is None else str(root),
                 "train_images": int(len(train_images)), "test_images": int(len(test_images)),
                 **{k: v for k, v in data_info.items() if k != "root"}},
        "args": vars(args),
    }
    if rank == 0:
        if summary["finished"]:
            engine.atomic_save(model.state_dict(), out / MODEL)
        _write_json(summary_path, summary)
        _log(rank, f"[nltutorial.train] test accuracy {summary['test_accuracy']:.4f}; wrote {out}")
    return summary


def _evenly_spaced(n_total: int, n: Optional[int]) -> Optional[torch.Tensor]:
    """Indices of n items spread evenly over n_total (None: all of them)."""
    if n is None or n >= n_total:
        return None
    return torch.linspace(0, n_total - 1, n).round().long()


def _video_data(args: argparse.Namespace):
    """(train clips, train labels, val clips, val labels, info) for the video data sets.

    Clips are uint8 (N, 3, T, H, W), labels int64; info has root, classes, frames, size.
    """
    if args.data == "moving-shapes":
        n_train = args.train_subset or MOVING_SHAPES_CLIPS[0]
        n_val = args.test_subset or MOVING_SHAPES_CLIPS[1]
        data = moving_shapes(n_train, n_val, frames=args.frames, size=args.size, seed=0)
        info = {"root": None, "classes": list(data.classes), "frames": args.frames, "size": args.size,
                "shapes": list(data.shapes), "seed": 0}
        return data.train_clips, data.train_labels, data.val_clips, data.val_labels, info
    try:
        from .kinetics import load_kinetics_folder
    except ImportError as err:  # e.g. a missing decoder dependency
        raise ValueError(f"--data kinetics-folder needs nltutorial.kinetics and PyAV "
                         f"(pip install av, or pip install \"nltutorial[video]\"): {err}") from err
    root = Path(args.data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a folder")
    kwargs = dict(frames=args.frames, frame_stride=args.frame_stride, size=args.size)
    try:
        train_x, train_y, classes = load_kinetics_folder(root, "train", **kwargs)
        val_x, val_y, _ = load_kinetics_folder(root, "val", classes=classes, **kwargs)
    except ImportError as err:  # PyAV is imported when the first video file is decoded
        raise ValueError(f"--data kinetics-folder: decoding videos needs PyAV (pip install av, or "
                         f"pip install \"nltutorial[video]\"): {err}") from err
    keep = _evenly_spaced(len(train_x), args.train_subset)
    if keep is not None:
        train_x, train_y = train_x[keep], train_y[keep]
    keep = _evenly_spaced(len(val_x), args.test_subset)
    if keep is not None:
        val_x, val_y = val_x[keep], val_y[keep]
    info = {"root": root, "classes": list(classes), "frames": args.frames, "frame_stride": args.frame_stride,
            "size": args.size}
    return train_x, train_y, val_x, val_y, info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (128 + signal number if interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse_args(argv)
    try:
        train(args, argv)
    except ValueError as err:
        parser.error(str(err))
    except engine.TrainingInterrupted as err:
        print(f"[nltutorial.train] {err}", file=sys.stderr, flush=True)
        return err.exit_code
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
