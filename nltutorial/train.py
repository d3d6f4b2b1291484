r"""Train a CIFAR ResNet or a video ResNet, optionally with attention: ``python -m nltutorial.train``.

Example (a quick CPU run on the offline subset)::

    python -m nltutorial.train --data-dir ../shared/data/cifar-10-subset --model resnet20 \
        --attention se --epochs 2 --batch-size 64 --train-subset 256 --test-subset 128 \
        --device cpu --out runs/quick

Data and models
---------------
``--data cifar10`` (default) trains ``--model resnet20|resnet56|resnet18`` (default resnet20)
with ``--attention none|se|cbam|bam|gc|nl|danet`` (:func:`nltutorial.models.cifar_resnet`);
``--cam-energy paper|official|mean`` picks the energy of DANet's channel attention (default: the
block's, "paper"; "mean" is softmax(A Aᵀ / N), see :mod:`nltutorial.danet`).
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
``--data kinetics400-tiny`` the 2-class Kinetics-400 subset of the mmaction2 tutorials (30 train,
                            10 val clips) read by :func:`nltutorial.kinetics.kinetics400_tiny`:
                            ``--data-dir DIR`` holds ``kinetics400_tiny/`` (default
                            ``$NLTUTORIAL_DATA`` or ``~/.cache/nltutorial``, which downloads the
                            18 MB archive as needed; into a ``--data-dir`` pass ``--download``).
                            Frames, stride, size and subsets as for kinetics-folder.

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
``checkpoint.pt``  after every epoch (atomically: temporary file + ``os.replace``; written
                   before the epoch's metrics line, so metrics.jsonl never lists an epoch the
                   checkpoint lacks), and mid-epoch on SIGTERM/SIGINT: model, optimizer,
                   scheduler, grad scaler, epochs done, step in the epoch, every rank's running
                   sums, RNG states, loader state. Tensors and plain data only: it loads with
                   ``torch.load(weights_only=True)`` (format 2; format 1 is still read).

All JSON is strict: a NaN or infinite number is written as null. Temporary files that a killed
write left in ``--out`` are removed when the next run starts there. A full disk stops the run
with "disk full while writing PATH" (exit 1); the previous checkpoint stays valid.

Resuming: ``--resume`` continues from ``DIR/checkpoint.pt`` (or starts afresh when ``DIR`` holds
no earlier run); the options that shape the run (model, data, seed, schedule, epochs, …) must
match the checkpoint's (``--data-dir`` as a folder: ``d``, ``d/`` and ``./d`` are the same). On
a CPU a resumed run ends with exactly the metrics of an uninterrupted one, also under
``torchrun``. ``--resume`` on a finished run (summary.json with ``finished: true``) says so and
trains nothing. A damaged checkpoint, or one whose pickle would build anything but tensors
and plain data, is an error naming the file. ``--stop-after K`` ends the run (exit 0) once K
epochs are done, with the schedule still spanning ``--epochs``: a planned interruption, for
tests or time-sliced jobs. A run into a folder that already holds a checkpoint needs
``--resume`` or ``--overwrite``; one that holds metrics.jsonl, summary.json or model.pt but no
checkpoint needs ``--overwrite`` (which deletes the earlier run's files).

Divergence: an epoch whose train or test loss is NaN or infinite ends the run with exit 1 and
a message naming the epoch; summary.json records it under ``diverged``, and neither the
checkpoint nor metrics.jsonl gets that epoch.

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
from .danet import CAM_ENERGIES
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
#: The --attention values whose blocks take --cam-energy (a ChannelAttention inside).
CAM_ENERGY_ATTENTIONS = ("danet",)
VIDEO_DATA = ("moving-shapes", "kinetics-folder", "kinetics400-tiny")
DATASETS = ("cifar10",) + VIDEO_DATA
#: The data sets that ``--download`` fetches.
DOWNLOADABLE = ("cifar10", "kinetics400-tiny")
#: Defaults of the video options, per data set (None: the option does not apply).
VIDEO_DEFAULTS = {"moving-shapes": {"frames": 8, "frame_stride": None, "size": 32},
                  "kinetics-folder": {"frames": 8, "frame_stride": 2, "size": 112}}
VIDEO_DEFAULTS["kinetics400-tiny"] = dict(VIDEO_DEFAULTS["kinetics-folder"])
#: Clips generated for --data moving-shapes when --train-subset / --test-subset are not given.
MOVING_SHAPES_CLIPS = (4000, 1000)
AMPS = ("bf16", "fp16", "off")
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
OUTPUTS = (CHECKPOINT, MODEL, METRICS, SUMMARY)
SEED_MAX = 2**32 - 1
METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
               "epoch_seconds", "images_per_second")

#: Options that must match between a checkpoint and the run that resumes it.
RESUME_KEYS = ("data", "data_dir", "model", "attention", "epochs", "batch_size", "lr", "momentum",
               "weight_decay", "schedule", "label_smoothing", "seed", "per_batch", "train_subset", "test_subset",
               "world_size", "frames", "frame_stride", "size", "cam_energy")


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


def _seed(text):
    """--seed: an integer in [0, 2**32 - 1] (NumPy's seed range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"--seed must be in [0, {SEED_MAX}], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m nltutorial.train``."""
    p = argparse.ArgumentParser(prog="python -m nltutorial.train",
                                description="Train a CIFAR ResNet with optional attention on CIFAR-10, or a "
                                            "C2D/I3D video ResNet with optional space-time non-local blocks.")
    p.add_argument("--data", default="cifar10", choices=DATASETS,
                   help="data set: cifar10 (default), moving-shapes (generated clips), kinetics-folder or "
                        "kinetics400-tiny")
    p.add_argument("--data-dir", default=None,
                   help="cifar10: folder holding cifar-10-batches-py (default $NLTUTORIAL_DATA or "
                        "~/.cache/nltutorial); kinetics-folder: the data set folder (required); "
                        "kinetics400-tiny: folder holding kinetics400_tiny (default as for cifar10). It must "
                        "exist unless --download is given")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 or Kinetics-400-tiny into --data-dir if it is missing (without "
                        "--data-dir the default cache folder downloads as needed)")
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
    p.add_argument("--cam-energy", default=None, choices=CAM_ENERGIES,
                   help="--attention danet: energy of the channel attention, X = softmax(A Aᵀ) (paper), "
                        "softmax(max(A Aᵀ) − A Aᵀ) (official code) or softmax(A Aᵀ / N) (mean, N = H·W); "
                        "default: the block's (paper)")
    p.add_argument("--frames", type=_positive_int("--frames"), default=None,
                   help="video data: frames per clip, T (default 8)")
    p.add_argument("--frame-stride", type=_positive_int("--frame-stride"), default=None,
                   help="kinetics-folder, kinetics400-tiny: frames between sampled frames (default 2)")
    p.add_argument("--size", type=_positive_int("--size"), default=None,
                   help="video data: frame height = width (moving-shapes 32, kinetics-folder and "
                        "kinetics400-tiny 112)")
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
    p.add_argument("--seed", type=_seed, default=0, help=f"random seed, 0 to {SEED_MAX}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh, deleting the checkpoint, metrics, summary and model already in OUT")
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
        elif args.data == "kinetics-folder" and args.data_dir is None:
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
    if args.cam_energy is not None and args.attention not in CAM_ENERGY_ATTENTIONS:
        raise ValueError(f"--cam-energy applies to --attention {' / '.join(CAM_ENERGY_ATTENTIONS)} (DANet's "
                         f"channel attention), not --attention {args.attention}")


def _validate_paths(args: argparse.Namespace) -> None:
    """--out must name a folder (existing or not); --data-dir an existing folder unless --download."""
    if not args.out or not args.out.strip():
        raise ValueError("--out must name a folder, got an empty string")
    if Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
        raise ValueError(f"--out {args.out} is a file, expected a folder")
    if args.download and args.data not in DOWNLOADABLE:
        raise ValueError(f"--download applies to --data {' / '.join(DOWNLOADABLE)}, not --data {args.data}")
    if args.data_dir is None:
        return
    data_dir = Path(args.data_dir).expanduser()
    if not args.data_dir.strip():
        raise ValueError("--data-dir must name a folder, got an empty string")
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is a file, expected a folder")
    if not data_dir.exists() and not args.download:
        name = {"cifar10": "CIFAR-10", "kinetics400-tiny": "Kinetics-400-tiny"}.get(args.data)
        hint = f" (pass --download to download {name} there)" if name else ""
        raise ValueError(f"--data-dir {args.data_dir} does not exist{hint}")


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check option values argparse cannot; raise ValueError naming the flag."""
    _validate_data_model(args)
    _validate_paths(args)
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


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    """Strict JSON (NaN and inf written as null), atomically."""
    engine.atomic_write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n", path)


def _write_metrics(path: Path, history) -> None:
    """Rewrite metrics.jsonl from the history (atomically): no duplicates after a resume."""
    engine.atomic_write_text("".join(json.dumps(_finite(m), allow_nan=False) + "\n" for m in history), path)


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


# ---------------------------------------------------------------------------------------------
# The output folder: refuse to lose an earlier run, resume, or report it finished
# ---------------------------------------------------------------------------------------------


def _same_path(a, b) -> bool:
    """Whether two folder names (None, or relative to the current folder) name the same folder."""
    if a is None or b is None:
        return a is b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_config(config: dict, saved: dict, where: str) -> None:
    """ValueError naming the first flag whose value differs from the run ``saved`` came from."""
    for k in RESUME_KEYS:
        mine, theirs = config[k], saved.get(k)
        if not (_same_path(mine, theirs) if k == "data_dir" else mine == theirs):
            raise ValueError(f"--{k.replace('_', '-')} is {mine!r} but {where} was made with {theirs!r}")


def _earlier_outputs(out: Path) -> list:
    """The files of an earlier run in ``out`` (an empty metrics.jsonl, from a run stopped before
    its first epoch, holds nothing and does not count)."""
    found = [name for name in (METRICS, SUMMARY, MODEL) if (out / name).exists()]
    if METRICS in found and (out / METRICS).stat().st_size == 0:
        found.remove(METRICS)
    return found


def _finished_run(out: Path, config: dict) -> Optional[dict]:
    """The summary of a finished run in ``out`` made with the same options, else None."""
    path = out / SUMMARY
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}); use --overwrite to start afresh") from None
    if not (isinstance(saved, dict) and saved.get("finished") is True):
        return None
    _check_config(config, saved.get("args") or {}, f"the finished run in {out}")
    return saved


def _load_checkpoint(path: Path, config: dict) -> dict:
    """The checkpoint at ``path``, checked to come from a run with the same options."""
    try:
        checkpoint = engine.load_checkpoint(path)
    except engine.CheckpointError as err:
        raise ValueError(f"{err}; use --overwrite to start afresh") from None
    _check_config(config, checkpoint["config"], f"the checkpoint in {path.parent}")
    return checkpoint


def _open_out(args: argparse.Namespace, config: dict, rank: int):
    """Decide what to do with ``--out``: return (checkpoint or None, finished summary or None).

    A folder with a checkpoint needs --resume (continue) or --overwrite (start afresh); one with
    an earlier run's metrics.jsonl, summary.json or model.pt but no checkpoint needs --overwrite
    (nothing to resume from). --resume on a finished run returns its summary and trains nothing.
    --overwrite deletes the earlier run's files; temporary files of killed writes are removed.
    """
    out = Path(args.out)
    ckpt_path = out / CHECKPOINT
    if args.resume:
        finished = _finished_run(out, config)
        if finished is not None:
            return None, finished
    checkpoint = None
    if ckpt_path.exists():
        if args.resume:
            checkpoint = _load_checkpoint(ckpt_path, config)
        elif not args.overwrite:
            raise ValueError(f"--out {out} already holds {CHECKPOINT}: pass --resume to continue or "
                             f"--overwrite to start afresh")
    elif not args.overwrite and _earlier_outputs(out):
        raise ValueError(f"--out {out} holds {', '.join(_earlier_outputs(out))} of an earlier run but no "
                         f"{CHECKPOINT}{' to resume from' if args.resume else ''}: pass --overwrite to "
                         f"replace them, or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            for name in (CHECKPOINT, SUMMARY, MODEL):
                (out / name).unlink(missing_ok=True)
        for path in engine.remove_temporaries(out, OUTPUTS):
            _log(rank, f"[nltutorial.train] removed {path} (left by an interrupted write)")
    return checkpoint, None


# ---------------------------------------------------------------------------------------------
# Data, model, resumed state
# ---------------------------------------------------------------------------------------------


def _cifar_data(args: argparse.Namespace):
    """(train images, train labels, test images, test labels, info) of CIFAR-10 for the options."""
    root = data_root(args.data_dir)
    download = args.download or args.data_dir is None   # the default cache root downloads as needed
    try:
        train_images, train_labels = cifar10(root, train=True, download=download, per_batch=args.per_batch)
        test_images, test_labels = cifar10(root, train=False, download=download, per_batch=args.per_batch)
    except FileNotFoundError as err:
        flag = f"--data-dir {args.data_dir}" if args.data_dir is not None else f"CIFAR-10 in {root}"
        raise ValueError(f"{flag}: {err}" + ("" if download else " (or pass --download to download it there)")) \
            from None
    if args.train_subset is not None:
        train_images, train_labels = train_images[: args.train_subset], train_labels[: args.train_subset]
    if args.test_subset is not None:
        test_images, test_labels = test_images[: args.test_subset], test_labels[: args.test_subset]
    return train_images, train_labels, test_images, test_labels, {"root": root, "source": cifar10_source(root)}


def _loaders(args: argparse.Namespace, world: int, device: torch.device):
    """(train loader, test loader, data info) for --data; info adds num_classes and the counts."""
    video = args.data in VIDEO_DATA
    train_x, train_y, test_x, test_y, info = _video_data(args) if video else _cifar_data(args)
    global_batch = args.batch_size * world
    if len(train_x) < global_batch:
        raise ValueError(f"--batch-size {args.batch_size} (x {world} processes) exceeds the "
                         f"{len(train_x)} training {'clips' if video else 'images'}")
    if video:
        train_loader = ClipLoader(train_x, train_y, global_batch, train=True, device=device, seed=args.seed)
        test_loader = ClipLoader(test_x, test_y, global_batch, train=False, device=device, seed=args.seed)
        shape, classes = tuple(train_x.shape[1:]), len(info["classes"])       # (C, T, H, W)
    else:
        kw = dict(device=device, seed=args.seed, channels_last=args.channels_last)
        train_loader = DeviceLoader(train_x, train_y, global_batch, train=True, **kw)
        test_loader = DeviceLoader(test_x, test_y, global_batch, train=False, **kw)
        shape, classes = (3, 32, 32), 10
    info.update(num_classes=classes, input_shape=shape, train_images=int(len(train_x)),
                test_images=int(len(test_x)))
    return train_loader, test_loader, info


def _build_model(args: argparse.Namespace, num_classes: int, input_shape: tuple, device: torch.device):
    """(model, parameters, forward FLOPs per image or clip), seeded with --seed."""
    torch.manual_seed(args.seed)
    attention = None if args.attention == "none" else args.attention
    if args.data in VIDEO_DATA:
        model = video_resnet(args.model, num_classes=num_classes, attention=attention).to(device)
    else:   # block keywords only when given, so the block's defaults apply otherwise
        block_kwargs = {} if args.cam_energy is None else {"cam_energy": args.cam_energy}
        model = cifar_resnet(args.model, num_classes=num_classes, attention=attention, **block_kwargs).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model)
    model.eval()
    flops = count_flops(model, torch.zeros(1, *input_shape, device=device))
    model.train()
    return model, params, flops


def _restore(checkpoint: dict, path: Path, parts: dict, train_loader, rank: int, device: torch.device):
    """Load the checkpoint's states into ``parts`` (model, optimizer, scheduler, scaler) and the
    loader; return (epochs done, history, this rank's mid-epoch state or None, wall seconds)."""
    try:
        for name, part in parts.items():
            part.load_state_dict(checkpoint[name])
        train_loader.load_state_dict(checkpoint["loader"])
        saved = checkpoint["epoch_state"]
        epoch_state = None if saved is None else engine.restore_epoch_state(saved, rank, device)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise ValueError(f"checkpoint {path} is damaged or not a checkpoint: {detail}; "
                         f"use --overwrite to start afresh") from None
    elapsed = float(checkpoint.get("wall_seconds", 0.0))
    return checkpoint["epoch"], list(checkpoint["history"]), epoch_state, elapsed


def _runtime(args: argparse.Namespace, rank: int, world: int, local: int):
    """(device, amp, progress) for the options: this process's device, the autocast precision
    (bf16 on CUDA, off on CPU unless --amp), and whether rank 0 shows a progress bar."""
    device = resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    amp = args.amp or ("bf16" if device.type == "cuda" else "off")
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    if progress and engine._tqdm is None:
        _log(rank, "[nltutorial.train] tqdm is not installed: no progress bar (pip install tqdm)")
        progress = False
    return device, amp, progress and rank == 0


def _step_model(model: nn.Module, args: argparse.Namespace, world: int, device: torch.device) -> nn.Module:
    """The module the steps call: ``model``, wrapped in DDP under torchrun, compiled with --compile."""
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if args.compile else model


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> dict:
    """Run training as described by ``args`` (from :func:`parse_args`); return the summary.

    Raises ValueError on bad options or an output folder it must not touch,
    :class:`nltutorial.engine.TrainingInterrupted` after a signal (a checkpoint has then been
    written), :class:`nltutorial.engine.TrainingDiverged` when an epoch's loss is NaN or
    infinite (after writing summary.json), and DiskFullError when a file could not be written
    (the previous checkpoint stays valid).
    """
    validate(args)
    wall0 = time.perf_counter()
    rank, world, local = _setup_distributed(args.device)
    args.world_size = world
    device, amp, progress = _runtime(args, rank, world, local)

    out = Path(args.out)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    config = {k: getattr(args, k) for k in RESUME_KEYS}
    checkpoint, finished = _open_out(args, config, rank)
    if finished is not None:
        _log(rank, f"[nltutorial.train] {out} holds a finished run ({finished.get('epochs_done')} epochs, test "
             f"accuracy {finished.get('test_accuracy')}): nothing to do; pass --overwrite to train it again")
        return finished

    train_loader, test_loader, data_info = _loaders(args, world, device)
    steps = len(train_loader)
    shard = None
    if world > 1:
        def shard(x, y):
            sl = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
            return x[sl], y[sl]

    model, params, flops = _build_model(args, data_info["num_classes"], data_info["input_shape"], device)
    optimizer = engine.build_optimizer(model, args.lr, args.weight_decay, args.momentum)
    scheduler = engine.build_scheduler(optimizer, args.schedule, args.lr, args.epochs * steps)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}

    start_epoch, history, epoch_state, elapsed = 0, [], None, 0.0
    if checkpoint is not None:
        start_epoch, history, epoch_state, elapsed = _restore(checkpoint, ckpt_path, parts, train_loader,
                                                              rank, device)
        _log(rank, f"[nltutorial.train] resuming {ckpt_path}: {start_epoch} epochs done"
             + (f", step {epoch_state['step']}/{steps} of epoch {start_epoch + 1}" if epoch_state else ""))
    if rank == 0:
        _write_metrics(metrics_path, history)

    step_model = _step_model(model, args, world, device)

    def save(epoch_done: int, state: Optional[dict]) -> None:
        """Write the checkpoint (rank 0); mid-epoch, every rank's running sums go into it."""
        sums = None if state is None else engine.gather_epoch_state(state)   # a collective
        if rank != 0:
            return
        engine.atomic_save({
            "format": engine.CHECKPOINT_FORMAT, "config": config, "args": vars(args), "epoch": epoch_done,
            "epoch_state": sums, **{name: part.state_dict() for name, part in parts.items()},
            "loader": {"epoch": epoch_done, "seed": train_loader.seed}, "rng": engine.get_rng_state(),
            "history": history, "wall_seconds": elapsed + time.perf_counter() - wall0,
            "torch": str(torch.__version__),
        }, ckpt_path)

    unit = "clip" if args.data in VIDEO_DATA else "image"
    _log(rank, f"[nltutorial.train] {args.model} attention={args.attention} on {device} "
         f"(amp {amp}, {world} process{'es' if world > 1 else ''}): {params:,} parameters, "
         f"{flops / 1e6:.1f} MFLOPs/{unit}, {data_info['train_images']} train / {data_info['test_images']} "
         f"test {unit}s, {steps} steps/epoch")

    diverged = None
    with engine.StopOnSignal() as stop:
        def on_stop(state):
            save(epoch, state)
            if world > 1:
                torch.distributed.barrier()
            raise engine.TrainingInterrupted(stop.signum or 15, ckpt_path)

        for epoch in range(start_epoch, args.stop_after or args.epochs):
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
            t_eval = time.perf_counter()
            test = engine.evaluate(step_model, test_loader, device=device, amp=amp, shard=shard)
            row = {"epoch": epoch + 1, "train_loss": summary["train_loss"],
                   "train_accuracy": summary["train_accuracy"], **test, "lr": state["lr"],
                   "epoch_seconds": state["seconds"] + (time.perf_counter() - t_eval),
                   "images_per_second": summary["train_images"] / max(state["seconds"], 1e-9)}
            if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
                diverged = row   # no checkpoint or metrics line for a diverged epoch
                break
            history.append(row)
            save(epoch + 1, None)                 # the checkpoint first: metrics.jsonl never gets
            if rank == 0:                         # ahead of it (a resume rewrites it from the history)
                _write_metrics(metrics_path, history)
            _log(rank, f"epoch {epoch + 1}/{args.epochs}  train loss {row['train_loss']:.4f} "
                 f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} "
                 f"acc {row['test_accuracy']:.4f}  lr {row['lr']:.4g}  {row['epoch_seconds']:.1f} s  "
                 f"{row['images_per_second']:.0f} img/s")
            if engine.any_rank(stop.requested, device):
                if world > 1:
                    torch.distributed.barrier()
                raise engine.TrainingInterrupted(stop.signum or 15, ckpt_path)

    summary = _summary(args, argv, history, device, amp, world, params, flops, data_info,
                       elapsed + time.perf_counter() - wall0)
    if diverged is not None:
        summary["diverged"] = diverged
    if rank == 0:
        if summary["finished"]:
            engine.atomic_save(model.state_dict(), out / MODEL)
        _write_json(out / SUMMARY, summary)
    if diverged is not None:
        raise engine.TrainingDiverged(diverged["epoch"], diverged["train_loss"], diverged["test_loss"])
    _log(rank, f"[nltutorial.train] test accuracy {summary['test_accuracy']:.4f}; wrote {out}")
    return summary


def _summary(args, argv, history, device, amp, world, params, flops, data_info, wall_seconds) -> dict:
    """The contents of summary.json (see the module docstring)."""
    rates = sorted(m["images_per_second"] for m in history)
    last = history[-1] if history else {}
    root = data_info.get("root")
    return {
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "train_loss": last.get("train_loss"),
        "epochs_done": len(history),
        "finished": len(history) == args.epochs,
        "params": params,
        "flops": flops,
        "images_per_second": rates[len(rates) // 2] if rates else None,
        "wall_seconds": wall_seconds,
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
                 "train_images": data_info["train_images"], "test_images": data_info["test_images"],
                 **{k: v for k, v in data_info.items()
                    if k not in ("root", "num_classes", "input_shape", "train_images", "test_images")}},
        "args": vars(args),
    }


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
    train_x, train_y, val_x, val_y, classes, root = _kinetics_clips(args)
    keep = _evenly_spaced(len(train_x), args.train_subset)
    if keep is not None:
        train_x, train_y = train_x[keep], train_y[keep]
    keep = _evenly_spaced(len(val_x), args.test_subset)
    if keep is not None:
        val_x, val_y = val_x[keep], val_y[keep]
    info = {"root": root, "classes": list(classes), "frames": args.frames, "frame_stride": args.frame_stride,
            "size": args.size}
    if args.data == "kinetics400-tiny":
        from .kinetics import KINETICS400_TINY_URL
        info["source"] = KINETICS400_TINY_URL
    return train_x, train_y, val_x, val_y, info


def _kinetics_clips(args: argparse.Namespace):
    """(train clips, train labels, val clips, val labels, classes, root) of --data kinetics-folder or
    kinetics400-tiny (which downloads when --download is given or --data-dir is not)."""
    try:
        from . import kinetics
    except ImportError as err:  # e.g. a missing decoder dependency
        raise ValueError(f"--data {args.data} needs nltutorial.kinetics and PyAV "
                         f"(pip install av, or pip install \"nltutorial[video]\"): {err}") from err
    kwargs = dict(frames=args.frames, frame_stride=args.frame_stride, size=args.size)
    if args.data == "kinetics400-tiny":
        root = data_root(args.data_dir)
        download = args.download or args.data_dir is None   # the default cache root downloads as needed

        def load(split, classes=None):
            return kinetics.kinetics400_tiny(root, split, download, **kwargs)
    else:
        root = Path(args.data_dir).expanduser()
        if not root.is_dir():
            raise ValueError(f"--data-dir {args.data_dir} is not a folder")

        def load(split, classes=None):
            return kinetics.load_kinetics_folder(root, split, classes=classes, **kwargs)
    try:
        train_x, train_y, classes = load("train")
        val_x, val_y, _ = load("val", classes)
    except ImportError as err:  # PyAV is imported when the first video file is decoded
        raise ValueError(f"--data {args.data}: decoding videos needs PyAV (pip install av, or "
                         f"pip install \"nltutorial[video]\"): {err}") from err
    except FileNotFoundError as err:
        if args.data != "kinetics400-tiny":
            raise
        flag = f"--data-dir {args.data_dir}" if args.data_dir is not None else f"Kinetics-400-tiny in {root}"
        raise ValueError(f"{flag}: {err}" + ("" if download else " (or pass --download to download it there)")) \
            from None
    return train_x, train_y, val_x, val_y, classes, root


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status: 0, 2 for a usage error (bad option,
    damaged checkpoint, output folder it must not touch), 1 for a diverged run or a full disk,
    128 + the signal number when interrupted."""
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
    except engine.TrainingDiverged as err:
        print(f"[nltutorial.train] {err}; summary.json records it, no checkpoint was written for it",
              file=sys.stderr, flush=True)
        return 1
    except engine.DiskFullError as err:
        print(f"[nltutorial.train] {err.strerror or err}; the previous checkpoint is kept", file=sys.stderr,
              flush=True)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
