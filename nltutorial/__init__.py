"""nltutorial: the helper package of the book *Non-local and attention operations for vision*.

Each module holds one idea of the book; the chapters import from here so that a
notebook shows the idea while the tested, fast code lives in the package.

Modules
-------
images     test images, the Gaussian noise model, PSNR and SSIM
nl_means   classical non-local means denoising (chapter 1)
plotting   small matplotlib helpers used by the chapters
"""

from .images import add_gaussian_noise, psnr, sample_image, ssim
from .nl_means import nl_means, nl_means_weights, patch_kernel

__all__ = [
    "add_gaussian_noise",
    "nl_means",
    "nl_means_weights",
    "patch_kernel",
    "psnr",
    "sample_image",
    "ssim",
]
__version__ = "0.1.0"
