"""Tests of nltutorial.data: reading CIFAR-10 and downloading it safely.

The download tests build a tiny archive in the official format and serve it from a local
HTTP server on 127.0.0.1; nothing leaves the machine.
"""

import errno
import hashlib
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LocalServer
from nltutorial import data
from nltutorial.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DatasetDownloadError,
    UnsafeArchiveError,
    cifar10,
    cifar10_tensors,
    denormalize,
)

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar-10-subset"
FULL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar-10"


@pytest.fixture(autouse=True)
def _no_ambient_root(monkeypatch, tmp_path):
    """No test reads the user's ~/.cache or a $NLTUTORIAL_DATA set outside the tests."""
    monkeypatch.delenv("NLTUTORIAL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------------------
# The real offline subset
# --------------------------------------------------------------------------------------

needs_subset = pytest.mark.skipif(
    not (SUBSET / "cifar-10-batches-py").is_dir(),
    reason=f"offline CIFAR-10 subset not found at {SUBSET} (../shared/data/cifar-10-subset)",
)


@needs_subset
def test_subset_shapes_and_dtypes():
    x, y = cifar10(SUBSET, train=True, download=False)
    assert x.shape == (5000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() <= 9 and len(np.unique(y)) == 10
    xt, yt = cifar10(SUBSET, train=False, download=False)
    assert xt.shape == (1000, 32, 32, 3) and xt.dtype == np.uint8
    assert yt.shape == (1000,) and yt.dtype == np.int64
    assert yt.min() >= 0 and yt.max() <= 9
    assert len(CIFAR10_CLASSES) == 10


@needs_subset
def test_subset_first_image_decoded():
    with open(SUBSET / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    row = np.asarray(batch["data"][0], dtype=np.uint8)  # (3072,) = 1024 R, 1024 G, 1024 B
    manual = np.stack([row[c * 1024 : (c + 1) * 1024].reshape(32, 32) for c in range(3)], axis=-1)
    x, y = cifar10(SUBSET, train=True, download=False)
    np.testing.assert_array_equal(x[0], manual)
    assert x[0, 0, 1, 0] == row[1] and x[0, 1, 0, 2] == row[2048 + 32]  # (h, w, c) indexing
    assert y[0] == batch["labels"][0]
    # the first training image of CIFAR-10 is a frog (label 6)
    assert CIFAR10_CLASSES[y[0]] == "frog"
    # batches are concatenated in order: image 1000 is the first of data_batch_2
    with open(SUBSET / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch2 = pickle.load(f, encoding="latin1")
    assert x[1000].transpose(2, 0, 1).reshape(-1).tolist() == list(batch2["data"][0])


@needs_subset
def test_subset_tensors_normalised():
    x, y = cifar10_tensors(SUBSET, train=True, download=False)
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (5000,) and y.dtype == torch.int64
    # standardised with the full training set's statistics: close to 0 mean / unit std here
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.05)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.05)
    images, _ = cifar10(SUBSET, train=True, download=False)
    expected = (images[0, 3, 5, 1] / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert x[0, 1, 3, 5].item() == pytest.approx(expected, abs=1e-6)
    raw, _ = cifar10_tensors(SUBSET, train=False, download=False, normalized=False)
    assert raw.min() >= 0 and raw.max() <= 1
    xt, _ = cifar10_tensors(SUBSET, train=False, download=False)
    assert torch.allclose(denormalize(xt), raw, atol=1e-6)


@needs_subset
def test_env_var_root(monkeypatch):
    monkeypatch.setenv("NLTUTORIAL_DATA", str(SUBSET))
    x, y = cifar10(train=False, download=False)
    assert x.shape == (1000, 32, 32, 3)


# --------------------------------------------------------------------------------------
# A tiny archive in the official format, served on 127.0.0.1
# --------------------------------------------------------------------------------------

N_FAKE = 4  # images per fake batch


def _fake_batch(seed, bytes_keys):
    rng = np.random.default_rng(seed)
    d = {
        "batch_label": f"fake batch {seed}",
        "labels": [int(v) for v in rng.integers(0, 10, N_FAKE)],
        "data": rng.integers(0, 256, (N_FAKE, 3072), dtype=np.uint8),
    }
    if bytes_keys:  # some pickles carry bytes keys; both must read
        d = {k.encode(): v for k, v in d.items()}
    return pickle.dumps(d, protocol=2)


def _tar_bytes(files, extra=()):
    """gzip tar holding ``files`` {name: bytes}, plus ``extra`` TarInfo members (no content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def _fake_files():
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {f"cifar-10-batches-py/{n}": _fake_batch(i, bytes_keys=i % 2 == 0) for i, n in enumerate(names)}


def _md5(payload):
    return hashlib.md5(payload).hexdigest()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server: ``server.url(name)`` serves ``server.files[name]``; ``.hits`` logs paths."""
    s = LocalServer()
    yield s
    s.stop()


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")) if Path(root).exists() else []


def test_download_verify_extract_then_cached(server, tmp_path):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    root = tmp_path / "data"
    x, y = cifar10(root, train=True, mirrors=[server.url("good.tar.gz")], md5=_md5(archive), timeout=5)
    assert x.shape == (5 * N_FAKE, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (5 * N_FAKE,) and y.dtype == np.int64
    # decoded like a manual reshape of the first row of data_batch_1 (a bytes-keyed pickle here)
    row = pickle.loads(_fake_files()["cifar-10-batches-py/data_batch_1"], encoding="latin1")[b"data"][0]
    np.testing.assert_array_equal(x[0], row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert server.hits == ["/good.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive
    assert _listing(root) == sorted(
        ["cifar-10-python.tar.gz", "cifar-10-batches-py"]
        + [f"cifar-10-batches-py/{n}" for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]]
    )  # no temporary files left
    # the second call, and the test split, read from disk without downloading again
    xt, yt = cifar10(root, train=False, mirrors=[server.url("good.tar.gz")], md5=_md5(archive))
    assert xt.shape == (N_FAKE, 32, 32, 3)
    x2, _ = cifar10(root, mirrors=[server.url("good.tar.gz")], md5=_md5(archive))
    np.testing.assert_array_equal(x2, x)
    assert server.hits == ["/good.tar.gz"]
    t, l = cifar10_tensors(root, train=False, download=False)
    assert t.shape == (N_FAKE, 3, 32, 32) and l.dtype == torch.int64


def test_md5_mismatch_clear_error_and_nothing_left(server, tmp_path):
    archive = _tar_bytes(_fake_files())
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files["bad.tar.gz"] = bytes(corrupted)
    root = tmp_path / "data"
    with pytest.raises(DatasetDownloadError) as err:
        cifar10(root, mirrors=[server.url("bad.tar.gz")], md5=_md5(archive), timeout=5)
    message = str(err.value)
    assert "md5 mismatch" in message and _md5(archive) in message
    assert data.CIFAR10_URL in message and "NLTUTORIAL_DATA" in message  # says what to do
    assert isinstance(err.value, RuntimeError)
    assert _listing(root) == []  # no partial archive, no temp files, no extracted folder


def test_first_mirror_unreachable_second_good(server, tmp_path):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    root = tmp_path / "data"
    mirrors = [_closed_port_url(), server.url("missing.tar.gz"), server.url("good.tar.gz")]
    x, _ = cifar10(root, train=False, mirrors=mirrors, md5=_md5(archive), timeout=5)
    assert x.shape == (N_FAKE, 32, 32, 3)
    assert server.hits == ["/missing.tar.gz", "/good.tar.gz"]


def test_slow_mirror_times_out_then_next(server, tmp_path):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        slow = f"http://127.0.0.1:{silent.getsockname()[1]}/x.tar.gz"
        x, _ = cifar10(tmp_path, train=False, mirrors=[slow, server.url("good.tar.gz")], md5=_md5(archive), timeout=0.5)
    assert x.shape == (N_FAKE, 32, 32, 3)


def test_all_mirrors_fail(server, tmp_path):
    root = tmp_path / "data"
    urls = [_closed_port_url(), server.url("missing.tar.gz")]
    with pytest.raises(DatasetDownloadError) as err:
        cifar10(root, mirrors=urls, md5="0" * 32, timeout=5)
    message = str(err.value)
    assert all(u in message for u in urls) and "404" in message
    assert "download" in message.lower() and str(root) in message
    assert _listing(root) == []
    with pytest.raises(DatasetDownloadError, match="no mirrors"):
        cifar10(root, mirrors=[], timeout=5)


def test_env_var_root_for_download(server, tmp_path, monkeypatch):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "env-root"))
    cifar10(train=False, mirrors=[server.url("good.tar.gz")], md5=_md5(archive), timeout=5)
    assert (tmp_path / "env-root" / "cifar-10-batches-py" / "test_batch").is_file()
    assert data.data_root() == tmp_path / "env-root"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    monkeypatch.delenv("NLTUTORIAL_DATA")
    assert data.data_root() == tmp_path / "home" / ".cache" / "nltutorial"


def test_download_false_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(err.value)
    assert not (tmp_path / "nowhere").exists()


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "evil",
    [
        _member("../evil"),
        _member("cifar-10-batches-py/../../evil"),
        _member("/tmp/nltutorial-evil"),
        _member("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../evil"),
        _member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "/etc/passwd"),
        _member("elsewhere/file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "outside-folder"],
)
def test_malicious_member_rejected(server, tmp_path, evil):
    archive = _tar_bytes(_fake_files(), extra=[evil])
    server.files["evil.tar.gz"] = archive
    root = tmp_path / "deep" / "data"
    with pytest.raises(UnsafeArchiveError):
        cifar10(root, mirrors=[server.url("evil.tar.gz")], md5=_md5(archive), timeout=5)
    assert _listing(root) == []  # archive removed, nothing extracted
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/nltutorial-evil").exists()


def test_archive_placed_by_hand(tmp_path):
    archive = _tar_bytes(_fake_files())
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    x, _ = cifar10(tmp_path, train=False, mirrors=[], md5=_md5(archive))  # no network needed
    assert x.shape == (N_FAKE, 32, 32, 3)
    # a wrong hand-placed archive is reported, and kept (it is the user's file)
    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar-10-python.tar.gz").write_bytes(archive[:-10])
    with pytest.raises(DatasetDownloadError, match="md5"):
        cifar10(other, mirrors=[], md5=_md5(archive))
    assert _listing(other) == ["cifar-10-python.tar.gz"]


def test_bad_batch_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, payload in _fake_files().items():
        (tmp_path / name).write_bytes(payload)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        cifar10(tmp_path, train=False, download=False)
    (folder / "data_batch_1").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        cifar10(tmp_path, train=True, download=False)


def test_per_batch_takes_the_first_images_of_every_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, payload in _fake_files().items():
        (tmp_path / name).write_bytes(payload)
    full_x, full_y = cifar10(tmp_path, train=True, download=False)  # 5 batches x N_FAKE
    x, y = cifar10(tmp_path, train=True, download=False, per_batch=2)
    keep = np.concatenate([np.arange(b * N_FAKE, b * N_FAKE + 2) for b in range(5)])
    np.testing.assert_array_equal(x, full_x[keep])
    np.testing.assert_array_equal(y, full_y[keep])
    xt, _ = cifar10_tensors(tmp_path, train=False, download=False, per_batch=3)
    assert xt.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"per_batch=5 but .*data_batch_1 holds only 4"):
        cifar10(tmp_path, train=True, download=False, per_batch=5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="per_batch must be a positive int"):
            cifar10(tmp_path, download=False, per_batch=bad)


@needs_subset
def test_per_batch_1000_is_the_subset():
    x, y = cifar10(SUBSET, train=True, download=False)
    x2, y2 = cifar10(SUBSET, train=True, download=False, per_batch=1000)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


# --------------------------------------------------------------------------------------
# Which copy a folder is (cifar10_source), the default mirrors, locate_cifar10
# --------------------------------------------------------------------------------------


def _write_folder(root, files=None):
    """``root/cifar-10-batches-py`` holding ``files`` (default: the fake batches); returns {name: md5}."""
    files = _fake_files() if files is None else files
    for name, payload in files.items():
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return {name.split("/", 1)[1]: _md5(payload) for name, payload in files.items()}


def test_cifar10_source_official(tmp_path, monkeypatch):
    files = dict(_fake_files(), **{"cifar-10-batches-py/batches.meta": pickle.dumps({"label_names": ["a"]})})
    sums = _write_folder(tmp_path, files)
    monkeypatch.setattr(data, "CIFAR10_FILE_MD5", sums)
    source = data.cifar10_source(tmp_path)
    assert source["copy"] == "official"
    assert data.CIFAR10_URL in source["description"] and data.CIFAR10_MD5 in source["description"]
    # one changed byte and it is no longer the official data
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"changed")
    assert data.cifar10_source(tmp_path)["copy"] == "unverified"


def test_cifar10_source_offline_copy_and_unverified(tmp_path):
    sums = _write_folder(tmp_path)
    (tmp_path / "MD5SUMS").write_text("".join(f"{md5}  cifar-10-batches-py/{n}\n" for n, md5 in sums.items()))
    (tmp_path / "README.md").write_text("# CIFAR-10, a test copy\n\nMore text.\n")
    assert data.cifar10_source(tmp_path) == {"copy": "offline copy", "description": "CIFAR-10, a test copy"}
    (tmp_path / "README.md").unlink()  # without a README the description names the MD5SUMS
    source = data.cifar10_source(tmp_path)
    assert source["copy"] == "offline copy" and str(tmp_path / "MD5SUMS") in source["description"]
    # a file that does not match its MD5SUMS line: unverified
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"other")
    assert data.cifar10_source(tmp_path)["copy"] == "unverified"
    # no MD5SUMS at all: unverified
    other = tmp_path / "other"
    _write_folder(other)
    assert data.cifar10_source(other)["copy"] == "unverified"


@needs_subset
def test_cifar10_source_of_the_project_subset():
    source = data.cifar10_source(SUBSET)
    assert source["copy"] == "offline copy"
    assert source["description"] == (SUBSET / "README.md").read_text().splitlines()[0].lstrip("# ").strip()


def test_default_mirrors_official_then_zenodo():
    assert data.CIFAR10_MIRRORS == (data.CIFAR10_URL, data.CIFAR10_ZENODO_URL)
    assert data.CIFAR10_MIRRORS[0] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert data.CIFAR10_MIRRORS[1].startswith("https://zenodo.org/")
    assert all(url.endswith("/cifar-10-python.tar.gz") for url in data.CIFAR10_MIRRORS)


@pytest.mark.parametrize("failure", ["404", "refused", "wrong-md5"])
def test_default_mirrors_fall_through_to_the_second(server, tmp_path, monkeypatch, failure):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    server.files["other.tar.gz"] = _tar_bytes({"cifar-10-batches-py/test_batch": _fake_batch(9, False)})
    first = {"404": server.url("missing.tar.gz"), "refused": _closed_port_url(),
             "wrong-md5": server.url("other.tar.gz")}[failure]
    monkeypatch.setattr(data, "CIFAR10_MIRRORS", (first, server.url("good.tar.gz")))
    root = tmp_path / "data"
    x, _ = cifar10(root, train=False, md5=_md5(archive), timeout=5)  # mirrors=None: the defaults
    np.testing.assert_array_equal(x, cifar10(root, train=False, download=False)[0])
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive
    assert server.hits[-1] == "/good.tar.gz"
    assert server.hits[:-1] == {"404": ["/missing.tar.gz"], "refused": [], "wrong-md5": ["/other.tar.gz"]}[failure]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left


def _offline_tree(tmp_path, *copies):
    """tmp/checkout (the current folder) beside tmp/shared/data/<copy>/cifar-10-batches-py."""
    checkout = tmp_path / "tree" / "checkout"
    checkout.mkdir(parents=True)
    for copy in copies:
        (tmp_path / "tree" / "shared" / "data" / copy / "cifar-10-batches-py").mkdir(parents=True)
    return checkout


def test_locate_prefers_the_full_offline_copy(tmp_path, monkeypatch):
    checkout = _offline_tree(tmp_path, "cifar-10", "cifar-10-subset")
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(data, "_search_starts", lambda: [checkout])
    shared = tmp_path / "tree" / "shared" / "data"
    assert data.locate_cifar10() == shared / "cifar-10"
    # from a folder deeper in the checkout too
    (checkout / "book").mkdir()
    monkeypatch.setattr(data, "_search_starts", lambda: [checkout / "book"])
    assert data.locate_cifar10() == shared / "cifar-10"
    # without the full copy: the subset; with neither: the download root
    (shared / "cifar-10" / "cifar-10-batches-py").rmdir()
    assert data.locate_cifar10() == shared / "cifar-10-subset"
    (shared / "cifar-10-subset" / "cifar-10-batches-py").rmdir()
    assert data.locate_cifar10() == data.data_root()
    # a root that holds the data wins over the offline copies
    _write_folder(tmp_path / "mine")
    (shared / "cifar-10" / "cifar-10-batches-py").mkdir()
    assert data.locate_cifar10(tmp_path / "mine") == tmp_path / "mine"


def test_locate_searches_the_checkout_and_the_current_folder():
    starts = data._search_starts()
    assert Path.cwd().resolve() in starts and Path(data.__file__).resolve().parent in starts


@pytest.mark.skipif(not (FULL / "cifar-10-batches-py").is_dir(), reason=f"no full offline copy at {FULL}")
def test_full_offline_copy_reads_through_the_safe_reader():
    x, y = cifar10(FULL, train=False, download=False)
    assert x.shape == (10000, 32, 32, 3) and y.shape == (10000,) and np.bincount(y).tolist() == [1000] * 10
    assert data.cifar10_source(FULL)["copy"] in ("official", "offline copy")


# --------------------------------------------------------------------------------------
# No code run from files: the restricted unpickler
# --------------------------------------------------------------------------------------


class _Planted:
    """Unpickles as a call to os.system: what a planted batch would do under plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    _write_folder(tmp_path)
    evil = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": _Planted(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(data.UnsafePickleError) as err:
        cifar10(tmp_path, train=False, download=False)
    message = str(err.value)
    assert str(folder / "test_batch") in message and "system" in message
    assert isinstance(err.value, ValueError)
    assert not marker.exists()  # nothing was executed
    # and read_batch itself refuses it too (protocol 4 names the global differently)
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(data.UnsafePickleError, match="test_batch"):
        data.read_batch(folder / "test_batch")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_reader_reads_every_protocol_and_the_official_keys(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    batch = {  # the official keys, with ``filenames`` as bytes and numpy ints among the labels
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in rng.integers(0, 10, 3)] + [np.int64(9)],
        b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
        b"extra": (set([1]), frozenset([2]), bytearray(b"x"), b""),
    }
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data.read_batch(path)
    np.testing.assert_array_equal(x, batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert y.tolist() == [int(v) for v in batch[b"labels"]] and y.dtype == np.int64


# --------------------------------------------------------------------------------------
# No silent wrong data: every batch is validated, an incomplete folder is reported
# --------------------------------------------------------------------------------------

_GOOD = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 9]}


@pytest.mark.parametrize(
    "payload, expected",
    [
        (pickle.dumps(dict(_GOOD, data=np.zeros((2, 3072)))), "'data' must be a uint8 array.*float64"),
        (pickle.dumps(dict(_GOOD, data=np.zeros((2, 3072), np.int16))), "'data' must be a uint8 array.*int16"),
        (pickle.dumps(dict(_GOOD, data=[[0] * 3072] * 2)), "'data' must be a uint8 array.*list"),
        (pickle.dumps(dict(_GOOD, data=np.zeros((2, 3071), np.uint8))), r"shape \(n, 3072\).*\(2, 3071\)"),
        (pickle.dumps(dict(_GOOD, data=np.zeros((0, 3072), np.uint8), labels=[])), "holds no images"),
        (pickle.dumps(dict(_GOOD, labels=[0.0, 1.0])), "'labels' must be integers.*float"),
        (pickle.dumps(dict(_GOOD, labels=np.array([0.0, 1.0]))), "'labels' must be integers.*float64"),
        (pickle.dumps(dict(_GOOD, labels=[True, False])), "'labels' must be integers.*bool"),
        (pickle.dumps(dict(_GOOD, labels=[0, 10])), r"'labels' must be in 0\.\.9.*10 at index 1"),
        (pickle.dumps(dict(_GOOD, labels=[-1, 0])), r"'labels' must be in 0\.\.9.*-1 at index 0"),
        (pickle.dumps(dict(_GOOD, labels=[0])), r"2 images but 1 labels"),
        (pickle.dumps(dict(_GOOD, labels=5)), "'labels' must be a list"),
        (pickle.dumps({"labels": [0]}), "no 'data' entry"),
        (pickle.dumps([1, 2, 3]), "holds a list, expected a dict"),
        (pickle.dumps(_GOOD)[:-40], "truncated or not a pickle"),
        (b"", "is empty"),
        (b"this is not a pickle", "truncated or not a pickle"),
    ],
    ids=["float-data", "int16-data", "list-data", "short-rows", "no-images", "float-labels",
         "float-label-array", "bool-labels", "label-10", "label-minus-1", "length", "labels-not-list",
         "no-data", "not-a-dict", "truncated", "empty", "garbage"],
)
def test_invalid_batch_is_reported_naming_the_file(tmp_path, payload, expected):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=expected) as err:
        data.read_batch(path)
    assert str(path) in str(err.value)


def test_incomplete_folder_is_reported(tmp_path):
    _write_folder(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    for train in (True, False):  # even the complete test split is not trusted from a broken folder
        with pytest.raises(FileNotFoundError) as err:
            cifar10(tmp_path, train=train, download=False)
        message = str(err.value)
        assert str(folder) in message and "data_batch_4" in message and "incomplete" in message
        assert "delete" in message.lower() and "download=True" in message
    # download=True with no archive to re-extract from: the same report, nothing touched
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        cifar10(tmp_path, train=False, mirrors=[])
    assert sorted(p.name for p in folder.iterdir()) == [f"data_batch_{i}" for i in (1, 2, 3, 5)] + ["test_batch"]


def test_incomplete_folder_is_re_extracted_from_a_verified_archive(tmp_path):
    archive = _tar_bytes(_fake_files())
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    _write_folder(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_2").unlink()
    (folder / "stray").write_bytes(b"left by a broken unpack")
    # a wrong archive is not used (and not deleted: it may be the user's)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive[:-10])
    with pytest.raises(DatasetDownloadError, match="md5"):
        cifar10(tmp_path, mirrors=[], md5=_md5(archive))
    assert not (folder / "data_batch_2").exists()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive)
    x, y = cifar10(tmp_path, train=True, mirrors=[], md5=_md5(archive))
    assert x.shape == (5 * N_FAKE, 32, 32, 3)
    assert sorted(p.name for p in folder.iterdir()) == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


# --------------------------------------------------------------------------------------
# No hangs: an overall deadline per mirror
# --------------------------------------------------------------------------------------


def test_trickling_mirror_hits_the_deadline_then_next(server, tmp_path):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    server.trickle["slow.tar.gz"] = archive  # one byte every 0.5 s: never a read timeout
    root = tmp_path / "data"
    start = time.monotonic()
    x, _ = cifar10(root, train=False, mirrors=[server.url("slow.tar.gz"), server.url("good.tar.gz")],
                   md5=_md5(archive), timeout=5, deadline=2.5)
    elapsed = time.monotonic() - start
    assert x.shape == (N_FAKE, 32, 32, 3)
    assert server.hits == ["/slow.tar.gz", "/good.tar.gz"]
    assert 2.5 <= elapsed < 2.5 + 8  # gave up on the slow mirror at its deadline
    with pytest.raises(DatasetDownloadError, match=r"slow\.tar\.gz: .*deadline of 2 s"):
        cifar10(tmp_path / "other", mirrors=[server.url("slow.tar.gz")], md5=_md5(archive), timeout=5, deadline=2)
    assert _listing(tmp_path / "other") == []


def test_deadline_must_be_positive(tmp_path):
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="deadline must be a positive number of seconds"):
            cifar10(tmp_path, mirrors=[], deadline=bad)
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------------------
# Nothing half-written: Ctrl-C, SIGTERM, a full disk
# --------------------------------------------------------------------------------------


class _FakeResponse:
    """A response whose second read calls ``then`` (raises KeyboardInterrupt, say)."""

    def __init__(self, then):
        self.reads, self.then = 0, then

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read1(self, n):
        self.reads += 1
        if self.reads == 1:
            return b"x" * 1000
        return self.then()

    read = read1


def _interrupt():
    raise KeyboardInterrupt


def test_ctrl_c_during_download_removes_the_part_file(tmp_path, monkeypatch):
    response = _FakeResponse(_interrupt)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: response)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        cifar10(root, mirrors=["http://127.0.0.1:9/x.tar.gz", "http://127.0.0.1:9/y.tar.gz"], timeout=5)
    assert response.reads == 2  # interrupted inside the read loop, and no other mirror was tried
    assert _listing(root) == []


_SIGTERM_CHILD = """
import sys
from nltutorial import data
data.download_cifar10(sys.argv[1], [sys.argv[2]], md5="0" * 32, timeout=30, deadline=300)
"""


def test_sigterm_during_download_removes_the_part_file(server, tmp_path):
    server.trickle["slow.tar.gz"] = _tar_bytes(_fake_files())
    root = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(Path(data.__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD, str(root), server.url("slow.tar.gz")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240  # importing the package is slow on a busy machine
        while not (root.is_dir() and [p for p in root.iterdir() if p.name.endswith(".part")]):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never started its download"
            time.sleep(0.1)
        time.sleep(1.0)  # a few bytes in
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, stderr.decode()  # exited through the cleanup
    assert _listing(root) == [], stderr.decode()


def test_disk_full_is_reported_and_the_part_file_removed(server, tmp_path, monkeypatch):
    archive = _tar_bytes(_fake_files())
    server.files["good.tar.gz"] = archive
    server.files["also-good.tar.gz"] = archive
    from nltutorial import _download

    class FullDisk(io.BytesIO):
        def write(self, chunk):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode:
            real_open(path, mode, *args, **kwargs).close()  # the file exists, as on a real full disk
            return FullDisk()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(_download, "open", fake_open, raising=False)
    root = tmp_path / "data"
    with pytest.raises(DatasetDownloadError) as err:
        cifar10(root, mirrors=[server.url("good.tar.gz"), server.url("also-good.tar.gz")], md5=_md5(archive),
                timeout=5)
    assert f"disk full while writing {root / 'cifar-10-python.tar.gz'}" in str(err.value)
    assert server.hits == ["/good.tar.gz"]  # a full disk is not a mirror's fault: no other mirror tried
    assert _listing(root) == []
