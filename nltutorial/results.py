"""Recorded training runs: find them, check them, and summarise several seeds.

The project keeps the runs behind the book's tables in ``results/`` at the root of the
repository, one folder per run with the two files ``python -m nltutorial.train`` writes::

    results/<experiment>/<variant>/seed<k>/metrics.jsonl   one JSON line per epoch
    results/<experiment>/<variant>/seed<k>/summary.json     final numbers, the exact command,
                                                            commit, torch version, device

``results/MANIFEST.sha256`` lists every recorded file with its SHA-256 (``sha256sum``
format). Where the folder is: ``$NLTUTORIAL_RESULTS``, else the ``results/`` of the checkout
the package was installed from (editable install), else ``./results`` or ``../results``.
Without any of these (a pip-installed package in Colab) the files are fetched from the
repository (``RESULTS_URL``), each one verified against the manifest and written atomically
to ``~/.cache/nltutorial/results`` (or ``$NLTUTORIAL_DATA/results``).

>>> runs = load_runs("cifar10_subset")                       # doctest: +SKIP
>>> table = summarize(runs, "test_accuracy")                 # doctest: +SKIP
>>> table["nl"]["mean"], table["nl"]["std"], table["nl"]["n"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional

__all__ = [
    "MANIFEST",
    "RESULTS_URL",
    "ResultsError",
    "fetch_results_file",
    "find_results_dir",
    "load_runs",
    "read_manifest",
    "results_file",
    "summarize",
    "write_manifest",
]

#: Raw files of the repository's results/ folder (used when no local copy is found).
RESULTS_URL = "https://raw.githubusercontent.com/nltutorial/nltutorial/main/results/"
MANIFEST = "MANIFEST.sha256"
#: File names that the manifest records.
RECORDED = ("metrics.jsonl", "summary.json", "model.pt", ".txt", ".md", ".sh")


class ResultsError(RuntimeError):
    """A recorded file is missing, could not be fetched, or fails its checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def read_manifest(folder: Path) -> Dict[str, str]:
    """{relative path: sha256} from ``folder/MANIFEST.sha256``."""
    out = {}
    for line in (Path(folder) / MANIFEST).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def write_manifest(folder) -> Path:
    """Rewrite ``folder/MANIFEST.sha256`` from the recorded files under ``folder``."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.name.endswith(RECORDED))
    text = "".join(f"{_sha256(folder / n)}  {n}\n" for n in names)
    path = folder / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def fetch_results_file(name: str, url: Optional[str] = None, cache: Optional[Path] = None,
                       sha256: Optional[str] = None, timeout: float = 30.0) -> Path:
    """Download ``results/<name>`` into the cache (atomically), verify it, return its path.

    With ``sha256=None`` the expected digest is looked up in the (fetched) manifest; the
    manifest itself is the one file taken on trust.
    """
    rel = _check_relative(name)
    url = RESULTS_URL if url is None else url
    cache = Path(cache) if cache is not None else _cache_dir()
    target = cache.joinpath(*rel.parts)
    if sha256 is None and name != MANIFEST:
        manifest = read_manifest(fetch_results_file(MANIFEST, url, cache, sha256="", timeout=timeout).parent)
        if name not in manifest:
            raise ResultsError(f"results/{name} is not in the manifest at {url}{MANIFEST}")
        sha256 = manifest[name]
    if target.is_file() and sha256 and _sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url + str(rel), timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if sha256 and h.hexdigest() != sha256:
            raise ResultsError(f"{url}{rel}: sha256 {h.hexdigest()} does not match the manifest's {sha256}; "
                               f"nothing was written. Clone the repository and set NLTUTORIAL_RESULTS "
                               f"to its results/ folder instead.")
        os.replace(tmp, target)
    except OSError as err:
        raise ResultsError(f"could not fetch {url}{rel} ({err}); clone the repository and set "
                           f"NLTUTORIAL_RESULTS to its results/ folder") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def results_file(name: str) -> Path:
    """Path of ``results/<name>``: the local copy, else a verified download."""
    rel = _check_relative(name)
    local = find_results_dir()
    if local is not None:
        path = local.joinpath(*rel.parts)
        if not path.is_file():
            raise ResultsError(f"{path} not found (run the command recorded in results/README.md)")
        return path
    return fetch_results_file(name)


def _manifest_names() -> List[str]:
    local = find_results_dir()
    if local is not None:
        return sorted(p.relative_to(local).as_posix() for p in local.rglob("summary.json"))
    return sorted(read_manifest(results_file(MANIFEST).parent))


def load_runs(experiment: str) -> List[dict]:
    """Every run under ``results/<experiment>/<variant>/seed<k>/``, sorted by variant and seed.

    Each run is a dict: ``variant``, ``seed`` (int), ``summary`` (the parsed summary.json)
    and ``metrics`` (the list of per-epoch dicts of metrics.jsonl).
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
        summary = json.loads(results_file(name).read_text())
        lines = results_file(name[: -len("summary.json")] + "metrics.jsonl").read_text().splitlines()
        runs.append({"variant": variant, "seed": int(seed[4:]), "summary": summary,
                     "metrics": [json.loads(line) for line in lines if line.strip()]})
    if not runs:
        raise ResultsError(f"no runs found under results/{prefix}")
    return sorted(runs, key=lambda r: (r["variant"], r["seed"]))


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


if __name__ == "__main__":  # python -m nltutorial.results [FOLDER]: rewrite the manifest
    import sys

    print(write_manifest(sys.argv[1] if len(sys.argv) > 1 else "results"))
