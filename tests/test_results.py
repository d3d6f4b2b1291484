"""nltutorial.results: the recorded runs, their manifest, and verified downloads."""

import hashlib
import http.server
import json
import statistics
import threading
from pathlib import Path

import pytest

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


def test_every_recorded_run_names_its_command():
    for summary in (ROOT / "results").rglob("summary.json"):
        s = json.loads(summary.read_text())
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


@pytest.fixture
def served(tmp_path):
    """results/ served over HTTP on 127.0.0.1; ``.files`` can be tampered with."""
    folder = tmp_path / "served"
    folder.mkdir()
    _fake_results(folder, {"gc": [0.4, 0.5]})
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
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
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    class Served:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"

    Served.files = files
    yield Served
    httpd.shutdown()
    httpd.server_close()


def test_fetch_verifies_and_writes_atomically(served, tmp_path):
    cache = tmp_path / "cache"
    path = R.fetch_results_file("exp/gc/seed1/summary.json", served.url, cache)
    assert json.loads(path.read_text())["test_accuracy"] == 0.5
    assert path == cache / "exp" / "gc" / "seed1" / "summary.json"
    # a tampered file is refused and nothing is left behind
    served.files["exp/gc/seed0/summary.json"] = b'{"test_accuracy": 0.99}'
    with pytest.raises(R.ResultsError, match="does not match the manifest"):
        R.fetch_results_file("exp/gc/seed0/summary.json", served.url, cache)
    assert not (cache / "exp" / "gc" / "seed0" / "summary.json").exists()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".part")]
    with pytest.raises(R.ResultsError, match="not in the manifest"):
        R.fetch_results_file("exp/gc/seed7/summary.json", served.url, cache)


def test_fetch_without_network_says_what_to_do(tmp_path):
    with pytest.raises(R.ResultsError, match="set NLTUTORIAL_RESULTS"):
        R.fetch_results_file("x/summary.json", "http://127.0.0.1:9/", tmp_path, sha256="0" * 64, timeout=2)
    assert not list(tmp_path.rglob("*.part"))


def test_load_runs_falls_back_to_download(served, tmp_path, monkeypatch):
    monkeypatch.delenv("NLTUTORIAL_RESULTS", raising=False)
    monkeypatch.setattr(R, "find_results_dir", lambda: None)
    monkeypatch.setattr(R, "RESULTS_URL", served.url)
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "data"))
    runs = R.load_runs("exp")
    assert [(r["variant"], r["seed"]) for r in runs] == [("gc", 0), ("gc", 1)]
    assert (tmp_path / "data" / "results" / "exp" / "gc" / "seed0" / "metrics.jsonl").is_file()
