"""Figures. Plotting only: every function takes data already computed and saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdepth.constants import N_CLASSES

__all__ = ["save_figure", "depth_cmap", "plot_samples"]


def save_figure(fig, path, *, dpi: int = 150) -> Path:
    """Save ``fig`` atomically (:func:`segdepth.data.store.atomic_write`: temporary file + rename)."""
    from segdepth.data.store import atomic_write

    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"), suffix=path.suffix)


def depth_cmap():
    """Discrete colour map for depth classes 0..10 (0 = black background)."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    colors = ["black"] + [plt.get_cmap("viridis")(v) for v in np.linspace(0.05, 1.0, 10)]
    return mcolors.ListedColormap(colors, name="depth"), mcolors.BoundaryNorm(np.arange(-0.5, 11.5), 11)


def _extent(x, y):
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) if len(y) > 1 else 1.0
    return [float(x[0]) - dx / 2, float(x[-1]) + dx / 2, float(y[-1]) + dy / 2, float(y[0]) - dy / 2]


def plot_samples(depth, clean, noisy, *, lam: float, titles=None):
    """The paper's Fig. 3: depth mask, clean image and noisy image for a few samples.

    Parameters
    ----------
    depth, clean, noisy : sequence of xarray.DataArray
        Per sample: depth (label_y, label_x), clean and noisy images (y, x).
    lam : float
        Dose of the noisy images [e/pixel].
    """
    import matplotlib.pyplot as plt

    n = len(depth)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.3 * n), squeeze=False)
    cmap, norm = depth_cmap()
    for i in range(n):
        d, c, x = depth[i], clean[i], noisy[i]
        im = axes[i, 0].imshow(d.values, cmap=cmap, norm=norm, extent=_extent(d.label_x.values, d.label_y.values))
        for ax, img in ((axes[i, 1], c), (axes[i, 2], x)):
            lo, hi = np.percentile(img.values, [0.5, 99.5])
            ax.imshow(img.values, cmap="gray", vmin=lo, vmax=hi, extent=_extent(img.x.values, img.y.values))
        axes[i, 0].set_ylabel("y [A]" + (f"\n{titles[i]}" if titles else ""))
        for ax in axes[i]:
            ax.set_xlabel("x [A]")
        if i == 0:
            axes[i, 0].set_title("depth (atoms per column)")
            axes[i, 1].set_title("clean image")
            axes[i, 2].set_title(f"noisy image, lambda = {lam:g}")
    fig.colorbar(im, ax=axes.ravel().tolist(), ticks=range(N_CLASSES), shrink=0.5, location="right", label="atoms")
    return fig
