import pytest

import nltutorial.timing as timing


def test_measure_runs_warmup_and_repeats_and_returns_the_median(monkeypatch):
    # a fake clock: each timed run starts at t0 and ends at t0 + duration
    stamps = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # durations 3, 1, 2
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(stamps))
    calls = []
    t = timing.measure(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert t == 2.0


def test_measure_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeat"):
        timing.measure(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="warmup"):
        timing.measure(lambda: None, warmup=-1)
