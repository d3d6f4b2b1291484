"""Tests of nltutorial.loader.DeviceLoader (CPU; the code is device-agnostic)."""

import numpy as np
import pytest
import torch

from nltutorial.data import CIFAR10_MEAN, CIFAR10_STD, normalize
from nltutorial.loader import DeviceLoader

H = W = 32


def random_set(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)


def coded_set(n):
    """Images whose pixels encode (row, col) (channels 0, 1, never 0) and the sample (channel 2)."""
    images = np.empty((n, H, W, 3), dtype=np.uint8)
    images[..., 0] = (np.arange(H) + 1)[None, :, None]
    images[..., 1] = (np.arange(W) + 1)[None, None, :]
    images[..., 2] = (np.arange(n) % 200 + 50)[:, None, None]
    return images, np.arange(n, dtype=np.int64)


def reference_normalize(chw_uint8):
    """uint8 (..., C, H, W) → (x/255 - mean)/std, with the arithmetic of data.normalize."""
    mean = torch.tensor(CIFAR10_MEAN).view(-1, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(-1, 1, 1)
    return (chw_uint8.float() / 255.0 - mean) / std


def epoch_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_shapes_dtypes_device_and_len():
    images, labels = random_set(50)
    loader = DeviceLoader(images, labels, 16, device="cpu", seed=0)
    assert len(loader) == 3  # drop_last defaults to True in train mode
    batches = list(loader)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (16, 3, H, W) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        assert x.device.type == "cpu" and y.device.type == "cpu"
        assert x.is_contiguous()

    ev = DeviceLoader(images, labels, 16, train=False, device="cpu")
    assert len(ev) == 4
    sizes = [x.shape[0] for x, _ in ev]
    assert sizes == [16, 16, 16, 2]

    cl = DeviceLoader(images, labels, 16, device="cpu", seed=0, channels_last=True)
    for x, _ in cl:
        assert x.is_contiguous(memory_format=torch.channels_last)
    half = DeviceLoader(images, labels, 16, device="cpu", seed=0, dtype=torch.bfloat16)
    assert next(iter(half))[0].dtype == torch.bfloat16


def test_train_epoch_covers_every_sample_once():
    images, labels = random_set(50)
    loader = DeviceLoader(images, labels, 16, device="cpu", seed=1, drop_last=False)
    assert len(loader) == 4
    ys = torch.cat([y for _, y in loader])
    assert ys.shape == (50,)
    assert torch.equal(ys.sort().values, torch.arange(50))
    assert not torch.equal(ys, torch.arange(50))  # shuffled


def test_same_seed_same_batches_and_epochs_differ():
    images, labels = random_set(64)
    a = DeviceLoader(images, labels, 16, device="cpu", seed=123)
    b = DeviceLoader(images, labels, 16, device="cpu", seed=123)
    a0, a1 = epoch_batches(a), epoch_batches(a)
    b0, b1 = epoch_batches(b), epoch_batches(b)
    for (xa, ya), (xb, yb) in zip(a0 + a1, b0 + b1):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order0 = torch.cat([y for _, y in a0])
    order1 = torch.cat([y for _, y in a1])
    assert not torch.equal(order0, order1)

    c = DeviceLoader(images, labels, 16, device="cpu", seed=124)
    assert not torch.equal(torch.cat([y for _, y in c]), order0)


def test_resume_at_epoch_gives_same_batches():
    images, labels = random_set(64)
    a = DeviceLoader(images, labels, 16, device="cpu", seed=7)
    epoch_batches(a)
    epoch_batches(a)
    state = a.state_dict()
    assert state["epoch"] == 2
    a2 = epoch_batches(a)

    b = DeviceLoader(images, labels, 16, device="cpu", seed=0)
    b.load_state_dict(state)
    b2 = epoch_batches(b)
    c = DeviceLoader(images, labels, 16, device="cpu", seed=7)
    c.set_epoch(2)
    c2 = epoch_batches(c)
    for (xa, ya), (xb, yb), (xc, yc) in zip(a2, b2, c2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)

    # Without a seed, one is drawn and recorded, so the run can still be resumed.
    d = DeviceLoader(images, labels, 16, device="cpu")
    e = DeviceLoader(images, labels, 16, device="cpu")
    e.load_state_dict(d.state_dict())
    assert torch.equal(next(iter(d))[0], next(iter(e))[0])
    # A generator only supplies the seed.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    f1 = DeviceLoader(images, labels, 16, device="cpu", generator=g1)
    f2 = DeviceLoader(images, labels, 16, device="cpu", generator=g2)
    assert f1.seed == f2.seed


def test_eval_order_and_exact_normalisation():
    images, labels = random_set(50)
    loader = DeviceLoader(images, labels, 16, train=False, device="cpu")
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, torch.arange(50))
    assert torch.equal(x, normalize(images))  # the package's own normalisation, bit for bit
    # Eval mode is the same every epoch.
    x2 = torch.cat([b for b, _ in loader])
    assert torch.equal(x, x2)


def test_normalisation_matches_formula_and_custom_stats():
    images, labels = random_set(20)
    loader = DeviceLoader(images, labels, 20, train=False, device="cpu")
    x, _ = next(iter(loader))
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)

    custom = DeviceLoader(images, labels, 20, train=False, device="cpu", mean=0.5, std=(0.25, 0.5, 1.0))
    x, _ = next(iter(custom))
    torch.testing.assert_close(x, (raw - 0.5) / torch.tensor([0.25, 0.5, 1.0]).view(1, 3, 1, 1))

    # Train mode without augmentation: same values, shuffled.
    plain = DeviceLoader(images, labels, 20, device="cpu", augment=False, seed=0)
    x, y = next(iter(plain))
    assert torch.equal(x, normalize(images)[y])


def find_window(x, padded_norm, pad):
    """Plain reference: the (r, c, flipped) with x == padded[:, r:r+H, c:c+W] (maybe flipped)."""
    found = []
    for r in range(2 * pad + 1):
        for c in range(2 * pad + 1):
            win = padded_norm[:, r : r + H, c : c + W]
            if torch.equal(x, win):
                found.append((r, c, False))
            if torch.equal(x, win.flip(-1)):
                found.append((r, c, True))
    return found


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_and_flip_are_windows_of_the_padded_image(channels_last):
    n, pad = 400, 4
    images, labels = coded_set(n)
    loader = DeviceLoader(images, labels, 100, device="cpu", seed=3, pad=pad, channels_last=channels_last)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(chw, (pad,) * 4)  # zeros = black, before normalisation
    padded_norm = reference_normalize(padded)
    offsets, flipped = set(), 0
    seen = []
    for x, y in loader:
        for xi, yi in zip(x, y):
            found = find_window(xi, padded_norm[int(yi)], pad)
            assert len(found) == 1, f"sample {int(yi)}: not a unique window of the padded image"
            r, c, f = found[0]
            offsets.add((r, c))
            flipped += f
            seen.append(int(yi))
    assert sorted(seen) == list(range(n))
    assert 0.3 * n <= flipped <= 0.7 * n  # Binomial(400, 1/2): mean 200, sd 10
    assert len(offsets) > 40  # of the 81 possible offsets, most occur


def test_flip_only_and_crop_only():
    n = 400
    images, labels = coded_set(n)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)
    norm = reference_normalize(chw)
    flip_only = DeviceLoader(images, labels, n, device="cpu", seed=0, pad=0)
    x, y = next(iter(flip_only))
    ref = norm[y]
    is_plain = (x == ref).flatten(1).all(1)
    is_flip = (x == ref.flip(-1)).flatten(1).all(1)
    assert bool((is_plain ^ is_flip).all())
    assert 0.3 * n <= int(is_flip.sum()) <= 0.7 * n

    crop_only = DeviceLoader(images, labels, 50, device="cpu", seed=0, flip=False)
    padded_norm = reference_normalize(torch.nn.functional.pad(chw, (4,) * 4))
    x, y = next(iter(crop_only))
    for xi, yi in zip(x, y):
        found = find_window(xi, padded_norm[int(yi)], 4)
        assert len(found) == 1 and not found[0][2]


def test_numpy_hwc_and_tensor_chw_inputs_agree():
    images, labels = random_set(40)
    hwc_np = DeviceLoader(images, labels, 8, device="cpu", seed=9)
    hwc_t = DeviceLoader(torch.from_numpy(images), torch.from_numpy(labels), 8, device="cpu", seed=9)
    chw_t = DeviceLoader(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels.tolist(), 8, device="cpu", seed=9
    )
    for (a, ya), (b, yb), (c, yc) in zip(hwc_np, hwc_t, chw_t):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert torch.equal(ya, yb) and torch.equal(ya, yc)
    # Read-only numpy input (e.g. a memory map) is fine.
    ro = images.copy()
    ro.flags.writeable = False
    DeviceLoader(ro, labels, 8, device="cpu", seed=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(images=np.zeros((4, 32, 32), np.uint8)), "images"),  # wrong rank
        (dict(images=np.zeros((4, 32, 32, 3), np.float32)), "images"),  # not uint8
        (dict(images=torch.zeros(4, 3, 32, 32)), "images"),  # float tensor
        (dict(images=torch.zeros(4, 5, 32, 7, dtype=torch.uint8)), "images"),  # no channel axis
        (dict(labels=np.arange(3)), "labels"),  # length mismatch
        (dict(labels=np.zeros(4, np.float32)), "labels"),  # not integers
        (dict(labels=np.zeros((4, 1), np.int64)), "labels"),  # not 1-D
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-3), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(pad=-1), "pad"),
        (dict(std=(1.0, 0.0, 1.0)), "std"),
        (dict(mean=(0.5, 0.5)), "mean"),
        (dict(dtype=torch.int64), "dtype"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, name):
    args = dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4), batch_size=2)
    args.update(kwargs)
    images, labels, bs = args.pop("images"), args.pop("labels"), args.pop("batch_size")
    with pytest.raises(ValueError, match=name):
        DeviceLoader(images, labels, bs, device="cpu", **args)
