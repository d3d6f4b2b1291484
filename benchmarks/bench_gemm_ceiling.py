"""The GEMM fraction a non-local block could reach at most: its products alone, at their own shapes.

``bench_nonlocal.py`` divides a block's counted FLOPs by its time and by the rate of one
1024×1024×1024 matmul ("GEMM frac", goal >= 0.8 at 64² and above). This script asks how much of
that rate the same matrix products reach by themselves, with nothing else in between: for each
case of the grid it times every GEMM that the FLOP count of ``bench_nonlocal.flops`` counts, at
the shapes of that case, as a plain matmul of contiguous fp32 matrices, and reports

    ceiling = counted FLOPs / (time of those GEMMs alone) / (1024³ rate),

the fraction that a path doing nothing but these products would reach. A block that reaches
0.7 where the ceiling is 0.75 wastes little; one that reaches 0.7 under a ceiling of 0.95 does.

The products, per batch element, as (m, k, n) for an (m×k)·(k×n) matmul, forward then backward
(d: inner channels, C: channels, dq: C in gaussian mode, d otherwise, dv = d):

    each 1×1 convolution C→d over N positions   (d, C, N)   (C, d, N)   (d, N, C)
    W_z, d→C                                    (C, d, N)   (d, C, N)   (C, N, d)
    attention map S = Q·Kᵀ and output Y = P·V   (N, dq, Ns) (N, Ns, dv)
    backward dP, dV, dQ, dK                     (N, dv, Ns) (Ns, N, dv) (N, Ns, dq) (Ns, N, dq)

Gaussian mode has two convolutions (g, W_z), embedded four. Where m × max(k, n) exceeds 2^22
elements (16 MiB), one block of the rows of m is timed and the time scaled to all m rows. One thread, CPU
time, median of ``--repeat`` runs; the 1024³ matmul is timed between the runs in the same process.

    python benchmarks/bench_gemm_ceiling.py --out results/bench_gemm_ceiling_cpu.txt
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_nonlocal  # noqa: E402  (the grid, the FLOP count and the report helpers)

BLOCK_ELEMENTS = 2**22


def products(case, C: int, d: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of the counted GEMMs of one case, forward + backward, all batch elements."""
    B, N, Ns, mode = case["batch"], case["N"], case["Ns"], case["mode"]
    dq, dv = (C if mode == "gaussian" else d), d
    convs = 1 if mode == "gaussian" else 3                    # g (θ, φ) : C→d; W_z: d→C
    out = [(d, C, N, B * convs), (C, d, N, B * convs), (d, N, C, B * convs),
           (C, d, N, B), (d, C, N, B), (C, N, d, B)]
    out += [(N, dq, Ns, B), (N, Ns, dv, B), (N, dv, Ns, B), (Ns, N, dv, B), (N, Ns, dq, B), (Ns, N, dq, B)]
    return out


def gemm_flops(prods) -> float:
    return sum(2 * m * k * n * c for m, k, n, c in prods)


def time_product(m: int, k: int, n: int, repeat: int) -> float:
    """CPU seconds of one (m×k)·(k×n) matmul, from one block of rows where m × max(k, n) > 2^22."""
    rows = max(1, min(m, BLOCK_ELEMENTS // max(k, n)))
    a, b = torch.randn(rows, k), torch.randn(k, n)
    a @ b                                                     # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        a @ b
        times.append(time.process_time() - t0)
    return max(statistics.median(times), 1e-9) * m / rows      # a clock tick apart: never zero


def gemm_rate(repeat: int) -> float:
    return 2 * bench_nonlocal.GEMM_SIZE**3 / time_product(*(bench_nonlocal.GEMM_SIZE,) * 3, repeat)


def run(args) -> list[str]:
    torch.set_num_threads(1)
    d = args.channels // 2
    cases = [c for c in bench_nonlocal.grid(args) if c["N"] >= args.min_side**2]
    lines = [("case", "mode", "GFLOP", "GEMMs ms", "ceiling", "slowest product (m, k, n)", "its rate")]
    rates, ceilings = [], []
    for case in cases:
        prods = products(case, args.channels, d)
        flops = gemm_flops(prods)
        assert math.isclose(flops, bench_nonlocal.flops(case, "naive", args.channels, d), rel_tol=1e-12), case
        per = {(m, k, n): time_product(m, k, n, args.repeat) for m, k, n, _ in prods}
        rates.append(gemm_rate(args.repeat))
        seconds = sum(per[(m, k, n)] * c for m, k, n, c in prods)
        ceiling = flops / seconds / rates[-1]
        slow = min(per, key=lambda s: 2 * math.prod(s) / per[s])
        ceilings.append((ceiling, bench_nonlocal.shape_label(case), case["mode"]))
        lines.append((bench_nonlocal.shape_label(case), case["mode"], f"{flops / 1e9:.1f}", f"{1e3 * seconds:.0f}",
                      f"{ceiling:.2f}", "×".join(map(str, slow)), f"{2 * math.prod(slow) / per[slow] / rates[-1]:.2f}"))
        print(f"  {lines[-1][0]} {lines[-1][1]}: ceiling {ceiling:.2f}", file=sys.stderr, flush=True)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    table = ["  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines]
    table.insert(1, "  ".join("-" * w for w in widths))
    head = [f"GEMM ceiling of the non-local block: torch {torch.__version__}, 1 thread (CPU time), fp32, "
            f"C={args.channels}, d={d}, median of {args.repeat}, load average {os.getloadavg()[0]:.2f}",
            f"GEMM: {statistics.median(rates) / 1e9:.1f} GFLOP/s (fp32 1024³ matmul, median over the cases)",
            "ceiling: counted FLOPs / time of the same GEMMs alone / GEMM rate; its rate: the slowest "
            "product's FLOPs / its time / GEMM rate"]
    low = min(ceilings, default=None)
    tail = [f"lowest ceiling {low[0]:.2f} ({low[1]} {low[2]})"] if low else []
    return head + table + [""] + tail


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="gaussian,embedded")
    p.add_argument("--sizes", default="64,128", help="2D sides (batch --batch)")
    p.add_argument("--sizes-3d", type=bench_nonlocal.shapes_3d, default="8x28,8x56", help="T x side, batch 1")
    p.add_argument("--sub-sample", choices=("both", "on", "off"), default="both")
    p.add_argument("--min-side", type=int, default=64, help="cases with N >= min-side² only")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if any(m not in bench_nonlocal.SOFTMAX_MODES for m in args.modes):
        p.error(f"--modes must be among {bench_nonlocal.SOFTMAX_MODES}, got {args.modes}")
    if args.repeat < 1 or args.channels < 2 or args.batch < 1:
        p.error("--repeat and --batch must be >= 1 and --channels >= 2")
    args.sizes = bench_nonlocal.ints(args.sizes)
    args.sub_sample = {"both": (False, True), "on": (True,), "off": (False,)}[args.sub_sample]
    text = "\n".join(run(args))
    print(text)
    if args.out:
        bench_nonlocal.write_atomic(args.out, text + "\n")


if __name__ == "__main__":
    main()
