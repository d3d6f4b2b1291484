"""Tests of nltutorial.kinetics: a Kinetics-style folder of videos and frame folders.

The tests encode their own small mp4 files with PyAV (MPEG-4 part 2, built into FFmpeg).
Frame i of a synthetic clip is grey with level 10 + 10·i in its middle, so the decoded level
tells which frames were sampled despite lossy compression; its 8 left columns are black and
its 8 right columns white, so a 48-pixel centre crop of the 64-pixel width removes both.
"""

import ast
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nltutorial import kinetics
from nltutorial.kinetics import (
    UnreadableVideoError,
    VideoSkippedWarning,
    list_videos,
    load_kinetics_folder,
    read_clip,
    sample_indices,
)

av = pytest.importorskip("av")

H, W = 48, 64


@pytest.fixture(autouse=True)
def _no_ambient_root(monkeypatch, tmp_path):
    """No test writes to the user's ~/.cache or a $NLTUTORIAL_DATA set outside the tests."""
    monkeypatch.delenv("NLTUTORIAL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _frame(i, h=H, w=W):
    a = np.full((h, w, 3), 10 + 10 * i, np.uint8)  # i < 25
    a[:, :8] = 0
    a[:, -8:] = 255
    return a


def _write_mp4(path, n=24, faststart=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_frames(folder, n=12, name="frame_{:04d}.jpg", h=H, w=W):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_frame(i, h, w)).save(folder / name.format(i + 1), quality=95)
    return folder


def _indices(clip):
    """The frame index of each of the T frames of a (3, T, h, w) clip, read from its grey level."""
    t, h, w = clip.shape[1:]
    middle = clip[:, :, h // 4 : h - h // 4, w // 4 : w - w // 4].double()  # away from crop edges
    levels = middle.mean(dim=(0, 2, 3))
    index = ((levels - 10) / 10).round()
    assert torch.all((levels - (10 + 10 * index)).abs() < 4), levels  # close to a level
    return index.long().tolist()


def _messages(record):
    return [str(w.message) for w in record if issubclass(w.category, VideoSkippedWarning)]


@pytest.fixture
def flat(tmp_path):
    """root/<class>/<clip>: 3 classes of mp4 files and frame folders (9 clips)."""
    root = tmp_path / "kinetics"
    for cls in ("walk", "jump", "swim"):
        for k in range(2):
            _write_mp4(root / cls / f"{cls}{k}.mp4", n=24)
        _write_frames(root / cls / f"{cls}_frames", n=12)
    (root / "walk" / "notes.txt").write_text("not a clip")  # ignored
    (root / ".hidden").mkdir()  # ignored
    return root


# --------------------------------------------------------------------------------------
# Frame sampling, decoding, resizing
# --------------------------------------------------------------------------------------


def test_sample_indices():
    assert sample_indices(24, 8, 2) == [4, 6, 8, 10, 12, 14, 16, 18]  # span 15, centred
    assert sample_indices(15, 8, 2) == list(range(0, 15, 2))
    assert sample_indices(10, 3, 1) == [3, 4, 5]
    assert sample_indices(6, 4, 2) == [0, 2, 4, 5]  # short: padded with the last frame
    assert sample_indices(1, 3, 5) == [0, 0, 0]
    for bad in ("frames", "frame_stride", "num_frames"):
        args = {"num_frames": 10, "frames": 4, "frame_stride": 2, bad: 0}
        with pytest.raises(ValueError, match=bad):
            sample_indices(**args)


def test_read_clip_mp4_samples_centred_frames(tmp_path):
    path = _write_mp4(tmp_path / "a.mp4", n=24)
    clip = read_clip(path, frames=8, frame_stride=2, size=48)
    assert clip.shape == (3, 8, 48, 48) and clip.dtype == torch.uint8
    assert _indices(clip) == [4, 6, 8, 10, 12, 14, 16, 18]
    # centre crop of the 64-pixel width: the black and white side bands (50+ levels away) are gone
    for t, i in enumerate(_indices(clip)):
        assert (clip[:, t].int() - (10 + 10 * i)).abs().max() <= 20
    # resized (shorter side 48 → 24) and upsampled (→ 100), still centred in time and space
    small = read_clip(path, frames=3, frame_stride=5, size=24)
    assert small.shape == (3, 3, 24, 24) and _indices(small) == [6, 11, 16]
    levels = (10 + 10 * torch.tensor([6, 11, 16])).view(1, 3, 1, 1)
    assert (small[..., 2:-2].int() - levels).abs().max() <= 8  # the crop's edge columns mix in the bands
    big = read_clip(path, frames=2, frame_stride=1, size=100)
    assert big.shape == (3, 2, 100, 100) and _indices(big) == [11, 12]


def test_read_clip_short_video_repeats_last_frame(tmp_path):
    clip = read_clip(_write_mp4(tmp_path / "short.mp4", n=6), frames=4, frame_stride=3, size=48)
    assert _indices(clip) == [0, 3, 5, 5]


def test_resize_then_centre_crop_exact(tmp_path):
    # lossless PNG frames, portrait 40×20: shorter side 20 → 10 (×0.5), rows 20 → crop 5..15
    folder = tmp_path / "portrait"
    folder.mkdir()
    from PIL import Image

    a = np.full((40, 20, 3), 100, np.uint8)
    a[:10], a[30:] = 0, 255  # bands cropped away
    a[..., 1] = 50  # channels stay in RGB order
    Image.fromarray(a).save(folder / "0.png")
    clip = read_clip(folder, frames=1, frame_stride=1, size=10)
    assert clip.shape == (3, 1, 10, 10)
    assert torch.all(clip[0, 0, 1:-1] == 100) and torch.all(clip[1] == 50) and torch.all(clip[2, 0, 1:-1] == 100)
    assert torch.equal(kinetics._resize_crop(a, 20), torch.from_numpy(a).permute(2, 0, 1)[:, 10:30])  # crop only


def test_frame_folder_jpeg_natural_order(tmp_path):
    folder = _write_frames(tmp_path / "clip", n=12, name="img_{}.jpg")  # img_1 .. img_12
    (folder / "labels.txt").write_text("ignored")
    clip = read_clip(folder, frames=4, frame_stride=3, size=48)
    assert clip.shape == (3, 4, 48, 48)
    assert _indices(clip) == [1, 4, 7, 10]  # span 10 centred in 12; img_10 is the 10th frame, not the 2nd


def test_truncated_within_tolerance_is_read(tmp_path):
    # a faststart mp4 missing its last bytes: 23 of the 24 declared frames decode (within 5 %),
    # so the frames are sampled again for the 23 frames found (a second decoding pass)
    path = _write_mp4(tmp_path / "cut.mp4", n=24, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[:-50])
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 24 and sum(1 for _ in c.decode(video=0)) == 23
    assert _indices(read_clip(path, frames=2, frame_stride=1, size=48)) == [10, 11]


# --------------------------------------------------------------------------------------
# Listing and splitting
# --------------------------------------------------------------------------------------


def test_flat_split_is_stratified_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "k"
    for cls in ("b", "a", "c"):
        (root / cls).mkdir(parents=True)
        for k in range(10):
            (root / cls / f"{k}.mp4").write_bytes(b"")  # listing never reads the files
    train, classes = list_videos(root, "train")
    val, classes_val = list_videos(root, "val")
    assert classes == classes_val == ["a", "b", "c"]
    assert len(train) == 24 and len(val) == 6  # 2 of each class's 10 clips go to val
    assert [label for _, label in val] == [0, 0, 1, 1, 2, 2]
    assert {p for p, _ in train} | {p for p, _ in val} == set(root.glob("*/*.mp4"))
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert all(p.parent.name == classes[label] for p, label in train + val)
    assert list_videos(root, "val") == (val, classes)  # deterministic
    other = list_videos(root, "val", seed=1)[0]
    assert len(other) == 6 and other != val  # the seed changes the partition
    assert len(list_videos(root, "val", val_fraction=0.5)[0]) == 15
    assert list_videos(root, "val", val_fraction=0)[0] == []


def test_split_folders_share_the_class_list(tmp_path):
    root = tmp_path / "k"
    _write_mp4(root / "train" / "b" / "b0.mp4")
    _write_mp4(root / "train" / "a" / "a0.mp4")
    _write_mp4(root / "val" / "b" / "b1.mp4")  # val has no class a
    x, y, classes = load_kinetics_folder(root, "train", frames=2, frame_stride=1, size=16, cache_dir=False)
    assert classes == ["a", "b"] and y.tolist() == [0, 1] and x.shape == (2, 3, 2, 16, 16)
    xv, yv, classes_v = load_kinetics_folder(root, "val", frames=2, frame_stride=1, size=16, cache_dir=False)
    assert classes_v == classes and yv.tolist() == [1] and xv.shape == (1, 3, 2, 16, 16)
    with pytest.raises(FileNotFoundError, match="test"):
        list_videos(root, "test")


def test_classes_argument(tmp_path):
    root = tmp_path / "k"
    for cls in ("walk", "jump"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.mp4").write_bytes(b"")
    items, classes = list_videos(root, "train", val_fraction=0, classes=["swim", "walk", "jump"])
    assert classes == ["swim", "walk", "jump"]
    assert [(p.parent.name, label) for p, label in items] == [("walk", 1), ("jump", 2)]
    with pytest.raises(ValueError, match=r"\['walk'\].*not in classes"):
        list_videos(root, "train", classes=["jump", "swim"])
    with pytest.raises(ValueError, match="duplicates"):
        list_videos(root, "train", classes=["jump", "walk", "jump"])


# --------------------------------------------------------------------------------------
# The loader, its cache and bad files
# --------------------------------------------------------------------------------------


def test_load_flat_folder(flat):
    cache = flat.parent / "cache"
    x, y, classes = load_kinetics_folder(flat, "train", frames=4, frame_stride=2, size=32, val_fraction=0.34,
                                         cache_dir=cache)
    xv, yv, classes_v = load_kinetics_folder(flat, "val", frames=4, frame_stride=2, size=32, val_fraction=0.34,
                                             cache_dir=cache)
    assert classes == classes_v == ["jump", "swim", "walk"]
    assert x.shape == (6, 3, 4, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert xv.shape == (3, 3, 4, 32, 32) and yv.tolist() == [0, 1, 2]  # one clip per class
    for clip in torch.cat([x, xv]):  # mp4 (24 frames) or frame folder (12 frames), centred
        assert _indices(clip) in ([8, 10, 12, 14], [2, 4, 6, 8])
    assert len(list(cache.glob("*.pt"))) == 9 and not list(cache.glob(".*"))  # no temporary files


def test_second_load_reads_the_cache(flat, monkeypatch):
    cache = flat.parent / "cache"
    first = load_kinetics_folder(flat, frames=3, frame_stride=2, size=24, cache_dir=cache)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(kinetics, "read_clip", no_decoding)
    monkeypatch.setitem(sys.modules, "av", None)  # nor is PyAV needed
    second = load_kinetics_folder(flat, frames=3, frame_stride=2, size=24, cache_dir=cache)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    with pytest.raises(AssertionError, match="decoded although cached"):  # other parameters: another key
        load_kinetics_folder(flat, frames=3, frame_stride=2, size=16, cache_dir=cache)


def test_cache_follows_file_changes_and_heals(flat, monkeypatch):
    monkeypatch.setenv("NLTUTORIAL_DATA", str(flat.parent / "data"))
    x, _, _ = load_kinetics_folder(flat, frames=2, frame_stride=1, size=16)  # default cache folder
    cache = flat.parent / "data" / "kinetics-cache"
    entries = sorted(cache.glob("*.pt"))
    assert len(entries) == 6
    for entry in entries:  # damaged entries are decoded and written again
        entry.write_bytes(b"garbage")
    # an edited clip (new content, new mtime) is decoded again, not read from the cache
    _write_mp4(flat / "jump" / "jump0.mp4", n=6)
    os.utime(flat / "jump" / "jump0.mp4", ns=(1, 1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x2, _, _ = load_kinetics_folder(flat, frames=2, frame_stride=1, size=16)
    assert not record
    sizes = sorted(e.stat().st_size for e in cache.glob("*.pt"))
    assert sizes[0] == len(b"garbage") and sizes[1] > 100  # 6 entries rewritten, 1 stale (old jump0)
    changed = [i for i in range(len(x)) if not torch.equal(x[i], x2[i])]
    assert len(changed) == 1 and _indices(x2[changed[0]]) == [2, 3]


def test_bad_files_are_skipped_with_a_warning(flat):
    good = _write_mp4(flat / "swim" / "z_faststart.mp4", faststart=True)
    bad = {
        "zero": flat / "walk" / "zero.mp4",
        "text": flat / "walk" / "text.mp4",
        "truncated": flat / "jump" / "truncated.mp4",
        "truncated_faststart": flat / "swim" / "truncated_faststart.mp4",
        "empty_folder": flat / "jump" / "empty_frames",
        "bad_jpeg": flat / "walk" / "bad_jpeg_frames",
    }
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("this is not a video\n" * 20)
    data = _write_mp4(flat / "jump" / "full.mp4").read_bytes()
    (flat / "jump" / "full.mp4").unlink()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    data = good.read_bytes()
    bad["truncated_faststart"].write_bytes(data[: len(data) // 2])  # opens, but 2 of 24 frames
    bad["empty_folder"].mkdir()
    _write_frames(bad["bad_jpeg"], n=4)
    (bad["bad_jpeg"] / "frame_0002.jpg").write_bytes((bad["bad_jpeg"] / "frame_0002.jpg").read_bytes()[:200])

    with pytest.warns(VideoSkippedWarning) as record:
        x, y, classes = load_kinetics_folder(flat, val_fraction=0, frames=2, frame_stride=1, size=16,
                                             cache_dir=False)
    messages = _messages(record)
    assert len(messages) == len(bad)
    for path in bad.values():
        assert sum(str(path) in m for m in messages) == 1, (path, messages)
    assert any("truncated, 2 of the 24" in m for m in messages)
    assert any("frame_0002.jpg" in m for m in messages)
    assert x.shape == (10, 3, 2, 16, 16) and y.tolist() == [0] * 3 + [1] * 4 + [2] * 3


def test_nothing_readable(tmp_path):
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").write_bytes(b"\x00" * 100)
    with pytest.warns(VideoSkippedWarning, match="x.mp4"), pytest.raises(ValueError, match=str(root)):
        load_kinetics_folder(root, val_fraction=0, cache_dir=False)
    with pytest.raises(ValueError, match=f"no clips in split 'val' of {root}"):
        load_kinetics_folder(root, "val", val_fraction=0, cache_dir=False)
    with pytest.raises(UnreadableVideoError, match="x.mp4"):
        read_clip(root / "a" / "x.mp4")


def test_argument_errors(flat, tmp_path):
    for name, value in [("frames", 0), ("frame_stride", -1), ("size", 0), ("frames", 2.0), ("size", True)]:
        with pytest.raises(ValueError, match=name):
            load_kinetics_folder(flat, **{name: value}, cache_dir=False)
        with pytest.raises(ValueError, match=name):
            read_clip(flat / "jump" / "jump0.mp4", **{name: value})
    with pytest.raises(ValueError, match="split"):
        load_kinetics_folder(flat, "dev")
    with pytest.raises(ValueError, match="flat layout"):
        load_kinetics_folder(flat, "test")
    for value in (1, 1.5, -0.1, "0.2"):
        with pytest.raises(ValueError, match="val_fraction"):
            load_kinetics_folder(flat, val_fraction=value)
    with pytest.raises(ValueError, match="cache_dir"):
        load_kinetics_folder(flat, cache_dir=True)
    with pytest.raises(ValueError, match="classes"):
        load_kinetics_folder(flat, classes="walk")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_kinetics_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_clip(tmp_path / "missing.mp4")
    (tmp_path / "no_classes").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_kinetics_folder(tmp_path / "no_classes")


def test_missing_pyav(flat, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(ImportError, match="pip install av"):
        read_clip(flat / "jump" / "jump0.mp4")
    with pytest.raises(ImportError, match="pip install av"):  # not a per-file warning
        load_kinetics_folder(flat, cache_dir=False)
    assert read_clip(flat / "jump" / "jump_frames", frames=2, size=16).shape == (3, 2, 16, 16)


def test_pyav_is_imported_lazily():
    tree = ast.parse(Path(kinetics.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top for a in n.names} | {
        (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert "av" not in names and "PIL" not in names


# --------------------------------------------------------------------------------------
# Cache keys, odd file names, links, mixed frame sizes, a full disk (issue 15, item 4)
# --------------------------------------------------------------------------------------


def _write_bmp_frames(folder, levels):
    """Uncompressed BMP frames: the file size depends only on the frame size, not the pixels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, level in enumerate(levels):
        Image.fromarray(np.full((H, W, 3), level, np.uint8)).save(folder / f"{i}.bmp")
    return folder


def test_cache_never_serves_another_folders_clip(tmp_path):
    cache = tmp_path / "cache"
    roots = []
    for level in (40, 200):  # same class, clip and frame names, sizes and mtimes; other pixels
        root = tmp_path / f"set{level}" / "kinetics"
        clip = _write_bmp_frames(root / "walk" / "clip", [level, level])
        for frame in clip.iterdir():
            os.utime(frame, ns=(10**18, 10**18))
        roots.append(root)
    stat = [sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (r / "walk" / "clip").iterdir())
            for r in roots]
    assert stat[0] == stat[1]
    x40, _, _ = load_kinetics_folder(roots[0], val_fraction=0, frames=2, frame_stride=1, size=16, cache_dir=cache)
    x200, _, _ = load_kinetics_folder(roots[1], val_fraction=0, frames=2, frame_stride=1, size=16, cache_dir=cache)
    assert torch.all(x40 == 40) and torch.all(x200 == 200)
    assert len(list(cache.glob("*.pt"))) == 2


def test_non_utf8_file_name_loads(tmp_path):
    if sys.platform != "linux":
        pytest.skip("bytes file names are a Linux feature")
    root = tmp_path / "kinetics"
    _write_mp4(root / "walk" / "ok.mp4")
    data = _write_mp4(tmp_path / "tmp.mp4").read_bytes()
    odd = os.path.join(os.fsencode(root / "walk"), b"clip\xff.mp4")
    with open(odd, "wb") as f:
        f.write(data)
    items, _ = list_videos(root, "train", val_fraction=0.5)  # hashing the name for the split
    val, _ = list_videos(root, "val", val_fraction=0.5)
    assert len(items) == len(val) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y, _ = load_kinetics_folder(root, val_fraction=0, frames=2, frame_stride=1, size=16,
                                       cache_dir=tmp_path / "cache")
    assert x.shape == (2, 3, 2, 16, 16) and y.tolist() == [0, 0]


def test_dangling_symlink_is_named_in_a_warning(flat):
    ghost = flat / "walk" / "ghost.mp4"
    ghost.symlink_to(flat / "nowhere.mp4")
    with pytest.warns(VideoSkippedWarning) as record:
        x, _, _ = load_kinetics_folder(flat, val_fraction=0, frames=2, frame_stride=1, size=16, cache_dir=False)
    messages = _messages(record)
    assert len(messages) == 1 and str(ghost) in messages[0] and "symlink" in messages[0]
    assert x.shape[0] == 9


def test_frame_folder_with_mixed_frame_sizes_is_named_in_a_warning(flat):
    mixed = _write_frames(flat / "jump" / "mixed", n=3)
    _write_frames(flat / "jump" / "small", n=3, h=24, w=32)
    (flat / "jump" / "small" / "frame_0002.jpg").replace(mixed / "frame_0002.jpg")
    with pytest.warns(VideoSkippedWarning) as record:
        x, _, _ = load_kinetics_folder(flat, val_fraction=0, frames=3, frame_stride=1, size=16, cache_dir=False)
    messages = [m for m in _messages(record) if str(mixed) in m]
    assert len(messages) == 1 and "frame_0002.jpg" in messages[0] and "32×24" in messages[0]
    assert x.shape[0] == 10  # the 9 clips and "small"; "mixed" is skipped


def test_disk_full_while_caching_warns_and_goes_on(flat, monkeypatch):
    import errno

    cache = flat.parent / "cache"
    calls = []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kinetics.torch, "save", full_disk)
    with pytest.warns(UserWarning, match="disk full while writing") as record:
        x, y, _ = load_kinetics_folder(flat, val_fraction=0, frames=2, frame_stride=1, size=16, cache_dir=cache)
    full = [str(w.message) for w in record if "disk full" in str(w.message)]
    assert len(full) == 1 and str(cache) in full[0] and ".pt" in full[0]
    assert x.shape[0] == 9 and len(calls) == 1  # every clip loaded; no more writes tried
    assert list(cache.iterdir()) == []  # nothing half-written left behind


# --------------------------------------------------------------------------------------
# Annotation lists ("<clip> <label>" per line)
# --------------------------------------------------------------------------------------


def _grey_mp4(path, level, n=8, side=32):
    """An mp4 of n frames side×side, every pixel at grey ``level``: the decoded level names the clip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for _ in range(n):
            frame = np.full((side, side, 3), level, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _level(clip):
    """The grey level of a (3, T, h, w) clip, as the mean of all its pixels."""
    return clip.double().mean().item()


def test_annotation_list_labels_and_order(tmp_path):
    root = tmp_path / "k"
    for name, level in (("b.mp4", 60), ("a.mp4", 120), ("c.mp4", 180)):
        _grey_mp4(root / "train" / name, level)
    (root / "val").mkdir()
    listing = tmp_path / "train.txt"
    listing.write_text("b.mp4 1\n\n  c.mp4   0  \na.mp4 1\n")  # blank lines, extra spaces
    x, y, classes = load_kinetics_folder(root, "train", frames=4, frame_stride=2, size=32, cache_dir=False,
                                         annotations=listing)
    # sorted by (label, name): c (0), a (1), b (1); each clip decodes to its own grey level
    assert classes == ["0", "1"] and y.tolist() == [0, 1, 1] and y.dtype == torch.int64
    assert x.shape == (3, 3, 4, 32, 32) and x.dtype == torch.uint8
    for clip, level in zip(x, (180, 120, 60)):
        assert abs(_level(clip) - level) < 4
    items, _ = list_videos(root, "train", annotations=listing, classes=["p", "q", "r"])
    assert items == [(root / "train" / "c.mp4", 0), (root / "train" / "a.mp4", 1), (root / "train" / "b.mp4", 1)]
    # without split folders the names are relative to root itself; the list is the whole split
    flat = tmp_path / "flat"
    _grey_mp4(flat / "sub" / "z.mp4", 90)
    (tmp_path / "flat.txt").write_text("sub/z.mp4 2\n")
    x, y, classes = load_kinetics_folder(flat, "val", frames=2, frame_stride=1, size=16, cache_dir=False,
                                         annotations=tmp_path / "flat.txt")
    assert classes == ["0", "1", "2"] and y.tolist() == [2] and abs(_level(x[0]) - 90) < 4


@pytest.mark.parametrize("line, expected", [
    ("a.mp4", "expected '<clip> <label>'"),
    ("a.mp4 x", "expected '<clip> <label>'"),
    ("a.mp4 -1", "expected '<clip> <label>'"),
    ("a.mp4 1.0", "expected '<clip> <label>'"),
    ("a.mp4 0 1", "expected '<clip> <label>'"),
    ("../a.mp4 0", "without '..'"),
    ("/tmp/a.mp4 0", "relative"),
    ("a.mp4 0\na.mp4 1", "listed again .first on line 2"),
    ("a.mp4 5", "label 5 is not below the 2 classes"),
])
def test_malformed_annotation_line_names_file_and_line(tmp_path, line, expected):
    (tmp_path / "a.mp4").write_bytes(b"")  # listing never reads the clips
    listing = tmp_path / "list.txt"
    listing.write_text("\n" + line + "\n")  # a blank first line: line numbers count every line
    number = 3 if "listed again" in expected else 2
    with pytest.raises(ValueError, match=f"{listing}, line {number}: .*{expected}"):
        list_videos(tmp_path, "train", annotations=listing, classes=["x", "y"])


def test_missing_list_and_missing_clip_are_named(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"annotation list not found: {tmp_path / 'none.txt'}"):
        load_kinetics_folder(tmp_path, annotations=tmp_path / "none.txt", cache_dir=False)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nghost.mp4 1\n")
    with pytest.raises(FileNotFoundError, match=f"{listing}, line 2: the listed clip {tmp_path / 'ghost.mp4'}"):
        load_kinetics_folder(tmp_path, annotations=listing, cache_dir=False)
    (tmp_path / "train").mkdir()  # split folders: split 'val' must be one too
    with pytest.raises(FileNotFoundError, match="split 'val' not found"):
        list_videos(tmp_path, "val", annotations=listing)
    listing.write_text("\n")
    with pytest.raises(ValueError, match="no clips in split 'train'"):
        load_kinetics_folder(tmp_path, annotations=listing, cache_dir=False)


# --------------------------------------------------------------------------------------
# Kinetics-400-tiny: a fake archive of the same layout, served on 127.0.0.1
# --------------------------------------------------------------------------------------

TINY_TRAIN = [("tr_b.mp4", 1), ("tr_a.mp4", 0), ("tr_d.mp4", 0), ("tr_c.mp4", 1)]
TINY_VAL = [("va_b.mp4", 0), ("va_a.mp4", 1)]
TINY_LEVEL = {name: 30 + 35 * k for k, (name, _) in enumerate(TINY_TRAIN + TINY_VAL)}  # 30 .. 205
TINY_LISTS = {"train": "kinetics_tiny_train_video.txt", "val": "kinetics_tiny_val_video.txt"}


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    """{clip name: mp4 bytes}: 8 frames of 32×32 at the clip's grey level."""
    folder = tmp_path_factory.mktemp("tiny_clips")
    return {name: _grey_mp4(folder / name, level).read_bytes() for name, level in TINY_LEVEL.items()}


def _tiny_files(clips):
    """{member name: bytes} of the kinetics400_tiny layout."""
    files = {}
    for split, entries in (("train", TINY_TRAIN), ("val", TINY_VAL)):
        files[f"kinetics400_tiny/{TINY_LISTS[split]}"] = "".join(f"{n} {y}\n" for n, y in entries).encode()
        files.update({f"kinetics400_tiny/{split}/{n}": clips[n] for n, _ in entries})
    return files


def _zip_bytes(files, extra=()):
    """A zip of ``files`` {name: bytes} (with folder entries), then ``extra`` (ZipInfo, bytes) members."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in ("kinetics400_tiny/", "kinetics400_tiny/train/", "kinetics400_tiny/val/"):
            zf.writestr(folder, b"")
        for name, payload in files.items():
            zf.writestr(name, payload)
        for info, payload in extra:
            zf.writestr(info, payload)
    return buf.getvalue()


def _sha256(payload):
    import hashlib

    return hashlib.sha256(payload).hexdigest()


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")) if Path(root).exists() else []


@pytest.fixture
def server():
    from conftest import LocalServer

    s = LocalServer()
    yield s
    s.stop()


TINY_OPTIONS = dict(frames=4, frame_stride=2, size=32, cache_dir=False, timeout=5)


def _tiny(root, split, server, name, payload, **kwargs):
    """kinetics400_tiny(root, split) with the archive ``payload`` served as ``name``."""
    server.files[name] = payload
    options = dict(TINY_OPTIONS, url=server.url(name), expected_size=len(payload), **kwargs)
    return kinetics.kinetics400_tiny(root, split, **options)


def test_tiny_constants():
    assert kinetics.KINETICS400_TINY_URL == "https://download.openmmlab.com/mmaction/kinetics400_tiny.zip"
    assert kinetics.KINETICS400_TINY_SIZE == 18_308_682
    assert kinetics.KINETICS400_TINY_LISTS == TINY_LISTS


def test_tiny_download_then_load(server, tmp_path, tiny_clips):
    junk = __import__("zipfile").ZipInfo("__MACOSX/kinetics400_tiny/._tr_a.mp4")  # outside: not extracted
    archive = _zip_bytes(_tiny_files(tiny_clips), extra=[(junk, b"resource fork")])
    root = tmp_path / "data"
    x, y, classes = _tiny(root, "train", server, "tiny.zip", archive)
    # the list's labels, sorted by (label, name), each clip decoded to its own grey level
    expected = sorted(TINY_TRAIN, key=lambda e: (e[1], e[0]))
    assert classes == ["0", "1"]
    assert y.dtype == torch.int64 and y.tolist() == [label for _, label in expected]
    assert x.shape == (4, 3, 4, 32, 32) and x.dtype == torch.uint8
    for clip, (name, _) in zip(x, expected):
        assert (clip.int() - TINY_LEVEL[name]).abs().max() <= 4, name
        assert torch.equal(clip, read_clip(root / "kinetics400_tiny" / "train" / name, 4, 2, 32))
    assert _listing(root) == sorted(
        ["kinetics400_tiny.zip", "kinetics400_tiny", "kinetics400_tiny/train", "kinetics400_tiny/val"]
        + [f"kinetics400_tiny/{n}" for n in TINY_LISTS.values()]
        + [f"kinetics400_tiny/train/{n}" for n, _ in TINY_TRAIN] + [f"kinetics400_tiny/val/{n}" for n, _ in TINY_VAL]
    )  # no temporary folder, no .part file, no __MACOSX
    assert (root / "kinetics400_tiny.zip").read_bytes() == archive  # kept: `sha256sum` it to pin it
    # the val split and a later call read from disk (download=False too); val gets the same classes
    xv, yv, classes_v = _tiny(root, "val", server, "tiny.zip", archive)
    assert server.hits == ["/tiny.zip"]
    assert classes_v == classes and yv.tolist() == [0, 1] and xv.shape == (2, 3, 4, 32, 32)
    assert abs(_level(xv[0]) - TINY_LEVEL["va_b.mp4"]) < 4 and abs(_level(xv[1]) - TINY_LEVEL["va_a.mp4"]) < 4
    again = kinetics.kinetics400_tiny(root, "val", download=False, frames=4, frame_stride=2, size=32,
                                      cache_dir=False)
    assert torch.equal(again[0], xv) and torch.equal(again[1], yv) and again[2] == classes_v
    # the same data structure as load_kinetics_folder
    folder = root / "kinetics400_tiny"
    direct = load_kinetics_folder(folder, "val", 4, 2, 32, cache_dir=False, classes=["0", "1"],
                                  annotations=folder / TINY_LISTS["val"])
    assert torch.equal(direct[0], xv) and torch.equal(direct[1], yv) and direct[2] == classes_v


def test_tiny_default_root_and_overridable_size(server, tmp_path, tiny_clips, monkeypatch):
    archive = _zip_bytes(_tiny_files(tiny_clips))
    server.files["tiny.zip"] = archive
    monkeypatch.setattr(kinetics, "KINETICS400_TINY_URL", server.url("tiny.zip"))
    monkeypatch.setattr(kinetics, "KINETICS400_TINY_SIZE", len(archive))  # read when called
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "env"))
    x, y, _ = kinetics.kinetics400_tiny(split="val", **TINY_OPTIONS)
    assert (tmp_path / "env" / "kinetics400_tiny" / "val" / "va_a.mp4").is_file() and y.tolist() == [0, 1]


def test_tiny_wrong_size_leaves_nothing(server, tmp_path, tiny_clips):
    archive = _zip_bytes(_tiny_files(tiny_clips))
    server.files["tiny.zip"] = archive
    server.files["cut.zip"] = archive[:-100]  # an interrupted download
    root = tmp_path / "data"
    destination = root / "kinetics400_tiny.zip"
    n = len(archive)
    for name, size, got in (("tiny.zip", n + 1, n), ("cut.zip", n, n - 100)):
        with pytest.raises(kinetics.DatasetDownloadError) as err:
            kinetics.kinetics400_tiny(root, url=server.url(name), expected_size=size, **TINY_OPTIONS)
        message = str(err.value)
        assert f"{destination} (from {server.url(name)}) has {got:,} bytes, expected {size:,}" in message
        assert kinetics.KINETICS400_TINY_URL in message and "NLTUTORIAL_DATA" in message  # how to get it
        assert _listing(root) == []  # no .part file, no archive, no folder
    with pytest.raises(ValueError, match="expected_size"):
        kinetics.kinetics400_tiny(root, url=server.url("tiny.zip"), **dict(TINY_OPTIONS, expected_size=0))


def test_tiny_sha256_pin(server, tmp_path, tiny_clips):
    archive = _zip_bytes(_tiny_files(tiny_clips))
    good = _sha256(archive)
    x, _, _ = _tiny(tmp_path / "pinned", "train", server, "tiny.zip", archive, sha256=good.upper())
    assert x.shape[0] == 4
    wrong = _sha256(b"another archive")
    root = tmp_path / "data"
    with pytest.raises(kinetics.DatasetDownloadError) as err:
        _tiny(root, "train", server, "tiny.zip", archive, sha256=wrong)
    message = str(err.value)
    assert str(root / "kinetics400_tiny.zip") in message and "sha256 mismatch" in message
    assert f"expected {wrong}" in message and f"got {good}" in message
    assert _listing(root) == []
    for bad in ("abc", 123, "g" * 64):
        with pytest.raises(ValueError, match="sha256 must be"):
            _tiny(root, "train", server, "tiny.zip", archive, sha256=bad)
    # an archive placed by hand is checked too (and kept), without the network
    (root / "kinetics400_tiny.zip").write_bytes(archive)
    offline = dict(TINY_OPTIONS, url="http://127.0.0.1:9/x.zip", expected_size=len(archive))
    with pytest.raises(kinetics.DatasetDownloadError, match=f"found in root.*expected {wrong} .*got {good}"):
        kinetics.kinetics400_tiny(root, sha256=wrong, **offline)
    assert _listing(root) == ["kinetics400_tiny.zip"]
    x, _, _ = kinetics.kinetics400_tiny(root, sha256=good, **offline)
    assert x.shape[0] == 4 and (root / "kinetics400_tiny.zip").is_file()


def test_tiny_missing_list_or_clip_is_refused(server, tmp_path, tiny_clips):
    files = _tiny_files(tiny_clips)
    no_list = {k: v for k, v in files.items() if not k.endswith(TINY_LISTS["val"])}
    ghost = dict(files, **{f"kinetics400_tiny/{TINY_LISTS['train']}": b"tr_a.mp4 0\nghost.mp4 1\n"})
    bad_line = dict(files, **{f"kinetics400_tiny/{TINY_LISTS['val']}": b"va_a.mp4 1\nva_b.mp4\n"})
    cases = [(no_list, f"annotation list not found: kinetics400_tiny/{TINY_LISTS['val']}"),
             (ghost, f"kinetics400_tiny/{TINY_LISTS['train']}, line 2: the listed clip "
                     f"kinetics400_tiny/train/ghost.mp4 does not exist"),
             (bad_line, f"kinetics400_tiny/{TINY_LISTS['val']}, line 2: expected '<clip> <label>'")]
    for k, (members, expected) in enumerate(cases):
        root = tmp_path / f"data{k}"
        with pytest.raises(kinetics.DatasetDownloadError) as err:
            _tiny(root, "train", server, f"{k}.zip", _zip_bytes(members))
        assert "is not Kinetics-400-tiny" in str(err.value) and expected in str(err.value)
        assert _listing(root) == []  # the downloaded archive removed, nothing extracted


def test_tiny_incomplete_folder_on_disk_is_named(tmp_path, tiny_clips):
    folder = tmp_path / "kinetics400_tiny"
    for member, payload in _tiny_files(tiny_clips).items():
        (tmp_path / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / member).write_bytes(payload)
    (folder / "val" / "va_a.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=f"line 2: the listed clip {folder / 'val' / 'va_a.mp4'}.*remove it"):
        kinetics.kinetics400_tiny(tmp_path, download=False)
    (folder / TINY_LISTS["train"]).unlink()
    with pytest.raises(FileNotFoundError, match=f"annotation list not found: {folder / TINY_LISTS['train']}"):
        kinetics.kinetics400_tiny(tmp_path, "val", download=False)


def _zip_member(name, mode=None):
    import zipfile

    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.external_attr = mode << 16
    return info


@pytest.mark.parametrize("member, why", [
    (_zip_member("../evil.mp4"), r"'\.\.'"),
    (_zip_member("kinetics400_tiny/../../evil.mp4"), r"'\.\.'"),
    (_zip_member("/tmp/nltutorial-kinetics-evil.mp4"), "absolute path"),
    (_zip_member("kinetics400_tiny/train/link.mp4", 0o120777), "symbolic link"),
    (_zip_member("kinetics400_tiny/train/fifo", 0o010644), "special file"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "fifo"])
def test_tiny_unsafe_member_is_refused(server, tmp_path, tiny_clips, member, why):
    archive = _zip_bytes(_tiny_files(tiny_clips), extra=[(member, b"/etc/passwd")])
    root = tmp_path / "deep" / "data"
    with pytest.raises(kinetics.UnsafeArchiveError, match=f"archive member {member.filename!r} .*{why}"):
        _tiny(root, "train", server, "evil.zip", archive)
    assert _listing(root) == []  # nothing written, the archive removed
    assert not (tmp_path / "deep" / "evil.mp4").exists() and not (tmp_path / "evil.mp4").exists()
    assert not Path("/tmp/nltutorial-kinetics-evil.mp4").exists()


def test_tiny_download_false_without_data(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        kinetics.kinetics400_tiny(root, download=False)
    message = str(err.value)
    assert str(root / "kinetics400_tiny") in message and "download=True" in message
    assert kinetics.KINETICS400_TINY_URL in message and "18,308,682 bytes" in message
    assert not root.exists()
    (tmp_path / TINY_LISTS["train"]).write_text("")  # tmp_path is the folder itself, not its parent
    with pytest.raises(FileNotFoundError, match="looks like the kinetics400_tiny folder: pass its parent"):
        kinetics.kinetics400_tiny(tmp_path, download=False)
    with pytest.raises(ValueError, match="split"):
        kinetics.kinetics400_tiny(tmp_path, "test", download=False)


def test_tiny_failed_downloads_leave_no_part_file(server, tmp_path, monkeypatch):
    import socket
    import urllib.request

    with socket.socket() as sock:  # a closed port: as without network
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/kinetics400_tiny.zip"
    root = tmp_path / "data"
    with pytest.raises(kinetics.DatasetDownloadError, match=f"Could not download Kinetics-400-tiny from {closed}"):
        kinetics.kinetics400_tiny(root, url=closed, **TINY_OPTIONS)
    with pytest.raises(kinetics.DatasetDownloadError, match="404"):
        kinetics.kinetics400_tiny(root, url=server.url("missing.zip"), **TINY_OPTIONS)
    assert _listing(root) == []
    server.trickle["slow.zip"] = b"x" * 100  # one byte every 0.5 s: the deadline gives up
    with pytest.raises(kinetics.DatasetDownloadError, match="deadline of 1 s"):
        kinetics.kinetics400_tiny(root, url=server.url("slow.zip"), deadline=1, **TINY_OPTIONS)
    assert _listing(root) == []

    class Interrupted:  # the second read: Ctrl-C
        reads = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read1(self, n):
            Interrupted.reads += 1
            if Interrupted.reads == 1:
                return b"x" * 1000
            raise KeyboardInterrupt

        read = read1

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        kinetics.kinetics400_tiny(root, url="http://127.0.0.1:9/x.zip", **TINY_OPTIONS)
    assert Interrupted.reads == 2 and _listing(root) == []


def test_tiny_broken_zip_and_zip_bomb_are_refused(server, tmp_path, tiny_clips, monkeypatch):
    root = tmp_path / "data"
    with pytest.raises(kinetics.DatasetDownloadError, match="is not a readable zip archive"):
        _tiny(root, "train", server, "junk.zip", b"PK not really a zip" * 100)
    assert _listing(root) == []
    monkeypatch.setattr(kinetics, "MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(kinetics.DatasetDownloadError, match="more than the 1,000 allowed"):
        _tiny(root, "train", server, "tiny.zip", _zip_bytes(_tiny_files(tiny_clips)))
    assert _listing(root) == []
