"""HyperSpy signals in and out (issue 14): calibrated Signal2D -> predict -> signals on the label grid."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

hs = pytest.importorskip("hyperspy.api")

from segdepth.data.hyperspy import from_signal, to_signal, to_signals  # noqa: E402
from segdepth.learn.inference import load_default_model, predict  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PX = 0.053  # [A], the paper's image pixel; the default model bins it 4x to its 0.212 A label grid
N = 256  # 13.6 A: more than the 12 A window of the validity check


@pytest.fixture(scope="module")
def default():
    return load_default_model()


def _data(seed: int = 0, shape=(N, N)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(5.0, shape) / 5.0 + 0.05).astype(np.float32)


def _signal(data: np.ndarray, scale: float, units: str, title: str = "") -> object:
    signal = hs.signals.Signal2D(data)
    for axis in signal.axes_manager.signal_axes:
        axis.scale, axis.units = scale, units
    signal.metadata.General.title = title
    return signal


def test_an_hspy_file_predicts_as_its_array_with_the_pixel_size_given(default, tmp_path):
    model, card = default
    data = _data()
    _signal(data, PX / 10, "nm", title="particle").save(tmp_path / "particle.hspy")
    signal = hs.load(tmp_path / "particle.hspy")

    ds = predict(signal, model, card, lam=2.5)
    expected = predict(data, model, card, pixel_size=PX, lam=2.5)
    assert ds.attrs["pixel_size"] == pytest.approx(PX) and ds.attrs["source"] == "particle"
    np.testing.assert_array_equal(ds["depth"].values, expected["depth"].values)
    np.testing.assert_array_equal(ds["confidence"].values, expected["confidence"].values)
    # HyperSpy's axis values are pixel centres (offset 0: the first centre at 0); the array's at (i + 0.5) * PX
    np.testing.assert_allclose(ds["x"].values, expected["x"].values - PX / 2, atol=1e-9)

    maps = predict(signal, model, card, lam=2.5, as_signals=True)
    assert list(maps) == ["depth", "confidence"]
    depth = maps["depth"]
    assert isinstance(depth, hs.signals.Signal2D) and depth.axes_manager.navigation_dimension == 0
    np.testing.assert_array_equal(depth.data, expected["depth"].values[0])
    np.testing.assert_array_equal(maps["confidence"].data, expected["confidence"].values[0])
    for axis, dim in zip(depth.axes_manager.signal_axes, ("x", "y"), strict=True):
        assert axis.units == "nm" and axis.size == ds.sizes[dim]
        assert axis.scale == pytest.approx(0.0212)  # the 0.212 A label grid, in the input's nm
        assert axis.offset == pytest.approx(ds[dim].values[0] / 10)
    assert depth.metadata.General.title == "depth (atoms) of particle"
    assert maps["confidence"].metadata.Signal.quantity == "confidence"
    depth.save(tmp_path / "depth.hspy")  # the metadata can be written
    assert hs.load(tmp_path / "depth.hspy").axes_manager.signal_axes[0].scale == pytest.approx(0.0212)


def test_a_stack_keeps_its_navigation_axis(default):
    model, card = default
    frames = np.stack([_data(1), _data(2)])
    signal = _signal(frames, PX * 100, "pm", title="movie")
    time = signal.axes_manager.navigation_axes[0]
    time.name, time.scale, time.units = "time", 0.5, "s"

    maps = predict(signal, model, card, as_signals=True)
    expected = predict(frames, model, card, pixel_size=PX)
    for name in ("depth", "confidence"):
        out = maps[name]
        assert out.axes_manager.navigation_shape == (2,) and out.data.shape[0] == 2
        nav = out.axes_manager.navigation_axes[0]
        assert (nav.name, nav.scale, nav.units) == ("time", 0.5, "s")
        np.testing.assert_array_equal(out.data, expected[name].values)
        assert [a.units for a in out.axes_manager.signal_axes] == ["pm", "pm"]
        assert out.axes_manager.signal_axes[0].scale == pytest.approx(21.2)


def test_nm_pm_angstrom_and_micrometre_calibrations_agree():
    data = _data(shape=(40, 48))
    images = [from_signal(_signal(data, PX * f, units)) for units, f in
              [("nm", 0.1), ("pm", 100.0), ("Å", 1.0), ("A", 1.0), ("µm", 1e-4)]]
    for image in images:
        assert image.dims == ("frame", "y", "x") and image.shape == (1, 40, 48) and image.dtype == np.float32
        assert image.attrs["pixel_size"] == pytest.approx(PX, rel=1e-12)
        np.testing.assert_allclose(image["x"].values, np.arange(48) * PX, atol=1e-12)
        np.testing.assert_array_equal(image.values[0], data)


def test_an_uncalibrated_signal_asks_for_the_pixel_size():
    data = _data(shape=(64, 64))
    for signal in (hs.signals.Signal2D(data), _signal(data, 1.0, "px")):
        with pytest.raises(ValueError, match=r"not calibrated .*pass pixel_size=") as err:
            predict(signal)
        assert "\n" not in str(err.value)
    image = from_signal(hs.signals.Signal2D(data), pixel_size=PX)  # given: centres as read_image puts them
    assert image.attrs["pixel_size"] == PX
    np.testing.assert_allclose(image["x"].values, (np.arange(64) + 0.5) * PX)
    with pytest.raises(ValueError, match="reciprocal"):
        from_signal(_signal(data, 0.1, "1 / nm"))
    with pytest.raises(ValueError, match="not square"):
        signal = _signal(data, 0.01, "nm")
        signal.axes_manager.signal_axes[1].scale = 0.02
        from_signal(signal)
    with pytest.raises(ValueError, match="2 signal axes"):
        from_signal(hs.signals.Signal1D(data))


def test_an_image_goes_back_to_the_signal_it_came_from():
    signal = _signal(np.stack([_data(3, (32, 40))] * 3), 0.02, "nm", title="series")
    signal.axes_manager.signal_axes[0].offset = 0.5
    back = to_signal(from_signal(signal), like=signal)
    np.testing.assert_array_equal(back.data, signal.data)
    for a, b in zip(back.axes_manager._axes, signal.axes_manager._axes, strict=True):
        assert (a.size, a.units, a.navigate) == (b.size, b.units, b.navigate)
        assert a.scale == pytest.approx(b.scale) and a.offset == pytest.approx(b.offset)
    # without a signal to follow: a frame axis, Angstrom
    loose = to_signal(from_signal(signal))
    assert loose.axes_manager.navigation_axes[0].name == "frame"
    x_axis = loose.axes_manager.signal_axes[0]
    assert x_axis.units == "Å" and x_axis.scale == pytest.approx(0.2)


def test_predict_checked_gives_valid_as_a_signal(default):
    from test_lattice import PX as LATTICE_PX
    from test_lattice import N as LATTICE_N
    from test_lattice import _columns_image

    from segdepth.learn.validity import predict_checked
    from segdepth.physics.structures import LATTICE_CONSTANT

    model, card = default
    clean = _columns_image(LATTICE_CONSTANT, cation_only=False)
    data = (np.random.default_rng(4).poisson(100 * clean) / 100).astype(np.float32)
    signal = _signal(data, LATTICE_PX / 10, "nm", title="crystal")
    maps = predict_checked(signal, model, card, tta=False, as_signals=True)
    expected = predict_checked(data, model, card, pixel_size=LATTICE_PX, tta=False)
    assert list(maps) == ["depth", "confidence", "valid", "valid_reason"]
    assert maps["valid"].data.shape == (expected.sizes["y"], expected.sizes["x"])
    assert LATTICE_N * LATTICE_PX / expected.attrs["label_pixel_size"] == pytest.approx(maps["valid"].data.shape[0],
                                                                                        abs=1)
    for name in maps:
        np.testing.assert_array_equal(maps[name].data, expected[name].values[0])
    assert maps["valid"].metadata.Signal.quantity.startswith("valid")
    assert maps["valid_reason"].metadata.SegDepth.flag_meanings.startswith("ceo2_110")
    assert maps["valid"].axes_manager.signal_axes[0].scale == pytest.approx(expected.attrs["label_pixel_size"] / 10)
    with pytest.raises(ValueError, match="holds no 'valid'"):
        to_signals(predict(data, model, card, pixel_size=LATTICE_PX), names=["valid"])


def test_inference_works_without_hyperspy():
    code = """
import sys
sys.modules["hyperspy"] = None  # not importable
import numpy as np, torch, xarray as xr
torch.set_num_threads(1)
import segdepth
from segdepth.learn import inference
data = (np.random.default_rng(0).poisson(5.0, (64, 64)) / 5.0 + 0.05).astype(np.float32)
ds = segdepth.predict(data, pixel_size=0.212)
image = xr.DataArray(data[None], dims=("frame", "y", "x"), attrs={"pixel_size": 0.212})
same = inference.predict(image)
assert (ds["depth"].values == same["depth"].values).all() and ds.sizes["x"] == 64
try:
    segdepth.predict(data, pixel_size=0.212, as_signals=True)
except ImportError as err:
    assert "segdepth[hyperspy]" in str(err), err
else:
    raise AssertionError("as_signals without HyperSpy")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_numpy_or_rescaled_xarray_input_needs_only_the_pixel_size(default):
    model, card = default
    data = _data(5, (64, 72))
    with pytest.raises(ValueError, match="pixel size of the image is unknown"):
        predict(data, model, card)
    a = predict(data, model, card, pixel_size=0.212)
    wrong = xr.DataArray(data[None], dims=("frame", "y", "x"),
                         coords={"y": (np.arange(64) + 0.5) * 0.1, "x": (np.arange(72) + 0.5) * 0.1},
                         attrs={"pixel_size": 0.1})
    b = predict(wrong, model, card, pixel_size=0.212)  # the given pixel size wins, coordinates rescaled
    np.testing.assert_array_equal(a["depth"].values, b["depth"].values)
    np.testing.assert_allclose(a["x"].values, b["x"].values)
    with pytest.raises(ValueError, match="both the model and its card"):
        predict(data, model, pixel_size=0.212)
