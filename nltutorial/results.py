"""Recorded training runs: find them, check them, and summarise several seeds.

The project keeps the runs behind the book's tables in ``results/`` at the root of the
repository, one folder per run with the two files ``python -m nltutorial.train`` writes::

    results/<experiment>/<variant>/seed<k>/metrics.jsonl   one JSON line per epoch
    results/<experiment>/<variant>/seed<k>/summary.json     final numbers, the exact command,
                                                            commit, torch version, device

``results/MANIFEST.sha256`` lists every recorded file with its SHA-256 (``sha256sum``
format); it is the list of recorded runs, and every file is checked against it before use,
local or downloaded (a changed, missing or unlisted file is an error naming it). Where the
folder is: ``$NLTUTORIAL_RESULTS``, else the ``results/`` of the checkout the package was
installed from (editable install), else ``./results`` or ``../results``. Without any of these
(a pip-installed package in Colab) the files are fetched from the repository
(``RESULTS_URL``) into ``~/.cache/nltutorial/results`` (or ``$NLTUTORIAL_DATA/results``),
each one verified and written atomically. The manifest is fetched once per process and kept
with the cached files, so a verified file is never fetched again and a complete cache works
without network.

>>> runs = load_runs("cifar10_subset")                       # doctest: +SKIP
>>> table = summarize(runs, "test_accuracy")                 # doctest: +SKIP
>>> table["nl"]["mean"], table["nl"]["std"], table["nl"]["n"]  # doctest: +SKIP

Sweeps in progress: ``load_runs(experiment, missing_ok=True)`` returns ``[]`` while no run is
recorded, :func:`variant_rows` gives one row per expected variant (``n = 0`` for the ones
still missing), and :func:`recorded` says whether a file (a ``model.pt``, say) is recorded
yet. Studies with one run per variant (``results/<experiment>/<variant>/summary.json``, no
seed folders) load with :func:`load_variants`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import statistics
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Tuple

from ._download import DiskFullError, check_seconds, download, file_sha256

__all__ = [
    "MANIFEST",
    "RESULTS_URL",
    "ResultsError",
    "fetch_results_file",
    "find_results_dir",
    "load_runs",
    "load_variants",
    "parse_manifest",
    "read_manifest",
    "recorded",
    "results_file",
    "summarize",
    "variant_rows",
    "write_manifest",
]

#: Raw files of the repository's results/ folder (used when no local copy is found).
RESULTS_URL = "https://raw.githubusercontent.com/nltutorial/nltutorial/main/results/"
MANIFEST = "MANIFEST.sha256"
#: File names that the manifest records.
RECORDED = ("metrics.jsonl", "summary.json", "model.pt", ".txt", ".md", ".sh")
#: Default overall deadline of one file's download, in seconds (the files are small).
RESULTS_DEADLINE = 120.0

_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](\S.*)")
#: The manifest of each (base URL, cache folder), fetched once per process.
_MANIFESTS: Dict[Tuple[str, str], Dict[str, str]] = {}


class ResultsError(RuntimeError):
    """A recorded file is missing, could not be fetched, or fails its checksum."""


class _FetchError(ResultsError):
    """The network (or the server) failed: a cached copy may stand in."""


def find_results_dir() -> Optional[Path]:
    """The local results folder (see the module docstring), or None if there is none."""
    env = os.environ.get("NLTUTORIAL_RESULTS")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ResultsError(f"NLTUTORIAL_RESULTS={env} is not a folder")
        return path
    candidates = [Path(__file__).resolve().parents[1] / "results", Path.cwd() / "results",
                  Path.cwd().parent / "results"]
    for path in candidates:
        if (path / MANIFEST).is_file():
            return path
    return None


def _cache_dir() -> Path:
    root = os.environ.get("NLTUTORIAL_DATA") or Path("~") / ".cache" / "nltutorial"
    return Path(root).expanduser() / "results"


def _check_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"name must be a relative path inside results/, got {name!r}")
    return rel


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.endswith("/"):
        raise ValueError(f"url must end with '/' (the address of the results/ folder), got {url!r}")
    return url


def parse_manifest(text: str, source: str) -> Dict[str, str]:
    """{relative path: sha256} from the text of a manifest; ResultsError naming ``source`` and the line."""
    out = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.fullmatch(line.rstrip())
        ok = match is not None
        if ok:
            name = match.group(2)
            rel = PurePosixPath(name)
            ok = not (rel.is_absolute() or ".." in rel.parts) and name not in out
        if not ok:
            raise ResultsError(f"{source} line {number}: expected '<64 hex digits>  <relative path>' "
                               f"(sha256sum format, each path once, no '..'), got {line!r}")
        out[name] = match.group(1).lower()
    return out


def read_manifest(folder: Path) -> Dict[str, str]:
    """{relative path: sha256} from ``folder/MANIFEST.sha256``."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise ResultsError(f"{path} not found: write it with `python -m nltutorial.results {folder}`") from None
    return parse_manifest(text, str(path))


def write_manifest(folder) -> Path:
    """Rewrite ``folder/MANIFEST.sha256`` from the recorded files under ``folder``."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.name.endswith(RECORDED))
    text = "".join(f"{file_sha256(folder / n)}  {n}\n" for n in names)
    path = folder / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _fetch(url: str, target: Path, sha256: str, timeout: float, deadline: float,
           manifest_source: Optional[str] = None) -> Path:
    """Download ``url`` to ``target`` atomically, checking its sha256 (or, for the manifest, its lines)."""

    def check(part: Path, actual: str) -> None:
        if manifest_source is not None:
            parse_manifest(part.read_text(errors="replace"), manifest_source)
        elif actual != sha256:
            raise ResultsError(f"{url}: sha256 {actual} does not match the manifest's {sha256}; "
                               f"nothing was written. Clone the repository and set NLTUTORIAL_RESULTS "
                               f"to its results/ folder instead.")

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return download(url, target, hashlib.sha256(), timeout=timeout, deadline=deadline, check=check)
    except DiskFullError as err:  # not the network's fault: a cached copy cannot help
        raise ResultsError(f"{err.strerror}; free some space or set NLTUTORIAL_DATA elsewhere") from err
    except (OSError, http.client.HTTPException) as err:  # refused, 404, timeout, deadline, cut off...
        raise _FetchError(f"could not fetch {url} ({err}); clone the repository and set "
                          f"NLTUTORIAL_RESULTS to its results/ folder") from err


def _remote_manifest(url: str, cache: Path, timeout: float, deadline: float) -> Dict[str, str]:
    """The manifest at ``url``, fetched once per process into ``cache``; offline, the cached one."""
    key = (url, str(cache))
    if key not in _MANIFESTS:
        path = cache / MANIFEST
        try:
            _fetch(url + MANIFEST, path, "", timeout, deadline, manifest_source=url + MANIFEST)
        except _FetchError:
            if not path.is_file():
                raise
            # no network: the manifest of the last download; every file is still checked against it
        _MANIFESTS[key] = read_manifest(cache)
    return _MANIFESTS[key]


def fetch_results_file(name: str, url: Optional[str] = None, cache: Optional[Path] = None,
                       sha256: Optional[str] = None, timeout: float = 30.0,
                       deadline: float = RESULTS_DEADLINE) -> Path:
    """Download ``results/<name>`` into the cache (atomically), verify it, return its path.

    ``url`` is the address of the results/ folder and must end with '/'. With ``sha256=None``
    the expected digest is looked up in the manifest, which is fetched once per process and
    kept in the cache (offline, the cached manifest is used). A cached file that matches its
    digest is returned without any request. Each read waits at most ``timeout`` s, the whole
    file at most ``deadline`` s. Raises ResultsError; nothing half-written is ever left.
    """
    rel = _check_relative(name)
    url = _check_url(RESULTS_URL if url is None else url)
    check_seconds("timeout", timeout)
    check_seconds("deadline", deadline)
    cache = Path(cache) if cache is not None else _cache_dir()
    target = cache.joinpath(*rel.parts)
    if name == MANIFEST:
        _remote_manifest(url, cache, timeout, deadline)
        return target
    if sha256 is None:
        manifest = _remote_manifest(url, cache, timeout, deadline)
        if name not in manifest:
            raise ResultsError(f"results/{name} is not in the manifest at {url}{MANIFEST}")
        sha256 = manifest[name]
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256 or ""):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    sha256 = sha256.lower()
    if target.is_file() and file_sha256(target) == sha256:
        return target
    return _fetch(url + rel.as_posix(), target, sha256, timeout, deadline)


def _verified_local(folder: Path, rel: PurePosixPath) -> Path:
    """``folder/rel`` after checking it against ``folder/MANIFEST.sha256``; else ResultsError naming it."""
    path = folder.joinpath(*rel.parts)
    if rel.as_posix() == MANIFEST:
        read_manifest(folder)  # present and well-formed
        return path
    manifest = read_manifest(folder)
    rewrite = f"if the change is intended, run `python -m nltutorial.results {folder}`"
    if rel.as_posix() not in manifest:
        raise ResultsError(f"{path} is not listed in {folder / MANIFEST} ({rewrite})")
    if not path.is_file():
        raise ResultsError(f"{path} is missing but listed in {folder / MANIFEST}: restore it (git checkout) "
                           f"or run the command recorded in results/README.md")
    if file_sha256(path) != manifest[rel.as_posix()]:
        raise ResultsError(f"{path} has changed: its sha256 does not match {folder / MANIFEST}; restore it "
                           f"(git checkout), or {rewrite}")
    return path


def results_file(name: str) -> Path:
    """Path of ``results/<name>``: the local copy checked against its manifest, else a verified download."""
    rel = _check_relative(name)
    local = find_results_dir()
    if local is not None:
        return _verified_local(local, rel)
    return fetch_results_file(name)


def _manifest_names() -> List[str]:
    local = find_results_dir()
    if local is not None:
        return sorted(read_manifest(local))
    return sorted(_remote_manifest(_check_url(RESULTS_URL), _cache_dir(), 30.0, RESULTS_DEADLINE))


def recorded(name: str) -> bool:
    """Whether ``results/<name>`` is a recorded file: listed in the manifest (local, or fetched)."""
    return _check_relative(name).as_posix() in set(_manifest_names())


def _read_run(folder: str) -> Tuple[dict, List[dict]]:
    """(parsed summary.json, metrics.jsonl rows) of the recorded run in ``results/<folder>/``."""
    summary = json.loads(results_file(folder + "/summary.json").read_text())
    lines = results_file(folder + "/metrics.jsonl").read_text().splitlines()
    return summary, [json.loads(line) for line in lines if line.strip()]


def _no_runs(prefix: str, missing_ok: bool) -> List[dict]:
    if missing_ok:
        return []
    raise ResultsError(f"no runs found under results/{prefix}")


def load_runs(experiment: str, missing_ok: bool = False) -> List[dict]:
    """Every run under ``results/<experiment>/<variant>/seed<k>/``, sorted by variant and seed.

    Each run is a dict: ``variant``, ``seed`` (int), ``summary`` (the parsed summary.json)
    and ``metrics`` (the list of per-epoch dicts of metrics.jsonl). Without any recorded run:
    ResultsError, or ``[]`` with ``missing_ok=True`` (a sweep that has not recorded one yet).
    """
    prefix = _check_relative(experiment).as_posix() + "/"
    runs = []
    for name in _manifest_names():
        parts = name.split("/")
        if not name.startswith(prefix) or parts[-1] != "summary.json" or len(parts) != 4:
            continue
        variant, seed = parts[1], parts[2]
        if not seed.startswith("seed") or not seed[4:].isdigit():
            continue
        summary, metrics = _read_run(name[: -len("/summary.json")])
        runs.append({"variant": variant, "seed": int(seed[4:]), "summary": summary, "metrics": metrics})
    if not runs:
        return _no_runs(prefix, missing_ok)
    return sorted(runs, key=lambda r: (r["variant"], r["seed"]))


def load_variants(experiment: str, missing_ok: bool = False) -> List[dict]:
    """Every run of a study with one run per variant: ``results/<experiment>/<variant>/``.

    Each run is a dict: ``variant``, ``summary`` and ``metrics`` (as in :func:`load_runs`),
    sorted by variant. Without any: ResultsError, or ``[]`` with ``missing_ok=True``.
    """
    prefix = _check_relative(experiment).as_posix() + "/"
    runs = []
    for name in _manifest_names():
        parts = name.split("/")
        if name.startswith(prefix) and len(parts) == 3 and parts[-1] == "summary.json":
            summary, metrics = _read_run(name[: -len("/summary.json")])
            runs.append({"variant": parts[1], "summary": summary, "metrics": metrics})
    if not runs:
        return _no_runs(prefix, missing_ok)
    return sorted(runs, key=lambda r: r["variant"])


def summarize(runs: Iterable[dict], key: str = "test_accuracy") -> Dict[str, dict]:
    """Mean, sample standard deviation (n - 1) and count of ``summary[key]`` per variant."""
    groups: Dict[str, List[float]] = {}
    for run in runs:
        value = run["summary"].get(key)
        if value is None:
            raise ResultsError(f"run {run['variant']}/seed{run['seed']} has no {key!r} in its summary")
        groups.setdefault(run["variant"], []).append(float(value))
    out = {}
    for variant, values in groups.items():
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        out[variant] = {"mean": mean, "std": std, "n": n, "values": values}
    return out


def variant_rows(runs: Iterable[dict], variants: Iterable[str], baseline: str = "none",
                 key: str = "test_accuracy") -> List[dict]:
    """One row per name of ``variants``, in that order, from the runs of :func:`load_runs`.

    A row is a dict: ``variant``; ``n`` (recorded seeds) and ``seeds`` (their numbers);
    ``mean`` and ``std`` of ``summary[key]`` over the seeds (as :func:`summarize`);
    ``delta`` = mean − the mean of ``baseline``; ``params`` and ``flops`` of the summary;
    ``epoch_seconds``, the median of ``epoch_seconds`` over every recorded epoch of every seed
    (robust to a few epochs slowed down by other jobs). A variant without a recorded run has
    ``n = 0``, ``seeds = []`` and None everywhere else; so has ``delta`` without a baseline run.
    """
    runs = list(runs)
    stats = summarize(runs, key) if runs else {}
    base = stats.get(baseline, {}).get("mean")
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row = {"variant": variant, "n": len(mine), "seeds": sorted(r["seed"] for r in mine), "mean": None,
               "std": None, "delta": None, "params": None, "flops": None, "epoch_seconds": None}
        if mine:
            seconds = [m["epoch_seconds"] for r in mine for m in r["metrics"]
                       if m.get("epoch_seconds") is not None]
            mean = stats[variant]["mean"]
            row.update(mean=mean, std=stats[variant]["std"], params=mine[0]["summary"].get("params"),
                       flops=mine[0]["summary"].get("flops"),
                       epoch_seconds=statistics.median(seconds) if seconds else None,
                       delta=None if base is None else mean - base)
        rows.append(row)
    return rows


if __name__ == "__main__":  # python -m nltutorial.results [FOLDER]: rewrite the manifest
    import sys

    print(write_manifest(sys.argv[1] if len(sys.argv) > 1 else "results"))
