"""Tests of nltutorial.nl_means against a plain per-pixel NumPy reference."""

import importlib
import math

import numpy as np
import pytest
import torch

from nltutorial.nl_means import nl_means, nl_means_weights, patch_kernel

# The module itself (``nltutorial.nl_means`` the attribute is the function).
nlm_module = importlib.import_module("nltutorial.nl_means")


# --------------------------------------------------------------------------- #
# Independent reference: loops over pixels and window positions, float64.
# --------------------------------------------------------------------------- #
def ref_kernel(P, weighting):
    """(P, P) kernel written from the definition: uniform 1/P², or Gaussian with a = P/3."""
    r = P // 2
    K = np.empty((P, P))
    for u in range(P):
        for v in range(P):
            if weighting == "uniform":
                K[u, v] = 1.0
            else:
                a = P / 3.0
                K[u, v] = math.exp(-((u - r) ** 2 + (v - r) ** 2) / (2 * a * a))
    return K / K.sum()


def ref_weights(xp, row, col, P, S, h, sigma, K):
    """Unnormalised (S, S) weights of pixel (row, col); xp is (H + 2R, W + 2R, C) mirror-padded."""
    pr, sr = P // 2, S // 2
    R = pr + sr
    ci, cj = row + R, col + R  # pixel position in the padded image
    patch_i = xp[ci - pr:ci + pr + 1, cj - pr:cj + pr + 1]  # (P, P, C)
    w = np.zeros((S, S))
    for a in range(S):
        for b in range(S):
            yj, xj = ci + a - sr, cj + b - sr
            patch_j = xp[yj - pr:yj + pr + 1, xj - pr:xj + pr + 1]
            d2 = np.sum(K * np.mean((patch_i - patch_j) ** 2, axis=-1))
            w[a, b] = math.exp(-max(d2 - 2 * sigma**2, 0.0) / h**2)
    w[sr, sr] = 0.0
    w[sr, sr] = max(w.max(), np.finfo(np.float32).tiny)  # Buades' centre weight
    return w


def ref_pad(x, P, S):
    x = np.asarray(x, dtype=np.float64)
    x3 = x[..., None] if x.ndim == 2 else x  # (H, W, C)
    R = P // 2 + S // 2
    return np.pad(x3, ((R, R), (R, R), (0, 0)), mode="reflect")


def ref_nl_means(x, P, S, h, sigma, weighting):
    K = ref_kernel(P, weighting)
    xp = ref_pad(x, P, S)
    H, W = x.shape[:2]
    sr = S // 2
    R = P // 2 + sr
    out = np.zeros((H, W, xp.shape[2]))
    for i in range(H):
        for j in range(W):
            w = ref_weights(xp, i, j, P, S, h, sigma, K)
            window = xp[i + R - sr:i + R + sr + 1, j + R - sr:j + R + sr + 1]  # (S, S, C)
            out[i, j] = np.tensordot(w, window, axes=([0, 1], [0, 1])) / w.sum()
    return out[..., 0] if x.ndim == 2 else out


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2))


RNG = np.random.default_rng(1234)
GRAY = RNG.random((9, 11)).astype(np.float32)
COLOUR = RNG.random((7, 8, 3)).astype(np.float32)


# --------------------------------------------------------------------------- #
# Exactness
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "image, P, S, h, sigma, weighting",
    [
        (GRAY, 3, 5, 0.2, 0.0, "gaussian"),
        (GRAY, 5, 7, 0.15, 0.05, "gaussian"),
        (GRAY, 3, 9, 0.1, 0.1, "uniform"),
        (GRAY, 7, 3, 0.3, 0.0, "uniform"),
        (GRAY, 1, 5, 0.2, 0.02, "gaussian"),
        (GRAY, 3, 13, 0.25, 0.05, "gaussian"),  # pad > image: repeated mirroring
        (COLOUR, 3, 5, 0.2, 0.05, "gaussian"),
        (COLOUR, 5, 7, 0.3, 0.0, "uniform"),
    ],
)
def test_matches_reference(image, P, S, h, sigma, weighting):
    got = nl_means(image, patch_size=P, search_size=S, h=h, sigma=sigma, patch_weighting=weighting)
    want = ref_nl_means(image, P, S, h, sigma, weighting)
    assert got.shape == image.shape
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_tiny_images():
    for shape in [(1, 1), (1, 4), (2, 3), (3, 2, 3)]:
        x = RNG.random(shape).astype(np.float32)
        got = nl_means(x, patch_size=3, search_size=5, h=0.3)
        np.testing.assert_allclose(got, ref_nl_means(x, 3, 5, 0.3, 0.0, "gaussian"), atol=2e-5)


def test_bands_give_same_result(monkeypatch):
    x = RNG.random((37, 23, 3)).astype(np.float32)
    whole = nl_means(x, patch_size=5, search_size=7, h=0.2, sigma=0.05)
    monkeypatch.setattr(nlm_module, "_band_rows", lambda *args: 5)  # bands of 5 rows, the last overlapping
    banded = nl_means(x, patch_size=5, search_size=7, h=0.2, sigma=0.05)
    np.testing.assert_allclose(banded, whole, atol=1e-6)


def test_threads_give_same_result():
    # With n > 1 CPU threads the bands run in n Python threads of one torch thread each.
    x = RNG.random((70, 33)).astype(np.float32)
    clip = RNG.random((3, 40, 21, 3)).astype(np.float32)
    kwargs = dict(patch_size=5, search_size=7, h=0.2, sigma=0.05)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=1, **kwargs)
        torch.set_num_threads(3)
        three = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=1, **kwargs)
        assert torch.get_num_threads() == 3                    # restored after the worker threads
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(one[0], ref_nl_means(x, 5, 7, 0.2, 0.05, "gaussian"), atol=2e-5)


def test_compiled_batch_loop_equals_plain_python(monkeypatch):
    # The batch loop is compiled by TorchScript where torch has it (so that threads do not wait
    # for the GIL between its operations); the same function as plain Python is the fallback.
    runner = nlm_module._program_runner()
    if hasattr(torch.jit, "script"):
        assert isinstance(runner, torch.jit.ScriptFunction)
    x = RNG.random((40, 29, 3)).astype(np.float32)
    clip = RNG.random((3, 24, 19)).astype(np.float32)
    kwargs = dict(patch_size=5, search_size=7, h=0.2, sigma=0.05)
    compiled = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=1, **kwargs)
    monkeypatch.setattr(nlm_module, "_RUNNER", nlm_module._run_program)
    plain = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=1, **kwargs)
    for a, b in zip(compiled, plain):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(plain[0], ref_nl_means(x, 5, 7, 0.2, 0.05, "gaussian"), atol=2e-5)


def test_batch_loop_falls_back_to_python_without_torchscript(monkeypatch):
    def no_script(fn):
        raise RuntimeError("TorchScript is not available")

    monkeypatch.setattr(nlm_module, "_RUNNER", None)
    monkeypatch.setattr(torch.jit, "script", no_script)
    assert nlm_module._program_runner() is nlm_module._run_program
    x = RNG.random((20, 17)).astype(np.float32)
    np.testing.assert_allclose(nl_means(x, patch_size=3, search_size=5, h=0.2),
                               ref_nl_means(x, 3, 5, 0.2, 0.0, "gaussian"), atol=2e-5)


@pytest.mark.parametrize("H, rows, threads, count", [
    (37, 5, 1, 8), (37, 5, 2, 3), (512, 72, 1, 8), (512, 72, 2, 8), (10, 3, 4, 1), (5, 2, 4, 1),
    (7, 16, 1, 1), (1, 16, 3, 1), (100, 100, 2, 2), (100, 30, 3, 6), (33, 10, 1, 4)])
def test_bands_cover_every_row_once(H, rows, threads, count):
    # Bands all have the same height (their views are built once), at most `rows`, at least 16 rows
    # when split for threads; the last one ends at row H and writes only the rows that the one
    # before it did not.
    band, bands = nlm_module._bands(H, rows, threads)
    assert len(bands) == count and band <= max(rows, min(16, H) if threads > 1 else rows)
    written = []
    for r0, w0, w1 in bands:
        assert 0 <= r0 <= w0 < w1 <= r0 + band <= H             # writes inside what it computes
        written.extend(range(w0, w1))
    assert written == list(range(H))                            # every row once, in order


def _interval(start, length):
    return set(range(start, start + length))


@pytest.mark.parametrize("C, frames, nb, dy, dx0, B, W, P", [
    (1, 1, 11, 5, -10, 64, 512, 7), (1, 1, 10, 0, 1, 8, 30, 5), (3, 1, 7, 3, -3, 5, 9, 3),
    (1, 3, 5, -2, -2, 4, 6, 5), (3, 2, 1, 1, 1, 1, 1, 1), (1, 1, 3, 1, -1, 1, 2, 7)])
def test_layout_keeps_live_tensors_apart(C, frames, nb, dy, dx0, B, W, P):
    # The work buffer holds, in order of use, d (colour: per channel, then its channel sum d_sum),
    # v (GEMM output; the second pass reads 2 pr values past its end), s = z[C], and the products
    # z[:C].  A tensor may only share memory with tensors that are dead when it is written.
    pr, b = P // 2, 4
    t = nlm_module._Batch(0, 0, frames, dy, dx0, nb)
    dom = nlm_module._domain(B, W, dy, dx0, nb, b)
    lay = nlm_module._layout(C, t, dom, pr)
    nc = dom.cols + 2 * pr
    n = frames * nb
    rows_in = dom.gemm_rows + 2 * pr
    d_sum = _interval(lay.d_in, rows_in * n * nc)                 # GEMM input (d itself for grey)
    v = _interval(0, dom.gemm_rows * n * nc + 2 * pr)             # with the second pass's overrun
    s = _interval(C * lay.zs, dom.rows * n * nc)
    products = set().union(*(_interval(c * lay.zs, dom.rows * n * nc) for c in range(C)))
    assert not d_sum & v and not v & s and not products & s
    if C > 1:
        d = _interval(lay.d, C * rows_in * n * nc)
        assert not d & d_sum
        assert max(d) < lay.end
    assert max(d_sum | v | s | products) < lay.end
    assert lay.zs >= dom.rows * n * nc                            # z's channels do not overlap


@pytest.mark.parametrize("image", [RNG.random((23, 20)).astype(np.float32),
                                   RNG.random((11, 13, 3)).astype(np.float32)])
def test_7x7_patches_21x21_window_in_bands_match_reference(monkeypatch, image):
    # The benchmark setting, in bands of 4 rows (the views of the first band are reused by the others,
    # the last band overlaps) and with a window larger than the image (repeated mirroring).
    monkeypatch.setattr(nlm_module, "_band_rows", lambda *args: 4)
    got = nl_means(image, patch_size=7, search_size=21, h=0.25, sigma=0.05)
    np.testing.assert_allclose(got, ref_nl_means(image, 7, 21, 0.25, 0.05, "gaussian"), atol=2e-5, rtol=0)


def test_threads_restored_when_raising():
    # The calling thread runs single-threaded while the bands work; an error must not leave it so.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="h="):
            nl_means(GRAY, patch_size=3, search_size=5, h=1e-6)
        assert torch.get_num_threads() == 2
        nl_means(GRAY, patch_size=3, search_size=5, h=0.2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name, value", [("_MAX_DX_BATCH", 1), ("_MAX_DX_BATCH", 2), ("_GEMM_ROWS", 1),
                                         ("_GEMM_ROWS", 3), ("_BATCH_VALUES", 1)])
def test_batch_sizes_give_same_result(monkeypatch, name, value):
    # The offsets are processed in batches (dx pieces, frame pairs) and the first filter pass in
    # blocks of _GEMM_ROWS rows: none of these sizes may change the result.
    x = RNG.random((13, 11)).astype(np.float32)
    clip = RNG.random((4, 9, 10, 3)).astype(np.float32)
    kwargs = dict(patch_size=5, search_size=7, h=0.2, sigma=0.05)
    before = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=2, **kwargs)
    monkeypatch.setattr(nlm_module, name, value)
    after = nl_means(x, **kwargs), nl_means(clip, video=True, temporal_radius=2, **kwargs)
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(after[0], ref_nl_means(x, 5, 7, 0.2, 0.05, "gaussian"), atol=2e-5)


@pytest.mark.parametrize("image", [GRAY, COLOUR])
@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
def test_weights_match_reference(image, weighting):
    P, S, h, sigma = 3, 7, 0.2, 0.05
    K = ref_kernel(P, weighting)
    xp = ref_pad(image, P, S)
    for row, col in [(0, 0), (4, 5), (image.shape[0] - 1, image.shape[1] - 1)]:
        w = nl_means_weights(image, row, col, patch_size=P, search_size=S, h=h, sigma=sigma,
                             patch_weighting=weighting)
        assert w.shape == (S, S)
        assert abs(float(w.sum()) - 1.0) < 1e-5
        want = ref_weights(xp, row, col, P, S, h, sigma, K)
        np.testing.assert_allclose(w, want / want.sum(), atol=1e-6)
        # The output pixel is the weighted average of its window.
        R = P // 2 + S // 2
        window = xp[row + R - S // 2:row + R + S // 2 + 1, col + R - S // 2:col + R + S // 2 + 1]
        out = nl_means(image, patch_size=P, search_size=S, h=h, sigma=sigma, patch_weighting=weighting)
        np.testing.assert_allclose(out[row, col], np.tensordot(w, window, 2).squeeze(), atol=1e-5)


@pytest.mark.parametrize("P", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
def test_patch_kernel(P, weighting):
    K = patch_kernel(P, weighting)
    assert K.shape == (P, P)
    assert abs(K.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(K, K.T)
    np.testing.assert_allclose(K, K[::-1, ::-1])
    np.testing.assert_allclose(K, ref_kernel(P, weighting), rtol=1e-12)
    if weighting == "uniform":
        np.testing.assert_allclose(K, np.full((P, P), 1.0 / P**2))
    elif P > 1:
        assert K[P // 2, P // 2] == K.max() and K[0, 0] == K.min()


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #
def test_constant_image_is_fixed_point():
    x = np.full((12, 10, 3), 0.37, dtype=np.float32)
    np.testing.assert_allclose(nl_means(x, patch_size=5, search_size=9, h=0.01), x, atol=1e-6)


def window_mean(x, P, S):
    """Mean of the mirror-padded S×S window of every pixel."""
    xp = ref_pad(x, P, S)
    R, sr = P // 2 + S // 2, S // 2
    H, W = x.shape[:2]
    out = np.zeros((H, W, xp.shape[2]))
    for a in range(-sr, sr + 1):
        for b in range(-sr, sr + 1):
            out += xp[R + a:R + a + H, R + b:R + b + W]
    out /= S * S
    return out[..., 0] if x.ndim == 2 else out


def test_huge_h_gives_window_mean():
    got = nl_means(GRAY, patch_size=3, search_size=5, h=1e4)
    np.testing.assert_allclose(got, window_mean(GRAY, 3, 5), atol=1e-5)


def test_large_sigma_gives_window_mean():
    # Values in [0, 1] give d² ≤ 1 < 2σ² for σ = 1: every weight is exp(0) = 1, whatever h.
    got = nl_means(COLOUR, patch_size=3, search_size=5, h=1e-3, sigma=1.0)
    np.testing.assert_allclose(got, window_mean(COLOUR, 3, 5), atol=1e-5)


def test_tiny_h_keeps_the_pixels_whose_weights_underflow():
    # Left half constant (weights 1), right half random: there every other weight underflows
    # float32 and the centre-weight floor makes u(i) = x(i), not NaN.
    x = GRAY.copy()
    x[:, : x.shape[1] // 2] = 0.5
    got = nl_means(x, patch_size=3, search_size=5, h=1e-6)
    np.testing.assert_allclose(got, x, atol=1e-6)


def test_h_too_small_for_float32_is_named():
    # Every weight w(i, j), j ≠ i, of every pixel underflows: the output would be the input.
    with pytest.raises(ValueError, match=r"h=1e-06 is too small for float32.*use h >= ") as info:
        nl_means(GRAY, patch_size=3, search_size=5, h=1e-6)
    h_min = float(str(info.value).split("use h >= ")[1].split()[0])
    out = nl_means(GRAY, patch_size=3, search_size=5, h=h_min)   # the h it suggests works
    assert np.isfinite(out).all() and not np.array_equal(out, GRAY)
    with pytest.raises(ValueError, match="too small"):
        nl_means(GRAY, patch_size=3, search_size=5, h=h_min * 0.9)
    np.testing.assert_allclose(nl_means(GRAY, patch_size=3, search_size=1, h=1e-6), GRAY, atol=1e-6)  # no j ≠ i


@pytest.mark.parametrize("to", [np.asarray, torch.from_numpy])
def test_finite_float64_beyond_float32_is_not_called_nan(to):
    image = to(np.full((6, 5), 1e300))
    with pytest.raises(ValueError, match=r"float64 has values up to 1e\+300, beyond float32") as info:
        nl_means(image, patch_size=3, search_size=3, h=1.0)
    assert "NaN" not in str(info.value)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nl_means(to(np.array([[1.0, np.inf]])), patch_size=3, search_size=3, h=1.0)


def test_numpy_types():
    for dtype in (np.float32, np.float64):
        x = COLOUR.astype(dtype)
        y = nl_means(x, patch_size=3, search_size=5, h=0.2)
        assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == x.shape
    # Non-contiguous views are fine.
    y = nl_means(COLOUR[:, ::-1, 0], patch_size=3, search_size=5, h=0.2)
    assert y.shape == (7, 8)


def test_tensor_types():
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(GRAY).to(dtype)
        y = nl_means(x, patch_size=3, search_size=5, h=0.2)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
        np.testing.assert_allclose(y.numpy(), nl_means(GRAY, patch_size=3, search_size=5, h=0.2),
                                   atol=1e-6)
    w = nl_means_weights(torch.from_numpy(COLOUR), 1, 2, patch_size=3, search_size=5, h=0.2)
    assert isinstance(w, torch.Tensor) and w.shape == (5, 5)


def test_denoising_improves_psnr():
    from skimage import data, img_as_float

    clean = img_as_float(data.camera())[200:264, 200:264]  # (64, 64)
    sigma = 0.1
    noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    den = nl_means(noisy, patch_size=5, search_size=13, h=0.9 * sigma, sigma=sigma)
    assert psnr(den, clean) > psnr(noisy, clean) + 4.0


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((4, 4, 2), np.float32), {}, "image must have shape"),
        (np.zeros((4,), np.float32), {}, "image must have shape"),
        (np.zeros((2, 4, 4, 3), np.float32), {}, "image must have shape"),
        (np.zeros((0, 4), np.float32), {}, "image must be non-empty"),
        (np.zeros((4, 4), np.uint8), {}, "image must be a floating-point"),
        (torch.zeros((4, 4), dtype=torch.int64), {}, "image must be a floating-point"),
        ([[0.0, 1.0]], {}, "image must be a numpy.ndarray or torch.Tensor"),
        (np.array([[0.0, np.nan]], np.float32), {}, "image contains NaN or Inf"),
        (np.array([[0.0, np.inf]]), {}, "image contains NaN or Inf"),
        (GRAY, {"patch_size": 4}, "patch_size"),
        (GRAY, {"patch_size": 0}, "patch_size"),
        (GRAY, {"patch_size": -3}, "patch_size"),
        (GRAY, {"patch_size": 3.0}, "patch_size"),
        (GRAY, {"search_size": 8}, "search_size"),
        (GRAY, {"search_size": "7"}, "search_size"),
        (GRAY, {"h": 0.0}, "h must be"),
        (GRAY, {"h": -1.0}, "h must be"),
        (GRAY, {"h": float("nan")}, "h must be"),
        (GRAY, {"h": float("inf")}, "h must be"),
        (GRAY, {"h": None}, "h must be"),
        (GRAY, {"sigma": -0.1}, "sigma must be"),
        (GRAY, {"sigma": float("nan")}, "sigma must be"),
        (GRAY, {"sigma": float("inf")}, "sigma must be"),
        (GRAY, {"patch_weighting": "box"}, "patch_weighting must be 'gaussian' or 'uniform'"),
    ],
)
def test_bad_inputs(image, kwargs, match):
    kwargs = {"patch_size": 3, "search_size": 5, "h": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        nl_means(image, **kwargs)
    with pytest.raises(ValueError, match=match):
        nl_means_weights(image, 0, 0, **kwargs)


def test_bad_weights_position():
    for row, col, name in [(9, 0, "row"), (-1, 0, "row"), (0, 11, "col"), (0, 1.5, "col")]:
        with pytest.raises(ValueError, match=name):
            nl_means_weights(GRAY, row, col, patch_size=3, search_size=5, h=0.1)


def test_bad_patch_kernel():
    with pytest.raises(ValueError, match="patch_size"):
        patch_kernel(6)
    with pytest.raises(ValueError, match="patch_weighting"):
        patch_kernel(5, "triangle")


def test_h_is_required():
    with pytest.raises(TypeError):
        nl_means(GRAY)  # h is a required keyword argument


# --------------------------------------------------------------------------- #
# CUDA
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.from_numpy(RNG.random((40, 33, 3)).astype(np.float32))
    kwargs = dict(patch_size=5, search_size=9, h=0.2, sigma=0.05)
    got = nl_means(x.cuda(), **kwargs)
    assert got.is_cuda and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), nl_means(x, **kwargs).numpy(), atol=1e-5)
    w = nl_means_weights(x.cuda(), 3, 4, **kwargs)
    assert w.is_cuda
    np.testing.assert_allclose(w.cpu().numpy(), nl_means_weights(x, 3, 4, **kwargs).numpy(), atol=1e-6)


# --------------------------------------------------------------------------- #
# Patch embeddings: ‖e_i − e_j‖² is the NL-means patch distance
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 3)])
def test_patch_embeddings_give_the_patch_distance(shape, weighting):
    from nltutorial.nl_means import patch_embeddings

    rng = np.random.default_rng(5)
    x = rng.random(shape)
    P = 3
    e = patch_embeddings(x.astype(np.float32), patch_size=P, patch_weighting=weighting)
    H, W = shape[:2]
    assert e.shape == (H * W, P * P * (3 if len(shape) == 3 else 1))
    K = ref_kernel(P, weighting)
    xp = ref_pad(x, P, 1)  # pad by P // 2 (search radius 0)
    for i, j in [(0, 1), (3, 17), (H * W - 1, 0), (8, 8)]:
        (ri, ci), (rj, cj) = divmod(i, W), divmod(j, W)
        pi = xp[ri:ri + P, ci:ci + P]
        pj = xp[rj:rj + P, cj:cj + P]
        d2 = np.sum(K * np.mean((pi - pj) ** 2, axis=-1))
        assert float(((e[i] - e[j]) ** 2).sum()) == pytest.approx(d2, rel=1e-5, abs=1e-7)


def test_patch_embeddings_bad_arguments():
    from nltutorial.nl_means import patch_embeddings

    with pytest.raises(ValueError, match="patch_size"):
        patch_embeddings(np.zeros((4, 4), np.float32), patch_size=4)
    with pytest.raises(ValueError, match="image"):
        patch_embeddings(np.zeros((4, 4, 2), np.float32))


# --------------------------------------------------------------------------- #
# Video: space-time NL-means (Buades, Coll & Morel, IJCV 2008)
# --------------------------------------------------------------------------- #
def ref_weights_video(frames, t, row, col, P, S, tau, h, sigma, K, centre="max"):
    """Unnormalised (2τ + 1, S, S) weights of pixel (t, row, col), written from the definition.

    frames: list of the T mirror-padded frames (H + 2R, W + 2R, C).  Candidate j = (t + δ, row + a,
    col + b) with |δ| ≤ τ, frames outside the clip skipped (weight 0: time is clipped).  The patch
    of j is taken in its own frame t + δ.  Centre: max over the other weights, or 1.
    """
    pr, sr = P // 2, S // 2
    R = pr + sr
    ci, cj = row + R, col + R
    patch_i = frames[t][ci - pr:ci + pr + 1, cj - pr:cj + pr + 1]   # (P, P, C)
    w = np.zeros((2 * tau + 1, S, S))
    for delta in range(-tau, tau + 1):
        if not 0 <= t + delta < len(frames):
            continue
        for a in range(S):
            for b in range(S):
                yj, xj = ci + a - sr, cj + b - sr
                patch_j = frames[t + delta][yj - pr:yj + pr + 1, xj - pr:xj + pr + 1]
                d2 = np.sum(K * np.mean((patch_i - patch_j) ** 2, axis=-1))
                w[tau + delta, a, b] = math.exp(-max(d2 - 2 * sigma**2, 0.0) / h**2)
    w[tau, sr, sr] = 0.0
    w[tau, sr, sr] = max(w.max(), np.finfo(np.float32).tiny) if centre == "max" else 1.0
    return w


def ref_window_video(frames, t, row, col, S, tau, R):
    """(2τ + 1, S, S, C) values of the space-time window, zeros for frames outside the clip."""
    sr = S // 2
    out = np.zeros((2 * tau + 1, S, S, frames[0].shape[-1]))
    for delta in range(-tau, tau + 1):
        if 0 <= t + delta < len(frames):
            out[tau + delta] = frames[t + delta][row + R - sr:row + R + sr + 1, col + R - sr:col + R + sr + 1]
    return out


def ref_nl_means_video(clip, P, S, tau, h, sigma, weighting, centre="max"):
    clip = np.asarray(clip, dtype=np.float64)
    K = ref_kernel(P, weighting)
    frames = [ref_pad(f, P, S) for f in clip]
    T, H, W = clip.shape[:3]
    R = P // 2 + S // 2
    out = np.zeros((T, H, W, frames[0].shape[-1]))
    for t in range(T):
        for i in range(H):
            for j in range(W):
                w = ref_weights_video(frames, t, i, j, P, S, tau, h, sigma, K, centre)
                window = ref_window_video(frames, t, i, j, S, tau, R)
                out[t, i, j] = np.tensordot(w, window, axes=3) / w.sum()
    return out[..., 0] if clip.ndim == 3 else out


CLIP = RNG.random((3, 9, 9)).astype(np.float32)
CLIP_COLOUR = RNG.random((3, 7, 8, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "clip, P, S, tau, h, sigma, weighting",
    [
        (CLIP, 3, 5, 0, 0.2, 0.05, "gaussian"),
        (CLIP, 3, 5, 1, 0.2, 0.05, "gaussian"),
        (CLIP, 3, 5, 2, 0.15, 0.0, "gaussian"),       # τ = T − 1: every frame searches the whole clip
        (CLIP, 5, 3, 1, 0.3, 0.1, "uniform"),
        (CLIP, 3, 1, 1, 0.2, 0.0, "gaussian"),        # S = 1: only the same pixel in the other frames
        (CLIP[:2], 3, 5, 4, 0.2, 0.05, "gaussian"),   # τ > T: clipped to the clip
        (CLIP[:1], 3, 5, 2, 0.2, 0.05, "gaussian"),   # one frame: the image case
        (CLIP_COLOUR, 3, 5, 1, 0.25, 0.05, "gaussian"),
        (CLIP_COLOUR, 3, 3, 2, 0.3, 0.0, "uniform"),
    ],
)
def test_video_matches_reference(clip, P, S, tau, h, sigma, weighting):
    got = nl_means(clip, patch_size=P, search_size=S, h=h, sigma=sigma, patch_weighting=weighting,
                   video=True, temporal_radius=tau)
    want = ref_nl_means_video(clip, P, S, tau, h, sigma, weighting)
    assert got.shape == clip.shape and got.dtype == clip.dtype
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("clip", [CLIP, CLIP_COLOUR])
def test_temporal_radius_0_is_frame_by_frame(clip):
    kwargs = dict(patch_size=3, search_size=5, h=0.2, sigma=0.05)
    got = nl_means(clip, video=True, temporal_radius=0, **kwargs)
    np.testing.assert_allclose(got, np.stack([nl_means(f, **kwargs) for f in clip]), atol=1e-6)
    np.testing.assert_allclose(nl_means(clip, video=True, **kwargs), got, atol=0)   # τ = 0 is the default


def test_one_frame_clip_is_the_image():
    got = nl_means(GRAY[None], patch_size=3, search_size=5, h=0.2, video=True, temporal_radius=3)
    np.testing.assert_allclose(got[0], nl_means(GRAY, patch_size=3, search_size=5, h=0.2), atol=1e-6)


@pytest.mark.parametrize("tau", [1, 2])
def test_static_clip(tau):
    # The same frame repeated: every candidate (t + δ, p + o) has the patch of (t, p + o), so the
    # weights repeat in every frame, the same pixel in another frame has weight 1, hence the centre
    # weight max_{j≠i} w(i, j) = 1: every output frame is 2-D NL-means with w(i, i) = 1, whatever
    # τ and however many frames the (clipped) window holds.
    frame = RNG.random((8, 9)).astype(np.float32)
    clip = np.stack([frame] * 4)
    got = nl_means(clip, patch_size=3, search_size=5, h=0.15, sigma=0.05, video=True, temporal_radius=tau)
    want = ref_nl_means_video(frame[None], 3, 5, 0, 0.15, 0.05, "gaussian", centre="one")[0]
    for t in range(4):
        np.testing.assert_allclose(got[t], want, atol=2e-5)
    # ... which differs from frame-by-frame NL-means, whose centre weight is the max of the others.
    assert np.abs(want - nl_means(frame, patch_size=3, search_size=5, h=0.15, sigma=0.05)).max() > 1e-3


def test_space_time_search_denoises_a_moving_pattern_better():
    # A textured frame translated by one pixel per frame: the other frames hold the same patches
    # (with independent noise), so searching them averages more similar pixels.
    from skimage import data, img_as_float

    base = img_as_float(data.camera())[100:160, 100:180]
    clean = np.stack([base[:, t:t + 64] for t in range(5)])       # (5, 60, 64), moving right to left
    sigma = 0.1
    noisy = (clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)).astype(np.float32)
    kwargs = dict(patch_size=5, search_size=7, h=0.8 * sigma, sigma=sigma, video=True)
    frame_by_frame = psnr(nl_means(noisy, temporal_radius=0, **kwargs), clean)
    space_time = psnr(nl_means(noisy, temporal_radius=2, **kwargs), clean)
    assert space_time > frame_by_frame + 0.5


@pytest.mark.parametrize("clip, tau", [(CLIP, 1), (CLIP, 2), (CLIP_COLOUR, 1), (CLIP[:2], 3)])
def test_video_weights_match_reference(clip, tau):
    P, S, h, sigma = 3, 5, 0.2, 0.05
    K = ref_kernel(P, "gaussian")
    frames = [ref_pad(np.asarray(f, np.float64), P, S) for f in clip]
    out = nl_means(clip, patch_size=P, search_size=S, h=h, sigma=sigma, video=True, temporal_radius=tau)
    T, H, W = clip.shape[:3]
    for t, row, col in [(0, 0, 0), (T - 1, 3, 4), (T // 2, H - 1, W - 1)]:
        w = nl_means_weights(clip, row, col, frame=t, patch_size=P, search_size=S, h=h, sigma=sigma,
                             video=True, temporal_radius=tau)
        assert w.shape == (2 * tau + 1, S, S)
        assert abs(float(w.sum()) - 1.0) < 1e-5
        want = ref_weights_video(frames, t, row, col, P, S, tau, h, sigma, K)
        np.testing.assert_allclose(w, want / want.sum(), atol=1e-6)
        for delta in range(-tau, tau + 1):                 # frames outside the clip: weight 0
            if not 0 <= t + delta < T:
                assert not w[tau + delta].any()
        # The output pixel is the weighted average of its space-time window.
        window = ref_window_video(frames, t, row, col, S, tau, P // 2 + S // 2)
        np.testing.assert_allclose(out[t, row, col], np.tensordot(w, window, 3).squeeze(), atol=1e-5)


def test_video_weights_with_temporal_radius_0_are_the_image_weights():
    w = nl_means_weights(CLIP, 2, 3, frame=1, patch_size=3, search_size=5, h=0.2, video=True)
    assert w.shape == (1, 5, 5)
    np.testing.assert_allclose(w[0], nl_means_weights(CLIP[1], 2, 3, patch_size=3, search_size=5, h=0.2),
                               atol=1e-7)


def test_video_tensor_types():
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(CLIP_COLOUR).to(dtype)
        y = nl_means(x, patch_size=3, search_size=5, h=0.2, video=True, temporal_radius=1)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
        np.testing.assert_allclose(
            y.numpy(), nl_means(CLIP_COLOUR, patch_size=3, search_size=5, h=0.2, video=True, temporal_radius=1),
            atol=1e-6)
    w = nl_means_weights(torch.from_numpy(CLIP), 1, 2, frame=0, patch_size=3, search_size=5, h=0.2,
                         video=True, temporal_radius=1)
    assert isinstance(w, torch.Tensor) and w.shape == (3, 5, 5)


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (CLIP, {"temporal_radius": -1}, "temporal_radius must be an int >= 0"),
        (CLIP, {"temporal_radius": 1.0}, "temporal_radius must be an int >= 0"),
        (CLIP, {"temporal_radius": 1.5}, "temporal_radius must be an int >= 0"),
        (CLIP, {"temporal_radius": True}, "temporal_radius must be an int >= 0"),
        (CLIP, {"temporal_radius": "1"}, "temporal_radius must be an int >= 0"),
        (CLIP, {"temporal_radius": None}, "temporal_radius must be an int >= 0"),
        (CLIP[0], {}, r"image must have shape \(T, H, W\) or \(T, H, W, 3\) with video=True"),
        (np.zeros((2, 4, 4, 2), np.float32), {}, r"image must have shape \(T, H, W\)"),
        (np.zeros((2, 2, 4, 4, 3), np.float32), {}, r"image must have shape \(T, H, W\)"),
        (np.zeros((0, 4, 4), np.float32), {}, "image must be non-empty"),
        (CLIP, {"video": 1}, "video must be True or False"),
        (CLIP, {"video": "yes"}, "video must be True or False"),
        (CLIP, {"patch_size": 4}, "patch_size"),
        (CLIP, {"h": -1.0}, "h must be"),
    ],
)
def test_video_bad_inputs(image, kwargs, match):
    kwargs = {"patch_size": 3, "search_size": 5, "h": 0.1, "video": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        nl_means(image, **kwargs)
    with pytest.raises(ValueError, match=match):
        nl_means_weights(image, 0, 0, frame=0, **kwargs)


def test_video_needs_video_true():
    # (T, H, W) would be read as an (H, W, 3) image if its last axis is 3: only video=True says "clip".
    with pytest.raises(ValueError, match="temporal_radius=1 needs a clip: pass video=True"):
        nl_means(CLIP, patch_size=3, search_size=5, h=0.1, temporal_radius=1)
    with pytest.raises(ValueError, match=r"pass video=True"):
        nl_means(np.zeros((2, 4, 4, 3), np.float32), patch_size=3, search_size=5, h=0.1)
    with pytest.raises(ValueError, match=r"pass video=True"):
        nl_means(CLIP, patch_size=3, search_size=5, h=0.1)   # (3, 9, 9): last axis is not 3 channels
    ambiguous = RNG.random((4, 5, 3)).astype(np.float32)     # (H, W, 3) image or (T, H, W) clip
    as_image = nl_means(ambiguous, patch_size=3, search_size=5, h=0.2)
    np.testing.assert_allclose(as_image, ref_nl_means(ambiguous, 3, 5, 0.2, 0.0, "gaussian"), atol=2e-5)
    as_clip = nl_means(ambiguous, patch_size=3, search_size=5, h=0.2, video=True)
    np.testing.assert_allclose(as_clip, np.stack([nl_means(f, patch_size=3, search_size=5, h=0.2)
                                                  for f in ambiguous]), atol=1e-6)


def test_video_weights_bad_position():
    kwargs = dict(patch_size=3, search_size=5, h=0.1)
    with pytest.raises(ValueError, match="frame must be given with video=True"):
        nl_means_weights(CLIP, 0, 0, video=True, **kwargs)
    for frame in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"frame must be an int in \[0, 3\)"):
            nl_means_weights(CLIP, 0, 0, frame=frame, video=True, **kwargs)
    with pytest.raises(ValueError, match="frame=0 needs a clip: pass video=True"):
        nl_means_weights(GRAY, 0, 0, frame=0, **kwargs)
    with pytest.raises(ValueError, match="row"):
        nl_means_weights(CLIP, 9, 0, frame=0, video=True, **kwargs)


def test_video_h_too_small_is_named():
    # S = 1: the only candidates are the same pixel in the other frames.
    with pytest.raises(ValueError, match=r"h=1e-06 is too small for float32"):
        nl_means(CLIP, patch_size=3, search_size=1, h=1e-6, video=True, temporal_radius=1)
    np.testing.assert_allclose(nl_means(CLIP, patch_size=3, search_size=1, h=1e-6, video=True), CLIP, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_video_cuda_matches_cpu():
    x = torch.from_numpy(RNG.random((5, 20, 17, 3)).astype(np.float32))
    kwargs = dict(patch_size=5, search_size=7, h=0.2, sigma=0.05, video=True, temporal_radius=2)
    got = nl_means(x.cuda(), **kwargs)
    assert got.is_cuda
    np.testing.assert_allclose(got.cpu().numpy(), nl_means(x, **kwargs).numpy(), atol=1e-5)
    w = nl_means_weights(x.cuda(), 3, 4, frame=1, **kwargs)
    np.testing.assert_allclose(w.cpu().numpy(), nl_means_weights(x, 3, 4, frame=1, **kwargs).numpy(), atol=1e-6)
