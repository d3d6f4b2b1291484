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

Annotation lists
----------------
Instead of class folders, ``annotations=LIST`` names the clips and their labels, one
``<clip> <label>`` per line (the mmaction2 video lists), e.g. ``D32_1gwq35E.mp4 0``: the clip
path relative to ``root/<split>`` when ``root`` has split folders, else to ``root``, and a
non-negative integer label. Blank lines are skipped. A malformed line (a missing or extra
field, a label that is not an integer, a name that is absolute, holds ``..`` or is listed twice)
is a ValueError naming the list and the line number; a missing list or a listed clip that does
not exist is a FileNotFoundError naming them. The list *is* the split (``val_fraction`` and
``seed`` do not apply). ``classes`` defaults to ``["0", "1", …, str(max label)]``; with
``classes=`` a label must be below ``len(classes)``.

Kinetics-400-tiny
-----------------
``kinetics400_tiny()`` downloads, checks and reads the 40-clip, 2-class subset of Kinetics-400
used by the mmaction2 tutorials (``KINETICS400_TINY_URL``), unpacked into
``root/kinetics400_tiny`` (``root`` as in :func:`nltutorial.data.data_root`)::

    kinetics400_tiny/
        kinetics_tiny_train_video.txt   "<clip>.mp4 <label>" per line, labels 0 and 1
        kinetics_tiny_val_video.txt
        train/*.mp4                     30 clips
        val/*.mp4                       10 clips

No checksum is published, so the archive is checked by its size (``KINETICS400_TINY_SIZE``
bytes), its layout (both lists, every listed clip) and, if you pin one, its sha256: after a
first download, ``sha256sum root/kinetics400_tiny.zip`` (the archive is kept) and pass
``sha256=`` from then on. Every zip member is checked before anything is written: an absolute
path, a ``..``, a symbolic link or a special file is an UnsafeArchiveError naming the member;
members outside ``kinetics400_tiny/`` (``__MACOSX/``, say) are not extracted. The download
streams into a ``.part`` file (removed on any failure, Ctrl-C and SIGTERM included) and the
archive is unpacked into a temporary folder beside the target, renamed into place once complete
(``os.replace``): a failure leaves ``root`` as it was.

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
>>> x, y, classes = kinetics400_tiny(split="train", frames=8, frame_stride=2, size=112)                 # doctest: +SKIP
>>> x.shape, classes                                                                                     # doctest: +SKIP
(torch.Size([30, 3, 8, 112, 112]), ['0', '1'])
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._download import DiskFullError, check_seconds, download, file_sha256, write_members
from ._utils import check_positive_int
from .data import DatasetDownloadError, UnsafeArchiveError, data_root

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


_LABEL = re.compile(r"[0-9]+")


def _annotation_line(path: Path, number: int, line: str) -> tuple[str, int]:
    """``(name, label)`` of line ``number`` of the list ``path``; ValueError naming both if malformed."""
    fields = line.split()
    where = f"{path}, line {number}"
    if len(fields) != 2 or not _LABEL.fullmatch(fields[1]):
        raise ValueError(f"{where}: expected '<clip> <label>' (a clip name and a non-negative integer), "
                         f"got {line.strip()!r}")
    name = fields[0].replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in PurePosixPath(name).parts:
        raise ValueError(f"{where}: the clip name {fields[0]!r} must be a path relative to the clip folder, "
                         f"without '..'")
    return name, int(fields[1])


def read_annotation_list(
    path: str | os.PathLike,
    clip_folder: str | os.PathLike,
    num_classes: int | None = None,
) -> list[tuple[Path, int]]:
    """The clips an annotation list names: ``[(clip_folder / name, label), ...]`` in list order.

    Each non-blank line of ``path`` is ``<name> <label>``, white-space separated: a clip (video
    file or frame folder) relative to ``clip_folder`` and an integer label in
    [0, ``num_classes``) (any non-negative integer when ``num_classes`` is None). Raises
    FileNotFoundError for a missing list or a listed clip that does not exist, ValueError
    naming the list and the line for a malformed line or a clip listed twice.
    """
    path, clip_folder = Path(path), Path(clip_folder)
    if not path.is_file():
        raise FileNotFoundError(f"annotation list not found: {path} (expected lines '<clip> <label>')")
    # surrogateescape: a name that is not UTF-8 maps back to its own bytes (os.fsencode)
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    items, first_line = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, label = _annotation_line(path, number, line)
        if num_classes is not None and label >= num_classes:
            raise ValueError(f"{path}, line {number}: label {label} is not below the {num_classes} classes")
        if name in first_line:
            raise ValueError(f"{path}, line {number}: {name!r} is listed again (first on line {first_line[name]})")
        first_line[name] = number
        clip = clip_folder / name
        if not (clip.is_file() or clip.is_dir()):
            raise FileNotFoundError(f"{path}, line {number}: the listed clip {clip} does not exist")
        items.append((clip, label))
    return items


def _listed_videos(root: Path, split: str, annotations, classes) -> tuple[list[tuple[Path, int]], list[str]]:
    """``list_videos`` for an annotation list: names relative to ``root/<split>`` or ``root``."""
    split_folders = [root / s for s in SPLITS if (root / s).is_dir()]
    folder = root / split if split_folders else root
    if not folder.is_dir():
        present = ", ".join(p.name for p in split_folders)
        raise FileNotFoundError(f"split {split!r} not found: {folder} does not exist ({root} has {present})")
    items = read_annotation_list(annotations, folder, None if classes is None else len(classes))
    if classes is None:
        classes = [str(k) for k in range(1 + max((label for _, label in items), default=-1))]
    items.sort(key=lambda item: (item[1], os.fsencode(item[0])))  # by label, then name
    return items, list(classes)


def list_videos(
    root: str | os.PathLike,
    split: str = "train",
    *,
    val_fraction: float = 0.2,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    annotations: str | os.PathLike | None = None,
) -> tuple[list[tuple[Path, int]], list[str]]:
    """The clips of one split, without reading them: ``([(path, label), ...], classes)``.

    ``path`` is a video file or a frame folder; the list is sorted by label, then name.
    See the module docstring for the two layouts, the flat-layout split and the annotation
    lists (``annotations=``, which replace the class folders).
    """
    split = _check_split(split)
    val_fraction = _check_val_fraction(val_fraction)
    classes = _check_classes(classes)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    if annotations is not None:
        return _listed_videos(root, split, annotations, classes)

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
    annotations: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every readable clip of one split of a Kinetics-style folder, as tensors.

    Parameters
    ----------
    root : the data set folder, ``root/<class>/<clip>`` or ``root/<split>/<class>/<clip>``
        (with ``annotations``: the folder the list's names are relative to, or its parent
        holding split folders).
    split : ``"train"``, ``"val"`` or (split folders only) ``"test"``.
    frames, frame_stride : T frames, this many frames apart, centred in the clip.
    size : frames are resized (shorter side) and centre-cropped to ``size``×``size``.
    val_fraction : the share of each class's clips that goes to val (flat layout only).
    cache_dir : where decoded clips are cached (default ``default_cache_dir()``); False: no cache.
    classes : the class list to label with (e.g. the train list, for val); default: the
        sorted class folders.
    seed : the seed of the flat-layout split.
    annotations : an annotation list (``<clip> <label>`` per line) naming the clips of this
        split, instead of class folders; see the module docstring.

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
    items, classes = list_videos(root, split, val_fraction=val_fraction, classes=classes, seed=seed,
                                 annotations=annotations)
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



# --------------------------------------------------------------------------------------
# Kinetics-400-tiny: download, check, unpack
# --------------------------------------------------------------------------------------

#: The mmaction2 tutorials' subset of Kinetics-400: 30 train and 10 val clips of 2 classes.
KINETICS400_TINY_URL = "https://download.openmmlab.com/mmaction/kinetics400_tiny.zip"
#: Its size in bytes (no checksum is published; pin your own with ``sha256=``).
KINETICS400_TINY_SIZE = 18_308_682
KINETICS400_TINY_ARCHIVE = "kinetics400_tiny.zip"
KINETICS400_TINY_FOLDER = "kinetics400_tiny"
#: The annotation list of each split, inside the folder; the clips are in ``<folder>/<split>/``.
KINETICS400_TINY_LISTS = {"train": "kinetics_tiny_train_video.txt", "val": "kinetics_tiny_val_video.txt"}
#: Default overall deadline of the download, in seconds (each read also has its ``timeout``).
KINETICS400_TINY_DEADLINE = 10 * 60.0
#: An archive declaring more unpacked bytes than this is refused (a zip bomb).
MAX_UNPACKED_BYTES = 1 << 30


def _check_sha256(sha256) -> str | None:
    if sha256 is None:
        return None
    if not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"sha256 must be None or 64 hexadecimal digits, got {sha256!r}")
    return sha256.lower()


def _tiny_instructions(root: Path) -> str:
    train_list = root / KINETICS400_TINY_FOLDER / KINETICS400_TINY_LISTS["train"]
    return (f"download {KINETICS400_TINY_URL} ({KINETICS400_TINY_SIZE:,} bytes) and either place it at "
            f"{root / KINETICS400_TINY_ARCHIVE} (it is then checked and unpacked by download=True without "
            f"the network) or unzip it in {root} so that {train_list} exists; or set NLTUTORIAL_DATA (or "
            f"pass root=) to a folder that already holds {KINETICS400_TINY_FOLDER}/.")


def check_kinetics400_tiny(folder: str | os.PathLike) -> dict[str, list[tuple[Path, int]]]:
    """Check the layout of a ``kinetics400_tiny`` folder: both lists parse, every listed clip exists.

    Returns ``{split: [(clip path, label), ...]}`` (:func:`read_annotation_list`). Raises
    FileNotFoundError (a missing list, folder or clip) or ValueError (a malformed or empty
    list), naming the file and, for a list, the line.
    """
    folder, listed = Path(folder), {}
    for split, name in KINETICS400_TINY_LISTS.items():
        if not (folder / split).is_dir():
            raise FileNotFoundError(f"clip folder not found: {folder / split}")
        listed[split] = read_annotation_list(folder / name, folder / split)
        if not listed[split]:
            raise ValueError(f"{folder / name} lists no clip")
    return listed


def _zip_member(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's path if it lies in ``kinetics400_tiny/``, None if elsewhere; refuses unsafe ones."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {info.filename!r} has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"archive member {info.filename!r} points outside the archive ('..')")
    mode = info.external_attr >> 16  # the Unix mode, when the archive was made on Unix
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link or a special file")
    if info.flag_bits & 0x1:
        raise DatasetDownloadError(f"archive member {info.filename!r} is encrypted")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if not parts or parts[0] != KINETICS400_TINY_FOLDER:
        return None
    return PurePosixPath(*parts)


def _unzip_checked(archive: Path, into: Path) -> None:
    """Write the ``kinetics400_tiny/`` members of ``archive`` under ``into``, all checked first."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _zip_member(info)) for info in zf.infolist()]   # every member checked first
            members = [(info, rel) for info, rel in members if rel is not None]
            unpacked = sum(info.file_size for info, _ in members)
            if unpacked > MAX_UNPACKED_BYTES:
                raise DatasetDownloadError(f"{archive} would unpack to {unpacked:,} bytes, more than the "
                                           f"{MAX_UNPACKED_BYTES:,} allowed")
            write_members(((info.is_dir(), rel, lambda info=info: zf.open(info))
                           for info, rel in members), into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise DatasetDownloadError(f"{archive} is not a readable zip archive: {err}") from err


def extract_kinetics400_tiny(archive: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Unpack the archive safely into ``root`` and return ``root/kinetics400_tiny``.

    The members are written into a temporary folder inside ``root``, whose layout is checked
    (:func:`check_kinetics400_tiny`) before it is renamed into place with ``os.replace``; on
    any failure the temporary folder is removed and ``root`` is left as it was. An existing
    ``kinetics400_tiny`` folder is kept.
    """
    archive, root = Path(archive), Path(root)
    target = root / KINETICS400_TINY_FOLDER
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".kinetics400_tiny-extract."))
    try:
        _unzip_checked(archive, tmp_dir)
        try:
            check_kinetics400_tiny(tmp_dir / KINETICS400_TINY_FOLDER)
        except (FileNotFoundError, ValueError) as err:
            inner = str(err).replace(str(tmp_dir / KINETICS400_TINY_FOLDER), KINETICS400_TINY_FOLDER)
            raise DatasetDownloadError(f"{archive} is not Kinetics-400-tiny: {inner}") from None
        try:
            os.replace(tmp_dir / KINETICS400_TINY_FOLDER, target)
        except OSError:
            if not target.is_dir():  # another process unpacked it meanwhile: keep that one
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _check_tiny_file(path: Path, size: int, digest: str, expected_size: int, sha256: str | None,
                     source: str) -> None:
    """DatasetDownloadError unless the archive has ``expected_size`` bytes and (if pinned) ``sha256``."""
    if size != expected_size:
        raise DatasetDownloadError(f"{path} ({source}) has {size:,} bytes, expected {expected_size:,}: it "
                                   f"is incomplete or not the Kinetics-400-tiny archive")
    if sha256 is not None and digest != sha256:
        raise DatasetDownloadError(f"{path} ({source}): sha256 mismatch, expected {sha256} (the pinned "
                                   f"sha256=), got {digest}")


def download_kinetics400_tiny(
    root: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    expected_size: int | None = None,
    timeout: float = 30.0,
    deadline: float = KINETICS400_TINY_DEADLINE,
) -> Path:
    """Make sure ``root/kinetics400_tiny`` exists, downloading and unpacking it if needed.

    ``url`` defaults to ``KINETICS400_TINY_URL`` and ``expected_size`` to
    ``KINETICS400_TINY_SIZE`` (both read when called). An archive already at
    ``root/kinetics400_tiny.zip`` (placed by hand, or kept from a download) is checked and
    unpacked without the network; otherwise it is streamed in (``timeout`` seconds per read,
    ``deadline`` for the whole download), its size and (when given) ``sha256`` checked before
    it is kept. Returns the folder (an existing one as it is). Raises DatasetDownloadError
    naming the file and saying how to get the data by hand; ``root`` is then left as it was.
    """
    sha256 = _check_sha256(sha256)
    url = KINETICS400_TINY_URL if url is None else url
    expected_size = check_positive_int("expected_size", KINETICS400_TINY_SIZE if expected_size is None
                                       else expected_size)
    check_seconds("timeout", timeout)
    check_seconds("deadline", deadline)
    root = data_root(root)
    target, archive = root / KINETICS400_TINY_FOLDER, root / KINETICS400_TINY_ARCHIVE
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    if archive.is_file():  # placed by hand or kept: check it, never delete it
        _check_tiny_file(archive, archive.stat().st_size, file_sha256(archive), expected_size, sha256,
                         "found in root")
        return extract_kinetics400_tiny(archive, root)

    def check(part: Path, digest: str) -> None:
        _check_tiny_file(archive, part.stat().st_size, digest, expected_size, sha256, f"from {url}")

    try:
        download(url, archive, hashlib.sha256(), timeout=timeout, deadline=deadline, check=check)
    except DiskFullError as err:
        raise DatasetDownloadError(f"{err.strerror}: the archive needs about 18 MB and its folder as much "
                                   f"again; free some space or pass another root=. Nothing was left in "
                                   f"{root}.") from err
    except DatasetDownloadError as err:
        raise DatasetDownloadError(f"{err} Nothing was kept. Or get the data by hand: "
                                   + _tiny_instructions(root)) from None
    except Exception as err:  # URLError/OSError, ValueError (bad URL), HTTPException, deadline
        raise DatasetDownloadError(f"Could not download Kinetics-400-tiny from {url} into {root}: "
                                   f"{err or type(err).__name__}. Check the network, or get the data by "
                                   f"hand: " + _tiny_instructions(root)) from err
    try:
        return extract_kinetics400_tiny(archive, root)
    except BaseException:
        archive.unlink(missing_ok=True)  # downloaded by this call: leave root as it was
        raise


def kinetics400_tiny(
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    sha256: str | None = None,
    frames: int = 8,
    frame_stride: int = 2,
    size: int = 112,
    cache_dir: str | os.PathLike | None | bool = None,
    url: str | None = None,
    expected_size: int | None = None,
    timeout: float = 30.0,
    deadline: float = KINETICS400_TINY_DEADLINE,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of Kinetics-400-tiny, as :func:`load_kinetics_folder` returns it.

    Parameters
    ----------
    root : the folder holding ``kinetics400_tiny/`` (default ``$NLTUTORIAL_DATA`` or
        ``~/.cache/nltutorial``).
    split : ``"train"`` (30 clips) or ``"val"`` (10 clips).
    download : fetch and unpack the archive when the folder is missing
        (:func:`download_kinetics400_tiny`); with False a missing folder is a FileNotFoundError
        saying how to get it.
    sha256 : the archive's sha256, pinned after a first download; checked whenever the archive
        is downloaded or unpacked.
    frames, frame_stride, size, cache_dir : as in :func:`load_kinetics_folder`.
    url, expected_size, timeout, deadline : as in :func:`download_kinetics400_tiny`.

    Returns
    -------
    clips : uint8 (N, 3, T, size, size), RGB, sorted by label then clip name.
    labels : int64 (N,), the lists' labels.
    classes : ``["0", "1"]`` (the lists' labels as names, the same for both splits).
    """
    if split not in KINETICS400_TINY_LISTS:
        raise ValueError(f"split must be one of {tuple(KINETICS400_TINY_LISTS)}, got {split!r}")
    base = data_root(root)
    folder = base / KINETICS400_TINY_FOLDER
    if download:
        folder = download_kinetics400_tiny(base, url=url, sha256=sha256, expected_size=expected_size,
                                           timeout=timeout, deadline=deadline)
    elif not folder.is_dir():
        hint = (f" ({base} itself looks like the kinetics400_tiny folder: pass its parent as root)"
                if (base / KINETICS400_TINY_LISTS["train"]).is_file() else "")
        raise FileNotFoundError(f"Kinetics-400-tiny not found: {folder}{hint}. Call with download=True, or "
                                + _tiny_instructions(base))
    try:
        listed = check_kinetics400_tiny(folder)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{err}; {folder} is incomplete: remove it and call kinetics400_tiny() again to "
                        f"download it afresh") from None
    top = max(label for items in listed.values() for _, label in items)
    classes = [str(k) for k in range(top + 1)]  # from both lists: the same for both splits
    return load_kinetics_folder(folder, split, frames, frame_stride, size, cache_dir=cache_dir,
                                classes=classes, annotations=folder / KINETICS400_TINY_LISTS[split])

__all__ = [
    "CACHE_VERSION",
    "IMAGE_EXTENSIONS",
    "KINETICS400_TINY_DEADLINE",
    "KINETICS400_TINY_LISTS",
    "KINETICS400_TINY_SIZE",
    "KINETICS400_TINY_URL",
    "MAX_UNPACKED_BYTES",
    "SPLITS",
    "TRUNCATION_TOLERANCE",
    "UnreadableVideoError",
    "VIDEO_EXTENSIONS",
    "VideoSkippedWarning",
    "check_kinetics400_tiny",
    "default_cache_dir",
    "download_kinetics400_tiny",
    "extract_kinetics400_tiny",
    "kinetics400_tiny",
    "list_videos",
    "load_kinetics_folder",
    "read_annotation_list",
    "read_clip",
    "sample_indices",
]
