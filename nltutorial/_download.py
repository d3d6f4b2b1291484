"""One careful HTTP download, shared by ``data`` (CIFAR-10), ``kinetics`` (Kinetics-400-tiny)
and ``results`` (recorded runs), and the two file helpers they share (a file's SHA-256 and the
writing of checked archive members).

``download(url, destination, ...)`` streams ``url`` into a hidden ``.part`` file beside
``destination``, feeds every chunk to a hash, lets the caller check the digest, and only then
renames the file into place. So ``destination`` is either absent or complete:

- each network read waits at most ``timeout`` seconds, and the whole download at most
  ``deadline`` seconds (checked between reads), so a server trickling bytes cannot hang it;
- on any failure, Ctrl-C (KeyboardInterrupt) or SIGTERM the ``.part`` file is removed;
- a full disk raises :class:`DiskFullError` ("disk full while writing PATH").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import numbers
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable, Optional, Tuple

CHUNK = 1 << 20  # bytes asked for per read (1 MiB)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_members(members: Iterable[Tuple[bool, PurePosixPath, Callable[[], IO[bytes]]]],
                  into: Path) -> None:
    """Write already-checked archive members under ``into``.

    Each member is ``(is_dir, relative path, open)``: a folder is created, a file is copied
    from ``open()`` (a binary stream, closed afterwards). The caller checks every path
    (relative, no ``..``, no links) before calling this.
    """
    for is_dir, rel, open_member in members:
        out = into.joinpath(*rel.parts)
        if is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)


class DownloadDeadlineError(TimeoutError):
    """The download did not finish within its overall deadline."""


class DiskFullError(OSError):
    """The disk (or quota) filled up while a download was being written."""


def check_seconds(name: str, value) -> float:
    """``value`` as a float if it is a positive finite number of seconds, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@contextlib.contextmanager
def _sigterm_raises():
    """While inside, SIGTERM raises SystemExit(143) so that ``finally`` blocks run.

    Only in the main thread, and only where SIGTERM still has its default action (a handler
    installed by the application, such as a notebook kernel's, is left alone).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stream(url: str, out, hasher, timeout: float, deadline: float, start: float) -> int:
    """Copy the body of ``url`` into the open file ``out`` and ``hasher``; return the bytes read."""
    received = 0
    with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as response:
        read = getattr(response, "read1", response.read)  # read1: whatever has arrived, ≤ CHUNK
        while True:
            if time.monotonic() - start > deadline:
                raise DownloadDeadlineError(
                    f"gave up at the deadline of {deadline:g} s ({received} bytes received)")
            chunk = read(CHUNK)
            if not chunk:
                return received
            received += len(chunk)
            hasher.update(chunk)
            out.write(chunk)


def download(url: str, destination: Path, hasher, *, timeout: float, deadline: float,
             check: Optional[Callable[[Path, str], None]] = None) -> Path:
    """Download ``url`` to ``destination`` atomically; return ``destination``.

    ``hasher`` (a ``hashlib`` object) sees every byte; ``check(part_path, hexdigest)`` is called
    before the rename and refuses the file by raising. Raises OSError / URLError (network),
    DownloadDeadlineError, DiskFullError, or whatever ``check`` raises; the ``.part`` file is
    removed in every case, including KeyboardInterrupt and SIGTERM.
    """
    destination = Path(destination)
    start = time.monotonic()
    fd, part_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    os.close(fd)
    part = Path(part_name)
    try:
        with _sigterm_raises():
            try:
                with open(part, "wb") as out:
                    _stream(url, out, hasher, timeout, deadline, start)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(err.errno, f"disk full while writing {destination}") from err
                raise
            if check is not None:
                check(part, hasher.hexdigest())
            os.replace(part, destination)
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    return destination
