"""Where is there crystal, and is it CeO2 seen along [110]? Maps from local power spectra.

:func:`local_lattice` looks at an HRTEM image through a window (a circular
Hann taper, :data:`WINDOW` = 12 A wide) stepped every :data:`STEP` = 1 A, and
asks of each window's power spectrum which lattice reflections it holds. The
answers are interpolated back to the image's pixels, so that a prediction can
be masked where the model's assumptions (CeO2 along [110]) do not hold.
:func:`on_grid` samples the maps on any other grid.

Method
------
1. Frames may first be averaged with their neighbours in time (``average``;
   the lattice must not move between them). Images finer than 0.3 A per
   pixel are resampled to 0.3 A (with anti-aliasing): the searched
   frequencies stay below 0.6 1/A, so nothing is lost and a 1024 x 1024
   image at 0.053 A costs what a 180 x 180 one at 0.3 A does.
2. Around every grid point the image minus its local mean is multiplied by the
   taper (cut where the window leaves the image, so that the whole field is
   covered and an image edge is no lattice) and its power spectrum is
   evaluated on a Cartesian grid of frequencies in 1/A (a zoom FFT,
   :class:`scipy.signal.ZoomFFT`, 4 samples per 1 / window).
3. The background at radius ``|f|`` is the median of the power over the ring
   ``|f| +- 0.1 1/A`` of the same spectrum: shot noise, amorphous speckle and
   Thon rings are roughly isotropic, a lattice is not. The *ratio*
   power / background is what is tested, never the raw power.
4. Reflections are local maxima of the ratio (at least ``2 / window`` apart,
   the width of the taper's main lobe). Each is assigned to the nearest
   reference spacing within a relative ``tolerance`` (peaks between the
   rings are "other" lattice). Spacings of two phases closer than twice
   the tolerance (CeO2 {220} 1.913 A and Pt {200} 1.962 A) cannot be told apart
   locally and count for neither phase.
5. ``lattice_score`` is the ratio of the strongest reflection; there is
   ``crystal`` where it exceeds :data:`LATTICE_THRESHOLD`, a level that the
   noise of vacuum exceeds in under 0.1 % of the windows (calibrated below).
6. CeO2 evidence is the strongest CeO2-only reflection ({111}, {200}).
   Contradicting it are the strongest reflection at another phase's own
   spacing (Pt {111}) or between the known rings, and any pair of
   significant CeO2 reflections whose angle is not one of the [110] zone
   (70.53 deg for two {111}, 54.74 for {111}/{200}, 35.26 for {111}/{220},
   90 for {200}/{220}, none for two {200}), by the weaker of the two.
   ``ceo2_score`` = evidence / (evidence + contradiction), in [0, 1].
   ``ceo2_110`` is crystal that is not refuted: no significant contradiction,
   or ``ceo2_score >= CEO2_FRACTION`` (0.5: at least as much for CeO2 as against),
   and no significant pair of CeO2 reflections at a wrong angle (``wrong_angle``).
   Simulated CeO2 [110] particles of a few nm often show only the {220}
   fringes (1.913 A), which CeO2 shares with Pt {200}: such a lattice is
   compatible with CeO2 [110] and is accepted; Pt {111} (2.266 A), a spacing
   between the rings or a wrong angle is what refutes it.

Seen along [110], Pt (fcc, a = 3.924 A) makes the same pattern as CeO2 with
all spacings 27 % smaller: the angles cannot tell them apart, only the
spacings, and the pixel size must be known to about 5 %
(:func:`segdepth.data.calibration.calibrate_pixel_size`).

Limits
------
A map point describes a 12 A window: a boundary is resolved to about 2 A at
best, and a strong lattice is seen from up to ~3 A outside its edge. A single
lattice family (one pair of fringes) fits [110] as well as several other zone
axes and is accepted; a second family at the wrong angle is what refutes it.
At the dose of the real Pt/CeO2 movie (~110 electrons per A^2 a frame) a single
frame finds only part of the lattice: average a few frames.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from segdepth.data.calibration import cubic_spacings, parse_hkl
from segdepth.data.io import check_pixel_size

__all__ = [
    "ANGLE_TOLERANCE",
    "CEO2_FRACTION",
    "LATTICE_THRESHOLD",
    "REASONS",
    "SPACING_TOLERANCE",
    "STEP",
    "WINDOW",
    "ZONE",
    "default_spacings",
    "local_lattice",
    "on_grid",
    "temporal_mean",
    "zone_angles",
]

WINDOW = 12.0  # [A] taper diameter
STEP = 1.0  # [A] between window centres
ZONE = (1, 1, 0)  # the CeO2 zone axis the maps test for
#: Peak / background ratio above which a window holds a lattice. Calibrated on noise with the
#: defaults (12 A window, 1 A step) on flat Poisson noise, 3 fields each (2026-12-03): 768^2 pixels of
#: 0.053 A at 0.3 / 2.5 / 25 electrons per pixel, 99.9 % quantile of the window scores 15.9 / 18.8 / 18.7
#: (largest 17.8 / 21.7 / 23.7); 200^2 pixels of 0.2 A at 4 / 50, 15.9 / 16.1 (largest 19.4 / 18.1).
#: ``tests/test_lattice.py`` checks that noise stays below it.
LATTICE_THRESHOLD = 20.0
#: Minimum share of the lattice evidence that must support CeO2 [110] (more for than against).
CEO2_FRACTION = 0.5
SPACING_TOLERANCE = 0.06  # relative, when assigning a reflection to a reference spacing
ANGLE_TOLERANCE = 6.0  # [deg] between two reflections and a [110]-zone angle
REASONS = {0: "ceo2_110", 1: "no_lattice", 2: "other_lattice"}

_PHASE = "CeO2"
_WORK_PIXEL = 0.3  # [A] finer images are resampled to this
_BACKGROUND_HALF_WIDTH = 0.1  # [1/A] of the ring whose median is the background
_SAMPLES_PER_BIN = 4  # frequency samples per 1 / window


def default_spacings() -> dict:
    """Reference spacings [A]: CeO2 {111}, {200}, {220} and Pt {111}, {200}.

    Pt {200} (1.962 A) and CeO2 {220} (1.913 A) are 2.5 % apart: a window cannot tell them apart, so
    they count for neither phase; Pt {111} (2.266 A) is the reflection that flags Pt.
    """
    return {**cubic_spacings("CeO2"), **cubic_spacings("Pt", families=("111", "200"))}


def zone_angles(hkl1, hkl2, zone=ZONE) -> np.ndarray:
    """Angles [deg, 0-90] between the reflections of the cubic families {hkl1} and {hkl2} seen along ``zone``.

    Only the members of each family perpendicular to ``zone`` (``g . zone == 0``) are visible. Two
    different members of one family count (0 deg, the same reflection, does not); for two {200} along
    [110] there are none.

    Examples
    --------
    >>> zone_angles((1, 1, 1), (1, 1, 1)).round(2).tolist()
    [70.53]
    >>> zone_angles((1, 1, 1), (2, 0, 0)).round(2).tolist()
    [54.74]
    """
    first, second = _zone_members(hkl1, zone), _zone_members(hkl2, zone)
    angles = set()
    for a in first:
        for b in second:
            cos = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
            angle = round(math.degrees(math.acos(min(1.0, cos))), 3)
            if angle > 0.01:
                angles.add(angle)
    return np.array(sorted(angles))


def _zone_members(hkl, zone) -> list:
    out = set()
    for perm in itertools.permutations(hkl):
        for signs in itertools.product((1, -1), repeat=3):
            g = tuple(s * p for s, p in zip(signs, perm, strict=True))
            if np.dot(g, zone) == 0 and any(g):
                out.add(g)
    return [np.array(g, float) for g in out]


# --------------------------------------------------------------------------- reference reflections


@dataclass(frozen=True)
class _Reflections:
    """The reference spacings, what each says about CeO2 [110], and the allowed angles between them."""

    names: tuple
    spacing: np.ndarray  # [A]
    role: np.ndarray  # +1 CeO2 only, -1 another phase only, 0 ambiguous
    allowed: dict  # (i, j) -> allowed angles [deg], for the pairs of CeO2 families

    @classmethod
    def from_spacings(cls, spacings: dict, tolerance: float) -> _Reflections:
        names = tuple(spacings)
        d = np.array([spacings[n] for n in names], float)
        parsed = [parse_hkl(n) for n in names]
        phase = [p[0] if p is not None else n for p, n in zip(parsed, names, strict=True)]
        role = np.where([p == _PHASE for p in phase], 1, -1)
        for i, j in itertools.combinations(range(len(names)), 2):
            if phase[i] != phase[j] and abs(d[i] / d[j] - 1) < 2 * tolerance:
                role[i] = role[j] = 0
        allowed = {}
        for i, j in itertools.combinations_with_replacement(range(len(names)), 2):
            if phase[i] == phase[j] == _PHASE and parsed[i] is not None and parsed[j] is not None:
                allowed[(i, j)] = zone_angles(parsed[i][1], parsed[j][1])
        return cls(names, d, role, allowed)

    def band(self, tolerance: float) -> tuple[float, float]:
        """Searched frequencies [1/A]."""
        return (1 - tolerance) / self.spacing.max(), (1 + tolerance) / self.spacing.min()

    def label(self, radius: np.ndarray, tolerance: float) -> np.ndarray:
        """Index of the nearest spacing within ``tolerance`` of each frequency ``radius`` [1/A]; -1 if none."""
        rel = np.abs(radius[..., None] * self.spacing - 1.0)
        nearest = rel.argmin(axis=-1)
        return np.where(rel.min(axis=-1) <= tolerance, nearest, -1)


def _check_spacings(spacings) -> dict:
    spacings = dict(default_spacings() if spacings is None else spacings)
    if not spacings:
        raise ValueError("spacings must name at least one lattice spacing [A], e.g. {'CeO2 111': 3.124}")
    for name, d in spacings.items():
        if isinstance(d, bool) or not isinstance(d, int | float | np.number) or not math.isfinite(d) or d <= 0:
            raise ValueError(f"spacing {name!r} must be a positive number of Angstrom, got {d!r}")
    if not any((p := parse_hkl(n)) is not None and p[0] == _PHASE for n in spacings):
        raise ValueError(f"spacings must include CeO2 reflections named like 'CeO2 111', got {sorted(spacings)}")
    return spacings


# --------------------------------------------------------------------------- input


def _frames(image, pixel_size):
    """(frames (n, y, x) float64, pixel size [A], y, x [A], frame coordinate or None)."""
    if pixel_size is None:
        pixel_size = getattr(image, "attrs", {}).get("pixel_size")
        if pixel_size is None:
            raise ValueError("pixel_size is unknown: pass pixel_size [A] (or a DataArray with a pixel_size attribute)")
    pixel_size = check_pixel_size(pixel_size)
    arr = np.asarray(getattr(image, "values", image), dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image (y, x) or a (frame, y, x) stack, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    frame = None
    if arr.ndim == 3:
        coords = getattr(image, "coords", {})
        frame = np.asarray(coords["frame"]) if "frame" in coords else np.arange(arr.shape[0])
    else:
        arr = arr[np.newaxis]
    coords = getattr(image, "coords", {})
    y = np.asarray(coords["y"], float) if "y" in coords else (np.arange(arr.shape[1]) + 0.5) * pixel_size
    x = np.asarray(coords["x"], float) if "x" in coords else (np.arange(arr.shape[2]) + 0.5) * pixel_size
    return arr, pixel_size, y, x, frame


def temporal_mean(frames: np.ndarray, average: int) -> np.ndarray:
    """Mean of each frame with its ``average - 1`` nearest neighbours in time (fewer at the ends)."""
    if average == 1:
        return frames
    from scipy import ndimage

    total = ndimage.uniform_filter1d(frames, average, axis=0, mode="constant", cval=0.0)
    count = ndimage.uniform_filter1d(np.ones(frames.shape[0]), average, mode="constant", cval=0.0)
    return total / count[:, None, None]


def _working_image(frame: np.ndarray, pixel_size: float) -> tuple[np.ndarray, float]:
    """The frame resampled to at most ``_WORK_PIXEL`` [A] per pixel, and its exact pixel size [A]."""
    if pixel_size >= _WORK_PIXEL:
        return frame, pixel_size
    from skimage.transform import rescale

    work = rescale(frame, pixel_size / _WORK_PIXEL, order=1, anti_aliasing=True, preserve_range=True)
    return work, pixel_size * frame.shape[0] / work.shape[0]


# --------------------------------------------------------------------------- spectra


def _window_grid(n: int, step: int, half: int) -> tuple[int, int, int]:
    """(number of window centres, padding before, padding after) covering ``n`` pixels from index 0."""
    count = -(-(n - 1) // step) + 1
    return count, half, (count - 1) * step + half - (n - 1)


def _window_spectra(work: np.ndarray, px: float, window: float, step: float, fmax: float):
    """Power spectra of the tapered windows, shape (ky, kx, f, f); frequencies [1/A]; centres [work px]."""
    from scipy.signal import ZoomFFT
    from skimage.filters import window as taper_window
    from skimage.util import view_as_windows

    half = max(int(round(window / px / 2)), 2)
    size = 2 * half + 1
    step_px = max(int(round(step / px)), 1)
    (ky, top, bottom), (kx, left, right) = (_window_grid(n, step_px, half) for n in work.shape)
    pad = ((top, bottom), (left, right))
    data = view_as_windows(np.pad(work, pad), size, step_px)
    inside = view_as_windows(np.pad(np.ones_like(work), pad), size, step_px)
    taper = taper_window("hann", (size, size))
    n_freq = 2 * int(math.ceil(fmax * window * _SAMPLES_PER_BIN)) + 1
    zoom = ZoomFFT(size, [-fmax, fmax], n_freq, fs=1.0 / px, endpoint=True)
    power = np.empty((ky, kx, n_freq, n_freq), np.float32)
    for row in range(ky):
        weight = taper * inside[row]
        mean = (weight * data[row]).sum(axis=(-2, -1), keepdims=True) / weight.sum(axis=(-2, -1), keepdims=True)
        spectrum = zoom(zoom((data[row] - mean) * weight, axis=-1), axis=-2)
        power[row] = np.abs(spectrum) ** 2
    freq = np.linspace(-fmax, fmax, n_freq)
    return power, freq, np.arange(ky) * step_px, np.arange(kx) * step_px


def _background(power: np.ndarray, radius: np.ndarray, f_lo: float, f_hi: float, df: float) -> np.ndarray:
    """Median power over the ring ``|f| +- _BACKGROUND_HALF_WIDTH`` around each sample with f_lo <= |f| <= f_hi."""
    out = np.full(power.shape, np.inf, np.float32)
    flat = power.reshape(power.shape[:-2] + (-1,))
    r_flat = radius.ravel()
    for r0 in np.arange(f_lo, f_hi + df / 2, df):
        ring = np.abs(r_flat - r0) <= _BACKGROUND_HALF_WIDTH
        bin_ = np.abs(radius - r0) <= df / 2
        out[..., bin_] = np.median(flat[..., ring], axis=-1)[..., None]
    return out


def _reflection_peaks(power, ratio, freq: np.ndarray, labels: np.ndarray, n_ref: int, separation: float):
    """For every window: the two strongest peaks (ratio, angle [deg]) of each reference and the strongest other one.

    Peaks are local maxima of the power itself (dividing by a sloping background would shift them), at
    least ``separation`` [1/A] apart, and are scored by their ratio to the background. Returns
    ``(ref_ratio, ref_angle)`` of shape (ky, kx, n_ref, 2)
    and ``other`` of shape (ky, kx).
    """
    from scipy import ndimage

    df = freq[1] - freq[0]
    size = 2 * int(math.ceil(separation / df)) + 1
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    upper = (fy > 0) | ((fy == 0) & (fx > 0))  # one of each centro-symmetric pair
    angle = np.degrees(np.arctan2(fy, fx))
    ref_ratio = np.zeros(ratio.shape[:2] + (n_ref, 2), np.float32)
    ref_angle = np.zeros_like(ref_ratio)
    other = np.zeros(ratio.shape[:2], np.float32)
    for row in range(ratio.shape[0]):
        peaks = power[row] == ndimage.maximum_filter(power[row], size=(1, size, size), mode="constant")
        value = np.where(peaks & upper, ratio[row], 0.0)
        other[row] = np.where(labels == -1, value, 0.0).max(axis=(-2, -1))
        for k in range(n_ref):
            ring = labels == k
            vals = value[:, ring]
            top = np.argsort(vals, axis=-1)[:, ::-1][:, :2]
            ref_ratio[row, :, k, : top.shape[1]] = np.take_along_axis(vals, top, axis=-1)
            ref_angle[row, :, k, : top.shape[1]] = angle[ring][top]
    return ref_ratio, ref_angle, other


def _fold(angle: np.ndarray) -> np.ndarray:
    """Angle between two lines [deg], folded into 0-90."""
    a = np.abs(angle) % 180.0
    return np.minimum(a, 180.0 - a)


def _angle_contradiction(ref_ratio, ref_angle, refs: _Reflections, threshold: float, angle_tolerance: float):
    """Per window: the weaker of the strongest pair of significant CeO2 reflections at a non-[110] angle."""
    out = np.zeros(ref_ratio.shape[:2], np.float32)
    n = len(refs.names)
    slots = [(k, m) for k in range(n) for m in range(2)]
    for (i, a), (j, b) in itertools.combinations(slots, 2):
        key = (min(i, j), max(i, j))
        if key not in refs.allowed:
            continue
        allowed = refs.allowed[key]
        weaker = np.minimum(ref_ratio[..., i, a], ref_ratio[..., j, b])
        folded = _fold(ref_angle[..., i, a] - ref_angle[..., j, b])
        if allowed.size:
            fits = np.min(np.abs(folded[..., None] - allowed), axis=-1) <= angle_tolerance
        else:
            fits = np.zeros(folded.shape, bool)
        bad = (weaker > threshold) & ~fits
        out = np.maximum(out, np.where(bad, weaker, 0.0))
    return out


def _coarse_scores(work, px, refs: _Reflections, *, window, step, tolerance, threshold, angle_tolerance):
    """Window-level maps: lattice score, CeO2 evidence, contradiction, spacing and angle of the strongest peak."""
    f_lo, f_hi = refs.band(tolerance)
    fmax = f_hi + _BACKGROUND_HALF_WIDTH
    power, freq, cy, cx = _window_spectra(work, px, window, step, fmax)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    radius = np.hypot(fy, fx)
    labels = np.where((radius >= f_lo) & (radius <= f_hi), refs.label(radius, tolerance), -2)
    labels[(radius >= f_lo) & (radius <= f_hi) & (labels < 0)] = -1
    background = _background(power, radius, max(f_lo - _BACKGROUND_HALF_WIDTH, freq[1] - freq[0]), f_hi,
                             freq[1] - freq[0])
    ratio = np.where(np.isfinite(background) & (background > 0), power / background, 0.0)
    ref_ratio, ref_angle, other = _reflection_peaks(power, ratio, freq, labels, len(refs.names), 1.0 / window)
    best = ref_ratio[..., 0]
    lattice = np.maximum(best.max(axis=-1), other)
    evidence = np.where(refs.role == 1, best, 0.0).max(axis=-1)
    against = np.maximum(np.where(refs.role == -1, best, 0.0).max(axis=-1), other)
    wrong_angle = _angle_contradiction(ref_ratio, ref_angle, refs, threshold, angle_tolerance)
    against = np.maximum(against, wrong_angle)
    strongest = best.argmax(axis=-1)
    spacing = np.where(best.max(axis=-1) >= other, refs.spacing[strongest], np.nan)
    angle = np.take_along_axis(ref_angle[..., 0], strongest[..., None], axis=-1)[..., 0]
    return {
        "lattice_score": lattice, "ceo2_evidence": evidence, "contradiction": against, "wrong_angle": wrong_angle,
        "spacing": spacing, "angle": angle,
    }, (cy + 0.5) * px, (cx + 0.5) * px  # fmt: skip


# --------------------------------------------------------------------------- maps


def _to_pixels(coarse: dict, cy, cx, y, x):
    """Linear interpolation of the window-level float maps (nearest for spacing and angle) at pixel centres [A]."""
    import xarray as xr

    ds = xr.Dataset({k: (("y", "x"), v) for k, v in coarse.items()}, coords={"y": cy, "x": cx})
    at = {"y": np.clip(y, cy[0], cy[-1]), "x": np.clip(x, cx[0], cx[-1])}  # the edge value beyond the last centre
    linear = ds[["lattice_score", "ceo2_evidence", "contradiction", "wrong_angle"]].interp(at)
    nearest = ds[["spacing", "angle"]].interp(at, method="nearest")
    return xr.merge([linear, nearest]).assign_coords(y=y, x=x)


def _classify(ds, threshold: float):
    """Add ``ceo2_score``, ``crystal``, ``ceo2_110`` and ``reason`` to pixel-level score maps."""
    import xarray as xr

    evidence, against = ds["ceo2_evidence"], ds["contradiction"]
    ds["ceo2_score"] = (evidence / (evidence + against)).where(evidence + against > 0, 0.0)
    ds["crystal"] = ds["lattice_score"] > threshold
    # a significant pair of CeO2 reflections at an angle of no [110] pair refutes it outright: the pair is
    # itself most of the "evidence", so the share would not
    refuted = ((against > threshold) & (ds["ceo2_score"] < CEO2_FRACTION)) | (ds["wrong_angle"] > threshold)
    ds["ceo2_110"] = ds["crystal"] & ~refuted
    ds["reason"] = xr.where(ds["ceo2_110"], 0, xr.where(ds["crystal"], 2, 1)).astype(np.uint8)
    return ds


_ATTRS = {
    "lattice_score": {"long_name": "strongest lattice reflection, peak / ring background", "units": "1"},
    "ceo2_evidence": {"long_name": "strongest CeO2-only reflection ({111}, {200}), peak / background", "units": "1"},
    "contradiction": {
        "long_name": "strongest reflection against CeO2 [110] (other phase, other spacing or angle)", "units": "1"},
    "spacing": {"long_name": "reference spacing of the strongest reflection (NaN: between the rings)", "units": "A"},
    "angle": {"long_name": "direction of the strongest reflection's g, from +x towards +y", "units": "deg"},
    "wrong_angle": {"long_name": "weaker of the strongest pair of CeO2 reflections at a non-[110] angle",
                    "units": "1"},
    "ceo2_score": {"long_name": "share of the lattice evidence for CeO2 [110]", "units": "1"},
    "crystal": {"long_name": "a lattice is present", "units": "1"},
    "ceo2_110": {"long_name": "crystal that looks like CeO2 seen along [110]", "units": "1"},
    "reason": {
        "long_name": "why a pixel is or is not CeO2 [110]", "units": "1",
        "flag_values": np.array(list(REASONS), np.uint8), "flag_meanings": " ".join(REASONS.values())},
}  # fmt: skip


def local_lattice(
    image,
    pixel_size: float | None = None,
    *,
    spacings: dict | None = None,
    window: float = WINDOW,
    step: float = STEP,
    average: int = 1,
    tolerance: float = SPACING_TOLERANCE,
    angle_tolerance: float = ANGLE_TOLERANCE,
    threshold: float = LATTICE_THRESHOLD,
):
    """Per-pixel maps of where there is crystal and whether it looks like CeO2 seen along [110].

    Parameters
    ----------
    image : array_like or xarray.DataArray, shape (y, x) or (frame, y, x)
        Intensities (any scale: only ratios within a window's spectrum are used). A DataArray from
        :func:`segdepth.data.io.read_image` brings its ``pixel_size`` attribute and ``y``, ``x`` [A] and
        ``frame`` coordinates.
    pixel_size : float, optional
        Pixel size [A]; required unless ``image`` has a ``pixel_size`` attribute.
    spacings : dict, optional
        Reference lattice spacings [A] named ``"<phase> <hkl>"``; the CeO2 ones are the evidence, the
        others the alternatives. Default :func:`default_spacings` (CeO2 {111}, {200}, {220}; Pt {111}, {200}).
    window : float
        Diameter of the circular Hann taper [A]. A larger window sees weaker lattices but blurs boundaries;
        :data:`LATTICE_THRESHOLD` is calibrated for the default, re-measure it when changing this.
    step : float
        Distance between window centres [A].
    average : int
        Odd number of neighbouring frames averaged (centred, fewer at the ends) before the analysis.
    tolerance : float
        Relative tolerance when assigning a reflection to a spacing.
    angle_tolerance : float
        Tolerance on the angle between two reflections [deg].
    threshold : float
        Peak / background ratio for a reflection to count (lattice present).

    Returns
    -------
    xarray.Dataset
        On the image's pixel grid, dims ``(y, x)`` or ``(frame, y, x)``, coordinates [A]:
        ``lattice_score``, ``ceo2_evidence``, ``contradiction`` (peak / background ratios),
        ``ceo2_score`` (0-1), ``crystal``, ``ceo2_110`` (bool), ``reason`` (uint8, ``flag_meanings``:
        0 CeO2 [110], 1 no lattice (vacuum, amorphous, too noisy), 2 another lattice), ``spacing`` [A]
        and ``angle`` [deg] of the strongest reflection. The parameters are in the attributes.

    Raises
    ------
    ValueError
        For an image that is not 2-D or 3-D, holds NaN, is smaller than the window, an unknown or
        invalid pixel size, or invalid parameters.
    """
    import xarray as xr

    frames, pixel_size, y, x, frame = _frames(image, pixel_size)
    _check_parameters(frames.shape, pixel_size, window, step, average, tolerance, angle_tolerance, threshold)
    refs = _Reflections.from_spacings(_check_spacings(spacings), tolerance)
    if 1.0 / (2 * max(pixel_size, _WORK_PIXEL)) < refs.band(tolerance)[1] + _BACKGROUND_HALF_WIDTH:
        raise ValueError(f"pixel size {pixel_size} A is too coarse for spacings down to {refs.spacing.min():.3f} A")
    origin_y, origin_x = y[0] - pixel_size / 2, x[0] - pixel_size / 2
    maps = []
    for one in temporal_mean(frames, average):
        work, px = _working_image(one, pixel_size)
        coarse, cy, cx = _coarse_scores(work, px, refs, window=window, step=step, tolerance=tolerance,
                                        threshold=threshold, angle_tolerance=angle_tolerance)
        maps.append(_classify(_to_pixels(coarse, cy + origin_y, cx + origin_x, y, x), threshold))
    ds = maps[0] if frame is None else xr.concat(maps, dim=xr.DataArray(frame, dims="frame", name="frame"))
    for name, attrs in _ATTRS.items():
        ds[name].attrs.update(attrs)
    ds["y"].attrs.update(units="A", long_name="y")
    ds["x"].attrs.update(units="A", long_name="x")
    ds.attrs.update(pixel_size=pixel_size, window=window, step=step, average=average, tolerance=tolerance,
                    angle_tolerance=angle_tolerance, threshold=threshold, ceo2_fraction=CEO2_FRACTION,
                    spacings=", ".join(f"{n} {d:.4f} A" for n, d in zip(refs.names, refs.spacing, strict=True)))
    return ds


def _check_parameters(shape, pixel_size, window, step, average, tolerance, angle_tolerance, threshold):
    for name, value in (("window", window), ("step", step), ("angle_tolerance", angle_tolerance),
                        ("threshold", threshold)):
        if not isinstance(value, int | float | np.number) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if step > window:
        raise ValueError(f"step ({step} A) must not exceed the window ({window} A)")
    if not 0 < tolerance < 0.2:
        raise ValueError(f"tolerance must be in (0, 0.2), got {tolerance!r}")
    if isinstance(average, bool) or not isinstance(average, int | np.integer) or average < 1 or average % 2 == 0:
        raise ValueError(f"average must be an odd number of frames >= 1, got {average!r}")
    h, w = shape[1:]
    if min(h, w) * pixel_size < window:
        raise ValueError(
            f"image of {h} x {w} pixels ({h * pixel_size:.1f} x {w * pixel_size:.1f} A) is smaller than the "
            f"{window} A window; pass a smaller window or a larger image")


def on_grid(maps, y, x):
    """Sample lattice maps on another grid, e.g. the label grid of a prediction.

    Parameters
    ----------
    maps : xarray.Dataset
        Output of :func:`local_lattice`.
    y, x : array_like
        Pixel-centre coordinates of the target grid [A], in the maps' frame of reference.

    Returns
    -------
    xarray.Dataset
        Float maps interpolated linearly, booleans, ``reason``, ``spacing`` and ``angle`` by nearest
        neighbour; points outside the maps take the nearest edge value.
    """
    y, x = np.asarray(y, float), np.asarray(x, float)
    if y.ndim != 1 or x.ndim != 1 or y.size == 0 or x.size == 0:
        raise ValueError(f"y and x must be non-empty 1-D coordinate arrays [A], got shapes {y.shape} and {x.shape}")
    y_in = np.clip(y, float(maps["y"].min()), float(maps["y"].max()))
    x_in = np.clip(x, float(maps["x"].min()), float(maps["x"].max()))
    nearest_vars = [n for n, v in maps.data_vars.items() if v.dtype.kind in "biu" or n in ("spacing", "angle")]
    linear_vars = [n for n in maps.data_vars if n not in nearest_vars]
    out = maps[linear_vars].interp(y=y_in, x=x_in)
    near = maps[nearest_vars].interp(y=y_in, x=x_in, method="nearest")
    import xarray as xr

    out = xr.merge([out, near]).assign_coords(y=y, x=x)
    for name in maps.data_vars:
        out[name] = out[name].astype(maps[name].dtype) if maps[name].dtype.kind in "biu" else out[name]
        out[name].attrs = dict(maps[name].attrs)
    out.attrs = dict(maps.attrs)
    return out
