"""The movie path of notebook 06 in one call, and its score on a simulated movie whose answer is known.

:func:`run_movie_path` is what notebook 06 does to the real movie: predict every frame with the validity
check, align the frames, predict the running averages of aligned frames (for the valid CeO2 region), average
the aligned single-frame estimates, find the columns in that region, track them and smooth their counts in
time. :func:`score_simulated_movie` compares that with the truth of :func:`segdepth.physics.simmovie.simulate_movie`:
which true columns were found (and how many found columns are real), whether they were named Ce or O
correctly, the per-frame and smoothed count accuracy, and for every scheduled one-atom change

- the delay until the posterior puts more than 0.5 (0.9) on the new count
  (:func:`segdepth.data.tracking.frames_to_detect_change`, offline smoothed and online filtered), and whether
  that is a change *seen* (the same posterior held the old count above the threshold before) or a column
  that was read at the new count before the change happened;
- the offset of the nearest one-atom step of the HMM-smoothed count (blind to a constant bias: a column
  read one atom low throughout still shows its loss as a step);
- the step of the per-frame expected count across the change, its frame-to-frame spread and the number of
  frames before and after it that a two-sample comparison needs to see that step at ``z`` standard errors.

:func:`run_simulated_movie` does both for a movie Dataset in one line.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from scipy.spatial import cKDTree

from segdepth.constants import SYMBOLS
from segdepth.data.tracking import (
    COUNT_SET_LEVEL,
    align_frames,
    count_range,
    find_columns,
    frames_to_detect_change,
    mean_estimate,
    shift_frames,
    smooth_counts,
    track_columns,
)

__all__ = ["NEVER", "column_table", "run_movie_path", "run_simulated_movie", "score_simulated_movie",
           "write_column_table"]

#: Delay recorded for a change that is never detected (delays of the smoothed posterior may be negative).
NEVER = -999
_MODES = ("smoothed", "filtered")
_THRESHOLDS = (0.5, 0.9)


def run_movie_path(image: xr.DataArray, model, card: dict, *, lam: float | None = None, average: int = 5,
                   lattice_average: int = 5, tta: bool = True, p_change: float = 0.05,
                   rotated: tuple | None = None) -> dict:
    """Notebook 06's path on a movie ``(frame, y, x)`` (coordinates or ``attrs["pixel_size"]`` in A).

    1. :func:`segdepth.learn.validity.predict_checked` of every frame (probabilities kept), dose ``lam``;
    2. :func:`segdepth.data.tracking.align_frames` on the images (``on_failure="warn"``);
    3. the running means of ``average`` aligned frames (frame ``f``: frames ``f - average + 1 .. f`` moved
       onto frame 0), checked the same way at dose ``lam * average``; the CeO2 region is where they are
       valid CeO2 [110] (``valid_reason == 0``) in at least half the frames (``average <= 1``: where the
       single frames are);
    4. :func:`~segdepth.data.tracking.mean_estimate` of the aligned single frames,
       :func:`~segdepth.data.tracking.find_columns` in the region (everywhere when the region is empty),
       :func:`~segdepth.data.tracking.track_columns` and :func:`~segdepth.data.tracking.smooth_counts` (NaN frames
       uninformative).

    The lattice's orientation is measured once on the movie (:func:`segdepth.learn.inference.estimated_orientation`)
    and both readings turned by it. Returns a dict with ``prediction`` (single frames), ``alignment``,
    ``average_prediction`` (None when
    ``average <= 1``), ``region`` (bool, label grid), ``estimate``, ``columns``, ``tracked`` and ``smoothed``.
    ``rotated``: ``(model, card)`` of another model for the 180-degree pass (``predict_checked(rotated_model=...)``).
    """
    from segdepth.learn.inference import estimated_orientation
    from segdepth.learn.validity import predict_checked

    # one orientation for the movie: the single frames and their running means are read turned alike
    check = {"tta": tta, "lattice_average": lattice_average, "orientation": estimated_orientation(image) or "auto"}
    if rotated is not None:
        check.update(rotated_model=rotated[0], rotated_card=rotated[1])
    n_frames = image.sizes["frame"]
    with np.errstate(all="ignore"):
        single = predict_checked(image, model, card, lam=lam, return_probabilities=True, **check)
    alignment = align_frames(image, on_failure="warn") if n_frames > 1 else None
    averaged = None
    if average > 1:
        aligned = shift_frames(image, alignment) if alignment is not None else image
        running = np.stack([aligned.values[max(0, f - average + 1): f + 1].mean(axis=0) for f in range(n_frames)])
        with np.errstate(all="ignore"):
            averaged = predict_checked(aligned.copy(data=running.astype(np.float32)), model, card,
                                       lam=None if lam is None else lam * average, **check)
    region = ((averaged if averaged is not None else single)["valid_reason"].values == 0).mean(axis=0) >= 0.5
    estimate = mean_estimate(single, alignment)
    columns = find_columns(estimate, mask=region if region.any() else None)
    tracked = track_columns(single, alignment, columns)
    n_classes = tracked.sizes["depth_class"]
    smoothed = smooth_counts(tracked["probability"].fillna(1.0 / n_classes), p_change=p_change,
                             set_mass=float(tracked["count_low"].attrs["set_mass"]))
    return {"prediction": single, "alignment": alignment, "average_prediction": averaged, "region": region,
            "estimate": estimate, "columns": columns, "tracked": tracked, "smoothed": smoothed}


def column_table(path: dict, **attrs) -> xr.Dataset:
    """The (frame, column) table of a :func:`run_movie_path` result: what a microscopist reads.

    :func:`~segdepth.data.tracking.track_columns`' table (position, element, count probabilities, expected count
    and its spread, the 90 % count set, ``inside``, ``aligned``) with the hidden-Markov smoothing of
    :func:`~segdepth.data.tracking.smooth_counts` (``smoothed_count``, ``smoothed_expected_count``,
    ``smoothed_posterior``, ``smoothed_count_low`` / ``_high``, ``viterbi_count``) and ``valid`` (the validity map at
    the column in that frame). The column finder's scalar attributes are kept; ``attrs`` are added (source, pixel
    size, dose, model).
    """
    columns, tracked, hmm, single = path["columns"], path["tracked"], path["smoothed"], path["prediction"]
    valid_at = []
    for f in range(single.sizes["frame"]):
        v = single["valid"].isel(frame=f).astype(np.float32)
        valid_at.append(v.interp(y=tracked["y"].isel(frame=f), x=tracked["x"].isel(frame=f), method="nearest").values)
    table = tracked.assign(
        smoothed_count=hmm["count"], smoothed_expected_count=hmm["expected_count"], smoothed_posterior=hmm["posterior"],
        smoothed_count_low=hmm["count_low"], smoothed_count_high=hmm["count_high"],
        viterbi_count=hmm["path"],
        valid=(("frame", "column"), np.nan_to_num(np.stack(valid_at)).astype(np.uint8),
               {"long_name": "the validity map at the column in that frame"}),
    )
    table.attrs.update({k: v for k, v in columns.attrs.items() if isinstance(v, int | float | str)})
    table.attrs.update(attrs)
    return table


def write_column_table(table: xr.Dataset, path) -> None:
    """Write :func:`column_table` to netCDF atomically (its boolean variables as uint8)."""
    from segdepth.data.store import write_netcdf_atomic

    write_netcdf_atomic(table.drop_vars([v for v in table.variables if table[v].dtype == bool]).assign(
        inside=table.inside.astype(np.uint8), aligned=table.aligned.astype(np.uint8)), path)


def run_simulated_movie(movie: xr.Dataset, model, card: dict, *, match_radius: float = 0.7,
                        **options) -> tuple[xr.Dataset, dict]:
    """:func:`run_movie_path` on ``movie["image"]`` (a :func:`segdepth.physics.simmovie.simulate_movie` result), scored.

    ``options`` go to :func:`run_movie_path` (``lam`` defaults to the movie's dose). Returns the score
    (:func:`score_simulated_movie`, with ``drift_error``: the largest difference between measured and true
    drift over frames and axes [A]) and the path's dict.
    """
    image = movie["image"].assign_attrs(pixel_size=float(movie.attrs["pixel_size"]))
    options.setdefault("lam", float(movie.attrs["dose"]) if "dose" in movie.attrs else None)
    result = run_movie_path(image, model, card, **options)
    score = score_simulated_movie(movie, result["tracked"], result["smoothed"], match_radius=match_radius,
                                  p_change=options.get("p_change", 0.05))
    if result["alignment"] is not None and "drift" in movie:
        error = np.abs(result["alignment"]["drift"].values - movie["drift"].values).max()
        score["drift_error"] = xr.DataArray(float(error), attrs={"units": "A"})
    return score, result


def _changes(counts: np.ndarray) -> list[tuple[int, int, int]]:
    """(frame, old count, new count) of every change in a count sequence."""
    return [(int(f), int(counts[f - 1]), int(counts[f])) for f in np.flatnonzero(np.diff(counts) != 0) + 1]


def _seen(post_old: np.ndarray, post_new: np.ndarray, change: int, delay: int | None, threshold: float,
          previous: int, early: int) -> bool:
    """Whether a detection at ``change + delay`` is a switch from the old count at (about) the change.

    The run of frames above ``threshold`` on the new count that holds the detection is traced back to its
    start. The change is seen when that start is at most ``early`` frames before ``change`` (a switch before
    it is a false alarm that happened to persist) and the old count was above ``threshold`` at some frame
    from ``previous`` (the column's previous change, or 0) up to the start.
    """
    if delay is None:
        return False
    start = change + delay
    while start > 0 and post_new[start - 1] > threshold:
        start -= 1
    return start >= change - early and bool(np.any(post_old[previous:start] > threshold))


def _step_delay(count: np.ndarray, previous: int, change: int, following: int, step: int) -> int:
    """Offset from ``change`` of the step by ``step`` in ``count`` nearest to it, within ``previous .. following``.

    Blind to a constant bias: a column read one atom low throughout still shows its loss as a step.
    """
    t = np.arange(previous + 1, following)
    t = t[np.diff(count)[previous:following - 1] == step]
    return int(t[np.argmin(np.abs(t - change))] - change) if t.size else NEVER


def _resolve(expected: np.ndarray, lo: int, change: int, hi: int, sign: int, z: float) -> tuple[float, float, int]:
    """Step of ``expected`` across ``change`` (segments ``lo:change``, ``change:hi``), spread, frames to see it.

    ``frames`` is the ``n`` for which ``n`` frames on each side show the measured step at ``z`` standard
    errors, ``2 (z sd / step)^2`` rounded up (NEVER when the step has the wrong sign or nothing is measured).
    """
    before, after = expected[lo:change], expected[change:hi]
    before, after = before[np.isfinite(before)], after[np.isfinite(after)]
    if before.size < 2 or after.size < 2:
        return float("nan"), float("nan"), NEVER
    step = float(after.mean() - before.mean())
    sd = float(np.sqrt((before.var(ddof=1) * (before.size - 1) + after.var(ddof=1) * (after.size - 1))
                       / (before.size + after.size - 2)))
    if step * sign <= 0:
        return step, sd, NEVER
    return step, sd, max(1, math.ceil(2 * (z * sd / step) ** 2))


def score_simulated_movie(movie: xr.Dataset, tracked: xr.Dataset, smoothed: xr.Dataset | None = None, *,
                          match_radius: float = 0.7, p_change: float = 0.05, z: float = 2.0,
                          early: int = 2) -> xr.Dataset:
    """Score tracked columns against the truth of a simulated movie.

    Parameters
    ----------
    movie : xarray.Dataset
        From :func:`segdepth.physics.simmovie.simulate_movie` (``column_x``, ``column_y``, ``column_Z``,
        ``column_count`` (frame, column), ``changing``).
    tracked : xarray.Dataset
        :func:`segdepth.data.tracking.track_columns` of its frames (``reference_y``, ``reference_x`` in frame 0's
        coordinates, ``probability``, ``count``; ``expected_count`` and ``element`` when there).
    smoothed : xarray.Dataset, optional
        :func:`segdepth.data.tracking.smooth_counts` of ``tracked["probability"]`` (computed when not given).
    match_radius : float
        Largest distance [A] between a found and a true column for them to be the same. Each true column
        (with atoms in frame 0) takes the nearest found column, closest pairs first, one found column each.
    p_change : float
        Passed to the smoothing (when ``smoothed`` is not given) and to the detection delays.
    z : float
        Standard errors at which the step of the expected count counts as seen (``frames_to_resolve``).
    early : int
        Frames by which the smoothed (offline) posterior may switch before the change and still see it; the
        filtered (online) posterior may not switch early at all.

    Returns
    -------
    xarray.Dataset
        Scalars: ``n_true_columns`` (with atoms in frame 0), ``n_found_columns``, ``found_fraction`` (true
        columns matched), ``found_precision`` (found columns matched to a true one), ``position_rms`` [A]
        (matched pairs), ``element_accuracy`` (of the matched columns that got an element),
        ``element_unknown_fraction``, ``frame_exact`` and ``smoothed_exact`` (count accuracy of the per-frame
        argmax and of the HMM-smoothed count over matched columns and frames), the same for the changing
        columns (``changing_frame_exact``, ``changing_smoothed_exact``), ``expected_bias`` and
        ``changing_expected_bias`` (mean per-frame expected count minus truth [atoms]); with ``count_low`` and
        ``count_high`` in ``tracked``, ``frame_set_coverage`` (how often the per-frame 90 % count set holds the
        true count, matched columns inside the field) and ``frame_set_width`` (its mean number of counts,
        ``high - low + 1``); NaN without them. ``smoothed_set_coverage`` and ``smoothed_set_width``: the
        same for the count sets of the HMM posterior, at the probability mass of the per-frame sets
        (``set_mass`` of ``count_low``, else 0.9).

        ``match`` (true_col): the found column of every true column (-1: none).

        Along dim ``change`` (every scheduled change of a matched column): ``true_column``,
        ``found_column``, ``change_frame``, ``old_count``, ``new_count``; for mode in smoothed / filtered and
        threshold 50 / 90: ``delay_<mode>_<threshold>`` [frames] (:func:`frames_to_detect_change`;
        :data:`NEVER` = -999: never detected; smoothed delays are negative when the step comes early) and
        ``seen_<mode>_<threshold>`` (the same posterior held the old count above the threshold before the
        detection, between the column's previous change and the detection, and the switch to the new count
        began at the change or later (smoothed: at most ``early`` frames before it): a change observed, not a
        column read at the new count all along, nor a false alarm before the change);
        ``step_delay`` (offset from the change of the nearest one-atom step in the right direction of the
        HMM-smoothed count within the column's constant segments, blind to a constant bias; NEVER: none);
        ``step`` (mean per-frame expected count after minus before, within
        the column's constant segments [atoms]), ``frame_sd`` (its pooled frame-to-frame spread) and
        ``frames_to_resolve`` (frames needed on each side to see that step at ``z`` standard errors,
        ``ceil(2 (z frame_sd / step)^2)``; NEVER when the step has the wrong sign).
    """
    for name in ("column_x", "column_y", "column_Z", "column_count", "changing"):
        if name not in movie:
            raise ValueError(f"movie must hold {name!r} (segdepth.physics.simmovie.simulate_movie)")
    for name in ("reference_y", "reference_x", "probability", "count"):
        if name not in tracked.variables:
            raise ValueError(f"tracked must hold {name!r} (segdepth.data.tracking.track_columns)")
    if not match_radius > 0:
        raise ValueError(f"match_radius must be > 0 [A], got {match_radius!r}")
    truth = movie["column_count"].values.astype(int)  # (frame, true column)
    n_frames = truth.shape[0]
    if tracked.sizes["frame"] != n_frames:
        raise ValueError(f"tracked has {tracked.sizes['frame']} frames, the movie {n_frames}")
    probability = tracked["probability"].transpose("frame", "column", "depth_class")
    n_classes = probability.sizes["depth_class"]
    probability = probability.fillna(1.0 / n_classes)
    if smoothed is None:
        smoothed = smooth_counts(probability, p_change=p_change)
    if smoothed["count"].shape != tracked["count"].shape:
        raise ValueError(f"smoothed counts have shape {smoothed['count'].shape}, tracked {tracked['count'].shape}")
    present = truth[0] > 0
    true_xy = np.column_stack([movie["column_y"].values, movie["column_x"].values])
    found_xy = np.column_stack([tracked["reference_y"].values, tracked["reference_x"].values])
    match = np.full(true_xy.shape[0], -1)
    taken = np.zeros(found_xy.shape[0], bool)
    dist = np.full(true_xy.shape[0], np.inf)
    if found_xy.shape[0]:
        pairs = cKDTree(true_xy).sparse_distance_matrix(cKDTree(found_xy), match_radius, output_type="ndarray")
        for j, k, d in sorted(zip(pairs["i"], pairs["j"], pairs["v"]), key=lambda p: p[2]):
            if present[j] and match[j] < 0 and not taken[k]:
                match[j], taken[k], dist[j] = k, True, d
    matched = np.flatnonzero(match >= 0)
    cols = match[matched]
    if "element" in tracked.coords or "element" in tracked:
        elements = np.asarray(tracked["element"].values).astype(str)
    else:
        elements = np.full(found_xy.shape[0], "unknown")
    named = elements[cols] != "unknown"
    truth_element = np.array([SYMBOLS.get(int(z_), "?") for z_ in movie["column_Z"].values[matched]])
    correct = elements[cols][named] == truth_element[named]
    per_frame = tracked["count"].transpose("frame", "column").values[:, cols]
    smooth = smoothed["count"].transpose("frame", "column").values[:, cols]
    if "expected_count" in tracked:
        expected = tracked["expected_count"].transpose("frame", "column").values
    else:
        expected = (probability * probability["depth_class"]).sum("depth_class").transpose("frame", "column").values
    t = truth[:, matched]
    changing = movie["changing"].values[matched].astype(bool)

    rows = []
    for k, j in enumerate(matched):
        if not changing[k]:
            continue
        p = probability.isel(column=int(match[j]))
        hmm = smooth_counts(p, p_change=p_change)
        post = {"smoothed": hmm["posterior"].values, "filtered": hmm["filtered"].values}
        events = _changes(truth[:, j])
        for e, (frame, old, new) in enumerate(events):
            previous = events[e - 1][0] if e else 0
            following = events[e + 1][0] if e + 1 < len(events) else n_frames
            delays, seen = [], []
            for mode in _MODES:
                for threshold in _THRESHOLDS:
                    d = frames_to_detect_change(p, frame, new_count=new, threshold=threshold, mode=mode,
                                                p_change=p_change)
                    delays.append(NEVER if d is None else int(d))
                    seen.append(_seen(post[mode][:, old], post[mode][:, new], frame, d, threshold, previous,
                                      early if mode == "smoothed" else 0))
            step, sd, frames = _resolve(expected[:, match[j]], previous, frame, following, np.sign(new - old), z)
            shift = _step_delay(smoothed["count"].transpose("frame", "column").values[:, match[j]].astype(int),
                                previous, frame, following, new - old)
            rows.append(((int(j), int(match[j]), frame, old, new, *delays, frames, shift), (*seen,), (step, sd)))
    ints = np.asarray([r[0] for r in rows], dtype=int).reshape(-1, 11)
    flags = np.asarray([r[1] for r in rows], dtype=bool).reshape(-1, 4)
    floats = np.asarray([r[2] for r in rows], dtype=float).reshape(-1, 2)

    def mean(x):
        return float(np.mean(x)) if np.size(x) else float("nan")

    never = {"units": "frames", "comment": f"{NEVER}: never"}
    change_vars = {
        "true_column": ("change", ints[:, 0]),
        "found_column": ("change", ints[:, 1]),
        "change_frame": ("change", ints[:, 2], {"long_name": "first frame with the new count"}),
        "old_count": ("change", ints[:, 3], {"units": "atoms"}),
        "new_count": ("change", ints[:, 4], {"units": "atoms"}),
    }
    i = 5
    for mode in _MODES:
        for threshold in _THRESHOLDS:
            name = f"{mode}_{round(100 * threshold)}"
            change_vars[f"delay_{name}"] = ("change", ints[:, i], never)
            change_vars[f"seen_{name}"] = ("change", flags[:, i - 5])
            i += 1
    change_vars.update(
        step=("change", floats[:, 0], {"units": "atoms", "long_name": "expected count after minus before"}),
        frame_sd=("change", floats[:, 1], {"units": "atoms", "long_name": "frame-to-frame spread of expected count"}),
        frames_to_resolve=("change", ints[:, 9], dict(never, long_name=f"frames each side to see step at {z:g} sd")),
        step_delay=("change", ints[:, 10], dict(never, long_name="offset of the nearest smoothed one-atom step")),
    )
    bias = expected[:, cols] - t
    if "count_low" in tracked and "count_high" in tracked:  # the per-frame 90 % count sets (track_columns)
        low = tracked["count_low"].transpose("frame", "column").values[:, cols]
        high = tracked["count_high"].transpose("frame", "column").values[:, cols]
        seen = low >= 0
        set_coverage, set_width = mean(((low <= t) & (t <= high))[seen]), mean((high - low + 1)[seen])
    else:
        set_coverage = set_width = float("nan")
    mass = float(tracked["count_low"].attrs.get("set_mass", COUNT_SET_LEVEL)) if "count_low" in tracked else \
        COUNT_SET_LEVEL
    s_low, s_high = count_range(smoothed["posterior"].transpose("frame", "column", "depth_class").values[:, cols],
                                mass)  # the posterior's sets at the per-frame sets' mass
    smoothed_coverage, smoothed_width = mean((s_low <= t) & (t <= s_high)), mean(s_high - s_low + 1)
    return xr.Dataset(
        {
            "n_true_columns": int(present.sum()),
            "n_found_columns": int(found_xy.shape[0]),
            "found_fraction": mean(match[present] >= 0),
            "found_precision": mean(taken) if found_xy.shape[0] else float("nan"),
            "position_rms": xr.DataArray(float(np.sqrt(np.mean(dist[matched] ** 2))) if matched.size else np.nan,
                                         attrs={"units": "A"}),
            "element_accuracy": mean(correct),
            "element_unknown_fraction": 1.0 - mean(named) if matched.size else float("nan"),
            "frame_exact": mean(per_frame == t),
            "smoothed_exact": mean(smooth == t),
            "changing_frame_exact": mean(per_frame[:, changing] == t[:, changing]),
            "changing_smoothed_exact": mean(smooth[:, changing] == t[:, changing]),
            "expected_bias": xr.DataArray(float(np.nanmean(bias)) if bias.size else np.nan, attrs={"units": "atoms"}),
            "frame_set_coverage": set_coverage,
            "frame_set_width": xr.DataArray(set_width, attrs={"units": "counts"}),
            "smoothed_set_coverage": smoothed_coverage,
            "smoothed_set_width": xr.DataArray(smoothed_width, attrs={"units": "counts"}),
            "changing_expected_bias": xr.DataArray(float(np.nanmean(bias[:, changing])) if changing.any() else np.nan,
                                                   attrs={"units": "atoms"}),
            "match": ("true_col", match, {"long_name": "found column of each true column (-1: none)"}),
            **change_vars,
        },
        attrs={"match_radius": match_radius, "p_change": p_change, "z": z, "early": early},
    )
