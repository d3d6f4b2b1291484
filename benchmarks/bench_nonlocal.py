"""Benchmark the non-local block's paths against AlexHex7's "Non-local_pytorch" layout.

One process, one case (mode × size × sub-sampling) after the other. For each case the same
weights run through

* ``alexhex7``: the explicit N×N_s map written the way the popular Non-local_pytorch code
  writes it (view / permute / matmul / softmax, ``repeat`` + ``cat`` for "concatenation"),
  an independent copy of that layout defined below;
* ``naive``, ``fast``, ``blocked`` (softmax modes), ``auto``:
  ``NonLocalBlock(implementation=...)`` ("auto" also says which path it took).

``--modules`` adds PAM (DANet) and SAGAN's self-attention (C = 64, batch 1, 16²..64²) with
their four implementations.

Time: forward + backward (a fixed random gradient on z), median of ``--repeat`` runs after
one warm-up, the paths interleaved and their order shuffled from run to run so that a
shared, drifting machine slows them alike. With one thread the clock is the process's CPU
time (``time.process_time``), otherwise wall time. Compare the ratios, not absolute times;
"±%" is half the spread of the middle runs. The summary checks the goals: "auto" no slower
than the explicit forms or "fast" by more than 5 % (a larger gap where "auto" ran the same
operations as the other path is listed as noise), and at least 0.8 of the GEMM rate in the
softmax modes at 64² and above.

GEMM fraction: the analytic FLOPs of the forward + backward (below) divided by the time and
by this CPU's fp32 GEMM rate, measured in the same process at the same thread count with a
1024×1024×1024 matmul timed in every run of every case (median). FLOPs, 2 per multiply-add,
backward = 2 × forward: the 1×1 convolutions (θ, φ, g: 2BNCd each, W_z: 2BNdC) plus the
attention products of the path: 2BN·N_s(dq + dv) for the explicit map, the blocked map and
the fused kernel (their recomputation in the backward pass, the kernel's padding and the
blocked map's rebuilt blocks above 2^27 pairs, is overhead, not counted), 2B(N + N_s)dq·dv for the
reordered "dot", 2BN·N_s(2d + d) for the explicit "concatenation" and 6B(N + N_s)d for its
sorted path. Pooling, softmax, BatchNorm and elementwise work are not counted.

Memory: ``nltutorial.cost.peak_memory`` of one forward + backward: the peak of tensor bytes
allocated (intermediates, outputs, gradients), exact and independent of the machine; the
fused attention kernel's private scratch is not seen. Explicit forms whose N×N_s tensors
are estimated above ``--naive-max-gib`` are skipped.

    python benchmarks/bench_nonlocal.py --quick                 # 2D 16²..64², 3D 4×14²: ~8 min
    python benchmarks/bench_nonlocal.py                         # the whole grid: about an hour
    python benchmarks/bench_nonlocal.py --sizes none --sizes-3d none --modules all
    python benchmarks/bench_nonlocal.py --modes embedded --sizes 32,64 --sizes-3d none --sub-sample on
    python benchmarks/bench_nonlocal.py --threads 2 --out results/bench_nonlocal_cpu.txt
    python benchmarks/bench_nonlocal.py --device cuda --dtype bf16 --modules all

``--device cuda``: wall time with the device synchronised around every timed call, the GEMM
rate of the device in ``--dtype``, the peak of tensor bytes as on the CPU; ``--dtype`` casts
the weights and inputs (bf16 / fp16 are for GPUs: on a CPU they measure emulated arithmetic).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nltutorial.cost import peak_memory  # noqa: E402
from nltutorial.danet import PositionAttention  # noqa: E402
from nltutorial.nonlocal_block import (MODES, SOFTMAX_MODES, NonLocalBlock, choose_implementation,  # noqa: E402
                                       wake)
from nltutorial.sagan import SelfAttention2d  # noqa: E402

PATHS = ("alexhex7", "naive", "fast", "blocked", "auto")
GEMM_SIZE = 1024
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------
# The reference layout (Non-local_pytorch's submodule names, explicit pair matrix)
# --------------------------------------------------------------------------------------


class ReferenceLayout(nn.Module):
    """The non-local block as AlexHex7's Non-local_pytorch computes it; loads our state dicts."""

    def __init__(self, in_channels, inter_channels, dimension, mode, sub_sample):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dimension]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dimension]
        pool = {1: nn.MaxPool1d(2), 2: nn.MaxPool2d((2, 2)), 3: nn.MaxPool3d((1, 2, 2))}[dimension]
        self.mode, self.inter_channels = mode, inter_channels
        self.g = conv(in_channels, inter_channels, 1)
        self.W = nn.Sequential(conv(inter_channels, in_channels, 1), norm(in_channels))
        if mode != "gaussian":
            self.theta = conv(in_channels, inter_channels, 1)
            self.phi = conv(in_channels, inter_channels, 1)
        if mode == "concatenation":
            self.concat_project = nn.Sequential(nn.Conv2d(2 * inter_channels, 1, 1, bias=False), nn.ReLU())
        if sub_sample:
            self.g = nn.Sequential(self.g, pool)
            self.phi = pool if mode == "gaussian" else nn.Sequential(self.phi, pool)

    def forward(self, x):
        b, d = x.size(0), self.inter_channels
        g_x = self.g(x).view(b, d, -1).permute(0, 2, 1)                 # (B, Ns, d)
        if self.mode == "gaussian":
            theta_x = x.view(b, x.size(1), -1).permute(0, 2, 1)         # (B, N, C)
            phi_x = (self.phi(x) if hasattr(self, "phi") else x).view(b, x.size(1), -1)  # (B, C, Ns)
        else:
            theta_x = self.theta(x).view(b, d, -1)                      # (B, d, N)
            phi_x = self.phi(x).view(b, d, -1)                          # (B, d, Ns)
        if self.mode == "concatenation":
            n, ns = theta_x.size(2), phi_x.size(2)
            pairs = torch.cat([theta_x.unsqueeze(3).repeat(1, 1, 1, ns),
                               phi_x.unsqueeze(2).repeat(1, 1, n, 1)], dim=1)  # (B, 2d, N, Ns)
            f_div_c = self.concat_project(pairs).view(b, n, ns) / ns
        else:
            if self.mode != "gaussian":
                theta_x = theta_x.permute(0, 2, 1)                      # (B, N, d)
            f = torch.matmul(theta_x, phi_x)                            # (B, N, Ns)
            f_div_c = f / f.size(-1) if self.mode == "dot" else F.softmax(f, dim=-1)
        y = torch.matmul(f_div_c, g_x)                                  # (B, N, d)
        y = y.permute(0, 2, 1).contiguous().view(b, d, *x.size()[2:])
        return self.W(y) + x


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def explicit_gib(case, d) -> float:
    """Rough peak of an explicit form: four N×N_s float32 tensors ("concatenation": 4 × 2d)."""
    per_pair = 8 * d if case["mode"] == "concatenation" else 4
    return case["batch"] * case["N"] * case["Ns"] * per_pair * 4 / 2**30


def flops(case, path, C, d) -> float:
    """Forward + backward FLOPs of the block on ``path`` ("naive"/"fast"; see the docstring)."""
    B, N, Ns, mode = case["batch"], case["N"], case["Ns"], case["mode"]
    dq = C if mode == "gaussian" else d
    convs = 2 * B * N * C * d * (2 if mode == "gaussian" else 4)
    if mode == "concatenation":
        attn = 2 * B * N * Ns * 3 * d if path == "naive" else 6 * B * (N + Ns) * d
    elif mode == "dot" and path == "fast":
        attn = 2 * B * (N + Ns) * dq * d
    else:
        attn = 2 * B * N * Ns * (dq + d)
    return 3 * (convs + attn)


def spread(times) -> float:
    """Half the spread of the runs without the fastest and the slowest, relative to the median."""
    t = sorted(times)
    inner = t[1:-1] if len(t) > 2 else t
    return (inner[-1] - inner[0]) / 2 / statistics.median(t)


def clock(args):
    """The timer: CPU time of the process for one CPU thread, else wall time (synchronised on CUDA)."""
    if args.device.startswith("cuda"):
        def tick():
            torch.cuda.synchronize(args.device)
            return time.perf_counter()
        return tick
    return time.process_time if args.threads == 1 else time.perf_counter


def gemm_seconds(a, b, tick) -> float:
    t0 = tick()
    a @ b
    return tick() - t0


def fwd_bwd(model, x, grad_z, before=None):
    """One forward + backward of ``model`` on x (its gradients cleared first): z."""
    def run(inp=x):
        if before is not None:
            before()
        model.zero_grad(set_to_none=True)
        inp.grad = None
        z = model(inp)
        z.backward(grad_z)
        return z
    return run


def measure_paths(steps: dict, x, args) -> dict:
    """path -> dict(time, noise, peak, err, gemm): interleaved timed runs of every step."""
    paths = list(steps)
    tick = clock(args)
    a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE, device=args.device, dtype=args.torch_dtype) for _ in "ab")
    outputs = {}
    for p in paths:                                            # warm-up, and the values to compare
        z = steps[p]().detach()
        outputs[p] = (z - x.detach(), x.grad.clone())
    gemm_seconds(a, b, tick)
    times, gemms, order = {p: [] for p in paths}, [], random.Random(0)
    for _ in range(args.repeat):
        for p in order.sample(paths, len(paths)):             # a new order every run: no fixed neighbour
            t0 = tick()
            steps[p]()
            times[p].append(tick() - t0)
        gemms.append(gemm_seconds(a, b, tick))
    gemm_rate = 2 * GEMM_SIZE**3 / statistics.median(gemms)
    base_y, base_g = outputs[paths[0]]
    out = {}
    for p in paths:
        y, g = outputs[p]
        err = max(float((y - base_y).abs().max() / base_y.abs().max()),
                  float((g - base_g).abs().max() / base_g.abs().max()))
        out[p] = dict(time=statistics.median(times[p]), noise=spread(times[p]), err=err, gemm=gemm_rate,
                      peak=peak_memory(steps[p], x) if args.memory else float("nan"))
    return out


def on_device(pair, args):
    """(x, grad_z) from a (2, ...) CPU tensor: on --device in --dtype, x a leaf needing a gradient."""
    x, grad_z = pair.to(args.device, args.torch_dtype)
    return x.requires_grad_(), grad_z


def run_case(case, args) -> list[dict]:
    """The non-local block on one case: the reference layout and the three implementations."""
    torch.manual_seed(0)
    C, dim = args.channels, case["dim"]
    block = wake(NonLocalBlock(C, dimension=dim, mode=case["mode"], sub_sample=case["sub_sample"]), seed=1).train()
    d = block.inter_channels
    ref = ReferenceLayout(C, d, dim, case["mode"], case["sub_sample"]).train()
    ref.load_state_dict(block.state_dict(), strict=True)
    block, ref = (m.to(args.device, args.torch_dtype) for m in (block, ref))
    x, grad_z = on_device(torch.randn(2, case["batch"], C, *case["spatial"]), args)
    explicit_ok = explicit_gib(case, d) <= args.naive_max_gib
    # "blocked" at every size: above BLOCKED_MAX_PAIRS it rebuilds the map (O(N) memory)
    paths = [p for p in PATHS if (explicit_ok or p in ("fast", "blocked", "auto"))
             and (p != "blocked" or case["mode"] in SOFTMAX_MODES)]
    taken = {"alexhex7": "naive", "naive": "naive", "fast": "fast", "blocked": "blocked",
             "auto": block.implementation_for(x)}

    def use(path):
        return lambda: setattr(block, "implementation", path)

    steps = {p: fwd_bwd(ref, x, grad_z) if p == "alexhex7" else fwd_bwd(block, x, grad_z, use(p)) for p in paths}
    results = measure_paths(steps, x, args)
    block.implementation = "auto"
    return [dict(case, path=p, taken=taken[p], frac=flops(case, taken[p], C, d) / r["time"] / r["gemm"], **r)
            for p, r in results.items()]


#: PAM and SAGAN, C = 64 as in the book: label -> constructor
MODULES = {"PAM": lambda C: PositionAttention(C), "SAGAN": lambda C: SelfAttention2d(C),
           "SAGAN-ICML": lambda C: SelfAttention2d(C, value_rd_ratio=1 / 8),
           "SAGAN-official": lambda C: SelfAttention2d(C, value_rd_ratio=1 / 2, pool=True)}


def run_module_case(label, C, side, args) -> list[dict]:
    """PAM or SAGAN on a (1, C, side, side) map: "naive", "fast" and "auto"; FLOPs as for the block."""
    torch.manual_seed(0)
    module = MODULES[label](C).train()
    with torch.no_grad():
        module.gamma.fill_(0.5)                                # not the identity
    module.to(args.device, args.torch_dtype)
    x, grad_z = on_device(torch.randn(2, 1, C, side, side), args)
    pool = getattr(module, "pool", False)
    N = side * side
    Ns = (side // 2) ** 2 if pool else N
    dq, dv = module.rd_channels, getattr(module, "value_channels", C)
    case = dict(dim=2, batch=1, spatial=(side, side), sub_sample=pool, mode=label, N=N, Ns=Ns)
    convs = 2 * N * C * (2 * dq + dv) + (2 * N * dv * C if getattr(module, "v", None) is not None else 0)
    taken = {"naive": "naive", "fast": "fast", "blocked": "blocked",
             "auto": choose_implementation("embedded", 1, N, Ns, dq, dv, grad=True, device=x.device.type)}

    def use(path):
        return lambda: setattr(module, "implementation", path)

    steps = {p: fwd_bwd(module, x, grad_z, use(p)) for p in ("naive", "fast", "blocked", "auto")}
    results = measure_paths(steps, x, args)
    module.implementation = "auto"
    return [dict(case, path=p, taken=taken[p], frac=3 * (convs + 2 * N * Ns * (dq + dv)) / r["time"] / r["gemm"], **r)
            for p, r in results.items()]


# --------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------


def grid(args) -> list[dict]:
    shapes = [(2, args.batch, (s, s)) for s in args.sizes] + [(3, 1, s) for s in args.sizes_3d]
    cases = []
    for dim, batch, spatial in shapes:
        for sub_sample in args.sub_sample:
            N = math.prod(spatial)
            Ns = math.prod(s // k for s, k in zip(spatial, (1, 2, 2)[-len(spatial):])) if sub_sample else N
            for mode in args.modes:
                cases.append(dict(dim=dim, batch=batch, spatial=spatial, sub_sample=sub_sample, mode=mode, N=N, Ns=Ns))
    return cases


def shape_label(r) -> str:
    return f"{r['batch']}×" + "×".join(map(str, r["spatial"])) + ("/2" if r["sub_sample"] else "")


def format_rows(rows) -> list[str]:
    head = ("case", "mode", "path", "took", "ms", "±%", "/alexhex7", "/naive", "peak MiB", "GEMM frac", "rel err")
    by_case = {}
    for r in rows:
        by_case.setdefault((shape_label(r), r["mode"]), {})[r["path"]] = r
    lines = [head]
    for (label, mode), paths in by_case.items():
        for p, r in paths.items():
            rel = lambda other: f"{r['time'] / paths[other]['time']:.2f}" if other in paths else "-"  # noqa: E731
            lines.append((label, mode, p, r["taken"], f"{1e3 * r['time']:.1f}", f"{100 * r['noise']:.0f}",
                          rel("alexhex7"), rel("naive"),
                          "-" if math.isnan(r["peak"]) else f"{r['peak'] / 2**20:.1f}", f"{r['frac']:.2f}",
                          f"{r['err']:.0e}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def summary(rows, tolerance=0.05) -> list[str]:
    """The issue's goals: "auto" no slower than naive, AlexHex7 (or fast) by more than noise, say
    5 %; GEMM >= 0.8 at 64² and above. A gap above 5 % where "auto" ran the same operations as
    the other path is listed as noise (no choice of path could have avoided it)."""
    cases = {}
    for r in rows:
        cases.setdefault((shape_label(r), r["mode"]), {})[r["path"]] = r
    worst, slow, noisy, fracs = None, [], [], []
    for key, paths in cases.items():
        auto = paths["auto"]
        for other in ("naive", "alexhex7", "fast", "blocked"):
            if other not in paths:
                continue
            ratio = auto["time"] / paths[other]["time"]
            if worst is None or ratio > worst[0]:
                worst = (ratio, key, other)
            if ratio <= 1 + tolerance:
                continue
            same = auto["taken"] == paths[other]["taken"]
            noise = 2 * max(auto["noise"], paths[other]["noise"])
            line = (f"{key[0]} {key[1]}: auto/{other} = {ratio:.2f} (runs ±{100 * noise:.0f} %; auto ran "
                    f"{'the same operations' if same else 'the ' + auto['taken'] + ' path'})")
            (noisy if same else slow).append(line)
        if auto["N"] >= 64 * 64 and auto["mode"] in ("gaussian", "embedded"):
            fracs.append((auto["frac"], key))
    lines = [f"auto against naive, alexhex7, fast and blocked: worst ratio {worst[0]:.2f} ({worst[1][0]} {worst[1][1]}, "
             f"/{worst[2]})" if worst else "no case measured"]
    lines.append(f"GOAL auto never slower than naive, alexhex7, fast or blocked by > {100 * tolerance:.0f} %: "
                 + ("PASS" if not slow else f"FAIL in {len(slow)} comparison(s)"))
    lines += ["  " + s for s in slow]
    if noisy:
        lines.append(f"  above {100 * tolerance:.0f} % between runs of the same operations (noise):")
        lines += ["    " + s for s in noisy]
    if fracs:
        low = min(fracs)
        lines.append(f"GOAL GEMM fraction >= 0.8 at N >= 64² (softmax modes, auto): "
                     f"{'PASS' if low[0] >= 0.8 else 'FAIL'} (lowest {low[0]:.2f}, {low[1][0]} {low[1][1]})")
    return lines


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ints(text: str) -> list[int]:
    return [] if text in ("", "none") else [int(t) for t in text.split(",")]


def shapes_3d(text: str) -> list[tuple]:
    """"4x14,8x28" -> [(4, 14, 14), (8, 28, 28)]."""
    out = []
    for item in ([] if text in ("", "none") else text.split(",")):
        t, _, s = item.partition("x")
        if not (t.isdigit() and s.isdigit()):
            raise argparse.ArgumentTypeError(f"--sizes-3d items must look like 8x28 (T x side), got {item!r}")
        out.append((int(t), int(s), int(s)))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<k>")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--quick", action="store_true", help="2D 16², 32², 64² and 3D 4×14² only")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--sizes", default="16,32,64,128", help="2D sides (batch --batch)")
    p.add_argument("--sizes-3d", type=shapes_3d, default="4x14,8x28,8x56", help="T x side, batch 1")
    p.add_argument("--sub-sample", choices=("both", "on", "off"), default="both")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--naive-max-gib", type=float, default=2.0)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    p.add_argument("--modules", default="", help=f"also these of {','.join(MODULES)} (C=64, batch 1), or 'all'")
    p.add_argument("--module-sizes", default="16,32,48,64", help="sides for --modules")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes must be among {MODES}, got {args.modes}")
    if args.threads < 1 or args.repeat < 1:
        p.error("--threads and --repeat must be >= 1")
    args.sizes, args.module_sizes = ints(args.sizes), ints(args.module_sizes)
    args.modules = list(MODULES) if args.modules == "all" else [m for m in args.modules.split(",") if m]
    if any(m not in MODULES for m in args.modules):
        p.error(f"--modules must be among {tuple(MODULES)} or 'all', got {args.modules}")
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 64]
        args.sizes_3d = [s for s in args.sizes_3d if math.prod(s) <= 4 * 14 * 14]
    args.sub_sample = {"both": (False, True), "on": (True,), "off": (False,)}[args.sub_sample]
    args.torch_dtype = DTYPES[args.dtype]
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device must name a torch device such as cpu or cuda, got {args.device!r} ({e})")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    torch.set_num_threads(args.threads)

    where = (f"{torch.cuda.get_device_name(device)} (wall time)" if device.type == "cuda" else
             f"{torch.get_num_threads()} thread(s) ({'CPU time' if args.threads == 1 else 'wall time'})")
    header = [f"non-local block benchmark: torch {torch.__version__}, {where}, {args.dtype}, C={args.channels}, "
              f"median of {args.repeat}, load average {os.getloadavg()[0]:.2f}",
              "case: batch×spatial (/2: sub-sampled); took: the path run; ms: fwd+bwd; /alexhex7, /naive: time "
              "ratios; peak: tensor MiB; GEMM frac: FLOPs / time / GEMM rate; rel err: vs the first path"]
    print("\n".join(header), flush=True)
    rows, t_start = [], time.perf_counter()
    jobs = [(run_case, (case, args)) for case in grid(args)]
    jobs += [(run_module_case, (label, 64, side, args)) for label in args.modules for side in args.module_sizes]
    for fn, fn_args in jobs:
        case_rows = fn(*fn_args)
        rows += case_rows
        print(f"  [{time.perf_counter() - t_start:5.0f}s] {shape_label(case_rows[0])} {case_rows[0]['mode']}: "
              + ", ".join(f"{r['path']} {1e3 * r['time']:.1f} ms" for r in case_rows), file=sys.stderr, flush=True)
    gemm = statistics.median(r["gemm"] for r in rows) if rows else float("nan")
    report = header + [f"GEMM: {gemm / 1e9:.1f} GFLOP/s ({args.dtype} {GEMM_SIZE}³ matmul, median over the cases)"]
    report += format_rows(rows) + [""] + summary(rows)
    report.append(f"total {time.perf_counter() - t_start:.0f} s; load average at the end "
                  + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    text = "\n".join(report[len(header):])
    print(text)
    if args.out:
        write_atomic(args.out, "\n".join(report) + "\n")


if __name__ == "__main__":
    main()
