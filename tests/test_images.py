import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from nltutorial.images import add_gaussian_noise, psnr, sample_image, ssim


def test_sample_image_shapes_and_range():
    cam = sample_image("camera")
    assert cam.shape == (512, 512) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    ast = sample_image("astronaut", crop=64)
    assert ast.shape == (64, 64, 3)
    assert sample_image("astronaut", gray=True).shape == (512, 512)
    # the crop is the central region
    np.testing.assert_array_equal(sample_image("camera", crop=2), cam[255:257, 255:257])


def test_sample_image_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        sample_image("lena")
    with pytest.raises(ValueError, match="crop"):
        sample_image("camera", crop=1000)


def test_noise_has_the_requested_standard_deviation_and_is_reproducible():
    u = np.full((256, 256), 0.5, dtype=np.float32)
    v = add_gaussian_noise(u, 0.1, seed=3)
    n = v - u
    assert abs(n.mean()) < 3 * 0.1 / 256  # 3 standard errors
    assert abs(n.std() - 0.1) < 0.002
    np.testing.assert_array_equal(v, add_gaussian_noise(u, 0.1, seed=3))
    assert not np.array_equal(v, add_gaussian_noise(u, 0.1, seed=4))
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(u, -1.0)


def test_psnr_matches_the_definition_and_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((32, 40))
    b = a + rng.normal(0, 0.05, a.shape)
    mse = np.mean((a - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    assert psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="estimate"):
        psnr(a, b[:-1])


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    cam = sample_image("camera", crop=64)
    assert ssim(cam, cam) == pytest.approx(1.0)
    assert ssim(cam, add_gaussian_noise(cam, 0.1)) < 0.7
    col = sample_image("astronaut", crop=64)
    assert ssim(col, col) == pytest.approx(1.0)
