"""Benchmark the non-local block: explicit N×N_s form ("naive") against the fast paths.

Every case (mode × implementation × size) runs forward + backward in its *own* process, so
its peak memory is not polluted by earlier cases: the script calls itself with ``--case``,
the child prints one JSON line, and the parent prints a table with the naive/fast ratios.

Memory: on CPU the peak resident set of the whole child process (``ru_maxrss``), next to
its baseline right after ``import torch`` and the block's module; on CUDA
``torch.cuda.max_memory_allocated``. Time: median wall time of forward + backward (one
warm-up run; a case slower than ``--budget`` seconds reports its first run instead).

    python benchmarks/bench_nonlocal.py                     # 2D B=2 C=256 32²..128², 3D B=1 T=8 28², 56²
    python benchmarks/bench_nonlocal.py --quick             # 2D 32², 64² and 3D 28² only
    python benchmarks/bench_nonlocal.py --modes embedded,dot --sizes 64 --dims 2
    python benchmarks/bench_nonlocal.py --sub-sample --dtype bf16
    python benchmarks/bench_nonlocal.py --device cuda

Naive cases whose N×N_s intermediates are estimated above ``--naive-max-gib`` are skipped
(and marked so in the table): at 128² without sub-sampling one N×N float32 matrix is
already 1 GiB per batch element, and "concatenation" builds a 2d times larger tensor.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("gaussian", "embedded", "dot", "concatenation")
ROOT = Path(__file__).resolve().parents[1]


def load_block_class():
    """NonLocalBlock, loaded from its file so the child's baseline is torch alone (not the
    book's image and plotting helpers that ``import nltutorial`` brings in)."""
    path = ROOT / "nltutorial" / "nonlocal_block.py"
    spec = importlib.util.spec_from_file_location("nonlocal_block", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NonLocalBlock


# --------------------------------------------------------------------------------------
# Child: one case
# --------------------------------------------------------------------------------------


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(case: dict) -> dict:
    import torch

    NonLocalBlock = load_block_class()
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    baseline = rss_mib()
    torch.manual_seed(0)
    B, C, spatial = case["batch"], case["channels"], case["spatial"]
    block = NonLocalBlock(C, dimension=len(spatial), mode=case["mode"], sub_sample=case["sub_sample"],
                          implementation=case["implementation"],
                          concat_algorithm=case.get("concat_algorithm", "sorted")).to(device).train()
    x = torch.randn(B, C, *spatial, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case["dtype"] == "bf16")

    def step():
        with autocast:
            z = block(x)
        z.float().sum().backward()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = [first]
    if first < case["budget"]:
        repeat = max(1, min(case["repeat"], int(case["budget"] / max(first, 1e-6))))
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    out = dict(case, time_s=statistics.median(times), runs=len(times),
               baseline_mib=baseline, peak_mib=rss_mib())
    if cuda:
        out["baseline_mib"] = cuda_base / 2**20
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# --------------------------------------------------------------------------------------
# Parent: the grid of cases and the table
# --------------------------------------------------------------------------------------


def naive_estimate_gib(case: dict, positions: int, keys: int) -> float:
    """Rough bytes held by the explicit form during forward + backward (N×N_s float32 each)."""
    d = case["channels"] // 2
    per_pair = 4 * d + 4 if case["mode"] == "concatenation" else 4  # (B, 2d, N, Ns) tensor and its grad
    return case["batch"] * positions * keys * per_pair * 4 / 2**30


def grid(args) -> list[dict]:
    cases = []
    shapes = [(2, 2, (s, s)) for s in args.sizes] if 2 in args.dims else []
    shapes += [(3, 1, (args.frames, s, s)) for s in args.sizes_3d] if 3 in args.dims else []
    for dim, batch, spatial in shapes:
        N = 1
        for s in spatial:
            N *= s
        Ns = N
        if args.sub_sample:  # max-pooling 2×2 over (H, W), T kept; sides floor
            Ns = (spatial[-2] // 2) * (spatial[-1] // 2) * (spatial[0] if dim == 3 else 1)
        for mode in args.modes:
            variants = [("naive", "sorted"), ("fast", "sorted")]
            if mode == "concatenation":
                variants = [("naive", "sorted")] + [("fast", a) for a in args.concat_algorithms]
            for impl, algorithm in variants:
                label = f"{mode}/{algorithm}" if mode == "concatenation" and impl == "fast" else mode
                case = dict(dim=dim, spatial=list(spatial), batch=batch, channels=args.channels, mode=mode,
                            label=label, implementation=impl, concat_algorithm=algorithm,
                            sub_sample=args.sub_sample, dtype=args.dtype,
                            device=args.device, repeat=args.repeat, budget=args.budget, N=N, Ns=Ns)
                est = naive_estimate_gib(case, N, Ns)
                if impl == "naive" and est > args.naive_max_gib:
                    case["skipped"] = f"est. {est:.0f} GiB > --naive-max-gib {args.naive_max_gib:g}"
                cases.append(case)
    return cases


def run_child(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timeout {timeout:.0f}s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return dict(case, error=tail[:60] if proc.returncode > 0 else f"killed (signal {-proc.returncode})")
    return json.loads(lines[-1])


def fmt_time(r):
    if r is None:
        return "-"
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "failed"
    return f"{r['time_s']:.3g}" + ("*" if r["runs"] == 1 else "")


def fmt_mem(r, key="peak_mib"):
    if r is None or "time_s" not in r:
        return "-"
    return f"{r[key]:.0f}" if key == "peak_mib" else f"{r['peak_mib'] - r['baseline_mib']:.0f}"


def ratio(a, b, key):
    if a is None or b is None or "time_s" not in a or "time_s" not in b:
        return None
    if key == "time":
        return a["time_s"] / b["time_s"]
    if key == "peak":
        return b["peak_mib"] / a["peak_mib"]
    da, db = a["peak_mib"] - a["baseline_mib"], b["peak_mib"] - b["baseline_mib"]
    return db / da if da > 0 else None


def table(results: list[dict], args) -> str:
    by_key, naive = {}, {}
    for r in results:
        if r["implementation"] == "naive":
            naive[(r["dim"], tuple(r["spatial"]), r["mode"])] = r
        else:
            by_key[(r["dim"], tuple(r["spatial"]), r["label"])] = {
                "fast": r, "naive": naive.get((r["dim"], tuple(r["spatial"]), r["mode"]))}
    head = ("dim", "shape", "N", "Ns", "mode", "naive s", "fast s", "naive/fast",
            "naive MiB", "fast MiB", "fast/naive", "naive +MiB", "fast +MiB", "fast/naive +")
    rows = [head]
    for (dim, spatial, mode), pair in by_key.items():
        n, f = pair.get("naive"), pair.get("fast")
        any_r = n or f
        rt, rp, rd = ratio(n, f, "time"), ratio(n, f, "peak"), ratio(n, f, "delta")
        rows.append((f"{dim}D", "×".join(map(str, spatial)), str(any_r["N"]), str(any_r["Ns"]), mode,
                     fmt_time(n), fmt_time(f), f"{rt:.2f}" if rt else "-",
                     fmt_mem(n), fmt_mem(f), f"{rp:.2f}" if rp else "-",
                     fmt_mem(n, "delta"), fmt_mem(f, "delta"), f"{rd:.3f}" if rd else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for r in results:
        if "skipped" in r or "error" in r:
            notes.append(f"  {r['dim']}D {'×'.join(map(str, r['spatial']))} {r['label']} {r['implementation']}: "
                         f"{r.get('skipped') or r.get('error')}")
    unit = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS of the whole process"
    legend = (f"time: median fwd+bwd seconds (* = a single run, slower than --budget); MiB: {unit}; "
              f"+MiB: peak minus baseline after import")
    return "\n".join([legend, *lines] + (["skipped / failed:", *notes] if notes else []))


def find(results, dim, spatial, label, impl):
    for r in results:
        if (r["dim"], tuple(r["spatial"]), r["label"], r["implementation"]) == (dim, tuple(spatial), label, impl):
            return r
    return None


def targets(results, args) -> list[str]:
    lines = []
    if args.sub_sample:
        return ["targets: defined without sub-sampling; run without --sub-sample to check them"]
    n, f = find(results, 2, (64, 64), "embedded", "naive"), find(results, 2, (64, 64), "embedded", "fast")
    rt, rp = ratio(n, f, "time"), ratio(n, f, "peak")
    if rt is None:
        lines.append("TARGET embedded 2D B=2 C=256 64×64: not measured")
    else:
        lines.append(f"TARGET embedded 2D B=2 C=256 64×64, time naive/fast >= 2: "
                     f"{'PASS' if rt >= 2 else 'FAIL'} ({rt:.2f}x)")
        lines.append(f"TARGET embedded 2D B=2 C=256 64×64, peak RSS fast/naive <= 0.5: "
                     f"{'PASS' if rp <= 0.5 else 'FAIL'} ({rp:.2f}; {f['peak_mib']:.0f} vs {n['peak_mib']:.0f} MiB, "
                     f"above baseline {ratio(n, f, 'delta'):.3f})")
    n, f = find(results, 2, (128, 128), "dot", "naive"), find(results, 2, (128, 128), "dot", "fast")
    rt = ratio(n, f, "time")
    lines.append("TARGET dot 2D N=16384 (128×128), time naive/fast >= 10: " +
                 ("not measured" if rt is None else f"{'PASS' if rt >= 10 else 'FAIL'} ({rt:.1f}x)"))
    labels = [m for m in args.modes if m != "concatenation"]
    labels += [f"concatenation/{a}" for a in args.concat_algorithms] if "concatenation" in args.modes else []
    for mode in labels:
        f = find(results, 3, (args.frames, 56, 56), mode, "fast")
        if f is None or "time_s" not in f:
            lines.append(f"TARGET 3D T={args.frames} 56×56 {mode} fast fwd+bwd < 2 GB: not measured")
            continue
        gb = f["peak_mib"] * 2**20 / 1e9
        lines.append(f"TARGET 3D T={args.frames} 56×56 {mode} fast fwd+bwd < 2 GB: "
                     f"{'PASS' if gb < 2 else 'FAIL'} ({gb:.2f} GB peak, {f['time_s']:.1f} s)")
    return lines


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: torch.autocast")
    p.add_argument("--quick", action="store_true", help="2D 32², 64² and 3D 28² only")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--dims", default="2,3")
    p.add_argument("--sizes", default="32,64,128", help="2D sides (B=2)")
    p.add_argument("--sizes-3d", default="28,56", help="3D sides (B=1, T=--frames)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--sub-sample", action="store_true", help="max-pool φ and g (default: off)")
    p.add_argument("--concat-algorithms", default="sorted,chunked", help="fast paths of concatenation")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case at most")
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per case")
    p.add_argument("--naive-max-gib", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    args = p.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return

    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"--modes must be among {MODES}, got {bad}")
    args.concat_algorithms = [a for a in args.concat_algorithms.split(",") if a]
    args.dims = ints(args.dims)
    args.sizes, args.sizes_3d = ints(args.sizes), ints(args.sizes_3d)
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 64] or args.sizes[:1]
        args.sizes_3d = args.sizes_3d[:1]

    import torch

    print(f"non-local block benchmark: torch {torch.__version__}, device {args.device}, "
          f"{torch.get_num_threads()} threads, dtype {args.dtype}, C={args.channels}, "
          f"sub_sample={args.sub_sample}, load average {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    t_start = time.perf_counter()
    for case in grid(args):
        r = case if "skipped" in case else run_child(case, args.timeout)
        results.append(r)
        status = r.get("skipped") or r.get("error") or f"{r['time_s']:.3f} s, peak {r['peak_mib']:.0f} MiB"
        print(f"  [{time.perf_counter() - t_start:6.0f}s] {r['dim']}D {'×'.join(map(str, r['spatial']))} "
              f"{r['label']:<21} {r['implementation']:<5} {status}", file=sys.stderr, flush=True)
    print(table(results, args))
    print("\n".join(targets(results, args)))
    print(f"total {time.perf_counter() - t_start:.0f} s; load average (1, 5, 15 min) at the end: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
