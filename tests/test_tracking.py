"""Columns through a movie: drift, column finding, per-column counts and their hidden-Markov smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.spatial import cKDTree

from segdepth.data.tracking import (
    AlignmentError,
    align_frames,
    count_range,
    find_columns,
    frames_to_detect_change,
    mean_estimate,
    shift_frames,
    smooth_counts,
    track_columns,
    transition_matrix,
)
from segdepth.physics.structures import LATTICE_CONSTANT, projected_columns

CELL = np.array([LATTICE_CONSTANT / np.sqrt(2), LATTICE_CONSTANT])  # [1-10], [001] repeats [A]
IMAGE_PIXEL = 0.2  # [A]
LABEL_PIXEL = 0.2124  # [A], the default model's label grid
# The paper's dose, lambda = 2.5 electrons per 5.3 pm pixel (about 890 e/A^2), is 36 electrons per 0.2 A pixel.
PAPER_DOSE = 2.5 * (IMAGE_PIXEL / 0.053) ** 2


def ceo2_columns(centre, half_size, *, angle=0.0):
    """Positions (n, 2) ``(y, x)`` [A] and atomic numbers of the CeO2 [110] columns in a square island.

    ``angle`` [deg] turns [1-10] from +x towards +y.
    """
    xy, _, numbers = projected_columns()
    n = int(2 * half_size / CELL.min()) + 3
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n), indexing="ij")
    points = (np.stack([i.ravel(), j.ravel()], axis=1)[:, None, :] * CELL + xy[None]).reshape(-1, 2)
    Z = np.tile(numbers, i.size)
    inside = np.all(np.abs(points) < half_size, axis=1)
    points, Z = points[inside], Z[inside]
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    x, y = c * points[:, 0] - s * points[:, 1], s * points[:, 0] + c * points[:, 1]
    return np.column_stack([y + centre[0], x + centre[1]]), Z


def render(shape, pixel, positions, heights, width):
    """Sum of Gaussian columns (``width`` [A]) on a grid of ``pixel`` [A]; returns the map and its y, x [A]."""
    y = (np.arange(shape[0]) + 0.5) * pixel
    x = (np.arange(shape[1]) + 0.5) * pixel
    gy = np.exp(-((y[None] - positions[:, :1]) ** 2) / (2 * width**2))
    gx = np.exp(-((x[None] - positions[:, 1:]) ** 2) / (2 * width**2))
    return (gy * heights[:, None]).T @ gx, y, x


def drifting_movie(rng, drift_px, *, dose, shape=(144, 144)):
    """Noisy HRTEM-like frames (vacuum 1, Ce +0.6, O +0.25) of a CeO2 island drifting by ``drift_px``."""
    centre = np.array(shape) * IMAGE_PIXEL / 2
    positions, Z = ceo2_columns(centre, 10.0, angle=10)
    heights = np.where(Z == 58, 0.6, 0.25)
    frames = []
    for d in drift_px:
        clean, y, x = render(shape, IMAGE_PIXEL, positions + d * IMAGE_PIXEL, heights, 0.35)
        frames.append(clean + 1 if dose is None else rng.poisson(dose * (clean + 1)) / dose)
    return xr.DataArray(np.array(frames), dims=("frame", "y", "x"), coords={"y": y, "x": x})


def alignment_of(drift_a, aligned=None):
    """A hand-made alignment (as from align_frames) with the given drift (frame, 2) [A]."""
    drift_a = np.asarray(drift_a, dtype=float)
    aligned = np.ones(len(drift_a), bool) if aligned is None else np.asarray(aligned)
    return xr.Dataset(
        {"drift": (("frame", "component"), drift_a), "aligned": ("frame", aligned)},
        coords={"frame": np.arange(len(drift_a)), "component": ["y", "x"]},
    )


# ----------------------------------------------------------------------------- drift


def test_known_subpixel_drift_is_recovered_at_low_dose():
    rng = np.random.default_rng(0)
    true = np.cumsum(rng.uniform(-0.6, 0.6, (16, 2)), axis=0)
    true[0] = 0
    alignment = align_frames(drifting_movie(rng, true, dose=PAPER_DOSE))
    assert alignment["drift"].dims == ("frame", "component") and list(alignment["component"].values) == ["y", "x"]
    assert alignment["aligned"].all() and alignment.attrs["n_aligned"] == 16
    error = alignment["drift_px"].values - true
    assert np.abs(error).max() < 0.2
    assert np.sqrt(np.mean(error[1:] ** 2)) < 0.1
    np.testing.assert_allclose(alignment["drift"].values, alignment["drift_px"].values * IMAGE_PIXEL)
    assert np.nanmin(alignment["significance"].values) > alignment.attrs["min_significance"]
    assert alignment["drift"].attrs["units"] == "Å"


def test_shift_frames_moves_every_frame_onto_the_first():
    true = np.array([[0, 0], [1.5, -2.25], [-0.5, 3.0]])
    movie = drifting_movie(None, true, dose=None)
    alignment = alignment_of(true * IMAGE_PIXEL)
    back = shift_frames(movie, alignment, order=3)
    inner = (slice(None), slice(20, -20), slice(20, -20))
    before = np.abs(movie.values - movie.values[0])[inner].max()
    after = np.abs(back.values - movie.values[0])[inner].max()
    assert after < 0.02 * before
    # the same drift moves a label-grid map by its own pixel size
    labels = xr.DataArray(np.zeros((3, 40, 40)), dims=("frame", "y", "x"),
                          coords={"y": (np.arange(40) + 0.5) * 0.4, "x": (np.arange(40) + 0.5) * 0.4})
    labels.values[:, 20, 20] = 1
    moved = shift_frames(labels, alignment_of([[0, 0], [0.8, -0.4], [0, 0]]), order=1).values
    assert moved[1, 18, 21] == pytest.approx(1)


def test_pure_noise_is_not_alignable():
    rng = np.random.default_rng(1)
    noise = rng.poisson(5.0, (12, 128, 128)) / 5.0
    alignment = align_frames(noise, pixel_size=IMAGE_PIXEL)
    assert alignment["aligned"].values[0] and not alignment["aligned"].values[1:].any()
    assert alignment.attrs["n_aligned"] == 1
    with pytest.raises(AlignmentError, match="11 of 12 frames could not be aligned"):
        align_frames(noise, pixel_size=IMAGE_PIXEL, on_failure="raise")
    with pytest.warns(UserWarning, match="could not be aligned"):
        align_frames(noise, pixel_size=IMAGE_PIXEL, on_failure="warn")


def test_a_jump_beyond_max_jump_is_flagged():
    rng = np.random.default_rng(2)
    true = np.zeros((8, 2))
    true[:, 1] = np.linspace(0, 1.4, 8)
    true[5] += [0, 9.0]  # one frame 1.8 A away from its neighbours
    alignment = align_frames(drifting_movie(rng, true, dose=PAPER_DOSE), max_jump=1.0)
    aligned = alignment["aligned"].values
    assert not aligned[5] and aligned[[0, 1, 2, 3, 4, 6, 7]].all()
    assert alignment["jump"].values[5] > 1.5
    # the frame that did not align is interpolated in time where the drift is used
    tracks = track_columns(_uniform_prediction(8), alignment, _one_column(), radius=0)
    np.testing.assert_allclose(tracks["x"].values[5, 0] - 5.0, np.mean(true[[4, 6], 1]) * IMAGE_PIXEL, atol=0.06)


# ----------------------------------------------------------------------------- columns


@pytest.mark.parametrize(("angle", "noise", "o_missing"), [(0.0, 0.0, 0.0), (17.0, 0.1, 0.0), (-35.0, 0.15, 0.3)])
def test_columns_and_elements_on_a_synthetic_lattice(angle, noise, o_missing):
    rng = np.random.default_rng(3)
    positions, Z = ceo2_columns((16.0, 16.0), 11.0, angle=angle)
    present = ~((Z == 8) & (rng.random(len(Z)) < o_missing))
    positions, Z = positions[present], Z[present]
    counts = rng.integers(2, 9, len(Z)).astype(float)  # same range for Ce and O: no help from contrast
    values, y, x = render((150, 150), LABEL_PIXEL, positions, counts, 0.3)
    estimate = xr.DataArray(values + rng.normal(0, noise, values.shape), dims=("y", "x"), coords={"y": y, "x": x})

    columns = find_columns(estimate)
    found = np.column_stack([columns["y"].values, columns["x"].values])
    distance, nearest = cKDTree(found).query(positions)
    assert distance.max() < 0.15  # every column found, to sub-pixel accuracy
    assert columns.sizes["column"] <= 1.05 * len(Z)
    if noise == 0:
        assert columns.sizes["column"] == len(Z) and np.sqrt(np.mean(distance**2)) < 0.03
    expected = np.where(Z == 58, "Ce", "O")
    assert columns.attrs["lattice_found"] == 1
    assert np.mean(columns["element"].values[nearest] == expected) >= 0.95
    assert abs((columns.attrs["lattice_angle"] - angle + 90) % 180 - 90) < 1.0
    np.testing.assert_allclose(columns.attrs["lattice_spacing"], [1.913, 1.353], atol=0.01)
    assert columns["x"].attrs["units"] == "Å"


def test_columns_on_empty_sites_or_off_the_lattice_are_unknown():
    positions, Z = ceo2_columns((16.0, 16.0), 9.0)
    extra = np.array([[16.0, 16.0 + CELL[0] / 2],  # a site that is empty in a Ce row
                      [16.0 + CELL[1] / 8, 28.0]])  # in the vacuum, half-way between two rows of sites
    values, y, x = render((150, 150), LABEL_PIXEL, np.vstack([positions, extra]), np.full(len(Z) + 2, 5.0), 0.3)
    columns = find_columns(xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x}))
    distance, index = cKDTree(np.column_stack([columns["y"], columns["x"]])).query(extra)
    assert distance.max() < 0.15 and list(columns["element"].values[index]) == ["unknown", "unknown"]
    assert np.sum(columns["element"].values == "unknown") == 2
    assert columns.attrs["n_on_empty_sites"] == 1 and columns.attrs["n_on_lattice"] == len(Z) + 1


def test_columns_without_ceo2_order_get_no_element():
    rng = np.random.default_rng(5)
    candidates = rng.uniform(4, 28, (400, 2))
    keep = []
    for k, point in enumerate(candidates):  # random columns at least 1.3 A apart
        if all(np.hypot(*(point - candidates[j])) >= 1.3 for j in keep):
            keep.append(k)
    values, y, x = render((150, 150), LABEL_PIXEL, candidates[keep], np.full(len(keep), 5.0), 0.3)
    columns = find_columns(xr.DataArray(values, dims=("y", "x"), coords={"y": y, "x": x}))
    assert columns.sizes["column"] >= 0.95 * len(keep)
    assert columns.attrs["lattice_found"] == 0 and (columns["element"].values == "unknown").all()
    assert columns.attrs["empty_site_fraction"] > 0.1 or columns.attrs["lattice_fraction"] < 0.5


# ----------------------------------------------------------------------------- tracking


def _uniform_prediction(n_frames, size=60, pixel=0.25):
    """Vacuum everywhere (p_0 = 1) on a label grid of ``pixel`` [A]."""
    probability = np.zeros((n_frames, 11, size, size))
    probability[:, 0] = 1
    c = (np.arange(size) + 0.5) * pixel
    return xr.Dataset({"probability": (("frame", "depth_class", "y", "x"), probability)},
                      coords={"frame": np.arange(n_frames), "depth_class": np.arange(11), "y": c, "x": c})


def _one_column():
    return xr.Dataset({"y": ("column", [5.0]), "x": ("column", [5.0]), "element": ("column", ["Ce"])},
                      coords={"column": [0]})


def test_track_columns_reads_the_distribution_at_the_drifted_column():
    prediction = _uniform_prediction(3)
    drift = np.array([[0.0, 0.0], [0.5, -0.25], [1.0, 0.75]])  # [A], whole label pixels of 0.25 A
    distributions = np.array([[0, 0, 0, 0.2, 0.6, 0.2, 0, 0, 0, 0, 0],
                              [0, 0, 0, 0, 0.1, 0.3, 0.6, 0, 0, 0, 0],
                              [0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5]])
    columns = xr.Dataset({"y": ("column", [5.125, 10.125, 14.6]), "x": ("column", [7.125, 3.125, 2.0]),
                          "element": ("column", ["Ce", "O", "unknown"])}, coords={"column": [0, 1, 2]})
    for f in range(3):
        for c in range(2):
            iy = int(round((columns["y"].values[c] + drift[f, 0]) / 0.25 - 0.5))
            ix = int(round((columns["x"].values[c] + drift[f, 1]) / 0.25 - 0.5))
            prediction["probability"].values[f, :, iy - 3 : iy + 4, ix - 3 : ix + 4] = distributions[f][:, None, None]
    columns["y"].values[2] = 14.95  # 0.1 A from the map's edge (at 15 A): its 0.4 A disc is not inside

    tracks = track_columns(prediction, alignment_of(drift), columns, radius=0.4)
    assert tracks["probability"].dims == ("frame", "column", "depth_class")
    assert tracks["probability"].shape == (3, 3, 11)
    assert tracks["expected_count"].dims == ("frame", "column")
    np.testing.assert_allclose(tracks["y"].values[:, 0], 5.125 + drift[:, 0])
    np.testing.assert_allclose(tracks["x"].values[:, 1], 3.125 + drift[:, 1])
    np.testing.assert_allclose(tracks["reference_y"].values, columns["y"].values)
    assert list(tracks["element"].values) == ["Ce", "O", "unknown"]
    assert tracks["x"].attrs["units"] == "Å" and tracks["expected_count"].attrs["units"] == "atoms"
    assert tracks.attrs["n_disc_points"] == 9  # (0, 0), (+-1, 0), (0, +-1), (+-1, +-1): within 1.6 px

    k = np.arange(11)
    mean = distributions @ k
    std = np.sqrt(distributions @ k**2 - mean**2)
    for c in range(2):
        np.testing.assert_allclose(tracks["probability"].values[:, c], distributions, atol=1e-12)
        np.testing.assert_allclose(tracks["expected_count"].values[:, c], mean)
        np.testing.assert_allclose(tracks["count_std"].values[:, c], std)
    np.testing.assert_allclose(mean, [4.0, 5.5, 5.0])
    np.testing.assert_allclose(std, [np.sqrt(0.4), np.sqrt(0.45), 5.0])
    np.testing.assert_array_equal(tracks["count"].values[:, 0], [4, 6, 0])
    np.testing.assert_allclose(tracks["confidence"].values[:, 0], [0.6, 0.6, 0.5])
    # 90 % count sets: {4, 3, 5} -> 3-5; {6, 5} (0.9 reached) -> 5-6; {0, 10} (not contiguous) -> 0-10
    np.testing.assert_array_equal(tracks["count_low"].values[:, 0], [3, 5, 0])
    np.testing.assert_array_equal(tracks["count_high"].values[:, 0], [5, 6, 10])
    assert (tracks["count_low"].values[:, 2] == -1).all() and (tracks["count_high"].values[:, 2] == -1).all()
    assert tracks["count_low"].attrs["set_mass"] == 0.9  # no calibrated mass in the prediction: 0.9
    # a prediction that carries a calibrated mass (segdepth.learn.validity.assess) gets sets of that mass
    narrow = track_columns(prediction.assign_attrs(count_set_mass=0.5), alignment_of(drift), columns, radius=0.4)
    np.testing.assert_array_equal(narrow["count_low"].values[:, 0], [4, 6, 0])
    np.testing.assert_array_equal(narrow["count_high"].values[:, 0], [4, 6, 0])
    assert narrow["count_high"].attrs["set_mass"] == 0.5
    assert not tracks["inside"].values[:, 2].any() and (tracks["count"].values[:, 2] == -1).all()
    assert np.isnan(tracks["expected_count"].values[:, 2]).all()


def test_mean_estimate_averages_aligned_frames_only():
    prediction = _uniform_prediction(3, size=20)
    prediction["probability"].values[:, 0, 10, 10] = 0
    prediction["probability"].values[:, 4, 10, 10] = 1
    prediction["probability"].values[2] = 0
    prediction["probability"].values[2, 10] = 1  # a frame that did not align: ten atoms everywhere
    estimate = mean_estimate(prediction, alignment_of(np.zeros((3, 2)), [True, True, False]))
    assert estimate.dims == ("y", "x") and estimate.attrs["n_frames"] == 2
    assert estimate.values[10, 10] == pytest.approx(4) and estimate.values[0, 0] == pytest.approx(0)
    assert mean_estimate(prediction, quantity="non_vacuum").values[10, 10] == pytest.approx(1)


# ----------------------------------------------------------------------------- hidden Markov smoothing


def noisy_step(rng, *, n_frames=40, change=20, sigma=0.594):
    """Per-frame count likelihoods of a column whose count steps 4 -> 5 (argmax right ~60 % of frames)."""
    true = np.where(np.arange(n_frames) < change, 4, 5)
    observed = true + rng.normal(0, sigma, n_frames)
    p = np.exp(-((np.arange(11)[None] - observed[:, None]) ** 2) / (2 * sigma**2))
    return true, p / p.sum(axis=1, keepdims=True)


def test_hmm_recovers_a_count_step_better_than_the_per_frame_argmax():
    true, p = noisy_step(np.random.default_rng(3))
    per_frame = np.mean(p.argmax(axis=1) == true)
    assert 0.5 <= per_frame <= 0.7
    result = smooth_counts(p)
    path = result["path"].values
    assert np.mean(path == true) > per_frame + 0.2 and np.mean(result["count"].values == true) > per_frame + 0.2
    step = np.flatnonzero(np.diff(path))
    assert len(step) == 1 and abs(step[0] + 1 - 20) <= 2
    np.testing.assert_allclose(result["posterior"].sum("depth_class"), 1)
    np.testing.assert_allclose(result["filtered"].sum("depth_class"), 1)
    # the posterior's count sets: narrower than the per-frame ones, and wider for a larger mass
    low, high = result["count_low"].values, result["count_high"].values
    assert result["count_low"].attrs["set_mass"] == 0.9 and (low <= result["count"].values).all()
    frame_low, frame_high = count_range(p, 0.9)
    assert np.mean(high - low) < np.mean(frame_high - frame_low)
    assert np.mean((low <= true) & (true <= high)) >= 0.9
    wide = smooth_counts(p, set_mass=0.999)
    assert (wide["count_high"] - wide["count_low"] >= result["count_high"] - result["count_low"]).all()
    assert abs(frames_to_detect_change(p, 20, new_count=5)) <= 2
    assert 0 <= frames_to_detect_change(p, 20, new_count=5, threshold=0.9) <= 3
    assert 0 <= frames_to_detect_change(p, 20, new_count=5, mode="filtered") <= 3
    assert frames_to_detect_change(p, 20, new_count=8) is None


def test_hmm_is_vectorised_over_columns_and_skips_missing_frames():
    rng = np.random.default_rng(4)
    _, p1 = noisy_step(rng)
    _, p2 = noisy_step(rng)
    p2[10:13] = np.nan  # a column outside the field for three frames
    both = xr.DataArray(np.stack([p1, p2], axis=1), dims=("frame", "column", "depth_class"),
                        coords={"column": [7, 8]})
    result = smooth_counts(both)
    assert result["posterior"].dims == ("frame", "column", "depth_class")
    assert result["path"].dims == ("frame", "column") and result["log_likelihood"].dims == ("column",)
    np.testing.assert_allclose(result["posterior"].sel(column=7), smooth_counts(p1)["posterior"], atol=1e-12)
    assert np.all(np.isfinite(result["posterior"].values))
    matrix = transition_matrix(11, p_change=0.05, jump_ratio=0.01)
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    assert matrix[4, 5] == pytest.approx(0.025) and matrix[4, 6] == pytest.approx(0.00025)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: align_frames(np.ones((32, 32)), pixel_size=0.2), r"frames must have dims \(frame, y, x\)"),
        (lambda: align_frames(np.ones((3, 32, 32))), "pixel size along y is unknown"),
        (lambda: align_frames(np.ones((3, 32, 32)), pixel_size=0.2, reference="last"), "reference must be"),
        (lambda: track_columns(_uniform_prediction(4), alignment_of(np.zeros((3, 2))), _one_column()),
         "alignment has 3 frames but the data has 4"),
        (lambda: track_columns(_uniform_prediction(2)["probability"].isel(frame=0), None, _one_column()),
         r"dims \(frame, depth_class, y, x\)"),
        (lambda: mean_estimate(_uniform_prediction(2), alignment_of(np.zeros((5, 2)))), "alignment has 5 frames"),
        (lambda: find_columns(xr.DataArray(np.zeros((2, 8, 8)), dims=("frame", "y", "x"))), r"dims \(y, x\)"),
        (lambda: find_columns(xr.DataArray(np.zeros((8, 8)), dims=("y", "x"), attrs={"pixel_size": 0.2}),
                              mask=np.ones((4, 4))), "mask must"),
        (lambda: smooth_counts(np.full((5, 11), 1 / 11), p_change=0), r"p_change must be in \(0, 1\)"),
        (lambda: smooth_counts(np.full((5, 11), 1 / 11), p_change=1.5), r"p_change must be in \(0, 1\)"),
        (lambda: smooth_counts(np.full(11, 1 / 11)), r"dims \(frame, \.\.\., depth_class\)"),
        (lambda: smooth_counts(np.full((5, 11), 1 / 11), prior=np.ones(3)), "prior must be 11"),
        (lambda: frames_to_detect_change(np.full((5, 11), 1 / 11), 7, new_count=5), r"change_frame must be"),
    ],
)
def test_bad_input_raises_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_count_set_mass_comes_from_the_prediction_or_its_card():
    import json

    from segdepth.data.tracking import COUNT_SET_LEVEL, count_set_mass

    prediction = _uniform_prediction(1, size=4)
    assert count_set_mass(prediction) == COUNT_SET_LEVEL  # nothing calibrated
    card = {"count_sets": {"mass": {"one_pass": 0.97, "with_second_model": 0.98}}}
    with_card = prediction.assign_attrs(model_card=json.dumps(card))
    assert count_set_mass(with_card) == 0.97  # one pass: the card's one-pass mass
    assert count_set_mass(with_card.assign_attrs(count_set_mass=0.98)) == 0.98  # what assess decided wins
    assert count_set_mass(prediction.assign_attrs(model_card=json.dumps({"lam": 2.5}))) == COUNT_SET_LEVEL
