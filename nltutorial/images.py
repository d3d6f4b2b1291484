"""Test images, the additive Gaussian noise model, and image-quality metrics.

The noise model of the denoising chapters is v = u + n with n(i) ~ N(0, σ²) i.i.d.
(Buades et al., 2005): u is the clean image in [0, 1], v the observation. The noise is
*not* clipped, so the model holds exactly and σ is the true standard deviation.
"""

from __future__ import annotations

import numpy as np

#: scikit-image sample images used in the book (all ship with scikit-image, no download).
SAMPLE_IMAGES = ("camera", "astronaut", "brick", "grass", "coffee", "moon", "text")


def sample_image(name: str, *, gray: bool | None = None, crop: int | None = None) -> np.ndarray:
    """Load a scikit-image sample image as float32 in [0, 1].

    Returns (H, W) for grayscale or (H, W, 3) for colour images. ``gray=True`` converts a
    colour image to luminance, ``crop=n`` keeps the central n×n region.
    """
    import skimage.data
    from skimage.color import rgb2gray

    if name not in SAMPLE_IMAGES:
        raise ValueError(f"name must be one of {SAMPLE_IMAGES}, got {name!r}")
    img = getattr(skimage.data, name)()
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 3 and img.shape[2] == 4:  # drop an alpha channel
        img = img[..., :3]
    if gray and img.ndim == 3:
        img = rgb2gray(img).astype(np.float32)
    if crop is not None:
        h, w = img.shape[:2]
        if not 0 < crop <= min(h, w):
            raise ValueError(f"crop must be in 1..{min(h, w)} for {name!r}, got {crop}")
        top, left = (h - crop) // 2, (w - crop) // 2
        img = img[top : top + crop, left : left + crop]
    return np.ascontiguousarray(img)


def add_gaussian_noise(image: np.ndarray, sigma: float, *, seed: int = 0) -> np.ndarray:
    """v = u + n, n ~ N(0, σ²) i.i.d. per pixel and channel (not clipped), float32."""
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, size=np.shape(image))
    return (np.asarray(image, dtype=np.float64) + noise).astype(np.float32)


def psnr(reference: np.ndarray, estimate: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range² / MSE)."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"estimate must have the shape of reference {reference.shape}, got {estimate.shape}")
    mse = np.mean((reference - estimate) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(reference: np.ndarray, estimate: np.ndarray, *, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al., 2004), scikit-image's implementation; colour averaged over channels."""
    from skimage.metrics import structural_similarity

    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    channel_axis = -1 if reference.ndim == 3 else None
    return float(structural_similarity(reference, estimate, data_range=data_range, channel_axis=channel_axis))
