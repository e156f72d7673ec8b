"""Where the depth estimate applies: a crystal map, a validity map with its reason, and a one-line summary.

The network answers for every pixel, also where its assumptions do not hold. :func:`predict_checked`
runs :func:`segdepth.learn.inference.predict` and then asks four questions of every label pixel:

1. **Is there crystal nearby?** :func:`segdepth.data.lattice.local_lattice` finds the lattice in 12 A
   windows of the image (averaged over ``lattice_average`` neighbouring frames of a movie). Pixels
   farther than ``margin`` (4 A) from any window that holds a lattice are *vacuum*: their depth is
   reported as 0 and their confidence as the network's probability of 0 atoms. The margin keeps the
   outermost, weakly diffracting columns of a particle (a lattice is seen only about 2-3 A outside
   its edge). Under a large focal spread a small particle's fringes can stay below the lattice
   threshold in a single frame, so the crystal region also grows from the network's own readings,
   by hysteresis: pixels where it is sure of a column (probability of a non-zero count >=
   ``keep_confident``, 0.97) are seeds like the lattice, and every column reading (probability >=
   ``keep_connected``, 0.5: every pixel the network reads as non-zero) joined to a seed through
   other readings, across gaps up to ``bridge`` (2 A), is kept. Measured on the shift preset
   (``benchmarks/validity_checks.py``, 4 particles each of seeds 911 and 913, lambda 0.3-10): the lattice
   mask with seeds alone lost up to 29 of 248 and 17 of 277 columns the network read, with the
   hysteresis none. In a movie the column probability that decides is averaged over the same
   ``lattice_average`` frames as the lattice maps: the network's false columns in vacuum flicker
   from frame to frame, a column does not (the real movie's vacuum band: single-frame hysteresis
   keeps false columns in 5 % of the band's pixels in its worst frame, over 5 frames 0.9 %). ``reach`` (default
   :data:`REACH`, no limit) keeps only grown readings within that distance of a seed: 2 A halves the single real
   frames' false columns but lost 2 columns of a fresh shifted particle set at lambda 0.3, so it is an option
   (``segdepth predict --reach``), not the default (README, "How far the hysteresis may grow").
2. **Is the lattice CeO2 seen along [110]?** Where the local power spectrum holds a spacing or an
   angle that refutes it (Pt {111}, a spacing between the CeO2 rings, a wrong angle between two
   reflections), the pixel is *other lattice*: not valid.
3. **Does the model agree with itself?** With ``tta=True`` the frame is also predicted rotated by
   180 degrees (the CeO2 [110] projection is centrosymmetric and the training optics had random
   azimuths, so the rotated frame is as valid an input as the original); where the expected counts
   of the two passes, averaged over 3 x 3 label pixels, differ by more than ``max_disagreement``
   (1 atom), the pixel is *model disagreement*: not valid. The reported estimate (``depth``,
   ``confidence``, ``probability``) is then the mean of the two passes' probabilities: on the shift
   test this counts 0.5-2 points more columns exactly than the single pass at no extra cost
   (README, "The robust default").

4. **Was this lattice read at the orientation the network knows?** :func:`segdepth.learn.inference.predict`
   turns the frames so that the lattice's [001] lies where it did in training (one turn per frame).
   Where a strong lattice window (:data:`STRONG_LATTICE` x the lattice threshold) holds a CeO2
   reflection that puts [001], as read, more than :data:`MAX_MISFIT` (15) degrees away from it
   (:func:`orientation_misfit`), the pixel is *turned lattice*: another grain, not valid. Measured on
   the fresh4 shift tests (12 images each, lambda 1-10, static, vibrating and turned by 30 degrees):
   0-0.04 % of the CeO2 [110] pixels flagged; weak windows (1.1 % of the pixels at lambda 2.5 have a
   strongest reflection that implies a wrong direction) are not used.

5. **Was the frame imaged in the contrast regime the network knows?** Every counting model was trained on
   overfocused images (bright columns); an underfocused frame (the other defocus sign) is read confidently and
   wrongly. The regime model of :mod:`segdepth.learn.regime` gives every label pixel a probability of
   underfocus; its mean over a frame's crystal pixels is ``underfocus_score`` (in a movie averaged over the
   same ``lattice_average`` frames as the lattice maps). Above :data:`segdepth.learn.regime.MAX_UNDERFOCUS`
   (0.5) :func:`predict_checked` warns (``regime="warn"``, the default) or, with ``regime="flag"``, makes the
   frame's crystal *wrong focus*: not valid. Not flagged by default because the real Pt/CeO2 movie's CeO2
   support scores 0.99 although its columns look bright (README, "The contrast regime"): on simulations the
   check separates the two signs of the defocus, on that real movie it is not yet trusted.

6. **Was the frame recorded at the high tension the network knows?** Every model was trained on 300 kV
   images; :func:`segdepth.learn.inference.predict` compares the frames' beam energy (what the file states,
   :func:`segdepth.data.io.read_image`, or ``beam_energy=``) with the card's and warns about any other. At or
   below :data:`segdepth.learn.inference.MIN_BEAM_ENERGY` (120 kV) the crystal is *beam energy*: not valid (on
   simulations the count sets there held the truth in only 0.53-0.81 of the columns; at 200 kV in 0.98-1.00 with
   14-29 points fewer exact counts: a warning; README, "Other microscopes").

A frame in which no window holds a lattice gets reason *no crystal* everywhere (valid 0): a field
of vacuum, amorphous material, or a frame too noisy to see a lattice in.

The output keeps ``depth`` and ``confidence`` (after the vacuum mask) and adds ``depth_low`` and
``depth_high`` (uint8: the smallest and largest count of each pixel's 90 % count set,
:func:`segdepth.data.tracking.count_range`, with the probability mass calibrated for the shipped pair or model,
:func:`pair_set_mass`, recorded as the attribute ``count_set_mass``; 0 in vacuum: the range a user should read
instead of one count, README "Count sets that keep their promise"), ``valid`` (uint8 0/1),
``valid_reason`` (uint8 flags, :data:`REASONS`), the scores behind them ``lattice_score``,
``ceo2_score`` and ``disagreement`` [atoms] (``margin=None`` keeps the network's raw depth, to
compare). :func:`summary` says in one line how much of
the frames could not be vouched for.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = ["BRIDGE", "KEEP_CONFIDENT", "KEEP_CONNECTED", "MARGIN", "MAX_DISAGREEMENT", "REACH", "REASONS",
           "REFUTE_FRACTION", "REFUTE_RADIUS", "assess", "crystal_region", "pair_set_mass", "predict_checked",
           "rotated_180", "summary", "validity_fractions"]

#: Distance [A] from the nearest lattice window beyond which a pixel is vacuum (depth reported as 0).
MARGIN = 4.0
#: Largest difference of the expected count [atoms] between the two test-time passes that is still valid.
MAX_DISAGREEMENT = 1.0
#: Probability of a column (1 - p(0 atoms)) above which the network's reading is kept outside the lattice mask.
KEEP_CONFIDENT = 0.97
#: Probability of a column above which a reading joined to the crystal (a lattice or a confident reading) is kept.
KEEP_CONNECTED = 0.5
#: Largest gap [A] between column readings (or a reading and the crystal) that still joins them.
BRIDGE = 2.0
#: Largest distance [A] from a seed (lattice mask or confident reading) of a reading kept by the hysteresis
#: (``None``: no limit).
REACH = None
#: A grain is seen along one zone axis: a crystal pixel more than :data:`REFUTE_FRACTION` of whose lattice windows
#: within this radius [A] refute CeO2 [110] (other lattice, turned lattice) is other lattice too (``None``: each
#: window judged alone). Decided by the rule of ``make zone-check`` (README, "Other zone axes").
REFUTE_RADIUS = None
REFUTE_FRACTION = 0.3
#: ``valid_reason`` flags; 0 and 1 are valid (a count, or vacuum reported as vacuum).
#: A strong lattice window (peak / background above this multiple of the lattice threshold) whose CeO2 [110]
#: lattice the network read more than :data:`MAX_MISFIT` degrees away from its training orientation is not
#: valid (``turned_lattice``: another grain, turned otherwise than the one :func:`predict` turned the frame for).
STRONG_LATTICE = 2.0
MAX_MISFIT = 15.0
REASONS = {0: "ceo2_110", 1: "vacuum", 2: "other_lattice", 3: "model_disagreement", 4: "no_crystal",
           5: "turned_lattice", 6: "wrong_focus", 7: "beam_energy"}
_VALID_REASONS = (0, 1)


def orientation_misfit(spacing, angle, rotation: float = 0.0, trained: float = 90.0) -> np.ndarray:
    """Per pixel: how far [deg, 0-90] the local CeO2 [110] lattice, as the network read it, is turned from
    the orientation it was trained at.

    ``spacing`` and ``angle`` are the lattice maps' reference spacing [A] and direction [deg] of the strongest
    reflection (:func:`segdepth.data.lattice.local_lattice`); each CeO2 family implies the direction of [001]
    (:data:`segdepth.data.calibration.ZONE_110_OFFSETS`; a {111} reflection two, the nearer counts), which the
    reading turned by ``rotation`` [deg] (:func:`segdepth.learn.inference.predict`'s ``orientation``
    attribute). NaN where the strongest reflection is not a CeO2 one (Pt {200}, 1.962 A, which the lattice
    maps cannot tell from CeO2 {220}, counts as {220}).
    """
    from segdepth.data.calibration import CEO2_SPACINGS, ZONE_110_OFFSETS, rotation_between

    spacing, angle = np.asarray(spacing, float), np.asarray(angle, float)
    misfit = np.full(np.broadcast(spacing, angle).shape, np.nan)
    for family, d in CEO2_SPACINGS.items():  # within 3 %: the maps may name CeO2 {220} by Pt {200}'s 1.962 A
        at = np.abs(spacing - d) < 0.03 * d
        for offset in ZONE_110_OFFSETS[family]:
            m = np.abs(rotation_between(angle + offset + rotation, trained))
            misfit = np.where(at, np.fmin(misfit, m), misfit)
    return misfit


def _expected(probability: np.ndarray) -> np.ndarray:
    classes = np.arange(probability.shape[-3], dtype=np.float32)
    return np.tensordot(classes, probability, axes=([0], [-3]))


def rotated_180(image: xr.DataArray) -> xr.DataArray:
    """The frames rotated by 180 degrees on the same coordinates."""
    return image.copy(data=np.ascontiguousarray(image.values[..., ::-1, ::-1]))


def _disc(radius: float) -> np.ndarray:
    n = int(math.ceil(radius))
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return yy**2 + xx**2 <= radius**2


def crystal_region(seeds: np.ndarray, readings: np.ndarray, bridge: float, reach: float | None = None) -> np.ndarray:
    """Hysteresis: ``seeds`` with every pixel of ``readings`` joined to them across gaps up to ``bridge`` pixels.

    ``seeds`` and ``readings`` are boolean ``(frame, y, x)`` maps. Pixels of ``seeds | readings`` closer than
    ``bridge`` (a disc of radius ``bridge / 2`` around each, 8-connectivity) belong to one region; the
    readings of a region that holds a seed are kept, with ``reach`` only those within ``reach`` pixels of a
    seed. The result holds every seed and adds only readings.
    """
    structure = _disc(bridge / 2)
    out = seeds.copy()
    for f in range(seeds.shape[0]):
        either = seeds[f] | readings[f]
        labels, _ = ndimage.label(ndimage.binary_dilation(either, structure), structure=np.ones((3, 3), bool))
        touched = np.unique(labels[seeds[f]])
        grown = readings[f] & np.isin(labels, touched[touched > 0])
        if reach is not None and seeds[f].any():
            grown &= ndimage.distance_transform_edt(~seeds[f]) <= reach
        out[f] |= grown
    return out


def _check(name: str, value, *, allow_none: bool = False, positive: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def assess(
    image: xr.DataArray,
    prediction: xr.Dataset,
    *,
    rotated: xr.Dataset | None = None,
    lattice: xr.Dataset | None = None,
    lattice_average: int = 1,
    margin: float | None = MARGIN,
    max_disagreement: float = MAX_DISAGREEMENT,
    keep_confident: float | None = KEEP_CONFIDENT,
    keep_connected: float | None = KEEP_CONNECTED,
    bridge: float = BRIDGE,
    reach: float | None = REACH,
    count_set_mass: float | None = None,
    underfocus=None,
    max_underfocus: float | None = None,
    flag_underfocus: bool = True,
    quasi=None,
    refute_radius: float | None = REFUTE_RADIUS,
    refute_fraction: float = REFUTE_FRACTION,
) -> xr.Dataset:
    """Add the crystal mask, ``valid``, ``valid_reason`` and their scores to a prediction.

    Parameters
    ----------
    image : xarray.DataArray
        The frames that were predicted, dims ``(frame, y, x)`` or ``(y, x)``, with ``pixel_size``.
    prediction : xarray.Dataset
        :func:`segdepth.learn.inference.predict` of ``image`` with ``return_probabilities=True``.
    rotated : xarray.Dataset, optional
        The same for ``image`` rotated by 180 degrees (:func:`predict_checked` makes it); without it
        there is no disagreement test and ``disagreement`` is NaN.
    lattice : xarray.Dataset, optional
        :func:`segdepth.data.lattice.local_lattice` of ``image`` (computed when not given).
    lattice_average : int
        Odd number of neighbouring frames averaged for the lattice maps.
    margin : float or None
        Vacuum beyond this distance [A] from a lattice window; ``None`` keeps the network's depth everywhere
        (the crystal map is still computed and reported).
    max_disagreement : float
        Largest valid difference of the two passes' expected counts [atoms].
    keep_confident : float or None
        Outside the lattice mask, keep the pixels where the network's probability of a column is at least
        this (default 0.97); ``None`` masks them too. Averaged over ``lattice_average`` frames.
    keep_connected : float or None
        Also keep the readings with a column probability at least this (default 0.5) joined to the lattice
        mask or to a kept confident reading (:func:`crystal_region`); ``None``: no growth.
    bridge : float
        Largest gap [A] between readings that still joins them (default 2 A).
    reach : float or None
        Largest distance [A] from a seed (the lattice mask or a confident reading) of a reading the hysteresis
        keeps (default :data:`REACH`); ``None``: as far as the readings are joined.
    count_set_mass : float, optional
        Probability mass of the 90 % count sets (``depth_low`` / ``depth_high``; recorded as the attribute
        ``count_set_mass``). Default: without ``rotated``, the one-pass mass calibrated for the model
        (:func:`segdepth.data.tracking.count_set_mass`); with it, 0.9 (:func:`predict_checked` passes the
        mass calibrated for the shipped pair).
    underfocus : array-like, optional
        Probability of underfocus of every label pixel, ``(frame, y, x)``
        (:func:`segdepth.learn.regime.underfocus_probability`); its mean over each frame's crystal pixels is
        ``underfocus_score``, and a frame scoring above ``max_underfocus`` (default
        :data:`segdepth.learn.regime.MAX_UNDERFOCUS`) is named in a warning and, with ``flag_underfocus``
        (default), gets the reason ``wrong_focus`` on its crystal.
    quasi : array-like, optional
        Probability of abTEM's quasi-coherent focal-spread envelope at every label pixel, ``(frame, y, x)``
        (:func:`segdepth.learn.regime.regime_probability` of the coherence model); its mean over each frame's crystal
        is ``quasi_score``, and the frames scoring above :data:`segdepth.learn.regime.MAX_QUASI` are named in a
        warning (never flagged: the envelope is a simulation shortcut, not a microscope's property).
    refute_radius, refute_fraction : float or None, float
        Neighbourhood of a grain (:data:`REFUTE_RADIUS`, :data:`REFUTE_FRACTION`): a crystal pixel more than
        ``refute_fraction`` of whose lattice windows within ``refute_radius`` A refute CeO2 [110] (another
        lattice, or a lattice turned away from the model's orientation) is *other lattice* too. A CeO2 grain seen
        along [100], [111] or [112] refutes [110] in many windows but not in all (a single fringe family fits
        [110]); ``None`` judges every window alone.

    Returns
    -------
    xarray.Dataset
        ``prediction`` with ``depth`` and ``confidence`` masked as described in the module docstring and
        ``depth_low``, ``depth_high`` (uint8, the 90 % count set's range), ``crystal`` (uint8 0/1), ``valid``
        (uint8), ``valid_reason`` (uint8), ``lattice_score``, ``ceo2_score``
        and ``disagreement`` (float32) added.
    """
    from segdepth.data.lattice import local_lattice, on_grid, temporal_mean
    from segdepth.data.tracking import COUNT_SET_LEVEL, count_range
    from segdepth.data.tracking import count_set_mass as prediction_mass

    if "probability" not in prediction:
        raise ValueError("prediction must hold 'probability' (predict(..., return_probabilities=True))")
    _check("margin", margin, allow_none=True)
    _check("max_disagreement", max_disagreement)
    _check("bridge", bridge, positive=False)
    if bridge < 0:
        raise ValueError(f"bridge must be a distance >= 0 [A], got {bridge!r}")
    _check("reach", reach, allow_none=True, positive=False)
    if reach is not None and reach < 0:
        raise ValueError(f"reach must be a distance >= 0 [A] or None, got {reach!r}")
    for name, value in (("keep_confident", keep_confident), ("keep_connected", keep_connected)):
        if value is not None and not (isinstance(value, int | float | np.number) and 0 < value <= 1):
            raise ValueError(f"{name} must be a probability in (0, 1] or None, got {value!r}")
    if count_set_mass is None:
        count_set_mass = prediction_mass(prediction) if rotated is None else COUNT_SET_LEVEL
    if not (isinstance(count_set_mass, int | float | np.number) and 0 < count_set_mass <= 1):
        raise ValueError(f"count_set_mass must be a probability in (0, 1], got {count_set_mass!r}")
    if image.ndim == 2:
        image = image.expand_dims("frame")
    n_frames = prediction.sizes["frame"]
    if image.shape[0] != n_frames:
        raise ValueError(f"image has {image.shape[0]} frames, the prediction {n_frames}")
    if lattice is None:
        try:
            lattice = local_lattice(image, average=lattice_average)
        except ValueError as err:
            if "smaller than" not in str(err):
                raise
            raise ValueError(f"{err}; the validity check cannot run on so small a field (--no-check, or "
                             "predict() instead of predict_checked(), gives the network's raw output)") from None
    if "frame" not in lattice.dims:
        lattice = lattice.expand_dims("frame")
    grid = on_grid(lattice, prediction["y"].values, prediction["x"].values)
    label_px = float(prediction.attrs["label_pixel_size"])

    probability = prediction["probability"].values  # (frame, class, y, x)
    p_rot = None
    if rotated is None:
        depth = prediction["depth"].values.copy()
        confidence = prediction["confidence"].values.copy()
    else:  # the estimate is the mean of the two passes (test-time augmentation)
        p_rot = rotated["probability"].values[..., ::-1, ::-1]
        if p_rot.shape != probability.shape:
            raise ValueError(f"rotated prediction has shape {p_rot.shape}, expected {probability.shape}")
        single = probability
        probability = 0.5 * (probability + p_rot)
        depth = probability.argmax(axis=1).astype(prediction["depth"].dtype)
        confidence = probability.max(axis=1).astype(prediction["confidence"].dtype)
    crystal_lattice = grid["crystal"].values.astype(bool)
    if margin is None:
        near = np.ones_like(crystal_lattice)
    else:
        disc = _disc(margin / label_px)
        near = np.stack([ndimage.binary_dilation(c, disc) for c in crystal_lattice])
        # the network's column readings, over the lattice maps' frames: false columns flicker, columns do not
        column = temporal_mean(1.0 - probability[:, 0], lattice_average)
        if keep_confident is not None:  # a confident column reading survives the mask (weak-contrast crystal)
            near = near | (column >= keep_confident)
        if keep_connected is not None:  # and so does every reading joined to the crystal (hysteresis)
            near = crystal_region(near, column >= keep_connected, bridge / label_px,
                                  None if reach is None else reach / label_px)
    vacuum = ~near
    depth[vacuum] = 0
    confidence[vacuum] = probability[:, 0][vacuum]
    depth_low, depth_high = (np.where(vacuum, 0, v).astype(np.uint8)
                             for v in count_range(np.moveaxis(probability, 1, -1), count_set_mass))  # classes last

    refuted = ~grid["ceo2_110"].values.astype(bool) & crystal_lattice
    reason = np.zeros(depth.shape, np.uint8)
    reason[vacuum] = 1
    if p_rot is not None:
        diff = _expected(single) - _expected(p_rot)
        disagreement = np.abs(ndimage.uniform_filter(diff, size=(1, 3, 3), mode="nearest")).astype(np.float32)
        reason[(disagreement > max_disagreement) & near] = 3
    else:
        disagreement = np.full(depth.shape, np.nan, np.float32)
    from segdepth.learn.inference import trained_orientation

    turned = json.loads(prediction.attrs.get("orientation") or "{}")
    trained = trained_orientation(json.loads(prediction.attrs.get("model_card") or "{}"))
    misfit = orientation_misfit(grid["spacing"].values, grid["angle"].values, float(turned.get("rotation") or 0.0),
                                trained)
    strong = grid["lattice_score"].values > STRONG_LATTICE * float(lattice.attrs.get("threshold", np.inf))
    turned_lattice = (misfit > MAX_MISFIT) & strong & crystal_lattice
    reason[turned_lattice & near] = 5
    from segdepth.learn.regime import MAX_QUASI, MAX_UNDERFOCUS, frame_scores

    max_underfocus = MAX_UNDERFOCUS if max_underfocus is None else max_underfocus
    if not (isinstance(max_underfocus, int | float | np.number) and 0 < max_underfocus < 1):
        raise ValueError(f"max_underfocus must be a probability in (0, 1), got {max_underfocus!r}")

    def score(probability) -> np.ndarray:  # a regime model's frame scores; NaN where it did not read the frames
        if probability is None:
            return np.full(n_frames, np.nan, np.float32)
        probability = np.asarray(probability, np.float32).reshape(depth.shape)  # over the lattice maps' frames:
        probability = temporal_mean(probability, lattice_average)  # one frame's noise does not decide alone
        return frame_scores(probability, near).astype(np.float32)

    underfocus_score, quasi_score = score(underfocus), score(quasi)
    if underfocus is not None and flag_underfocus:
        reason[(underfocus_score > max_underfocus)[:, None, None] & near] = 6
    if prediction.attrs.get("beam_energy_status") == "flagged":  # a high tension the counts do not hold at
        reason[near] = 7
    if refute_radius is not None:  # a grain is seen along one zone: where many lattice windows around refute [110]
        _check("refute_radius", refute_radius)
        if not (isinstance(refute_fraction, int | float | np.number) and 0 <= refute_fraction < 1):
            raise ValueError(f"refute_fraction must be a fraction in [0, 1), got {refute_fraction!r}")
        disc = _disc(refute_radius / label_px).astype(float)
        bad = (refuted | turned_lattice).astype(float)
        around = np.stack([ndimage.convolve(b, disc, mode="constant") for b in bad])
        lattice_around = np.stack([ndimage.convolve(c.astype(float), disc, mode="constant") for c in crystal_lattice])
        share = np.divide(around, lattice_around, out=np.zeros_like(around), where=lattice_around > 0)
        reason[(share > refute_fraction) & near & (reason != 1)] = 2
    reason[refuted & near] = 2
    no_crystal = ~crystal_lattice.any(axis=(1, 2))
    reason[no_crystal] = 4
    valid = np.isin(reason, _VALID_REASONS).astype(np.uint8)

    out = prediction.copy()
    dims = ("frame", "y", "x")
    if p_rot is not None:
        out["probability"] = prediction["probability"].copy(data=probability.astype(np.float32))
    out["depth"] = (dims, depth, prediction["depth"].attrs | {
        "comment": f"0 where no lattice is within {margin} A (vacuum)" if margin is not None else "unmasked"})
    out["confidence"] = (dims, confidence.astype(np.float32), prediction["confidence"].attrs)
    for name, values, end in (("depth_low", depth_low, "smallest"), ("depth_high", depth_high, "largest")):
        out[name] = (dims, values, {"units": "atoms", "long_name": f"{end} count of the {COUNT_SET_LEVEL:.0%} count "
                                    "set (0 in vacuum)" + ("; 10: 10 or more" if name == "depth_high" else ""),
                                    "set_mass": float(count_set_mass)})
    out.attrs["count_set_mass"] = float(count_set_mass)
    out["crystal"] = (dims, near.astype(np.uint8),
                      {"long_name": f"a lattice within {margin} A (not vacuum)", "units": "1"})
    out["valid"] = (dims, valid, {"long_name": "the estimate applies here (a CeO2 [110] count, or vacuum)",
                                  "units": "1"})
    out["valid_reason"] = (dims, reason, {
        "long_name": "why a pixel is or is not valid", "units": "1",
        "flag_values": np.array(list(REASONS), np.uint8), "flag_meanings": " ".join(REASONS.values())})
    out["lattice_score"] = (dims, grid["lattice_score"].values.astype(np.float32),
                            dict(grid["lattice_score"].attrs))
    out["ceo2_score"] = (dims, grid["ceo2_score"].values.astype(np.float32), dict(grid["ceo2_score"].attrs))
    out["disagreement"] = (dims, disagreement, {
        "long_name": "|expected count - expected count of the 180-degree-rotated frame|, 3x3 mean", "units": "atoms"})
    out["underfocus_score"] = (("frame",), underfocus_score, {
        "long_name": "mean probability over the frame's crystal that it was imaged underfocused (NaN: not checked)",
        "units": "1", "threshold": float(max_underfocus)})
    out["quasi_score"] = (("frame",), quasi_score, {
        "long_name": "mean probability over the frame's crystal that it was simulated with abTEM's quasi-coherent "
                     "focal-spread envelope (NaN: not checked)", "units": "1", "threshold": float(MAX_QUASI)})
    out.attrs.update(validity_margin=-1.0 if margin is None else float(margin),
                     validity_keep_confident=-1.0 if keep_confident is None else float(keep_confident),
                     validity_keep_connected=-1.0 if keep_connected is None else float(keep_connected),
                     validity_bridge=float(bridge), validity_reach=-1.0 if reach is None else float(reach),
                     validity_refute_radius=-1.0 if refute_radius is None else float(refute_radius),
                     validity_refute_fraction=float(refute_fraction),
                     validity_max_disagreement=float(max_disagreement),
                     validity_max_underfocus=float(max_underfocus),
                     validity_regime=("off" if underfocus is None else "flag" if flag_underfocus else "warn"),
                     validity_tta=int(rotated is not None), validity_lattice_average=int(lattice_average),
                     lattice_threshold=float(lattice.attrs.get("threshold", np.nan)))
    if no_crystal.any():
        warnings.warn(f"no crystal lattice found in {_frames_named(prediction, no_crystal)}: "
                      "counts there are not valid (valid = 0)", stacklevel=2)
    wrong = underfocus_score > max_underfocus
    if wrong.any():
        then = ("counts there are not valid (valid = 0)" if flag_underfocus else
                "check the defocus sign (the real Pt/CeO2 movie's CeO2 support scores so too; README, 'The contrast "
                "regime'); regime='flag' (segdepth predict --regime flag) makes them not valid")
        warnings.warn(f"{_frames_named(prediction, wrong)} look underfocused to the regime model (score "
                      f"above {max_underfocus:g}; the counting models know overfocused images only): {then}",
                      stacklevel=2)
    quasi_like = quasi_score > MAX_QUASI
    if quasi_like.any():
        warnings.warn(f"{_frames_named(prediction, quasi_like)} look made with abTEM's quasi-coherent focal-spread "
                      f"envelope to the coherence model (score above {MAX_QUASI:g}; thick regions darker than in the "
                      "incoherent defocus average the counting models know): their counts are unreliable (0.17-0.35 "
                      "exact on such simulations; some frames of the real Pt/CeO2 movie score so too; README, 'The "
                      "coherence check')", stacklevel=2)
    return out


def _frames_named(prediction: xr.Dataset, which: np.ndarray) -> str:
    """``"N of M frames (f1, f2, ...)"`` for the frames selected by the boolean ``which`` (at most 10 named)."""
    frames = [int(f) for f in np.asarray(prediction["frame"].values)[which]]
    shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
    return f"{len(frames)} of {which.size} frames ({shown})"


def check_same_grid(card: dict, rotated_card: dict) -> None:
    """Raise ``ValueError`` unless a second model (``rotated_card``) predicts on the grid of ``card``."""
    for key in ("sampling", "label_factor"):
        if rotated_card.get(key) != card.get(key):
            raise ValueError(f"rotated_model predicts on another grid: {key} {rotated_card.get(key)!r} in its "
                             f"card, {card.get(key)!r} in the model's")


def pair_set_mass(card: dict, rotated_card: dict) -> float:
    """Probability mass of the 90 % count sets for ``card``'s model averaged with ``rotated_card``'s.

    The mass calibrated for that pair (``count_sets`` in ``card``: ``mass.with_second_model``, valid when the
    second model's card is the shipped ``count_sets.second_model``'s, ``benchmarks/count_set_calibration.py``),
    else 0.9 (:data:`segdepth.data.tracking.COUNT_SET_LEVEL`: the probabilities taken at their word).
    """
    import json

    from segdepth.data.tracking import COUNT_SET_LEVEL
    from segdepth.learn.inference import MODELS_DIR
    from segdepth.learn.modelio import card_path

    sets = card.get("count_sets") or {}
    second, mass = sets.get("second_model"), (sets.get("mass") or {}).get("with_second_model")
    if not second or mass is None:
        return COUNT_SET_LEVEL
    path = card_path(MODELS_DIR / second)
    if not path.is_file() or json.loads(path.read_text()) != rotated_card:
        return COUNT_SET_LEVEL
    return float(mass)


def predict_checked(
    image,
    model=None,
    card: dict | None = None,
    *,
    pixel_size: float | None = None,
    as_signals: bool = False,
    tta: bool = True,
    lattice_average: int = 1,
    margin: float | None = MARGIN,
    max_disagreement: float = MAX_DISAGREEMENT,
    keep_confident: float | None = KEEP_CONFIDENT,
    keep_connected: float | None = KEEP_CONNECTED,
    bridge: float = BRIDGE,
    reach: float | None = REACH,
    return_probabilities: bool = False,
    rotated_model=None,
    rotated_card: dict | None = None,
    regime: str = "warn",
    regime_model=None,
    max_underfocus: float | None = None,
    coherence_model=None,
    refute_radius: float | None = REFUTE_RADIUS,
    refute_fraction: float = REFUTE_FRACTION,
    **options,
) -> xr.Dataset:
    """:func:`segdepth.learn.inference.predict` followed by :func:`assess` (and a 180-degree pass when ``tta``).

    ``image``, ``model``, ``card`` and ``pixel_size`` are as for :func:`~segdepth.learn.inference.predict`
    (an ``xarray.DataArray``, a numpy array or a HyperSpy ``Signal2D``; the shipped default model when
    ``model`` and ``card`` are ``None``); ``options`` go to it too. ``as_signals`` returns the maps as HyperSpy
    signals (:func:`segdepth.data.hyperspy.to_signals`: ``depth``, ``confidence``, ``valid``, ``valid_reason``)
    instead of the dataset. Costs: the lattice maps take about 1.4 s per frame on 2 cores (a 180 x 180 frame
    at 0.2 A, or any frame resampled to 0.3 A); ``tta`` doubles the network's time.

    ``rotated_model`` and ``rotated_card`` (both or neither; with ``tta``): another model for the 180-degree pass,
    so that the reported probabilities are a two-model ensemble's and ``disagreement`` is between the two models.
    It must predict on the same grid (same pixel size and label factor in its card). With the shipped default
    (``model`` and ``card`` ``None``) and ``tta`` the second pass is the default's by default:
    :data:`segdepth.learn.inference.DEFAULT_ROTATED_MODEL`, the same weights reading the input divided by its
    local mean (README, "The default's second pass"); pass ``rotated_model="same"`` for the default's own
    180-degree pass. A model passed explicitly makes both passes unless ``rotated_model`` is given.

    ``regime``: ``"warn"`` (default) reads the frames also with the regime model (``regime_model``, a ``(model,
    card)`` pair; default the shipped one, :func:`segdepth.learn.regime.load_regime_model`, skipped where none is
    shipped), writes ``underfocus_score`` and warns about the frames scoring above ``max_underfocus``;
    ``"flag"`` also makes their crystal not valid (reason ``wrong_focus``); ``"off"`` does not read them. It
    reads the lattice turned as the counting model did. Unless ``"off"``, the coherence model (``coherence_model``,
    a ``(model, card)`` pair; default the shipped one, :data:`segdepth.learn.regime.COHERENCE_MODEL`, skipped where
    none is shipped) reads them too: ``quasi_score`` and a warning about the frames that look simulated with
    abTEM's quasi-coherent envelope (never a flag).
    """
    from segdepth.data.hyperspy import is_signal
    from segdepth.learn.inference import input_image, model_and_card, predict

    like = image if is_signal(image) else None
    image = input_image(image, pixel_size)
    if isinstance(rotated_model, str):
        if rotated_model != "same" or rotated_card is not None:
            raise ValueError(f"rotated_model must be a model or 'same', got {rotated_model!r}")
        rotated_model = None
    elif rotated_model is None and rotated_card is None and model is None and card is None and tta:
        rotated_model, rotated_card = model_and_card(None, None, rotated=True)
    model, card = model_and_card(model, card)
    if image.ndim == 2:
        image = image.expand_dims("frame")
    if (rotated_model is None) != (rotated_card is None):
        raise ValueError("pass both rotated_model and rotated_card, or neither (the same model for both passes)")
    if rotated_model is not None:
        if not tta:
            raise ValueError("rotated_model needs the 180-degree pass (tta=True)")
        check_same_grid(card, rotated_card)
    else:
        rotated_model, rotated_card = model, card
    if regime not in ("off", "warn", "flag"):
        raise ValueError(f"regime must be 'off', 'warn' or 'flag', got {regime!r}")
    for name, given in (("regime_model", regime_model), ("coherence_model", coherence_model)):
        if given is not None and not (isinstance(given, tuple) and len(given) == 2):
            raise ValueError(f"{name} must be a (model, card) pair, got {type(given).__name__}")
    underfocus = quasi = None
    with warnings.catch_warnings(record=True) as caught:  # every pass reads the same frames: warn once
        warnings.simplefilter("always")
        prediction = predict(image, model, card, return_probabilities=True, **options)
        rotated = (predict(rotated_180(image), rotated_model, rotated_card, return_probabilities=True, **options)
                   if tta else None)
        if regime != "off":
            from segdepth.learn.regime import cached_regime_model, regime_probability, underfocus_probability

            turned = json.loads(prediction.attrs.get("orientation") or "{}")
            keep = {k: options[k] for k in ("tile", "overlap", "batch_size", "fast") if k in options}
            keep["orientation"] = turned.get("angle") if turned.get("rotation") else None

            def on_grid(p):  # onto the counting model's label grid (the same for the shipped models: nothing moves)
                return p.sel(y=prediction["y"].values, x=prediction["x"].values, method="nearest").values

            pair = cached_regime_model() if regime_model is None else regime_model
            if pair is not None:
                underfocus = on_grid(underfocus_probability(image, *pair, **keep))
            pair = cached_regime_model(coherence=True) if coherence_model is None else coherence_model
            if pair is not None:
                quasi = on_grid(regime_probability(image, *pair, **keep))
    for message in dict.fromkeys((str(w.message), w.category) for w in caught):
        warnings.warn(message[0], message[1], stacklevel=2)
    mass = pair_set_mass(card, rotated_card) if tta and rotated_model is not model else None
    out = assess(image, prediction, rotated=rotated, lattice_average=lattice_average, margin=margin,
                 max_disagreement=max_disagreement, keep_confident=keep_confident, keep_connected=keep_connected,
                 bridge=bridge, reach=reach, count_set_mass=mass, underfocus=underfocus, max_underfocus=max_underfocus,
                 flag_underfocus=regime == "flag", quasi=quasi, refute_radius=refute_radius,
                 refute_fraction=refute_fraction)
    if not return_probabilities:
        out = out.drop_vars(["probability", "depth_class"])
    arguments = {"tta": bool(tta), "lattice_average": int(lattice_average), "margin": margin,
                 "max_disagreement": float(max_disagreement), "keep_confident": keep_confident,
                 "keep_connected": keep_connected, "bridge": float(bridge), "reach": reach,
                 "two_models": rotated_model is not model, "regime": regime if underfocus is not None else "off",
                 "refute_radius": refute_radius, "refute_fraction": float(refute_fraction)}

    out.attrs["validity_arguments"] = json.dumps(arguments)
    if as_signals:
        from segdepth.data.hyperspy import to_signals

        return to_signals(out, like)
    return out


def validity_fractions(ds: xr.Dataset) -> dict:
    """Fraction of all label pixels (all frames) of every ``valid_reason``, and of ``valid``."""
    reason = np.asarray(ds["valid_reason"].values)
    fractions = {name: float((reason == code).mean()) for code, name in REASONS.items()}
    fractions["valid"] = float(np.asarray(ds["valid"].values).mean())
    return fractions


def summary(ds: xr.Dataset) -> str:
    """One line: how much of the frames the estimate could not vouch for, and why."""
    f = validity_fractions(ds)
    not_valid = 1.0 - f["valid"]
    parts = [f"{100 * f[name]:.1f} % {name.replace('_', ' ')}" for name in ("other_lattice", "turned_lattice",
                                                                              "wrong_focus", "beam_energy",
                                                                              "model_disagreement", "no_crystal")
             if round(100 * f[name], 1) > 0]
    why = f" ({', '.join(parts)})" if parts else ""
    return (f"could not vouch for {100 * not_valid:.1f} % of the pixels{why}; "
            f"{100 * f['vacuum']:.1f} % vacuum (no lattice within the margin) reported as depth 0")
