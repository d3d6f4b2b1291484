"""A Kinetics-style video folder as uint8 clip tensors, for the video chapter.

Kinetics (Kay et al., 2017) is a set of short YouTube clips of human actions, one folder per
class. This module reads any folder laid out the same way, such as the project's mini data
set, and returns every clip as T frames of ``size``×``size`` pixels, ready for a 3D network.

Layouts
-------
Each clip is a video file (``.mp4``, ``.avi``, ``.mkv``, ``.webm``, ``.mov``, ``.m4v``) or a
folder of frame images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, in natural order, so that
``img_2.jpg`` comes before ``img_10.jpg``)::

    root/<class>/<clip>.mp4                        flat layout: split here into train / val
    root/<class>/<clip>/frame_0001.jpg ...
    root/{train,val,test}/<class>/<clip>.mp4       split folders: split selects the folder

* **Split folders**: when any of ``root/train``, ``root/val``, ``root/test`` is a folder,
  ``split`` picks ``root/<split>`` (FileNotFoundError if it is missing). The class list is the
  sorted union of the class folders of all split folders, so train and val get the same
  labels even when val lacks a class. (So a class cannot be named train, val or test.)
* **Flat layout**: ``split`` is ``"train"`` or ``"val"``. Within each class the clips are
  ordered by the md5 of ``"<seed>/<class>/<clip>"``, and the first ⌊f·n + ½⌋ of its n clips
  go to val (f = ``val_fraction``), the rest to train. The partition is stratified, depends
  only on the clip names, the seed and f (never on which files decode), and the two splits
  are disjoint and cover every clip.

Class names are sorted and label ``k`` is ``classes[k]``. ``classes=`` imposes a list (the
train list for val, say); a class folder that is not in it is an error. Hidden entries
(``.name``) and files with other extensions are ignored.

Frames, resizing
----------------
Clips are sampled by frame index (not by time): T = ``frames`` frames, ``frame_stride`` apart,
**centred** in the clip (``sample_indices``). The sampling is deterministic, so a clip is
decoded once and cached. A clip shorter than the span (T - 1)·stride + 1 is sampled from its
first frame and padded by repeating its last frame. Each frame is resized so that its
shorter side is ``size`` (bilinear with antialiasing, ``torch.nn.functional.interpolate``),
then centre-cropped to ``size``×``size``. A clip is a uint8 tensor (3, T, size, size), RGB.

Cache
-----
Decoded clips are saved with ``torch.save``, one file per clip, under ``cache_dir`` (default
``$NLTUTORIAL_DATA/kinetics-cache``, else ``~/.cache/nltutorial/kinetics-cache``;
``cache_dir=False`` turns caching off). The key is the clip's resolved absolute path (so two
folders holding clips of the same names, sizes and times never share an entry), its size and
modification time (of every frame image, for a frame folder), ``frames``, ``frame_stride``,
``size`` and a format version; so an edited file is decoded again, and a second load decodes
nothing (nor needs PyAV). A moved or copied data set is decoded again once. Files are written
atomically (temporary file, then ``os.replace``), so an interrupted run or two processes
loading at once leave no half-written entry; an unreadable cache entry is decoded and written
again. If the disk fills up while an entry is written, a warning says "disk full while writing
<entry>", the partial file is removed and loading goes on without the cache. Entries are never
deleted: remove the folder to free the space.

Bad files
---------
A video that cannot be opened or decoded (zero bytes, not a video, a broken container), that
decodes to fewer than 95 % of the frames its container declares (an interrupted download),
a frame folder that is empty, holds an unreadable image or whose sampled frames differ in size,
and a symbolic link whose target is missing are skipped with a ``VideoSkippedWarning`` naming
the file; loading goes on. File names need not be UTF-8 (a Linux name is any bytes): they are
hashed and opened by their bytes. If nothing is readable,
``load_kinetics_folder`` raises ValueError naming ``root``. Everything is decoded up front,
so nothing can fail in the middle of an epoch.

Dependencies
------------
Videos are decoded with PyAV (``pip install av``, or ``pip install "nltutorial[video]"``),
imported only when a video file has to be decoded; frame folders need only Pillow.

Example
-------
>>> x, y, classes = load_kinetics_folder("mini-kinetics", "train", frames=8, frame_stride=2, size=112)  # doctest: +SKIP
>>> x.shape, x.dtype, y.dtype                                                                             # doctest: +SKIP
(torch.Size([N, 3, 8, 112, 112]), torch.uint8, torch.int64)
>>> xv, yv, _ = load_kinetics_folder("mini-kinetics", "val", classes=classes)                             # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._utils import check_positive_int
from .data import data_root

#: The values of ``split``. ``"test"`` exists only in the split-folder layout.
SPLITS = ("train", "val", "test")

#: File name endings read as videos (with PyAV) and as frame images (with Pillow); any case.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

#: A video decoding to fewer than (1 - this) × the frames its container declares is truncated.
TRUNCATION_TOLERANCE = 0.05

#: Part of every cache key: bump it when the decoded result of a clip changes.
CACHE_VERSION = 2


class UnreadableVideoError(ValueError):
    """A clip could not be read: the message starts with its path and says why."""


class VideoSkippedWarning(UserWarning):
    """``load_kinetics_folder`` skipped an unreadable clip (the message names it)."""


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_val_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_classes(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"classes must be a list of non-empty class names, got {classes!r}")
    classes = list(classes)
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"classes holds duplicates: {duplicates}")
    return classes


# --------------------------------------------------------------------------------------
# Listing the clips
# --------------------------------------------------------------------------------------


def _natural_key(name: str):
    """Sort key putting ``img_2`` before ``img_10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _visible(folder: Path):
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _class_folders(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_dir()]


def _clips_of(class_folder: Path) -> list[Path]:
    """The clips of one class folder: video files and frame folders, sorted by name.

    A symbolic link whose target is missing is left out with a VideoSkippedWarning naming it.
    """
    clips = []
    for p in _visible(class_folder):
        if p.is_symlink() and not p.exists():
            warnings.warn(f"skipping {p}: a dangling symlink (its target {os.readlink(p)} does not exist)",
                          VideoSkippedWarning, stacklevel=4)
        elif p.is_dir() or (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
            clips.append(p)
    return clips


def _hash_rank(seed: int, rel: str) -> str:
    # os.fsencode: the name's own bytes, also for a non-UTF-8 name (surrogate escapes in str)
    return hashlib.md5(os.fsencode(f"{seed}/{rel}"), usedforsecurity=False).hexdigest()


def list_videos(
    root: str | os.PathLike,
    split: str = "train",
    *,
    val_fraction: float = 0.2,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[tuple[Path, int]], list[str]]:
    """The clips of one split, without reading them: ``([(path, label), ...], classes)``.

    ``path`` is a video file or a frame folder; the list is sorted by label, then name.
    See the module docstring for the two layouts and the flat-layout split.
    """
    split = _check_split(split)
    val_fraction = _check_val_fraction(val_fraction)
    classes = _check_classes(classes)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")

    split_folders = [root / s for s in SPLITS if (root / s).is_dir()]
    if split_folders:  # root/<split>/<class>/<clip>
        folder = root / split
        if not folder.is_dir():
            present = ", ".join(p.name for p in split_folders)
            raise FileNotFoundError(f"split {split!r} not found: {folder} does not exist ({root} has {present})")
        found = sorted({c.name for s in split_folders for c in _class_folders(s)})
    else:  # root/<class>/<clip>
        if split == "test":
            raise ValueError(
                f"split='test' needs a folder {root / 'test'}; {root} has the flat layout "
                f"<class>/<clip>, which is split into 'train' and 'val' only"
            )
        folder = root
        found = [c.name for c in _class_folders(root)]
    if not found:
        raise ValueError(f"no class folders in {folder}: expected {folder}/<class>/<clip>.mp4 "
                         f"or {folder}/<class>/<clip>/<frame>.jpg")

    here = _class_folders(folder)
    if classes is None:
        classes = found
    else:
        unknown = [c.name for c in here if c.name not in classes]
        if unknown:
            raise ValueError(f"class folder(s) {unknown} in {folder} not in classes={classes}")
    label = {name: k for k, name in enumerate(classes)}

    items = []
    for class_folder in sorted(here, key=lambda p: label[p.name]):
        clips = _clips_of(class_folder)
        if not split_folders:  # stratified, deterministic hash split
            ranked = sorted(clips, key=lambda p: _hash_rank(seed, f"{class_folder.name}/{p.name}"))
            n_val = math.floor(val_fraction * len(clips) + 0.5)
            chosen = set(ranked[:n_val] if split == "val" else ranked[n_val:])
            clips = [p for p in clips if p in chosen]
        items.extend((p, label[class_folder.name]) for p in clips)
    return items, list(classes)


# --------------------------------------------------------------------------------------
# Reading one clip
# --------------------------------------------------------------------------------------


def sample_indices(num_frames: int, frames: int, frame_stride: int) -> list[int]:
    """The ``frames`` frame indices read from a clip of ``num_frames`` frames.

    ``frame_stride`` apart and centred: the span (frames - 1)·stride + 1 starts at
    (num_frames - span) // 2. A shorter clip is read from frame 0 and padded with its last
    frame, e.g. ``sample_indices(6, 4, 2) == [0, 2, 4, 5]``.
    """
    frames = check_positive_int("frames", frames)
    frame_stride = check_positive_int("frame_stride", frame_stride)
    num_frames = check_positive_int("num_frames", num_frames)
    span = (frames - 1) * frame_stride + 1
    start = max(0, (num_frames - span) // 2)
    return [min(start + k * frame_stride, num_frames - 1) for k in range(frames)]


def _import_av():
    try:
        import av
    except ImportError as err:
        raise ImportError(
            "decoding video files needs PyAV: pip install av (or pip install \"nltutorial[video]\"); "
            "folders of frame images need only Pillow"
        ) from err
    return av


def _decode_pass(av, path: Path, frames: int, frame_stride: int, wanted: set[int] | None):
    """Decode every frame of the first video stream once.

    Keeps the frames whose index is in ``wanted``; when ``wanted`` is None, those that
    ``sample_indices`` picks for the frame count the container declares, or every frame if
    it declares none. Returns ``(kept {index: VideoFrame}, decoded count, declared count)``.
    """
    kept = {}
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UnreadableVideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = int(stream.frames or 0)
        if wanted is None and declared > 0:
            wanted = set(sample_indices(declared, frames, frame_stride))
        count = 0
        for frame in container.decode(stream):
            if wanted is None or count in wanted:
                kept[count] = frame
            count += 1
    return kept, count, declared


def _video_frames(path: Path, frames: int, frame_stride: int) -> list[np.ndarray]:
    """The sampled frames of a video file, each (H, W, 3) uint8 RGB."""
    av = _import_av()
    kept, count, declared = _decode_pass(av, path, frames, frame_stride, None)
    if count == 0:
        raise UnreadableVideoError(f"{path}: no frame could be decoded")
    if declared and count < (1 - TRUNCATION_TOLERANCE) * declared:
        raise UnreadableVideoError(f"{path}: truncated, {count} of the {declared} declared frames decoded")
    indices = sample_indices(count, frames, frame_stride)
    if not all(i in kept for i in indices):  # the declared count was a little off: decode again
        kept, recount, _ = _decode_pass(av, path, frames, frame_stride, set(indices))
        if recount != count:
            raise UnreadableVideoError(f"{path}: decoded {count} then {recount} frames")
    return [kept[i].to_ndarray(format="rgb24") for i in indices]


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: _natural_key(p.name))


def _folder_frames(folder: Path, frames: int, frame_stride: int) -> list[np.ndarray]:
    """The sampled frames of a folder of images, each (H, W, 3) uint8 RGB."""
    from PIL import Image

    files = _frame_files(folder)
    if not files:
        raise UnreadableVideoError(f"{folder}: empty frame folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
    indices = sample_indices(len(files), frames, frame_stride)
    out = []
    for i in indices:
        try:
            with Image.open(files[i]) as image:
                out.append(np.array(image.convert("RGB")))  # (H, W, 3), a writable copy
        except Exception as err:
            raise UnreadableVideoError(f"{folder}: unreadable frame {files[i].name} ({err})") from err
        if out[-1].shape != out[0].shape:  # one clip, one frame size
            (h0, w0), (h, w) = out[0].shape[:2], out[-1].shape[:2]
            raise UnreadableVideoError(f"{folder}: frames of different sizes, {files[indices[0]].name} is "
                                       f"{w0}×{h0} but {files[i].name} is {w}×{h}")
    return out


def _resize_crop(frame: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, size, size) uint8: shorter side to ``size``, then centre crop."""
    x = torch.from_numpy(np.require(frame, np.uint8, ["C", "W"])).permute(2, 0, 1)  # (3, H, W)
    h, w = x.shape[1:]
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    if (new_h, new_w) != (h, w):
        y = F.interpolate(x[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=True)[0]  # (3, new_h, new_w)
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top : top + size, left : left + size]


def read_clip(path: str | os.PathLike, frames: int = 8, frame_stride: int = 2, size: int = 112) -> torch.Tensor:
    """One clip (a video file or a folder of frame images) as uint8 (3, frames, size, size), RGB.

    Samples with ``sample_indices``, resizes the shorter side to ``size`` and centre-crops.
    Raises UnreadableVideoError (a ValueError naming the file) when the clip cannot be read,
    FileNotFoundError when ``path`` does not exist, ImportError when a video needs PyAV and
    it is not installed.
    """
    frames = check_positive_int("frames", frames)
    frame_stride = check_positive_int("frame_stride", frame_stride)
    size = check_positive_int("size", size)
    path = Path(path)
    if path.is_dir():
        reader = _folder_frames
    elif path.is_file():
        reader = _video_frames
    else:
        raise FileNotFoundError(f"clip not found: {path}")
    try:
        selected = reader(path, frames, frame_stride)
    except (ImportError, MemoryError, UnreadableVideoError):
        raise
    except Exception as err:  # PyAV's errors, OSError, ...: the file is broken
        raise UnreadableVideoError(f"{path}: {type(err).__name__}: {err}") from err
    return torch.stack([_resize_crop(f, size) for f in selected], dim=1)  # (3, T, size, size)


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$NLTUTORIAL_DATA/kinetics-cache``, else ``~/.cache/nltutorial/kinetics-cache``."""
    return data_root() / "kinetics-cache"


def _cache_key(path: Path, frames: int, frame_stride: int, size: int) -> str:
    """sha256 of the clip's resolved path, its file stamps (size, mtime) and the parameters."""
    if path.is_dir():
        stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in _frame_files(path)]
    else:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    source = str(path.resolve())                   # json escapes the surrogates of a non-UTF-8 name
    text = json.dumps([CACHE_VERSION, source, stamp, frames, frame_stride, size])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _cache_read(file: Path, shape: tuple) -> torch.Tensor | None:
    try:
        clip = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged entry: decode again and overwrite it
        return None
    if not isinstance(clip, torch.Tensor) or clip.dtype != torch.uint8 or tuple(clip.shape) != shape:
        return None
    return clip


def _cache_write(file: Path, clip: torch.Tensor) -> None:
    """torch.save into a temporary file next to ``file``, then os.replace; raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(clip.contiguous().clone(), f)
        os.replace(tmp, file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _warn_cache_write(file: Path, err: OSError) -> None:
    """Warn that the entry ``file`` could not be written (the loader then stops caching)."""
    if err.errno == errno.ENOSPC:
        message = f"disk full while writing {file} ({err}); loading on without the clip cache"
    else:
        message = f"cannot write to the clip cache {file.parent} ({err}); decoding without a cache"
    warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------


def load_kinetics_folder(
    root: str | os.PathLike,
    split: str = "train",
    frames: int = 8,
    frame_stride: int = 2,
    size: int = 112,
    *,
    val_fraction: float = 0.2,
    cache_dir: str | os.PathLike | None | bool = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every readable clip of one split of a Kinetics-style folder, as tensors.

    Parameters
    ----------
    root : the data set folder, ``root/<class>/<clip>`` or ``root/<split>/<class>/<clip>``.
    split : ``"train"``, ``"val"`` or (split folders only) ``"test"``.
    frames, frame_stride : T frames, this many frames apart, centred in the clip.
    size : frames are resized (shorter side) and centre-cropped to ``size``×``size``.
    val_fraction : the share of each class's clips that goes to val (flat layout only).
    cache_dir : where decoded clips are cached (default ``default_cache_dir()``); False: no cache.
    classes : the class list to label with (e.g. the train list, for val); default: the
        sorted class folders.
    seed : the seed of the flat-layout split.

    Returns
    -------
    clips : uint8 (N, 3, T, size, size), RGB, sorted by label then clip name.
    labels : int64 (N,); ``classes[label]`` names the class.
    classes : list[str].

    Unreadable clips are skipped with a VideoSkippedWarning naming them; ValueError if none
    is readable.
    """
    frames = check_positive_int("frames", frames)
    frame_stride = check_positive_int("frame_stride", frame_stride)
    size = check_positive_int("size", size)
    if cache_dir is True or (cache_dir is not None and cache_dir is not False
                             and not isinstance(cache_dir, (str, os.PathLike))):
        raise ValueError(f"cache_dir must be a folder, None (the default folder) or False (no cache), "
                         f"got {cache_dir!r}")
    root = Path(root)
    items, classes = list_videos(root, split, val_fraction=val_fraction, classes=classes, seed=seed)
    if not items:
        raise ValueError(f"no clips in split {split!r} of {root}")

    cache = None
    if cache_dir is not False:
        cache = Path(default_cache_dir() if cache_dir is None else cache_dir).expanduser()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            warnings.warn(f"cannot create the clip cache {cache} ({err}); decoding without a cache",
                          stacklevel=2)
            cache = None

    shape = (3, frames, size, size)
    clips = torch.empty((len(items),) + shape, dtype=torch.uint8)
    labels = []
    for path, label in items:
        clip = file = None
        if cache is not None:
            file = cache / f"{_cache_key(path, frames, frame_stride, size)}.pt"
            clip = _cache_read(file, shape)
        if clip is None:
            try:
                clip = read_clip(path, frames, frame_stride, size)
            except UnreadableVideoError as err:
                warnings.warn(f"skipping unreadable clip {err}", VideoSkippedWarning, stacklevel=2)
                continue
            if file is not None:
                try:
                    _cache_write(file, clip)
                except OSError as err:
                    _warn_cache_write(file, err)
                    cache = None
        clips[len(labels)] = clip
        labels.append(label)

    if not labels:
        raise ValueError(f"no readable clip in split {split!r} of {root}: all {len(items)} were skipped "
                         f"(see the warnings)")
    if len(labels) < len(items):
        clips = clips[: len(labels)].clone()
    return clips, torch.tensor(labels, dtype=torch.int64), classes


__all__ = [
    "CACHE_VERSION",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "TRUNCATION_TOLERANCE",
    "UnreadableVideoError",
    "VIDEO_EXTENSIONS",
    "VideoSkippedWarning",
    "default_cache_dir",
    "list_videos",
    "load_kinetics_folder",
    "read_clip",
    "sample_indices",
]
