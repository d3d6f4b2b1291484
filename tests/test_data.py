"""Tests of nltutorial.data: reading CIFAR-10 and downloading it safely.

The download tests build a tiny archive in the official format and serve it from a local
HTTP server on 127.0.0.1; nothing leaves the machine.
"""

import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

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
    files, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            payload = files.get(self.path.lstrip("/"))
            if payload is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    class Server:
        pass

    s = Server()
    s.files, s.hits = files, hits
    s.url = lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    yield s
    httpd.shutdown()
    httpd.server_close()


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
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        cifar10(tmp_path, train=False, download=False)
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
