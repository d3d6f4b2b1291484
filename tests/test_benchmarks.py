"""Smoke tests of the benchmark scripts: tiny grids run end to end and report what they claim.

Timings are not checked (the standards keep speed out of unit tests); the reports' structure,
the paths' agreement and the argument errors are.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_nonlocal():
    return _load("bench_nonlocal")


TINY = ["--sizes", "8", "--sizes-3d", "2x4", "--modes", "embedded,gaussian", "--sub-sample", "off",
        "--channels", "16", "--repeat", "2", "--modules", "PAM", "--module-sizes", "8"]


def _rows(text):
    """(case, mode, path) -> the row's fields, from the report's table."""
    rows = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 11 and re.fullmatch(r"\d+×[\d×]+(/2)?", fields[0]):
            rows[tuple(fields[:3])] = fields
    return rows


@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-4), ("bf16", 0.1)])
def test_bench_nonlocal_tiny_grid_reports_every_path(bench_nonlocal, tmp_path, capsys, dtype, tol):
    out = tmp_path / "report.txt"
    bench_nonlocal.main(TINY + ["--dtype", dtype, "--out", str(out)])
    text = out.read_text()
    assert f"1 thread(s) (CPU time), {dtype}, C=16" in text.splitlines()[0]
    assert re.search(rf"GEMM: [\d.]+ GFLOP/s \({dtype} 1024³ matmul", text)
    rows = _rows(text)
    for case in ("2×8×8", "1×2×4×4"):
        for mode in ("embedded", "gaussian"):
            assert {p for c, m, p in rows if (c, m) == (case, mode)} == {"alexhex7", "naive", "fast", "auto"}
    assert {p for c, m, p in rows if m == "PAM"} == {"naive", "fast", "auto"}
    for fields in rows.values():
        assert fields[3] in ("naive", "fast")                      # the path actually taken
        assert float(fields[10]) <= tol                            # every path agrees with the first
        assert fields[8] != "-" and float(fields[8]) >= 0          # peak tensor MiB was measured
    assert re.search(r"GOAL auto never slower than naive, alexhex7 or fast by > 5 %: (PASS|FAIL)", text)
    assert _rows(capsys.readouterr().out) == rows                  # the file is what was printed


@pytest.mark.parametrize("argv, message", [
    (["--device", "nonsense"], "--device must name a torch device"),
    (["--device", "meta"], "--device must be cpu or cuda"),
    (["--dtype", "fp64"], "--dtype"),
    (["--modes", "cosine"], "--modes must be among"),
    (["--sizes-3d", "8by28"], "--sizes-3d items must look like 8x28"),
])
def test_bench_nonlocal_rejects_bad_arguments(bench_nonlocal, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench_nonlocal.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux" or __import__("torch").cuda.is_available(),
                    reason="checks the message of a machine without CUDA")
def test_bench_nonlocal_cuda_without_cuda_says_so(bench_nonlocal, capsys):
    with pytest.raises(SystemExit):
        bench_nonlocal.main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
