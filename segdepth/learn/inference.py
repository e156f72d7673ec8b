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

The UNet is equivariant to shifts by ``required_multiple`` pixels away from the
image border, so the stitched result equals the untiled one exactly when the
network's receptive field (its half-width) fits in half the overlap; with a
smaller overlap the tiles differ from the untiled result only near the seams.

The output lives on the label grid (``label_factor`` model pixels per label
pixel: 4 for the paper's layout at 0.053 A, 1 for the default binned-input model
at 0.212 A; the same 0.212 A grid) and its ``x``, ``y`` coordinates are in
Angstrom in the frame of reference of the input, so it overlays the input image
directly.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse
import xarray as xr

from segdepth.data.io import LENGTH_UNITS, check_pixel_size, check_positive
from segdepth.data.preprocess import normalise

__all__ = [
    "MODELS_DIR",
    "image_pixel_size",
    "DEFAULT_MODEL",
    "PREVIOUS_DEFAULT_MODEL",
    "REFERENCE_MODEL",
    "load_default_model",
    "predict",
    "predict_to_netcdf",
    "resample",
]

#: Shipped models: package data (``segdepth/models/``), found the same way from a clone and from an
#: installed wheel.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: The model :func:`load_default_model` reads (absolute, inside :data:`MODELS_DIR`): the robust model
#: (issue 11): the fast architecture (input binned 4x to the label grid, issue 6) fine-tuned on randomised
#: optics, particles and doses (its card's ``envelope`` lists the ranges; README "The robust default").
DEFAULT_MODEL = MODELS_DIR / "segdepth_robust_base8_bin4.safetensors"
#: The default before issue 11 (the fast model trained on the nominal microscope at lambda 2.5), kept as a
#: reference for the shift test (``--model segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors``).
PREVIOUS_DEFAULT_MODEL = MODELS_DIR / "segdepth_fast_base8_bin4_lam2.5.safetensors"
#: The paper-layout model, run in plain eager float32 as the checked reference (``--reference``).
REFERENCE_MODEL = MODELS_DIR / "segdepth_base16_lam2.5.safetensors"
_MAX_PIXELS = 2**28  # largest resampled frame we accept (16384 x 16384)
#: Smallest field [A] along each axis that :func:`predict` accepts: about two CeO2 [110] column spacings
#: (1.35 A along [001]); a smaller image cannot hold a column with its surroundings.
MIN_FIELD = 3.0


def load_default_model(*, reference: bool = False):
    """Load a model shipped with the repository.

    Parameters
    ----------
    reference : bool
        ``False``: :data:`DEFAULT_MODEL` (the robust fast model). ``True``:
        :data:`REFERENCE_MODEL` (the paper's layout; run it with
        ``predict(..., fast=False)`` for the eager reference path).

    Returns
    -------
    (torch.nn.Module, dict)
        The model (in eval mode) and its card, as :func:`segdepth.learn.modelio.load_model`.

    Raises
    ------
    FileNotFoundError
        When the model file is absent.
    """
    path = REFERENCE_MODEL if reference else DEFAULT_MODEL
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
    for key in keys:
        if key in card and card[key] is not None:
            return card[key]
    return default


def _model_pixel_size(card: dict) -> float:
    value = _card_value(card, "sampling", "pixel_size")
    if value is None:
        raise ValueError("the model card gives no pixel size ('sampling' [A]); cannot resample the input")
    units = str(_card_value(card, "sampling_units", "pixel_size_units", default="A")).strip().lower()
    if units not in LENGTH_UNITS:
        raise ValueError(f"the model card's pixel size has unknown units {units!r}")
    return check_pixel_size(value, name="model pixel size") * LENGTH_UNITS[units]


def image_pixel_size(image: xr.DataArray) -> float:
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
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def _dose_warning(lam: float, scale: float, card: dict) -> None:
    """Warn when the dose at the model's pixel size is far from the training dose(s)."""
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


def _prepared(image: xr.DataArray, f: int, resampled: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
    """Frame ``f`` resampled to the model's pixel size, normalised and reflect-padded."""
    frame = np.asarray(image[f].values, dtype=np.float32)
    if not np.all(np.isfinite(frame)):
        raise ValueError(f"frame {f} contains NaN or infinite values")
    try:
        frame = normalise(resample(frame, resampled))
    except ValueError as err:
        raise ValueError(f"frame {f}: {err}") from None
    (h_r, w_r), (pad_h, pad_w) = resampled, padded
    mode = "reflect" if min(h_r, w_r) > 1 else "edge"
    return np.pad(frame, ((0, pad_h - h_r), (0, pad_w - w_r)), mode=mode)


def predict(
    image: xr.DataArray,
    model,
    card: dict,
    *,
    tile: int = 512,
    overlap: int = 64,
    lam: float | None = None,
    return_probabilities: bool = False,
    progress: bool = False,
    batch_size: int = 1,
    fast: bool = True,
) -> xr.Dataset:
    """Atomic column depth map of every frame of ``image``.

    Parameters
    ----------
    image : xarray.DataArray
        Intensities with dims ``(frame, y, x)`` or ``(y, x)`` and attribute
        ``pixel_size`` [A] (or ``x`` coordinates in A), as from
        :func:`segdepth.data.io.read_image`.
    model : torch.nn.Module
        Network mapping ``(B, 1, H, W)`` to logits ``(B, n_classes, H/4, W/4)``
        with attribute ``required_multiple``; run in eval mode on the device of
        its parameters.
    card : dict
        Its model card; ``sampling`` (model pixel size [A]) and
        ``label_factor`` are used.
    tile : int
        Tile edge in model pixels, rounded down to a multiple of
        ``required_multiple`` (at least one multiple).
    overlap : int
        Overlap of neighbouring tiles in model pixels, rounded up to a
        multiple of ``required_multiple``; must be smaller than ``tile``.
        Stitching is exact when the receptive field's half-width is at most
        ``overlap / 2``.
    lam : float, optional
        Dose of the input [electrons per input pixel in vacuum]. Only
        recorded, and compared with the model's training dose (a warning when
        it is more than 2x off after resampling).
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

    Raises
    ------
    ValueError
        When the pixel size of ``image`` is unknown or invalid, the image is
        not finite or has no positive mean, or ``tile`` / ``overlap`` are invalid.
    """
    import torch
    from tqdm.auto import tqdm

    if image.ndim == 2:
        image = image.expand_dims("frame")
    if image.ndim != 3:
        raise ValueError(f"image must have dims (frame, y, x) or (y, x), got {image.dims}")
    frame_dim, y_dim, x_dim = image.dims
    n_frames, h_in, w_in = image.shape
    pixel_size = image_pixel_size(image)
    model_pixel_size = _model_pixel_size(card)
    label_factor = int(_card_value(card, "label_factor", default=getattr(model, "output_factor", 4)))
    m = int(getattr(model, "required_multiple", label_factor))
    for name, value in (("tile", tile), ("overlap", overlap), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    tile_used = max(m, int(tile) // m * m)
    overlap_used = -(-int(overlap) // m) * m
    if overlap_used >= tile_used:
        raise ValueError(
            f"overlap ({overlap} -> {overlap_used} px) must be smaller than the tile ({tile} -> {tile_used} px); "
            f"both are rounded to multiples of {m} (the model's required_multiple)"
        )

    if min(h_in, w_in) * pixel_size < MIN_FIELD:
        raise ValueError(
            f"the {h_in} x {w_in} image of {pixel_size:g} A pixels covers {h_in * pixel_size:.2f} x "
            f"{w_in * pixel_size:.2f} A, too small to hold an atomic column (at least {MIN_FIELD:g} A along each "
            "axis); check --pixel-size"
        )
    # Resampled size: the same physical extent at (close to) the model's pixel size.
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
    sampling_y, sampling_x = pixel_size * h_in / h_r, pixel_size * w_in / w_r  # effective, ~ model pixel size
    if lam is not None:
        lam = check_positive(lam, name="lam (dose)", units="electrons per pixel")
        _dose_warning(lam, (model_pixel_size / pixel_size) ** 2, card)

    pad_h, pad_w = -(-h_r // m) * m, -(-w_r // m) * m
    tile_h, starts_y, owned_y = _tile_layout(pad_h, tile_used, overlap_used, m, label_factor)
    tile_w, starts_x, owned_x = _tile_layout(pad_w, tile_used, overlap_used, m, label_factor)
    tiles = [(sy, oy, sx, ox) for sy, oy in zip(starts_y, owned_y) for sx, ox in zip(starts_x, owned_x)]
    n_label_y, n_label_x = -(-h_r // label_factor), -(-w_r // label_factor)

    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    was_training = getattr(model, "training", False)
    model.eval()
    net = model
    if fast and hasattr(model, "config"):
        from segdepth.learn.model import optimise_for_inference

        net = model if hasattr(model, "inference_layout") else optimise_for_inference(model)
    layout = torch.channels_last if getattr(net, "inference_layout", "") == "channels_last" else torch.contiguous_format
    depth_out = np.empty((n_frames, n_label_y, n_label_x), dtype=np.uint8)
    confidence_out = np.empty((n_frames, n_label_y, n_label_x), dtype=np.float32)
    probability_out = None
    bar = tqdm(
        total=n_frames * len(tiles), unit="tile", desc="segdepth", disable=not progress, file=sys.stderr, leave=False
    )
    # Frames are processed in groups so that one forward pass holds up to batch_size tiles, across
    # frames when a frame has fewer tiles (a small frame, or the binned input of the fast model).
    group = max(1, batch_size // len(tiles))
    try:
        for g0 in range(0, n_frames, group):
            frames = range(g0, min(g0 + group, n_frames))
            padded = {f: _prepared(image, f, (h_r, w_r), (pad_h, pad_w)) for f in frames}
            work = [(f, t) for f in frames for t in tiles]
            logits = dict.fromkeys(frames)
            for first in range(0, len(work), batch_size):
                batch = work[first : first + batch_size]
                x = np.stack([padded[f][sy : sy + tile_h, sx : sx + tile_w] for f, (sy, _, sx, _) in batch])
                with torch.inference_mode():
                    inputs = torch.from_numpy(x[:, None]).to(device).contiguous(memory_format=layout)
                    out = net(inputs).float().cpu().numpy()
                for (f, (sy, (y0, y1), sx, (x0, x1))), tile_logits in zip(batch, out, strict=True):
                    if logits[f] is None:
                        logits[f] = np.empty((out.shape[1], pad_h // label_factor, pad_w // label_factor), np.float32)
                    logits[f][:, y0 // label_factor : y1 // label_factor, x0 // label_factor : x1 // label_factor] = (
                        tile_logits[
                            :,
                            (y0 - sy) // label_factor : (y1 - sy) // label_factor,
                            (x0 - sx) // label_factor : (x1 - sx) // label_factor,
                        ]
                    )
                bar.update(len(batch))
            for f in frames:
                probability = _softmax(logits.pop(f)[:, :n_label_y, :n_label_x], axis=0)
                depth_out[f] = probability.argmax(axis=0)
                confidence_out[f] = probability.max(axis=0)
                if return_probabilities:
                    if probability_out is None:
                        probability_out = np.empty((n_frames, *probability.shape), dtype=np.float32)
                    probability_out[f] = probability
    finally:
        bar.close()
        if was_training:
            model.train()

    label_y = _origin(image, y_dim, pixel_size) + (np.arange(n_label_y) + 0.5) * label_factor * sampling_y
    label_x = _origin(image, x_dim, pixel_size) + (np.arange(n_label_x) + 0.5) * label_factor * sampling_x
    frames = image[frame_dim].values if frame_dim in image.coords else np.arange(n_frames)
    coords = {
        "frame": ("frame", frames),
        "y": ("y", label_y, {"units": "Å", "long_name": "y (label pixel centre)"}),
        "x": ("x", label_x, {"units": "Å", "long_name": "x (label pixel centre)"}),
    }
    data_vars = {
        "depth": (
            ("frame", "y", "x"),
            depth_out,
            {"long_name": "atomic column depth (most probable number of atoms, 0 = background)", "units": "atoms"},
        ),
        "confidence": (
            ("frame", "y", "x"),
            confidence_out,
            {"long_name": "confidence (probability of the predicted depth, eq. 5)", "units": "1"},
        ),
    }
    if return_probabilities:
        n_classes = probability_out.shape[1]
        coords["depth_class"] = ("depth_class", np.arange(n_classes), {"long_name": "number of atoms"})
        data_vars["probability"] = (
            ("frame", "depth_class", "y", "x"),
            probability_out,
            {"long_name": "per-pixel depth distribution F(y)", "units": "1"},
        )
    arguments = {
        "tile": int(tile),
        "overlap": int(overlap),
        "tile_used": tile_used,
        "overlap_used": overlap_used,
        "lam": lam,
        "return_probabilities": bool(return_probabilities),
        "batch_size": int(batch_size),
        "fast": bool(fast),
        "pixel_size": pixel_size,
        "resampled_shape": [h_r, w_r],
    }
    from segdepth import __version__

    attrs = {
        "model_card": json.dumps(card, default=str),
        "arguments": json.dumps(arguments),
        "pixel_size": pixel_size,
        "model_pixel_size": model_pixel_size,
        "label_pixel_size": label_factor * sampling_x,
        "label_factor": label_factor,
        "segdepth_version": __version__,
    }
    if image.attrs.get("source"):
        attrs["source"] = str(image.attrs["source"])
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


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


def _parts_key(card: dict, n_frames: int, attrs: dict | None, check: dict | None, options: dict) -> str:
    """What a finished chunk depends on: a resumed run reuses chunks only when all of it is the same."""
    import hashlib

    blob = json.dumps({"card": card, "n_frames": n_frames, "attrs": attrs or {}, "check": check,
                       "options": options}, sort_keys=True, default=str)
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
    if options.get("fast", True) and hasattr(model, "config") and not hasattr(model, "inference_layout"):
        from segdepth.learn.model import optimise_for_inference

        model = optimise_for_inference(model)  # once for the whole series

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
