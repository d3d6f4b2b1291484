"""Classical non-local means (NL-means) denoising.

Buades, Coll & Morel, "A non-local algorithm for image denoising", CVPR 2005, and
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

Conventions of this module
--------------------------
* Boundary: the image is mirror-padded (NumPy's ``mode="reflect"``: the edge
  pixel is not repeated), so every pixel has a full search window and every
  candidate a full patch.  For images smaller than the padding the mirroring is
  repeated periodically, so any image size ≥ 1×1 works.
* Centre weight: w(i, i) would always be exp(0) = 1, which over-weights the noisy
  pixel itself.  As in Buades et al. we use w(i, i) = max_{j ≠ i} w(i, j)
  (floored at the smallest positive float32, so that u(i) = x(i) instead of 0/0
  when every other weight underflows).  On the benchmark images
  (``benchmarks/bench_nlm.py``) this gave a best-h PSNR equal or higher than
  w(i, i) = 1 in 6 of 9 image/noise cases (up to +0.1 dB on colour images).
* Gaussian patch kernel: K(k) ∝ exp(−|k|² / (2a²)) with a = P / 3 (the patch
  spans ±1.5 a); a = P/3 was within 0.01 dB of the best a for P = 5 on camera.
* Arithmetic is float32 (torch), on the device of the input tensor.  So the image
  must fit float32 (a float64 image beyond ±3.4e38 is refused as such), and h must not
  be so small that every weight exp(−d²/h²) with j ≠ i underflows float32: then the
  output would be the input, and ValueError says the smallest usable h instead.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["nl_means", "nl_means_weights", "patch_embeddings", "patch_kernel"]

_WEIGHTINGS = ("gaussian", "uniform")

# Pixels per band of rows processed at once: big enough to amortise Python
# overhead, small enough that the per-offset buffers stay cache-sized (2**18
# float32 pixels = 1 MiB per buffer).  Also bounds memory for huge images.
_BAND_PIXELS = 1 << 18

# Smallest positive normal float32: floor of the centre weight (see module doc).
_TINY = float(np.finfo(np.float32).tiny)
# log of it: a log-weight below this underflows the float32 weights (≈ −87.3).
_LOG_TINY = math.log(_TINY)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def _to_chw(image):
    """Validate ``image`` and return (x, back): x a float32 (C, H, W) tensor, back(y) undoes it."""
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
    if not (t.ndim == 2 or (t.ndim == 3 and shape[2] == 3)):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got shape {shape}")
    if t.numel() == 0:
        raise ValueError(f"image must be non-empty, got shape {shape}")
    if not bool(torch.isfinite(t).all()):
        _check_finite(image)

    x = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W), C ∈ {1, 3}
    x = x.contiguous()

    def back(y: torch.Tensor):  # y: (C, H, W) float32 -> the input's layout and type
        y = y[0] if len(shape) == 2 else y.permute(1, 2, 0)
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


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror-pad the last two axes by ``pad``: (C, H, W) -> (C, H + 2 pad, W + 2 pad).

    Same as NumPy ``mode="reflect"`` (…, x2, x1, | x0, x1, x2, …), repeated
    periodically when ``pad`` exceeds the image size, so tiny images work too.
    """

    def index(n: int) -> torch.Tensor:  # (n + 2 pad,) source index of each padded position
        i = torch.arange(-pad, n + pad, device=x.device)
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        i = torch.remainder(i, period)
        return torch.minimum(i, period - i)

    _, H, W = x.shape
    return x.index_select(1, index(H)).index_select(2, index(W))


# --------------------------------------------------------------------------- #
# Fast NL-means
# --------------------------------------------------------------------------- #
def _filter_1d(x: torch.Tensor, g: list[float], dim: int) -> torch.Tensor:
    """Valid correlation with the symmetric kernel g along ``dim``: length n + 2r -> n."""
    r = len(g) // 2
    n = x.shape[dim] - 2 * r
    out = x.narrow(dim, r, n) * g[r]
    for k in range(1, r + 1):  # symmetric taps: g[r−k] = g[r+k]
        out.add_(x.narrow(dim, r - k, n) + x.narrow(dim, r + k, n), alpha=g[r + k])
    return out


def _nl_means_band(xp: torch.Tensor, H: int, W: int, pr: int, sr: int,
                   g: list[float], h: float, sigma: float) -> tuple[torch.Tensor, float]:
    """NL-means of the central (H, W) pixels of a padded block xp: (C, H + 2R, W + 2R), R = pr + sr.

    Returns (u, the largest log-weight −max(d² − 2σ², 0)/h² over the block's pixels and j ≠ i).

    Loops over the search offsets o = (dy, dx), each step vectorised over all pixels.
    Symmetry halves the work: d²(i, i + o) = d²(i + o, i), so the weight map of
    offset −o is the map of offset o shifted by o, w_{−o}(j) = w_o(j − o).  We
    therefore only visit the "positive" half of the offsets, compute w_o(i) on
    the union of the pixels i and the pixels j − o, and use it twice.
    """
    C = xp.shape[0]
    R = pr + sr
    x = xp[:, R:R + H, R:R + W]                              # (C, H, W) the pixels to denoise
    num = torch.zeros_like(x)                                 # (C, H, W) Σ_j w(i, j) x(j)
    den = torch.zeros((H, W), dtype=xp.dtype, device=xp.device)   # (H, W) Σ_{j≠i} w(i, j)
    lmax = torch.full((H, W), -math.inf, dtype=xp.dtype, device=xp.device)  # max_{j≠i} log w(i, j)
    # Fold 1/C (channel mean) and −1/h² into the two filter passes: they give −d²/h² directly.
    g_rows = [v * (-1.0 / (C * h * h)) for v in g]
    bias = 2.0 * sigma * sigma / (h * h)                      # 2σ²/h²

    for dy in range(0, sr + 1):
        for dx in range(-sr, sr + 1):
            if dy == 0 and dx <= 0:                           # only half: (0, 0) and −o are skipped
                continue
            # Domain of w_o: pixels i with i ∈ block or i + o ∈ block, i.e. rows [y0, y0 + Hd)
            # and cols [x0, x0 + Wd) in block coordinates (may start before 0: padding).
            y0, x0 = min(0, -dy), min(0, -dx)
            Hd, Wd = H + abs(dy), W + abs(dx)
            # Patches of i and i + o: both (C, Hd + 2pr, Wd + 2pr) views of xp.
            top, left = R + y0 - pr, R + x0 - pr
            p_i = xp[:, top:top + Hd + 2 * pr, left:left + Wd + 2 * pr]
            p_j = xp[:, top + dy:top + dy + Hd + 2 * pr, left + dx:left + dx + Wd + 2 * pr]
            diff2 = (p_i - p_j).square_()                      # (C, Hd + 2pr, Wd + 2pr)
            diff2 = diff2.sum(0) if C > 1 else diff2[0]        # (Hd + 2pr, Wd + 2pr)
            # Separable patch kernel K = g gᵀ  ->  s = −d²(i, i + o)/h²: (Hd, Wd)
            s = _filter_1d(_filter_1d(diff2, g_rows, 0), g, 1)
            # log w = −max(d² − 2σ², 0)/h² = min(s + 2σ²/h², 0), in place: (Hd, Wd)
            w = s.add_(bias).clamp_max_(0.0)
            w_fwd = w[-y0:-y0 + H, -x0:-x0 + W]                 # w(i, i + o) for i in block
            w_bwd = w[-y0 - dy:-y0 - dy + H, -x0 - dx:-x0 - dx + W]  # w(j, j − o) = w_o(j − o)
            torch.maximum(lmax, w_fwd, out=lmax)
            torch.maximum(lmax, w_bwd, out=lmax)
            w.exp_()                                           # the weights; w_fwd, w_bwd are views
            den.add_(w_fwd).add_(w_bwd)
            num.addcmul_(w_fwd, xp[:, R + dy:R + dy + H, R + dx:R + dx + W])  # x(i + o)
            num.addcmul_(w_bwd, xp[:, R - dy:R - dy + H, R - dx:R - dx + W])  # x(j − o)

    # Centre weight w(i, i) = max_{j≠i} w(i, j)  (Buades et al.), floored at float32's tiny
    best = float(lmax.max())
    wmax = lmax.exp_().clamp_min_(_TINY)
    den.add_(wmax)
    num.addcmul_(wmax, x)
    return num.div_(den), best


def nl_means(image, *, patch_size: int = 7, search_size: int = 21, h: float,
             sigma: float = 0.0, patch_weighting: str = "gaussian"):
    """Non-local means denoising.

    u(i) = Σ_j w(i, j) x(j) / Σ_j w(i, j),   j in the S×S window centred on i,
    w(i, j) = exp(−max(d²(i, j) − 2σ², 0) / h²),   w(i, i) = max_{j≠i} w(i, j),
    d²(i, j) = Σ_k K(k) · mean_c (x_c(i + k) − x_c(j + k))²,   K = patch_kernel(P, patch_weighting).

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor, float, shape (H, W) or (H, W, 3)
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

    Returns
    -------
    Same type, shape and float dtype as ``image`` (a tensor stays on its device).
    Computed in float32 with mirror padding; not differentiable.

    Raises ValueError naming ``h`` when h is so small that every weight w(i, j), j ≠ i,
    underflows float32 (the message gives the smallest usable h), and naming the image's
    range when a float64 image does not fit float32.
    """
    h, sigma = _check_params(patch_size, search_size, h, sigma, patch_weighting)
    x, back = _to_chw(image)                                   # (C, H, W) float32
    C, H, W = x.shape
    pr, sr = patch_size // 2, search_size // 2
    R = pr + sr
    g = [float(v) for v in _kernel_1d(patch_size, patch_weighting)]

    with torch.no_grad():
        xp = _reflect_pad(x, R)                                # (C, H + 2R, W + 2R)
        out = torch.empty_like(x)                              # (C, H, W)
        band = max(1, _BAND_PIXELS // W)                       # rows per band
        best = -math.inf                                       # largest log-weight, j ≠ i
        for r0 in range(0, H, band):                           # bands are independent
            hb = min(band, H - r0)
            out[:, r0:r0 + hb], b = _nl_means_band(xp[:, r0:r0 + hb + 2 * R], hb, W, pr, sr, g, h, sigma)
            best = max(best, b)
    if search_size > 1:                                        # S = 1: no j ≠ i, u = x by definition
        _check_underflow(best, h)
    return back(out)


def nl_means_weights(image, row: int, col: int, *, patch_size: int = 7, search_size: int = 21,
                     h: float, sigma: float = 0.0, patch_weighting: str = "gaussian"):
    """Normalised NL-means weights of pixel (row, col) over its search window: "its attention map".

    Returns W of shape (S, S) with W[S//2 + dy, S//2 + dx] = w(i, i + (dy, dx)) / Σ_j w(i, j),
    i = (row, col), so Σ W = 1 and nl_means(image)[i] = Σ W · x(window).  Same definition
    (distance, mirror padding, centre weight) as :func:`nl_means`; same type/dtype as ``image``.
    """
    h, sigma = _check_params(patch_size, search_size, h, sigma, patch_weighting)
    x, back = _to_chw(image)                                   # (C, H, W) float32
    C, H, W = x.shape
    for name, value, n in (("row", row, H), ("col", col, W)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < n:
            raise ValueError(f"{name} must be an int in [0, {n}), got {value!r}")
    P, S = patch_size, search_size
    pr, sr = P // 2, S // 2
    R = pr + sr
    K = torch.as_tensor(patch_kernel(P, patch_weighting), dtype=torch.float32, device=x.device)

    with torch.no_grad():
        xp = _reflect_pad(x, R)                                # (C, H + 2R, W + 2R)
        region = xp[:, row:row + S + 2 * pr, col:col + S + 2 * pr]   # (C, S + P − 1, S + P − 1)
        patches = region.unfold(1, P, 1).unfold(2, P, 1)       # (C, S, S, P, P) patch of each j
        centre = patches[:, sr, sr]                            # (C, P, P) patch of i
        d2 = ((patches - centre[:, None, None]) ** 2).mean(0)  # (S, S, P, P)
        d2 = (d2 * K).sum((-2, -1))                            # (S, S)
        w = torch.exp(-torch.clamp(d2 - 2.0 * sigma * sigma, min=0.0) / (h * h))
        w[sr, sr] = 0.0
        w[sr, sr] = torch.clamp(w.max(), min=_TINY)            # centre = max of the others
        w = w / w.sum()
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
    x, _ = _to_chw(image)                                       # (C, H, W)
    C, H, W = x.shape
    P, pr = patch_size, patch_size // 2
    K = torch.as_tensor(patch_kernel(P, patch_weighting), dtype=torch.float32, device=x.device)
    xp = _reflect_pad(x, pr)                                    # (C, H + 2pr, W + 2pr)
    patches = xp.unfold(1, P, 1).unfold(2, P, 1)                # (C, H, W, P, P)
    e = patches * (K / C).sqrt()                                # weight each pixel of the patch
    return e.permute(1, 2, 3, 4, 0).reshape(H * W, P * P * C)   # (N, P²·C)
