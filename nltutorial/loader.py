"""A device-resident loader for small image datasets (CIFAR-10 sized).

When a model is small and the data set fits in device memory, ``torch.utils.data.DataLoader``
(Python workers, per-sample transforms, host-to-device copies) is often the bottleneck.
``DeviceLoader`` moves the whole set to the device once, as uint8, and does everything else
there, vectorised over the batch:

* per epoch, a shuffle drawn from a ``torch.Generator`` on the device, seeded from
  ``(seed, epoch)`` so that an epoch's batches depend only on the seed and the epoch number
  (resuming at epoch ``e`` with ``set_epoch(e)`` or ``load_state_dict`` gives the same batches);
* per batch, the standard CIFAR augmentation: zero padding by ``pad`` pixels then a random
  crop back to H x W, and a random horizontal flip, both done by one gather with per-sample
  offsets (no Python loop over samples);
* conversion to float and normalisation ``(x / 255 - mean) / std``, the same arithmetic as
  ``nltutorial.data.normalize``.

Example
-------
>>> from nltutorial.data import cifar10
>>> images, labels = cifar10(train=True)                       # doctest: +SKIP
>>> loader = DeviceLoader(images, labels, 512, seed=0)         # doctest: +SKIP
>>> for epoch in range(10):                                    # doctest: +SKIP
...     for x, y in loader:       # x (512, 3, 32, 32) float32, y (512,) int64, on the device
...         ...
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["DeviceLoader", "CIFAR10_MEAN", "CIFAR10_STD"]

# The same constants as nltutorial.data (repeated so that this module imports nothing heavy).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_CHANNEL_COUNTS = (1, 3, 4)


def _as_uint8_nchw(images, layout: str | None) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, C, H, W) array/tensor → uint8 (N, C, H, W) tensor (same device)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got numpy dtype {images.dtype}")
        if not images.flags.writeable:  # torch.from_numpy warns on read-only arrays
            images = images.copy()
        t = torch.from_numpy(np.ascontiguousarray(images))
        default_layout = "NHWC"
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got tensor dtype {images.dtype}")
        t = images
        default_layout = None
    else:
        raise ValueError(
            f"images must be a numpy array or a torch tensor, got {type(images).__name__}"
        )
    if t.dim() != 4:
        raise ValueError(
            f"images must have rank 4, (N, H, W, C) or (N, C, H, W), got shape {tuple(t.shape)}"
        )
    if layout is None:
        if t.shape[3] in _CHANNEL_COUNTS:
            layout = "NHWC"  # what nltutorial.data.cifar10 returns; wins when ambiguous
        elif t.shape[1] in _CHANNEL_COUNTS and default_layout is None:
            layout = "NCHW"
        else:
            raise ValueError(
                f"images: cannot tell the channel axis of shape {tuple(t.shape)}; "
                "pass layout='NHWC' or layout='NCHW'"
            )
    layout = layout.upper()
    if layout == "NHWC":
        return t  # permuted later, on the device
    if layout == "NCHW":
        return t.permute(0, 2, 3, 1)
    raise ValueError(f"layout must be 'NHWC', 'NCHW' or None, got {layout!r}")


def _as_labels(labels, n: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got numpy dtype {labels.dtype}")
        t = torch.from_numpy(labels.astype(np.int64))
    elif isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got tensor dtype {labels.dtype}")
        t = labels.to(torch.int64)
    else:
        try:
            arr = np.asarray(labels)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"labels must be array-like, got {type(labels).__name__}") from exc
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.int64))
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"labels has length {t.shape[0]} but images has {n} samples")
    return t


def _channel_stats(name: str, value, default, channels: int) -> tuple[float, ...]:
    if value is None:
        if channels != len(default):
            raise ValueError(
                f"{name}: the CIFAR-10 default has {len(default)} channels but the images have "
                f"{channels}; pass {name} explicitly"
            )
        value = default
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    elif np.ndim(value) == 0:
        value = [float(value)] * channels
    value = tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
    if len(value) != channels:
        raise ValueError(f"{name} must have {channels} values (one per channel), got {len(value)}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{name} must be finite, got {value}")
    if name == "std" and not all(v > 0 for v in value):
        raise ValueError(f"std must be positive, got {value}")
    return value


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch), independent of the device."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def _check_common(batch_size, dtype, seed) -> None:
    """Argument checks shared by DeviceLoader and ClipLoader."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def _default_device(device, data) -> torch.device:
    """``device``, else the tensor's device when ``data`` lives off the CPU, else CUDA if present."""
    if device is None:
        if isinstance(data, torch.Tensor) and data.device.type != "cpu":
            device = data.device
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _draw_seed(seed: int | None, generator: torch.Generator | None) -> int:
    """``seed``, else one drawn from ``generator``, else a fresh random 63-bit seed."""
    if seed is not None:
        return int(seed)
    if generator is not None:
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0] >> np.uint64(1))


class EpochLoader:
    """Epoch bookkeeping shared by :class:`DeviceLoader` and ``nltutorial.video.ClipLoader``.

    A subclass sets ``num_samples``, ``batch_size``, ``drop_last``, ``device``, ``seed`` and
    ``epoch`` and defines ``_epoch(e)``, the batches of epoch ``e``. Each ``iter(loader)`` runs
    epoch ``loader.epoch`` and then advances it by one; ``set_epoch(e)`` (as with
    ``DistributedSampler``) or ``load_state_dict`` chooses the epoch the next iteration runs.
    """

    num_samples: int
    batch_size: int
    drop_last: bool
    device: torch.device
    seed: int
    epoch: int

    def _init_common(self, n: int, channels: int, batch_size: int, train: bool, drop_last, dtype,
                     mean, std, default_stats, seed, generator) -> None:
        """Set the attributes both loaders share (after ``self.device``)."""
        self.num_samples, self.channels = n, channels
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.dtype = dtype
        self.mean = _channel_stats("mean", mean, default_stats[0], channels)
        self.std = _channel_stats("std", std, default_stats[1], channels)
        self.seed = _draw_seed(seed, generator)
        self.epoch = 0

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (its batches depend only on seed and epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        if "seed" in state:
            self.seed = int(state["seed"])

    def _generator(self, epoch: int) -> torch.Generator:
        """The generator of epoch ``epoch``: seeded with a mix of (seed, epoch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(_epoch_seed(self.seed, epoch))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class DeviceLoader(EpochLoader):
    """Iterate over (x, y) batches of a uint8 image set held on the device.

    Parameters
    ----------
    images : uint8 (N, H, W, C) numpy array or tensor (as ``nltutorial.data.cifar10`` returns),
        or uint8 (N, C, H, W) tensor. The layout is inferred (a last axis of 1, 3 or 4 means
        channels-last); pass ``layout`` when it is ambiguous.
    labels : (N,) integer labels (numpy, tensor or sequence); yielded as int64.
    batch_size : samples per batch (>= 1).
    train : shuffle and augment (True) or iterate in order with no augmentation (False).
    device : where the data lives and batches are made (default: the tensor's device when
        ``images`` is a tensor off the CPU, else CUDA when available, else CPU).
    augment : in train mode, apply random crop (when ``pad > 0``) and flip (when ``flip``).
    pad : zero padding, in pixels, before the random H x W crop (4 for CIFAR).
    flip : random horizontal flip with probability 1/2, per sample.
    mean, std : per-channel statistics on the [0, 1] scale (default CIFAR-10's).
        The padding is black (0 before normalisation), as with torchvision's RandomCrop.
    drop_last : drop the last partial batch (default: True in train mode, False in eval).
    seed : base seed; epoch ``e`` draws its shuffle and augmentation from a generator seeded
        with ``(seed, e)``. Default: drawn from ``generator`` if given, else at random (it is
        kept in ``self.seed`` and ``state_dict()`` so the run can still be resumed).
    generator : optional ``torch.Generator`` used only to draw ``seed`` when none is given.
    channels_last : yield x in ``torch.channels_last`` memory format.
    dtype : floating dtype of x (the arithmetic is done in float32, then cast).
    layout : 'NHWC', 'NCHW' or None (infer).

    Iteration
    ---------
    Each ``iter(loader)`` runs one epoch, numbered ``loader.epoch``, and then advances the
    counter by one. ``set_epoch(e)`` (like ``DistributedSampler``) or ``load_state_dict``
    chooses the epoch the next iteration runs. ``len(loader)`` is the number of batches.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        *,
        train: bool = True,
        device: str | torch.device | None = None,
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        layout: str | None = None,
    ) -> None:
        _check_common(batch_size, dtype, seed)
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
            raise ValueError(f"pad must be an int >= 0, got {pad!r}")

        nhwc = _as_uint8_nchw(images, layout)  # (N, H, W, C), possibly a permuted view
        n, h, w, c = (int(s) for s in nhwc.shape)
        if n == 0 or h == 0 or w == 0:
            raise ValueError(f"images must be non-empty, got shape {tuple(nhwc.shape)}")
        y = _as_labels(labels, n)

        self.device = _default_device(device, images)

        self._init_common(n, c, batch_size, train, drop_last, dtype, mean, std,
                          (CIFAR10_MEAN, CIFAR10_STD), seed, generator)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.channels_last = bool(channels_last)
        self.image_size = (h, w)

        self._crop = self.train and self.augment and self.pad > 0
        self._flip = self.train and self.augment and self.flip
        # Move once (uint8), then lay out as (N, C, H, W) on the device; padded once if cropping.
        data = nhwc.to(self.device).permute(0, 3, 1, 2).contiguous()
        if self._crop:
            data = torch.nn.functional.pad(data, (self.pad,) * 4)  # zeros, uint8 (N, C, H+2p, W+2p)
        self._data = data
        self._labels = y.to(self.device)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self._chan = torch.arange(c, device=self.device)

    # ------------------------------------------------------------------ batches
    def _normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) (any strides) → float, (x/255 - mean)/std, as data.normalize."""
        x = (x_uint8.float().div_(255.0) - self._mean_t) / self._std_t
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def _augmented(self, idx, off_r, off_c, flips) -> torch.Tensor:
        """Gather crops (and flips) of the stored samples ``idx`` → uint8 (B, C, H, W)."""
        rows = off_r[:, None] + self._rows  # (B, H)
        cols = self._cols
        if flips is not None:
            cols = torch.where(flips[:, None], cols.flip(0), cols)  # (B, W)
        else:
            cols = cols.expand(idx.shape[0], -1)
        cols = off_c[:, None] + cols  # (B, W)
        if self.channels_last:  # gather straight into (B, H, W, C), viewed as channels-last NCHW
            out = self._data[idx[:, None, None, None], self._chan[None, None, None, :],
                             rows[:, :, None, None], cols[:, None, :, None]]
            return out.permute(0, 3, 1, 2)
        return self._data[idx[:, None, None, None], self._chan[None, :, None, None],
                          rows[:, None, :, None], cols[:, None, None, :]]

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.num_samples, self.batch_size
        nb = len(self)
        if not self.train:
            for b in range(nb):
                sl = slice(b * bs, min((b + 1) * bs, n))
                yield self._normalize(self._data[sl]), self._labels[sl]
            return

        g = self._generator(epoch)
        perm = torch.randperm(n, generator=g, device=self.device)
        # All random draws for the epoch at once: fewer kernel launches than per batch.
        if self._crop:
            offs = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g, device=self.device)
        flips = None
        if self._flip:
            flips = torch.randint(0, 2, (n,), generator=g, device=self.device).bool()
        for b in range(nb):
            sl = slice(b * bs, min((b + 1) * bs, n))
            idx = perm[sl]
            if self._crop:
                x = self._augmented(idx, offs[0, sl], offs[1, sl], None if flips is None else flips[sl])
            else:
                x = self._data.index_select(0, idx)
                if flips is not None:
                    f = flips[sl].view(-1, 1, 1, 1)
                    x = torch.where(f, x.flip(3), x)
            yield self._normalize(x), self._labels.index_select(0, idx)

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"train={self.train}, augment={self.augment}, pad={self.pad}, flip={self.flip}, "
            f"drop_last={self.drop_last}, device={self.device}, epoch={self.epoch})"
        )
