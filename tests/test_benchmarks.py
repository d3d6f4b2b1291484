"""Smoke tests of the benchmark scripts: tiny grids run end to end and report what they claim.

Timings are not checked (the standards keep speed out of unit tests); the reports' structure,
the paths' agreement and the argument errors are.
"""

import importlib.util
import os
import subprocess
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
            assert ({p for c, m, p in rows if (c, m) == (case, mode)}
                    == {"alexhex7", "naive", "fast", "blocked", "auto"})
    assert {p for c, m, p in rows if m == "PAM"} == {"naive", "fast", "blocked", "auto"}
    for (case, mode, path), fields in rows.items():
        assert fields[3] in ("naive", "fast", "blocked")           # the path actually taken
        assert (path == "blocked") == (fields[3] == "blocked") or path == "auto"
        assert float(fields[10]) <= tol                            # every path agrees with the first
        assert fields[8] != "-" and float(fields[8]) >= 0          # peak tensor MiB was measured
    assert re.search(r"GOAL auto never slower than naive, alexhex7, fast or blocked by > 5 %: (PASS|FAIL)", text)
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


@pytest.fixture(scope="module")
def bench_gemm_ceiling():
    return _load("bench_gemm_ceiling")


@pytest.mark.parametrize("mode, sub_sample", [("gaussian", False), ("embedded", True)])
def test_gemm_ceiling_times_the_products_that_the_flop_count_counts(bench_gemm_ceiling, mode, sub_sample):
    B, N, C, d = 2, 64, 16, 8
    Ns = N // 4 if sub_sample else N
    case = dict(dim=2, batch=B, spatial=(8, 8), sub_sample=sub_sample, mode=mode, N=N, Ns=Ns)
    prods = bench_gemm_ceiling.products(case, C, d)
    dq = C if mode == "gaussian" else d
    # written out: two (gaussian) or four 1x1 convolutions, three GEMMs each; six attention products
    convs = (2 if mode == "gaussian" else 4) * 3 * 2 * B * N * C * d
    attention = 2 * B * (N * dq * Ns + N * Ns * d + N * d * Ns + Ns * N * d + N * Ns * dq + Ns * N * dq)
    assert bench_gemm_ceiling.gemm_flops(prods) == convs + attention
    assert bench_gemm_ceiling.gemm_flops(prods) == bench_gemm_ceiling.bench_nonlocal.flops(case, "naive", C, d)
    assert sum(c for *_, c in prods) == B * ((2 if mode == "gaussian" else 4) * 3 + 6)


def test_gemm_ceiling_tiny_report(bench_gemm_ceiling, tmp_path, capsys):
    out = tmp_path / "ceiling.txt"
    bench_gemm_ceiling.main(["--sizes", "8", "--sizes-3d", "2x4", "--min-side", "4", "--channels", "16",
                             "--repeat", "2", "--out", str(out)])
    text = out.read_text()
    assert text == capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if re.match(r"\s*\d+×[\d×]+(/2)? ", line)]
    assert {(r[0], r[1]) for r in rows} == {(c, m) for c in ("2×8×8", "2×8×8/2", "1×2×4×4", "1×2×4×4/2")
                                            for m in ("gaussian", "embedded")}
    for r in rows:
        # ceiling and the slowest product's rate as fractions (timings, so only their form is checked)
        assert re.fullmatch(r"\d+\.\d\d", r[4]) and re.fullmatch(r"\d+\.\d\d", r[6])
        assert re.fullmatch(r"\d+×\d+×\d+", r[5]) and float(r[2]) >= 0 and int(r[3]) >= 0
    assert re.search(r"lowest ceiling [\d.]+ \(", text)


@pytest.mark.parametrize("argv, message", [(["--modes", "dot"], "--modes must be among"),
                                           (["--repeat", "0"], "--repeat and --batch must be >= 1")])
def test_gemm_ceiling_rejects_bad_arguments(bench_gemm_ceiling, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench_gemm_ceiling.main(argv)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# The other scripts, run as the README runs them (a subprocess from the repository root)
# --------------------------------------------------------------------------------------

SUBSET = ROOT.parent / "shared" / "data" / "cifar-10-subset"


def _script(name, *argv, timeout=300):
    done = subprocess.run([sys.executable, f"benchmarks/{name}.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_local_relation_tiny_reports_both_forms_and_their_agreement():
    text = _script("bench_local_relation", "--channels", "16", "--size", "8", "--kernel-size", "3",
                   "--reps", "1")
    rows = re.findall(r"^ +16 (forward \(infer\)|forward\+backward) +(shift|unfold) +([\d.]+) +([\d.]+) +([\d.]+)$",
                      text, re.M)
    assert {(label, impl) for label, impl, *_ in rows} == {
        (label, impl) for label in ("forward (infer)", "forward+backward") for impl in ("shift", "unfold")}
    assert all(float(peak) > 0 for *_, peak, _ in rows)                    # peak memory was measured
    err = float(re.search(r"max \|shift − unfold\| \(float32 forward\): (\S+)", text).group(1))
    assert err < 1e-4
    assert len(re.findall(r"C =  16  forward(\+backward| \(infer\)) +time ×", text)) == 2


@pytest.mark.skipif(not (SUBSET / "cifar-10-batches-py").is_dir(), reason=f"no CIFAR-10 subset at {SUBSET}")
def test_bench_train_tiny_reports_each_block_and_each_loader():
    text = _script("bench_train", "--data-dir", str(SUBSET), "--per-batch", "64", "--batch-size", "32",
                   "--rounds", "1", "--variants", "none", "se", "--threads", "1")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] in (["none"], ["se"])}
    assert rows["none"][-1] == "1.00" and float(rows["se"][-1]) > 0       # ratios to plain ResNet-20
    assert "(320 images, batch 32, cpu" in text
    for loader in ("DeviceLoader", "DataLoader w0", "DataLoader w2"):
        assert re.search(rf"^ *{loader} +[\d.]+ +\d+ +[\d.]+$", text, re.M), loader


def test_bench_nlm_tiny_image_benchmark_reports_every_method():
    text = _script("bench_nlm", "--images", "camera", "--sigmas", "25", "--patch", "3", "--search", "5",
                   "--quick", "--reps", "1", "--threads", "1")
    rows = re.findall(r"^camera +25 +3/5 (\S+) +([\d.]+)\*? +([\d.]+) +([\d.]+) +([\d.]+)", text, re.M)
    assert {method for method, *_ in rows} == {"nltutorial", "skimage-fast", "opencv"}, text[-1500:]
    for method, h, psnr, ssim, seconds in rows:
        assert 0.4 <= float(h) <= 1.4 and 20 < float(psnr) < 40 and 0 < float(ssim) < 1 and float(seconds) > 0
    assert re.search(r"^Target camera σ=25, 3x3/5x5: PSNR ours [\d.]+ dB", text, re.M)
