"""nltutorial.engine on its own: atomic writes, disk full, temporaries, safe checkpoint loading, RNG state."""

import errno
import os
import random

import numpy as np
import pytest
import torch

from nltutorial import engine


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("write", ["save", "text"])
def test_disk_full_names_the_file_and_keeps_the_old_one(write, tmp_path, monkeypatch):
    path = tmp_path / ("c.pt" if write == "save" else "s.json")
    do = (lambda obj: engine.atomic_save(obj, path)) if write == "save" else \
        (lambda obj: engine.atomic_write_text(str(obj), path))
    do({"a": 1})
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", _enospc)   # the data was written, the disk is full at the flush
    with pytest.raises(engine.DiskFullError, match=f"disk full while writing {path}"):
        do({"a": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # the temporary file is gone


def test_remove_temporaries_only_touches_those_of_the_named_files(tmp_path):
    names = [".checkpoint.pt.k2j3_x.tmp", ".summary.json.tmp", ".metrics.jsonl.abc.tmp", ".model.pt.q.tmp"]
    keep = ["checkpoint.pt", ".keep", "notes.tmp", ".other.txt.abc.tmp", ".checkpoint.pt.bak"]
    for name in names + keep:
        (tmp_path / name).write_text("x")
    removed = engine.remove_temporaries(tmp_path, ["checkpoint.pt", "summary.json", "metrics.jsonl", "model.pt"])
    assert sorted(p.name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert engine.remove_temporaries(tmp_path / "missing", ["checkpoint.pt"]) == []


def test_rng_state_round_trips_and_is_weights_only(tmp_path):
    engine.seed_epoch(5, 2)
    np.random.normal()   # a cached Gaussian in NumPy's state
    state = engine.get_rng_state()
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    engine.atomic_save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)   # no allow-list needed
    engine.set_rng_state(loaded)
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_set_rng_state_reads_the_format_1_numpy_tuple():
    engine.seed_epoch(1, 0)
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = (torch.rand(2), np.random.rand(2), random.random())
    engine.seed_epoch(2, 0)
    engine.set_rng_state(old)
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_epoch_state_gather_and_restore_in_one_process():
    state = {"step": 3, "loss_sum": torch.tensor(7.25, dtype=torch.float64),
             "correct": torch.tensor(11), "seen": 24, "seconds": 1.5, "lr": 0.1}
    saved = engine.gather_epoch_state(state)
    assert saved["loss_sum"].shape == (1,) and saved["correct"].tolist() == [11] and saved["seen"].tolist() == [24]
    back = engine.restore_epoch_state(saved, 0, torch.device("cpu"))
    assert back["loss_sum"].item() == 7.25 and back["correct"].item() == 11 and back["seen"] == 24
    assert back["step"] == 3 and back["lr"] == 0.1
    with pytest.raises(ValueError, match="rank 1"):
        engine.restore_epoch_state(saved, 1, torch.device("cpu"))
    format1 = {**state, "loss_sum": state["loss_sum"].clone(), "correct": state["correct"].clone()}
    assert engine.restore_epoch_state(format1, 1, torch.device("cpu"))["seen"] == 24   # rank 0's, as before


class _Planted:
    """Unpickling this calls open(path, "w"): the file appears if the pickle is executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_checkpoint_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "config": {}, "model": _Planted(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(engine.CheckpointError, match="could run code.*open") as info:
        engine.load_checkpoint(tmp_path / "checkpoint.pt")
    assert str(tmp_path / "checkpoint.pt") in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content, cause", [
    (b"", "Error"),
    (b"hello, not a checkpoint\n", "Error"),
    ("state_dict", "keys missing: format"),
    ("list", "holds a list"),
    ("format 9", "unknown format 9"),
    ("bad epoch", "'epoch' is -1"),
])
def test_load_checkpoint_names_what_is_wrong(content, cause, tmp_path):
    path = tmp_path / "checkpoint.pt"
    good = {k: {} for k in engine.CHECKPOINT_KEYS}
    good.update(format=2, epoch=1, epoch_state=None, history=[], rng={"torch": 0, "numpy": 0, "python": 0})
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        obj = {"state_dict": {"conv.weight": torch.zeros(2)},
               "list": [1, 2], "format 9": {**good, "format": 9}, "bad epoch": {**good, "epoch": -1}}[content]
        torch.save(obj, path)
    with pytest.raises(engine.CheckpointError, match=cause) as info:
        engine.load_checkpoint(path)
    assert f"checkpoint {path} is damaged or not a checkpoint" in str(info.value)
    torch.save(good, path)
    assert engine.load_checkpoint(path)["epoch"] == 1


def test_truncated_checkpoint_is_damaged(tmp_path):
    path = tmp_path / "checkpoint.pt"
    good = {k: {} for k in engine.CHECKPOINT_KEYS}
    good.update(format=2, epoch=1, epoch_state=None, history=[], rng={"torch": 0, "numpy": 0, "python": 0},
                model={"w": torch.randn(1000)})
    torch.save(good, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(engine.CheckpointError, match="damaged or not a checkpoint"):
        engine.load_checkpoint(path)
