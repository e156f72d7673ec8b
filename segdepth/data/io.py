"""Reading microscope images and writing results.

:func:`read_image` turns a file from a microscope or a simulation into one
``xarray.DataArray`` with dims ``(frame, y, x)``, float32 intensities and
coordinates in Angstrom, whatever the format. Every problem with the input is a
``ValueError`` (or ``FileNotFoundError``) whose one-line message names the file
and says what is wrong, so that the command line can print it as it is.

Supported formats
-----------------
========================  ==============================  ===========================================
extension                 reader                          pixel size taken from
========================  ==============================  ===========================================
``.npy``                  ``numpy.load``                  nowhere (pass ``pixel_size``)
``.tif``, ``.tiff``       ``tifffile``                    Gatan or ImageJ tags, else resolution tags
                                                          in cm / mm / um (dots per inch are ignored:
                                                          they are a printing convention)
``.nc``                   ``xarray``                      spacing of the ``x`` coordinate (its
                                                          ``units``; Angstrom when absent)
``.dm3``, ``.dm4``        ``rsciio.digitalmicrograph``    axes scale and units
``.emd``                  ``rsciio.emd`` (needs h5py)     axes scale and units
``.ser``, ``.emi``        ``rsciio.tia``                  axes scale and units
``.mrc``                  ``rsciio.mrc``                  axes scale and units
``.gif``, ``.png``        ``PIL`` (Pillow)                nowhere (pass ``pixel_size`` or calibrate
                                                          from the lattice, :mod:`segdepth.data.calibration`)
========================  ==============================  ===========================================

A movie (GIF or animated PNG, a TIFF or ``.npy`` stack, a stack in a microscope
file) becomes ``(frame, y, x)``. Colour images whose red, green and blue
channels are equal (greyscale saved as RGB, as in most GIF movies) become
greyscale; colour images with different channels are refused (an intensity
cannot be recovered from a colour map). A TIFF whose pages have different
sizes, or data with more than 3 dimensions, is refused.

``frames`` and ``crop`` select part of the data *before* it is converted to
float32, so a memory-mapped ``.npy`` stack, a TIFF stack (page by page) or a
GIF movie (frame by frame) is only read where selected.

Readers
-------
Each format has one :class:`Reader` in :data:`READERS` (keyed by the lower-case
extension; :data:`SUPPORTED_EXTENSIONS` lists its keys). A reader returns a
:class:`RawImage`: the data as found in the file (or only the frames it was
asked for), the file's pixel size and whether the data are colour.
``Reader.streams`` says whether the format can be read a few frames at a time
without reading the rest of the file (``.npy``, TIFF, GIF, PNG); the command
line reads long series of those chunk by chunk, with :func:`frame_indices`
turning the ``frames`` selection into the indices to read.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # xarray is imported where it is used: a failing command line stays quick
    import xarray as xr

__all__ = [
    "READERS",
    "SUPPORTED_EXTENSIONS",
    "BEAM_ENERGY_RANGE",
    "RawImage",
    "Reader",
    "beam_energy",
    "check_beam_energy",
    "check_pixel_size",
    "check_positive",
    "frame_indices",
    "parse_crop",
    "parse_frames",
    "read_image",
    "square_pixel_size",
    "to_float_frames",
    "unit_to_angstrom",
]

#: High tensions [kV] a transmission electron microscope runs at (wider than any: 20-1300 kV instruments exist);
#: a stated beam energy outside is not one (an unset tag, a unit slip) and is ignored or refused.
BEAM_ENERGY_RANGE = (10.0, 3000.0)
#: Length units understood in file metadata, as their size in Angstrom.
LENGTH_UNITS = {
    "a": 1.0, "å": 1.0, "\u212b": 1.0, "ang": 1.0, "angstrom": 1.0, "angstroms": 1.0,
    "pm": 0.01, "nm": 10.0, "um": 1e4, "µm": 1e4, "μm": 1e4, "micron": 1e4, "microns": 1e4,
    "mm": 1e7, "cm": 1e8, "m": 1e10,
}  # fmt: skip
_NO_UNITS = {"", "<undefined>", "undefined", "px", "pixel", "pixels", "none", "t.b.d."}



@dataclass(frozen=True)
class RawImage:
    """What a :class:`Reader` found in a file, before frame selection, crop and checks.

    Attributes
    ----------
    data : numpy.ndarray
        The array as stored (possibly memory-mapped, any dtype, colour channels
        last): ``(y, x)``, ``(frame, y, x)``, with a trailing channel axis when
        in colour. Only the frames in ``selected_frames`` when that is set.
    pixel_size : float or None
        Pixel size the file gives [A]; ``None`` when it gives none or when the
        reader was asked not to look (``calibrate=False``).
    is_rgb : bool or None
        Whether the last axis holds colour channels; ``None`` when the format
        does not say (guessed from the shape later).
    selected_frames : tuple of int or None
        Indices in the file of the frames in ``data``, when the reader read only
        the selected frames; ``None`` when ``data`` holds every frame and the
        selection is still to be applied.
    frames_in_file : int or None
        Number of frames in the file; set (only) with ``selected_frames``,
        otherwise counted from ``data``.
    beam_energy : float or None
        High tension the file states [kV]; ``None`` when it states none.
    """

    data: np.ndarray
    pixel_size: float | None = None
    is_rgb: bool | None = None
    selected_frames: tuple[int, ...] | None = None
    frames_in_file: int | None = None
    beam_energy: float | None = None

    def __post_init__(self):
        if (self.selected_frames is None) != (self.frames_in_file is None):
            raise TypeError("RawImage: selected_frames and frames_in_file must be given together")


@dataclass(frozen=True)
class Reader:
    """A file format: the function that reads it and what it can do.

    Attributes
    ----------
    name : str
        The library (and plug-in) that reads the format, e.g. ``"tifffile"``.
    suffixes : tuple of str
        Lower-case extensions, with the dot, that select this reader.
    read : callable
        ``read(path, *, calibrate, frames) -> RawImage``. ``calibrate``: look
        up the pixel size in the file's metadata; ``frames``: the selection
        (as :func:`read_image` takes it), which a streaming reader applies
        while reading and any other reader may ignore (it is then applied to
        the whole data). Raises ``ValueError`` starting with the path for a
        problem it names itself, ``_Unreadable`` when the library fails.
    streams : bool
        Whether a few frames can be read without reading the others (a
        memory map, or frame by frame): long series are then read chunk by chunk.
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[..., RawImage]
    streams: bool


class _Unreadable(Exception):
    """Internal: a reader failed; the message is completed by :func:`read_image`."""


def _one_line(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:197] + "..."


def check_positive(value, *, name: str, units: str) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` and ``units`` unless finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str | np.number):
        raise ValueError(f"{name} must be a positive number [{units}], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number [{units}], got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be finite and > 0 [{units}], got {value!r}")
    return number


def check_beam_energy(energy, *, name: str = "beam energy") -> float:
    """Return ``energy`` [kV] as a float, or raise ``ValueError`` unless it lies in :data:`BEAM_ENERGY_RANGE`."""
    value = check_positive(energy, name=name, units="kV")
    lo, hi = BEAM_ENERGY_RANGE
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be a high tension in kV ({lo:g}-{hi:g}), got {energy!r}"
                         + (" (volts?)" if value > hi else ""))
    return value


def check_pixel_size(pixel_size, *, name: str = "pixel size") -> float:
    """Return ``pixel_size`` as a float, or raise ``ValueError`` unless it is finite and > 0 [A]."""
    return check_positive(pixel_size, name=name, units="A")


def unit_to_angstrom(units, where: str) -> float | None:
    """Size of ``units`` in Angstrom; ``None`` when the file gives no length unit."""
    if units is None:
        return None
    if isinstance(units, bytes):
        units = units.decode("latin-1")
    text = str(units).strip()
    if "\\u" in text:  # ImageJ writes Angstrom as the escape "\u00C5"
        text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    key = text.lower()
    if key in _NO_UNITS:
        return None
    compact = key.replace(" ", "")  # rosettasciio writes "1 / nm"
    if compact.startswith("1/") or "^-1" in compact or "⁻¹" in compact:
        raise ValueError(f"{where}: axes are in reciprocal units ({text!r}); expected a real-space image")
    if key in LENGTH_UNITS:
        return LENGTH_UNITS[key]
    raise ValueError(f"{where}: unknown length unit {text!r} for the pixel size; pass pixel_size explicitly")


def _scaled(scale, units, where: str) -> float | None:
    factor = unit_to_angstrom(units, where)
    if factor is None or scale is None:
        return None
    try:
        value = float(scale) * factor
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def square_pixel_size(px_y: float | None, px_x: float | None, where: str) -> float | None:
    """The pixel size [A] of calibrated ``px_y``, ``px_x`` (either may be ``None``); non-square pixels are refused."""
    if px_x is None or px_y is None:
        return px_x if px_y is None else px_y
    if not math.isclose(px_x, px_y, rel_tol=1e-3):
        raise ValueError(f"{where}: pixels are not square (y {px_y:.6g} A, x {px_x:.6g} A); resample the image first")
    return px_x


@contextlib.contextmanager
def _quiet_loggers(*names):
    """Silence the readers' own log warnings: their problems reach the caller as one ValueError."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _reader_errors(path: Path):
    """Pass our own ``ValueError`` (its message starts with ``path``) on; any other failure is unreadable."""
    try:
        yield
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise _Unreadable(_one_line(err)) from None
    except Exception as err:
        raise _Unreadable(_one_line(err)) from None


# --------------------------------------------------------------------- readers
# Each is read(path, *, calibrate, frames) -> RawImage (see Reader); they are registered in READERS below.


def _read_npy(path: Path, *, calibrate: bool, frames) -> RawImage:
    """``.npy`` memory-mapped: the frame selection and the crop read only their part later."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if any(text in str(err) for text in ("allow_pickle", "Object arrays", "Python objects")):
            raise ValueError(f"{path}: non-numeric data (object array); expected a numeric image") from None
        raise _Unreadable(_one_line(err)) from None
    except Exception as err:  # truncated header, not a .npy file, ...
        raise _Unreadable(_one_line(err)) from None
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path}: expected a single array in the .npy file")
    return RawImage(data)


def _read_pil(path: Path, *, calibrate: bool, frames) -> RawImage:
    """GIF / PNG (animated or not) with Pillow, only the selected frames: (frame, y, x), (frame, y, x, 3) in colour."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            keys = range(n) if frames is None else frame_indices(frames, n, path)
            out, size = [], None
            for k in keys:
                im.seek(k)
                if size is not None and im.size != size:
                    raise ValueError(f"{path}: frames of different sizes ({size} and {im.size} at frame {k})")
                size = im.size
                mode = im.mode
                if mode in ("1", "L", "I", "F") or mode.startswith("I;"):
                    out.append(np.asarray(im))
                elif mode in ("LA", "La"):
                    out.append(np.asarray(im.convert("L")))
                else:  # palette, RGB(A), CMYK, ...: channels checked for equality later
                    out.append(np.asarray(im.convert("RGB")))
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise _Unreadable(_one_line(err)) from None
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError) as err:
        raise _Unreadable(_one_line(err)) from None
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"{path}: frames of different sizes or modes ({sorted(shapes)})")
    data = np.stack(out)
    if frames is None:
        return RawImage(data, is_rgb=data.ndim == 4)
    return RawImage(data, is_rgb=data.ndim == 4, selected_frames=tuple(keys), frames_in_file=n)


def _tag_value(page, code):
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def _tiff_pixel_size(tif, page, where: str) -> float | None:
    # Gatan DigitalMicrograph export: scales in tags 65009 (y) / 65010 (x), units 65003 / 65004.
    if _tag_value(page, 65010) is not None:
        px_x = _scaled(_tag_value(page, 65010), _tag_value(page, 65004), where)
        px_y = _scaled(_tag_value(page, 65009), _tag_value(page, 65003), where)
        if px_x is not None or px_y is not None:
            return square_pixel_size(px_y, px_x, where)
    xres, yres = _tag_value(page, "XResolution"), _tag_value(page, "YResolution")
    if not xres or not yres or 0 in (xres[0], yres[0]):
        return None
    per_px_x, per_px_y = xres[1] / xres[0], yres[1] / yres[0]  # units per pixel
    imagej = tif.imagej_metadata or {}
    if "unit" in imagej:
        units = imagej["unit"]
    else:
        import tifffile

        resunit = _tag_value(page, "ResolutionUnit")
        units = {
            tifffile.RESUNIT.CENTIMETER: "cm",
            tifffile.RESUNIT.MILLIMETER: "mm",
            tifffile.RESUNIT.MICROMETER: "um",
        }.get(resunit)  # NONE and INCH (dots per inch) carry no calibration
    return square_pixel_size(_scaled(per_px_y, units, where), _scaled(per_px_x, units, where), where)


def _read_tiff(path: Path, *, calibrate: bool, frames) -> RawImage:
    """TIFF with tifffile; of a stack of pages only the selected pages."""
    import tifffile

    with _reader_errors(path), tifffile.TiffFile(path) as tif:
        shapes = [tuple(s.shape) for s in tif.series]
        if len(shapes) > 1 and len({sh[-2:] for sh in shapes if len(sh) >= 2}) > 1:
            raise ValueError(
                f"{path}: frames of different sizes ({', '.join('x'.join(map(str, sh)) for sh in shapes[:4])}"
                f"{', ...' if len(shapes) > 4 else ''}); expected a stack of equal frames"
            )
        series = tif.series[0]
        page = series.pages[0] if hasattr(series, "pages") else tif.pages[0]
        n_pages = len(series.pages) if hasattr(series, "pages") else 1
        selected = {}
        if frames is not None and n_pages > 1 and len(series.shape) >= 3 and series.shape[0] == n_pages:
            keys = frame_indices(frames, n_pages, path)  # read only the selected pages
            data = series.asarray(key=keys)
            if len(keys) == 1:
                data = data[np.newaxis]
            selected = {"selected_frames": tuple(keys), "frames_in_file": n_pages}
        else:
            data = series.asarray()
        is_rgb = getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB
        pixel_size = None
        if calibrate:
            try:
                pixel_size = _tiff_pixel_size(tif, page, str(path))
            except ValueError:
                raise
            except Exception:  # unusual tag values: treat as uncalibrated
                pixel_size = None
    return RawImage(data, pixel_size, is_rgb, **selected)


def _read_netcdf(path: Path, *, calibrate: bool, frames) -> RawImage:
    """netCDF with xarray: the variable ``image`` (or the only one), loaded whole."""
    import xarray as xr

    with _reader_errors(path), xr.open_dataset(path) as ds:
        names = list(ds.data_vars)
        if "image" in names:
            name = "image"
        elif len(names) == 1:
            name = names[0]
        elif not names:
            raise ValueError(f"{path}: no data variables in the file (empty, or corrupt or truncated?)")
        else:
            raise ValueError(
                f"{path}: expected a data variable named 'image' or a single data variable, found {names}"
            )
        da = ds[name].load()
        ds_attrs = dict(ds.attrs)
    if "y" in da.dims and "x" in da.dims:
        da = da.transpose(..., "y", "x")
    where = str(path)
    pixel_size = None
    if calibrate:
        spacing = [_coord_spacing(da, dim, where) for dim in da.dims[-2:]]
        pixel_size = square_pixel_size(*spacing, where)
    if calibrate and pixel_size is None:
        for attrs in (da.attrs, ds_attrs):
            for key in ("pixel_size", "sampling"):
                value = attrs.get(key)
                if isinstance(value, numbers.Real | np.number) and np.isfinite(value) and value > 0:
                    pixel_size = float(value)
                    break
            if pixel_size is not None:
                break
    if not np.issubdtype(da.dtype, np.number) and da.dtype != bool:
        raise ValueError(f"{path}: non-numeric data (dtype {da.dtype}); expected a numeric image")
    return RawImage(da.values, pixel_size)


def _coord_spacing(da: xr.DataArray, dim, where: str) -> float | None:
    if dim not in da.coords or da.sizes[dim] < 2:
        return None
    coord = da.coords[dim]
    values = np.asarray(coord.values)
    if not np.issubdtype(values.dtype, np.number):
        return None
    steps = np.diff(values.astype(np.float64))
    step = float(np.mean(steps))
    if not np.all(np.isfinite(steps)) or step <= 0 or not np.allclose(steps, step, rtol=1e-3, atol=0):
        raise ValueError(f"{where}: coordinate {dim!r} is not evenly spaced and increasing")
    factor = unit_to_angstrom(coord.attrs.get("units", "A"), where)
    return None if factor is None else step * factor


def _read_rsciio(path: Path, *, calibrate: bool, frames, plugin: str) -> RawImage:
    """Microscope formats with the rosettasciio plug-in ``plugin``: the first 2-D image or 3-D stack, read whole."""
    try:
        reader = importlib.import_module(f"rsciio.{plugin}")
    except ImportError as err:
        missing = getattr(err, "name", None) or "a dependency"
        raise ValueError(
            f"{path}: reading {path.suffix} files needs the Python package {missing!r} (pip install {missing})"
        ) from None
    try:
        signals = reader.file_reader(str(path), lazy=False)
    except Exception as err:
        raise _Unreadable(_one_line(err)) from None
    signals = signals if isinstance(signals, list) else [signals]
    images = []
    for signal in signals:
        data, axes = np.asarray(signal.get("data")), signal.get("axes") or []
        if data.ndim in (2, 3):
            images.append((data, axes, signal))
    if not images:
        shapes = [np.shape(s.get("data")) for s in signals]
        raise ValueError(f"{path}: no 2-D image or 3-D image stack in the file (found data of shapes {shapes})")
    data, axes, signal = images[0]
    pixel_size = None
    if len(axes) == data.ndim:
        axes = sorted(axes, key=lambda ax: ax.get("index_in_array", axes.index(ax)))
        nav = [bool(ax.get("navigate", False)) for ax in axes]
        if data.ndim == 3 and nav[-2:] != [False, False]:
            raise ValueError(f"{path}: the data is not an image stack (its last two axes are not both spatial)")
        if calibrate:
            where = str(path)
            px_y = _scaled(axes[-2].get("scale"), axes[-2].get("units"), where)
            px_x = _scaled(axes[-1].get("scale"), axes[-1].get("units"), where)
            pixel_size = square_pixel_size(px_y, px_x, where)
    return RawImage(data, pixel_size, beam_energy=beam_energy(signal))


def _metadata_item(tree, dotted: str):
    """The value at ``dotted`` in a nested dict (HyperSpy's names: a space in a key may be written ``_``)."""
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        match = [k for k in tree if k == part or str(k).replace(" ", "_") == part.replace(" ", "_")]
        if not match:
            return None
        tree = tree[match[0]]
    return tree


def beam_energy(signal: dict) -> float | None:
    """High tension [kV] a rosettasciio signal dict states, or ``None``.

    Read where HyperSpy would put it, ``metadata.Acquisition_instrument.TEM.beam_energy``: from the signal's
    ``metadata``, or by the reader's own ``mapping`` of the file's original metadata (DigitalMicrograph's
    ``Microscope Info.Voltage`` [V], TIA's ``High tension`` [kV], Velox's ``Optics.AccelerationVoltage``), which
    HyperSpy applies on loading and rosettasciio alone does not. A value that is not a number within
    :data:`BEAM_ENERGY_RANGE` (an unset tag, volts written as kilovolts) is ignored.
    """
    candidates = [_metadata_item(signal.get("metadata") or {}, "Acquisition_instrument.TEM.beam_energy")]
    for source, target in (signal.get("mapping") or {}).items():
        name, convert = target if isinstance(target, tuple | list) else (target, None)
        if str(name).endswith(".beam_energy"):
            value = _metadata_item(signal.get("original_metadata") or {}, source)
            if value is not None and convert is not None:
                try:
                    value = convert(value)
                except Exception:  # a reader's converter on a value it did not expect
                    value = None
            candidates.append(value)
    for value in candidates:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) and BEAM_ENERGY_RANGE[0] <= number <= BEAM_ENERGY_RANGE[1]:
            return number
    return None


def _rsciio(plugin: str) -> Callable[..., RawImage]:
    return functools.partial(_read_rsciio, plugin=plugin)


def _registry(*readers: Reader) -> dict[str, Reader]:
    table = {}
    for reader in readers:
        for suffix in reader.suffixes:
            if suffix in table or suffix != suffix.lower() or not suffix.startswith("."):
                raise ValueError(f"reader {reader.name}: suffix {suffix!r} is taken or not a lower-case '.ext'")
            table[suffix] = reader
    return table


#: The reader of each supported extension (lower case, with the dot).
READERS: dict[str, Reader] = _registry(
    Reader("numpy", (".npy",), _read_npy, streams=True),
    Reader("tifffile", (".tif", ".tiff"), _read_tiff, streams=True),
    Reader("xarray", (".nc",), _read_netcdf, streams=False),
    Reader("rsciio.digitalmicrograph", (".dm3", ".dm4"), _rsciio("digitalmicrograph"), streams=False),
    Reader("rsciio.emd", (".emd",), _rsciio("emd"), streams=False),
    Reader("rsciio.tia", (".ser", ".emi"), _rsciio("tia"), streams=False),
    Reader("rsciio.mrc", (".mrc",), _rsciio("mrc"), streams=False),
    Reader("PIL", (".gif", ".png"), _read_pil, streams=True),
)
#: Extensions :func:`read_image` reads, in the order of :data:`READERS`.
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(READERS)


# ------------------------------------------------------------------ selection


def parse_frames(spec):
    """Frame selection from text: ``"5"``, ``"0:10"``, ``"0:40:2"``, ``"1,4,7"`` (or ``None``: all).

    Returns ``None``, an ``int``, a ``slice`` or a list of ints (Python indexing,
    negative counting from the end); other values are passed through.
    """
    if spec is None or not isinstance(spec, str):
        return spec
    text = spec.strip()
    if text in ("", ":", "all"):
        return None
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        if "," in text:
            return [int(p) for p in text.split(",")]
        return int(text)
    except ValueError:
        raise ValueError(f"frames must look like '5', '0:10', '0:40:2' or '1,4,7', got {spec!r}") from None


def parse_crop(spec):
    """Crop from text ``"x0:x1,y0:y1"`` [pixels, end exclusive, either bound may be empty].

    Returns ``None`` or ``(x0, x1, y0, y1)`` (ints or ``None``); a 4-sequence is passed through.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        values = tuple(spec)
        if len(values) != 4:
            raise ValueError(f"crop must be (x0, x1, y0, y1) in pixels, got {spec!r}")
        return values
    try:
        xs, ys = spec.split(",")
        bounds = []
        for part in (xs, ys):
            lo, hi = part.split(":")
            bounds += [int(lo) if lo.strip() else None, int(hi) if hi.strip() else None]
        return tuple(bounds)
    except ValueError:
        raise ValueError(f"crop must look like 'x0:x1,y0:y1' in pixels (e.g. '0:180,0:180'), got {spec!r}") from None


def frame_indices(frames, n: int, path) -> list[int]:
    """Indices of the frames that ``frames`` selects out of ``n``.

    Parameters
    ----------
    frames : int, slice, sequence of int, str or None
        The selection, as :func:`read_image` takes it (see :func:`parse_frames`); ``None``: all.
    n : int
        Number of frames in the file.
    path : str or os.PathLike
        The file, named in the error messages.

    Returns
    -------
    list of int
        Indices in ``0 .. n-1`` (negative indices counted from the end), in the order selected.

    Raises
    ------
    ValueError
        Naming ``path``, when an index is out of range or not an integer, or the selection is empty.
    """
    frames = parse_frames(frames)
    if frames is None:
        return list(range(n))
    if isinstance(frames, slice):
        keys = list(range(n))[frames]
    else:
        items = [frames] if isinstance(frames, int | np.integer) else list(frames)
        keys = []
        for k in items:
            if isinstance(k, bool) or not isinstance(k, int | np.integer):
                raise ValueError(f"{path}: frame indices must be integers, got {k!r}")
            if not -n <= int(k) < n:
                raise ValueError(f"{path}: frame {int(k)} is out of range (the file has {n} frame(s))")
            keys.append(int(k) % n)
    if not keys:
        raise ValueError(f"{path}: the frame selection {frames!r} selects none of the {n} frame(s)")
    return keys


def _guess_rgb(data) -> bool:
    """A trailing axis of 3 or 4 channels on a real image."""
    return data.ndim in (3, 4) and data.shape[-1] in (3, 4) and min(data.shape[-3:-1]) > 4


def _select(raw: RawImage, path: Path, frames, crop):
    """Apply the frame selection (unless the reader did) and the crop.

    Returns (data, is_rgb, frame indices, (x0, y0), frames in file).
    """
    data, is_rgb, selected = raw.data, raw.is_rgb, raw.selected_frames
    if is_rgb is None and not data.dtype.names:
        is_rgb = _guess_rgb(data)
    n_spatial = 3 if is_rgb else 2
    n_lead = data.ndim - n_spatial
    total = raw.frames_in_file if selected is not None else (data.shape[0] if n_lead == 1 else 1)
    if n_lead == 1:
        n = data.shape[0]
        if selected is not None:
            keys = list(selected)
        elif frames is None:
            keys = list(range(n))
        else:
            keys = frame_indices(frames, n, path)
            if keys != list(range(n)):
                data = data[keys]
    elif n_lead == 0:
        keys = [0]
        if selected is not None:
            keys = list(selected)
        elif frames is not None and frame_indices(frames, 1, path) != [0]:
            raise ValueError(f"{path}: a single image has only frame 0")
    else:
        keys = None  # refused by to_float_frames
    origin = (0, 0)
    if crop is not None and data.ndim >= 2:
        x0, x1, y0, y1 = parse_crop(crop)
        ax_y, ax_x = (data.ndim - n_spatial, data.ndim - n_spatial + 1)
        h, w = data.shape[ax_y], data.shape[ax_x]
        xs, ys = slice(x0, x1).indices(w), slice(y0, y1).indices(h)
        if xs[1] <= xs[0] or ys[1] <= ys[0]:
            raise ValueError(f"{path}: the crop {crop!r} is empty for a {h} x {w} (y x x) image")
        index = [slice(None)] * data.ndim
        index[ax_y], index[ax_x] = slice(ys[0], ys[1]), slice(xs[0], xs[1])
        data = data[tuple(index)]
        origin = (xs[0], ys[0])
    return data, is_rgb, keys, origin, total


# ------------------------------------------------------------------ validation


def to_float_frames(data: np.ndarray, path: Path, is_rgb: bool | None) -> np.ndarray:
    """Check shape and dtype, merge equal RGB channels; return a float32 (frame, y, x) array."""
    if data.dtype.names:  # structured RGB(A) as written by DigitalMicrograph / rsciio
        names = [n for n in ("R", "G", "B") if n in data.dtype.names]
        if len(names) != 3:
            raise ValueError(f"{path}: non-numeric data (structured dtype {data.dtype}); expected a numeric image")
        data = np.stack([data[n] for n in names], axis=-1)
        is_rgb = True
    kind = data.dtype.kind
    if kind not in "iuf":
        what = {"c": "complex", "b": "boolean"}.get(kind, "non-numeric")
        raise ValueError(f"{path}: {what} data (dtype {data.dtype}); expected a real-valued intensity image")
    if data.size == 0:
        raise ValueError(f"{path}: the image is empty (shape {data.shape})")
    if is_rgb is None:  # guess: a trailing axis of 3 or 4 channels on a real image
        is_rgb = _guess_rgb(data)
    if is_rgb:
        channels = data[..., :3]
        if channels.shape[-1] == 3 and not (
            np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise ValueError(f"{path}: colour (RGB) image with different channels; save the intensity as greyscale")
        data = data[..., 0]
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image (y, x) or a 3-D stack (frame, y, x), got shape {data.shape}")
    if min(data.shape) == 0:
        raise ValueError(f"{path}: the image is empty (shape {data.shape})")
    if data.dtype != np.float32:
        data = data.astype(np.float32)
    for i in range(data.shape[0]):  # frame by frame: a memory-mapped stack is never loaded whole
        frame = np.asarray(data[i])
        what = f"{path}: frame {i}" if data.shape[0] > 1 else f"{path}: the image"
        if not np.all(np.isfinite(frame)):
            bad = "NaN" if np.isnan(frame).any() else "infinite values"
            raise ValueError(f"{what} contains {bad}; expected finite intensities")
        if not np.any(frame):
            raise ValueError(f"{what} is all zero")
        if frame.max() <= 0:
            raise ValueError(f"{what} is all negative; expected an intensity image (counts >= 0)")
        if frame.mean(dtype=np.float64) <= 0:
            raise ValueError(f"{what} has a mean intensity <= 0; expected an intensity image (counts >= 0)")
    return data


def read_image(path, *, pixel_size=None, frames=None, crop=None) -> xr.DataArray:
    """Read an image or image stack from a file.

    Parameters
    ----------
    path : str or os.PathLike
        File to read; the format follows the extension (see the module docstring).
    pixel_size : float, optional
        Pixel size [A]. Overrides the file's metadata; needed for formats without any.
    frames : int, slice, sequence of int or str, optional
        Frames to read (see :func:`parse_frames`); default all.
    crop : str or (x0, x1, y0, y1), optional
        Region to read [pixels, end exclusive], e.g. ``"0:180,0:180"`` for the
        left half of a 360 x 180 frame (see :func:`parse_crop`).

    Returns
    -------
    xarray.DataArray
        Float32 intensities with dims ``(frame, y, x)`` (a 2-D image is one frame),
        coordinate ``frame`` (the frames' indices in the file), coordinates
        ``y``, ``x`` at pixel centres ``(i + 0.5) * pixel_size`` [A] in the
        uncropped image's frame of reference (absent when the pixel size is
        unknown) and attributes ``pixel_size`` [A] (``None`` when unknown),
        ``source`` (the file name), ``frames_in_file``, ``crop``
        (``[x0, x1, y0, y1]``, when cropped) and ``beam_energy`` (the high
        tension [kV], when the file states it: DigitalMicrograph, TIA, Velox).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For a directory, an unsupported extension, an unreadable, corrupt or
        truncated file, non-numeric or complex data, an empty, 1-D or 4-D+
        array, NaN or infinite values, an all-zero or all-negative frame, an
        RGB image with different channels or an invalid ``pixel_size``.
    """
    path = Path(path)
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected an image file")
    suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (supported: {supported})")
    calibrate = pixel_size is None  # a given pixel size overrides (and skips) the file's calibration
    # The readers' log messages and warnings about a file they then fail to read would only
    # precede our one-line error: silence the logs, and pass warnings on only after a success.
    with _quiet_loggers("tifffile", "rsciio"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = reader.read(path, calibrate=calibrate, frames=frames)
        except _Unreadable as err:
            failure = f"could not read the file as {suffix} (corrupt or truncated?): {err}"
        except PermissionError:
            failure = "permission denied"
        else:
            failure = None
    if failure is not None:  # raised here, with no chained reader traceback keeping the reader's files open
        raise ValueError(f"{path}: {failure}")
    data, is_rgb, keys, (cx0, cy0), total = _select(raw, path, frames, crop)
    frames = to_float_frames(data, path, is_rgb)
    import xarray as xr

    for warning in caught:  # what the readers say about a file they could read (not their resource leaks)
        if issubclass(warning.category, UserWarning):
            warnings.warn(f"{path}: {warning.message}", warning.category, stacklevel=2)
    if pixel_size is None:
        pixel_size = raw.pixel_size
    if keys is None or len(keys) != frames.shape[0]:
        keys = list(range(frames.shape[0]))
    coords = {"frame": np.asarray(keys, dtype=np.int64)}
    if pixel_size is not None:
        for dim, n, start in zip(("y", "x"), frames.shape[1:], (cy0, cx0), strict=True):
            coords[dim] = xr.Variable(
                dim, (start + np.arange(n) + 0.5) * pixel_size, {"units": "Å", "long_name": f"{dim} (pixel centre)"}
            )
    attrs = {"pixel_size": pixel_size, "source": path.name, "long_name": "intensity", "frames_in_file": int(total)}
    if raw.beam_energy is not None:
        attrs["beam_energy"] = float(raw.beam_energy)
    if crop is not None:
        attrs["crop"] = [int(cx0), int(cx0 + frames.shape[2]), int(cy0), int(cy0 + frames.shape[1])]
    return xr.DataArray(frames, dims=("frame", "y", "x"), coords=coords, name="image", attrs=attrs)
