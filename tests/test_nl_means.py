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
    monkeypatch.setattr(nlm_module, "_BAND_PIXELS", 5 * 23)  # bands of 5 rows, last one short
    banded = nl_means(x, patch_size=5, search_size=7, h=0.2, sigma=0.05)
    np.testing.assert_allclose(banded, whole, atol=1e-6)


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
