"""The training engine behind ``python -m nltutorial.train``: steps, evaluation, checkpoints.

Nothing here knows about CIFAR-10 or the command line; :mod:`nltutorial.train` builds the
data, the model and the options and calls these pieces.

Determinism and exact resumption
--------------------------------
An epoch's randomness is a function of ``(seed, epoch)`` only: the loader's shuffle, crops
and flips come from :class:`nltutorial.loader.DeviceLoader` (seeded from ``(seed, epoch)``)
and :func:`seed_epoch` re-seeds torch, NumPy and ``random`` at the start of every epoch (for
dropout or any other draw a model may make). A checkpoint holds the model, optimizer,
scheduler and grad-scaler states, the number of completed epochs, the step reached inside
the current epoch (0 at an epoch boundary), that epoch's running sums (of every rank under
DDP), and the RNG states. Resuming therefore replays exactly the same updates; on a CPU the
metrics of a resumed run equal those of an uninterrupted one bit for bit (GPU kernels may
not be deterministic).

Checkpoint files
----------------
:func:`atomic_save` and :func:`atomic_write_text` write a temporary ``.NAME.XXXXXXXX.tmp``
beside the target and rename it into place, so a file is always either the old or the new
one; a full disk raises ``DiskFullError`` ("disk full while writing PATH") and leaves the old
file as it was. :func:`remove_temporaries` clears what a killed write left behind.
:func:`load_checkpoint` unpickles weights-only (tensors and plain data: nothing in the file
is executed) and checks the layout, raising :class:`CheckpointError` for anything else.

Signals
-------
:class:`StopOnSignal` turns SIGTERM and SIGINT into a flag that the loop reads after each
optimisation step: the current step finishes, a checkpoint of the state *at that step* is
written (mid-epoch, resumable exactly) and :class:`TrainingInterrupted` is raised; the
command line exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second
signal of the same kind while the first is handled restores the default action (kill).
A signal that arrives during evaluation lets the evaluation and the epoch checkpoint finish
before stopping.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import random
import signal
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._download import DiskFullError

try:  # the progress bar is optional
    from tqdm import tqdm as _tqdm  # plain text bar: no ipywidgets needed in notebooks
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DiskFullError",
    "StopOnSignal",
    "TrainingDiverged",
    "TrainingInterrupted",
    "atomic_save",
    "atomic_write_text",
    "build_optimizer",
    "build_scheduler",
    "epoch_seed",
    "evaluate",
    "get_rng_state",
    "gather_epoch_state",
    "load_checkpoint",
    "param_groups",
    "remove_temporaries",
    "restore_epoch_state",
    "seed_epoch",
    "set_rng_state",
    "train_epoch",
]


# --------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)`` (``epoch`` 0-based)."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0x7E57]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch (all devices), NumPy and ``random`` as a function of ``(seed, epoch)``."""
    s = epoch_seed(seed, epoch)
    torch.manual_seed(s)
    np.random.seed(s % (2**32))
    random.seed(s)


def get_rng_state() -> dict:
    """The states of torch (CPU and CUDA), NumPy and ``random``, as tensors and plain values.

    NumPy's MT19937 state is stored as ``{"bit_generator", "key" (624,) int64 tensor, "pos",
    "has_gauss", "cached_gaussian"}`` rather than NumPy's tuple with an array in it, so that a
    checkpoint loads with ``torch.load(weights_only=True)`` and no allow-list.
    """
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(state) -> tuple:
    """NumPy's ``get_state()`` tuple from :func:`get_rng_state`'s dict (or a format-1 tuple)."""
    if isinstance(state, dict):
        key = state["key"].numpy().astype(np.uint32)
        return (state["bit_generator"], key, state["pos"], state["has_gauss"], state["cached_gaussian"])
    return tuple(state)


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (or the format-1 form with NumPy's tuple)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# --------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list:
    """Two groups: weights of convolutions/linear layers with decay, the rest (BN, biases,
    scalar gates: every parameter with at most one dimension) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 5e-4,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay only on weights with two or more dimensions."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=True)


SCHEDULES = ("onecycle", "cosine")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over ``total_steps`` optimisation steps.

    ``onecycle``: ``OneCycleLR`` (warm up for 30 % of the steps from lr/25 to lr, cosine
    annealing to lr/1e4), momentum kept at the optimizer's 0.9. ``cosine``: cosine annealing
    from lr to 0.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                                   cycle_momentum=False)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _temporary(path: Path):
    """A new temporary file ``.NAME.XXXXXXXX.tmp`` beside ``path``: (fd, name)."""
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _atomic_write(path: str | os.PathLike, write: Callable) -> Path:
    """``write(f)`` into a temporary file next to ``path``, fsync, then ``os.replace`` onto it.

    A reader never sees a half-written file: ``path`` is either the old file or the new one.
    On any failure the temporary file is removed; a full disk (ENOSPC, EDQUOT) raises
    :class:`DiskFullError` "disk full while writing PATH".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(err.errno, f"disk full while writing {path}") from err
        raise
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` atomically (temporary file, fsync, ``os.replace``); see :func:`_atomic_write`."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`_atomic_write`."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list:
    """Delete the temporary files a killed :func:`atomic_save` left for ``names`` in ``folder``.

    Only ``.NAME.*.tmp`` and ``.NAME.tmp`` (the older fixed name) are touched. Returns their paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and any(path.name.startswith(f".{name}.") and path.name.endswith(".tmp")
                                  for name in names):
            path.unlink()
            removed.append(path)
    return removed


#: The version of the checkpoint layout that :func:`nltutorial.train` writes. Format 1 held
#: NumPy's RNG tuple (an ndarray) and rank 0's running sums only; format 2 holds plain values
#: and tensors, and the running sums of every rank (see :func:`gather_epoch_state`).
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("format", "config", "epoch", "epoch_state", "model", "optimizer", "scheduler",
                   "scaler", "loader", "rng", "history")


def _format1_globals() -> list:
    """What a format-1 checkpoint needs beyond weights-only data: a uint32 ndarray, a torch version."""
    from torch.torch_version import TorchVersion

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 / NumPy 1
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), TorchVersion]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe to unpickle, or not laid out as a checkpoint."""

    def __init__(self, path, detail: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {path} is damaged or not a checkpoint: {detail}")


def _unpickling_detail(err: Exception) -> str:
    """The useful line of torch's weights-only refusal (which global it would have imported)."""
    text = str(err)
    for marker in ("Unsupported global:", "Can only build"):
        if marker in text:
            line = text[text.index(marker):].splitlines()[0].rstrip(". ")
            return f"it holds more than tensors and plain data, and loading it could run code ({line})"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _check_layout(ckpt) -> None:
    """Raise ValueError naming what is missing or of the wrong type in a loaded checkpoint."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"it holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"keys missing: {', '.join(missing)}")
    if ckpt["format"] not in (1, CHECKPOINT_FORMAT):
        raise ValueError(f"unknown format {ckpt['format']!r} (this version reads 1 and {CHECKPOINT_FORMAT})")
    for key, kind in (("config", dict), ("model", dict), ("optimizer", dict), ("scheduler", dict),
                      ("scaler", dict), ("loader", dict), ("rng", dict), ("history", list)):
        if not isinstance(ckpt[key], kind):
            raise ValueError(f"{key!r} is a {type(ckpt[key]).__name__}, expected a {kind.__name__}")
    if isinstance(ckpt["epoch"], bool) or not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        raise ValueError(f"'epoch' is {ckpt['epoch']!r}, expected an integer >= 0")
    state = ckpt["epoch_state"]
    if state is not None and not (isinstance(state, dict)
                                  and {"step", "loss_sum", "correct", "seen"} <= set(state)):
        raise ValueError("'epoch_state' lacks step / loss_sum / correct / seen")
    if not {"torch", "numpy", "python"} <= set(ckpt["rng"]):
        raise ValueError("'rng' lacks the torch / numpy / python states")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check a checkpoint written by the trainer (format 1 or 2), weights-only.

    ``torch.load(weights_only=True)`` builds only tensors and plain data; format 1's NumPy RNG
    array and torch version string are the only extra types allowed. Anything else (a pickle
    that would import a function, a truncated, empty or text file, a bare state dict, missing
    keys) raises :class:`CheckpointError` naming the file and the cause; nothing is executed.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_format1_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(path, _unpickling_detail(err)) from None
    except (RuntimeError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        detail = str(err).splitlines()[0] if str(err) else "the file is empty or truncated"
        raise CheckpointError(path, f"{type(err).__name__}: {detail}") from None
    try:
        _check_layout(ckpt)
    except ValueError as err:
        raise CheckpointError(path, str(err)) from None
    return ckpt


# --------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint.

    ``signum`` is the signal, ``checkpoint`` the path written, ``exit_code`` 128 + signum.
    """

    def __init__(self, signum: int, checkpoint: Optional[Path] = None) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {name}; checkpoint: {checkpoint}")


class TrainingDiverged(FloatingPointError):
    """An epoch ended with a NaN or infinite training or test loss (``epoch`` is 1-based)."""

    def __init__(self, epoch: int, train_loss: float, test_loss: float) -> None:
        self.epoch = int(epoch)
        super().__init__(f"training diverged at epoch {epoch}: train loss {train_loss}, test loss {test_loss}")


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set ``self.signum`` instead of killing the process.

    The loop polls :attr:`requested`. A second signal of the kind already received restores
    the previous handler's default action and re-delivers it. Outside the main thread (where
    Python cannot install handlers) it does nothing. Previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum == signum:  # second time: give up handling, act as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signum is None:
            self.signum = signum
            print(f"\n[nltutorial.train] received {signal.Signals(signum).name}: stopping after the "
                  f"current step and writing a checkpoint", flush=True)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


# --------------------------------------------------------------------------------------
# Distributed helpers (no-ops in a single process)
# --------------------------------------------------------------------------------------


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _dist():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not _dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}, or a null context for "off"."""
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and _tqdm is not None:
        return _tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


def new_epoch_state(device) -> dict:
    """The running sums of a training epoch (kept in checkpoints taken mid-epoch)."""
    return {"step": 0, "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
            "correct": torch.zeros((), dtype=torch.int64, device=device), "seen": 0,
            "seconds": 0.0, "lr": None}


def gather_epoch_state(state: dict) -> dict:
    """The running sums of every rank, for a mid-epoch checkpoint (a collective under DDP).

    Returns ``state`` with ``loss_sum`` (world,) float64, ``correct`` and ``seen`` (world,)
    int64, on the CPU, entry r being rank r's: resuming gives each rank back its own sums, so
    the epoch's train loss and accuracy equal an uninterrupted run's exactly.
    """
    device = state["loss_sum"].device
    loss = state["loss_sum"].reshape(1)                                                  # (1,)
    counts = torch.stack([state["correct"].reshape(()),
                          torch.tensor(int(state["seen"]), dtype=torch.int64, device=device)])  # (2,)
    if _dist():
        world = torch.distributed.get_world_size()
        losses = [torch.empty_like(loss) for _ in range(world)]
        all_counts = [torch.empty_like(counts) for _ in range(world)]
        torch.distributed.all_gather(losses, loss)
        torch.distributed.all_gather(all_counts, counts)
        loss, counts = torch.cat(losses), torch.stack(all_counts)                       # (W,), (W, 2)
    else:
        counts = counts.reshape(1, 2)                                                    # (1, 2)
    return {**state, "loss_sum": loss.cpu(), "correct": counts[:, 0].cpu(), "seen": counts[:, 1].cpu()}


def restore_epoch_state(saved: dict, rank: int, device) -> dict:
    """This rank's running sums from a checkpoint's ``epoch_state`` (inverse of :func:`gather_epoch_state`).

    A format-1 checkpoint held rank 0's sums only (scalars): every rank gets those, as before
    (exact for one process).
    """
    state = dict(saved)
    loss, correct, seen = saved["loss_sum"], saved["correct"], saved["seen"]
    if isinstance(seen, torch.Tensor):  # format 2: one entry per rank
        if seen.numel() <= rank:
            raise ValueError(f"the checkpoint holds the running sums of {seen.numel()} ranks, not of rank {rank}")
        loss, correct, seen = loss[rank], correct[rank], int(seen[rank])
    state["loss_sum"] = loss.to(device=device, dtype=torch.float64).reshape(())
    state["correct"] = correct.to(device=device, dtype=torch.int64).reshape(())
    state["seen"] = int(seen)
    return state


def train_epoch(model: nn.Module, loader: Iterable, optimizer, scheduler, criterion: Callable,
                *, device: torch.device, amp: str = "off", scaler=None, state: Optional[dict] = None,
                steps: int, stop: Optional[StopOnSignal] = None, on_stop: Optional[Callable] = None,
                shard: Optional[Callable] = None, progress: bool = False, desc: str = "train") -> dict:
    """Run (the rest of) one training epoch; return the epoch's state with its running sums.

    ``loader`` is iterated from its start; the first ``state["step"]`` batches are skipped
    (they were done before a mid-epoch checkpoint). After every step, if ``stop`` was
    signalled (on any rank), ``on_stop(state)`` is called (it writes the checkpoint and
    raises). ``shard(x, y)`` picks this rank's part of a batch (distributed training).
    """
    state = new_epoch_state(device) if state is None else state
    model.train()
    start = state["step"]
    batches = islice(iter(loader), start, steps)
    bar = _progress(batches, steps - start, desc, progress)
    t0 = time.perf_counter()
    for x, y in bar:
        if shard is not None:
            x, y = shard(x, y)
        if state["lr"] is None:
            state["lr"] = float(optimizer.param_groups[0]["lr"])
        with autocast(device, amp):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        with torch.no_grad():
            state["loss_sum"] += loss.detach().double() * y.shape[0]
            state["correct"] += (logits.argmax(1) == y).sum()
        state["seen"] += int(y.shape[0])
        state["step"] += 1
        if progress and _tqdm is not None and (state["step"] % 10 == 0 or state["step"] == steps):
            bar.set_postfix(loss=f"{state['loss_sum'].item() / max(state['seen'], 1):.3f}")
        if stop is not None and any_rank(stop.requested, device) and state["step"] < steps:
            state["seconds"] += time.perf_counter() - t0
            if on_stop is not None:
                on_stop(state)
            t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state["seconds"] += time.perf_counter() - t0
    return state


def epoch_summary(state: dict) -> dict:
    """Train loss, accuracy and the step count of a finished epoch (sums over all ranks)."""
    device = state["loss_sum"].device
    sums = torch.stack([state["loss_sum"], state["correct"].double(),
                        torch.tensor(float(state["seen"]), dtype=torch.float64, device=device)])
    all_reduce_sum(sums)
    loss_sum, correct, seen = (float(v) for v in sums.tolist())
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "train_images": int(seen)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: str = "off",
             shard: Optional[Callable] = None) -> dict:
    """Mean cross-entropy (no label smoothing) and accuracy over ``loader`` (all ranks)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        if shard is not None:
            x, y = shard(x, y)
            if y.shape[0] == 0:
                continue
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum().double()
        seen += y.shape[0]
    sums = all_reduce_sum(torch.stack([loss_sum, correct, seen]))
    loss_sum, correct, seen = (float(v) for v in sums.tolist())
    if seen == 0:
        return {"test_loss": math.nan, "test_accuracy": math.nan}
    return {"test_loss": loss_sum / seen, "test_accuracy": correct / seen}
