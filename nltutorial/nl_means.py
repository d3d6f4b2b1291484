"""Classical non-local means (NL-means) denoising of images and videos.

Buades, Coll & Morel, "A non-local algorithm for image denoising", CVPR 2005;
"Nonlocal image and movie denoising", IJCV 76(2), 2008 (the space-time version);
"Non-Local Means Denoising", Image Processing On Line (IPOL), 2011.

NL-means replaces every pixel by a weighted average of the pixels of a search
window around it, weighting each candidate by how similar *its patch* is to the
patch of the pixel being denoised:

    d²(i, j) = Σ_k K(k) · mean_c (x_c(i + k) − x_c(j + k))²        (patch distance)
    w(i, j)  = exp(−max(d²(i, j) − 2σ², 0) / h²)                    (weight)
    u(i)     = Σ_j w(i, j) x(j) / Σ_j w(i, j)                       (output)

with k over the P×P patch offsets, K a patch kernel that sums to 1
(:func:`patch_kernel`), j over the S×S search window centred on i, σ the noise
standard deviation and h the filtering parameter.  Read as attention, the
normalised weights w(i, ·) / Σ_j w(i, j) are a softmax over the window of the
scores −max(d² − 2σ², 0) / h² (:func:`nl_means_weights` returns one such map).

Video (``video=True``): a pixel is i = (t, y, x) and the search window becomes the
space-time block j = (t + δ, y + dy, x + dx), |δ| ≤ τ (``temporal_radius``),
|dy|, |dx| ≤ S // 2 (Buades, Coll & Morel 2008).  Patches stay 2-D, P×P inside one
frame, so the distance compares the patch of i in frame t with the patch of j in
frame t + δ:

    d²(i, j) = Σ_k K(k) · mean_c (x_c(t, p + k) − x_c(t + δ, p + o + k))²,   i = (t, p), j = (t + δ, p + o).

τ = 0 is frame-by-frame denoising.  No motion estimation: the patch similarity finds
the content that moved, as long as it stays inside the S×S window (content moving
faster than S // 2 pixels a frame only finds worse matches in the other frames).

Conventions of this module
--------------------------
* Boundary: each frame is mirror-padded in space (NumPy's ``mode="reflect"``: the
  edge pixel is not repeated), so every pixel has a full S×S window and every
  candidate a full patch.  For frames smaller than the padding the mirroring is
  repeated periodically, so any size ≥ 1×1 works.
* Time is *clipped*, not mirrored: frame t searches the frames t + δ that exist,
  0 ≤ t + δ < T, so the first and last τ frames have a shorter window (and with
  τ ≥ T − 1 every frame searches the whole clip).  Mirroring would repeat real
  frames (frame 0 would see frame 1 twice, as itself and as the mirror of frame
  −1), doubling their weights.
* Centre weight: w(i, i) would always be exp(0) = 1, which over-weights the noisy
  pixel itself.  As in Buades et al. we use w(i, i) = max_{j ≠ i} w(i, j), the max
  over the whole (space-time) window, floored at the smallest positive float32, so
  that u(i) = x(i) instead of 0/0 when every other weight underflows.  On the
  benchmark images (``benchmarks/bench_nlm.py``) this gave a best-h PSNR equal or
  higher than w(i, i) = 1 in 6 of 9 image/noise cases (up to +0.1 dB on colour images).
* Gaussian patch kernel: K(k) ∝ exp(−|k|² / (2a²)) with a = P / 3 (the patch
  spans ±1.5 a); a = P/3 was within 0.01 dB of the best a for P = 5 on camera.
* Arithmetic is float32 (torch), on the device of the input tensor.  So the image
  must fit float32 (a float64 image beyond ±3.4e38 is refused as such), and h must not
  be so small that every weight exp(−d²/h²) with j ≠ i underflows float32: then the
  output would be the input, and ValueError says the smallest usable h instead.

How the fast version computes it
--------------------------------
:func:`nl_means` loops over the search offsets o = (δ, dy, dx) instead of the pixels:
for one offset, d²(i, i + o) for *all* pixels i is a squared difference of the frame
and its shifted copy, filtered by K (separable: K = g gᵀ, two 1-D passes).  What makes
it fast:

* Symmetry: d²(i, i + o) = d²(i + o, i), so the map of offset −o is the map of o
  shifted by o.  Only half of the offsets are visited (δ > 0; δ = 0 and dy > 0;
  δ = dy = 0 and dx > 0); each map is used twice, for w(i, i + o) and w(j, j − o).
* Batching: up to 13 offsets dx of one (δ, dy) row of the window, for several frame
  pairs (t, t + δ), go through every step as one tensor (a strided view of the padded
  frames, no copy), so each torch operation works on ~5·10⁵ values and the
  per-operation overhead is amortised; rows of the image are processed in bands of
  equal height (the last one overlaps its neighbour) so that these tensors stay cache-sized.
* Views built once: each band is copied into the same buffer, so the ~30 strided views
  of every batch (inputs, scratch, accumulators) are built for the first band only and
  reused; the loop then runs ~20 torch operations per batch and nothing else.
* Small working set: the tensors of a batch that are never live together share one
  work buffer (squared differences → first pass → second pass → products), so a batch
  touches ~2.3 times its map size instead of ~5 (this alone was worth ~20 % of the time).
* The first filter pass (along the rows) is one matrix product per batch, with a band
  Toeplitz matrix of g over blocks of 4 rows (a GEMM reads its input once); the second
  is P − 1 shifted multiply-adds on flat, contiguous views (a map keeps the row stride of
  the first pass; the 2 pr extra columns of each row are never read).
* Constants are folded: 1/C, −1/h², log₂e and g₀ go into the first pass, 1/g₀ into the
  second (whose first operation then adds two taps), and −2σ² into the squared
  differences ((x − y)² − 2σ² is one fused multiply-add), so the filters give log₂ w
  directly and the weights are exp2 (half the cost of exp).
* Accumulation: the weights w and the products w·x sit in one strided tensor
  z = [w·x, w], so that Σ_n over a batch of [w·x, w] is one reduction for the pixels i
  (w(i, i + o_n)) and one for the pixels j (w(j, j − o_n): a view whose stride over n is
  one less than the row length).
* Threads: with torch.get_num_threads() = n > 1 on the CPU the bands run in n threads
  (one torch thread each), which need no synchronisation between operations; the calling
  thread runs single-threaded meanwhile (an idle OpenMP team would otherwise spin on a core).
  The loop over a band's batches is compiled by TorchScript, so that it runs without taking
  Python's GIL between operations: as plain Python, two threads handing the GIL back and
  forth ~20 times per batch lost 4-8 % of the two-thread time.

The results agree with the loop formula to float32 rounding (≈ 1e-6).
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple

import numpy as np
import torch

__all__ = ["nl_means", "nl_means_weights", "patch_embeddings", "patch_kernel"]

_WEIGHTINGS = ("gaussian", "uniform")

# Values per batched tensor (6 MiB of float32): the band height and the number of frame
# pairs per batch are chosen to stay near it.  Big enough to amortise the per-operation
# overhead and to keep the band margins (|dy| + P − 1 extra rows per map) small, small enough
# that the work buffers of two threads (~2.3 maps each) stay in a 32 MiB L3 cache; also bounds
# memory for huge inputs.  (Tuned on a 512² image, P/S = 5/13 and 7/21, 1 and 2 threads,
# against OpenCV in one process: 2^19 was 5-12 % slower than this at 7/21, 2^21 and up
# slower again, as the maps leave the cache.)
_BATCH_VALUES = 3 << 19
# Most offsets dx per batch (a row of the window is split in equal pieces of at most this).
_MAX_DX_BATCH = 13
# Rows per block of the first filter pass, a matrix product (GEMM) with a band Toeplitz matrix.
_GEMM_ROWS = 4
# Fewest rows per band (fewer would spend most of the work on the band's margins).
_MIN_BAND_ROWS = 16

# Smallest positive normal float32: floor of the centre weight (see module doc).
_TINY = float(np.finfo(np.float32).tiny)
# log of it: a log-weight below this underflows the float32 weights (≈ −87.3).
_LOG_TINY = math.log(_TINY)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LOG2_E = 1.0 / math.log(2.0)
_OPENMP = None            # whether torch's CPU threads are OpenMP's (then per-thread counts work)


# --------------------------------------------------------------------------- #
# Patch kernel
# --------------------------------------------------------------------------- #
def _kernel_1d(patch_size: int, patch_weighting: str) -> np.ndarray:
    """1-D factor g of the separable patch kernel, K = g gᵀ, with Σ g = 1.  Shape (P,)."""
    r = patch_size // 2
    k = np.arange(-r, r + 1, dtype=np.float64)  # (P,) offsets −r … r
    if patch_weighting == "uniform":
        g = np.ones_like(k)
    else:  # "gaussian", a = P / 3
        a = patch_size / 3.0
        g = np.exp(-(k**2) / (2.0 * a * a))
    return g / g.sum()


def patch_kernel(patch_size: int = 7, patch_weighting: str = "gaussian") -> np.ndarray:
    """Normalised patch kernel K of shape (P, P), float64, with Σ_k K(k) = 1.

    ``"uniform"``:  K(k) = 1 / P².
    ``"gaussian"``: K(k) ∝ exp(−|k|² / (2a²)), a = P / 3, k ∈ {−r … r}², r = (P − 1) / 2.
    Both are separable: K = g gᵀ, which the fast implementation exploits.
    """
    _check_size(patch_size, "patch_size")
    _check_weighting(patch_weighting)
    g = _kernel_1d(patch_size, patch_weighting)
    return np.outer(g, g)


# --------------------------------------------------------------------------- #
# Validation and conversion
# --------------------------------------------------------------------------- #
def _check_size(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive odd int, got {value!r}")
    if value <= 0 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int, got {value!r}")


def _check_weighting(patch_weighting) -> None:
    if patch_weighting not in _WEIGHTINGS:
        raise ValueError(
            f"patch_weighting must be 'gaussian' or 'uniform', got {patch_weighting!r}"
        )


def _check_params(patch_size, search_size, h, sigma, patch_weighting) -> tuple[float, float]:
    _check_size(patch_size, "patch_size")
    _check_size(search_size, "search_size")
    _check_weighting(patch_weighting)
    try:
        h = float(h)
    except (TypeError, ValueError):
        raise ValueError(f"h must be a finite number > 0, got {h!r}") from None
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return h, sigma


def _check_temporal(temporal_radius, video) -> int:
    """``video`` must be a bool, τ an int ≥ 0, and > 0 only for a video."""
    if not isinstance(video, bool):
        raise ValueError(f"video must be True or False, got {video!r}")
    if (isinstance(temporal_radius, bool) or not isinstance(temporal_radius, numbers.Integral)
            or temporal_radius < 0):
        raise ValueError(f"temporal_radius must be an int >= 0 (frames searched on each side), "
                         f"got {temporal_radius!r}")
    if temporal_radius > 0 and not video:
        raise ValueError(f"temporal_radius={temporal_radius} needs a clip: pass video=True and an "
                         f"array of shape (T, H, W) or (T, H, W, 3)")
    return int(temporal_radius)


def _to_tchw(image, video: bool = False):
    """Validate ``image`` and return (x, back): x a float32 (T, C, H, W) tensor, back(y) undoes it.

    An image (H, W) or (H, W, 3) gives T = 1; with ``video=True`` a clip (T, H, W) or
    (T, H, W, 3).  The shapes (H, W, 3) and (T, H, W) are told apart only by ``video``.
    """
    if isinstance(image, np.ndarray):
        is_numpy = True
        dtype = image.dtype
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(
                f"image must be a floating-point array with values in [0, 1], got dtype {dtype} "
                "(convert it, e.g. with skimage.img_as_float)"
            )
        with np.errstate(over="ignore"):                    # a float32 overflow is reported below
            t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    elif isinstance(image, torch.Tensor):
        is_numpy = False
        dtype = image.dtype
        if not dtype.is_floating_point:
            raise ValueError(
                f"image must be a floating-point tensor with values in [0, 1], got dtype {dtype}"
            )
        t = image.detach().to(torch.float32)
    else:
        raise ValueError(
            f"image must be a numpy.ndarray or torch.Tensor, got {type(image).__name__}"
        )
    shape = tuple(t.shape)
    base = len(shape) - 1 if video else len(shape)          # ndim of one frame
    if video and not (t.ndim == 3 or (t.ndim == 4 and shape[3] == 3)):
        raise ValueError(f"image must have shape (T, H, W) or (T, H, W, 3) with video=True, "
                         f"got shape {shape}")
    if not video and not (t.ndim == 2 or (t.ndim == 3 and shape[2] == 3)):
        hint = " (for a clip (T, H, W) or (T, H, W, 3) pass video=True)" if t.ndim in (3, 4) else ""
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got shape {shape}{hint}")
    if t.numel() == 0:
        raise ValueError(f"image must be non-empty, got shape {shape}")
    if not bool(torch.isfinite(t).all()):
        _check_finite(image)

    x = t if video else t[None]                             # (T, H, W) or (T, H, W, 3)
    x = x[:, None] if base == 2 else x.permute(0, 3, 1, 2)  # (T, C, H, W), C ∈ {1, 3}
    x = x.contiguous()

    def back(y: torch.Tensor):  # y: (T, C, H, W) float32 -> the input's layout and type
        y = y[:, 0] if base == 2 else y.permute(0, 2, 3, 1)
        y = y if video else y[0]
        if is_numpy:
            return y.cpu().numpy().astype(dtype, copy=False)
        return y.to(dtype).contiguous()

    return x, back


def _check_finite(image) -> None:
    """Called when the float32 copy of ``image`` is not finite: say whether the input is."""
    values = image.detach().cpu().double().numpy() if isinstance(image, torch.Tensor) else image
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or Inf values")
    raise ValueError(f"image of dtype {image.dtype} has values up to {float(np.abs(values).max()):.3g}, "
                     f"beyond float32's range ±{_FLOAT32_MAX:.3g}: nl_means computes in float32; "
                     f"rescale the image (e.g. to [0, 1], with h and sigma in the same units)")


def _check_underflow(best_log_weight: float, h: float) -> None:
    """Raise ValueError naming h when every weight w(i, j), j ≠ i, of every pixel underflowed.

    ``best_log_weight`` is the largest −max(d² − 2σ², 0)/h² over all pixels and j ≠ i.
    """
    if best_log_weight >= _LOG_TINY:
        return
    h_min = h * math.sqrt(best_log_weight / _LOG_TINY)       # the h at which it reaches float32's tiny
    step = 10.0 ** (math.floor(math.log10(h_min)) - 2)      # rounded up to 3 significant digits
    h_min = math.ceil(h_min / step) * step
    raise ValueError(f"h={h:g} is too small for float32 on this image: every weight "
                     f"exp(−max(d² − 2σ², 0)/h²) with j ≠ i underflows to 0 (the largest is "
                     f"exp({best_log_weight:.4g})), so nothing would be averaged; use h >= {h_min:.3g} "
                     f"(h ≈ σ is a good start)")


def _reflect_pad(x: torch.Tensor, pad_h: int, pad_w: int | None = None) -> torch.Tensor:
    """Mirror-pad the last two axes: (..., H, W) -> (..., H + 2 pad_h, W + 2 pad_w).

    Same as NumPy ``mode="reflect"`` (…, x2, x1, | x0, x1, x2, …), repeated
    periodically when the padding exceeds the image size, so tiny images work too.
    ``pad_w`` defaults to ``pad_h``.
    """

    def index(n: int, pad: int) -> torch.Tensor:  # (n + 2 pad,) source index of each padded position
        i = torch.arange(-pad, n + pad, device=x.device)
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        i = torch.remainder(i, period)
        return torch.minimum(i, period - i)

    pad_w = pad_h if pad_w is None else pad_w
    H, W = x.shape[-2:]
    return x.index_select(-2, index(H, pad_h)).index_select(-1, index(W, pad_w))


# --------------------------------------------------------------------------- #
# Fast NL-means
# --------------------------------------------------------------------------- #
class _Plan(NamedTuple):
    """Sizes and folded constants shared by the batches of one call."""

    pr: int               # patch radius P // 2
    sr: int               # search radius S // 2
    pad_h: int            # row padding pr + sr + _GEMM_ROWS − 1 (the GEMM rounds the rows up)
    pad_w: int            # column padding pr + 2 sr (a batch of dx shifts its domain by up to sr)
    width: int            # W, columns of the frames
    g_rows: torch.Tensor  # (b, b + 2 pr) first pass: band Toeplitz of g · g₀ · (−log₂e / (C h²))
    g_cols: list          # second pass taps: g / g₀ (the first is 1)
    bias: torch.Tensor    # 0-dim, −2σ², subtracted from every squared difference


def _buffer(ws: dict, name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch tensor of at least ``numel`` values (garbage), kept in ``ws`` under ``name``."""
    buf = ws.get(name)
    if buf is None or buf.numel() < numel:
        buf = ws[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf


def _view(base: torch.Tensor, shape: tuple, strides: tuple, offset: int) -> torch.Tensor:
    """The strided view of ``base``'s storage at ``offset`` values after base's first value."""
    return base.as_strided(shape, strides, base.storage_offset() + offset)


def _row_filter_matrix(g: list, rows: int, device) -> torch.Tensor:
    """(rows, rows + P − 1) band Toeplitz matrix G, G[j, j + k] = g[k]: G @ X filters X's rows."""
    P = len(g)
    G = torch.zeros((rows, rows + P - 1), dtype=torch.float32)
    for j in range(rows):
        G[j, j:j + P] = torch.tensor(g, dtype=torch.float32)
    return G.to(device)


def _offset_batches(dt: int, sr: int, size: int) -> list[tuple[int, int, int]]:
    """(dy, dx0, n): the visited half of the offsets (dt, dy, dx) in batches dx0 … dx0 + n − 1, n ≤ size.

    dt > 0: every (dy, dx).  dt = 0: dy > 0 with every dx, and dy = 0 with dx > 0.
    """
    rows = [(dy, -sr) for dy in range(-sr, sr + 1)] if dt > 0 else \
        [(0, 1)] + [(dy, -sr) for dy in range(1, sr + 1)]         # (dy, first dx); the last dx is sr
    return [(dy, dx0, min(size, sr + 1 - dx0)) for dy, lo in rows for dx0 in range(lo, sr + 1, size)]


class _Batch(NamedTuple):
    """One batch: the offsets o_n = (δ, dy, dx0 + n), n < nb, for the query frames f0 … f0 + F − 1."""

    dt: int
    f0: int
    frames: int           # F
    dy: int
    dx0: int
    nb: int


class _Domain(NamedTuple):
    """Where the maps s_n(i) = log₂ w(i, i + o_n) of a batch are computed, in band coordinates.

    Rows y0 … y0 + rows − 1 and columns x0 … x0 + cols − 1: the union of the band's pixels i
    (for w(i, i + o_n)) and of the pixels j − o_n, j in the band (for w(j, j − o_n)).
    """

    y0: int               # 0 or −dy
    rows: int             # Hd = B + |dy|
    x0: int               # 0 or −(dx0 + nb − 1)
    cols: int             # Wd
    gemm_rows: int        # Hr: rows rounded up to the blocks of the first (GEMM) pass


def _domain(B: int, W: int, dy: int, dx0: int, nb: int, b: int) -> _Domain:
    y0, Hd = min(0, -dy), B + abs(dy)
    x0 = min(0, -(dx0 + nb - 1))
    Wd = W + max(0, -dx0) - x0
    return _Domain(y0, Hd, x0, Wd, -(-Hd // b) * b)


class _DistanceViews(NamedTuple):
    """Views for :func:`_log_weights` (shapes with nr = Hr + 2 pr, nc = Wd + 2 pr, L = F·nb·nc)."""

    x_q: torch.Tensor     # (nr, F, C, nb, nc) x(i + k), stride 0 over n
    x_c: torch.Tensor     # (nr, F, C, nb, nc) x(i + o_n + k)
    d: torch.Tensor       # (nr, F, C, nb, nc) (x(i + k) − x(i + o_n + k))² − 2σ²
    d_sum: torch.Tensor | None  # (nr, F, nb, nc) Σ_c of it (colour), None for grey
    g_rows: torch.Tensor  # (Hr / b, b, b + 2 pr) the Toeplitz matrix, expanded over the blocks
    blocks: torch.Tensor  # (Hr / b, b + 2 pr, L) overlapping blocks of rows of d (or d_sum)
    v: torch.Tensor       # (Hr / b, b, L) first pass (rows)
    taps: tuple           # P flat views (Hd·F·nb·nc,) of v shifted by k = 0 … P − 1 columns
    s: torch.Tensor       # (Hd·F·nb·nc,) second pass (columns): log₂ w, flat; channel C of z


class _SumViews(NamedTuple):
    """Views for :func:`_accumulate`.  z = (C + 1, Hd, F, nb, nc) = [w·x (C channels), w]."""

    s_fwd: torch.Tensor   # (F, nb, B, W) log₂ w(i, i + o_n), i in the band
    s_bwd: torch.Tensor   # (F, nb, B, W) log₂ w(j, j − o_n) = s_n(j − o_n), j in the band
    t_max: torch.Tensor   # (F, B, W) scratch
    lmax_q: torch.Tensor  # (F, B, W) max log₂ w so far, query frames
    lmax_c: torch.Tensor  # (F, B, W) candidate frames
    s: torch.Tensor       # (Hd·F·nb·nc,) log₂ w, made w in place
    w_fwd: torch.Tensor   # (C, F, nb, B, W) w(i, i + o_n), stride 0 over C
    x_fwd: torch.Tensor   # (C, F, nb, B, W) x(i + o_n)
    wx_fwd: torch.Tensor  # (C, F, nb, B, W) z[:C] at the band's pixels i
    w_i: torch.Tensor     # (C, F, nb, B, Wd) w(i, i + o_n) on the rows i = j − o_n, stride 0 over C
    x_i: torch.Tensor     # (C, F, nb, B, Wd) x(i), stride 0 over n
    wx_i: torch.Tensor    # (C, F, nb, B, Wd) z[:C] on those rows (after z_fwd is summed)
    z_fwd: torch.Tensor   # (F, C + 1, nb, B, W) z at i: [w(i, i + o_n) x(i + o_n), w(i, i + o_n)]
    z_bwd: torch.Tensor   # (F, C + 1, nb, B, W) z at j − o_n: [w(j, j − o_n) x(j − o_n), w(j, j − o_n)]
    t_sum: torch.Tensor   # (F, C + 1, B, W) scratch
    acc_q: torch.Tensor   # (F, C + 1, B, W) [Σ_j w(i, j) x(j), Σ_j w(i, j)] of the query frames
    acc_c: torch.Tensor   # (F, C + 1, B, W) the same of the candidate frames


def _band_batches(T: int, C: int, B: int, tau: int, plan: _Plan) -> list[_Batch]:
    """Every batch of a band: time offsets δ = 0 … min(τ, T − 1), frame pairs, offset batches."""
    sr, pr, W = plan.sr, plan.pr, plan.width
    nb_max = _dx_batch(sr)
    per_pair = nb_max * (B + sr + 2 * pr) * (W + 2 * sr + 2 * pr)   # values per batch and frame pair
    pairs = max(1, _BATCH_VALUES // max(1, C * per_pair))           # frame pairs per batch
    return [_Batch(dt, f0, min(T - dt, f0 + pairs) - f0, dy, dx0, nb)
            for dt in range(0, min(tau, T - 1) + 1)
            for f0 in range(0, T - dt, pairs)
            for dy, dx0, nb in _offset_batches(dt, sr, nb_max)]


class _Layout(NamedTuple):
    """Offsets of one batch's tensors in the shared work buffer (shapes as in _DistanceViews)."""

    zs: int               # channel stride of z = (C + 1, Hd, F, nb, nc): [w·x (C channels), w = z[C]]
    d_in: int             # the GEMM's input (d for grey, d_sum for colour), where s will be
    d: int                # colour: d, after d_sum
    end: int              # values used


def _layout(C: int, t: _Batch, dom: _Domain, pr: int) -> _Layout:
    """Tensors that are never live at the same time share memory, so that a batch stays cache-sized.

    Order of use: d → d_sum → (GEMM) v → (second pass) s → the products z[:C] (over v: dead).
    v sits at 0, in z[:C]; d_sum at s, which must not overlap v (nor its last 2 pr values read).
    """
    nc = dom.cols + 2 * pr
    zc = t.frames * t.nb * dom.rows * nc                      # values per channel of z
    v_len = t.frames * t.nb * dom.gemm_rows * nc + 2 * pr     # with the second pass's overrun
    d_len = t.frames * t.nb * (dom.gemm_rows + 2 * pr) * nc   # per channel
    zs = max(zc, -(-v_len // C))                              # so that v fits in z[:C]
    d_in = C * zs
    d = d_in + d_len
    return _Layout(zs, d_in, d, max((C + 1) * zs, d + (C * d_len if C > 1 else 0)))


def _band_program(xb: torch.Tensor, acc: torch.Tensor, lmax: torch.Tensor, tau: int, plan: _Plan,
                  ws: dict) -> list[tuple[_DistanceViews, _SumViews]]:
    """The views of every batch of a band, built once and reused by every band of the same height.

    xb: (T, C, B + 2 pad_h, W + 2 pad_w) the padded band (a buffer that each band is copied into),
    acc: (T, C + 1, B, W) [Σ_j w(i, j) x(j), Σ_j w(i, j)], lmax: (T, B, W).  The
    work buffers are sized for the largest batch first, so that every view lies in them.
    """
    T, C, Bp, _ = xb.shape
    B, b = Bp - 2 * plan.pad_h, plan.g_rows.shape[0]
    batches = _band_batches(T, C, B, tau, plan)
    domains = [_domain(B, plan.width, t.dy, t.dx0, t.nb, b) for t in batches]
    layouts = [_layout(C, t, dom, plan.pr) for t, dom in zip(batches, domains)]
    work = _buffer(ws, "work", max((lay.end for lay in layouts), default=0), xb)
    frames = max((t.frames for t in batches), default=0)
    scratch = _buffer(ws, "scratch", frames * (C + 1) * B * plan.width, xb)
    return [(_distance_views(xb, t, dom, lay, plan, work),
             _sum_views(xb, acc, lmax, t, dom, lay, plan, work, scratch))
            for t, dom, lay in zip(batches, domains, layouts)]


def _distance_views(xb: torch.Tensor, t: _Batch, dom: _Domain, lay: _Layout, plan: _Plan,
                    work: torch.Tensor) -> _DistanceViews:
    """The views of one batch for :func:`_log_weights`, in xb (T, C, Bp, Wp) and the work buffer."""
    T, C, Bp, Wp = xb.shape
    pr, R, Rc, P, b = plan.pr, plan.pad_h, plan.pad_w, len(plan.g_cols), plan.g_rows.shape[0]
    F, nb = t.frames, t.nb
    Hd, Hr = dom.rows, dom.gemm_rows
    nr, nc = Hr + 2 * pr, dom.cols + 2 * pr                   # the domain with the patch margins
    sT, sC, sH = C * Bp * Wp, Bp * Wp, Wp                     # strides of xb
    top, left = R + dom.y0 - pr, Rc + dom.x0 - pr             # the domain's corner in xb

    def part(offset: int, *shape: int) -> torch.Tensor:      # contiguous piece of the work buffer
        return work[offset:offset + math.prod(shape)].view(shape)

    x_q = _view(xb, (nr, F, C, nb, nc), (sH, sT, sC, 0, 1), t.f0 * sT + top * sH + left)
    x_c = _view(xb, (nr, F, C, nb, nc), (sH, sT, sC, 1, 1),
                (t.f0 + t.dt) * sT + (top + t.dy) * sH + left + t.dx0)
    d_in = part(lay.d_in, nr, F, nb, nc)
    d, d_sum = (part(lay.d, nr, F, C, nb, nc), d_in) if C > 1 else (d_in.view(nr, F, 1, nb, nc), None)
    L = F * nb * nc                                           # values per row of d
    blocks = _view(d_in, (Hr // b, b + 2 * pr, L), (b * L, L, 1), 0)
    M = Hd * F * nb * nc                                      # s, flat, with the rows of v: stride nc
    taps = tuple(work[k:k + M] for k in range(P))             # v (at 0) shifted by k columns; the
    s = work[C * lay.zs:C * lay.zs + M]                       # last 2 pr of a row: unused garbage
    return _DistanceViews(x_q, x_c, d, d_sum, plan.g_rows.expand(Hr // b, b, b + 2 * pr), blocks,
                          part(0, Hr // b, b, L), taps, s)


def _sum_views(xb: torch.Tensor, acc: torch.Tensor, lmax: torch.Tensor, t: _Batch, dom: _Domain,
               lay: _Layout, plan: _Plan, work: torch.Tensor, scratch: torch.Tensor) -> _SumViews:
    """The views of one batch for :func:`_accumulate`, in xb, the work buffer and acc, lmax."""
    T, C, Bp, Wp = xb.shape
    R, Rc, W = plan.pad_h, plan.pad_w, plan.width
    B, F, nb, dy, dx0 = Bp - 2 * R, t.frames, t.nb, t.dy, t.dx0
    fq, fc = t.f0, t.f0 + t.dt                                # first query and candidate frame
    Hd, Wd, nc = dom.rows, dom.cols, dom.cols + 2 * plan.pr
    sT, sC, sH = C * Bp * Wp, Bp * Wp, Wp                     # strides of xb
    zs, zH, zF, zn = lay.zs, F * nb * nc, nb * nc, nc         # strides of z
    z = _view(work, (C + 1, Hd, F, nb, nc), (zs, zH, zF, zn, 1), 0)
    fwd = -dom.y0 * zH - dom.x0                               # band pixel (0, 0) in the domain
    bwd_rows = (-dy - dom.y0) * zH                            # rows of the pixels j − o_n
    bwd = bwd_rows - dx0 - dom.x0                             # j = (0, 0) minus o_0
    return _SumViews(
        s_fwd=_view(z, (F, nb, B, W), (zF, zn, zH, 1), C * zs + fwd),
        s_bwd=_view(z, (F, nb, B, W), (zF, zn - 1, zH, 1), C * zs + bwd),
        t_max=scratch[:F * B * W].view(F, B, W), lmax_q=lmax[fq:fq + F], lmax_c=lmax[fc:fc + F],
        s=work[C * zs:C * zs + Hd * zH],
        w_fwd=_view(z, (C, F, nb, B, W), (0, zF, zn, zH, 1), C * zs + fwd),
        x_fwd=_view(xb, (C, F, nb, B, W), (sC, sT, 1, sH, 1), fc * sT + (R + dy) * sH + Rc + dx0),
        wx_fwd=_view(z, (C, F, nb, B, W), (zs, zF, zn, zH, 1), fwd),
        w_i=_view(z, (C, F, nb, B, Wd), (0, zF, zn, zH, 1), C * zs + bwd_rows),
        x_i=_view(xb, (C, F, nb, B, Wd), (sC, sT, 0, sH, 1), fq * sT + (R - dy) * sH + Rc + dom.x0),
        wx_i=_view(z, (C, F, nb, B, Wd), (zs, zF, zn, zH, 1), bwd_rows),
        z_fwd=_view(z, (F, C + 1, nb, B, W), (zF, zs, zn, zH, 1), fwd),
        z_bwd=_view(z, (F, C + 1, nb, B, W), (zF, zs, zn - 1, zH, 1), bwd),
        t_sum=scratch[:F * (C + 1) * B * W].view(F, C + 1, B, W),
        acc_q=acc[fq:fq + F], acc_c=acc[fc:fc + F])


def _log_weights(v: List[torch.Tensor], taps: List[torch.Tensor], g: List[float],
                 bias: torch.Tensor, colour: bool) -> None:
    """s = log₂ w(i, i + o_n) = −max(d²(i, i + o_n) − 2σ², 0)·log₂e/h² on the batch's domain.

    d² − 2σ² = Σ_k K(k) · mean_c ((x_c(i + k) − x_c(i + o_n + k))² − 2σ²)   (as Σ_k K(k) = 1),
    K = g gᵀ.
    The first pass (rows) is a matrix product with the band Toeplitz matrix of g·g₀·(−log₂e/(C h²))
    over blocks of b rows, the second (columns) s = Σ_k (g_k/g₀) v(·, x + k), P − 1 multiply-adds
    on flat views (the first adds two taps, as g₀/g₀ = 1).  v: the views of
    :class:`_DistanceViews` in its order (taps apart; d_sum is d for grey images), g: g / g₀.
    """
    x_q, x_c, d, d_sum, g_rows, blocks, first, s = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
    torch.sub(x_q, x_c, out=d)
    torch.addcmul(bias, d, d, out=d)                          # (x_c(i + k) − x_c(i + o_n + k))² − 2σ²
    if colour:
        torch.sum(d, [2], out=d_sum)                          # Σ_c; 1/C is in g_rows
    torch.bmm(g_rows, blocks, out=first)                      # first pass (rows), a GEMM
    if len(g) == 1:                                           # second pass (columns), g[0] = 1
        s.copy_(taps[0])
    else:
        torch.add(taps[0], taps[1], alpha=g[1], out=s)
    for k in range(2, len(g)):
        s.add_(taps[k], alpha=g[k])
    s.clamp_max_(0.0)


def _accumulate(a: List[torch.Tensor]) -> None:
    """Add one batch's weights to both frames it serves (a: the views of :class:`_SumViews`, in order).

    Query frames: Σ_n w(i, i + o_n) [x(i + o_n), 1]; candidate frames: Σ_n w(j, j − o_n) [x(j − o_n), 1],
    with w(j, j − o_n) = w(j − o_n, j), the map of o_n read at j − o_n.  Each sum is one reduction
    over n of a strided view of z = [w·x, w] (for j − o_n the stride over n is one less than the
    row length); the running max of log₂ w gives the centre weight.  x(j − o_n) would need a
    negative stride over n, so the products w·x(i) are formed at i = j − o_n first (they reuse
    z[:C] once the first sum is done).
    """
    s_fwd, s_bwd, t_max, lmax_q, lmax_c, s = a[0], a[1], a[2], a[3], a[4], a[5]
    w_fwd, x_fwd, wx_fwd, w_i, x_i, wx_i = a[6], a[7], a[8], a[9], a[10], a[11]
    z_fwd, z_bwd, t_sum, acc_q, acc_c = a[12], a[13], a[14], a[15], a[16]
    torch.maximum(lmax_q, torch.amax(s_fwd, [1], out=t_max), out=lmax_q)
    torch.maximum(lmax_c, torch.amax(s_bwd, [1], out=t_max), out=lmax_c)
    s.exp2_()                                                 # the weights (every view of z sees them)
    torch.mul(w_fwd, x_fwd, out=wx_fwd)                       # z[:C] = w(i, i + o_n) x(i + o_n)
    acc_q.add_(torch.sum(z_fwd, [2], out=t_sum))
    torch.mul(w_i, x_i, out=wx_i)                             # z[:C] = w(i, i + o_n) x(i), i = j − o_n
    acc_c.add_(torch.sum(z_bwd, [2], out=t_sum))


def _run_program(dist: List[List[torch.Tensor]], taps: List[List[torch.Tensor]],
                 sums: List[List[torch.Tensor]], g: List[float], bias: torch.Tensor,
                 colour: bool) -> None:
    """Every batch of a band: :func:`_log_weights` then :func:`_accumulate`.

    Written in the subset of Python that TorchScript compiles (:func:`_program_runner`): the
    compiled loop runs its ~20 operations per batch without taking Python's GIL between them,
    so that the bands of several threads do not wait for each other.
    """
    for i in range(len(dist)):
        _log_weights(dist[i], taps[i], g, bias, colour)
        _accumulate(sums[i])


_RUNNER = None            # _run_program compiled by TorchScript, or itself where that is unavailable
_RUNNER_LOCK = threading.Lock()


def _program_runner():
    """_run_program, compiled by TorchScript once per process (plain Python if that fails).

    TorchScript is deprecated in favour of torch.compile, which would need a C++ compiler at run
    time; the compiled loop is only faster, so where scripting is unavailable (or removed from a
    future torch) the same function runs as Python, with the same results.
    """
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    _RUNNER = torch.jit.script(_run_program)
            except (AttributeError, OSError, RuntimeError):       # no jit, no source, no compiler
                _RUNNER = _run_program
        return _RUNNER


def _nl_means_band(xp: torch.Tensor, tau: int, plan: _Plan, ws: dict) -> tuple[torch.Tensor, float]:
    """Space-time NL-means of the central rows of a padded band xp: (T, C, B + 2 pad_h, W + 2 pad_w).

    Returns (u (T, C, B, W), the largest log-weight −max(d² − 2σ², 0)/h² over the band's pixels
    and j ≠ i); u lives in ``ws`` until the next band.  The band is copied into a buffer of ``ws``
    so that the views of every batch (:func:`_band_program`) are built once for all the bands of
    the same height.
    """
    T, C, Bp, Wp = xp.shape
    R, Rc, W = plan.pad_h, plan.pad_w, plan.width
    B = Bp - 2 * R
    if ws.get("shape") != xp.shape:                           # first band (of this height)
        ws["shape"] = xp.shape
        ws["xb"] = torch.empty_like(xp)
        ws["acc"] = torch.empty((T, C + 1, B, W), dtype=xp.dtype, device=xp.device)
        ws["lmax"] = torch.empty((T, B, W), dtype=xp.dtype, device=xp.device)
        program = _band_program(ws["xb"], ws["acc"], ws["lmax"], tau, plan, ws)
        ws["program"] = ([[dv.x_q, dv.x_c, dv.d, dv.d if dv.d_sum is None else dv.d_sum, dv.g_rows,
                           dv.blocks, dv.v, dv.s] for dv, _ in program],
                         [list(dv.taps) for dv, _ in program], [list(sv) for _, sv in program],
                         plan.g_cols, plan.bias, C > 1)
    xb, acc, lmax = ws["xb"], ws["acc"], ws["lmax"]
    xb.copy_(xp)
    acc.zero_()
    lmax.fill_(-math.inf)                                     # max_{j≠i} log₂ w(i, j)
    _program_runner()(*ws["program"])                         # every batch of the band

    # Centre weight w(i, i) = max_{j≠i} w(i, j)  (Buades et al.), floored at float32's tiny
    x = xp[:, :, R:R + B, Rc:Rc + W]                          # (T, C, B, W) the pixels to denoise
    best = float(lmax.max()) / _LOG2_E                        # natural log
    wmax = lmax.exp2_().clamp_min_(_TINY)                     # (T, B, W)
    den = acc[:, C].add_(wmax)                                # Σ_j w(i, j)
    num = acc[:, :C].addcmul_(wmax[:, None], x)               # Σ_j w(i, j) x(j)
    return num.div_(den[:, None]), best


def _dx_batch(sr: int) -> int:
    """Offsets dx per batch: a row of the window, 2 sr + 1, in pieces of at most _MAX_DX_BATCH."""
    n = 2 * sr + 1
    return -(-n // -(-n // _MAX_DX_BATCH))                    # ceil(n / pieces), pieces = ceil(n / max)


def _band_rows(H: int, W: int, C: int, pr: int, sr: int) -> int:
    """Rows per band so that one batch (one frame pair, _dx_batch offsets) holds ~_BATCH_VALUES values."""
    per_row = C * _dx_batch(sr) * (W + 2 * sr + 2 * pr)
    rows = _BATCH_VALUES // per_row - sr - 2 * pr
    return min(H, max(_MIN_BAND_ROWS, rows))


def _bands(H: int, rows: int, threads: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(band height, [(first row, first row written, end)]): bands of equal height covering H rows.

    At most ``rows`` rows per band; with threads > 1 the count of bands is a multiple of the
    threads where H allows bands of _MIN_BAND_ROWS.  The last band ends at row H and may overlap
    the one before it (it then writes only its new rows), so that every band has the same height
    and the views of its batches are built once.
    """
    count = -(-H // rows)
    if threads > 1:                                           # a multiple of the threads, as even as possible
        count = -(-count // threads) * threads
    band = -(-H // count)
    if threads > 1:
        band = max(min(_MIN_BAND_ROWS, H), band)
    return band, [(min(r0, H - band), r0, min(H, r0 + band)) for r0 in range(0, H, band)]


def _cpu_threads(image) -> int:
    """Threads for the bands: torch's intra-op threads for a CPU image (OpenMP build), else 1."""
    global _OPENMP
    if isinstance(image, torch.Tensor) and image.device.type != "cpu":
        return 1
    if _OPENMP is None:
        _OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return torch.get_num_threads() if _OPENMP else 1


class _OneThread:
    """Context: torch.set_num_threads(1) inside (when n > 1), restored on exit.

    With n threads for the bands, the calling thread must not run multi-threaded operations
    itself: its idle OpenMP threads would then spin for milliseconds, taking a core from the bands.
    """

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        if self.n > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n > 1:
            torch.set_num_threads(self.n)


def _run_bands(xp: torch.Tensor, out: torch.Tensor, tau: int, plan: _Plan, n: int) -> float:
    """Denoise ``out`` (T, C, H, W) band by band from the padded frames xp; return the largest log-weight.

    With n > 1 (torch.get_num_threads() of the caller, CPU), the bands run in n Python threads
    with one intra-op thread each (torch releases the GIL inside its operations).  The bands are
    independent, so they need no synchronisation, whereas torch's own threads meet at the end
    of every operation, which is slow when other programs keep the cores busy.  Same result
    either way.
    """
    T, C, H, W = out.shape
    R = plan.pad_h
    band, bands = _bands(H, _band_rows(H, W, C, plan.pr, plan.sr), n)

    def run(rows: tuple[int, int, int], ws: dict) -> float:
        r0, w0, w1 = rows                                     # computes rows r0 …, writes w0 … w1 − 1
        with torch.no_grad():
            u, best = _nl_means_band(xp[:, :, r0:r0 + band + 2 * R], tau, plan, ws)
            out[:, :, w0:w1] = u[:, :, w0 - r0:w1 - r0]
        return best

    if n == 1 or len(bands) == 1:
        ws: dict = {}                                         # buffers and views, reused by every band
        return max(run(rows, ws) for rows in bands)
    local = threading.local()

    def work(rows: tuple[int, int, int]) -> float:
        if not hasattr(local, "ws"):                          # first band of this worker thread
            torch.set_num_threads(1)                          # (a new thread starts with the default)
            local.ws = {}
        return run(rows, local.ws)

    with ThreadPoolExecutor(min(n, len(bands))) as pool:
        return max(pool.map(work, bands))


def nl_means(image, *, patch_size: int = 7, search_size: int = 21, h: float,
             sigma: float = 0.0, patch_weighting: str = "gaussian", video: bool = False,
             temporal_radius: int = 0):
    """Non-local means denoising of an image, or of a clip with a space-time search window.

    u(i) = Σ_j w(i, j) x(j) / Σ_j w(i, j),   j in the S×S window centred on i,
    w(i, j) = exp(−max(d²(i, j) − 2σ², 0) / h²),   w(i, i) = max_{j≠i} w(i, j),
    d²(i, j) = Σ_k K(k) · mean_c (x_c(i + k) − x_c(j + k))²,   K = patch_kernel(P, patch_weighting).

    For a clip (``video=True``), i = (t, p) and j = (t + δ, p + o) over the S×S×(2τ+1)
    space-time window |δ| ≤ τ, 0 ≤ t + δ < T (time is clipped at the clip's ends, not
    mirrored), with 2-D patches inside each frame (Buades, Coll & Morel, IJCV 2008):

        d²((t, p), (t + δ, p + o)) = Σ_k K(k) · mean_c (x_c(t, p + k) − x_c(t + δ, p + o + k))².

    ``temporal_radius=0`` denoises every frame on its own (the same as calling
    ``nl_means`` on each frame), and the centre weight is the max over the whole window.

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor, float
        An image (H, W) or (H, W, 3); with ``video=True`` a clip (T, H, W) or (T, H, W, 3).
        Values typically in [0, 1] (h and sigma are in the same units).  Integer
        images are rejected (use ``skimage.img_as_float``).
    patch_size : int, odd
        Full width P of the square patches (7 means 7×7).
    search_size : int, odd
        Full width S of the square search window centred on each pixel.
    h : float > 0
        Filtering parameter; larger means smoother.  A good start is h ≈ σ.
    sigma : float ≥ 0
        Noise standard deviation, subtracted as 2σ² from the distances.
    patch_weighting : {"gaussian", "uniform"}
        Patch kernel K, see :func:`patch_kernel`.
    video : bool
        Read ``image`` as a clip (T, H, W) or (T, H, W, 3), frames first.  Needed because
        an (H, W, 3) colour image and a (T, H, W) grey clip have the same number of axes.
    temporal_radius : int ≥ 0
        τ, the frames searched on each side of the current one (only with ``video=True``).

    Returns
    -------
    Same type, shape and float dtype as ``image`` (a tensor stays on its device).
    Computed in float32 with mirror padding in space; not differentiable.  On the CPU
    it uses torch.get_num_threads() threads (bands of rows in parallel).

    Raises ValueError naming ``h`` when h is so small that every weight w(i, j), j ≠ i,
    underflows float32 (the message gives the smallest usable h), and naming the image's
    range when a float64 image does not fit float32.
    """
    h, sigma = _check_params(patch_size, search_size, h, sigma, patch_weighting)
    tau = _check_temporal(temporal_radius, video)
    n = _cpu_threads(image)
    with _OneThread(n):                                        # the bands use the n threads
        x, back = _to_tchw(image, video)                       # (T, C, H, W) float32
        T, C, H, W = x.shape
        pr, sr = patch_size // 2, search_size // 2
        g = [float(v) for v in _kernel_1d(patch_size, patch_weighting)]
        # Fold 1/C (channel mean), −1/h², log₂e and g₀ into the first pass and 1/g₀ into the second:
        # the two passes give (d² − 2σ²)·(−log₂e/h²), the second starting with a tap of 1.
        g_rows = _row_filter_matrix([v * g[0] * (-_LOG2_E / (C * h * h)) for v in g], _GEMM_ROWS, x.device)
        plan = _Plan(pr=pr, sr=sr, pad_h=pr + sr + _GEMM_ROWS - 1, pad_w=pr + 2 * sr, width=W,
                     g_rows=g_rows, g_cols=[v / g[0] for v in g],
                     bias=torch.tensor(-2.0 * sigma * sigma, device=x.device))

        with torch.no_grad():
            xp = _reflect_pad(x, plan.pad_h, plan.pad_w)       # (T, C, H + 2R, W + 2(pr + 2sr))
            out = torch.empty_like(x)                          # (T, C, H, W)
            best = _run_bands(xp, out, tau, plan, n)           # largest log-weight, j ≠ i
        if search_size > 1 or (tau > 0 and T > 1):             # else no j ≠ i: u = x by definition
            _check_underflow(best, h)
        return back(out)


def _check_position(name: str, value, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < n:
        raise ValueError(f"{name} must be an int in [0, {n}), got {value!r}")
    return int(value)


def nl_means_weights(image, row: int, col: int, *, patch_size: int = 7, search_size: int = 21,
                     h: float, sigma: float = 0.0, patch_weighting: str = "gaussian",
                     video: bool = False, temporal_radius: int = 0, frame: int | None = None):
    """Normalised NL-means weights of one pixel over its search window: "its attention map".

    Image: returns W of shape (S, S) with W[S//2 + dy, S//2 + dx] = w(i, i + (dy, dx)) / Σ_j w(i, j),
    i = (row, col), so Σ W = 1 and nl_means(image)[i] = Σ W · x(window).

    Clip (``video=True``, ``frame`` = t required): returns the space-time map of shape
    (2τ + 1, S, S), W[τ + δ, S//2 + dy, S//2 + dx] = w(i, (t + δ, row + dy, col + dx)) / Σ_j w(i, j)
    for i = (t, row, col); the frames t + δ outside the clip (time is clipped) get weight 0.

    Same definition (distance, mirror padding, centre weight) as :func:`nl_means`; same
    type/dtype as ``image``.
    """
    h, sigma = _check_params(patch_size, search_size, h, sigma, patch_weighting)
    tau = _check_temporal(temporal_radius, video)
    x, _ = _to_tchw(image, video)                              # (T, C, H, W) float32
    T, C, H, W = x.shape
    row, col = _check_position("row", row, H), _check_position("col", col, W)
    if video:
        if frame is None:
            raise ValueError("frame must be given with video=True: the index t of the pixel's frame")
        t = _check_position("frame", frame, T)
    elif frame is not None:
        raise ValueError(f"frame={frame!r} needs a clip: pass video=True")
    else:
        t = 0
    P, S = patch_size, search_size
    pr, sr = P // 2, S // 2
    R = pr + sr
    K = torch.as_tensor(patch_kernel(P, patch_weighting), dtype=torch.float32, device=x.device)

    with torch.no_grad():
        lo, hi = max(0, t - tau), min(T, t + tau + 1)          # the frames searched (clipped)
        xp = _reflect_pad(x[lo:hi], R)                         # (hi − lo, C, H + 2R, W + 2R)
        region = xp[:, :, row:row + S + 2 * pr, col:col + S + 2 * pr]   # (hi − lo, C, S + P − 1, S + P − 1)
        patches = region.unfold(2, P, 1).unfold(3, P, 1)       # (hi − lo, C, S, S, P, P) patch of each j
        centre = patches[t - lo, :, sr, sr]                    # (C, P, P) patch of i
        d2 = ((patches - centre[:, None, None]) ** 2).mean(1)  # (hi − lo, S, S, P, P)
        d2 = (d2 * K).sum((-2, -1))                            # (hi − lo, S, S)
        w = torch.zeros((2 * tau + 1, S, S), dtype=torch.float32, device=x.device)  # frames t − τ … t + τ
        w[lo - t + tau:hi - t + tau] = torch.exp(-torch.clamp(d2 - 2.0 * sigma * sigma, min=0.0) / (h * h))
        w[tau, sr, sr] = 0.0
        w[tau, sr, sr] = torch.clamp(w.max(), min=_TINY)       # centre = max of the others
        w = w / w.sum()
        w = w if video else w[0]
    if isinstance(image, np.ndarray):
        return w.cpu().numpy().astype(image.dtype, copy=False)
    return w.to(image.dtype)


def patch_embeddings(image, *, patch_size: int = 7, patch_weighting: str = "gaussian") -> torch.Tensor:
    """Embed every pixel as its weighted patch, so that NL-means distances become Euclidean.

    Returns e of shape (H·W, P²·C), float32, pixels in row-major order, with

        e_i = ( sqrt(K(k) / C) · x_c(i + k) )_{k, c}     so that     ‖e_i − e_j‖² = d²(i, j),

    the patch distance of :func:`nl_means` (same kernel K and mirror padding). Chapter 2
    uses it to write NL-means as a non-local operation on these embeddings.
    """
    _check_size(patch_size, "patch_size")
    _check_weighting(patch_weighting)
    x = _to_tchw(image)[0][0]                                   # (C, H, W)
    C, H, W = x.shape
    P, pr = patch_size, patch_size // 2
    K = torch.as_tensor(patch_kernel(P, patch_weighting), dtype=torch.float32, device=x.device)
    xp = _reflect_pad(x, pr)                                    # (C, H + 2pr, W + 2pr)
    patches = xp.unfold(1, P, 1).unfold(2, P, 1)                # (C, H, W, P, P)
    e = patches * (K / C).sqrt()                                # weight each pixel of the patch
    return e.permute(1, 2, 3, 4, 0).reshape(H * W, P * P * C)   # (N, P²·C)
