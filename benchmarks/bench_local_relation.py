"""Benchmark the two implementations of nltutorial.LocalRelation2d: "shift" (default) vs "unfold".

For each C, a 7×7 local relation layer (m = 8) on a (1, C, 56, 56) input: time (median of
--reps runs after one warm-up, the two implementations interleaved so that a loaded machine
slows both alike) and peak tensor memory (``nltutorial.cost.peak_memory``: bytes of
intermediates and outputs, exact and machine-independent) of

* forward, inference (``torch.inference_mode``);
* forward + backward (x and the parameters need gradients; loss = y.sum()).

The "shift" loop is a registered operator (``nltutorial::local_relation_shift`` and its
backward), which ``peak_memory`` sees as one kernel: its outputs count, its scratch tensors
(a few G-channel maps, and in the backward one C-channel product per offset) do not. The
column "peak+scratch" therefore re-measures "shift" with the same Python kernels called
directly through an ``autograd.Function``, so that every intermediate is seen.

Compare the ratios (unfold / shift), not the absolute times: they come from one process.

    python benchmarks/bench_local_relation.py                 # C = 64, 256; 1 thread; 5 reps
    python benchmarks/bench_local_relation.py --threads 2 --reps 9 --channels 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import contextlib

import torch

from nltutorial import local_relation
from nltutorial.cost import peak_memory
from nltutorial.local_relation import LocalRelation2d

IMPLEMENTATIONS = ("shift", "unfold")


def forward(layer, x):
    with torch.inference_mode():
        return layer(x)


def forward_backward(layer, x):
    """loss = y.sum(); the backward runs inside the call (and inside peak_memory's tracking)."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    y = layer(x)
    y.sum().backward()
    return y


class _Visible(torch.autograd.Function):
    """The shift kernels without the operator wrapper, so that peak_memory sees their scratch."""

    @staticmethod
    def forward(ctx, q, key, value, prior, k, stride, kind):
        y, lse = local_relation._shift_forward(q, key, value, prior, k, stride, kind)
        ctx.save_for_backward(q, key, value, prior, y, lse)
        ctx.args = (k, stride, kind)
        ctx.mark_non_differentiable(lse)
        return y, lse

    @staticmethod
    def backward(ctx, grad_y, _grad_lse):
        q, key, value, prior, y, lse = ctx.saved_tensors
        gq, gk, gv, gp = local_relation._shift_backward(grad_y, q, key, value, prior, y, lse, *ctx.args, True, True)
        return gq, gk, gv, gp, None, None, None


@contextlib.contextmanager
def scratch_visible():
    op = local_relation._shift_op
    local_relation._shift_op = _Visible.apply
    try:
        yield
    finally:
        local_relation._shift_op = op


def median_times(fns, reps):
    """name -> median seconds; one warm-up each, then the functions interleaved rep by rep."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), k = {args.kernel_size}, "
          f"B = {args.batch}, {args.size}×{args.size}, median of {args.reps}")
    header = f"{'C':>4} {'pass':<18} {'impl':<7} {'time ms':>9} {'peak MiB':>9} {'peak+scratch MiB':>17}"
    print(header)
    print("-" * len(header))
    summary = []
    for C in args.channels:
        layers = {impl: LocalRelation2d(C, C, kernel_size=args.kernel_size, m=8, implementation=impl)
                  for impl in IMPLEMENTATIONS}
        layers["unfold"].load_state_dict(layers["shift"].state_dict())
        x = torch.randn(args.batch, C, args.size, args.size)
        xg = x.clone().requires_grad_()
        with torch.inference_mode():
            err = (layers["shift"](x) - layers["unfold"](x)).abs().max().item()
        for label, fn, inp in (("forward (infer)", forward, x), ("forward+backward", forward_backward, xg)):
            t = median_times({impl: (lambda f=fn, l=layers[impl]: f(l, inp)) for impl in IMPLEMENTATIONS},
                             args.reps)
            mem, full = {}, {}
            for impl in IMPLEMENTATIONS:
                # forward_backward clears the grads first, so both count their allocation
                mem[impl] = peak_memory(fn, layers[impl], inp)
                with scratch_visible():
                    full[impl] = peak_memory(fn, layers[impl], inp)
                print(f"{C:>4} {label:<18} {impl:<7} {t[impl] * 1e3:>9.1f} {mem[impl] / 2**20:>9.2f} "
                      f"{full[impl] / 2**20:>17.2f}")
            summary.append((C, label, t["unfold"] / t["shift"], mem["unfold"] / mem["shift"],
                            full["unfold"] / full["shift"]))
        print(f"{C:>4} max |shift − unfold| (float32 forward): {err:.2e}")
    print()
    print("ratios unfold / shift (> 1: shift is better)")
    for C, label, rt, rm, rf in summary:
        print(f"  C = {C:>3}  {label:<18} time ×{rt:5.1f}   peak memory ×{rm:5.1f}   peak+scratch ×{rf:5.1f}")


if __name__ == "__main__":
    main()
