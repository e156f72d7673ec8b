"""Columns, not pixels, through a movie: drift, column positions and atom counts over time.

A movie of noisy frames becomes a table of atomic columns in five steps:

1. :func:`align_frames` measures the drift of every frame relative to the
   first (sub-pixel phase cross-correlation of Gaussian-smoothed, Hann-windowed
   frames against the running mean of the frames aligned so far) and flags the
   frames that cannot be aligned; :func:`shift_frames` moves images or
   label-grid maps onto the first frame.
2. :func:`mean_estimate` averages the aligned per-frame depth estimates into
   one map: the expected count ``sum_k k p_k`` or the probability of a column
   ``1 - p_0``.
3. :func:`find_columns` finds the columns in that map (peaks at least ~1.1 A
   apart, refined to sub-pixel by a centre of mass) and names each Ce or O by
   fitting the CeO2 [110] lattice to them.
4. :func:`track_columns` follows every column through the movie (its reference
   position moved by the drift) and reads the class distribution there: the
   per-frame count probability, expected count, spread and most probable count.
5. :func:`smooth_counts` smooths these per-frame probabilities in time with a
   hidden Markov model of counts that change rarely and by one atom at a time;
   :func:`frames_to_detect_change` tells how many frames after a known change
   the smoothed posterior moves to the new count.

Conventions: positions are ``(y, x)`` in Angstrom in the frame of reference of
the first frame; ``drift`` is the displacement of the specimen in a frame
relative to the first, so a column at ``r`` in the first frame is at
``r + drift`` in that frame.

The CeO2 [110] motif
--------------------
With x = [1-10] (3.826 A) and y = [001] (5.411 A), the fluorite structure
(:func:`segdepth.physics.structures.projected_columns`) projects to Ce columns at
(0, 0) and (1/2, 1/2) of the cell (a centred rectangular lattice) and O columns
at (0, 1/4), (0, 3/4), (1/2, 1/4) and (1/2, 3/4). All columns sit on a fine
rectangular grid of a/(2 sqrt 2) = 1.913 A along x by a/4 = 1.353 A along y:
rows of O every 1.913 A (O-O pairs 1.913 A apart) alternate with rows of Ce
every 3.826 A, each Ce with one O 1.353 A above and one below, and half of the
grid sites in a Ce row are empty. :func:`find_columns` fits that grid to the
peaks and chooses the one of the four distinct assignments of Ce, O and empty
sites that puts the fewest peaks on empty sites; it does not rely on Ce
columns being stronger (in the depth estimate a Ce and an O column of the same
thickness have the same count).

References
----------
De wael, A., De Backer, A., Jones, L., Varambhia, A., Nellist, P. D. and Van
Aert, S., "Measuring dynamic structural changes of nanoparticles at the atomic
scale using scanning transmission electron microscopy", Phys. Rev. Lett. 124,
106105 (2020): hidden Markov counting of atoms in a HAADF time series, the idea
:func:`smooth_counts` follows.

Guizar-Sicairos, M., Thurman, S. T. and Fienup, J. R., "Efficient subpixel
image registration algorithms", Opt. Lett. 33, 156-158 (2008): the sub-pixel
registration of :func:`skimage.registration.phase_cross_correlation`.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.special import logsumexp

from segdepth.constants import LATTICE_CONSTANT, N_CLASSES, Z_CE, check_int
from segdepth.data.io import check_pixel_size
from segdepth.physics.structures import projected_columns

__all__ = [
    "AlignmentError",
    "ELEMENTS",
    "align_frames",
    "shift_frames",
    "mean_estimate",
    "find_columns",
    "track_columns",
    "COUNT_SET_LEVEL",
    "prediction_sets",
    "set_scores",
    "calibrated_mass",
    "count_set_mass",
    "count_range",
    "transition_matrix",
    "smooth_counts",
    "frames_to_detect_change",
]

#: Element labels of :func:`find_columns`: a column on a Ce or an O site, or off the CeO2 [110] lattice
#: (or on a site that is empty in it).
ELEMENTS = ("Ce", "O", "unknown")
_GRID = (LATTICE_CONSTANT / math.sqrt(8), LATTICE_CONSTANT / 4)  # fine grid along [1-10], [001]: 1.913, 1.353 A
_FAILURE_MODES = ("flag", "warn", "raise")
_ANGLE_KAPPA = 1 / (4 * math.radians(3) ** 2)  # von Mises concentration of the doubled angle: ~3 degrees
_QUANTITIES = ("expected_count", "non_vacuum")


class AlignmentError(ValueError):
    """Frames of a movie could not be aligned (raised by :func:`align_frames` with ``on_failure="raise"``)."""


# ----------------------------------------------------------------------------- grids and checks


def _spacing(da: xr.DataArray, dim: str, pixel_size: float | None = None) -> float:
    """Pixel spacing of ``da`` along ``dim`` [A]: from its coordinates, else ``pixel_size``, else attrs."""
    if dim in da.coords and da.sizes[dim] > 1:
        c = np.asarray(da[dim].values, dtype=float)
        step = np.diff(c)
        if not np.allclose(step, step[0], rtol=1e-4, atol=1e-9) or step[0] <= 0:
            raise ValueError(f"coordinate {dim} must be uniformly increasing pixel centres [A]")
        return float(step[0])
    value = pixel_size if pixel_size is not None else da.attrs.get("pixel_size")
    if value is None:
        raise ValueError(f"the pixel size along {dim} is unknown: give {dim} coordinates [A] or pixel_size=")
    return check_pixel_size(value)


def _origin(da: xr.DataArray, dim: str, spacing: float) -> float:
    """Position of the first pixel centre along ``dim`` [A] (``spacing / 2`` without coordinates)."""
    return float(da[dim].values[0]) if dim in da.coords else 0.5 * spacing


def _as_frames(frames, pixel_size: float | None) -> xr.DataArray:
    """``frames`` as a float DataArray with dims (frame, y, x) and y, x coordinates [A]."""
    if not isinstance(frames, xr.DataArray):
        frames = np.asarray(frames)
        if frames.ndim != 3:
            raise ValueError(f"frames must have dims (frame, y, x), got an array of shape {frames.shape}")
        frames = xr.DataArray(frames, dims=("frame", "y", "x"))
    if frames.ndim != 3 or frames.dims[1:] != ("y", "x"):
        raise ValueError(f"frames must have dims (frame, y, x), got {frames.dims}")
    if frames.sizes["y"] < 8 or frames.sizes["x"] < 8:
        raise ValueError(f"frames must be at least 8 x 8 pixels, got {frames.sizes['y']} x {frames.sizes['x']}")
    data = np.asarray(frames.values, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError("frames must be finite (no NaN or infinite values)")
    spacing = [_spacing(frames, dim, pixel_size) for dim in ("y", "x")]
    if not math.isclose(spacing[0], spacing[1], rel_tol=1e-3):
        raise ValueError(f"frames must have square pixels, got {spacing[0]:g} x {spacing[1]:g} A")
    coords = {dim: (dim, _origin(frames, dim, s) + np.arange(frames.sizes[dim]) * s) for dim, s in zip("yx", spacing)}
    coords["frame"] = frames["frame"].values if "frame" in frames.coords else np.arange(frames.sizes["frame"])
    return xr.DataArray(data, dims=("frame", "y", "x"), coords=coords, attrs={"pixel_size": spacing[1]})


def _check_alignment(alignment: xr.Dataset | None, n_frames: int) -> xr.Dataset | None:
    if alignment is None:
        return None
    if not isinstance(alignment, xr.Dataset) or "drift" not in alignment:
        raise ValueError("alignment must be the Dataset returned by align_frames (with a 'drift' variable)")
    if alignment.sizes["frame"] != n_frames:
        raise ValueError(f"alignment has {alignment.sizes['frame']} frames but the data has {n_frames}")
    return alignment


def _usable_drift(alignment: xr.Dataset | None, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Drift (n_frames, 2) [A] with frames that did not align interpolated in time, and the aligned flags."""
    if alignment is None:
        return np.zeros((n_frames, 2)), np.ones(n_frames, dtype=bool)
    drift = np.asarray(alignment["drift"].transpose("frame", "component").values, dtype=float)
    aligned = np.asarray(alignment["aligned"].values, dtype=bool) if "aligned" in alignment else np.ones(n_frames, bool)
    if aligned.any() and not aligned.all():
        t = np.arange(n_frames)
        drift = np.stack([np.interp(t, t[aligned], drift[aligned, k]) for k in range(2)], axis=1)
    return drift, aligned


# ----------------------------------------------------------------------------- 1. drift


def _prepare(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed frame with zero mean and unit variance (a flat frame stays zero)."""
    g = ndimage.gaussian_filter(frame, sigma) if sigma > 0 else frame.copy()
    g -= g.mean()
    std = g.std()
    return g / std if std > 0 else g


def _annuli(shape: tuple[int, int]) -> np.ndarray:
    """Index of the annulus (one Fourier pixel wide) of every spatial frequency of ``shape``."""
    fy, fx = np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1])
    radius = np.hypot(fy[:, None], fx[None, :]) * max(shape)
    return np.rint(radius).astype(np.intp)


def _significance(ref_freq: np.ndarray, mov_freq: np.ndarray, error: float, annuli: np.ndarray) -> float:
    """Height of the correlation peak over the spread expected for an isotropic-noise moving frame.

    ``rho = sqrt(1 - error**2)`` is the normalised cross-correlation at the peak
    (see :func:`skimage.registration.phase_cross_correlation`). Were the moving
    frame isotropic noise with its radially averaged power spectrum ``S``, the
    normalised correlation at any one shift would have the standard deviation
    ``sqrt(sum |R|^2 S / (sum |R|^2 sum |M|^2))``; the result is ``rho`` in units of it.
    """
    p_ref, p_mov = np.abs(ref_freq) ** 2, np.abs(mov_freq) ** 2
    total = p_ref.sum() * p_mov.sum()
    if total <= 0:
        return 0.0
    counts = np.bincount(annuli.ravel())
    radial = np.bincount(annuli.ravel(), p_mov.ravel()) / np.maximum(counts, 1)
    null = math.sqrt(float(np.sum(p_ref * radial[annuli])) / total)
    rho = math.sqrt(max(0.0, 1.0 - float(error) ** 2))
    return rho / null if null > 0 else 0.0


def _register(ref, moving, taper, annuli, upsample_factor: int, normalization) -> tuple[np.ndarray, float, float]:
    """Drift [pixels] of prepared frame ``moving`` relative to ``ref``, registration error and significance."""
    from skimage.registration import phase_cross_correlation

    ref_freq, mov_freq = np.fft.fft2(ref * taper), np.fft.fft2(moving * taper)
    shift, error, _ = phase_cross_correlation(
        ref_freq, mov_freq, upsample_factor=upsample_factor, space="fourier", normalization=normalization
    )
    # the shift that registers the frame is minus the drift of its content
    return -shift, float(error), _significance(ref_freq, mov_freq, error, annuli)


def _unshift(frame: np.ndarray, drift_px: np.ndarray) -> np.ndarray:
    """``frame`` moved by ``-drift_px`` (Fourier shift, periodic: the border is windowed away later)."""
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(frame), -np.asarray(drift_px))).real


def _report_failures(aligned: np.ndarray, frame_ids, on_failure: str) -> None:
    failed = [int(f) for f, ok in zip(frame_ids, aligned, strict=True) if not ok]
    if not failed or on_failure == "flag":
        return
    shown = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
    message = f"{len(failed)} of {len(aligned)} frames could not be aligned to the first (frames {shown})"
    if on_failure == "raise":
        raise AlignmentError(message)
    warnings.warn(message, stacklevel=3)


def align_frames(
    frames,
    *,
    reference: str = "running",
    upsample_factor: int = 20,
    sigma: float = 1.0,
    max_jump: float | None = 1.0,
    min_significance: float = 8.0,
    normalization: str | None = None,
    refine: bool = True,
    window=("tukey", 0.3),
    pixel_size: float | None = None,
    on_failure: str = "flag",
) -> xr.Dataset:
    """Drift of every frame of a movie relative to its first frame.

    Every frame is smoothed with a Gaussian of ``sigma`` pixels, given zero mean
    and unit variance and multiplied by a window (Tukey: flat in the middle,
    tapered over the outer 15 % on each side), then registered with
    :func:`skimage.registration.phase_cross_correlation` (sub-pixel by
    upsampled DFT, plain cross-correlation by default: it is more robust to
    shot noise than phase normalisation) against the reference: the first
    frame, or the running mean of all frames aligned so far, shifted onto the
    first (less noise in the reference, and no error accumulated from frame to
    frame). A frame is *aligned* when its correlation peak is significant
    (``significance >= min_significance``) and its drift differs from that of
    the last aligned frame by at most ``max_jump``; other frames are flagged
    and left out of the running mean. The first frame is aligned by definition.
    With ``refine`` (and at least 3 aligned frames), a second pass registers
    every frame, the first included, against the mean of all *other* aligned
    frames of the first pass (no frame is compared with its own noise) and
    the drift is then taken relative to the first frame: the early frames no
    longer see a reference of only one or two noisy frames.

    Parameters
    ----------
    frames : xarray.DataArray or array_like
        Images with dims ``(frame, y, x)``; the pixel size comes from ``y``, ``x``
        coordinates [A], else ``pixel_size``, else ``attrs["pixel_size"]``.
    reference : {"running", "first"}
        What every frame is registered against.
    upsample_factor : int
        Registration precision: 1 / ``upsample_factor`` pixel.
    sigma : float
        Gaussian smoothing before registration [pixels]; 0 for none.
    max_jump : float or None
        Largest change of drift from the last aligned frame [A]; ``None`` for no limit.
    min_significance : float
        Smallest accepted peak height in units of the spread of the normalised
        cross-correlation expected if the frame were isotropic noise with its
        own radially averaged power spectrum. Pure noise reaches about 4-6 at
        the highest of the ~10^4 shifts searched in a 128 x 128 frame; a noisy
        lattice image about 10-13 against the mean of the other frames.
    normalization : {None, "phase"}
        Passed to ``phase_cross_correlation``.
    refine : bool
        Run the second pass against the mean of the other aligned frames.
    window : str or tuple
        Window applied before the Fourier transforms (:func:`skimage.filters.window`).
    pixel_size : float, optional
        Pixel size [A] for frames without coordinates.
    on_failure : {"flag", "warn", "raise"}
        What to do when frames cannot be aligned: only flag them in ``aligned``,
        also warn, or raise :class:`AlignmentError`.

    Returns
    -------
    xarray.Dataset
        Dims ``frame`` and ``component`` (``"y"``, ``"x"``):

        - ``drift`` (frame, component) [A]: displacement of the specimen in
          each frame relative to the first,
        - ``drift_px`` (frame, component) [pixels]: the same in pixels,
        - ``error`` (frame): registration error of ``phase_cross_correlation``
          (``sqrt(1 - rho^2)``, ``rho`` the normalised correlation at the peak),
        - ``significance`` (frame): the peak height tested against ``min_significance``,
        - ``jump`` (frame) [A]: change of drift from the last aligned frame,
        - ``aligned`` (frame) bool.

        Attributes: the options, ``pixel_size`` [A] and ``n_aligned``.

    Raises
    ------
    ValueError
        For frames that are not ``(frame, y, x)``, smaller than 8 x 8, not
        finite or without a pixel size, and invalid options.
    AlignmentError
        With ``on_failure="raise"`` when a frame could not be aligned.
    """
    from skimage.filters import window as make_window

    if reference not in ("running", "first"):
        raise ValueError(f"reference must be 'running' or 'first', got {reference!r}")
    if on_failure not in _FAILURE_MODES:
        raise ValueError(f"on_failure must be one of {_FAILURE_MODES}, got {on_failure!r}")
    check_int(upsample_factor, "upsample_factor")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma!r}")
    if max_jump is not None and not max_jump > 0:
        raise ValueError(f"max_jump must be > 0 A or None, got {max_jump!r}")
    movie = _as_frames(frames, pixel_size)
    px = float(movie.attrs["pixel_size"])
    n_frames, shape = movie.sizes["frame"], movie.shape[1:]
    taper = make_window(window, shape)
    annuli = _annuli(shape)

    prepared = lambda f: _prepare(movie.values[f], sigma)
    register = lambda ref, moving: _register(ref, moving, taper, annuli, upsample_factor, normalization)
    accept = lambda sig, jump: sig >= min_significance and (max_jump is None or jump <= max_jump)

    # Pass 1: every frame against the first or the running mean of the frames aligned so far.
    drift_px = np.zeros((n_frames, 2))
    error, significance, jump = np.zeros(n_frames), np.full(n_frames, np.nan), np.zeros(n_frames)
    aligned = np.zeros(n_frames, dtype=bool)
    aligned[0] = True
    first = prepared(0)
    total, n_total = first.copy(), 1
    for f in range(1, n_frames):
        moving = prepared(f)
        drift_px[f], error[f], significance[f] = register(total / n_total if reference == "running" else first, moving)
        jump[f] = float(np.hypot(*(drift_px[f] - drift_px[np.flatnonzero(aligned[:f])[-1]]))) * px
        aligned[f] = accept(significance[f], jump[f])
        if aligned[f]:
            total += _unshift(moving, drift_px[f])
            n_total += 1

    # Pass 2: every frame (the first included) against the mean of the other aligned frames,
    # then the drift made relative to the first frame.
    if refine and n_total >= 3:
        first_pass = drift_px.copy()
        for f in range(n_frames):
            moving = prepared(f)
            own = _unshift(moving, first_pass[f]) if aligned[f] else 0.0
            drift_px[f], error[f], significance[f] = register((total - own) / (n_total - aligned[f]), moving)
        drift_px -= drift_px[0]
        error[0], significance[0] = 0.0, np.nan
        aligned[:] = False
        aligned[0] = True
        for f in range(1, n_frames):
            jump[f] = float(np.hypot(*(drift_px[f] - drift_px[np.flatnonzero(aligned[:f])[-1]]))) * px
            aligned[f] = accept(significance[f], jump[f])

    _report_failures(aligned, movie["frame"].values, on_failure)
    component = ("component", ["y", "x"])
    return xr.Dataset(
        {
            "drift": (("frame", "component"), drift_px * px, {"units": "Å", "long_name": "drift of the specimen"}),
            "drift_px": (("frame", "component"), drift_px, {"units": "pixel", "long_name": "drift of the specimen"}),
            "error": ("frame", error, {"units": "1", "long_name": "registration error (phase_cross_correlation)"}),
            "significance": ("frame", significance, {"units": "1", "long_name": "correlation peak significance"}),
            "jump": ("frame", jump, {"units": "Å", "long_name": "change of drift from the last aligned frame"}),
            "aligned": ("frame", aligned, {"long_name": "frame aligned"}),
        },
        coords={"frame": ("frame", movie["frame"].values), "component": component},
        attrs={
            "reference": reference,
            "upsample_factor": int(upsample_factor),
            "sigma_px": float(sigma),
            "max_jump": float("nan") if max_jump is None else float(max_jump),
            "min_significance": float(min_significance),
            "normalization": str(normalization),
            "window": str(window),
            "refine": int(bool(refine)),
            "pixel_size": px,
            "n_aligned": int(aligned.sum()),
        },
    )


def shift_frames(data: xr.DataArray, alignment: xr.Dataset, *, order: int = 1, mode: str = "nearest") -> xr.DataArray:
    """Move every frame of ``data`` onto the first frame by removing its drift.

    Works for input images and for label-grid maps alike (the drift is in A;
    each array's own pixel spacing converts it). Frames that did not align get
    the drift interpolated in time from the aligned frames around them.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(frame, ..., y, x)`` with ``y``, ``x`` coordinates [A] (or ``attrs["pixel_size"]``).
    alignment : xarray.Dataset
        From :func:`align_frames`, for the same frames.
    order : int
        Spline order of :func:`scipy.ndimage.shift`; 1 (linear) keeps
        probabilities non-negative and summing to one.
    mode : str
        How :func:`scipy.ndimage.shift` fills the border.

    Returns
    -------
    xarray.DataArray
        Like ``data``, in the frame of reference of the first frame.
    """
    if not isinstance(data, xr.DataArray) or data.ndim < 3 or data.dims[0] != "frame" or data.dims[-2:] != ("y", "x"):
        raise ValueError(f"data must be a DataArray with dims (frame, ..., y, x), got {getattr(data, 'dims', data)}")
    alignment = _check_alignment(alignment, data.sizes["frame"])
    drift, _ = _usable_drift(alignment, data.sizes["frame"])
    spacing = np.array([_spacing(data, "y"), _spacing(data, "x")])
    values = np.asarray(data.values)
    out = np.empty(values.shape, dtype=np.result_type(values.dtype, np.float32))
    for f in range(values.shape[0]):
        shift = np.concatenate([np.zeros(values.ndim - 3), -drift[f] / spacing])
        out[f] = ndimage.shift(values[f], shift, order=order, mode=mode)
    return data.copy(data=out)


# ----------------------------------------------------------------------------- 2. column positions


def _probability(prediction) -> xr.DataArray:
    probability = prediction["probability"] if isinstance(prediction, xr.Dataset) else prediction
    if not isinstance(probability, xr.DataArray) or set(probability.dims) != {"frame", "depth_class", "y", "x"}:
        raise ValueError(
            "prediction must hold 'probability' with dims (frame, depth_class, y, x) "
            "(predict(..., return_probabilities=True))"
        )
    return probability.transpose("frame", "depth_class", "y", "x")


def mean_estimate(prediction, alignment: xr.Dataset | None = None, *, quantity: str = "expected_count") -> xr.DataArray:
    """Time average of the aligned per-frame depth estimates.

    Parameters
    ----------
    prediction : xarray.Dataset or xarray.DataArray
        From :func:`segdepth.learn.inference.predict` with ``return_probabilities=True``
        (or its ``probability``, dims ``(frame, depth_class, y, x)``).
    alignment : xarray.Dataset, optional
        From :func:`align_frames` for the same frames; without it the frames
        are averaged as they are. Only aligned frames are averaged.
    quantity : {"expected_count", "non_vacuum"}
        ``sum_k k p_k`` [atoms] or the probability of a column ``1 - p_0``
        (both linear in ``p``, so averaging them equals averaging the distributions).

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x)``, in the frame of reference of the first frame.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {_QUANTITIES}, got {quantity!r}")
    probability = _probability(prediction)
    alignment = _check_alignment(alignment, probability.sizes["frame"])
    if quantity == "expected_count":
        per_frame = (probability * probability["depth_class"]).sum("depth_class")
        attrs = {"units": "atoms", "long_name": "expected number of atoms (time average)"}
    else:
        per_frame = 1 - probability.isel(depth_class=0, drop=True)
        attrs = {"units": "1", "long_name": "probability of a column (time average)"}
    keep = np.ones(probability.sizes["frame"], dtype=bool)
    if alignment is not None:
        per_frame = shift_frames(per_frame, alignment)
        keep = np.asarray(alignment["aligned"].values, dtype=bool)
    mean = per_frame.isel(frame=np.flatnonzero(keep)).mean("frame")
    return mean.rename(quantity).assign_attrs(attrs, n_frames=int(keep.sum()))


def _refine(values: np.ndarray, peaks: np.ndarray, radius_px: float) -> np.ndarray:
    """Centre of mass of ``values`` minus its minimum in a disc of ``radius_px`` around every peak [pixels]."""
    r = int(math.floor(radius_px))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    inside = oy**2 + ox**2 <= radius_px**2
    oy, ox = oy[inside], ox[inside]
    labels = np.zeros(values.shape, dtype=np.int32)
    yy = np.clip(peaks[:, :1] + oy, 0, values.shape[0] - 1)
    xx = np.clip(peaks[:, 1:] + ox, 0, values.shape[1] - 1)
    labels[yy, xx] = np.arange(1, len(peaks) + 1)[:, None]
    index = np.arange(1, len(peaks) + 1)
    floor = np.asarray(ndimage.minimum(values, labels, index))
    weights = np.clip(values - np.concatenate([[0.0], floor])[labels], 0, None) * (labels > 0)
    centres = np.array(ndimage.center_of_mass(weights, labels, index), dtype=float).reshape(-1, 2)
    bad = ~np.all(np.isfinite(centres), axis=1)
    centres[bad] = peaks[bad]
    return centres


def _spaced(points: np.ndarray, heights: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of the points kept when, highest first, each drops the lower ones within ``min_distance``."""
    tree = cKDTree(points)
    removed = np.zeros(len(points), dtype=bool)
    keep = []
    for k in np.argsort(-heights, kind="stable"):
        if removed[k]:
            continue
        keep.append(k)
        removed[tree.query_ball_point(points[k], r=min_distance)] = True
    return np.sort(np.asarray(keep, dtype=np.intp))


@lru_cache(maxsize=4)
def _site_table(a: float = LATTICE_CONSTANT) -> np.ndarray:
    """Occupant of the fine-grid sites of one [110] cell: ``table[i % 2, j % 4]`` is 0 Ce, 1 O or -1 empty.

    ``i`` counts a/(2 sqrt 2) steps along [1-10] and ``j`` a/4 steps along [001],
    derived from the projected fluorite cell (:func:`segdepth.physics.structures.projected_columns`).
    """
    xy, _, numbers = projected_columns(a)
    table = np.full((2, 4), -1, dtype=np.int8)
    step = np.array([a / math.sqrt(8), a / 4])
    ij = np.rint(xy / step).astype(int)
    if not np.allclose(ij * step, xy, atol=1e-3):
        raise RuntimeError("CeO2 [110] columns are not on the expected fine grid")  # pragma: no cover
    table[ij[:, 0] % 2, ij[:, 1] % 4] = np.where(numbers == Z_CE, 0, 1)
    return table


def _lattice_angle(points: np.ndarray) -> float:
    """Angle of [1-10] from the +x axis [rad], from neighbour vectors 1.353 A ([001]) and 1.913 A ([1-10]) long."""
    pairs = np.array(sorted(cKDTree(points).query_pairs(r=_GRID[0] + 0.3)), dtype=np.intp).reshape(-1, 2)
    vectors = points[pairs[:, 1]] - points[pairs[:, 0]]  # (dy, dx)
    length = np.hypot(vectors[:, 0], vectors[:, 1])
    angle = np.arctan2(vectors[:, 0], vectors[:, 1])
    along_x = np.abs(length - _GRID[0]) < 0.25
    along_y = np.abs(length - _GRID[1]) < 0.25
    theta = np.concatenate([angle[along_x], angle[along_y] - np.pi / 2])
    if theta.size == 0:
        return float("nan")
    # The mode of the doubled angles (a von Mises kernel ~3 degrees wide): spurious pairs spread evenly
    # and do not move it; then the circular mean of the vectors within 6 degrees of the mode.
    grid = np.linspace(0, np.pi, 360, endpoint=False)
    density = np.exp(_ANGLE_KAPPA * (np.cos(2 * (theta[None] - grid[:, None])) - 1)).sum(axis=1)
    mode = grid[np.argmax(density)]
    near = np.abs(np.angle(np.exp(2j * (theta - mode)))) <= 2 * math.radians(6)
    return float(mode + 0.5 * np.angle(np.exp(2j * (theta[near] - mode)).sum()))


def _index(points: np.ndarray, origin: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest fine-grid indices (n, 2) of ``points`` and their distance to that site [A]."""
    ij = np.rint(np.linalg.solve(basis, (points - origin).T).T).astype(np.int64)
    residual = np.hypot(*(points - origin - ij @ basis.T).T)
    return ij, residual


def _fit_lattice(points: np.ndarray, angle: float | None, tolerance: float) -> dict | None:
    """Fit the fine CeO2 [110] grid (1.913 x 1.353 A) to ``points`` (n, 2) ``(y, x)`` [A].

    The grid's orientation comes from ``angle`` or the neighbour vectors; its
    offset from the circular mean of the positions modulo the grid; then the
    origin and both grid vectors are refined by least squares over the points
    within ``tolerance`` of a site (three rounds of indexing and fitting).
    """
    theta = _lattice_angle(points) if angle is None else math.radians(angle)
    if not math.isfinite(theta):
        return None
    ex, ey = np.array([math.sin(theta), math.cos(theta)]), np.array([math.cos(theta), -math.sin(theta)])
    basis = np.stack([ex * _GRID[0], ey * _GRID[1]], axis=1)  # columns: steps along [1-10], [001] in (y, x)
    centre = points.mean(axis=0)
    uv = np.linalg.solve(basis, (points - centre).T).T  # fractional fine-grid coordinates
    phase = np.angle(np.exp(2j * np.pi * uv).sum(axis=0)) / (2 * np.pi)
    origin = centre + basis @ phase
    for _ in range(3):
        ij, residual = _index(points, origin, basis)
        good = residual <= tolerance
        if good.sum() < 6 or np.unique(ij[good, 0]).size < 2 or np.unique(ij[good, 1]).size < 2:
            break
        design = np.column_stack([np.ones(good.sum()), ij[good]])
        solution, *_ = np.linalg.lstsq(design, points[good], rcond=None)
        new_origin, new_basis = solution[0], solution[1:].T
        lengths = np.linalg.norm(new_basis, axis=0) / np.array(_GRID)
        if np.any(np.abs(lengths - 1) > 0.1):
            break  # the least-squares grid drifted off CeO2: keep the nominal one
        origin, basis = new_origin, new_basis
    ij, residual = _index(points, origin, basis)
    return {"origin": origin, "basis": basis, "ij": ij, "residual": residual}


def _assign_sites(ij: np.ndarray, on_grid: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Occupant (0 Ce, 1 O, -1 empty) of every point's site under the best of the 4 motif placements.

    The fine grid has 8 placements of the 2 x 4 site table; shifting by (1, 2)
    maps the motif onto itself, so 4 are distinct. The one with the fewest
    on-grid points on empty sites wins (ties: the first, i.e. smaller ``j`` offset).
    """
    table = _site_table()
    best, best_bad, best_offset = None, None, 0
    for dj in range(4):
        occupant = table[ij[:, 0] % 2, (ij[:, 1] + dj) % 4]
        bad = int(np.sum(on_grid & (occupant < 0)))
        if best_bad is None or bad < best_bad:
            best, best_bad, best_offset = occupant, bad, dj
    return best, best_bad, best_offset


def find_columns(
    estimate: xr.DataArray,
    *,
    min_distance: float = 1.1,
    threshold: float = 0.5,
    refine_radius: float = 0.4,
    mask=None,
    elements: bool = True,
    angle: float | None = None,
    tolerance: float = 0.45,
    min_lattice_fraction: float = 0.5,
    max_empty_fraction: float = 0.1,
) -> xr.Dataset:
    """Atomic columns in a (time-averaged) depth estimate, named Ce or O from the CeO2 [110] lattice.

    1. Local maxima of ``estimate`` above ``threshold``
       (:func:`skimage.feature.peak_local_max` in a window of ``min_distance / 2``,
       away from the border by that or ``refine_radius``).
    2. Sub-pixel positions: the centre of mass of the estimate minus its
       minimum within ``refine_radius`` of each peak; then, highest first,
       every column removes the lower ones closer than ``min_distance`` (the
       closest CeO2 [110] columns are 1.353 A apart).
    3. Elements (module docstring): the fine 1.913 x 1.353 A grid of the
       CeO2 [110] projection is fitted to the positions (orientation from
       neighbour vectors unless ``angle`` is given, offset, then origin and
       grid vectors by least squares) and Ce, O and empty sites are placed so
       that the fewest columns fall on empty sites. Columns farther than
       ``tolerance`` from a site, or on an empty site, are ``"unknown"``.
    4. The fit is believed only when at least ``min_lattice_fraction`` of the
       columns lie on sites and at most ``max_empty_fraction`` of those on
       empty ones; otherwise every column is ``"unknown"``. Points without
       CeO2 [110] order land on the sites' 0.45 A discs 25-35 % of the
       time (the disc area over the site area is 0.25; the fit gains some)
       and about a fifth of those on empty sites (2 of the 8 fine-grid sites
       of a cell are empty), so on a real image restrict the search to one
       CeO2 crystal with ``mask``.

    Parameters
    ----------
    estimate : xarray.DataArray
        Map with dims ``(y, x)`` and coordinates [A], e.g. from :func:`mean_estimate`
        (expected count [atoms] or probability of a column).
    min_distance : float
        Smallest distance between two columns [A].
    threshold : float
        Smallest peak value (in the units of ``estimate``).
    refine_radius : float
        Radius of the centre-of-mass window [A]; at most ``min_distance / 2``.
    mask : array_like of bool, optional
        Shape ``(y, x)``: look for columns only where True (e.g. the CeO2 region).
    elements : bool
        Name the elements (otherwise all are ``"unknown"``).
    angle : float, optional
        Direction of [1-10] in the image, counter-clockwise from +x towards +y
        [degrees]; estimated when not given.
    tolerance : float
        Largest distance of a Ce or O column from its lattice site [A].
    min_lattice_fraction : float
        Smallest fraction of the columns on lattice sites for the fit to be believed.
    max_empty_fraction : float
        Largest fraction of the on-lattice columns on empty sites for the fit to be believed.

    Returns
    -------
    xarray.Dataset
        Dim ``column``: ``y``, ``x`` [A] (sub-pixel), ``peak_value`` (estimate
        at the peak pixel), ``element`` (``"Ce"``, ``"O"`` or ``"unknown"``),
        ``lattice_residual`` [A] (distance to the fitted site, NaN without a
        fit). Attributes: the options and, with a lattice fit, ``lattice_found``
        (1 when believed, else 0), ``lattice_angle`` [deg] in [-90, 90),
        ``lattice_spacing`` [A] (fitted fine-grid steps along [1-10] and
        [001]), ``lattice_fraction``, ``empty_site_fraction``, ``n_on_lattice``
        and ``n_on_empty_sites``.

    Raises
    ------
    ValueError
        For an estimate that is not a finite 2-D ``(y, x)`` map with
        coordinates, a mask of another shape or invalid distances.
    """
    from skimage.feature import peak_local_max

    if not isinstance(estimate, xr.DataArray) or estimate.dims != ("y", "x"):
        raise ValueError(f"estimate must be a DataArray with dims (y, x), got {getattr(estimate, 'dims', estimate)}")
    values = np.asarray(estimate.values, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError("estimate must be finite (no NaN or infinite values)")
    if not (min_distance > 0 and 0 < refine_radius <= min_distance / 2 and tolerance > 0):
        raise ValueError(
            f"need min_distance > 0, 0 < refine_radius <= min_distance / 2 and tolerance > 0 [A], got "
            f"{min_distance!r}, {refine_radius!r}, {tolerance!r}"
        )
    spacing = _spacing(estimate, "y"), _spacing(estimate, "x")
    if not math.isclose(*spacing, rel_tol=1e-3):
        raise ValueError(f"estimate must have square pixels, got {spacing[0]:g} x {spacing[1]:g} A")
    px = spacing[1]
    labels = None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask must have the shape of estimate {values.shape}, got {mask.shape}")
        labels = mask.astype(np.int32)
    # Pixel peaks in a window of half min_distance: a column 1.353 A from a stronger one can have its peak
    # pixel only 5 pixels (1.06 A at 0.212 A) from a pixel on the stronger one's flank, so min_distance
    # itself is enforced on the refined positions.
    window_px = max(1, int(0.5 * min_distance / px))
    border = max(window_px, math.ceil(refine_radius / px))
    peaks = peak_local_max(values, min_distance=window_px, threshold_abs=threshold, labels=labels,
                           exclude_border=border, p_norm=2)
    centres = _refine(values, peaks, refine_radius / px)
    keep = _spaced(centres * px, values[peaks[:, 0], peaks[:, 1]], min_distance)
    peaks, centres = peaks[keep], centres[keep]
    order = np.lexsort((centres[:, 1], centres[:, 0]))  # row by row
    peaks, centres = peaks[order], centres[order]
    points = np.column_stack([_origin(estimate, "y", px) + centres[:, 0] * px,
                              _origin(estimate, "x", px) + centres[:, 1] * px])
    element = np.full(len(points), ELEMENTS[2], dtype="<U7")
    residual = np.full(len(points), np.nan)
    attrs = {"min_distance": min_distance, "threshold": threshold, "refine_radius": refine_radius,
             "tolerance": tolerance, "pixel_size": px, "lattice_found": 0}
    fit = _fit_lattice(points, angle, tolerance) if elements and len(points) >= 3 else None
    if fit is not None:
        residual = fit["residual"]
        on_grid = residual <= tolerance
        occupant, n_empty, _ = _assign_sites(fit["ij"], on_grid)
        n_on = int(on_grid.sum())
        fraction, empty_fraction = n_on / len(points), n_empty / max(n_on, 1)
        found = fraction >= min_lattice_fraction and empty_fraction <= max_empty_fraction
        if found:
            element[on_grid & (occupant == 0)] = ELEMENTS[0]
            element[on_grid & (occupant == 1)] = ELEMENTS[1]
        basis = fit["basis"]
        attrs.update(
            lattice_found=int(found),
            lattice_angle=(math.degrees(math.atan2(basis[0, 0], basis[1, 0])) + 90) % 180 - 90,
            lattice_spacing=np.linalg.norm(basis, axis=0),
            lattice_fraction=fraction,
            empty_site_fraction=empty_fraction,
            n_on_lattice=n_on,
            n_on_empty_sites=n_empty,
        )
    column = np.arange(len(points))
    return xr.Dataset(
        {
            "y": ("column", points[:, 0], {"units": "Å", "long_name": "column position y"}),
            "x": ("column", points[:, 1], {"units": "Å", "long_name": "column position x"}),
            "peak_value": ("column", values[peaks[:, 0], peaks[:, 1]], dict(estimate.attrs, long_name="peak value")),
            "element": ("column", element, {"long_name": "element (from the CeO2 [110] lattice)"}),
            "lattice_residual": ("column", residual, {"units": "Å", "long_name": "distance to the lattice site"}),
        },
        coords={"column": ("column", column, {"long_name": "column index"})},
        attrs=attrs,
    )


# ----------------------------------------------------------------------------- 3. columns through the movie


def _disc_offsets(radius_px_y: float, radius_px_x: float) -> np.ndarray:
    """Offsets (n, 2) [pixels] of the grid points within an ellipse of the given radii (the centre included)."""
    ry, rx = int(math.floor(radius_px_y)), int(math.floor(radius_px_x))
    oy, ox = np.mgrid[-ry : ry + 1, -rx : rx + 1].astype(float)
    inside = (oy / max(radius_px_y, 1e-12)) ** 2 + (ox / max(radius_px_x, 1e-12)) ** 2 <= 1 + 1e-9
    return np.column_stack([oy[inside], ox[inside]])


def _moments(probability: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the count distributions along the last axis."""
    mean = probability @ classes
    var = np.clip(probability @ classes**2 - mean**2, 0, None)
    return mean, np.sqrt(var)


#: Level of the count sets per column (:func:`track_columns`; :func:`segdepth.learn.metrics.column_calibration`):
#: the fraction of columns whose true count a set should hold.
COUNT_SET_LEVEL = 0.9
_SET_TOLERANCE = 1e-6  # reaching a set's mass up to float32 rounding completes it


def _mass_before(proba: np.ndarray) -> np.ndarray:
    """Per class: the probability of the classes ranked ahead of it (by decreasing probability, ties: lower first)."""
    order = np.argsort(-proba, axis=-1, kind="stable")
    ranked = np.take_along_axis(proba, order, axis=-1)
    before = np.empty_like(ranked)
    np.put_along_axis(before, order, np.cumsum(ranked, axis=-1) - ranked, axis=-1)
    return before


def prediction_sets(proba, level: float = COUNT_SET_LEVEL) -> np.ndarray:
    """The smallest set of classes whose probabilities add up to at least ``level``, per row.

    Classes join in order of decreasing probability (ties: the lower class first) until the set holds
    ``level`` of the probability. A calibrated model's 90 % sets contain the truth in 90 % of the cases;
    their size says how uncertain it is. For a model that is not, pass the probability mass calibrated for
    it (:func:`calibrated_mass`; :func:`count_set_mass` reads it from a prediction) as ``level``.

    Parameters
    ----------
    proba : array_like of float, shape (..., n_classes)
        Probabilities (rows summing to 1).
    level : float
        Probability mass each set must hold, in (0, 1].

    Returns
    -------
    numpy.ndarray of bool, shape (..., n_classes)
        Membership of each class in its row's set.
    """
    proba = np.asarray(proba, dtype=float)
    if not 0 < float(level) <= 1:
        raise ValueError(f"level must lie in (0, 1], got {level!r}")
    return _mass_before(proba) < float(level) - _SET_TOLERANCE


def set_scores(proba, true) -> np.ndarray:
    """Probability ranked ahead of each row's true class: the row's truth is in ``prediction_sets(proba, m)``
    exactly when its score is below ``m`` (the conformity score of split conformal prediction).

    Parameters
    ----------
    proba : array_like of float, shape (n, n_classes)
    true : array_like of int, shape (n,)
        True class of each row.
    """
    proba = np.asarray(proba, dtype=float)
    true = np.asarray(true)
    if proba.ndim != 2 or true.shape != proba.shape[:1]:
        raise ValueError(f"proba must be (n, n_classes) and true (n,), got {proba.shape} and {true.shape}")
    if true.size and (true.min() < 0 or true.max() >= proba.shape[1]):
        raise ValueError(f"true classes must lie in 0..{proba.shape[1] - 1}")
    return _mass_before(proba)[np.arange(len(true)), true.astype(np.int64)]


def calibrated_mass(scores, level: float = COUNT_SET_LEVEL) -> float:
    """The probability mass a set needs to hold the truth in at least ``level`` of new cases like these.

    Split conformal prediction (Angelopoulos and Bates, "A gentle introduction to conformal prediction and
    distribution-free uncertainty quantification", arXiv:2107.07511, 2021; sets of Romano, Sesia and Candes,
    NeurIPS 2020, without randomisation): the ``ceil((n + 1) level)``-th smallest of the calibration rows'
    :func:`set_scores`, a hair above it; 1 when that exceeds ``n``. If new cases are exchangeable with the
    calibration rows, ``prediction_sets(p, calibrated_mass(scores))`` holds the truth in at least ``level`` of
    them; under a shift of the data it does not promise this (take the largest mass over the kinds of data one
    fears).

    Parameters
    ----------
    scores : array_like of float, shape (n,)
        :func:`set_scores` of calibration rows (columns with a known count), n >= 1.
    level : float
        In (0, 1).
    """
    scores = np.sort(np.asarray(scores, dtype=float).ravel())
    if not 0 < float(level) < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be a non-empty array of finite numbers (set_scores)")
    k = math.ceil((scores.size + 1) * float(level))
    if k > scores.size:
        return 1.0
    return float(min(1.0, scores[k - 1] + 2 * _SET_TOLERANCE))


def count_set_mass(prediction) -> float:
    """The probability mass of the count sets of a prediction: its ``count_set_mass`` attribute (written by
    :func:`segdepth.learn.validity.assess`), else the one-pass mass of the model card in its attributes
    (``count_sets``, calibrated by ``benchmarks/count_set_calibration.py``), else :data:`COUNT_SET_LEVEL`."""
    import json

    attrs = getattr(prediction, "attrs", {}) or {}
    if "count_set_mass" in attrs:
        return float(attrs["count_set_mass"])
    try:
        card = json.loads(attrs.get("model_card", "{}"))
    except (TypeError, ValueError):
        card = {}
    return float(((card.get("count_sets") or {}).get("mass") or {}).get("one_pass", COUNT_SET_LEVEL))


def count_range(proba, level: float = COUNT_SET_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest class of each row's :func:`prediction_sets` (int64, shape ``proba.shape[:-1]``)."""
    member = prediction_sets(proba, level)
    n_classes = member.shape[-1]
    return member.argmax(axis=-1), n_classes - 1 - member[..., ::-1].argmax(axis=-1)


def track_columns(prediction, alignment: xr.Dataset | None, columns: xr.Dataset, *, radius: float = 0.4) -> xr.Dataset:
    """Per-frame count distribution of every column.

    The column's position in frame ``f`` is its reference position plus the
    drift of ``f`` (interpolated in time for frames that did not align). The
    class distribution there is the mean of the per-pixel distributions,
    bilinearly interpolated, over the label-grid points within ``radius`` of
    the position (``radius`` below one pixel: the interpolated centre alone).

    Parameters
    ----------
    prediction : xarray.Dataset or xarray.DataArray
        From :func:`segdepth.learn.inference.predict` with ``return_probabilities=True``.
    alignment : xarray.Dataset or None
        From :func:`align_frames` for the same frames; ``None`` for no drift.
    columns : xarray.Dataset
        Reference positions ``y``, ``x`` [A] along dim ``column`` (e.g. from
        :func:`find_columns`), optionally ``element``.
    radius : float
        Radius of the disc averaged around each column [A].

    Returns
    -------
    xarray.Dataset
        Dims ``(frame, column, depth_class)``:

        - ``y``, ``x`` (frame, column) [A]: position in each frame,
        - ``probability`` (frame, column, depth_class): count distribution,
        - ``expected_count`` (frame, column) [atoms]: ``E = sum_k k p_k``,
        - ``count_std`` (frame, column) [atoms]: ``sqrt(sum_k (k - E)^2 p_k)``,
        - ``count`` (frame, column) int16 [atoms]: ``argmax_k p_k``,
        - ``confidence`` (frame, column): ``max_k p_k``,
        - ``count_low``, ``count_high`` (frame, column) int16 [atoms]: the smallest and largest count of
          the column's 90 % count set (:func:`count_range` with the probability mass of
          :func:`count_set_mass`, recorded as ``set_mass``; -1 outside). Sets of mass 0.9 held the true count
          in 0.94 of the columns of the static shift tests but only 0.80-0.84 for vibrating atoms and
          abTEM's quasi-coherent focal spread (the model is overconfident there); with the mass calibrated for
          the shipped default (``count_sets`` in its card) 0.935-0.985 of every kind (README, "Count sets
          that keep their promise"),
        - ``inside`` (frame, column) bool: the disc lies within the map (else
          the values are NaN and ``count`` is -1),
        - ``aligned`` (frame) bool: the frame's drift was measured (not interpolated).

        Coordinates ``frame``, ``column``, ``depth_class``, ``element``,
        ``reference_y``, ``reference_x`` [A].
    """
    probability = _probability(prediction)
    n_frames = probability.sizes["frame"]
    alignment = _check_alignment(alignment, n_frames)
    if not isinstance(columns, xr.Dataset) or "y" not in columns or "x" not in columns or "column" not in columns.dims:
        raise ValueError("columns must be a Dataset with y and x [A] along dim 'column' (find_columns)")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0 A, got {radius!r}")
    drift, aligned = _usable_drift(alignment, n_frames)
    spacing = np.array([_spacing(probability, "y"), _spacing(probability, "x")])
    origin = np.array([_origin(probability, "y", spacing[0]), _origin(probability, "x", spacing[1])])
    reference = np.column_stack([columns["y"].values, columns["x"].values]).astype(float)
    n_columns, n_classes = len(reference), probability.sizes["depth_class"]
    offsets = _disc_offsets(*(radius / spacing))
    limits = np.array(probability.shape[2:]) - 1

    positions = reference[None] + drift[:, None, :]  # (frame, column, 2) [A]
    index = (positions - origin) / spacing  # fractional pixel index
    points = index[:, :, None, :] + offsets[None, None]  # (frame, column, offset, 2)
    inside = np.all((points >= -1e-9) & (points <= limits + 1e-9), axis=(2, 3))
    values = np.asarray(probability.values, dtype=np.float64)
    result = np.full((n_frames, n_columns, n_classes), np.nan)
    classes = np.arange(n_classes, dtype=float)
    for f in range(n_frames):
        pts = points[f].reshape(-1, 2)
        coords = np.stack([np.repeat(classes, len(pts)), np.tile(pts[:, 0], n_classes), np.tile(pts[:, 1], n_classes)])
        sampled = ndimage.map_coordinates(values[f], coords, order=1, mode="nearest")
        mean = sampled.reshape(n_classes, n_columns, len(offsets)).mean(axis=2).T
        mean /= mean.sum(axis=1, keepdims=True)
        result[f] = np.where(inside[f][:, None], mean, np.nan)

    depth_class = probability["depth_class"].values.astype(float)
    expected, std = _moments(np.nan_to_num(result), depth_class)
    expected[~inside], std[~inside] = np.nan, np.nan
    count = np.where(inside, np.nan_to_num(result).argmax(axis=2), -1).astype(np.int16)
    confidence = np.where(inside, np.nan_to_num(result).max(axis=2), np.nan)
    mass = count_set_mass(prediction)
    low, high = (np.where(inside, v, -1).astype(np.int16) for v in count_range(np.nan_to_num(result), mass))
    element = columns["element"].values if "element" in columns else np.full(n_columns, ELEMENTS[2], dtype="<U7")
    fc = ("frame", "column")
    return xr.Dataset(
        {
            "y": (fc, positions[..., 0], {"units": "Å", "long_name": "column position y"}),
            "x": (fc, positions[..., 1], {"units": "Å", "long_name": "column position x"}),
            "probability": ((*fc, "depth_class"), result, {"units": "1", "long_name": "count distribution"}),
            "expected_count": (fc, expected, {"units": "atoms", "long_name": "expected number of atoms"}),
            "count_std": (fc, std, {"units": "atoms", "long_name": "standard deviation of the number of atoms"}),
            "count": (fc, count, {"units": "atoms", "long_name": "most probable number of atoms (-1: outside)"}),
            "confidence": (fc, confidence, {"units": "1", "long_name": "probability of the most probable count"}),
            "count_low": (fc, low, {"units": "atoms", "long_name": f"smallest count of the {COUNT_SET_LEVEL:.0%} "
                                    "count set (-1: outside)", "set_mass": mass}),
            "count_high": (fc, high, {"units": "atoms", "long_name": f"largest count of the {COUNT_SET_LEVEL:.0%} "
                                      "count set (-1: outside)", "set_mass": mass}),
            "inside": (fc, inside, {"long_name": "column disc inside the map"}),
            "aligned": ("frame", aligned, {"long_name": "frame aligned"}),
        },
        coords={
            "frame": ("frame", probability["frame"].values),
            "column": ("column", columns["column"].values, {"long_name": "column index"}),
            "depth_class": ("depth_class", probability["depth_class"].values, {"long_name": "number of atoms"}),
            "element": ("column", element, {"long_name": "element"}),
            "reference_y": ("column", reference[:, 0], {"units": "Å", "long_name": "position y in the first frame"}),
            "reference_x": ("column", reference[:, 1], {"units": "Å", "long_name": "position x in the first frame"}),
        },
        attrs={"radius": float(radius), "n_disc_points": len(offsets)},
    )


# ----------------------------------------------------------------------------- 4. hidden Markov smoothing


def transition_matrix(n_classes: int = N_CLASSES, *, p_change: float = 0.05, jump_ratio: float = 0.01) -> np.ndarray:
    """Frame-to-frame transition probabilities of a column's count.

    ``T[i, j] = P(count_{t+1} = j | count_t = i) = p_change / 2 * jump_ratio**(|i - j| - 1)``
    for ``j != i`` and the rest on the diagonal: away from the ends a count
    changes by +-1 with probability ``p_change`` per frame, by +-2 with
    ``p_change * jump_ratio`` and so on (at 0 and ``n_classes - 1`` only one
    direction exists).

    Raises
    ------
    ValueError
        Unless ``0 < p_change < 1``, ``0 <= jump_ratio < 1`` and every row's
        changes sum to at most 1.
    """
    if not (isinstance(p_change, int | float | np.number) and 0 < p_change < 1):
        raise ValueError(f"p_change must be in (0, 1), got {p_change!r}")
    if not (isinstance(jump_ratio, int | float | np.number) and 0 <= jump_ratio < 1):
        raise ValueError(f"jump_ratio must be in [0, 1), got {jump_ratio!r}")
    check_int(n_classes, "n_classes", minimum=2)
    step = np.abs(np.subtract.outer(np.arange(n_classes), np.arange(n_classes)))
    with np.errstate(divide="ignore"):
        matrix = np.where(step > 0, p_change / 2 * np.float64(jump_ratio) ** (step - 1.0), 0.0)
    stay = 1 - matrix.sum(axis=1)
    if np.any(stay < 0):
        raise ValueError(f"p_change / (1 - jump_ratio) must be <= 1, got p_change={p_change}, jump_ratio={jump_ratio}")
    matrix[np.diag_indices(n_classes)] = stay
    return matrix


def _log_emission(p: np.ndarray, prior: np.ndarray | None, outlier: float) -> np.ndarray:
    """Log-likelihoods (F, M, K) from per-frame probabilities; frames with NaN are uninformative (0)."""
    missing = ~np.all(np.isfinite(p), axis=-1, keepdims=True)
    p = np.where(missing, 1.0, np.clip(p, 0, None))
    if prior is not None:
        p = p / prior
    p = p / p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.where(missing, 0.0, np.log((1 - outlier) * p + outlier / p.shape[-1]))


def _forward_backward(log_e: np.ndarray, log_t: np.ndarray, log_init: np.ndarray):
    """Filtered and smoothed log-posteriors (F, M, K) and log-likelihood (M,) of a chain, in log space."""
    n_frames = log_e.shape[0]
    log_alpha = np.empty_like(log_e)
    log_like = np.zeros(log_e.shape[1])
    a = log_init + log_e[0]
    for t in range(n_frames):
        if t:
            a = logsumexp(log_alpha[t - 1][:, :, None] + log_t[None], axis=1) + log_e[t]
        norm = logsumexp(a, axis=1)
        log_alpha[t] = a - norm[:, None]
        log_like += norm
    log_beta = np.zeros_like(log_e)
    for t in range(n_frames - 2, -1, -1):
        b = logsumexp(log_t[None] + (log_e[t + 1] + log_beta[t + 1])[:, None, :], axis=2)
        log_beta[t] = b - logsumexp(b, axis=1)[:, None]
    log_post = log_alpha + log_beta
    log_post -= logsumexp(log_post, axis=2)[..., None]
    return log_alpha, log_post, log_like


def _viterbi(log_e: np.ndarray, log_t: np.ndarray, log_init: np.ndarray) -> np.ndarray:
    """Most likely state sequence (F, M) of each chain."""
    n_frames, n_chains, _ = log_e.shape
    delta = log_init + log_e[0]
    back = np.empty(log_e.shape, dtype=np.int16)
    for t in range(1, n_frames):
        scores = delta[:, :, None] + log_t[None]  # (M, from, to)
        back[t] = scores.argmax(axis=1)
        delta = scores.max(axis=1) + log_e[t]
    path = np.empty((n_frames, n_chains), dtype=np.int16)
    path[-1] = delta.argmax(axis=1)
    chains = np.arange(n_chains)
    for t in range(n_frames - 1, 0, -1):
        path[t - 1] = back[t][chains, path[t]]
    return path


def _as_probability(probability) -> xr.DataArray:
    """``probability`` as a DataArray with dims (frame, ..., depth_class)."""
    if not isinstance(probability, xr.DataArray):
        array = np.asarray(probability, dtype=float)
        if array.ndim < 2:
            raise ValueError(f"probability must have dims (frame, ..., depth_class), got shape {array.shape}")
        dims = ("frame", *(f"dim_{k}" for k in range(1, array.ndim - 1)), "depth_class")
        probability = xr.DataArray(array, dims=dims)
    if "frame" not in probability.dims or "depth_class" not in probability.dims:
        raise ValueError(f"probability must have dims 'frame' and 'depth_class', got {probability.dims}")
    others = [d for d in probability.dims if d not in ("frame", "depth_class")]
    return probability.transpose("frame", *others, "depth_class")


def smooth_counts(
    probability,
    *,
    p_change: float = 0.05,
    jump_ratio: float = 0.01,
    prior=None,
    initial=None,
    outlier: float = 0.01,
    set_mass: float = COUNT_SET_LEVEL,
) -> xr.Dataset:
    """Hidden-Markov smoothing of per-frame count probabilities over time.

    Following the hidden Markov counting of De wael et al. (2020), each
    column's count is a Markov chain over the classes ``0 .. K-1`` with the
    transitions of :func:`transition_matrix` (rare changes, by one atom at a
    time). The per-frame distributions are the emissions: treated as
    likelihoods after dividing by ``prior`` (the class frequencies the network
    was trained with, if known; the per-frame output is a posterior under that
    prior) and mixed with ``outlier`` of a uniform distribution so that one
    confidently wrong frame cannot force a count change. Frames with NaN are
    uninformative (a column outside the field). The forward-backward algorithm
    gives the posteriors, the Viterbi algorithm the most likely path; both in
    log space and vectorised over columns.

    Parameters
    ----------
    probability : xarray.DataArray or array_like
        Dims ``frame`` and ``depth_class`` (e.g. ``track_columns(...)["probability"]``,
        ``(frame, column, depth_class)``); an array has frames first and classes last.
    p_change : float
        Probability per frame that a count changes by one atom, in (0, 1).
    jump_ratio : float
        Each further atom of a jump is this much less likely, in [0, 1).
    prior : array_like, optional
        Class prior of the per-frame probabilities (K,); default uniform.
    initial : array_like, optional
        Distribution of the count in the first frame (K,); default uniform.
    outlier : float
        Weight of the uniform distribution mixed into each likelihood, in [0, 1).
    set_mass : float
        Probability mass of the posterior's count sets (``count_low``, ``count_high``; pass the per-frame
        sets' mass, :func:`count_set_mass`, to read both alike).

    Returns
    -------
    xarray.Dataset
        - ``posterior`` (like ``probability``): ``P(count_t | all frames)``,
        - ``filtered`` (like ``probability``): ``P(count_t | frames up to t)`` (causal),
        - ``path`` (without ``depth_class``) int16: Viterbi path [atoms],
        - ``count`` (without ``depth_class``) int16: ``argmax`` of ``posterior`` [atoms],
        - ``expected_count`` (without ``depth_class``) [atoms]: posterior mean,
        - ``count_low``, ``count_high`` (without ``depth_class``) int16 [atoms]: smallest and largest count of
          the posterior's count set of mass ``set_mass`` (:func:`count_range`); on the simulated movie at
          the real dose, with the default's calibrated mass, they held the true count in 0.973 of the
          columns and frames, 1.8 counts wide (per frame: 0.999, 4.9 wide; README),
        - ``log_likelihood`` (without ``frame`` and ``depth_class``): log P(all frames).

    References
    ----------
    De wael, A. et al., "Measuring dynamic structural changes of nanoparticles at
    the atomic scale using scanning transmission electron microscopy",
    Phys. Rev. Lett. 124, 106105 (2020).
    """
    probability = _as_probability(probability)
    n_frames, n_classes = probability.sizes["frame"], probability.sizes["depth_class"]
    log_t = np.log(transition_matrix(n_classes, p_change=p_change, jump_ratio=jump_ratio))
    if not (0 <= outlier < 1):
        raise ValueError(f"outlier must be in [0, 1), got {outlier!r}")
    vectors = {}
    for name, value in (("prior", prior), ("initial", initial)):
        if value is None:
            vectors[name] = None
            continue
        value = np.asarray(value, dtype=float)
        if value.shape != (n_classes,) or not np.all(np.isfinite(value)) or np.any(value < 0) or value.sum() <= 0:
            raise ValueError(f"{name} must be {n_classes} non-negative finite numbers with a positive sum")
        vectors[name] = value / value.sum()
    if vectors["prior"] is not None and np.any(vectors["prior"] <= 0):
        raise ValueError("prior must be > 0 for every class")
    shape = probability.shape
    p = np.asarray(probability.values, dtype=float).reshape(n_frames, -1, n_classes)
    finite = p[np.isfinite(p)]
    if finite.size and finite.min() < -1e-6:
        raise ValueError("probability must be non-negative")
    log_e = _log_emission(p, vectors["prior"], outlier)
    initial = vectors["initial"] if vectors["initial"] is not None else np.full(n_classes, 1 / n_classes)
    with np.errstate(divide="ignore"):
        log_init = np.log(initial)
    log_alpha, log_post, log_like = _forward_backward(log_e, log_t, log_init)
    path = _viterbi(log_e, log_t, log_init)
    posterior = np.exp(log_post)
    low, high = (v.astype(np.int16).reshape(shape[:-1]) for v in count_range(posterior, set_mass))
    classes = probability["depth_class"].values if "depth_class" in probability.coords else np.arange(n_classes)
    count_dims = probability.dims[:-1]
    coords = {k: v for k, v in probability.coords.items()}
    count_attrs = {"units": "atoms"}
    return xr.Dataset(
        {
            "posterior": (probability.dims, posterior.reshape(shape),
                          {"units": "1", "long_name": "smoothed posterior"}),
            "filtered": (probability.dims, np.exp(log_alpha).reshape(shape),
                         {"units": "1", "long_name": "filtered (causal) posterior"}),
            "path": (count_dims, path.reshape(shape[:-1]), dict(count_attrs, long_name="most likely count path")),
            "count": (count_dims, posterior.argmax(axis=2).astype(np.int16).reshape(shape[:-1]),
                      dict(count_attrs, long_name="most probable count (posterior)")),
            "expected_count": (count_dims, (posterior @ classes.astype(float)).reshape(shape[:-1]),
                               dict(count_attrs, long_name="posterior mean count")),
            "count_low": (count_dims, low, dict(count_attrs, long_name="smallest count of the posterior's count set",
                                                set_mass=float(set_mass))),
            "count_high": (count_dims, high, dict(count_attrs, long_name="largest count of the posterior's count set",
                                                  set_mass=float(set_mass))),
            "log_likelihood": (count_dims[1:], log_like.reshape(shape[1:-1]), {"long_name": "log likelihood"}),
        },
        coords=coords,
        attrs={"p_change": float(p_change), "jump_ratio": float(jump_ratio), "outlier": float(outlier),
               "prior": "uniform" if prior is None else "given"},
    )


def frames_to_detect_change(
    probability,
    change_frame: int,
    *,
    new_count: int,
    threshold: float = 0.5,
    mode: str = "smoothed",
    **options,
) -> int | None:
    """Frames from a known count change until the posterior puts more than ``threshold`` on the new count.

    Parameters
    ----------
    probability : xarray.DataArray or array_like
        Per-frame count distribution of one column, dims ``(frame, depth_class)``.
    change_frame : int
        Index of the first frame with the new count.
    new_count : int
        The count after the change [atoms].
    threshold : float
        Posterior probability that counts as detection, in (0, 1): 0.5 or 0.9.
    mode : {"smoothed", "filtered"}
        ``"smoothed"``: the forward-backward posterior (all frames; offline).
        The delay is measured to the start of the run of frames above
        ``threshold`` that holds the first such frame at or after
        ``change_frame``, so it is negative when the smoothed step comes early.
        ``"filtered"``: the causal posterior (frames up to ``t``; online); the
        delay is that of the first frame at or after ``change_frame`` above ``threshold``.
    **options
        Passed to :func:`smooth_counts` (``p_change``, ``jump_ratio``, ``prior``, ...).

    Returns
    -------
    int or None
        Delay [frames] (0: at the change frame itself); ``None`` when the
        posterior never puts more than ``threshold`` on ``new_count`` from
        ``change_frame`` on.
    """
    probability = _as_probability(probability)
    if probability.ndim != 2:
        raise ValueError(f"probability must have dims (frame, depth_class) for one column, got {probability.dims}")
    n_frames, n_classes = probability.shape
    if mode not in ("smoothed", "filtered"):
        raise ValueError(f"mode must be 'smoothed' or 'filtered', got {mode!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    for name, value, top in (("change_frame", change_frame, n_frames), ("new_count", new_count, n_classes)):
        check_int(value, name, minimum=0, maximum=top - 1)
    result = smooth_counts(probability, **options)
    posterior = result["posterior" if mode == "smoothed" else "filtered"].values[:, new_count]
    above = posterior > threshold
    hits = np.flatnonzero(above[change_frame:])
    if hits.size == 0:
        return None
    first = change_frame + int(hits[0])
    if mode == "smoothed":
        while first > 0 and above[first - 1]:
            first -= 1
    return first - change_frame
