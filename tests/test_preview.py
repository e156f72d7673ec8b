"""The quick-look figure of ``segdepth predict --preview``: :func:`segdepth.apps.plotting.plot_preview`."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr

from segdepth.apps.plotting import figure_formats, plot_preview, save_figure


@pytest.fixture(autouse=True)
def _agg():
    matplotlib.use("Agg")


def _image(frames=(3, 4), shape=(64, 48), pixel=0.1):
    rng = np.random.default_rng(0)
    coords = {"frame": list(frames), "y": (np.arange(shape[0]) + 0.5) * pixel, "x": (np.arange(shape[1]) + 0.5) * pixel}
    return xr.DataArray(rng.random((len(frames), *shape)).astype(np.float32), dims=("frame", "y", "x"), coords=coords)


def _result(frames=(3, 4), shape=(16, 12), pixel=0.4, valid=None):
    rng = np.random.default_rng(1)
    n = len(frames)
    ds = xr.Dataset(
        {"depth": (("frame", "y", "x"), rng.integers(0, 11, (n, *shape)).astype(np.uint8)),
         "confidence": (("frame", "y", "x"), rng.random((n, *shape)).astype(np.float32))},
        coords={"frame": list(frames), "y": (np.arange(shape[0]) + 0.5) * pixel,
                "x": (np.arange(shape[1]) + 0.5) * pixel},
    )  # fmt: skip
    if valid is not None:
        ds["valid"] = (("frame", "y", "x"), valid.astype(np.uint8))
        ds["valid_reason"] = (("frame", "y", "x"), np.where(valid, 0, 2).astype(np.uint8))
    return ds


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]  # the colour bars have no title


def test_three_panels_in_the_input_extent():
    fig = plot_preview(_image(), _result(), frame=4)
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["input", "depth", "confidence"]
    assert len(fig.axes) == 5  # and the colour bars of depth and confidence
    for ax in panels:
        assert len(ax.get_images()) >= 1 and ax.get_xlabel() == "x [A]"
    image, depth, confidence = (ax.get_images()[0] for ax in panels)
    np.testing.assert_allclose(image.get_extent(), [0, 4.8, 6.4, 0], atol=1e-12)  # Angstrom, y down
    np.testing.assert_allclose(depth.get_extent(), [0, 4.8, 6.4, 0], atol=1e-12)
    np.testing.assert_array_equal(image.get_array(), _image().sel(frame=4).values)
    np.testing.assert_array_equal(depth.get_array(), _result()["depth"].sel(frame=4).values)
    assert depth.norm.vmin == -0.5 and depth.norm.vmax == 10.5  # depth_cmap: 0-10 atoms
    assert confidence.get_clim() == (0, 1)
    assert fig.axes[3].get_ylabel() == "atoms per column" and fig.axes[4].get_ylabel() == "confidence"
    assert fig.get_suptitle() == "frame 4" and panels[1].get_legend() is None  # no check: nothing hatched


def test_default_frame_is_the_first_and_a_missing_one_is_named():
    fig = plot_preview(_image(), _result(), title="movie.gif, frame 3")
    np.testing.assert_array_equal(_panels(fig)[0].get_images()[0].get_array(), _image().sel(frame=3).values)
    assert fig.get_suptitle() == "movie.gif, frame 3"
    with pytest.raises(ValueError, match=r"frame 7 is not in the result \(frames 3-4\)"):
        plot_preview(_image(), _result(), frame=7)
    with pytest.raises(ValueError, match="frame 4 is not in the image"):
        plot_preview(_image(frames=(3,)), _result(), frame=4)


def test_pixels_not_vouched_for_are_hatched_with_a_legend_and_the_summary():
    valid = np.ones((2, 16, 12), bool)
    valid[1, :6, :5] = False  # 30 of 192 pixels of frame 4
    fig = plot_preview(_image(), _result(valid=valid), frame=4)
    depth = _panels(fig)[1]
    (entry,) = depth.get_legend().get_texts()
    assert entry.get_text() == "not vouched for (15.6 %)"
    (hatched,) = [c for c in depth.collections if getattr(c, "hatches", None) == ["////"]]
    # the hatched region follows the pixel edges: its path holds the corner of the invalid block
    vertices = np.concatenate([p.vertices for p in hatched.get_paths()])
    assert np.abs(vertices - [2.0, 2.4]).sum(axis=1).min() < 1e-2  # 5 x 6 pixels of 0.4 A
    grey = depth.get_images()[1].get_array()  # greyed overlay: opaque exactly where not valid
    np.testing.assert_array_equal(grey[..., 3] > 0, ~valid[1])
    title = fig.get_suptitle().splitlines()
    assert title[0] == "frame 4" and title[1].startswith("frame 4: could not vouch for 15.6 % of the pixels")
    # a frame without a pixel to hatch: the legend says 0 %, nothing greyed
    fig = plot_preview(_image(), _result(valid=valid), frame=3)
    depth = _panels(fig)[1]
    assert depth.get_legend().get_texts()[0].get_text() == "not vouched for (0.0 %)"
    assert len(depth.get_images()) == 1 and not depth.collections


@pytest.mark.parametrize("valid", [None, np.zeros((1, 1, 3), bool), np.ones((1, 1, 1), bool)])
def test_tiny_and_degenerate_fields(valid):
    shape = (1, 1) if valid is None else valid.shape[1:]
    fig = plot_preview(_image(frames=(0,), shape=(4, 4 * shape[1])), _result(frames=(0,), shape=shape, valid=valid))
    assert len(_panels(fig)) == 3


def test_written_atomically_as_png(tmp_path):
    from PIL import Image

    path = save_figure(plot_preview(_image(), _result(valid=np.zeros((2, 16, 12), bool))), tmp_path / "p.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode in ("RGB", "RGBA") and png.width > 1000 and png.height > 400
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
    assert {"png", "pdf", "svg"} <= set(figure_formats()) and "nc" not in figure_formats()
