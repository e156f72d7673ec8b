"""Pixel-size calibration from the crystal lattice, and dose (lambda) estimation.

:func:`calibrate_pixel_size` finds the lattice reflections in the power
spectrum of an image (averaged over the frames of a stack) and matches their
spatial frequencies to known lattice spacings. A reflection at ``f`` cycles per
pixel from planes of spacing ``d`` [A] means a pixel size of ``d * f`` [A]. The
CeO2 defaults are the {111}, {200} and {220} planes of fluorite with
``a = 5.411 A`` (3.124 A, 2.706 A and 1.913 A).

Method
------
1. Each frame minus its mean is multiplied by a 2-D Hann window; the squared
   moduli of the Fourier transforms are averaged over frames.
2. The smooth, roughly isotropic background is the lower quartile of the power
   in rings of constant ``|f|`` (2 bins wide; a quartile rather than the median
   so that the reflections' own leakage does not raise it), scaled to the mean
   that pure noise would have; the *ratio* power / background is then, for
   pure noise, Gamma-distributed with shape = number of frames (exponential
   for one frame).
3. Peaks are local maxima of the ratio above the level that pure noise exceeds
   anywhere in the searched annulus with probability ``false_alarm`` (1e-3).
   Their positions are refined to sub-bin precision by a parabola through the
   3 bins along each axis (of the log power).
4. Peaks are grouped into rings of equal ``|f|``. Every (ring, spacing) pair
   proposes a pixel size. A proposal is valid when it explains rings of at
   least two different known spacings (relative tolerance ``tolerance``) and
   the angles between its reflections do not contradict the lattice more
   often than they agree. Among valid proposals the one wins that leaves
   the fewest significant rings unexplained *below* its lowest matched
   frequency (harmonics such as {222} and {400} mimic the lattice at twice
   the pixel size), then the one whose reflections make the angles of the
   planes of a cubic lattice (when the spacings are named by Miller indices;
   within one phase), then the one explaining the most peak strength.
5. The estimate is the mean of ``d * f`` over the matched peaks. Its standard
   uncertainty combines the scatter between the matched reflections
   (standard error of the mean) and the peak-position precision (one
   bin / sqrt(12) per peak, averaged over the peaks), in quadrature.

Calibration never invents a number: a blank image, pure noise, or peaks that
do not fit the known spacings consistently raise :class:`CalibrationError`.
With only one reflection family (one ring) the assignment is ambiguous (is it
{111} or {200}?) and is refused unless only one spacing is given.

The uncertainty is statistical. Lattice strain in a nanoparticle (typically
< 1 %), a non-square pixel, or drift during the exposure add systematic errors
that no single image reveals.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from segdepth.constants import LATTICE_CONSTANT

__all__ = [
    "CEO2_SPACINGS",
    "CalibrationError",
    "PixelSizeCalibration",
    "LATTICE_CONSTANTS",
    "calibrate_pixel_size",
    "cubic_spacings",
    "parse_hkl",
    "estimate_dose",
    "estimate_orientation",
    "LatticeOrientation",
    "rotation_between",
    "power_spectrum",
]

CEO2_LATTICE_CONSTANT = LATTICE_CONSTANT  # [A]
#: Default spacings [A]: CeO2 {111}, {200} and {220} (a = 5.411 A), the three strongest reflections
#: of fluorite along [110].
CEO2_SPACINGS = {
    "111": CEO2_LATTICE_CONSTANT / math.sqrt(3),
    "200": CEO2_LATTICE_CONSTANT / 2,
    "220": CEO2_LATTICE_CONSTANT / math.sqrt(8),
}

#: Cubic lattice constants [A] of the phases in the CeO2-supported catalyst movies.
LATTICE_CONSTANTS = {"CeO2": CEO2_LATTICE_CONSTANT, "Pt": 3.924}


def cubic_spacings(phase: str, *, lattice_constant: float | None = None, families=("111", "200", "220")) -> dict:
    """Spacings [A] of the ``families`` of a cubic ``phase``, keyed ``"<phase> <hkl>"``.

    ``lattice_constant`` [A] defaults to :data:`LATTICE_CONSTANTS` ``[phase]``.
    Example: ``{**cubic_spacings("CeO2"), **cubic_spacings("Pt")}`` for Pt on CeO2.
    """
    a = LATTICE_CONSTANTS.get(phase) if lattice_constant is None else lattice_constant
    if a is None:
        raise ValueError(f"unknown phase {phase!r}: pass lattice_constant [A] (known: {sorted(LATTICE_CONSTANTS)})")
    out = {}
    for fam in families:
        hkl = parse_hkl(fam)
        if hkl is None:
            raise ValueError(f"family {fam!r} is not a set of Miller indices such as '111'")
        out[f"{phase} {fam}"] = float(a) / math.sqrt(sum(v * v for v in hkl[1]))
    return out

_QUANTILE = 0.25  # of the power in a ring, taken as its background


class CalibrationError(ValueError):
    """The lattice could not be found or matched: no pixel size is returned."""


@dataclass
class PixelSizeCalibration:
    """Result of :func:`calibrate_pixel_size`.

    Attributes
    ----------
    pixel_size : float
        Estimated pixel size [A].
    uncertainty : float
        Standard uncertainty of ``pixel_size`` [A] (statistical, see the module docstring).
    peaks : list of dict
        Matched reflections: ``fy``, ``fx`` [cycles/px], ``frequency`` [cycles/px],
        ``angle`` [deg], ``strength`` (power / background), ``family`` (the key of
        the matched spacing), ``spacing`` [A], ``pixel_size`` [A] (``spacing * frequency``).
    unmatched : list of dict
        The other significant peaks (same keys without ``family``), e.g. another phase.
    threshold : float
        Detection level of power / background.
    n_frames : int
        Frames averaged.
    """

    pixel_size: float
    uncertainty: float
    peaks: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)
    threshold: float = float("nan")
    n_frames: int = 1

    @property
    def relative_uncertainty(self) -> float:
        return self.uncertainty / self.pixel_size

    def __str__(self) -> str:
        families = sorted({p["family"] for p in self.peaks})
        return (
            f"{self.pixel_size:.4f} +- {self.uncertainty:.4f} A/px from {len(self.peaks)} reflections "
            f"({', '.join('{' + f + '}' for f in families)}) in {self.n_frames} frame(s)"
        )


def _frames(image) -> np.ndarray:
    arr = np.asarray(getattr(image, "values", image), dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D image (y, x) or a stack (frame, y, x), got shape {arr.shape}")
    if min(arr.shape[1:]) < 16:
        raise ValueError(f"image of {arr.shape[1]} x {arr.shape[2]} pixels is too small to calibrate (>= 16 x 16)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return arr


def power_spectrum(image) -> np.ndarray:
    """Hann-windowed power spectrum, averaged over frames, zero frequency at the centre (``fftshift``).

    Parameters
    ----------
    image : array_like, shape (y, x) or (frame, y, x)

    Returns
    -------
    numpy.ndarray, shape (y, x)
    """
    arr = _frames(image)
    h, w = arr.shape[1:]
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((h, w))
    for frame in arr:
        power += np.abs(np.fft.fft2((frame - frame.mean()) * window)) ** 2
    return np.fft.fftshift(power / arr.shape[0])


def _frequencies(h: int, w: int):
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None] * np.ones((1, w))
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :] * np.ones((h, 1))
    return fy, fx


def _radial_quantile(values, radius, bin_width: float, mask, q: float) -> np.ndarray:
    """Quantile ``q`` of ``values`` in rings of width ``bin_width`` (``mask`` selects the pixels used).

    Every ring with at least 8 selected pixels gets numpy's default (linear) quantile of them, all rings from one
    sort; its value is given to every pixel of the ring. Rings with fewer take the nearest filled ring's value.
    """
    index = np.floor(radius / bin_width).astype(np.int64)
    background = np.full(values.shape, np.nan)
    ring_of, chosen = index[mask], np.asarray(values, np.float64)[mask]
    if ring_of.size:
        order = np.lexsort((chosen, ring_of))
        ring_of, chosen = ring_of[order], chosen[order]
        rings, start, count = np.unique(ring_of, return_index=True, return_counts=True)
        enough = count >= 8
        pos = q * (count - 1)
        lo = np.floor(pos).astype(np.int64)
        t = pos - lo
        a, b = chosen[start + lo], chosen[start + np.minimum(lo + 1, count - 1)]
        diff = b - a
        value = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's linear interpolation, exactly
        table = np.full(int(rings.max()) + 1, np.nan)
        table[rings[enough]] = value[enough]
        inside = (index >= 0) & (index < table.size)
        background[inside] = table[index[inside]]
    # rings with too few pixels: nearest filled ring
    missing = ~np.isfinite(background) & mask
    if missing.any():
        filled = np.isfinite(background) & mask
        if not filled.any():
            return background
        r_f, b_f = radius[filled], background[filled]
        order = np.argsort(r_f)
        background[missing] = np.interp(radius[missing], r_f[order], b_f[order])
    return background


def _refine(logp: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Sub-bin peak position: a parabola through three bins along each axis."""
    h, w = logp.shape
    di = dj = 0.0
    if 0 < i < h - 1:
        a, b, c = logp[i - 1, j], logp[i, j], logp[i + 1, j]
        den = a - 2 * b + c
        if den < 0:
            di = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    if 0 < j < w - 1:
        a, b, c = logp[i, j - 1], logp[i, j], logp[i, j + 1]
        den = a - 2 * b + c
        if den < 0:
            dj = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return i + di, j + dj


def parse_hkl(name) -> tuple[str, tuple[int, int, int]] | None:
    """``"111"``, ``"{2 0 0}"``, ``"Pt 111"`` -> (phase, (h, k, l)); ``None`` when not Miller indices."""
    text = str(name).strip()
    phase, _, last = text.rpartition(" ") if " " in text and not text.replace(" ", "").strip("{}()[]").isdigit() else (
        "", "", text)
    last = last.strip("{}()[]").replace(",", " ")
    parts = last.split()
    if len(parts) == 1 and len(last) == 3 and last.isdigit():
        parts = list(last)
    if len(parts) != 3:
        return None
    try:
        return phase.strip(), tuple(int(p) for p in parts)
    except ValueError:
        return None


def _cubic_angles(hkl1, hkl2) -> np.ndarray:
    """All angles [deg, 0-90] between planes of the cubic families {hkl1} and {hkl2}."""
    def family(hkl):
        out = set()
        for perm in itertools.permutations(hkl):
            for signs in itertools.product((1, -1), repeat=3):
                out.add(tuple(s * p for s, p in zip(signs, perm, strict=True)))
        return [np.array(v, float) for v in out]

    angles = set()
    for a in family(hkl1):
        for b in family(hkl2):
            cos = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
            angles.add(round(math.degrees(math.acos(min(1.0, cos))), 3))
    return np.array(sorted(angles))


def _fold(angle: float) -> float:
    """Angle between two lines [deg], folded into 0-90."""
    a = abs(angle) % 180.0
    return min(a, 180.0 - a)


def _checked_spacings(spacings: dict | None, tolerance: float) -> dict:
    """A copy of ``spacings`` (default :data:`CEO2_SPACINGS`) after checking it and ``tolerance``."""
    spacings = dict(CEO2_SPACINGS if spacings is None else spacings)
    if not spacings:
        raise ValueError("spacings must name at least one lattice spacing [A]")
    for name, d in spacings.items():
        if not isinstance(d, int | float | np.number) or not math.isfinite(d) or d <= 0:
            raise ValueError(f"spacing {name!r} must be a positive number of Angstrom, got {d!r}")
    if not 0 < tolerance < 0.2:
        raise ValueError(f"tolerance must be in (0, 0.2), got {tolerance}")
    return spacings


def _nonblank_frames(image) -> np.ndarray:
    """The frames of ``image`` (as :func:`_frames`); a blank (constant) image raises :class:`CalibrationError`."""
    arr = _frames(image)
    if np.all(arr.std(axis=(1, 2)) == 0):
        raise CalibrationError("calibration failed: the image is blank (constant), there is no lattice to measure")
    return arr


@dataclass(frozen=True)
class _Spectrum:
    """The frame-averaged power spectrum (step 1) and the region of it that is searched for reflections."""

    power: np.ndarray  # fftshift-ed, zero frequency at the centre
    radius: np.ndarray  # |f| of every bin [cycles/px]
    bin_width: float  # one Fourier bin of the shorter side [cycles/px]
    annulus: np.ndarray  # bins searched: min_frequency_bins <= |f| <= max_frequency
    half: np.ndarray  # the annulus's independent half (the spectrum is centro-symmetric)
    n_frames: int


def _spectrum(arr: np.ndarray, min_frequency_bins: float, max_frequency: float) -> _Spectrum:
    """Step 1: the power spectrum of the frames ``arr``, with the frequencies and the annulus searched."""
    n_frames, h, w = arr.shape
    fy, fx = _frequencies(h, w)
    radius = np.hypot(fy, fx)
    bin_width = 1.0 / min(h, w)
    f_min = min_frequency_bins * bin_width
    annulus = (radius >= f_min) & (radius <= max_frequency) & (np.abs(fy) < 0.5) & (np.abs(fx) < 0.5)
    half = annulus & ((fy > 0) | ((fy == 0) & (fx > 0)))
    return _Spectrum(power_spectrum(arr), radius, bin_width, annulus, half, n_frames)


def _noise_ratio(spectrum: _Spectrum) -> np.ndarray:
    """Step 2: power / background, Gamma-distributed (shape = number of frames, mean 1) for pure noise.

    The background is a low quantile in rings 2 bins wide, robust to the reflections' leakage, scaled to
    the ring mean that pure noise would have. Zero outside the annulus.
    """
    from scipy import stats

    s = spectrum
    background = _radial_quantile(s.power, s.radius, 2 * s.bin_width, s.annulus, _QUANTILE)
    if not np.any(np.isfinite(background[s.annulus]) & (background[s.annulus] > 0)):
        raise CalibrationError("calibration failed: the power spectrum is empty (blank image?)")
    # for noise, power / ring mean is Gamma(n, 1/n): scale the ring quantile to the ring mean
    quantile_of_mean_one = stats.gamma.ppf(_QUANTILE, s.n_frames) / s.n_frames
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(s.annulus & (background > 0), s.power / (background / quantile_of_mean_one), 0.0)
    return np.nan_to_num(ratio, nan=0.0)


def _threshold(spectrum: _Spectrum, false_alarm: float) -> float:
    """Step 3: the ratio that pure noise exceeds anywhere in the annulus with probability ``false_alarm``."""
    from scipy import stats

    n_tests = max(int(spectrum.half.sum()), 1)
    return float(stats.gamma.isf(false_alarm / n_tests, spectrum.n_frames) / spectrum.n_frames)


def _peaks(spectrum: _Spectrum, ratio: np.ndarray, threshold: float) -> list[dict]:
    """Step 3: the (at most 100) strongest significant peaks, positions refined to sub-bin precision.

    Peaks are local maxima of the power itself (the ring background would shift them), tested on
    ``ratio``. Each is a dict with ``fy``, ``fx``, ``frequency`` [cycles/px], ``angle`` [deg] and
    ``strength`` (``ratio``), strongest first. None raises :class:`CalibrationError`.
    """
    from scipy import ndimage

    power = spectrum.power
    local_max = power == ndimage.maximum_filter(power, size=5, mode="wrap")
    candidates = np.argwhere(spectrum.half & local_max & (ratio > threshold))
    if candidates.size == 0:
        raise CalibrationError(
            f"calibration failed: no lattice reflections in the power spectrum (none above {threshold:.3g} x the "
            f"background over {spectrum.n_frames} frame(s)); pure noise, amorphous, or too low a dose"
        )
    logp = np.log(np.maximum(power, power[power > 0].min() if np.any(power > 0) else 1e-300))
    h, w = power.shape
    cy, cx = h // 2, w // 2
    peaks = []
    for i, j in candidates:
        ri, rj = _refine(logp, int(i), int(j))
        pfy, pfx = (ri - cy) / h, (rj - cx) / w
        peaks.append({
            "fy": float(pfy), "fx": float(pfx), "frequency": float(math.hypot(pfy, pfx)),
            "angle": float(math.degrees(math.atan2(pfy, pfx))), "strength": float(ratio[i, j]),
        })
    peaks.sort(key=lambda p: -p["strength"])
    return peaks[:100]


@dataclass(frozen=True)
class _Rings:
    """Peaks grouped into rings of (nearly) equal ``|f|``, by increasing frequency."""

    peaks: list  # list of lists of peak dicts
    frequency: list  # strength-weighted mean |f| of each ring [cycles/px]
    strength: list  # summed strength of each ring


def _rings(peaks: list[dict], tolerance: float, bin_width: float) -> _Rings:
    """Step 4: group ``peaks`` into rings of equal ``|f|`` (within ``tolerance / 2`` and half a bin)."""
    rings: list[list[dict]] = []
    for p in sorted(peaks, key=lambda p: p["frequency"]):
        if rings and p["frequency"] <= rings[-1][0]["frequency"] * (1 + tolerance / 2) + bin_width / 2:
            rings[-1].append(p)
        else:
            rings.append([p])
    frequency = [float(np.average([p["frequency"] for p in r], weights=[p["strength"] for p in r])) for r in rings]
    strength = [sum(p["strength"] for p in r) for r in rings]
    return _Rings(rings, frequency, strength)


def _allowed_angles(spacings: dict) -> dict:
    """``{(a, b): angles}``: the angles [deg] between planes of two families of one cubic phase.

    Only spacings named by Miller indices (:func:`parse_hkl`) take part; the dict holds both orders.
    """
    hkl = {name: parse_hkl(name) for name in spacings}
    allowed = {}
    for a, b in itertools.combinations_with_replacement(spacings, 2):
        if hkl[a] is not None and hkl[b] is not None and hkl[a][0] == hkl[b][0]:
            allowed[(a, b)] = allowed[(b, a)] = _cubic_angles(hkl[a][1], hkl[b][1])
    return allowed


def _assign(p_size: float, rings: _Rings, spacings: dict, tolerance: float) -> dict:
    """Ring index -> family for the rings that pixel size ``p_size`` explains (closest spacing within ``tolerance``)."""
    out = {}
    for k, f in enumerate(rings.frequency):
        best = None
        for name, d in spacings.items():
            err = abs(d * f / p_size - 1)
            if err <= tolerance and (best is None or err < best[1]):
                best = (name, err)
        if best is not None:
            out[k] = best[0]
    return out


def _angle_score(assignment: dict, rings: _Rings, allowed: dict, angle_tolerance: float) -> tuple[int, int]:
    """Pairs of assigned reflections whose angle the lattice allows, and pairs whose angle it contradicts."""
    if not allowed:
        return 0, 0
    good = bad = 0
    matched = [(p, fam) for k, fam in assignment.items() for p in rings.peaks[k]]
    for (p1, f1), (p2, f2) in itertools.combinations(matched, 2):
        if (f1, f2) not in allowed:
            continue
        angle = _fold(p1["angle"] - p2["angle"])
        if np.min(np.abs(allowed[(f1, f2)] - angle)) <= angle_tolerance:
            good += 1
        else:
            bad += 1
    return good, bad


def _hypothesis_key(assignment: dict, rings: _Rings, spacings: dict, allowed: dict, angle_tolerance: float) -> tuple:
    """Rank of an assignment, larger is better: ``(valid, -below, good - bad, strength, families)``.

    Valid: at least two families (one if only one spacing is given) and the angles do not contradict the
    lattice more often than they agree. ``below`` counts the unexplained rings below the lowest matched
    one: harmonics (222, 400, ...) mimic the lattice at twice the pixel size, so the hypothesis that leaves
    no significant reflection at a lower frequency than its own lowest one unexplained is preferred.
    """
    families = set(assignment.values())
    good, bad = _angle_score(assignment, rings, allowed, angle_tolerance)
    strength = sum(rings.strength[i] for i in assignment)
    valid = len(families) >= min(2, len(spacings)) and good >= bad
    lowest = min((rings.frequency[i] for i in assignment), default=0.0)
    below = sum(1 for i, fi in enumerate(rings.frequency) if fi < lowest and i not in assignment)
    return valid, -below, good - bad, strength, len(families)


def _best_assignment(rings: _Rings, spacings: dict, tolerance: float, angle_tolerance: float) -> dict:
    """Step 4: the best (ring, spacing) hypothesis's assignment (:func:`_hypothesis_key`).

    Raises :class:`CalibrationError` when even the best is not valid, or leaves unexplained rings below
    the matched ones.
    """
    allowed = _allowed_angles(spacings)
    best = None
    for f in rings.frequency:
        for d in spacings.values():
            assignment = _assign(d * f, rings, spacings, tolerance)
            key = _hypothesis_key(assignment, rings, spacings, allowed, angle_tolerance)
            if best is None or key > best[0]:
                best = (key, assignment)
    (valid, below, *_), assignment = best
    found = ", ".join(f"{f:.4f}" for f in rings.frequency)
    if valid and below:
        lowest = min(rings.frequency[i] for i in assignment)
        raise CalibrationError(
            f"calibration failed: reflections below the matched ones (rings at {found} cycles/px; matched from "
            f"{lowest:.4f}) fit none of the spacings { {k: round(v, 4) for k, v in spacings.items()} } A; another "
            "phase? pass its spacings too"
        )
    if not valid:
        raise CalibrationError(
            f"calibration failed: the reflections found (at {found} cycles/px) do not match two of the spacings "
            f"{ {k: round(v, 4) for k, v in spacings.items()} } A consistently; one family alone is ambiguous "
            "(pass the pixel size, or a single known spacing)"
        )
    return assignment


def _matched_peaks(rings: _Rings, assignment: dict, spacings: dict) -> tuple[list[dict], list[dict]]:
    """The peaks of the assigned rings (with ``family``, ``spacing``, ``pixel_size``) and the other peaks.

    Several rings may claim one family (e.g. a second phase nearby): per family only the strongest ring
    is kept; the others count as unmatched.
    """
    by_family = {}
    for k, fam in assignment.items():
        if fam not in by_family or rings.strength[k] > rings.strength[by_family[fam]]:
            by_family[fam] = k
    keep = {k: fam for fam, k in by_family.items()}
    matched, unmatched = [], []
    for k, ring in enumerate(rings.peaks):
        for p in ring:
            if k in keep:
                d = spacings[keep[k]]
                matched.append({**p, "family": keep[k], "spacing": d, "pixel_size": d * p["frequency"]})
            else:
                unmatched.append(p)
    return matched, unmatched


def _estimate(matched: list[dict], bin_width: float) -> tuple[float, float]:
    """Step 5: the mean pixel size of the ``matched`` peaks and its standard uncertainty.

    The uncertainty combines the standard error of the mean and the peak-position precision (one bin /
    sqrt(12) per peak, averaged over the peaks) in quadrature.
    """
    values = np.array([p["pixel_size"] for p in matched])
    estimate = float(values.mean())
    n = values.size
    spread = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    mean_f = float(np.mean([p["frequency"] for p in matched]))
    position = estimate * (bin_width / math.sqrt(12)) / mean_f / math.sqrt(n)
    return estimate, math.hypot(spread, position)


def calibrate_pixel_size(
    image,
    *,
    spacings: dict | None = None,
    tolerance: float = 0.03,
    angle_tolerance: float = 3.0,
    false_alarm: float = 1e-3,
    min_frequency_bins: float = 4.0,
    max_frequency: float = 0.45,
) -> PixelSizeCalibration:
    """Pixel size from the lattice reflections of ``image``.

    Parameters
    ----------
    image : array_like or xarray.DataArray, shape (y, x) or (frame, y, x)
        Intensities; the power spectra of the frames are averaged (the lattice
        should not move by more than a fraction of a spacing between frames).
    spacings : dict, optional
        Known lattice spacings [A] by name. Names that are Miller indices of a
        cubic lattice (``"111"``, ``"2 0 0"``) also let the angles between
        reflections be checked. Default :data:`CEO2_SPACINGS`.
    tolerance : float
        Relative tolerance when matching ring radii to spacings.
    angle_tolerance : float
        Tolerance when comparing angles between reflections [deg].
    false_alarm : float
        Probability that pure noise produces a peak anywhere in the searched annulus.
    min_frequency_bins : float
        Frequencies below this many Fourier bins (of the shorter side) are not searched.
    max_frequency : float
        Largest frequency searched [cycles/px] (0.5 is Nyquist).

    Returns
    -------
    PixelSizeCalibration

    Raises
    ------
    CalibrationError
        When the image is blank, no significant reflections are found, or the
        reflections cannot be matched consistently to the spacings.
    ValueError
        For an invalid image or invalid parameters.

    Notes
    -----
    The steps are those of the module docstring's Method: 1. :func:`_spectrum`, 2. :func:`_noise_ratio`,
    3. :func:`_threshold` and :func:`_peaks`, 4. :func:`_rings`, :func:`_best_assignment` and
    :func:`_matched_peaks`, 5. :func:`_estimate`.
    """
    spacings = _checked_spacings(spacings, tolerance)
    arr = _nonblank_frames(image)
    spectrum = _spectrum(arr, min_frequency_bins, max_frequency)  # 1. power spectrum
    ratio = _noise_ratio(spectrum)  # 2. power / background
    threshold = _threshold(spectrum, false_alarm)  # 3. significant peaks
    peaks = _peaks(spectrum, ratio, threshold)
    rings = _rings(peaks, tolerance, spectrum.bin_width)  # 4. rings, and the best (ring, spacing) pair
    assignment = _best_assignment(rings, spacings, tolerance, angle_tolerance)
    matched, unmatched = _matched_peaks(rings, assignment, spacings)
    estimate, uncertainty = _estimate(matched, spectrum.bin_width)  # 5. the mean and its uncertainty
    return PixelSizeCalibration(
        pixel_size=estimate,
        uncertainty=uncertainty,
        peaks=sorted(matched, key=lambda p: -p["strength"]),
        unmatched=sorted(unmatched, key=lambda p: -p["strength"]),
        threshold=threshold,
        n_frames=spectrum.n_frames,
    )


def estimate_dose(image, *, mask=None, offset: float = 0.0) -> float:
    """Dose ``lambda`` [electrons per pixel] of an image whose grey values are ``gain * counts + offset``.

    Under Poisson statistics ``counts ~ Poisson(lambda * c)``, so over a region
    of constant ``c`` the grey values have ``mean = gain * lambda * c + offset``
    and ``variance = gain**2 * lambda * c``: the gain is ``variance / (mean -
    offset)`` and the dose there is ``(mean - offset)**2 / variance``. For
    vacuum (``c = 1``) that is ``lambda`` itself.

    Parameters
    ----------
    image : array_like, shape (y, x) or (frame, y, x)
        Grey values. With several frames the variance is taken over time at
        each pixel (which removes the object's contrast from it), else over
        the region.
    mask : array_like of bool, shape (y, x), optional
        The region to use, ideally vacuum (default: the whole frame, which
        over-estimates the variance by the object's contrast and so
        *under*-estimates lambda unless frames are given).
    offset : float
        Grey value of zero electrons (dark level), when known.

    Returns
    -------
    float
        Estimated electrons per pixel of constant intensity.

    Notes
    -----
    Valid only when the grey values are an affine map of counts. Detector
    blur (a modulation transfer function) correlates neighbouring pixels and
    lowers the variance, so lambda is *over*-estimated; non-linear display
    rescaling, clipping at 0 or 255, or drift between frames break it.

    Raises
    ------
    ValueError
        When the region is empty, has no variance, or its mean is not above ``offset``.
    """
    arr = np.asarray(getattr(image, "values", image), dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D image or a (frame, y, x) stack, got shape {arr.shape}")
    region = np.ones(arr.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    if region.shape != arr.shape[1:]:
        raise ValueError(f"mask of shape {region.shape} does not match the frames {arr.shape[1:]}")
    if region.sum() < 2:
        raise ValueError("the region for the dose estimate has fewer than 2 pixels")
    values = arr[:, region] - offset
    mean = float(values.mean())
    if arr.shape[0] > 1:
        variance = float(values.var(axis=0, ddof=1).mean())
    else:
        variance = float(values.var(ddof=1))
    if not mean > 0:
        raise ValueError(f"the mean grey value ({mean + offset:.4g}) is not above the offset ({offset:.4g})")
    if not variance > 0:
        raise ValueError("the region has no variance: cannot estimate a Poisson dose (noise-free or clipped data?)")
    return mean**2 / variance


#: Where the reflections of CeO2 seen along [110] lie relative to the [001] direction in the image plane
#: [deg]: {200} along it, {220} across it, {111} at +-54.74 deg (the angle between (1-11) and (002)).
ZONE_110_OFFSETS = {"111": (math.degrees(math.acos(1 / math.sqrt(3))), -math.degrees(math.acos(1 / math.sqrt(3)))),
                    "200": (0.0,), "220": (90.0,)}


@dataclass
class LatticeOrientation:
    """Result of :func:`estimate_orientation`.

    Attributes
    ----------
    angle : float
        Direction of CeO2 [001] in the image plane [deg, 0-180], from +x towards +y (the row index grows
        downwards, so on a displayed image the angle is clockwise). The shipped models were trained with
        [001] along y (90 deg) and [1-10] along x.
    uncertainty : float
        Strength-weighted scatter of the agreeing reflections about ``angle`` [deg] (0 for one reflection).
    peaks : list of dict
        The reflections that agree (as :attr:`PixelSizeCalibration.peaks`, with ``family`` and ``implied``, the
        [001] direction each implies [deg]).
    ambiguous : bool
        Only one {111} reflection pair agrees: the [001] direction is one of two, 109.47 deg apart, and
        ``angle`` is the first.
    """

    angle: float
    uncertainty: float
    peaks: list = field(default_factory=list)
    ambiguous: bool = False

    def rotation_to(self, target: float = 90.0) -> float:
        """The in-plane rotation [deg, in [-90, 90)] that takes [001] from ``angle`` to ``target``."""
        return rotation_between(self.angle, target)

    def __str__(self) -> str:
        families = sorted({p["family"] for p in self.peaks})
        flag = ", ambiguous" if self.ambiguous else ""
        return (f"[001] at {self.angle:.1f} +- {self.uncertainty:.1f} deg from x (towards y) from "
                f"{len(self.peaks)} reflections ({', '.join('{' + f + '}' for f in families)}{flag})")


def rotation_between(angle, target):
    """The smallest turn [deg, in [-90, 90)] that takes a line at ``angle`` to one at ``target`` [deg] (a float,
    or an array for array input)."""
    turn = _line_difference(target, angle)
    return float(turn) if np.ndim(turn) == 0 else turn


def _line_difference(a, b):
    """Signed difference of two line directions [deg], in [-90, 90)."""
    return (np.asarray(a, float) - b + 90.0) % 180.0 - 90.0


def estimate_orientation(
    image,
    pixel_size: float,
    *,
    lattice_constant: float = CEO2_LATTICE_CONSTANT,
    tolerance: float = 0.03,
    angle_tolerance: float = 3.0,
    false_alarm: float = 1e-3,
    min_frequency_bins: float = 4.0,
    max_frequency: float = 0.45,
) -> LatticeOrientation:
    """In-plane direction of [001] of a fluorite (CeO2) crystal seen along [110], from its power spectrum.

    The reflections are found as in :func:`calibrate_pixel_size` (steps 1-3, frames averaged); those within
    ``tolerance`` of the {111}, {200} and {220} spacings at the known ``pixel_size`` each imply the [001]
    direction (:data:`ZONE_110_OFFSETS`: a {111} reflection two). The direction that the most reflection
    strength agrees with (within ``angle_tolerance``) wins; the estimate is the strength-weighted mean of the
    agreeing directions.

    Parameters
    ----------
    image : array_like or xarray.DataArray, shape (y, x) or (frame, y, x)
    pixel_size : float
        [A].
    lattice_constant : float
        Of the fluorite lattice [A] (CeO2 5.411).

    Returns
    -------
    LatticeOrientation

    Raises
    ------
    CalibrationError
        When the image shows no reflection at a {111}, {200} or {220} spacing.
    ValueError
        For an invalid image or pixel size.
    """
    from segdepth.data.io import check_pixel_size

    pixel_size = check_pixel_size(pixel_size, name="pixel_size")
    spacings = {k.split()[-1]: v for k, v in cubic_spacings("CeO2", lattice_constant=lattice_constant).items()}
    arr = _nonblank_frames(image)
    spectrum = _spectrum(arr, min_frequency_bins, max_frequency)
    ratio = _noise_ratio(spectrum)
    # only the three rings are searched, so fewer bins are tested and weaker reflections are significant
    rings = np.zeros_like(spectrum.annulus)
    for d in spacings.values():
        f = pixel_size / d
        rings |= np.abs(spectrum.radius - f) <= tolerance * f + spectrum.bin_width
    searched = replace(spectrum, annulus=spectrum.annulus & rings, half=spectrum.half & rings)
    if not searched.half.any():
        raise CalibrationError(f"orientation failed: the CeO2 spacings lie outside the searched frequencies at "
                               f"{pixel_size:.4g} A per pixel (the image is too coarse or too small)")
    peaks = _peaks(searched, np.where(searched.annulus, ratio, 0.0), _threshold(searched, false_alarm))
    votes = []  # (peak index, family, implied direction): a {111} peak votes twice
    for k, p in enumerate(peaks):
        d = pixel_size / p["frequency"]
        family = min(spacings, key=lambda name: abs(d / spacings[name] - 1))
        if abs(d / spacings[family] - 1) <= tolerance:
            votes += [(k, family, (p["angle"] + off) % 180.0) for off in ZONE_110_OFFSETS[family]]
    if not votes:
        raise CalibrationError(
            f"orientation failed: no reflection at the CeO2 {{111}}, {{200}} or {{220}} spacings "
            f"({', '.join(f'{v:.3f}' for v in spacings.values())} A) at {pixel_size:.4g} A per pixel")
    implied = np.array([v[2] for v in votes])
    strength = np.array([peaks[v[0]]["strength"] for v in votes])
    ident = np.array([v[0] for v in votes])

    def support(direction):
        near = np.abs(_line_difference(implied, direction)) <= angle_tolerance
        chosen = {}  # one vote per reflection (its closest implied direction)
        for k in np.flatnonzero(near):
            if ident[k] not in chosen or abs(_line_difference(implied[k], direction)) < abs(
                    _line_difference(implied[chosen[ident[k]]], direction)):
                chosen[ident[k]] = k
        return sorted(chosen.values())

    scores = [strength[support(a)].sum() for a in implied]
    best = int(np.argmax(scores))
    agree = support(implied[best])
    offsets = _line_difference(implied[agree], implied[best])
    weights = strength[agree]
    angle = float((implied[best] + np.average(offsets, weights=weights)) % 180.0)
    spread = float(np.sqrt(np.average(_line_difference(implied[agree], angle) ** 2, weights=weights)))
    families = {votes[k][1] for k in agree}
    ambiguous = families == {"111"} and len(agree) == 1
    return LatticeOrientation(
        angle=angle, uncertainty=spread, ambiguous=ambiguous,
        peaks=[{**peaks[votes[k][0]], "family": votes[k][1], "implied": float(implied[k])} for k in agree])
