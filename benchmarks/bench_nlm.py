"""Benchmark nltutorial.nl_means against scikit-image and OpenCV non-local means.

For every image and noise level, each method gets its best h from the same grid
of multiples of σ (best = highest PSNR), then is timed at that h (one warm-up,
median of --reps runs).  All methods use 5×5 patches and a 13×13 search window.

    python benchmarks/bench_nlm.py                       # camera, astronaut, brick; σ = 15, 25, 50
    python benchmarks/bench_nlm.py --images camera --sigmas 25 --quick
    python benchmarks/bench_nlm.py --device cuda         # time ours on the GPU as well
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage import data, img_as_float
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means

from nltutorial import nl_means

try:
    import cv2
except ImportError:  # OpenCV is optional
    cv2 = None

PATCH, SEARCH = 5, 13  # full widths; skimage: patch_size=5, patch_distance=6


def load(name: str) -> np.ndarray:
    """Bundled scikit-image picture as float64 in [0, 1]: (H, W) or (H, W, 3)."""
    return img_as_float(getattr(data, name)())


def metrics(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    out = np.asarray(out, dtype=np.float64)
    ch = -1 if clean.ndim == 3 else None
    return (peak_signal_noise_ratio(clean, out, data_range=1.0),
            structural_similarity(clean, out, data_range=1.0, channel_axis=ch))


def make_methods(noisy: np.ndarray, sigma: float, device: str):
    """name -> f(h_factor) returning the denoised image as float in [0, 1]; h = h_factor · σ."""
    colour = noisy.ndim == 3
    methods = {}

    noisy32 = noisy.astype(np.float32)

    def ours(k):
        return nl_means(noisy32, patch_size=PATCH, search_size=SEARCH, h=k * sigma, sigma=sigma)

    methods["nltutorial"] = ours

    if device == "cuda":
        noisy_gpu = torch.from_numpy(noisy32).cuda()

        def ours_cuda(k):
            out = nl_means(noisy_gpu, patch_size=PATCH, search_size=SEARCH, h=k * sigma, sigma=sigma)
            torch.cuda.synchronize()
            return out.cpu().numpy()

        methods["nltutorial-cuda"] = ours_cuda

    def skimage_fast(k):
        return denoise_nl_means(noisy, patch_size=PATCH, patch_distance=SEARCH // 2, h=k * sigma,
                                sigma=sigma, fast_mode=True, channel_axis=-1 if colour else None)

    methods["skimage-fast"] = skimage_fast

    if cv2 is not None:
        # OpenCV wants uint8: the noisy image is clipped and quantised, h is in 0–255 units.
        noisy8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
        s255 = sigma * 255

        def opencv(k):
            if colour:
                out = cv2.fastNlMeansDenoisingColored(noisy8, None, k * s255, k * s255, PATCH, SEARCH)
            else:
                out = cv2.fastNlMeansDenoising(noisy8, None, k * s255, PATCH, SEARCH)
            return out / 255.0

        methods["opencv"] = opencv
    return methods


def median_time(f, reps: int) -> float:
    f()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", default=["camera", "astronaut", "brick"])
    ap.add_argument("--sigmas", nargs="+", type=float, default=[15, 25, 50],
                    help="noise standard deviations in 0–255 units")
    ap.add_argument("--quick", action="store_true", help="coarser h grid and fewer timing runs")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 7, quick 3)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="also time nltutorial on this device (cuda needs a GPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")

    grid = np.arange(0.4, 1.41, 0.2) if args.quick else np.arange(0.3, 1.51, 0.1)
    reps = args.reps or (3 if args.quick else 7)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"OpenCV {cv2.__version__ if cv2 else 'not installed'}; patch {PATCH}x{PATCH}, "
          f"search {SEARCH}x{SEARCH}; h grid = σ x {np.round(grid, 2).tolist()}; median of {reps} runs\n")

    header = f"{'image':<10} {'σ':>4} {'method':<16} {'best h/σ':>8} {'PSNR':>7} {'SSIM':>7} " \
             f"{'time (s)':>9} {'t/t_sk':>7} {'ΔPSNR_sk':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.images:
        clean = load(name)
        for s in args.sigmas:
            sigma = s / 255
            rng = np.random.default_rng(args.seed)
            noisy = clean + sigma * rng.standard_normal(clean.shape)
            rows = {}
            for method, f in make_methods(noisy, sigma, args.device).items():
                if method == "nltutorial-cuda":  # same output as the CPU run: only time it
                    k = rows["nltutorial"]["k"]
                    psnr, ssim = rows["nltutorial"]["psnr"], rows["nltutorial"]["ssim"]
                else:
                    scores = [(metrics(clean, f(k)), k) for k in grid]
                    (psnr, ssim), k = max(scores, key=lambda t: t[0][0])
                rows[method] = dict(k=k, psnr=psnr, ssim=ssim, time=median_time(lambda: f(k), reps))
            sk = rows["skimage-fast"]
            for method, r in rows.items():
                edge = "*" if r["k"] in (grid[0], grid[-1]) else " "  # best h on the grid's edge
                print(f"{name:<10} {s:>4g} {method:<16} {r['k']:>7.2f}{edge} {r['psnr']:>7.2f} {r['ssim']:>7.4f} "
                      f"{r['time']:>9.4f} {r['time'] / sk['time']:>7.2f} {r['psnr'] - sk['psnr']:>+9.2f}")
            results[(name, s)] = rows
            print(flush=True)

    print("* best h on the edge of the h grid")
    target = results.get(("camera", 25.0))
    if target is None:
        print("Target case (camera, σ=25) not in this run.")
        return
    ours, sk = target["nltutorial"], target["skimage-fast"]
    line = (f"Target camera σ=25: PSNR ours {ours['psnr']:.2f} dB vs skimage {sk['psnr']:.2f} dB; "
            f"time ratio ours/skimage = {ours['time'] / sk['time']:.2f} (target ≤ 1.0)")
    if "opencv" in target:
        line += f"; ours/OpenCV = {ours['time'] / target['opencv']['time']:.2f}"
    if "nltutorial-cuda" in target:
        line += f"; cuda/skimage = {target['nltutorial-cuda']['time'] / sk['time']:.3f}"
    print(line)


if __name__ == "__main__":
    main()
