"""HyperSpy signals in and out: a ``Signal2D`` as an image for :func:`segdepth.predict`, results as signals.

:func:`from_signal` turns a HyperSpy ``Signal2D`` (an image, or a stack with navigation axes) into the
``xarray.DataArray`` that :func:`segdepth.data.io.read_image` returns: float32 ``(frame, y, x)``,
coordinates in Angstrom and attribute ``pixel_size`` [A]. The pixel size comes from the calibrated signal
axes (units in :data:`segdepth.data.io.LENGTH_UNITS`: nm, Å, pm, µm, ...); uncalibrated axes (units
``<undefined>``, or pixels) need ``pixel_size=``. All navigation axes, flattened in the order of the
data, become ``frame``.

:func:`to_signal` turns one variable of a prediction (``depth``, ``confidence``, ``valid``, ...) back into a
``Signal2D`` whose signal axes have the label grid's scale and offset (in the input's length unit, Å when the
input had none) and whose navigation axes are those of the input signal (``like``). :func:`to_signals` does
that for every map of a prediction::

    import hyperspy.api as hs
    import segdepth

    signal = hs.load("image.dm4")
    maps = segdepth.predict(signal, lam=2.5, as_signals=True)  # or segdepth.predict_checked(...)
    maps["depth"].plot()

HyperSpy is an optional extra (``pip install segdepth[hyperspy]``): it is imported only by the functions
that make signals, so the rest of segdepth works without it. Axis values are pixel centres (HyperSpy's
convention: the first pixel sits at ``offset``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segdepth.data.io import (
    LENGTH_UNITS,
    beam_energy,
    check_pixel_size,
    square_pixel_size,
    to_float_frames,
    unit_to_angstrom,
)

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["MAP_NAMES", "from_signal", "is_signal", "to_signal", "to_signals"]

#: The maps :func:`to_signals` returns by default (those the prediction holds), in this order.
MAP_NAMES = ("depth", "confidence", "valid", "valid_reason")
#: What each map is (the signal's ``metadata.Signal.quantity`` and the start of its title).
_QUANTITIES = {
    "depth": "depth (atoms)",
    "depth_low": "smallest count of the 90 % count set (atoms)",
    "depth_high": "largest count of the 90 % count set (atoms)",
    "confidence": "confidence",
    "probability": "probability of the depth class",
    "crystal": "crystal (lattice within the margin)",
    "valid": "valid (the estimate applies)",
    "valid_reason": "valid reason (flags)",
    "lattice_score": "lattice score",
    "ceo2_score": "CeO2 [110] score",
    "disagreement": "disagreement (atoms)",
}
_ANGSTROM = "Å"


def is_signal(obj) -> bool:
    """Whether ``obj`` is a HyperSpy signal (or of a subclass, e.g. pyxem's), without importing HyperSpy."""
    return hasattr(obj, "axes_manager") and any(
        (getattr(cls, "__module__", "") or "").split(".")[0] == "hyperspy" for cls in type(obj).__mro__
    )


def _title(signal) -> str:
    title = str(signal.metadata.get_item("General.title", "") or "")
    if not title:
        title = str(signal.metadata.get_item("General.original_filename", "") or "")
    return title


def _where(signal) -> str:
    title = _title(signal)
    return f"signal {title!r}" if title else "the signal"


def _axis_factor(axis, where: str) -> float | None:
    """Size [A] of one pixel along the uniform signal ``axis``; ``None`` when it is not calibrated."""
    if not getattr(axis, "is_uniform", True):
        raise ValueError(f"{where}: the signal axis {axis.name!r} is not uniform; resample it to a uniform axis")
    factor = unit_to_angstrom(axis.units, where)
    if factor is None:
        return None
    scale = float(axis.scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where}: the signal axis {axis.name!r} has scale {scale:g}; expected a positive pixel size")
    return scale * factor


def _units_text(axis) -> str:
    units = axis.units
    return "<undefined>" if units is None or str(units) in ("", "<undefined>") else str(units)


def from_signal(signal, *, pixel_size=None) -> xr.DataArray:
    """The image of a HyperSpy ``Signal2D``, as :func:`segdepth.data.io.read_image` returns it.

    Parameters
    ----------
    signal : hyperspy.signals.Signal2D
        An image (no navigation axes) or a stack (navigation axes, e.g. a time series); lazy signals are
        computed.
    pixel_size : float, optional
        Pixel size [A]. Overrides the axes' calibration (pixel centres then at ``(i + 0.5) * pixel_size``
        as in :func:`~segdepth.data.io.read_image`); needed when the axes are not calibrated.

    Returns
    -------
    xarray.DataArray
        Float32 ``(frame, y, x)``: the navigation axes flattened in data order into ``frame``; ``y``, ``x``
        at the pixel centres [A] (``offset + i * scale`` of the signal axes, converted); attributes
        ``pixel_size`` [A], ``source`` (the signal's title), ``long_name``, ``frames_in_file``,
        ``navigation_shape`` (of the data, to restore the stack, :func:`to_signal`) and ``beam_energy`` [kV]
        (``metadata.Acquisition_instrument.TEM.beam_energy``, when set).

    Raises
    ------
    ValueError
        One line: not 2 signal axes, non-uniform or non-length axes, non-square pixels, uncalibrated axes
        without ``pixel_size``, or data that :func:`~segdepth.data.io.read_image` would refuse (complex,
        NaN, all zero, ...).
    """
    import xarray as xr

    where = _where(signal)
    manager = signal.axes_manager
    if manager.signal_dimension != 2:
        raise ValueError(f"{where}: expected an image (a Signal2D with 2 signal axes), got {manager.signal_dimension} "
                         "signal axes; convert it with signal.as_signal2D((x_axis, y_axis))")
    axis_x, axis_y = manager.signal_axes
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size)
        factor_y = factor_x = None
    else:
        factor_y, factor_x = _axis_factor(axis_y, where), _axis_factor(axis_x, where)
        if factor_y is None or factor_x is None:
            bare = axis_x if factor_x is None else axis_y
            raise ValueError(
                f"{where}: its axes are not calibrated (units {_units_text(bare)!r}, scale "
                f"{float(bare.scale):g}); pass pixel_size= (Angstrom per pixel) or set the axes' scale and units"
            )
        pixel_size = square_pixel_size(factor_y, factor_x, where)
    data = np.asarray(signal.data)
    nav_shape = tuple(int(n) for n in data.shape[:-2])
    frames = to_float_frames(data.reshape(-1, *data.shape[-2:]), where, False)
    n_y, n_x = frames.shape[1:]
    if factor_y is None:  # a given pixel size: centres as read_image puts them
        y, x = (np.arange(n_y) + 0.5) * pixel_size, (np.arange(n_x) + 0.5) * pixel_size
    else:  # the axes' values (pixel centres), in A
        y = float(axis_y.offset) * factor_y / float(axis_y.scale) + np.arange(n_y) * factor_y
        x = float(axis_x.offset) * factor_x / float(axis_x.scale) + np.arange(n_x) * factor_x
    coords = {
        "frame": np.arange(frames.shape[0], dtype=np.int64),
        "y": xr.Variable("y", y, {"units": _ANGSTROM, "long_name": "y (pixel centre)"}),
        "x": xr.Variable("x", x, {"units": _ANGSTROM, "long_name": "x (pixel centre)"}),
    }
    attrs = {"pixel_size": float(pixel_size), "source": _title(signal), "long_name": "intensity",
             "frames_in_file": int(frames.shape[0]), "navigation_shape": list(nav_shape)}
    energy = beam_energy({"metadata": signal.metadata.as_dictionary()})
    if energy is not None:
        attrs["beam_energy"] = energy
    return xr.DataArray(frames, dims=("frame", "y", "x"), coords=coords, name="image", attrs=attrs)


def _output_units(like) -> tuple[str, float]:
    """Length unit of the output's signal axes and its size [A]: ``like``'s when it is a length, else Å."""
    if like is not None:
        units = like.axes_manager.signal_axes[0].units
        try:
            factor = unit_to_angstrom(units, "like")
        except ValueError:
            factor = None
        if factor is not None:
            return str(units), factor
    return _ANGSTROM, LENGTH_UNITS["å"]


def _spatial_axis(da, dim: str, units: str, factor: float) -> dict:
    values = np.asarray(da[dim].values, dtype=np.float64)
    if values.size > 1:
        step = float(values[-1] - values[0]) / (values.size - 1)
    else:
        step = float(da.attrs.get("label_pixel_size", da.attrs.get("pixel_size", 1.0)))
    return {"name": dim, "size": int(values.size), "scale": step / factor,
            "offset": float(values[0]) / factor if values.size else 0.0, "units": units, "navigate": False}


def _navigation_axes(da, like, n_frames: int) -> tuple[list[dict], tuple[int, ...]]:
    """The axes (data order) and shape that replace ``frame``: ``like``'s navigation, else a ``frame`` axis."""
    if like is not None:
        nav = like.axes_manager.navigation_axes[::-1]  # data order
        shape = tuple(int(a.size) for a in nav)
        if int(np.prod(shape, dtype=np.int64)) == n_frames:
            axes = []
            for axis in nav:
                spec = axis.get_axis_dictionary()
                spec["navigate"] = True
                axes.append(spec)
            return axes, shape
    if n_frames == 1 and (like is None or like.axes_manager.navigation_dimension == 0):
        return [], ()
    frames = np.asarray(da["frame"].values) if "frame" in da.coords else np.arange(n_frames)
    steps = np.diff(frames)
    scale = float(steps[0]) if steps.size and np.all(steps == steps[0]) and steps[0] > 0 else 1.0
    offset = float(frames[0]) if scale != 1.0 or np.all(steps == 1) else 0.0
    return [{"name": "frame", "size": n_frames, "scale": scale, "offset": offset, "units": "<undefined>",
             "navigate": True}], (n_frames,)


def _metadata(name: str, da, like, attrs: dict) -> dict:
    quantity = _QUANTITIES.get(name, str(da.attrs.get("long_name", name)))
    source = _title(like) if like is not None else str(attrs.get("source", "") or "")
    general = {"title": f"{quantity} of {source}" if source else quantity}
    if like is not None:
        original = like.metadata.get_item("General.original_filename")
        if original:
            general["original_filename"] = original
    segdepth = {"variable": name}
    for key, value in {**attrs, **da.attrs}.items():
        if isinstance(value, str | int | float | bool | np.number):
            segdepth[key] = value.item() if isinstance(value, np.number) else value
        elif isinstance(value, np.ndarray | list | tuple):
            segdepth[key] = np.asarray(value).tolist()
    metadata = {"General": general, "Signal": {"quantity": quantity}, "SegDepth": segdepth}
    if like is not None:
        for node in ("Acquisition_instrument", "Sample"):
            if like.metadata.has_item(node):
                metadata[node] = like.metadata.get_item(node).as_dictionary()
    return metadata


def to_signal(dataarray: xr.DataArray, like=None, *, attrs: dict | None = None):
    """A ``Signal2D`` of ``dataarray`` (dims ``(frame, [depth_class,] y, x)`` or ``(y, x)``, coordinates in A).

    Parameters
    ----------
    dataarray : xarray.DataArray
        A map of a prediction (e.g. ``result["depth"]``) or an image from :func:`from_signal`.
    like : hyperspy signal, optional
        The input signal: its navigation axes replace ``frame`` (when their sizes match the frames) and its
        length unit is used for the signal axes; its title, ``Acquisition_instrument`` and ``Sample``
        metadata are carried over. Without it a stack gets a ``frame`` navigation axis and the axes are in Å.
    attrs : dict, optional
        The dataset's attributes, recorded in ``metadata.SegDepth`` with those of ``dataarray``.

    Returns
    -------
    hyperspy.signals.Signal2D
        Signal axes ``x``, ``y`` with the coordinates' spacing and first value (pixel centres) in the chosen
        unit; title ``"<what it is> of <input title>"``; ``metadata.Signal.quantity`` names the map.
    """
    try:
        import hyperspy.api as hs
    except ImportError:
        raise ImportError("returning HyperSpy signals needs HyperSpy (pip install 'segdepth[hyperspy]')") from None

    da = dataarray
    if da.dims[-2:] != ("y", "x"):
        raise ValueError(f"to_signal: expected dims (..., y, x), got {da.dims}")
    if "frame" not in da.dims:
        da = da.expand_dims("frame")
    if da.dims[0] != "frame" or da.ndim not in (3, 4):
        raise ValueError(f"to_signal: expected dims (frame, [depth_class,] y, x) or (y, x), got {dataarray.dims}")
    units, factor = _output_units(like)
    nav_axes, nav_shape = _navigation_axes(da, like, da.sizes["frame"])
    extra = []
    if da.ndim == 4:  # e.g. probability: (frame, depth_class, y, x)
        dim = da.dims[1]
        values = np.asarray(da[dim].values) if dim in da.coords else np.arange(da.shape[1])
        step = float(values[-1] - values[0]) / (values.size - 1) if values.size > 1 else 1.0
        extra = [{"name": dim, "size": int(da.shape[1]), "scale": step, "offset": float(values[0]),
                  "units": "<undefined>", "navigate": True}]
    data = np.asarray(da.values).reshape(*nav_shape, *da.shape[1:])
    axes = [*nav_axes, *extra, _spatial_axis(da, "y", units, factor), _spatial_axis(da, "x", units, factor)]
    name = str(dataarray.name) if dataarray.name is not None else "map"
    return hs.signals.Signal2D(data, axes=axes, metadata=_metadata(name, da, like, dict(attrs or {})))


def to_signals(result: xr.Dataset, like=None, names=None) -> dict:
    """The maps of a prediction as HyperSpy signals, see :func:`to_signal`.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`segdepth.learn.inference.predict` or :func:`segdepth.learn.validity.predict_checked`.
    like : hyperspy signal, optional
        The input signal (navigation axes, length unit, title).
    names : sequence of str, optional
        The variables to convert; default those of :data:`MAP_NAMES` that ``result`` holds (``depth``,
        ``confidence`` and, from ``predict_checked``, ``valid``, ``valid_reason``).

    Returns
    -------
    dict of str to hyperspy.signals.Signal2D
        In the order of ``names``; e.g. ``to_signals(result)["depth"].plot()``.
    """
    if names is None:
        names = [n for n in MAP_NAMES if n in result.data_vars]
    missing = [n for n in names if n not in result.data_vars]
    if missing:
        raise ValueError(f"to_signals: the result holds no {', '.join(map(repr, missing))} "
                         f"(it has {', '.join(result.data_vars)})")
    attrs = dict(result.attrs)
    return {n: to_signal(result[n], like, attrs=attrs) for n in names}
