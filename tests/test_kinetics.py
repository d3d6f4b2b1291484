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
