"""The simulated movie with a known answer (segdepth.physics.simmovie) and its score (segdepth.apps.moviescore)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from ase import Atoms

from segdepth.apps import moviescore
from segdepth.apps.moviescore import NEVER, score_simulated_movie
from segdepth.data.tracking import align_frames
from segdepth.physics import simmovie
from segdepth.physics.simmovie import remove_atoms, simulate_movie, surface_columns
from segdepth.physics.simulation import PAPER_SAMPLING
from segdepth.physics.structures import Structure, build_particle, random_particle_spec

N_FRAMES, K = 12, 11


# --- the score, on hand-made tracking results ----------------------------------------------------------------


def _movie(counts: np.ndarray, changing) -> xr.Dataset:
    """Truth of a movie: columns on a 2 A grid, ``counts`` (frame, column)."""
    n = counts.shape[1]
    return xr.Dataset({
        "column_x": ("column", 2.0 + 2.0 * np.arange(n)), "column_y": ("column", np.full(n, 5.0)),
        "column_Z": ("column", np.where(np.arange(n) % 2, 8, 58)),
        "column_count": (("frame", "column"), counts), "changing": ("column", np.asarray(changing, bool)),
    })  # fmt: skip


def _tracked(movie: xr.Dataset, read: np.ndarray, *, offset=(0.0, 0.0), elements=None, sharp=0.9) -> xr.Dataset:
    """A tracking result that reads ``read`` (frame, column) with probability ``sharp``."""
    n_frames, n = read.shape
    p = np.full((n_frames, n, K), (1 - sharp) / (K - 1))
    np.put_along_axis(p, read[..., None], sharp, axis=-1)
    elements = elements if elements is not None else np.where(movie["column_Z"].values == 58, "Ce", "O")
    return xr.Dataset(
        {"probability": (("frame", "column", "depth_class"), p), "count": (("frame", "column"), read)},
        coords={"reference_y": ("column", movie["column_y"].values + offset[0]),
                "reference_x": ("column", movie["column_x"].values + offset[1]),
                "element": ("column", elements), "depth_class": np.arange(K)})  # fmt: skip


@pytest.fixture
def truth():
    counts = np.tile(np.array([5, 3, 4, 2]), (N_FRAMES, 1))
    counts[6:, 1] = 2  # the O column 1 loses an atom at frame 6
    return _movie(counts, [False, True, False, False])


def test_a_perfect_tracking_scores_one_and_sees_the_change_at_once(truth):
    score = score_simulated_movie(truth, _tracked(truth, truth["column_count"].values))
    for name in ("found_fraction", "found_precision", "element_accuracy", "frame_exact", "smoothed_exact",
                 "changing_frame_exact", "changing_smoothed_exact"):
        assert float(score[name]) == 1.0, name
    assert float(score.element_unknown_fraction) == 0.0 and float(score.position_rms) == 0.0
    assert list(score.match.values) == [0, 1, 2, 3]
    assert score.sizes["change"] == 1
    assert int(score.true_column[0]) == 1 and int(score.change_frame[0]) == 6
    assert int(score.old_count[0]) == 3 and int(score.new_count[0]) == 2
    assert int(score.delay_filtered_50[0]) == 0
    assert 0 <= int(score.delay_filtered_90[0]) <= 2
    assert abs(int(score.delay_smoothed_50[0])) <= 1
    assert all(bool(score[f"seen_{m}_{t}"][0]) for m in ("smoothed", "filtered") for t in (50, 90))
    # expected counts 0.9 * k + 0.01 * (sum of the others): a step of -0.89 atoms without frame-to-frame spread
    assert float(score.step[0]) == pytest.approx(-0.89) and float(score.frame_sd[0]) == pytest.approx(0, abs=1e-9)
    assert int(score.frames_to_resolve[0]) == 1 and int(score.step_delay[0]) == 0


def test_a_biased_tracking_never_sees_the_new_count(truth):
    wrong = truth["column_count"].values + 1  # one atom too many everywhere
    elements = np.array(["O", "Ce", "unknown", "unknown"])  # two named, both wrong
    score = score_simulated_movie(truth, _tracked(truth, wrong, elements=elements))
    assert float(score.frame_exact) == 0.0 and float(score.smoothed_exact) == 0.0
    assert float(score.element_accuracy) == 0.0 and float(score.element_unknown_fraction) == 0.5
    expected = 0.9 * wrong + 0.01 * (K * (K - 1) / 2 - wrong)  # sum_k k p_k of the hand-made distribution
    assert float(score.expected_bias) == pytest.approx(np.mean(expected - truth["column_count"].values))
    assert int(score.delay_filtered_50[0]) == NEVER and int(score.delay_smoothed_90[0]) == NEVER
    assert not score.seen_filtered_50[0] and not score.seen_smoothed_50[0]
    assert int(score.frames_to_resolve[0]) == 1 and int(score.step_delay[0]) == 0  # the step is there, too high
    assert np.isnan(float(score.frame_set_coverage))  # no count sets given
    # the HMM posterior is sure of the wrong count: its 90 % sets hold that count alone, never the truth
    assert float(score.smoothed_set_coverage) == 0.0 and float(score.smoothed_set_width) == 1.0
    # count sets one atom wide around the wrong reading hold the truth; sets of the reading alone never do
    sets = _tracked(truth, wrong).assign(count_low=(("frame", "column"), wrong - 1),
                                         count_high=(("frame", "column"), wrong))
    score = score_simulated_movie(truth, sets)
    assert float(score.frame_set_coverage) == 1.0 and float(score.frame_set_width) == 2.0
    # the smoothed sets take the per-frame sets' probability mass: all but 1e-12 of it holds every count
    every = score_simulated_movie(truth, sets.assign(count_low=sets.count_low.assign_attrs(set_mass=1 - 1e-12)))
    assert float(every.smoothed_set_coverage) == 1.0 and float(every.smoothed_set_width) > 2
    narrow = sets.assign(count_low=sets.count_high)
    assert float(score_simulated_movie(truth, narrow).frame_set_coverage) == 0.0


def test_a_column_read_low_all_along_is_not_a_change_seen(truth):
    """Reading the new count before the change "detects" it with delay 0 (filtered) or -6 (smoothed): not seen."""
    read = truth["column_count"].values.copy()
    read[:, 1] = 2
    score = score_simulated_movie(truth, _tracked(truth, read))
    assert int(score.delay_filtered_50[0]) == 0 and int(score.delay_smoothed_50[0]) == -6
    for mode in ("smoothed", "filtered"):
        for t in (50, 90):
            assert not score[f"seen_{mode}_{t}"][0], (mode, t)
    assert int(score.frames_to_resolve[0]) == NEVER and int(score.step_delay[0]) == NEVER  # no step at all
    assert float(score.changing_frame_exact) == 0.5


def test_a_switch_before_the_change_is_a_false_alarm(truth):
    """Read at the new count from frame 3 on (the change is at 6): early, not seen, whatever the threshold."""
    read = truth["column_count"].values.copy()
    read[3:, 1] = 2
    score = score_simulated_movie(truth, _tracked(truth, read))
    assert int(score.delay_filtered_50[0]) == 0 and int(score.delay_smoothed_50[0]) == -3
    assert not score.seen_filtered_50[0] and not score.seen_smoothed_50[0]
    assert int(score.step_delay[0]) == -3
    # one frame early: the smoothed posterior may do that (early=2), the online one may not
    read[3:6, 1] = 3
    read[5, 1] = 2
    score = score_simulated_movie(truth, _tracked(truth, read))
    assert bool(score.seen_smoothed_50[0]) and not score.seen_filtered_50[0]
    assert not score_simulated_movie(truth, _tracked(truth, read), early=0).seen_smoothed_50[0]


def test_a_noisy_step_needs_more_frames_to_resolve(truth):
    rng = np.random.default_rng(0)
    read = np.clip(truth["column_count"].values + rng.integers(-1, 2, truth["column_count"].shape), 0, K - 1)
    read[:, 1] = truth["column_count"].values[:, 1]
    read[[1, 4, 8, 10], 1] += 1  # frame-to-frame scatter on the changing column
    score = score_simulated_movie(truth, _tracked(truth, read))
    assert 0 < float(score.frame_exact) < 1
    sd, step = float(score.frame_sd[0]), float(score.step[0])
    assert sd > 0.3 and step < 0
    assert int(score.frames_to_resolve[0]) == int(np.ceil(2 * (2 * sd / step) ** 2)) > 1


def test_columns_found_elsewhere_are_not_matched(truth):
    far = score_simulated_movie(truth, _tracked(truth, truth["column_count"].values, offset=(1.0, 0.0)))
    assert float(far.found_fraction) == 0.0 and float(far.found_precision) == 0.0 and far.sizes["change"] == 0
    assert (far.match.values == -1).all()
    near = score_simulated_movie(truth, _tracked(truth, truth["column_count"].values, offset=(0.3, 0.3)))
    assert float(near.found_fraction) == 1.0 and float(near.position_rms) == pytest.approx(0.3 * np.sqrt(2))


def test_one_found_column_matches_one_true_column(truth):
    """Two found columns near true column 0: the nearer is matched, the other is a false positive."""
    tracked = _tracked(truth, truth["column_count"].values)
    extra = tracked.isel(column=[0]).assign_coords(reference_x=("column", [2.4]))
    both = xr.concat([extra, tracked], dim="column")
    score = score_simulated_movie(truth, both)
    assert list(score.match.values) == [1, 2, 3, 4]
    assert float(score.found_fraction) == 1.0 and float(score.found_precision) == pytest.approx(0.8)


def test_score_rejects_mismatched_input(truth):
    with pytest.raises(ValueError, match="column_count"):
        score_simulated_movie(truth.drop_vars("column_count"), _tracked(truth, truth["column_count"].values))
    with pytest.raises(ValueError, match="frames"):
        score_simulated_movie(truth, _tracked(truth, truth["column_count"].values[:5]))
    with pytest.raises(ValueError, match="match_radius"):
        score_simulated_movie(truth, _tracked(truth, truth["column_count"].values), match_radius=0)


# --- the movie, with the multislice replaced by Gaussian columns (fast) ------------------------------------


def _grid_structure(extent: float, spacing: float = 2.5, count: int = 4) -> Structure:
    """Columns of ``count`` atoms on a square grid (O and Ce alternating), 3 A from the cell's edges."""
    xs = np.arange(3.0, extent - 3.0, spacing)
    cx, cy = (a.ravel() for a in np.meshgrid(xs, xs + 0.3))
    z = np.where(np.arange(cx.size) % 2, 8, 58)
    positions = [(x, y, 1.0 + 3.826 * k) for x, y in zip(cx, cy) for k in range(count)]
    atoms = Atoms(numbers=np.repeat(z, count), positions=positions, cell=[extent, extent, 4 * count])
    return Structure(atoms=atoms, column_x=cx, column_y=cy, column_Z=z, column_count=np.full(cx.size, count, np.uint8),
                     spec=None)


@pytest.fixture
def fake_optics(monkeypatch):
    """simulate_exit_wave -> the structure; image_exit_wave -> Gaussian dips (0.06 per atom) at its columns."""
    def exit_wave(structure, *, gpts, sampling, energy):
        return structure, gpts, sampling

    def image(wave, overfocus, *, microscope, binning):
        structure, gpts, sampling = wave
        n, px = gpts // binning, binning * sampling
        r = (np.arange(n) + 0.5) * px  # pixel centres, the labels' convention
        xy = structure.atoms.positions[:, :2]
        img = np.ones((n, n))
        for x, y in xy:
            img -= 0.06 * np.exp(-((r[:, None] - y) ** 2 + (r[None] - x) ** 2) / (2 * 0.35**2))
        return img[None].astype(np.float32)

    monkeypatch.setattr(simmovie, "simulate_exit_wave", exit_wave)
    monkeypatch.setattr(simmovie, "image_exit_wave", image)


def test_movie_schedule_is_validated(fake_optics):
    s = _grid_structure(400 * PAPER_SAMPLING)
    rng = np.random.default_rng(0)
    kw = {"gpts": 400, "rng": rng}
    with pytest.raises(ValueError, match="empty"):
        simulate_movie(s, {}, **kw)
    with pytest.raises(ValueError, match="at least 2 frames"):
        simulate_movie(s, {0: np.array([3])}, **kw)
    with pytest.raises(ValueError, match="same number of frames"):
        simulate_movie(s, {0: np.array([3, 3]), 1: np.array([3, 3, 3])}, **kw)
    with pytest.raises(ValueError, match="cannot set it to 5"):
        simulate_movie(s, {0: np.array([4, 5])}, **kw)
    with pytest.raises(ValueError, match="cannot set it to -1"):
        simulate_movie(s, {0: np.array([4, -1])}, **kw)
    with pytest.raises(ValueError, match="no column"):
        simulate_movie(s, {s.n_columns: np.array([4, 4])}, **kw)
    with pytest.raises(ValueError, match="pixel_size must be coarser"):
        simulate_movie(s, {0: np.array([4, 4])}, pixel_size=0.05, **kw)


def test_movie_truth_and_drift_follow_the_tracking_convention(fake_optics):
    """A column at r in frame 0 is at r + drift in frame f (segdepth.data.tracking), in the image's y/x coordinates."""
    s = _grid_structure(800 * PAPER_SAMPLING)
    rng = np.random.default_rng(1)
    movie = simulate_movie(s, {4: np.array([4, 4, 3, 3, 2]), 7: np.array([4, 4, 4, 0, 0])}, gpts=800, dose=500.0,
                           drift=(0.3, -0.2), jitter=0.05, rng=rng)
    assert movie["image"].shape[0] == 5 and movie.attrs["pixel_size"] == pytest.approx(0.2006, rel=0.02)
    assert movie.attrs["dose"] == 500.0 and simmovie.REAL_MOVIE_DOSE == pytest.approx(4.1)
    assert list(movie["column_count"].values[:, 4]) == [4, 4, 3, 3, 2]
    assert list(movie["column_count"].values[:, 7]) == [4, 4, 4, 0, 0]
    assert (movie["column_count"].values[:, 0] == 4).all()
    assert np.flatnonzero(movie["changing"].values).tolist() == [4, 7]
    drift = movie["drift"].values
    assert (drift[0] == 0).all() and np.diff(drift, axis=0).mean(axis=0) == pytest.approx([0.3, -0.2], abs=0.1)
    # the centroid of the dip of a column moves with +drift
    y, x = movie["y"].values, movie["x"].values
    j = int(np.argmin(np.hypot(s.column_x - 10.0, s.column_y - 10.0)))
    for f in range(5):
        at = np.array([s.column_y[j], s.column_x[j]]) + drift[f]
        near = (np.abs(y[:, None] - at[0]) < 1.0) & (np.abs(x[None] - at[1]) < 1.0)
        w = (1.0 - movie["clean"].values[f]) * near
        centroid = np.array([(w.sum(1) * y).sum(), (w.sum(0) * x).sum()]) / w.sum()
        np.testing.assert_allclose(centroid, at, atol=0.05)
    # the emptied column's dip is gone from frame 3 on
    dip = movie["clean"].interp(y=s.column_y[7] + drift[:, 0], x=s.column_x[7] + drift[:, 1])
    dip = np.diagonal(dip.values, axis1=1, axis2=2).diagonal()
    assert dip[:3] == pytest.approx(1 - 4 * 0.06, abs=0.04) and dip[3:] == pytest.approx(1.0, abs=0.02)
    # and tracking's alignment of the noisy frames measures that drift
    measured = align_frames(movie["image"].assign_attrs(pixel_size=movie.attrs["pixel_size"]))
    assert measured["aligned"].values.all()
    np.testing.assert_allclose(measured["drift"].values, drift, atol=0.1)


def test_run_simulated_movie_wires_the_path_to_the_score(fake_optics, monkeypatch):
    s = _grid_structure(400 * PAPER_SAMPLING)
    movie = simulate_movie(s, {3: np.array([4, 4, 4, 3, 3, 3])}, gpts=400, dose=50.0, rng=np.random.default_rng(2))
    seen = {}

    def path(image, model, card, **options):  # a perfect path: the truth, read back
        seen.update(options, pixel_size=image.attrs["pixel_size"], dims=image.dims)
        truth = movie["column_count"].values
        tracked = _tracked(movie, truth)
        return {"tracked": tracked, "smoothed": None, "alignment": xr.Dataset({"drift": movie["drift"] + 0.03})}

    monkeypatch.setattr(moviescore, "run_movie_path", path)
    score, result = moviescore.run_simulated_movie(movie, "model", {}, average=3)
    assert seen["lam"] == 50.0 and seen["average"] == 3 and seen["dims"] == ("frame", "y", "x")
    assert seen["pixel_size"] == movie.attrs["pixel_size"]
    assert float(score.smoothed_exact) == 1.0 and float(score.drift_error) == pytest.approx(0.03)
    assert int(score.change_frame[0]) == 3 and bool(score.seen_filtered_90[0])


# --- a real particle and the multislice --------------------------------------------------------------------


@pytest.fixture(scope="module")
def particle():
    rng = np.random.default_rng(4)
    extent = 1024 * PAPER_SAMPLING
    spec = random_particle_spec((extent, extent), rng=rng, surfaces=("flat",), thickness_range=(4, 5), vacuum=10.0,
                                wedge_range=(0.0, 0.0))
    return build_particle(spec, rng=rng)


def test_remove_atoms_and_surface_columns(particle):
    rng = np.random.default_rng(0)
    cols = surface_columns(particle, n=2, rng=rng)
    assert (particle.column_Z[cols] == 8).all() and (particle.column_count[cols] >= 3).all()
    j = int(cols[0])
    c = int(particle.column_count[j])
    fewer = remove_atoms(particle, {j: c - 2})
    assert fewer.column_count[j] == c - 2 and len(fewer.atoms) == len(particle.atoms) - 2
    assert (np.delete(fewer.column_count, j) == np.delete(particle.column_count, j)).all()
    pos = particle.atoms.positions
    on = (np.abs(pos[:, 0] - particle.column_x[j]) < 0.05) & (np.abs(pos[:, 1] - particle.column_y[j]) < 0.05)
    kept = fewer.atoms.positions
    on_kept = (np.abs(kept[:, 0] - particle.column_x[j]) < 0.05) & (np.abs(kept[:, 1] - particle.column_y[j]) < 0.05)
    assert np.sort(kept[on_kept, 2]) == pytest.approx(np.sort(pos[on, 2])[: c - 2])  # the exit-side atoms went
    assert remove_atoms(particle, {j: 0}).column_count[j] == 0
    with pytest.raises(ValueError, match="cannot set it to"):
        remove_atoms(particle, {j: c + 1})
    with pytest.raises(ValueError, match="columns of Z=8"):
        surface_columns(particle, n=1, min_count=99, rng=rng)


@pytest.mark.slow
def test_multislice_movie_drift_matches_the_tracking_convention(particle):
    """The real optics (9 s): align_frames on the movie recovers its drift, r + drift in frame f."""
    rng = np.random.default_rng(1)
    j = int(surface_columns(particle, n=1, rng=rng)[0])
    c = int(particle.column_count[j])
    movie = simulate_movie(particle, {j: np.array([c, c, c - 1, c - 1])}, gpts=1024, dose=200.0,
                           drift=(0.3, -0.2), jitter=0.0, rng=rng)
    assert list(movie["column_count"].values[:, j]) == [c, c, c - 1, c - 1]
    assert movie["changing"].values[j] and movie["changing"].sum() == 1
    np.testing.assert_allclose(movie["drift"].values[-1], [0.9, -0.6], atol=1e-9)
    assert not np.allclose(movie["clean"].values[1], movie["clean"].values[0])
    measured = align_frames(movie["image"].assign_attrs(pixel_size=movie.attrs["pixel_size"]))
    np.testing.assert_allclose(measured["drift"].values, movie["drift"].values, atol=0.1)
