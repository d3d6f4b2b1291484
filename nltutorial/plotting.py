"""Small plotting helpers shared by the chapters (matplotlib only)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def show_images(images, titles=None, *, suptitle=None, ncols=None, cmap="gray", size=3.0, vmin=0.0, vmax=1.0):
    """Show images side by side in a grid, without axes ticks; returns the figure.

    Grayscale (H, W) images use ``cmap``; colour (H, W, 3) images are clipped to [0, 1].
    """
    images = list(images)
    n = len(images)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for k, (ax, img) in enumerate(zip(axes.flat, images)):
        img = np.asarray(img)
        if img.ndim == 3:
            ax.imshow(np.clip(img, 0, 1))
        else:
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        if titles is not None:
            ax.set_title(titles[k], fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap(ax, values, *, title=None, cmap="magma", colorbar=True, extent=None, xlabel=None, ylabel=None,
            symmetric=False):
    """Draw a 2-D array as a heat map on ``ax`` with an optional colour bar; returns the image.

    ``symmetric=True`` centres the colour scale on 0 (for signed maps, with a diverging cmap).
    """
    values = np.asarray(values)
    limits = {}
    if symmetric:
        vmax = float(np.abs(values).max()) or 1.0
        limits = {"vmin": -vmax, "vmax": vmax}
    im = ax.imshow(values, cmap=cmap, extent=extent, **limits)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im
