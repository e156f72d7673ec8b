"""Figures. Plotting only: every function takes data already computed and saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdepth.constants import N_CLASSES

__all__ = ["save_figure", "depth_cmap", "plot_samples", "plot_preview", "figure_formats"]


def save_figure(fig, path, *, dpi: int = 150) -> Path:
    """Save ``fig`` atomically (:func:`segdepth.data.store.atomic_write`: temporary file + rename)."""
    from segdepth.data.store import atomic_write

    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"), suffix=path.suffix)


def figure_formats() -> list[str]:
    """File suffixes (without the dot) that :func:`save_figure` can write, as matplotlib knows them."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


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


#: Hatch and colour of the pixels the validity check did not vouch for, in :func:`plot_preview`.
_NOT_VOUCHED = {"hatch": "////", "color": "0.75"}


def plot_preview(image, result, *, frame: int | None = None, title: str | None = None):
    """Quick look at one frame of a prediction: input, depth map and confidence side by side.

    Parameters
    ----------
    image : xarray.DataArray
        The input, ``(frame, y, x)`` or ``(y, x)``, with Angstrom coordinates ``x``, ``y`` (as
        :func:`segdepth.data.io.read_image` returns it); needs to hold ``frame``.
    result : xarray.Dataset
        The prediction (:func:`segdepth.learn.inference.predict` or the file ``segdepth predict`` writes):
        ``depth`` and ``confidence`` ``(frame, y, x)`` on the label grid; where it holds ``valid`` (the
        validity check ran) the pixels not vouched for are hatched and greyed in the depth panel, and the
        frame's :func:`segdepth.learn.validity.summary` is added to the title.
    frame : int, optional
        The frame (its number in the ``frame`` coordinate, i.e. in the input file); default the first of ``result``.
    title : str, optional
        First line of the title (default ``frame N``).

    Returns
    -------
    matplotlib.figure.Figure
        Three image panels (input, depth, confidence) and their two colour bars; not attached to pyplot (no
        backend needed), write it with :func:`save_figure`.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if "frame" not in result.dims:
        result = result.expand_dims("frame")
    if "frame" not in image.dims:
        image = image.expand_dims("frame")
    frame = int(result["frame"].values[0]) if frame is None else int(frame)
    for name, data in (("result", result), ("image", image)):
        if "frame" in data.coords and frame not in data["frame"].values:
            raise ValueError(f"frame {frame} is not in the {name} (frames {_frame_list(data['frame'].values)})")
    one = result.sel(frame=[frame]) if "frame" in result.coords else result.isel(frame=[0])
    img = image.sel(frame=frame) if "frame" in image.coords else image.isel(frame=0)
    depth, confidence = one["depth"].values[0], one["confidence"].values[0]
    label_extent = _extent(one["x"].values, one["y"].values)

    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    lo, hi = np.percentile(img.values, [0.5, 99.5])
    axes[0].imshow(img.values, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                   extent=_extent(img["x"].values, img["y"].values))
    axes[0].set_title("input")

    cmap, norm = depth_cmap()
    im = axes[1].imshow(depth, cmap=cmap, norm=norm, extent=label_extent, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], ticks=range(N_CLASSES), label="atoms per column", shrink=0.8)
    axes[1].set_title("depth")
    lines = [title or f"frame {frame}"]
    if "valid" in one:
        invalid = np.asarray(one["valid"].values[0]) == 0
        fraction = float(invalid.mean())
        if invalid.any():
            grey = np.zeros(invalid.shape + (4,))
            grey[invalid] = (*_rgb(_NOT_VOUCHED["color"]), 0.7)
            axes[1].imshow(grey, extent=label_extent, interpolation="nearest")
            # hatch exactly the pixels: the mask sampled just inside both edges of every pixel
            x0, x1, y1, y0 = label_extent
            xs = _inside_edges(np.linspace(x0, x1, invalid.shape[1] + 1))
            ys = _inside_edges(np.linspace(y0, y1, invalid.shape[0] + 1))
            mask = np.repeat(np.repeat(invalid.astype(float), 2, axis=0), 2, axis=1)
            axes[1].contourf(xs, ys, mask, levels=[0.5, 1.5], colors="none", hatches=[_NOT_VOUCHED["hatch"]])
        axes[1].legend(handles=[Patch(facecolor=_NOT_VOUCHED["color"], hatch=_NOT_VOUCHED["hatch"],
                                      label=f"not vouched for ({100 * fraction:.1f} %)")],
                       loc="upper right", fontsize="small", framealpha=0.8)
        from segdepth.learn.validity import summary

        lines.append(f"frame {frame}: {summary(one)}")
    im = axes[2].imshow(confidence, cmap="cividis", vmin=0, vmax=1, extent=label_extent, interpolation="nearest")
    fig.colorbar(im, ax=axes[2], label="confidence", shrink=0.8)
    axes[2].set_title("confidence")
    for ax in axes:
        ax.set_xlabel("x [A]")
    axes[0].set_ylabel("y [A]")
    fig.suptitle("\n".join(lines), fontsize="medium")
    return fig


def _inside_edges(edges: np.ndarray) -> np.ndarray:
    """Two samples per pixel, just inside its two edges (a contour at 0.5 then follows the pixel edges)."""
    eps = 1e-3 * (edges[1] - edges[0])
    return np.stack([edges[:-1] + eps, edges[1:] - eps], axis=1).ravel()


def _rgb(color) -> tuple[float, float, float]:
    import matplotlib.colors as mcolors

    return mcolors.to_rgb(color)


def _frame_list(frames) -> str:
    frames = [int(f) for f in frames]
    if len(frames) > 1 and frames == list(range(frames[0], frames[-1] + 1)):
        return f"{frames[0]}-{frames[-1]}"
    return ", ".join(map(str, frames[:10])) + (", ..." if len(frames) > 10 else "")
