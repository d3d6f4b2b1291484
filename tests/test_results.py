"""nltutorial.results: the recorded runs, their manifest, and verified downloads."""

import errno
import hashlib
import io
import json
import math
import re
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import LocalServer
from nltutorial import results as R

ROOT = Path(__file__).resolve().parents[1]


def test_repository_manifest_is_up_to_date():
    folder = ROOT / "results"
    manifest = R.read_manifest(folder)
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.name != R.MANIFEST and p.name.endswith(R.RECORDED))
    assert sorted(manifest) == on_disk, "run `python -m nltutorial.results results` after changing results/"
    for name, digest in manifest.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_no_checkpoint_is_committed():
    """The sweep's in-progress checkpoints are not git-ignored (so they survive a workspace that
    keeps unignored files), which makes committing one by mistake possible: none may be tracked."""
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "results"],
                             capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if git.returncode != 0:
        pytest.skip(f"not a git checkout: {git.stderr.strip()}")
    tracked = [name for name in git.stdout.split("\0") if name]
    assert any(name.endswith("summary.json") for name in tracked), "git ls-files saw no runs"
    assert [n for n in tracked if Path(n).name == "checkpoint.pt"] == []


def test_every_recorded_run_names_its_command():
    for summary in (ROOT / "results").rglob("summary.json"):
        s = json.loads(summary.read_text())
        if "study.py" in s["command"]:  # a study script's run, e.g. results/danet_subset/study.py
            script = s["command"].split()[1]
            assert (ROOT / script).is_file() and s["epochs"] > 0, summary
        else:
            assert "nltutorial.train" in s["command"] and s["finished"], summary
        assert s["data"]["train_images"] > 0 and 0 <= s["test_accuracy"] <= 1


def _fake_results(folder, accuracies):
    for variant, values in accuracies.items():
        for seed, acc in enumerate(values):
            run = folder / "exp" / variant / f"seed{seed}"
            run.mkdir(parents=True)
            rows = [{"epoch": 1, "test_accuracy": acc / 2}, {"epoch": 2, "test_accuracy": acc}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "summary.json").write_text(json.dumps({"test_accuracy": acc, "params": 10}))
    (folder / "notes.bin").write_bytes(b"not recorded")
    R.write_manifest(folder)


def test_load_and_summarize(tmp_path, monkeypatch):
    acc = {"none": [0.5, 0.6, 0.7], "nl": [0.61, 0.65]}
    _fake_results(tmp_path, acc)
    monkeypatch.setenv("NLTUTORIAL_RESULTS", str(tmp_path))
    runs = R.load_runs("exp")
    assert [(r["variant"], r["seed"]) for r in runs] == [("nl", 0), ("nl", 1), ("none", 0), ("none", 1), ("none", 2)]
    assert runs[0]["metrics"][-1]["test_accuracy"] == 0.61
    table = R.summarize(runs)
    for variant, values in acc.items():
        assert table[variant]["n"] == len(values)
        assert table[variant]["mean"] == pytest.approx(statistics.mean(values))
        assert table[variant]["std"] == pytest.approx(statistics.stdev(values))
    assert "notes.bin" not in R.read_manifest(tmp_path)
    with pytest.raises(R.ResultsError, match="no runs found under results/other/"):
        R.load_runs("other")
    with pytest.raises(R.ResultsError, match="has no 'flops'"):
        R.summarize(runs, "flops")
    with pytest.raises(ValueError, match="relative path inside results/"):
        R.load_runs("../etc")


def test_sweep_in_progress_rows_recorded_and_studies(tmp_path, monkeypatch):
    """variant_rows against plain per-variant statistics; missing variants and studies."""
    seconds = {"none": [[10.0, 30.0, 11.0], [12.0, 13.0, 9.0]], "nl": [[20.0, 21.0, 50.0]]}
    acc = {"none": [0.90, 0.92], "nl": [0.93]}
    for variant, per_seed in seconds.items():
        for seed, epoch_seconds in enumerate(per_seed):
            run = tmp_path / "sweep" / variant / f"seed{seed}"
            run.mkdir(parents=True)
            rows = [{"epoch": k + 1, "test_accuracy": acc[variant][seed], "epoch_seconds": t}
                    for k, t in enumerate(epoch_seconds)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "summary.json").write_text(json.dumps(
                {"test_accuracy": acc[variant][seed], "params": 100 + len(variant), "flops": 7}))
    (tmp_path / "sweep" / "nl" / "seed0" / "model.pt").write_bytes(b"weights")
    study = tmp_path / "study" / "cam"
    study.mkdir(parents=True)
    (study / "metrics.jsonl").write_text('{"epoch": 1, "cam_gamma": -0.4}\n')
    (study / "summary.json").write_text('{"test_accuracy": 0.3}')
    R.write_manifest(tmp_path)
    monkeypatch.setenv("NLTUTORIAL_RESULTS", str(tmp_path))

    runs = R.load_runs("sweep")
    rows = R.variant_rows(runs, ["none", "se", "nl"])
    assert [r["variant"] for r in rows] == ["none", "se", "nl"]
    none, se, nl = rows
    assert none["n"] == 2 and none["seeds"] == [0, 1]
    assert none["mean"] == pytest.approx(statistics.mean(acc["none"]))
    assert none["std"] == pytest.approx(statistics.stdev(acc["none"]))
    assert none["delta"] == pytest.approx(0.0)
    assert none["epoch_seconds"] == pytest.approx(11.5)  # median of 9, 10, 11, 12, 13, 30
    assert (none["params"], none["flops"]) == (104, 7)
    assert se == {"variant": "se", "n": 0, "seeds": [], "mean": None, "std": None, "delta": None,
                  "params": None, "flops": None, "epoch_seconds": None}
    assert nl["n"] == 1 and math.isnan(nl["std"]) and nl["epoch_seconds"] == 21.0
    assert nl["delta"] == pytest.approx(0.93 - statistics.mean(acc["none"]))
    assert R.variant_rows(runs, ["nl"], baseline="se")[0]["delta"] is None  # no baseline run

    assert R.load_runs("elsewhere", missing_ok=True) == []
    assert R.variant_rows([], ["none"])[0]["n"] == 0
    assert R.recorded("sweep/nl/seed0/model.pt") and not R.recorded("sweep/none/seed0/model.pt")
    studies = R.load_variants("study")
    assert [(v["variant"], v["summary"]["test_accuracy"], v["metrics"][0]["cam_gamma"]) for v in studies] \
        == [("cam", 0.3, -0.4)]
    assert R.load_variants("sweep", missing_ok=True) == []  # seed folders are not a study
    with pytest.raises(R.ResultsError, match="no runs found under results/sweep/"):
        R.load_variants("sweep")
    with pytest.raises(ValueError, match="relative path inside results/"):
        R.recorded("../MANIFEST.sha256")


@pytest.fixture
def served(tmp_path):
    """results/ served over HTTP on 127.0.0.1; ``.files`` can be tampered with."""
    folder = tmp_path / "served"
    folder.mkdir()
    _fake_results(folder, {"gc": [0.4, 0.5]})
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    served = LocalServer(files)
    yield served
    served.stop()


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Every test starts like a new process: no manifest remembered from an earlier test."""
    monkeypatch.setattr(R, "_MANIFESTS", {}, raising=False)


def test_fetch_verifies_and_writes_atomically(served, tmp_path):
    cache = tmp_path / "cache"
    path = R.fetch_results_file("exp/gc/seed1/summary.json", served.base_url, cache)
    assert json.loads(path.read_text())["test_accuracy"] == 0.5
    assert path == cache / "exp" / "gc" / "seed1" / "summary.json"
    # a tampered file is refused and nothing is left behind
    served.files["exp/gc/seed0/summary.json"] = b'{"test_accuracy": 0.99}'
    with pytest.raises(R.ResultsError, match="does not match the manifest"):
        R.fetch_results_file("exp/gc/seed0/summary.json", served.base_url, cache)
    assert not (cache / "exp" / "gc" / "seed0" / "summary.json").exists()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".part")]
    with pytest.raises(R.ResultsError, match="not in the manifest"):
        R.fetch_results_file("exp/gc/seed7/summary.json", served.base_url, cache)


def test_fetch_without_network_says_what_to_do(tmp_path):
    with pytest.raises(R.ResultsError, match="set NLTUTORIAL_RESULTS"):
        R.fetch_results_file("x/summary.json", "http://127.0.0.1:9/", tmp_path, sha256="0" * 64, timeout=2)
    assert not list(tmp_path.rglob("*.part"))


def test_load_runs_falls_back_to_download(served, tmp_path, monkeypatch):
    monkeypatch.delenv("NLTUTORIAL_RESULTS", raising=False)
    monkeypatch.setattr(R, "find_results_dir", lambda: None)
    monkeypatch.setattr(R, "RESULTS_URL", served.base_url)
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "data"))
    runs = R.load_runs("exp")
    assert [(r["variant"], r["seed"]) for r in runs] == [("gc", 0), ("gc", 1)]
    assert (tmp_path / "data" / "results" / "exp" / "gc" / "seed0" / "metrics.jsonl").is_file()


# --------------------------------------------------------------------------------------
# A local results/ is checked like a download; the manifest itself is checked
# --------------------------------------------------------------------------------------


def test_local_results_are_checked_against_the_manifest(tmp_path, monkeypatch):
    _fake_results(tmp_path, {"gc": [0.4, 0.5]})
    monkeypatch.setenv("NLTUTORIAL_RESULTS", str(tmp_path))
    assert [r["seed"] for r in R.load_runs("exp")] == [0, 1]
    summary = tmp_path / "exp" / "gc" / "seed1" / "summary.json"
    summary.write_text('{"test_accuracy": 0.99}')  # changed after the manifest was written
    for call in (lambda: R.load_runs("exp"), lambda: R.results_file("exp/gc/seed1/summary.json")):
        with pytest.raises(R.ResultsError, match=re.escape(str(summary)) + ".*has changed"):
            call()
    R.write_manifest(tmp_path)  # the intended change, recorded
    assert R.load_runs("exp")[1]["summary"]["test_accuracy"] == 0.99
    metrics = tmp_path / "exp" / "gc" / "seed0" / "metrics.jsonl"
    kept = metrics.read_bytes()
    metrics.unlink()
    with pytest.raises(R.ResultsError, match=re.escape(str(metrics)) + ".*missing"):
        R.load_runs("exp")
    metrics.write_bytes(kept)
    # a file the manifest does not list is not trusted either
    (tmp_path / "exp" / "gc" / "seed1" / "notes.txt").write_text("unlisted")
    with pytest.raises(R.ResultsError, match=r"notes\.txt is not listed in .*MANIFEST\.sha256"):
        R.results_file("exp/gc/seed1/notes.txt")
    # a run on disk that the manifest does not list is not a recorded run
    R.write_manifest(tmp_path)
    extra = tmp_path / "exp" / "gc" / "seed2"
    extra.mkdir()
    (extra / "summary.json").write_text('{"test_accuracy": 0.1}')
    (extra / "metrics.jsonl").write_text("")
    assert [r["seed"] for r in R.load_runs("exp")] == [0, 1]
    (tmp_path / R.MANIFEST).unlink()
    with pytest.raises(R.ResultsError, match=r"MANIFEST\.sha256 not found.*python -m nltutorial\.results"):
        R.load_runs("exp")


@pytest.mark.parametrize(
    "line",
    ["nothex  exp/gc/seed0/x.json", "0" * 64, "0" * 63 + "  exp/x.json", "0" * 64 + "  ../../etc/passwd",
     "0" * 64 + "  /etc/passwd"],
    ids=["not-hex", "no-name", "short-digest", "dotdot", "absolute"],
)
def test_malformed_manifest_line_is_reported(tmp_path, monkeypatch, served, line):
    _fake_results(tmp_path, {"gc": [0.4]})
    lines = (tmp_path / R.MANIFEST).read_text().splitlines()
    (tmp_path / R.MANIFEST).write_text("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    monkeypatch.setenv("NLTUTORIAL_RESULTS", str(tmp_path))
    with pytest.raises(R.ResultsError, match=re.escape(str(tmp_path / R.MANIFEST)) + r" line 2: expected"):
        R.load_runs("exp")
    # the same manifest served: refused, and not kept in the cache
    served.files[R.MANIFEST] = (tmp_path / R.MANIFEST).read_bytes()
    cache = tmp_path / "cache"
    with pytest.raises(R.ResultsError, match=re.escape(served.base_url + R.MANIFEST) + r" line 2: expected"):
        R.fetch_results_file("exp/gc/seed0/summary.json", served.base_url, cache)
    assert not cache.exists() or not list(cache.rglob("*"))


def test_base_url_must_end_with_a_slash(served, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"url must end with '/'.*results/"):
        R.fetch_results_file("exp/gc/seed0/summary.json", served.base_url.rstrip("/"), tmp_path)
    monkeypatch.setattr(R, "find_results_dir", lambda: None)
    monkeypatch.setattr(R, "RESULTS_URL", served.base_url + "results")
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="url must end with '/'"):
        R.load_runs("exp")
    assert served.hits == []


# --------------------------------------------------------------------------------------
# The manifest once per process; offline from a complete verified cache
# --------------------------------------------------------------------------------------


def test_manifest_fetched_once_and_offline_from_the_cache(served, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "find_results_dir", lambda: None)
    monkeypatch.setattr(R, "RESULTS_URL", served.base_url)
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "data"))
    runs = R.load_runs("exp")
    assert served.hits.count("/" + R.MANIFEST) == 1 and len(served.hits) == 1 + 2 * 2  # manifest + 2 files per run
    assert R.load_runs("exp") == runs and len(served.hits) == 5  # warm cache, same process: no request
    assert R.results_file("exp/gc/seed0/summary.json").is_file() and len(served.hits) == 5
    monkeypatch.setattr(R, "_MANIFESTS", {})  # a new process (a Colab rerun): the manifest only
    assert R.load_runs("exp") == runs and served.hits[5:] == ["/" + R.MANIFEST]
    served.stop()  # no network any more
    monkeypatch.setattr(R, "_MANIFESTS", {})
    assert R.load_runs("exp") == runs  # from the verified cache and the manifest kept with it
    assert (tmp_path / "data" / "results" / R.MANIFEST).read_bytes() == served.files[R.MANIFEST]
    # offline with an incomplete or damaged cache: a clear error naming the file
    cached = tmp_path / "data" / "results" / "exp" / "gc" / "seed1" / "metrics.jsonl"
    cached.write_text("damaged")
    monkeypatch.setattr(R, "_MANIFESTS", {})
    with pytest.raises(R.ResultsError, match=r"could not fetch .*exp/gc/seed1/metrics\.jsonl"):
        R.load_runs("exp")
    assert cached.read_text() == "damaged"  # nothing half-written over it


# --------------------------------------------------------------------------------------
# No hangs, nothing half-written
# --------------------------------------------------------------------------------------


def test_download_deadline(served, tmp_path):
    served.trickle["exp/slow.json"] = b"x" * 100  # one byte every 0.5 s: never a read timeout
    start = time.monotonic()
    with pytest.raises(R.ResultsError, match=r"deadline of 2 s"):
        R.fetch_results_file("exp/slow.json", served.base_url, tmp_path, sha256="0" * 64, timeout=5, deadline=2)
    assert time.monotonic() - start < 2 + 6
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "exp" / "slow.json").exists()
    with pytest.raises(ValueError, match="deadline must be a positive number of seconds"):
        R.fetch_results_file("exp/slow.json", served.base_url, tmp_path, sha256="0" * 64, deadline=0)


class _Interrupted:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read1(self, n):
        raise KeyboardInterrupt

    read = read1


def test_ctrl_c_and_a_full_disk_leave_nothing(served, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    digest = hashlib.sha256(served.files["exp/gc/seed0/summary.json"]).hexdigest()
    with monkeypatch.context() as m:
        m.setattr(urllib.request, "urlopen", lambda url, timeout: _Interrupted())
        with pytest.raises(KeyboardInterrupt):
            R.fetch_results_file("exp/gc/seed0/summary.json", served.base_url, cache, sha256=digest)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    from nltutorial import _download

    class FullDisk(io.BytesIO):
        def write(self, chunk):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(_download, "open", lambda path, mode="r", *a, **k: (real_open(path, mode).close(), FullDisk())[1]
                        if "w" in mode else real_open(path, mode, *a, **k), raising=False)
    target = cache / "exp" / "gc" / "seed0" / "summary.json"
    with pytest.raises(R.ResultsError, match=re.escape(f"disk full while writing {target}")):
        R.fetch_results_file("exp/gc/seed0/summary.json", served.base_url, cache, sha256=digest)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
