"""The training command line (nltutorial.train) and engine: files, exact resume, signals, flags."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nltutorial import engine
from nltutorial import train as T

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar-10-subset"
needs_data = pytest.mark.skipif(not (SUBSET / "cifar-10-batches-py").is_dir(),
                                reason=f"offline CIFAR-10 subset missing: {SUBSET}")

TIMING = ("epoch_seconds", "images_per_second")
SUMMARY_KEYS = ("test_accuracy", "params", "flops", "images_per_second", "wall_seconds", "device",
                "torch", "commit", "command", "data")


def tiny(out, *extra, epochs=2):
    return ["--data-dir", str(SUBSET), "--model", "resnet20", "--train-subset", "256",
            "--test-subset", "128", "--epochs", str(epochs), "--batch-size", "64", "--device", "cpu",
            "--seed", "3", "--no-progress", "--out", str(out), *extra]


def run(argv):
    return T.train(T.parse_args(argv), argv)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(tiny(out))
    return out, summary


@needs_data
def test_tiny_run_writes_metrics_summary_checkpoint(reference):
    out, summary = reference
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert set(T.METRIC_KEYS) <= set(r)
        assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0
        assert r["images_per_second"] > 0 and r["epoch_seconds"] > 0
    saved = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(saved)
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert saved["test_accuracy"] == rows[-1]["test_accuracy"] == summary["test_accuracy"]
    assert saved["params"] == 269_722 and saved["flops"] > 0
    assert saved["data"]["train_images"] == 256 and saved["data"]["test_images"] == 128
    assert saved["data"]["root"] == str(SUBSET)
    assert saved["device"] == "cpu" and saved["torch"] == torch.__version__
    assert "nltutorial.train" in saved["command"] and "--train-subset 256" in saved["command"]
    ckpt = engine.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["epoch_state"] is None
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "loader"} <= set(ckpt)
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert weights.keys() == ckpt["model"].keys()
    assert all(torch.equal(weights[k], ckpt["model"][k]) for k in weights)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@needs_data
def test_resume_at_epoch_boundary_is_exact(reference, tmp_path):
    ref, _ = reference
    assert run(tiny(tmp_path, "--stop-after", "1"))["epochs_done"] == 1
    assert not (tmp_path / "model.pt").exists()  # weights are written when the run is finished
    assert len(metrics(tmp_path)) == 1
    run(tiny(tmp_path, "--resume"))
    assert strip_timing(metrics(tmp_path)) == strip_timing(metrics(ref))
    a = engine.load_checkpoint(ref / "checkpoint.pt")["model"]
    b = engine.load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class _StopAfterPolls(engine.StopOnSignal):
    """A StopOnSignal that 'receives' SIGTERM at its third poll (i.e. after step 3 of epoch 1)."""

    def __init__(self):
        super().__init__()
        self.polls = 0

    @property
    def requested(self):
        self.polls += 1
        if self.polls >= 3:
            self.signum = signal.SIGTERM
        return self.signum is not None


@needs_data
def test_resume_mid_epoch_is_exact(reference, tmp_path, monkeypatch):
    ref, _ = reference
    with monkeypatch.context() as m:
        m.setattr(engine, "StopOnSignal", _StopAfterPolls)
        with pytest.raises(engine.TrainingInterrupted) as info:
            run(tiny(tmp_path))
    assert info.value.exit_code == 128 + signal.SIGTERM
    ckpt = engine.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 0 and ckpt["epoch_state"]["step"] == 3
    run(tiny(tmp_path, "--resume"))
    assert strip_timing(metrics(tmp_path)) == strip_timing(metrics(ref))


@needs_data
def test_attention_variant_runs(tmp_path):
    summary = run(tiny(tmp_path, "--attention", "se", "--schedule", "cosine", epochs=1))
    assert summary["epochs_done"] == 1 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["params"] > 269_722


@needs_data
def test_sigterm_writes_loadable_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "nltutorial.train", *tiny(tmp_path, epochs=200)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_path = tmp_path / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 60
        while not ckpt_path.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM" in output
    ckpt = engine.load_checkpoint(ckpt_path)
    assert 1 <= ckpt["epoch"] < 200
    assert len(metrics(tmp_path)) == ckpt["epoch"]
    model = T.cifar_resnet("resnet20")
    model.load_state_dict(ckpt["model"])


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "-1"), ("--lr", "-0.1"),
                                         ("--label-smoothing", "1.5"), ("--model", "vgg"),
                                         ("--attention", "xyz"), ("--amp", "fp8"),
                                         ("--schedule", "step"), ("--stop-after", "5")])
def test_bad_flags_are_named(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        T.main(tiny(tmp_path, flag, value))
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_validate_raises_value_error_naming_flag(tmp_path):
    args = T.build_parser().parse_args(tiny(tmp_path, "--lr", "0"))
    with pytest.raises(ValueError, match="--lr"):
        T.train(args)
    if not torch.cuda.is_available():
        args = T.build_parser().parse_args(tiny(tmp_path, "--amp", "fp16"))
        with pytest.raises(ValueError, match="--amp"):
            T.validate(args)


@needs_data
def test_existing_checkpoint_needs_resume_and_matching_options(reference, tmp_path):
    ref, _ = reference
    with pytest.raises(ValueError, match="--resume"):
        run(tiny(ref))
    with pytest.raises(ValueError, match="--seed"):
        run(tiny(ref, "--resume", "--seed", "4"))


def test_param_groups_skip_decay_on_bn_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = engine.param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim <= 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "c.pt"
    engine.atomic_save({"a": 1}, path)
    engine.atomic_save({"a": 2}, path)
    assert torch.load(path, weights_only=True) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


_STOP_AT_STEP_2 = """
import os, signal, sys
from nltutorial import engine, train

class StopAtStep2(engine.StopOnSignal):
    # rank 0 'receives' SIGTERM after step 2 of epoch 1 (of 4): a mid-epoch interruption
    polls = 0

    @property
    def requested(self):
        StopAtStep2.polls += 1
        if StopAtStep2.polls >= 2 and os.environ["RANK"] == "0":
            self.signum = signal.SIGTERM
        return self.signum is not None

engine.StopOnSignal = StopAtStep2
sys.exit(train.main(sys.argv[1:]))
"""

needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(out, *extra, script=None, ok=True):
    """Two gloo processes under torchrun; ``script`` replaces ``-m nltutorial.train``."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = tiny(out, *extra)
    argv[argv.index("--batch-size") + 1] = "32"  # per process: 2 x 32 = the global batch of 64
    target = ["-m", "nltutorial.train"] if script is None else [str(script)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *target, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """An uninterrupted 2-epoch run in two gloo processes."""
    out = tmp_path_factory.mktemp("ddp_reference")
    _torchrun(out)
    return out


@needs_data
@needs_gloo
def test_ddp_two_cpu_processes_resume_exactly(ddp_reference, tmp_path):
    rows = metrics(ddp_reference)
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((ddp_reference / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["data"]["train_images"] == 256
    _torchrun(tmp_path / "cut", "--stop-after", "1")
    _torchrun(tmp_path / "cut", "--resume")
    assert strip_timing(metrics(tmp_path / "cut")) == strip_timing(rows)


@needs_data
@needs_gloo
def test_ddp_mid_epoch_interruption_resumes_exactly(ddp_reference, tmp_path):
    script = tmp_path / "stop_at_step_2.py"
    script.write_text(_STOP_AT_STEP_2)
    out = tmp_path / "cut"
    proc = _torchrun(out, script=script, ok=False)
    assert "SIGTERM" in proc.stdout + proc.stderr
    ckpt = engine.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 0 and ckpt["epoch_state"]["step"] == 2
    _torchrun(out, "--resume")
    assert strip_timing(metrics(out)) == strip_timing(metrics(ddp_reference))
    sums = ckpt["epoch_state"]                         # both ranks' running sums were kept
    assert sums["seen"].tolist() == [64, 64] and sums["loss_sum"][0] != sums["loss_sum"][1]


# ---------------------------------------------------------------------------------------------
# Video: --data moving-shapes (generated, no files needed) and the flag combinations
# ---------------------------------------------------------------------------------------------


def tiny_video(out, *extra, epochs=2):
    return ["--data", "moving-shapes", "--model", "c2d", "--attention", "nl3d", "--train-subset", "64",
            "--test-subset", "32", "--frames", "4", "--size", "16", "--epochs", str(epochs),
            "--batch-size", "16", "--device", "cpu", "--seed", "3", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def video_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_reference")
    return out, run(tiny_video(out))


def test_moving_shapes_run_writes_metrics_summary_model(video_reference):
    from nltutorial.cost import count_flops, count_parameters
    from nltutorial.video_models import video_resnet

    out, summary = video_reference
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(set(T.METRIC_KEYS) <= set(r) and 0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(saved) and saved["test_accuracy"] == rows[-1]["test_accuracy"]
    assert saved["data"] == {"name": "moving-shapes", "root": None, "train_images": 64, "test_images": 32,
                             "classes": ["different", "same"], "frames": 4, "size": 16,
                             "shapes": ["square", "plus", "ring", "triangle"], "seed": 0}
    model = video_resnet("c2d", 2, "nl3d")
    assert saved["params"] == count_parameters(model)
    assert saved["flops"] == count_flops(model.eval(), torch.zeros(1, 3, 4, 16, 16))   # per clip (1, C, T, H, W)
    assert saved["args"]["model"] == "c2d" and saved["args"]["frame_stride"] is None
    model.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    assert len(model.nl_blocks()) == 2


def test_moving_shapes_resume_is_exact(video_reference, tmp_path, monkeypatch):
    ref, _ = video_reference
    assert run(tiny_video(tmp_path / "boundary", "--stop-after", "1"))["epochs_done"] == 1
    run(tiny_video(tmp_path / "boundary", "--resume"))
    assert strip_timing(metrics(tmp_path / "boundary")) == strip_timing(metrics(ref))
    a = engine.load_checkpoint(ref / "checkpoint.pt")["model"]
    b = engine.load_checkpoint(tmp_path / "boundary" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with monkeypatch.context() as m:                       # SIGTERM after step 3 of epoch 1 (of 4 steps)
        m.setattr(engine, "StopOnSignal", _StopAfterPolls)
        with pytest.raises(engine.TrainingInterrupted):
            run(tiny_video(tmp_path / "mid"))
    assert engine.load_checkpoint(tmp_path / "mid" / "checkpoint.pt")["epoch_state"]["step"] == 3
    run(tiny_video(tmp_path / "mid", "--resume"))
    assert strip_timing(metrics(tmp_path / "mid")) == strip_timing(metrics(ref))
    with pytest.raises(ValueError, match="--frames"):
        run(tiny_video(tmp_path / "mid", "--resume", "--frames", "5"))


def test_video_defaults_follow_the_data(tmp_path):
    args = T.parse_args(["--data", "moving-shapes", "--out", str(tmp_path)])
    assert (args.model, args.frames, args.frame_stride, args.size) == ("c2d", 8, None, 32)
    args = T.parse_args(["--data", "kinetics-folder", "--data-dir", str(tmp_path), "--model", "i3d",
                         "--attention", "nl3d", "--out", str(tmp_path)])
    assert (args.model, args.frames, args.frame_stride, args.size) == ("i3d", 8, 2, 112)
    args = T.parse_args(["--out", str(tmp_path)])
    assert (args.model, args.frames, args.frame_stride, args.size) == ("resnet20", None, None, None)
    with pytest.raises(SystemExit):   # a parser error (exit 2) naming --data-dir: see test_paths_are_checked
        run(["--data", "kinetics-folder", "--data-dir", str(tmp_path / "missing"), "--device", "cpu",
             "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("argv, flag", [
    (["--model", "c2d"], "--model"),
    (["--attention", "nl3d"], "--attention"),
    (["--frames", "8"], "--frames"),
    (["--size", "64"], "--size"),
    (["--data", "moving-shapes", "--model", "resnet20"], "--model"),
    (["--data", "moving-shapes", "--attention", "se"], "--attention"),
    (["--data", "moving-shapes", "--frame-stride", "2"], "--frame-stride"),
    (["--data", "moving-shapes", "--frames", "2"], "--frames"),
    (["--data", "moving-shapes", "--size", "8"], "--size"),
    (["--data", "moving-shapes", "--per-batch", "10"], "--per-batch"),
    (["--data", "moving-shapes", "--channels-last"], "--channels-last"),
    (["--data", "moving-shapes", "--data-dir", "somewhere"], "--data-dir"),
    (["--data", "kinetics-folder"], "--data-dir"),
])
def test_video_flag_combinations_are_named(argv, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        T.main([*argv, "--device", "cpu", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Issue 15: no data lost, nothing executed from files, nothing half-written, named errors
# ---------------------------------------------------------------------------------------------


def _fails_with(argv, capsys, code=2):
    """Run the command line; assert its exit status and return its stderr."""
    capsys.readouterr()
    try:
        status = T.main(argv)
    except SystemExit as exit:
        status = exit.code
    assert status == code
    return capsys.readouterr().err


@pytest.mark.parametrize("name, text", [("metrics.jsonl", '{"epoch": 1}\n'), ("summary.json", "{}\n"),
                                        ("model.pt", "weights")])
@pytest.mark.parametrize("resume", [False, True])
def test_earlier_outputs_without_checkpoint_are_not_overwritten(name, text, resume, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    err = _fails_with(tiny_video(tmp_path, *(["--resume"] if resume else [])), capsys)
    assert name in err and "--overwrite" in err and "checkpoint.pt" in err
    assert (tmp_path / name).read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_overwrite_replaces_an_earlier_run_and_an_empty_metrics_file_is_no_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")          # a run killed before its first epoch
    assert run(tiny_video(tmp_path, "--stop-after", "1"))["epochs_done"] == 1
    (tmp_path / "model.pt").write_text("stale weights")
    summary = run(tiny_video(tmp_path, "--overwrite", epochs=1))
    assert summary["finished"] and len(metrics(tmp_path)) == 1
    torch.load(tmp_path / "model.pt", weights_only=True)   # the new weights, not the stale file


def test_resume_of_a_finished_run_trains_nothing(video_reference, tmp_path, capsys):
    ref, _ = video_reference
    for name in ("metrics.jsonl", "summary.json", "model.pt"):   # as the sweep leaves it: no checkpoint
        (tmp_path / name).write_bytes((ref / name).read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    summary = run(tiny_video(tmp_path, "--resume"))
    assert summary == json.loads((ref / "summary.json").read_text())
    assert "finished run" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(SystemExit):
        T.main(tiny_video(tmp_path, "--resume", "--seed", "4"))   # another run's options: named
    assert "--seed" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_whose_pickle_would_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))   # unpickling creates the marker file

    torch.save({"format": 1, "config": {}, "model": Planted()}, tmp_path / "checkpoint.pt")
    err = _fails_with(tiny_video(tmp_path, "--resume"), capsys)
    assert f"checkpoint {tmp_path / 'checkpoint.pt'} is damaged or not a checkpoint" in err
    assert "could run code" in err and "--overwrite" in err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "model.pt", "missing keys"])
def test_damaged_checkpoint_is_named(damage, video_reference, tmp_path, capsys):
    ref, _ = video_reference
    path = tmp_path / "checkpoint.pt"
    data = (ref / "checkpoint.pt").read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("epoch 2 of 2\n")
    elif damage == "model.pt":
        path.write_bytes((ref / "model.pt").read_bytes())
    else:
        ckpt = engine.load_checkpoint(ref / "checkpoint.pt")
        del ckpt["optimizer"], ckpt["rng"]
        torch.save(ckpt, path)
    err = _fails_with(tiny_video(tmp_path, "--resume"), capsys)
    assert f"checkpoint {path} is damaged or not a checkpoint: " in err
    assert "use --overwrite to start afresh" in err
    if damage == "missing keys":
        assert "optimizer" in err and "rng" in err


def _as_format_1(ckpt):
    """A checkpoint as the trainer wrote it before format 2 (the layout of the running sweep's):
    NumPy's RNG tuple with its uint32 array, rank 0's running sums as scalars, torch's version
    object; saved with torch.save, read then with weights_only=False."""
    old = dict(ckpt, format=1, torch=torch.__version__)
    np_state = ckpt["rng"]["numpy"]
    old["rng"] = {"torch": ckpt["rng"]["torch"], "python": ckpt["rng"]["python"],
                  "numpy": (np_state["bit_generator"], np_state["key"].numpy().astype("uint32"), np_state["pos"],
                            np_state["has_gauss"], np_state["cached_gaussian"])}
    if ckpt["epoch_state"] is not None:
        s = ckpt["epoch_state"]
        old["epoch_state"] = {**s, "loss_sum": s["loss_sum"][0].clone(), "correct": s["correct"][0].clone(),
                              "seen": int(s["seen"][0])}
    return old


@needs_data
def test_format_1_checkpoint_resumes_exactly(reference, tmp_path, monkeypatch):
    ref, _ = reference
    with monkeypatch.context() as m:
        m.setattr(engine, "StopOnSignal", _StopAfterPolls)
        with pytest.raises(engine.TrainingInterrupted):
            run(tiny(tmp_path))
    path = tmp_path / "checkpoint.pt"
    ckpt = engine.load_checkpoint(path)
    assert ckpt["format"] == 2 and ckpt["epoch_state"]["step"] == 3
    torch.save(_as_format_1(ckpt), path)
    assert engine.load_checkpoint(path)["format"] == 1
    # the same folder spelled with ./ and a trailing slash, relative to the current folder
    monkeypatch.chdir(SUBSET.parent)
    argv = tiny(tmp_path, "--resume")
    argv[argv.index("--data-dir") + 1] = f"./{SUBSET.name}/"
    run(argv)
    assert strip_timing(metrics(tmp_path)) == strip_timing(metrics(ref))
    assert engine.load_checkpoint(path)["format"] == 2


def test_temporaries_of_killed_writes_are_removed_at_start(tmp_path):
    planted = [".checkpoint.pt.x1y2z3.tmp", ".summary.json.tmp", ".metrics.jsonl.tmp", ".model.pt.abc.tmp"]
    for name in planted:
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")
    run(tiny_video(tmp_path, epochs=1))
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(planted)
    assert names == {"notes.tmp", "checkpoint.pt", "metrics.jsonl", "summary.json", "model.pt"}


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(video_reference, tmp_path, monkeypatch, capsys):
    ref, _ = video_reference
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:   # the checkpoint of epoch 2: half written, then the disk is full
            f.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        err = _fails_with(tiny_video(tmp_path), capsys, code=1)
    assert f"disk full while writing {tmp_path / 'checkpoint.pt'}" in err
    assert engine.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in metrics(tmp_path)] == [1]          # never ahead of the checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
    run(tiny_video(tmp_path, "--resume"))
    assert strip_timing(metrics(tmp_path)) == strip_timing(metrics(ref))


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_files_never_hold_bare_nan(tmp_path):
    T._write_json(tmp_path / "s.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert _strict_json((tmp_path / "s.json").read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    T._write_metrics(tmp_path / "m.jsonl", [{"epoch": 1, "test_loss": float("nan")}])
    assert _strict_json((tmp_path / "m.jsonl").read_text()) == {"epoch": 1, "test_loss": None}


def test_diverged_run_exits_non_zero_naming_the_epoch(tmp_path, monkeypatch, capsys):
    real_evaluate, epochs = engine.evaluate, []

    def evaluate(*args, **kwargs):
        epochs.append(1)
        result = real_evaluate(*args, **kwargs)
        return {**result, "test_loss": math.nan} if len(epochs) == 2 else result

    monkeypatch.setattr(engine, "evaluate", evaluate)
    err = _fails_with(tiny_video(tmp_path, epochs=3), capsys, code=1)
    assert "diverged at epoch 2" in err and "nan" in err
    assert [r["epoch"] for r in metrics(tmp_path)] == [1]
    assert engine.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    summary = _strict_json((tmp_path / "summary.json").read_text())
    assert summary["finished"] is False and summary["diverged"]["epoch"] == 2
    assert summary["diverged"]["test_loss"] is None and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("value", ["-1", str(2**32), "1.5"])
def test_seed_out_of_range_is_a_parser_error(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(T, "_loaders", lambda *a: pytest.fail("data loaded before the --seed check"))
    err = _fails_with(tiny_video(tmp_path, "--seed", value), capsys)
    assert "--seed" in err
    assert T.parse_args(tiny_video(tmp_path, "--seed", str(2**32 - 1))).seed == 2**32 - 1


def test_paths_are_checked(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "--out" in _fails_with(["--data", "moving-shapes", "--out", str(a_file)], capsys)
    assert "--out" in _fails_with(["--data", "moving-shapes", "--out", ""], capsys)
    for data in ("cifar10", "kinetics-folder"):
        argv = ["--data", data, "--out", str(tmp_path / "o")]
        assert "--data-dir" in _fails_with([*argv, "--data-dir", str(a_file)], capsys)
        assert "--data-dir" in _fails_with([*argv, "--data-dir", ""], capsys)
        err = _fails_with([*argv, "--data-dir", str(tmp_path / "missing")], capsys)
        assert "--data-dir" in err and "does not exist" in err
    assert "--download" in _fails_with(["--data", "moving-shapes", "--download", "--out", str(tmp_path)], capsys)
    args = T.parse_args(["--data-dir", str(tmp_path / "missing"), "--download", "--out", str(tmp_path / "o")])
    assert args.download and not (tmp_path / "missing").exists()   # created by the download, not the parser
    assert not (tmp_path / "o").exists()


def test_data_dir_without_cifar10_needs_download(tmp_path, capsys):
    err = _fails_with(["--data-dir", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "o")], capsys)
    assert f"--data-dir {tmp_path}" in err and "--download" in err


# ---------------------------------------------------------------------------------------------
# --data kinetics400-tiny
# ---------------------------------------------------------------------------------------------

TINY_LISTS = {"train": ["t0.mp4 0", "t1.mp4 1", "t2.mp4 0", "t3.mp4 1"], "val": ["v0.mp4 1", "v1.mp4 0"]}


def _tiny_zip(folder):
    """A fake kinetics400_tiny.zip (grey 8-frame 32×32 mp4s, the two lists) built in ``folder``."""
    import io
    import zipfile

    av = pytest.importorskip("av")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, lines in TINY_LISTS.items():
            zf.writestr(f"kinetics400_tiny/kinetics_tiny_{split}_video.txt", "".join(f"{l}\n" for l in lines))
            for k, line in enumerate(lines):
                name, label = line.split()
                path = folder / name
                with av.open(str(path), "w") as container:
                    stream = container.add_stream("mpeg4", rate=8)
                    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
                    for i in range(8):   # the label shows in the pixels: the task is learnable
                        frame = torch.full((32, 32, 3), 60 + 120 * int(label) + 5 * k + i, dtype=torch.uint8)
                        for packet in stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")):
                            container.mux(packet)
                    for packet in stream.encode():
                        container.mux(packet)
                zf.write(path, f"kinetics400_tiny/{split}/{name}")
    return buf.getvalue()


def test_kinetics400_tiny_flags(tmp_path, capsys):
    args = T.parse_args(["--data", "kinetics400-tiny", "--out", str(tmp_path / "o")])
    assert (args.model, args.data_dir, args.frames, args.frame_stride, args.size) == ("c2d", None, 8, 2, 112)
    assert T.VIDEO_DEFAULTS["kinetics400-tiny"] == T.VIDEO_DEFAULTS["kinetics-folder"]
    args = T.parse_args(["--data", "kinetics400-tiny", "--data-dir", str(tmp_path / "new"), "--download",
                         "--attention", "nl3d", "--out", str(tmp_path / "o")])
    assert args.download and args.attention == "nl3d" and not (tmp_path / "new").exists()
    err = _fails_with(["--data", "kinetics400-tiny", "--data-dir", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "o")], capsys)
    assert "--data-dir" in err and "does not exist (pass --download to download Kinetics-400-tiny there)" in err
    for argv, flag in ((["--attention", "se"], "--attention"), (["--per-batch", "10"], "--per-batch"),
                       (["--model", "resnet20"], "--model"), (["--size", "8"], "--size")):
        assert flag in _fails_with(["--data", "kinetics400-tiny", *argv, "--out", str(tmp_path / "o")], capsys)
    # an existing --data-dir without kinetics400_tiny/ and without --download: named, nothing downloaded
    err = _fails_with(["--data", "kinetics400-tiny", "--data-dir", str(tmp_path), "--device", "cpu",
                       "--out", str(tmp_path / "o")], capsys)
    assert f"--data-dir {tmp_path}: Kinetics-400-tiny not found: {tmp_path / 'kinetics400_tiny'}" in err
    assert "--download" in err


def test_kinetics400_tiny_downloads_and_trains_one_epoch(tmp_path, monkeypatch):
    from conftest import LocalServer
    from nltutorial import kinetics
    from nltutorial.cost import count_flops
    from nltutorial.video_models import video_resnet

    (tmp_path / "clips").mkdir()
    archive = _tiny_zip(tmp_path / "clips")
    server = LocalServer({"kinetics400_tiny.zip": archive})
    monkeypatch.setattr(kinetics, "KINETICS400_TINY_URL", server.url("kinetics400_tiny.zip"))
    monkeypatch.setattr(kinetics, "KINETICS400_TINY_SIZE", len(archive))
    monkeypatch.setenv("NLTUTORIAL_DATA", str(tmp_path / "cache-root"))   # the clip cache goes there
    data_dir, out = tmp_path / "data", tmp_path / "run"
    argv = ["--data", "kinetics400-tiny", "--data-dir", str(data_dir), "--download", "--attention", "nl3d",
            "--frames", "4", "--frame-stride", "1", "--size", "16", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--seed", "0", "--no-progress", "--out", str(out)]
    try:
        summary = run(argv)
    finally:
        server.stop()
    assert server.hits == ["/kinetics400_tiny.zip"]
    assert (data_dir / "kinetics400_tiny" / "val" / "v1.mp4").is_file()
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1] and 0.0 <= rows[0]["test_accuracy"] <= 1.0
    assert math.isfinite(rows[0]["train_loss"]) and math.isfinite(rows[0]["test_loss"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["data"] == {"name": "kinetics400-tiny", "root": str(data_dir), "train_images": 4,
                             "test_images": 2, "classes": ["0", "1"], "frames": 4, "frame_stride": 1,
                             "size": 16, "source": server.url("kinetics400_tiny.zip")}
    assert summary["finished"] and saved["flops"] == count_flops(video_resnet("c2d", 2, "nl3d").eval(),
                                                                 torch.zeros(1, 3, 4, 16, 16))
    assert len(list((tmp_path / "cache-root" / "kinetics-cache").glob("*.pt"))) == 6


# ---------------------------------------------------------------------------------------------
# --cam-energy: DANet's channel-attention energy, a block keyword of --attention danet
# ---------------------------------------------------------------------------------------------


def _fake_cifar10(root, train=True, download=False, per_batch=None):
    """Random CIFAR-10-shaped arrays (HWC uint8 images, int64 labels): 32 train, 16 test images."""
    import numpy as np
    rng = np.random.default_rng(0 if train else 1)
    n = 32 if train else 16
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_cam_energy_reaches_the_model_is_recorded_and_checked_on_resume(tmp_path, monkeypatch):
    from nltutorial.danet import ChannelAttention
    built = []

    def cifar_resnet(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = T.cifar_resnet
    monkeypatch.setattr(T, "cifar10", _fake_cifar10)
    monkeypatch.setattr(T, "cifar_resnet", cifar_resnet)
    out = tmp_path / "run"
    argv = ["--data-dir", str(tmp_path), "--attention", "danet", "--cam-energy", "mean", "--epochs", "2",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(out)]
    summary = run([*argv, "--stop-after", "1"])
    cams = [m for m in built[0].modules() if isinstance(m, ChannelAttention)]
    assert len(cams) == 2 and all(m.cam_energy == "mean" for m in cams)       # stages 2 and 3
    assert summary["epochs_done"] == 1 and summary["args"]["cam_energy"] == "mean"
    assert json.loads((out / "summary.json").read_text())["args"]["cam_energy"] == "mean"
    assert engine.load_checkpoint(out / "checkpoint.pt")["config"]["cam_energy"] == "mean"
    for other in ([], ["--cam-energy", "paper"]):                              # block default, or another value
        with pytest.raises(ValueError, match="--cam-energy is .* but the checkpoint .* made with 'mean'"):
            run([*argv[:4], *argv[6:], *other, "--resume"])
    assert run([*argv, "--resume"])["finished"] and len(built) == 2
    assert all(m.cam_energy == "mean" for m in built[1].modules() if isinstance(m, ChannelAttention))

    # without the flag the block keeps its default and the run records None (the block's default)
    built.clear()
    summary = run(["--data-dir", str(tmp_path), "--attention", "danet", "--epochs", "1", "--batch-size", "16",
                   "--device", "cpu", "--no-progress", "--out", str(tmp_path / "default")])
    assert summary["args"]["cam_energy"] is None
    assert {m.cam_energy for m in built[0].modules() if isinstance(m, ChannelAttention)} == {"paper"}


@pytest.mark.parametrize("argv", [["--attention", "se"], [], ["--data", "moving-shapes"],
                                  ["--data", "moving-shapes", "--attention", "nl3d"]])
def test_cam_energy_with_another_attention_is_named(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(T, "_loaders", lambda *a: pytest.fail("data loaded before the --cam-energy check"))
    data_dir = [] if "moving-shapes" in argv else ["--data-dir", str(tmp_path)]
    err = _fails_with([*argv, *data_dir, "--cam-energy", "mean", "--device", "cpu", "--out", str(tmp_path / "o")],
                      capsys)
    attention = argv[argv.index("--attention") + 1] if "--attention" in argv else "none"
    assert f"--cam-energy applies to --attention danet (DANet's channel attention), not --attention {attention}" \
        in " ".join(err.split())
    err = _fails_with(["--attention", "danet", "--cam-energy", "sum", "--out", str(tmp_path / "o")], capsys)
    assert "--cam-energy" in err and "'paper', 'official', 'mean'" in err
