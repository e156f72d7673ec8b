"""Depth maps for images of any size: resample, normalise, tile, stitch.

For every frame of an image (see :func:`segdepth.data.io.read_image`),
:func:`predict`

1. resamples the frame to the pixel size the model was trained at (area
   averaging when shrinking, which is what binning does; linear interpolation
   when enlarging),
2. divides it by its mean (:func:`segdepth.data.preprocess.normalise`, as in training),
3. reflect-pads it at the bottom and right to a multiple of
   ``model.required_multiple``,
4. runs the model on overlapping tiles whose corners lie on multiples of
   ``required_multiple`` and keeps from every tile only the part it "owns"
   (up to the middle of each overlap, on the label grid), so the memory used by
   the network is bounded by the tile size,
5. turns the stitched logits into the per-pixel depth distribution ``F(y)``
   (softmax), the depth ``argmax F(y)`` and the confidence ``max F(y)`` (eq. 5).

**Dose matching.** When the dose ``lam`` is given and the model's card has ``dose_matching``
(``target`` electrons per model pixel, ``draws``), a frame whose dose at the model's pixel size
exceeds ``target`` is brought down to it (:func:`segdepth.physics.noise.lower_dose`, after step 2)
``draws`` times with independent noise, and ``F(y)`` is the mean of the draws' distributions: the
network counts columns best near the middle of its training doses and worse on cleaner images
(README, "Dose matching"). ``dose_matching=False`` turns it off.

**Orientation.** The models were trained on CeO2 [110] with [001] along y and read a lattice turned by
more than a few degrees wrongly. With ``orientation="auto"`` (the default) the direction of [001] is
measured from the power spectrum of the frames (:func:`estimated_orientation`); frames turned by
:data:`MIN_ROTATION` degrees or more are turned to the training orientation onto a canvas that holds
them whole (:func:`segdepth.data.preprocess.rotate_frames`), read (steps 1-5), and their distributions
turned back onto the frame's own label grid (bilinear), so the output overlays the input as before.

The UNet is equivariant to shifts by ``required_multiple`` pixels away from the
image border, so the stitched result equals the untiled one exactly when the
network's receptive field (its half-width) fits in half the overlap; with a
smaller overlap the tiles differ from the untiled result only near the seams.

The output lives on the label grid (``label_factor`` model pixels per label
pixel: 4 for the paper's layout at 0.053 A, 1 for the default binned-input model
at 0.212 A; the same 0.212 A grid) and its ``x``, ``y`` coordinates are in
Angstrom in the frame of reference of the input, so it overlays the input image
directly.

The input may also be a numpy array (with ``pixel_size=``) or a HyperSpy ``Signal2D``
(:mod:`segdepth.data.hyperspy`: the calibrated axes give the pixel size, navigation axes give the
frames), and ``as_signals=True`` returns the maps as HyperSpy signals on the label grid; without
``model`` and ``card`` the shipped default model is used (loaded once).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse
import xarray as xr

from segdepth.constants import check_int
from segdepth.data.calibration import CalibrationError, LatticeOrientation, estimate_orientation, rotation_between
from segdepth.data.hyperspy import is_signal
from segdepth.data.io import LENGTH_UNITS, check_beam_energy, check_pixel_size, check_positive
from segdepth.data.preprocess import normalise, rotate_frames, rotated_points
from segdepth.physics.noise import lower_dose

__all__ = [
    "MODELS_DIR",
    "image_pixel_size",
    "model_pixel_size",
    "input_image",
    "model_and_card",
    "DEFAULT_MODEL",
    "DEFAULT_ROTATED_MODEL",
    "PREVIOUS_DEFAULT_MODEL",
    "FIRST_ROBUST_MODEL",
    "REFERENCE_MODEL",
    "load_default_model",
    "predict",
    "estimated_orientation",
    "trained_orientation",
    "TRAINED_ORIENTATION",
    "trained_beam_energy",
    "beam_energy_status",
    "BEAM_ENERGY_TOLERANCE",
    "MIN_BEAM_ENERGY",
    "MIN_ROTATION",
    "predict_to_netcdf",
    "resample",
]

#: Shipped models: package data (``segdepth/models/``), found the same way from a clone and from an
#: installed wheel.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: The model :func:`load_default_model` reads (absolute, inside :data:`MODELS_DIR`): the robust model
#: (issue 11): the fast architecture (input binned 4x to the label grid, issue 6) trained on randomised
#: optics, particles, doses and (for part of the images) thermal vibrations, as the weight average
#: 0.8 x the first robust model + 0.2 x its fine-tune on static and frozen-phonon images (its card's
#: ``envelope`` lists the ranges, ``lineage`` the steps; README "The robust default").
DEFAULT_MODEL = MODELS_DIR / "segdepth_robust_wise_base8_bin4.safetensors"
#: The model of the default's 180-degree pass in the validity check (:func:`segdepth.learn.validity.predict_checked`,
#: ``segdepth predict``; since 2026-12-05): the default's weights reading the input divided by its Gaussian
#: local mean (1.5 A, :class:`segdepth.learn.model.LocalMeanDivide`), so the reported probabilities average two
#: representations of the same frame (README "The default's second pass"; ``make evaluate-two``).
DEFAULT_ROTATED_MODEL = MODELS_DIR / "segdepth_robust_wise_flat_base8_bin4.safetensors"
#: The first robust model (the default from issue 11 until the weight-averaged one), kept as a reference.
FIRST_ROBUST_MODEL = MODELS_DIR / "segdepth_robust_base8_bin4.safetensors"
#: The default before issue 11 (the fast model trained on the nominal microscope at lambda 2.5), kept as a
#: reference for the shift test (``--model segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors``).
PREVIOUS_DEFAULT_MODEL = MODELS_DIR / "segdepth_fast_base8_bin4_lam2.5.safetensors"
#: The paper-layout model, run in plain eager float32 as the checked reference (``--reference``).
REFERENCE_MODEL = MODELS_DIR / "segdepth_base16_lam2.5.safetensors"
_MAX_PIXELS = 2**28  # largest resampled frame we accept (16384 x 16384)
#: Smallest field [A] along each axis that :func:`predict` accepts: about two CeO2 [110] column spacings
#: (1.35 A along [001]); a smaller image cannot hold a column with its surroundings.
MIN_FIELD = 3.0
#: First word of the seeds of the dose-matching noise (:func:`predict`).
DOSE_MATCHING_SEED = 20261205
#: Direction of CeO2 [001] in the training images [deg from +x towards +y]: [1-10] along x, [001] along y
#: (``segdepth.physics.structures``); a card's ``orientation`` overrides it.
TRAINED_ORIENTATION = 90.0
#: Smaller rotations [deg] are not applied (the models read a lattice turned by a few degrees nearly as
#: well: README, "Crystals turned in the image plane").
MIN_ROTATION = 3.0
#: The orientation is estimated on at most this many frames (evenly spaced; their power spectra averaged),
#: resampled to this pixel size [A].
_ORIENTATION_FRAMES = 50
_ORIENTATION_PIXEL = 0.3
#: What the labels' last class means (the attribute ``last_class`` of ``depth``): the models were trained on columns
#: of 1-10 atoms and read longer ones as 10 (benchmarks/wulff_particles.py --max-atoms 16: all 458 column images of
#: 11-14 atoms read 10, vouched for; README, "Columns longer than the labels").
LAST_CLASS_NOTE = ("10 means 10 or more: columns longer than 10 atoms (beyond the training labels) read 10; "
                   "a 10 is a lower bound")
#: A beam energy (high tension) further than this fraction from the model's training energy is "other"
#: (:func:`beam_energy_status`): the card's ``data_parameters.microscope.energy``, 300 kV for every shipped model.
BEAM_ENERGY_TOLERANCE = 0.01
#: Frames at a beam energy at or below this [kV] (and other than the training energy) are not valid in the
#: checked path (reason ``beam_energy``); other energies only warn. Set by the rule of ``make microscope-shift``
#: (README, "Other microscopes"; 2026-12-06): at 120 kV the default pair's 90 % count sets held the truth in 0.81 /
#: 0.78 of the columns (lambda 2.5 / 10; 80 kV 0.53-0.79), at 200 kV in 0.98-1.00 (exact counts 14-29 points lower).
MIN_BEAM_ENERGY = 120.0


def load_default_model(*, reference: bool = False, rotated: bool = False):
    """Load a model shipped with the repository.

    Parameters
    ----------
    reference : bool
        ``False``: :data:`DEFAULT_MODEL` (the robust fast model). ``True``:
        :data:`REFERENCE_MODEL` (the paper's layout; run it with
        ``predict(..., fast=False)`` for the eager reference path).
    rotated : bool
        :data:`DEFAULT_ROTATED_MODEL` instead (the default's 180-degree pass in the validity check).

    Returns
    -------
    (torch.nn.Module, dict)
        The model (in eval mode) and its card, as :func:`segdepth.learn.modelio.load_model`.

    Raises
    ------
    FileNotFoundError
        When the model file is absent.
    """
    if reference and rotated:
        raise ValueError("reference and rotated exclude each other (the reference path has no second model)")
    path = REFERENCE_MODEL if reference else DEFAULT_ROTATED_MODEL if rotated else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"default model {path} not found; train it first (see README) or pass a model file with --model"
        )
    from segdepth.learn.modelio import load_model

    model, card = load_model(path)
    model.eval()
    return model, card


# ------------------------------------------------------------------ resampling


def _resample_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` operator from ``n_in`` to ``n_out`` pixels over the same extent.

    Shrinking averages the input over each output pixel's footprint (exact
    area weights: binning for integer ratios); enlarging interpolates linearly
    between pixel centres (clamped at the borders).
    """
    i = np.arange(n_out)
    if n_out < n_in:
        ratio = n_in / n_out
        width = math.ceil(ratio) + 1
        lo, hi = i * ratio, (i + 1) * ratio
        j = np.floor(lo).astype(np.int64)[:, None] + np.arange(width)
        weights = np.clip(np.minimum(j + 1, hi[:, None]) - np.maximum(j, lo[:, None]), 0, None) / ratio
        rows = np.broadcast_to(i[:, None], j.shape)
    else:
        u = np.clip((i + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        j0 = np.floor(u).astype(np.int64)
        frac = u - j0
        j = np.stack([j0, np.minimum(j0 + 1, n_in - 1)], axis=1)
        weights = np.stack([1 - frac, frac], axis=1)
        rows = np.broadcast_to(i[:, None], j.shape)
    keep = (j < n_in) & (weights > 0)
    return scipy.sparse.csr_matrix(
        (weights[keep].astype(np.float32), (rows[keep], j[keep])), shape=(n_out, n_in), dtype=np.float32
    )


def resample(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a 2-D ``frame`` to ``shape`` pixels covering the same extent.

    Pixel edges are kept: input and output both span ``[0, n * pixel_size)``.
    Shrinking is area averaging (a 2x shrink is 2x2 binning), enlarging is
    linear interpolation between pixel centres.
    """
    frame = np.asarray(frame, dtype=np.float32)
    (h_in, w_in), (h_out, w_out) = frame.shape, shape
    if (h_in, w_in) == (h_out, w_out):
        return frame
    rows = _resample_matrix(h_in, h_out) @ frame if h_out != h_in else frame
    out = (_resample_matrix(w_in, w_out) @ rows.T).T if w_out != w_in else rows
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------- tiling


def _tile_layout(size: int, tile: int, overlap: int, multiple: int, label_factor: int):
    """Tile edge, tile starts along one axis and the ``[lo, hi)`` range each tile owns.

    ``size``, ``tile`` and ``overlap`` are multiples of ``multiple`` (the
    model's ``required_multiple``). The fewest tiles that cover ``size`` with
    at least ``overlap`` are used, each shrunk to the smallest multiple of
    ``multiple`` that still covers; starts are multiples of ``multiple``.
    Ownership changes in the middle of each overlap, rounded down to the label grid.
    """
    if size <= tile:
        return size, [0], [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))
    tile = min(tile, -(-(size + (n - 1) * overlap) // (n * multiple)) * multiple)
    stride = tile - overlap
    starts = [k * stride for k in range(n - 1)] + [size - tile]
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        bounds.append((a + tile + b) // 2 // label_factor * label_factor)
    bounds.append(size)
    return tile, starts, list(zip(bounds[:-1], bounds[1:], strict=True))


def _card_value(card: dict, *keys, default=None):
    """The value of the first of ``keys`` that ``card`` gives (not ``None``), else ``default``."""
    for key in keys:
        if key in card and card[key] is not None:
            return card[key]
    return default


def model_pixel_size(card: dict) -> float:
    """Pixel size [A] the model was trained at, from its card (``sampling`` and its units)."""
    value = _card_value(card, "sampling", "pixel_size")
    if value is None:
        raise ValueError("the model card gives no pixel size ('sampling' [A]); cannot resample the input")
    units = str(_card_value(card, "sampling_units", "pixel_size_units", default="A")).strip().lower()
    if units not in LENGTH_UNITS:
        raise ValueError(f"the model card's pixel size has unknown units {units!r}")
    return check_pixel_size(value, name="model pixel size") * LENGTH_UNITS[units]


def image_pixel_size(image: xr.DataArray) -> float:
    """Pixel size [A] of ``image``: its ``pixel_size`` attribute, else the spacing of its ``x`` coordinates.

    Parameters
    ----------
    image : xarray.DataArray
        As from :func:`segdepth.data.io.read_image`.

    Returns
    -------
    float
        The pixel size [A], checked by :func:`segdepth.data.io.check_pixel_size`.

    Raises
    ------
    ValueError
        When the image carries no pixel size (the message asks for ``--pixel-size``) or it is invalid.
    """
    value = image.attrs.get("pixel_size")
    if value is None and "x" in image.coords and image.sizes["x"] > 1:
        value = float(image["x"][1] - image["x"][0])
    if value is None:
        raise ValueError(
            "the pixel size of the image is unknown (no calibration in the file); "
            "pass it with --pixel-size (Angstrom per pixel, pixel_size= in Python)"
        )
    return check_pixel_size(value)


def _origin(image: xr.DataArray, dim: str, pixel_size: float) -> float:
    """Position of the image's first pixel edge along ``dim`` [A] (0 without coordinates)."""
    if dim in image.coords and image.sizes[dim] > 0:
        return float(image[dim][0]) - 0.5 * pixel_size
    return 0.0


def _softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax of ``logits`` along ``axis`` (a new array)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def _dose_matching(spec: dict | None, dose: float) -> tuple[float, float, int] | None:
    """``(dose, target, draws)`` when ``spec`` (a card's ``dose_matching``: ``target`` [e per model pixel],
    ``draws``) asks for dose matching and ``dose`` [e per model pixel] exceeds its target, else ``None``."""
    if not spec:
        return None
    try:
        target, draws = float(spec["target"]), int(spec["draws"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the model card's dose_matching must give a target dose and a number of draws, got "
                         f"{spec!r}") from None
    if not (math.isfinite(target) and target > 0 and draws >= 1):
        raise ValueError(f"the model card's dose_matching needs target > 0 and draws >= 1, got {spec!r}")
    return (float(dose), target, draws) if dose > target * (1 + 1e-9) else None  # rounding of pixel ratios


def trained_beam_energy(card: dict) -> float | None:
    """The beam energy [kV] the model's training images were simulated at (its card), or ``None``."""
    microscope = (card.get("data_parameters") or {}).get("microscope") or {}
    energy = microscope.get("energy")
    return None if energy is None else float(energy) / 1e3


def beam_energy_status(energy, card: dict) -> str:
    """``"unknown"`` (no energy or none in the card), ``"trained"`` (within :data:`BEAM_ENERGY_TOLERANCE`),
    ``"other"`` or ``"flagged"`` (other and at most :data:`MIN_BEAM_ENERGY`) for a beam energy [kV]."""
    trained = trained_beam_energy(card)
    if energy is None or trained is None:
        return "unknown"
    energy = check_beam_energy(energy)
    if abs(energy - trained) <= BEAM_ENERGY_TOLERANCE * trained:
        return "trained"
    return "flagged" if MIN_BEAM_ENERGY is not None and energy <= MIN_BEAM_ENERGY else "other"


def _beam_energy_warning(energy: float, card: dict, status: str) -> None:
    """Warn about frames recorded at a beam energy the model never saw (:func:`predict` calls it directly)."""
    flagged = " (the checked path marks them not valid, reason beam_energy)" if status == "flagged" else ""
    warnings.warn(
        f"the frames were recorded at {energy:g} kV but the model was trained on {trained_beam_energy(card):g} kV "
        f"images only: another high tension changes the contrast of every count (on simulations 14-29 points "
        f"fewer columns exact at 200 kV, 45-57 at 120 and 80 kV; README, 'Other microscopes'){flagged}",
        stacklevel=3,
    )


def _dose_warning(lam: float, scale: float, card: dict) -> None:
    """Warn when the dose at the model's pixel size is far from the training dose(s).

    :func:`predict` calls it directly, so ``stacklevel=3`` names the caller of :func:`predict`.
    """
    dose = lam * scale
    lam_range = _card_value(card, "lam_range")
    trained = _card_value(card, "lam", "lambda")
    if lam_range is not None:
        lo, hi = (float(v) for v in lam_range)
    elif trained is not None:
        lo = hi = float(trained)
    else:
        return
    if dose < lo / 2 or dose > 2 * hi:
        trained_text = f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
        warnings.warn(
            f"the image dose is {dose:.3g} e/pixel at the model's pixel size but the model was trained at "
            f"lambda = {trained_text}; expect degraded depth maps",
            stacklevel=3,
        )


# -------------------------------------------------------- prediction: the layout


class _Tile(NamedTuple):
    """A tile of the padded frame: its first pixel and the ``[lo, hi)`` range it owns, along y and x."""

    start_y: int
    owned_y: tuple[int, int]
    start_x: int
    owned_x: tuple[int, int]


@dataclass(frozen=True)
class _Grid:
    """Pixel sizes, shapes [pixels] and tiles of one :func:`predict` call, the same for all its frames."""

    pixel_size: float  # of the input [A]
    model_pixel_size: float  # the model was trained at [A]
    label_factor: int  # model pixels per label pixel
    tile_used: int  # ``tile`` rounded down to a multiple of the model's required_multiple
    overlap_used: int  # ``overlap`` rounded up to such a multiple
    input_shape: tuple[int, int]
    resampled: tuple[int, int]  # the frame at the model's pixel size
    padded: tuple[int, int]  # that, padded to multiples of required_multiple
    tile_shape: tuple[int, int]  # each edge at most ``tile_used``
    tiles: tuple[_Tile, ...]

    @property
    def sampling(self) -> tuple[float, float]:
        """Effective pixel size (y, x) [A] of the resampled frame, close to the model's."""
        (h_in, w_in), (h_r, w_r) = self.input_shape, self.resampled
        return self.pixel_size * h_in / h_r, self.pixel_size * w_in / w_r

    @property
    def labels(self) -> tuple[int, int]:
        """Shape of one frame of the output (the label grid)."""
        return tuple(-(-n // self.label_factor) for n in self.resampled)

    @property
    def padded_labels(self) -> tuple[int, int]:
        """Shape of one frame's stitched logits (the padded frame on the label grid)."""
        return tuple(n // self.label_factor for n in self.padded)


def input_image(image, pixel_size=None) -> xr.DataArray:
    """``image`` as :func:`predict` works on it: an ``xarray.DataArray`` ``(frame, y, x)`` or ``(y, x)``.

    A HyperSpy ``Signal2D`` goes through :func:`segdepth.data.hyperspy.from_signal` (pixel size from its
    calibrated axes, or ``pixel_size``); a numpy array gets pixel-centre coordinates ``(i + 0.5) * pixel_size``;
    for a DataArray a given ``pixel_size`` replaces its ``pixel_size`` attribute and rescales its ``y``, ``x``
    coordinates (kept in pixels of the old size when it had one).
    """
    if is_signal(image):
        from segdepth.data.hyperspy import from_signal

        return from_signal(image, pixel_size=pixel_size)
    if pixel_size is not None:
        pixel_size = check_pixel_size(pixel_size)
    if not isinstance(image, xr.DataArray):
        data = np.asarray(image)
        if data.ndim not in (2, 3):
            raise ValueError(f"image must be a 2-D (y, x) or 3-D (frame, y, x) array, got shape {data.shape}")
        dims = ("y", "x") if data.ndim == 2 else ("frame", "y", "x")
        coords = {}
        if pixel_size is not None:
            coords = {d: (d, (np.arange(n) + 0.5) * pixel_size, {"units": "Å", "long_name": f"{d} (pixel centre)"})
                      for d, n in zip(dims[-2:], data.shape[-2:], strict=True)}
        return xr.DataArray(data, dims=dims, coords=coords, attrs={"pixel_size": pixel_size})
    if pixel_size is None:
        return image
    old = image.attrs.get("pixel_size")
    out = image.assign_attrs(pixel_size=pixel_size)
    for dim in image.dims[-2:]:
        if dim in image.coords:
            n = image.sizes[dim]
            index = image[dim].values / old - 0.5 if old else np.arange(n)
            out = out.assign_coords({dim: (dim, (index + 0.5) * pixel_size, dict(image[dim].attrs))})
    return out


@functools.lru_cache(maxsize=2)
def _cached_default_model(rotated: bool = False):
    return load_default_model(rotated=rotated)


def model_and_card(model, card, *, rotated: bool = False):
    """``(model, card)``: the shipped default (:func:`load_default_model`, loaded once) when both are ``None``
    (``rotated``: the default's second model, :data:`DEFAULT_ROTATED_MODEL`)."""
    if model is None and card is None:
        return _cached_default_model(rotated)
    if model is None or card is None:
        raise ValueError("pass both the model and its card (segdepth.load_model returns both), or neither "
                         "for the shipped default model")
    return model, card


def _as_stack(image: xr.DataArray) -> xr.DataArray:
    """``image`` with dims ``(frame, y, x)``: a single frame ``(y, x)`` gains a ``frame`` dim."""
    if image.ndim == 2:
        image = image.expand_dims("frame")
    if image.ndim != 3:
        raise ValueError(f"image must have dims (frame, y, x) or (y, x), got {image.dims}")
    return image


def _rounded_tiling(tile, overlap, batch_size, multiple: int) -> tuple[int, int]:
    """Check ``tile``, ``overlap`` and ``batch_size``; ``tile`` rounded down and ``overlap`` up to ``multiple``."""
    check_int(tile, "tile")
    check_int(overlap, "overlap", minimum=0)
    check_int(batch_size, "batch_size")
    tile_used = max(multiple, int(tile) // multiple * multiple)
    overlap_used = -(-int(overlap) // multiple) * multiple
    if overlap_used >= tile_used:
        raise ValueError(
            f"overlap ({overlap} -> {overlap_used} px) must be smaller than the tile ({tile} -> {tile_used} px); "
            f"both are rounded to multiples of {multiple} (the model's required_multiple)"
        )
    return tile_used, overlap_used


def _check_field(shape: tuple[int, int], pixel_size: float) -> None:
    """Refuse a frame too small to hold an atomic column (:data:`MIN_FIELD` along each axis)."""
    h_in, w_in = shape
    if min(h_in, w_in) * pixel_size < MIN_FIELD:
        raise ValueError(
            f"the {h_in} x {w_in} image of {pixel_size:g} A pixels covers {h_in * pixel_size:.2f} x "
            f"{w_in * pixel_size:.2f} A, too small to hold an atomic column (at least {MIN_FIELD:g} A along each "
            "axis); check --pixel-size"
        )


def _resampled_shape(shape: tuple[int, int], pixel_size: float, model_pixel_size: float,
                     label_factor: int) -> tuple[int, int]:
    """Shape of a frame resampled to (close to) the model's pixel size over the same physical extent."""
    h_in, w_in = shape
    scale = pixel_size / model_pixel_size
    if math.isclose(scale, 1.0, rel_tol=1e-6):
        h_r, w_r = h_in, w_in
    else:
        h_r, w_r = max(1, round(h_in * scale)), max(1, round(w_in * scale))
    if min(h_r, w_r) < label_factor or h_r * w_r > _MAX_PIXELS:
        raise ValueError(
            f"at the model's pixel size ({model_pixel_size:g} A) the {h_in}x{w_in} image of pixel size "
            f"{pixel_size:g} A becomes {h_r}x{w_r} pixels, which cannot be processed; check --pixel-size"
        )
    return h_r, w_r


def _grid(image: xr.DataArray, model, card: dict, tile, overlap, batch_size) -> _Grid:
    """Check the arguments of :func:`predict` and lay out its resampling, padding and tiles (steps 1, 3, 4)."""
    shape = image.shape[1:]
    pixel_size = image_pixel_size(image)
    model_pixel = model_pixel_size(card)
    label_factor = int(_card_value(card, "label_factor", default=getattr(model, "output_factor", 4)))
    m = int(getattr(model, "required_multiple", label_factor))
    tile_used, overlap_used = _rounded_tiling(tile, overlap, batch_size, m)
    _check_field(shape, pixel_size)
    resampled = _resampled_shape(shape, pixel_size, model_pixel, label_factor)
    padded = tuple(-(-n // m) * m for n in resampled)
    tile_h, starts_y, owned_y = _tile_layout(padded[0], tile_used, overlap_used, m, label_factor)
    tile_w, starts_x, owned_x = _tile_layout(padded[1], tile_used, overlap_used, m, label_factor)
    tiles = tuple(_Tile(sy, oy, sx, ox) for sy, oy in zip(starts_y, owned_y) for sx, ox in zip(starts_x, owned_x))
    return _Grid(pixel_size, model_pixel, label_factor, tile_used, overlap_used, shape, resampled, padded,
                 (tile_h, tile_w), tiles)


# ------------------------------------------------------- prediction: the network


def _inference_network(model, fast: bool):
    """The network to run: an inference-optimised copy of ``model`` when ``fast`` and it is not one already.

    Only a segdepth UNet (a model with ``config``) is optimised
    (:func:`segdepth.learn.model.optimise_for_inference`, which marks its copy with ``inference_layout``).
    """
    if fast and hasattr(model, "config") and not hasattr(model, "inference_layout"):
        from segdepth.learn.model import optimise_for_inference

        return optimise_for_inference(model)
    return model


@dataclass(frozen=True)
class _Network:
    """A network with the device and memory layout its inputs go to; called on a stack of tiles."""

    module: object
    device: object
    layout: object

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Logits ``(B, n_classes, h, w)`` (float32) of the tiles ``(B, H, W)``."""
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(tiles[:, None]).to(self.device).contiguous(memory_format=self.layout)
            return self.module(inputs).float().cpu().numpy()


def _network(model, fast: bool) -> _Network:
    """``model`` (or its optimised copy, :func:`_inference_network`) on the device of its parameters."""
    import torch

    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    net = _inference_network(model, fast)
    layout = torch.channels_last if getattr(net, "inference_layout", "") == "channels_last" else torch.contiguous_format
    return _Network(net, device, layout)


@contextlib.contextmanager
def _eval_mode(model):
    """Put ``model`` in eval mode for the block, and back in training mode afterwards when it was."""
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _tile_bar(total: int, progress: bool):
    """A tqdm progress bar over ``total`` tiles on stderr (disabled unless ``progress``); a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tile", desc="segdepth", disable=not progress, file=sys.stderr, leave=False)


# ---------------------------------------------------- prediction: the frames


def _resampled(image: xr.DataArray, f: int, resampled: tuple[int, int]) -> np.ndarray:
    """Frame ``f`` resampled to the model's pixel size and normalised (steps 1-2)."""
    frame = np.asarray(image[f].values, dtype=np.float32)
    if not np.all(np.isfinite(frame)):
        raise ValueError(f"frame {f} contains NaN or infinite values")
    try:
        return normalise(resample(frame, resampled))
    except ValueError as err:
        raise ValueError(f"frame {f}: {err}") from None


def _padded(frame: np.ndarray, padded: tuple[int, int]) -> np.ndarray:
    """A resampled frame reflect-padded at the bottom and right to ``padded`` (step 3)."""
    (h_r, w_r), (pad_h, pad_w) = frame.shape, padded
    mode = "reflect" if min(h_r, w_r) > 1 else "edge"
    return np.pad(frame, ((0, pad_h - h_r), (0, pad_w - w_r)), mode=mode)


def _prepared(image: xr.DataArray, f: int, resampled: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
    """Frame ``f`` resampled to the model's pixel size, normalised and reflect-padded (steps 1-3)."""
    return _padded(_resampled(image, f, resampled), padded)


def _frame_groups(n_frames: int, n_tiles: int, batch_size: int) -> list[range]:
    """Consecutive frames whose tiles share forward passes of up to ``batch_size`` tiles.

    A group holds one frame unless a frame has fewer than ``batch_size`` tiles (a small frame, or the
    binned input of the fast model).
    """
    group = max(1, batch_size // n_tiles)
    return [range(g0, min(g0 + group, n_frames)) for g0 in range(0, n_frames, group)]


def _cut(frame: np.ndarray, tile: _Tile, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of ``tile`` (of edges ``shape``) in the padded ``frame``."""
    return frame[tile.start_y : tile.start_y + shape[0], tile.start_x : tile.start_x + shape[1]]


def _paste_owned(stitched: np.ndarray, tile_logits: np.ndarray, tile: _Tile, label_factor: int) -> None:
    """Copy the part of ``tile_logits`` that ``tile`` owns into the frame's ``stitched`` logits (label grid)."""
    (y0, y1), (x0, x1), sy, sx = tile.owned_y, tile.owned_x, tile.start_y, tile.start_x
    f = label_factor
    stitched[:, y0 // f : y1 // f, x0 // f : x1 // f] = tile_logits[
        :, (y0 - sy) // f : (y1 - sy) // f, (x0 - sx) // f : (x1 - sx) // f
    ]


def _stitched_logits(padded: dict, grid: _Grid, network: _Network, batch_size: int, bar) -> dict:
    """Logits of every padded frame ``{f: frame}``, stitched from its tiles: ``{f: (n_classes, *padded_labels)}``.

    The tiles of all the frames go through ``network`` ``batch_size`` at a time (step 4); each tile keeps
    only the part it owns, so the seams fall in the middle of the overlaps.
    """
    work = [(f, tile) for f in padded for tile in grid.tiles]
    stitched = {}
    for first in range(0, len(work), batch_size):
        batch = work[first : first + batch_size]
        out = network(np.stack([_cut(padded[f], tile, grid.tile_shape) for f, tile in batch]))
        for (f, tile), tile_logits in zip(batch, out, strict=True):
            if f not in stitched:
                stitched[f] = np.empty((out.shape[1], *grid.padded_labels), np.float32)
            _paste_owned(stitched[f], tile_logits, tile, grid.label_factor)
        bar.update(len(batch))
    return stitched


def _frame_seed(image: xr.DataArray, f: int) -> int:
    """The frame's number in its movie (its ``frame`` coordinate when that is a whole number, else ``f``)."""
    dim = image.dims[0]
    if dim in image.coords:
        value = image[dim].values[f]
        if np.issubdtype(np.asarray(value).dtype, np.number) and float(value).is_integer() and value >= 0:
            return int(value)
    return int(f)


def _distributions(image: xr.DataArray, grid: _Grid, network: _Network, batch_size: int, bar,
                   matching: tuple[float, float, int] | None = None):
    """Yield ``(f, F(y))`` for every frame in order: the softmax of its stitched logits on the label grid.

    ``matching``: ``(dose, target, draws)`` per model pixel: ``F(y)`` is the mean over ``draws`` copies of
    the frame brought down to ``target`` (dose matching; the noise of copy ``k`` of frame number ``n``
    comes from ``numpy.random.default_rng([DOSE_MATCHING_SEED, n, k])``, so it does not depend on how
    a movie is cut into chunks).
    """
    n_y, n_x = grid.labels
    for frames in _frame_groups(image.shape[0], len(grid.tiles), batch_size):
        if matching is None:
            padded = {f: _prepared(image, f, grid.resampled, grid.padded) for f in frames}
            stitched = _stitched_logits(padded, grid, network, batch_size, bar)
            for f in frames:
                yield f, _softmax(stitched.pop(f)[:, :n_y, :n_x], axis=0)
            continue
        dose, target, draws = matching
        base = {f: _resampled(image, f, grid.resampled) for f in frames}  # once; each draw only adds noise
        total = {}
        for k in range(draws):
            padded = {f: _padded(normalise(lower_dose(frame, dose, target, rng=np.random.default_rng(
                [DOSE_MATCHING_SEED, _frame_seed(image, f), k]))), grid.padded) for f, frame in base.items()}
            stitched = _stitched_logits(padded, grid, network, batch_size, bar)
            for f in frames:
                p = _softmax(stitched.pop(f)[:, :n_y, :n_x], axis=0)
                total[f] = p if k == 0 else total[f] + p
        for f in frames:
            yield f, total.pop(f) / draws


def _maps(distributions, n_frames: int, labels: tuple[int, int], return_probabilities: bool):
    """Depth ``argmax F(y)`` (uint8), confidence ``max F(y)`` and, when asked for, ``F(y)`` of all frames (step 5).

    ``distributions`` yields ``(f, F(y))`` as :func:`_distributions`; the probability is ``None`` unless asked for.
    """
    depth = np.empty((n_frames, *labels), dtype=np.uint8)
    confidence = np.empty((n_frames, *labels), dtype=np.float32)
    probability = None
    for f, distribution in distributions:
        depth[f] = distribution.argmax(axis=0)
        confidence[f] = distribution.max(axis=0)
        if return_probabilities:
            if probability is None:
                probability = np.empty((n_frames, *distribution.shape), dtype=np.float32)
            probability[f] = distribution
    return depth, confidence, probability


# ------------------------------------------------ prediction: in-plane orientation


def estimated_orientation(image: xr.DataArray):
    """:func:`segdepth.data.calibration.estimate_orientation` of a ``(frame, y, x)`` stack (at most
    :data:`_ORIENTATION_FRAMES` frames, resampled to about 0.3 A), or ``None`` when it shows no CeO2 [110]
    reflection."""
    pixel_size = image_pixel_size(image)
    n = image.shape[0]
    picks = np.unique(np.linspace(0, n - 1, min(n, _ORIENTATION_FRAMES)).round().astype(int))
    scale = min(1.0, pixel_size / _ORIENTATION_PIXEL)
    shape = tuple(max(16, round(v * scale)) for v in image.shape[1:])
    work = np.stack([resample(np.asarray(image[int(f)].values, np.float32), shape) for f in picks])
    try:
        return estimate_orientation(work, pixel_size * image.shape[2] / shape[1], false_alarm=1e-2)
    except CalibrationError:
        return None


def trained_orientation(card: dict) -> float:
    """Direction of CeO2 [001] [deg from +x towards +y] in the images the model of ``card`` was trained on (its
    ``orientation``, else :data:`TRAINED_ORIENTATION`)."""
    return float(_card_value(card, "orientation", default=TRAINED_ORIENTATION))


def _orientation(image: xr.DataArray, card: dict, orientation) -> tuple[float, dict]:
    """The rotation [deg] :func:`predict` applies (0 for none) and what it records about it."""
    trained = trained_orientation(card)
    if orientation is None:
        return 0.0, {"angle": None, "estimated": False, "rotation": 0.0}
    if isinstance(orientation, str | LatticeOrientation):
        if isinstance(orientation, str) and orientation != "auto":
            raise ValueError(f"orientation must be an angle [deg], 'auto' or None, got {orientation!r}")
        found = orientation if isinstance(orientation, LatticeOrientation) else estimated_orientation(image)
        if found is None:
            return 0.0, {"angle": None, "estimated": True, "rotation": 0.0,
                         "note": "no CeO2 [110] reflection found: read as given ([001] assumed along y)"}
        angle, info = found.angle, {"uncertainty": found.uncertainty, "reflections": len(found.peaks)}
        if found.ambiguous:  # one {111} pair: [001] is one of two directions 109.5 deg apart
            return 0.0, {"angle": float(angle), "estimated": True, "rotation": 0.0, **info,
                         "note": "one {111} reflection only: the direction of [001] is ambiguous; read as they are"}
    else:
        angle, info = check_finite_angle(orientation), {}
    rotation = rotation_between(angle, trained)
    applied = rotation if abs(rotation) >= MIN_ROTATION else 0.0
    return applied, {"angle": float(angle), "estimated": not isinstance(orientation, int | float | np.number),
                     "rotation": float(applied), **info}


def check_finite_angle(value) -> float:
    """``value`` as a finite float [deg]; ``ValueError`` naming it otherwise."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"orientation must be an angle in degrees, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"orientation must be a finite angle in degrees, got {value!r}")
    return out


def _canvas(image: xr.DataArray, rotation: float) -> xr.DataArray:
    """The frames of ``image`` turned by ``rotation`` [deg] onto a canvas that holds them whole (corners filled
    from the frame's edge pixels: :func:`segdepth.data.preprocess.rotate_frames`)."""
    frame_dim = image.dims[0]
    coords = {frame_dim: image[frame_dim]} if frame_dim in image.coords else {}
    return xr.DataArray(rotate_frames(image.values, rotation), dims=image.dims, coords=coords,
                        attrs={**image.attrs, "pixel_size": image_pixel_size(image)})


def _turned_back(distributions, grid: "_Grid", canvas_grid: "_Grid", rotation: float):
    """Yield ``(f, F(y))`` of :func:`_distributions` on the canvas, resampled (bilinear) onto the frame's own
    label grid."""
    from scipy import ndimage

    (n_y, n_x), (s_y, s_x), f_l, px = grid.labels, grid.sampling, grid.label_factor, grid.pixel_size
    x = (np.arange(n_x) + 0.5) * f_l * s_x / px - 0.5  # label pixel centres in input pixels
    y = (np.arange(n_y) + 0.5) * f_l * s_y / px - 0.5
    qx, qy = rotated_points(*np.meshgrid(x, y), grid.input_shape, rotation)
    c_y, c_x = canvas_grid.sampling
    where = [(qy + 0.5) * px / (f_l * c_y) - 0.5, (qx + 0.5) * px / (f_l * c_x) - 0.5]
    for f, distribution in distributions:
        out = np.stack([ndimage.map_coordinates(p, where, order=1, mode="nearest") for p in distribution])
        yield f, (out / out.sum(axis=0, keepdims=True)).astype(np.float32)


# ----------------------------------------------------- prediction: the result


def _dataset(image: xr.DataArray, grid: _Grid, maps: tuple, card: dict, arguments: dict) -> xr.Dataset:
    """The result of :func:`predict`: ``maps`` (from :func:`_maps`) with label-grid coordinates and provenance."""
    depth, confidence, probability = maps
    frame_dim, y_dim, x_dim = image.dims
    (n_y, n_x), (sampling_y, sampling_x) = grid.labels, grid.sampling
    label_y = _origin(image, y_dim, grid.pixel_size) + (np.arange(n_y) + 0.5) * grid.label_factor * sampling_y
    label_x = _origin(image, x_dim, grid.pixel_size) + (np.arange(n_x) + 0.5) * grid.label_factor * sampling_x
    frames = image[frame_dim].values if frame_dim in image.coords else np.arange(image.shape[0])
    coords = {
        "frame": ("frame", frames),
        "y": ("y", label_y, {"units": "Å", "long_name": "y (label pixel centre)"}),
        "x": ("x", label_x, {"units": "Å", "long_name": "x (label pixel centre)"}),
    }
    data_vars = {
        "depth": (
            ("frame", "y", "x"),
            depth,
            {"long_name": "atomic column depth (most probable number of atoms, 0 = background)", "units": "atoms",
             "last_class": LAST_CLASS_NOTE},
        ),
        "confidence": (
            ("frame", "y", "x"),
            confidence,
            {"long_name": "confidence (probability of the predicted depth, eq. 5)", "units": "1"},
        ),
    }
    if probability is not None:
        coords["depth_class"] = ("depth_class", np.arange(probability.shape[1]), {"long_name": "number of atoms"})
        data_vars["probability"] = (
            ("frame", "depth_class", "y", "x"),
            probability,
            {"long_name": "per-pixel depth distribution F(y)", "units": "1"},
        )
    from segdepth import __version__

    attrs = {
        "model_card": json.dumps(card, default=str),
        "arguments": json.dumps(arguments),
        "pixel_size": grid.pixel_size,
        "model_pixel_size": grid.model_pixel_size,
        "label_pixel_size": grid.label_factor * sampling_x,
        "label_factor": grid.label_factor,
        "segdepth_version": __version__,
    }
    if image.attrs.get("source"):
        attrs["source"] = str(image.attrs["source"])
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def predict(
    image,
    model=None,
    card: dict | None = None,
    *,
    pixel_size: float | None = None,
    as_signals: bool = False,
    tile: int = 512,
    overlap: int = 64,
    lam: float | str | None = None,
    return_probabilities: bool = False,
    progress: bool = False,
    batch_size: int = 1,
    fast: bool = True,
    dose_matching: bool = True,
    orientation: float | str | None = "auto",
    beam_energy: float | None = None,
) -> xr.Dataset:
    """Atomic column depth map of every frame of ``image``.

    Parameters
    ----------
    image : xarray.DataArray, numpy.ndarray or hyperspy Signal2D
        Intensities with dims ``(frame, y, x)`` or ``(y, x)`` and attribute
        ``pixel_size`` [A] (or ``x`` coordinates in A), as from
        :func:`segdepth.data.io.read_image`; a numpy array (with
        ``pixel_size``); or a HyperSpy ``Signal2D``, an image or a stack
        (navigation axes become frames), whose calibrated signal axes give the
        pixel size (:func:`segdepth.data.hyperspy.from_signal`).
    model : torch.nn.Module, optional
        Network mapping ``(B, 1, H, W)`` to logits ``(B, n_classes, H/4, W/4)``
        with attribute ``required_multiple``; run in eval mode on the device of
        its parameters. Default (with ``card`` also ``None``): the shipped
        default model (:func:`load_default_model`, loaded once per process).
    card : dict, optional
        Its model card; ``sampling`` (model pixel size [A]) and
        ``label_factor`` are used.
    pixel_size : float, optional
        Pixel size of the input [A]: needed for a numpy array or an
        uncalibrated signal; overrides the image's own.
    as_signals : bool
        Return the maps as HyperSpy signals
        (:func:`segdepth.data.hyperspy.to_signals`: a dict ``depth``,
        ``confidence``, on the label grid in the input's length unit, with the
        navigation axes of an input signal) instead of the dataset.
    tile : int
        Tile edge in model pixels, rounded down to a multiple of
        ``required_multiple`` (at least one multiple).
    overlap : int
        Overlap of neighbouring tiles in model pixels, rounded up to a
        multiple of ``required_multiple``; must be smaller than ``tile``.
        Stitching is exact when the receptive field's half-width is at most
        ``overlap / 2``.
    lam : float, optional
        Dose of the input [electrons per input pixel in vacuum]. Recorded,
        compared with the model's training dose (a warning when it is more
        than 2x off after resampling) and, above the card's dose-matching
        target, used to bring the frames down to it (``dose_matching``).
        ``"auto"``: estimated from the frames (at most 50;
        :func:`segdepth.data.calibration.estimate_dose`, as ``segdepth predict``
        does without ``--lambda``).
    return_probabilities : bool
        Also return the full per-pixel distribution ``probability``.
    progress : bool
        Show a tqdm progress bar (tiles) on stderr.
    batch_size : int
        Tiles per forward pass; when a frame has fewer tiles, tiles of
        consecutive frames share a pass (frame batching).
    fast : bool
        Run an inference-optimised copy of the network
        (:func:`segdepth.learn.model.optimise_for_inference`: batch norms folded
        into the convolutions, channels-last layout; same output to float
        rounding). ``False`` runs ``model`` as it is (the eager reference).
        A model that is already such a copy is used as it is.
    dose_matching : bool
        With ``lam`` and a card that has ``dose_matching`` (``target`` [e per model pixel], ``draws``):
        frames whose dose at the model's pixel size is above ``target`` are read ``draws`` times, each
        time brought down to ``target`` with fresh noise, and the distributions averaged (module
        docstring; ``draws`` times the network's time). Recorded in ``arguments`` (``dose_matched``).
    orientation : float, "auto", None or LatticeOrientation
        Direction of CeO2 [001] in the frames [deg from +x towards +y]. The models were trained with [001]
        along y (:data:`TRAINED_ORIENTATION`) and count columns of a lattice turned by more than a few
        degrees wrongly (README, "Crystals turned in the image plane"), so frames whose lattice is turned
        by :data:`MIN_ROTATION` or more are turned to it (bilinear, on a canvas that holds the whole
        frame, after the dose estimate), read, and the distributions turned back onto the frame's label
        grid. ``"auto"``: estimated from the frames' power spectrum (:func:`estimated_orientation`; not
        turned when no CeO2 [110] reflection is found) or, to turn several calls alike (a movie's chunks),
        a :class:`segdepth.data.calibration.LatticeOrientation` already measured; ``None``: read as they are.
        Recorded in ``arguments`` and the attribute ``orientation`` (JSON: ``angle``, ``estimated``,
        ``rotation`` applied, and a ``note`` when nothing was turned for want of a clear lattice).
    beam_energy : float, optional
        High tension of the frames [kV]; default the image's attribute ``beam_energy`` (what the file states:
        :func:`segdepth.data.io.read_image`), else unknown. Compared with the model's training energy
        (:func:`beam_energy_status`): another energy warns. Recorded as the attribute ``beam_energy`` and
        ``beam_energy_status``.

    Returns
    -------
    xarray.Dataset
        On the label grid, coordinates ``frame``, ``y``, ``x`` (label pixel
        centres [A], in the input's frame of reference):

        - ``depth`` (frame, y, x) uint8: most probable number of atoms (0 = background),
        - ``confidence`` (frame, y, x) float32: its probability ``max F(y)`` (eq. 5),
        - ``probability`` (frame, depth_class, y, x) float32, when asked for.

        Attributes ``model_card`` and ``arguments`` (JSON strings),
        ``pixel_size`` (input) and ``model_pixel_size``, ``label_pixel_size`` [A].
        With ``as_signals``, a dict of HyperSpy ``Signal2D`` instead.

    Raises
    ------
    ValueError
        When the pixel size of ``image`` is unknown or invalid, the image is
        not finite or has no positive mean, or ``tile`` / ``overlap`` are invalid.

    Notes
    -----
    The steps are those of the module docstring: :func:`_grid` checks the arguments and lays out
    the resampling, padding and tiles; :func:`_distributions` prepares every frame (:func:`_prepared`,
    steps 1-3), runs and stitches its tiles (:func:`_stitched_logits`, step 4) and takes the softmax;
    :func:`_maps` keeps the depth, confidence and probability (step 5).
    """
    like = image if is_signal(image) else None
    image = _as_stack(input_image(image, pixel_size))
    model, card = model_and_card(model, card)
    grid = _grid(image, model, card, tile, overlap, batch_size)  # steps 1, 3 and 4: sizes and tiles
    matching = None
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f"lam must be a dose in electrons per pixel, 'auto' or None, got {lam!r}")
        from segdepth.data.calibration import estimate_dose

        lam = estimate_dose(image.values[:50])
    if lam is not None:
        lam = check_positive(lam, name="lam (dose)", units="electrons per pixel")
        scale = (grid.model_pixel_size / grid.pixel_size) ** 2
        matching = _dose_matching(card.get("dose_matching"), lam * scale) if dose_matching else None
        if matching is None:  # a dose brought down to the target is one the model was trained at
            _dose_warning(lam, scale, card)
    if beam_energy is None:
        beam_energy = image.attrs.get("beam_energy")
    if beam_energy is not None:
        beam_energy = check_beam_energy(beam_energy)
    energy_status = beam_energy_status(beam_energy, card)
    if energy_status in ("other", "flagged"):
        _beam_energy_warning(beam_energy, card, energy_status)
    n_frames = image.shape[0]
    draws = 1 if matching is None else matching[2]
    rotation, turned = _orientation(image, card, orientation)
    canvas = _canvas(image, rotation) if rotation else image
    read_grid = _grid(canvas, model, card, tile, overlap, batch_size) if rotation else grid
    with _eval_mode(model), _tile_bar(n_frames * len(read_grid.tiles) * draws, progress) as bar:
        network = _network(model, fast)
        distributions = _distributions(canvas, read_grid, network, batch_size, bar, matching)  # steps 1-4
        if rotation:
            distributions = _turned_back(distributions, grid, read_grid, rotation)
        maps = _maps(distributions, n_frames, grid.labels, return_probabilities)  # step 5
    arguments = {
        "tile": int(tile),
        "overlap": int(overlap),
        "tile_used": grid.tile_used,
        "overlap_used": grid.overlap_used,
        "lam": lam,
        "return_probabilities": bool(return_probabilities),
        "batch_size": int(batch_size),
        "fast": bool(fast),
        "pixel_size": grid.pixel_size,
        "resampled_shape": list(grid.resampled),
        "dose_matched": None if matching is None else {"dose": matching[0], "target": matching[1],
                                                        "draws": matching[2]},
        "orientation": (orientation if orientation is None or isinstance(orientation, str)
                        else float(getattr(orientation, "angle", orientation))),
    }
    result = _dataset(image, grid, maps, card, arguments)
    result.attrs["orientation"] = json.dumps(turned)
    if beam_energy is not None:
        result.attrs["beam_energy"] = float(beam_energy)
    result.attrs["beam_energy_status"] = energy_status
    if as_signals:
        from segdepth.data.hyperspy import to_signals

        return to_signals(result, like)
    return result


def _create_variables(nc, ds: xr.Dataset, n_frames: int, compress: bool) -> None:
    """Dimensions, coordinates, attributes and empty per-frame variables of ``ds`` in the open netCDF4 file ``nc``."""
    nc.createDimension("frame", n_frames)
    for dim in ("y", "x", "depth_class"):
        if dim in ds.sizes:
            nc.createDimension(dim, ds.sizes[dim])
    for name in ("y", "x", "depth_class"):
        if name in ds.coords:
            var = nc.createVariable(name, ds[name].dtype, (name,))
            var[:] = ds[name].values
            var.setncatts({k: v for k, v in ds[name].attrs.items()})
    nc.createVariable("frame", "i8", ("frame",))
    for name, da in ds.data_vars.items():
        chunks = [1, *da.shape[1:]]
        var = nc.createVariable(name, da.dtype, da.dims, zlib=compress, complevel=1, chunksizes=chunks)
        var.setncatts(dict(da.attrs))
    nc.setncatts({k: v for k, v in ds.attrs.items() if v is not None})


def _weights_digest(model) -> str:
    """A SHA-256 of a model's parameters and buffers (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


#: Version of what a finished chunk holds; bumped when its variables change (2: depth_low / depth_high), so that a
#: run resumed with a newer segdepth does not mix chunks of two layouts.
_PARTS_LAYOUT = 2


def _parts_key(card: dict, n_frames: int, attrs: dict | None, check: dict | None, options: dict) -> str:
    """What a finished chunk depends on: a resumed run reuses chunks only when all of it is the same."""
    import hashlib

    if check is not None:  # a second model is known by its card (and its weights' sums), not by its repr
        check = {k: v for k, v in check.items() if k != "rotated_model"} | (
            {"rotated_weights": _weights_digest(check["rotated_model"])} if "rotated_model" in check else {})
    blob = json.dumps({"card": card, "n_frames": n_frames, "attrs": attrs or {}, "check": check,
                       "options": options, "layout": _PARTS_LAYOUT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _remove_stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of earlier killed writes of ``path`` (``.<name>.*.nc``, store.atomic_write)."""
    stale = [p for p in path.parent.glob(f".{path.name}.*.nc") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _prepare_parts(parts: Path, key: str) -> None:
    """Keep the finished chunks of an interrupted run with the same ``key``; start afresh otherwise."""
    import shutil

    manifest = parts / "manifest.json"
    if parts.is_dir():
        try:
            same = json.loads(manifest.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts)
    if not parts.is_dir():
        parts.mkdir()
        from segdepth.data.store import write_json_atomic

        write_json_atomic({"key": key}, manifest)
    for tmp in parts.glob(".*.nc"):  # temporaries of a chunk being written when the run was killed
        tmp.unlink(missing_ok=True)


def predict_to_netcdf(frames, model, card: dict, path, *, n_frames: int, attrs: dict | None = None,
                      progress: bool = False, compress: bool = True, check: dict | None = None,
                      resume: bool = True, **options) -> Path:
    """Predict a long series chunk by chunk and write it to one netCDF file, resuming after a kill.

    Every chunk's result is written (atomically) to ``.<name>.parts/chunk_NNNNN.nc`` next to ``path`` as
    soon as it is computed. When all chunks are done they are copied, frame by frame, into a temporary
    file that is renamed to ``path`` (:func:`segdepth.data.store.atomic_write`), and the parts are removed. A
    run that was killed leaves ``path`` as it was and its finished chunks behind: the next run with the
    same model, options and frames skips them (``resume``), one with anything different starts afresh.
    Stale temporary files of ``path`` from killed runs are removed first. The result is the dataset
    :func:`predict` would return for all frames at once.

    Parameters
    ----------
    frames : iterable of xarray.DataArray or of callables
        Chunks ``(frame, y, x)`` of the series in order (e.g. from :func:`segdepth.data.io.read_image` with
        ``frames=``), all of one frame size and pixel size; or functions returning them, so that a resumed
        run does not even read the chunks it skips.
    model, card
        As for :func:`predict`.
    path : path
        Output netCDF file.
    n_frames : int
        Total number of frames the chunks hold.
    attrs : dict, optional
        Extra dataset attributes (strings or numbers).
    progress : bool
        A tqdm progress bar over frames on stderr.
    check : dict, optional
        Run :func:`segdepth.learn.validity.predict_checked` with these options (``tta``, ``lattice_average``,
        ``margin``, ``max_disagreement``) instead of :func:`predict`: the output also holds ``crystal``,
        ``valid``, ``valid_reason`` and their scores, and ``depth`` is 0 in vacuum. The lattice maps average
        frames only within a chunk.
    resume : bool
        Reuse the finished chunks of an interrupted run (else start afresh).
    **options
        Passed to :func:`predict` (``tile``, ``overlap``, ``lam``, ``return_probabilities``, ``batch_size``,
        ``fast``).
    """
    import shutil

    import netCDF4
    from tqdm.auto import tqdm

    from segdepth.data.store import atomic_write, write_netcdf_atomic

    path = Path(path)
    _remove_stale_temporaries(path)
    parts = path.parent / f".{path.name}.parts"
    if not resume and parts.is_dir():
        shutil.rmtree(parts)
    _prepare_parts(parts, _parts_key(card, n_frames, attrs, check, options))
    model = _inference_network(model, options.get("fast", True))  # once for the whole series
    if check is not None and check.get("rotated_model") is not None:
        check = check | {"rotated_model": _inference_network(check["rotated_model"], options.get("fast", True))}

    bar = tqdm(total=n_frames, unit="frame", desc="segdepth", disable=not progress, file=sys.stderr)
    files, done = [], 0
    try:
        for k, chunk in enumerate(frames):
            part = parts / f"chunk_{k:05d}.nc"
            if part.is_file():
                with xr.open_dataset(part) as ds:
                    n_chunk = ds.sizes["frame"]
            else:
                chunk = chunk() if callable(chunk) else chunk
                if chunk.ndim == 2:
                    chunk = chunk.expand_dims("frame")
                if check is None:
                    ds = predict(chunk, model, card, **options)  # the whole chunk: frames share forward passes
                else:
                    from segdepth.learn.validity import predict_checked

                    ds = predict_checked(chunk, model, card, **check, **options)
                n_chunk = ds.sizes["frame"]
                write_netcdf_atomic(ds, part, compress=compress)
            done += n_chunk
            if done > n_frames:
                raise ValueError(f"more frames than announced ({n_frames})")
            files.append(part)
            bar.update(n_chunk)
    finally:
        bar.close()
    if done != n_frames:
        raise ValueError(f"got {done} frames, expected {n_frames}")

    def write(tmp):
        nc = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            first, frame_ids, at = None, [], 0
            for part in files:
                with xr.open_dataset(part) as ds:
                    ds = ds.load()
                if first is None:
                    first = ds
                    _create_variables(nc, ds.isel(frame=[0]).assign_attrs(attrs or {}), n_frames, compress)
                elif {k: v for k, v in ds.sizes.items() if k != "frame"} != {
                    k: v for k, v in first.sizes.items() if k != "frame"
                } or not np.allclose(ds["x"], first["x"]) or not np.allclose(ds["y"], first["y"]):
                    raise ValueError(f"frame {int(ds['frame'][0])} differs in size or position from the first")
                for f in range(ds.sizes["frame"]):
                    for name in ds.data_vars:
                        nc[name][at] = ds[name].values[f]
                    frame_ids.append(int(ds["frame"].values[f]))
                    at += 1
            nc["frame"][:] = np.asarray(frame_ids, dtype=np.int64)
        finally:
            nc.close()

    atomic_write(path, write, suffix=".nc", make_parents=False)
    shutil.rmtree(parts, ignore_errors=True)
    return path
