"""Randomised optics, specimen and detector (issue 11): each reaches the image, is recorded, is reproducible."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ase import Atoms

from segdepth.physics.generate import (
    HELD_OUT_OUTLINE,
    OPTICS_COORDS,
    PRESETS,
    TRAIN_OUTLINES,
    GenerationParameters,
    make_structure_samples,
)
from segdepth.physics.simulation import (
    OPTICS,
    PAPER_SAMPLING,
    Detector,
    Microscope,
    OpticsRanges,
    apply_detector,
    image_exit_wave,
    simulate_exit_wave,
    tilt_structure,
)
from segdepth.physics.structures import (
    FACET_NORMALS,
    MAX_ATOMS,
    OUTLINES,
    ParticleSpec,
    Structure,
    build_particle,
    random_particle_spec,
)

GPTS = 512  # smallest grid, at the paper's sampling
EXT = GPTS * PAPER_SAMPLING
OVERFOCUS = 40.0
Z_CE, Z_O = 58, 8
RESIDUALS = ("C12", "phi12", "C21", "phi21", "C23", "phi23")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _small_structure() -> Structure:
    """A 5-atom Ce column at the cell centre between two 4-atom O columns (CeO2 [110]-like spacings)."""
    c = EXT / 2
    pos = ([(c, c, 3.826 * k) for k in range(5)] + [(c + 1.35, c + 1.35, 1.913 + 3.826 * k) for k in range(4)]
           + [(c - 1.35, c - 1.35, 1.913 + 3.826 * k) for k in range(4)])
    atoms = Atoms("Ce5O8", positions=pos, cell=[EXT, EXT, 20.0], pbc=True)
    x = np.array([c, c + 1.35, c - 1.35])
    y = np.array([c, c + 1.35, c - 1.35])
    return Structure(atoms, x, y, np.array([Z_CE, Z_O, Z_O], np.uint8), np.array([5, 4, 4], np.uint8),
                     ParticleSpec(extent=(EXT, EXT)))


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    """RMS difference in units of the RMS contrast of ``ref``."""
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref - ref.mean()))


def _facet_distance(particle, x, y) -> np.ndarray:
    """Distance [A] inside one faceted particle (negative outside), written independently of the package."""
    px, py, d = particle[0], particle[1], np.asarray(particle[3:], float)
    a = np.deg2rad(np.asarray(FACET_NORMALS))
    proj = (np.asarray(x)[:, None] - px) * np.cos(a)[None] + (np.asarray(y)[:, None] - py) * np.sin(a)[None]
    return np.min(d[None] - proj, axis=1)


def _check_columns(st: Structure) -> np.ndarray:
    """Every atom in exactly one pure Ce/O column of the table; counts match; returns each atom's column."""
    pos = st.atoms.get_positions()
    d = np.hypot(pos[:, 0, None] - st.column_x[None], pos[:, 1, None] - st.column_y[None])
    owner = d.argmin(axis=1)
    assert np.all(d.min(axis=1) < 1e-6)
    assert np.all(st.column_Z[owner] == st.atoms.numbers)
    assert set(np.unique(st.column_Z)) <= {Z_CE, Z_O}
    assert np.array_equal(np.bincount(owner, minlength=st.n_columns), st.column_count)
    assert st.column_count.min() >= 1 and st.column_count.max() <= MAX_ATOMS
    assert st.column_count.sum() == len(st.atoms)
    # no two table entries share a projected position
    xy = np.round(np.column_stack([st.column_x, st.column_y]), 4)
    assert len(np.unique(xy, axis=0)) == st.n_columns
    return owner


def _within_margin(st: Structure) -> None:
    ex, ey = st.spec.extent
    v = st.spec.vacuum
    pos = st.atoms.get_positions()
    assert pos[:, 0].min() >= v - 1e-9 and pos[:, 0].max() <= ex - v + 1e-9
    assert pos[:, 1].min() >= v - 1e-9 and pos[:, 1].max() <= ey - v + 1e-9


def _particle(x, y, t, r):
    return (float(x), float(y), int(t), *([float(r)] * len(FACET_NORMALS)))


# ---------------------------------------------------------------------------------------------------------------
# 1. every randomised quantity reaches the lens, the wave or the detector


@pytest.fixture(scope="module")
def small():
    st = _small_structure()
    wave = simulate_exit_wave(st, gpts=GPTS)
    ref = image_exit_wave(wave, [OVERFOCUS])
    assert ref.std() > 0.02  # there is an image
    return st, wave, ref


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [
        {"defocus_spread": OPTICS["train"].defocus_spread[1]},
        {"Cs": OPTICS["train"].Cs[0]},
        {"C5": OPTICS["train"].C5[1]},
        {"C12": OPTICS["train"].C12_max, "phi12": 0.4},
        {"C21": OPTICS["train"].C21_max, "phi21": 0.4},
        {"C23": OPTICS["train"].C23_max, "phi23": 0.4},
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_lens_quantity_changes_the_image(small, change):
    _, wave, ref = small
    image = image_exit_wave(wave, [OVERFOCUS], microscope=dataclasses.replace(Microscope(), **change))
    assert image.shape == ref.shape and np.all(np.isfinite(image))
    assert _rel(image, ref) > 0.05, change


@pytest.mark.slow
def test_zero_residual_aberrations_are_the_default_lens(small):
    _, wave, ref = small
    zero = Microscope(C12=0.0, phi12=1.0, C21=0.0, phi21=2.0, C23=0.0, phi23=3.0)  # azimuths without magnitudes
    assert zero.residual_aberrations() == {}
    assert np.array_equal(image_exit_wave(wave, [OVERFOCUS], microscope=zero), ref)
    assert np.array_equal(image_exit_wave(wave, [OVERFOCUS], microscope=Microscope()), ref)


@pytest.mark.slow
@pytest.mark.parametrize("order, magnitude, period", [("12", 10.0, np.pi), ("21", 150.0, 2 * np.pi),
                                                      ("23", 150.0, 2 * np.pi / 3)])
def test_residual_aberrations_have_their_symmetry(small, order, magnitude, period):
    """C_nm enters as cos(m (phi - phi_nm)): the azimuth has period 2 pi / m, and half of it is another image."""
    _, wave, ref = small
    lens = lambda phi: Microscope(**{"C" + order: magnitude, "phi" + order: phi})  # noqa: E731
    a = image_exit_wave(wave, [OVERFOCUS], microscope=lens(0.3))
    b = image_exit_wave(wave, [OVERFOCUS], microscope=lens(0.3 + period))
    c = image_exit_wave(wave, [OVERFOCUS], microscope=lens(0.3 + period / 2))
    assert np.abs(a - b).max() < 1e-4 * ref.std()
    assert _rel(c, a) > 0.02


def test_microscope_to_dict_omits_zero_residuals():
    old_keys = {"energy", "Cs", "C5", "semiangle_cutoff", "defocus_spread", "defocus_samples"}
    assert set(Microscope().to_dict()) == old_keys  # parameter files of earlier datasets are unchanged
    m = Microscope(C21=120.0, phi21=0.5)
    d = m.to_dict()
    assert set(d) == old_keys | set(RESIDUALS)
    assert Microscope(**json.loads(json.dumps(d))) == m
    assert m.residual_aberrations() == {"C12": 0.0, "phi12": 0.0, "C21": 120.0, "phi21": 0.5, "C23": 0.0,
                                        "phi23": 0.0}


def test_tilt_structure_shears_atoms_about_the_mid_plane():
    st = _small_structure()
    before = st.atoms.get_positions().copy()
    tilted = tilt_structure(st, (2.0, -1.0))
    pos = tilted.atoms.get_positions()
    z = before[:, 2]
    dz = z - 0.5 * (z.min() + z.max())
    assert np.allclose(pos[:, 0] - before[:, 0], 2e-3 * dz, atol=1e-12)
    assert np.allclose(pos[:, 1] - before[:, 1], -1e-3 * dz, atol=1e-12)
    assert np.array_equal(pos[:, 2], z)
    assert np.array_equal(st.atoms.get_positions(), before)  # the input is not modified
    assert np.allclose(tilted.atoms.cell.lengths(), st.atoms.cell.lengths())
    assert tilted.column_x is st.column_x and np.array_equal(tilted.column_count, st.column_count)  # labels unchanged
    assert tilt_structure(st, (0.0, 0.0)) is st


@pytest.mark.slow
def test_mistilt_changes_the_exit_wave(small):
    st, wave, ref = small
    tilted = simulate_exit_wave(tilt_structure(st, (OPTICS["train"].mistilt_max, 0.0)), gpts=GPTS)
    psi0, psi1 = np.asarray(wave.array), np.asarray(tilted.array)
    assert np.linalg.norm(psi1 - psi0) / np.linalg.norm(psi0 - psi0.mean()) > 1e-3
    assert _rel(image_exit_wave(tilted, [OVERFOCUS]), ref) > 0.005
    # the same tilt about the other axis gives another wave
    other = simulate_exit_wave(tilt_structure(st, (0.0, OPTICS["train"].mistilt_max)), gpts=GPTS)
    assert np.abs(np.asarray(other.array) - psi1).max() > 1e-3


@pytest.mark.slow
def test_frozen_phonons_change_the_image_and_are_seeded(small):
    st, _, ref = small
    wave = simulate_exit_wave(st, gpts=GPTS, phonons=2, phonon_seed=3)
    assert wave.ensemble_shape == (2,)
    image = image_exit_wave(wave, [OVERFOCUS])
    assert image.shape == ref.shape
    assert _rel(image, ref) > 0.02
    again = image_exit_wave(simulate_exit_wave(st, gpts=GPTS, phonons=2, phonon_seed=3), [OVERFOCUS])
    assert np.array_equal(again, image)
    other = image_exit_wave(simulate_exit_wave(st, gpts=GPTS, phonons=2, phonon_seed=4), [OVERFOCUS])
    assert _rel(other, image) > 0.01


@pytest.mark.slow
def test_potential_parametrization_and_projection_reach_the_wave(small):
    """Other simulators' potential choices (benchmarks/simulator_shift.py) change the image a little, not much."""
    st, _, ref = small
    for options in ({"parametrization": "kirkland"}, {"projection": "finite"}):
        image = image_exit_wave(simulate_exit_wave(st, gpts=GPTS, **options), [OVERFOCUS])
        assert 1e-3 < _rel(image, ref) < 0.2, options
    for bad in ({"parametrization": "doyle"}, {"projection": "exact"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            simulate_exit_wave(st, gpts=GPTS, **bad)


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_bad_phonons(bad):
    with pytest.raises(ValueError, match="phonons"):
        simulate_exit_wave(_small_structure(), gpts=GPTS, phonons=bad)
    with pytest.raises(ValueError, match="phonons"):
        PRESETS["tiny"].with_(phonons=bad)


def test_identity_detector_returns_input(rng):
    images = rng.uniform(0.5, 1.5, (2, 32, 32)).astype(np.float32)
    out = apply_detector(images, Detector())
    assert out.dtype == np.float32 and np.array_equal(out, images)


def test_detector_gain_and_offset(rng):
    images = rng.uniform(0.5, 1.5, (2, 32, 32)).astype(np.float32)
    out = apply_detector(images, Detector(gain=1.03, offset=-0.02))
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.allclose(out, 1.03 * images.astype(np.float64) - 0.02, rtol=0, atol=1e-6)
    # negative intensities are clipped
    assert np.array_equal(apply_detector(images, Detector(offset=-2.0)), np.zeros_like(images))


def test_detector_blur(rng):
    images = rng.uniform(0.5, 1.5, (2, 48, 64)).astype(np.float32)
    out = apply_detector(images, Detector(blur=0.6))
    assert out.shape == images.shape and out.dtype == np.float32
    assert np.allclose(out.mean(axis=(-2, -1)), images.mean(axis=(-2, -1)), rtol=1e-6)
    assert np.all(out.var(axis=(-2, -1)) < 0.8 * images.var(axis=(-2, -1)))
    # images of a stack are blurred independently
    assert np.allclose(out[1], apply_detector(images[1], Detector(blur=0.6)), atol=1e-6)
    # ``blur`` is the standard deviation of the point-spread function [pixels]
    delta = np.zeros((64, 64))
    delta[32, 32] = 1.0
    psf = apply_detector(delta, Detector(blur=2.0))
    k = np.arange(64) - 32
    assert psf.sum() == pytest.approx(1.0, abs=1e-6)  # clipping at 0 of the ~1e-9 ringing
    assert (psf.sum(axis=1) * k**2).sum() == pytest.approx(4.0, rel=1e-3)
    assert (psf.sum(axis=0) * k**2).sum() == pytest.approx(4.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# 2. OpticsRanges


@pytest.mark.parametrize("name", ["train", "shift"])
def test_optics_draws_lie_in_their_ranges(name):
    r = OPTICS[name]
    base = Microscope(energy=200e3, semiangle_cutoff=30.0)
    rng = np.random.default_rng(7)
    for _ in range(100):
        f, lens, det = r.draw(rng, base)
        assert r.overfocus[0] <= f <= r.overfocus[1]
        assert r.defocus_spread[0] <= lens.defocus_spread <= r.defocus_spread[1]
        assert r.Cs[0] <= lens.Cs <= r.Cs[1] and r.C5[0] <= lens.C5 <= r.C5[1]
        for order in ("12", "21", "23"):
            assert 0 <= getattr(lens, "C" + order) <= getattr(r, f"C{order}_max")
            assert 0 <= getattr(lens, "phi" + order) <= 2 * np.pi
        assert lens.energy == 200e3 and lens.semiangle_cutoff == 30.0  # from the base lens
        assert r.blur[0] <= det.blur <= r.blur[1] and r.gain[0] <= det.gain <= r.gain[1]
        assert r.offset[0] <= det.offset <= r.offset[1]
        mx, my = r.draw_mistilt(rng)
        assert abs(mx) <= r.mistilt_max and abs(my) <= r.mistilt_max
    # the same generator state gives the same draws
    assert r.draw(np.random.default_rng(3), base) == r.draw(np.random.default_rng(3), base)
    assert r.draw_mistilt(np.random.default_rng(3)) == r.draw_mistilt(np.random.default_rng(3))


def test_defocus_samples_grow_with_the_spread_and_are_odd():
    spreads = [0.0, 8.0, 15.0, 15.1, 22.0, 30.0, 40.0, 60.0]
    samples = []
    for s in spreads:
        r = OpticsRanges(defocus_spread=(s, s))
        n = r.draw(np.random.default_rng(0), Microscope())[1].defocus_samples
        assert isinstance(n, int) and n % 2 == 1
        assert n >= r.defocus_samples_per_15A and n >= r.defocus_samples_per_15A * s / 15.0
        samples.append(n)
    assert samples == sorted(samples)
    assert samples[-1] > samples[1]
    assert samples[2] == 7  # 7 per 15 A


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"overfocus": (50.0, 10.0)}, "overfocus"),
        ({"overfocus": (0.0, 10.0)}, "overfocus"),
        ({"defocus_spread": (30.0, 10.0)}, "defocus_spread"),
        ({"defocus_spread": (-1.0, 10.0)}, "defocus_spread"),
        ({"Cs": (float("nan"), -5e4)}, "Cs"),
        ({"C5": (8e7, 2e7)}, "C5"),
        ({"blur": (-0.1, 0.5)}, "blur"),
        ({"gain": (0.0, 1.0)}, "gain"),
        ({"offset": (0.1, -0.1)}, "offset"),
        ({"C12_max": -1.0}, "C12_max"),
        ({"C21_max": float("nan")}, "C21_max"),
        ({"C23_max": -1.0}, "C23_max"),
        ({"mistilt_max": -0.5}, "mistilt_max"),
        ({"defocus_samples_per_15A": 0}, "defocus_samples_per_15A"),
    ],
)
def test_bad_optics_ranges(kwargs, word):
    with pytest.raises(ValueError, match=word):
        OpticsRanges(**kwargs)


@pytest.mark.parametrize("name", ["train", "shift"])
def test_optics_round_trip(name):
    r = OPTICS[name]
    d = json.loads(json.dumps(r.to_dict()))
    assert OpticsRanges.from_dict(d) == r
    assert OpticsRanges.from_dict(d).defocus_spread == r.defocus_spread  # tuples again


# ---------------------------------------------------------------------------------------------------------------
# 3. the dataset records the optics and is reproducible


@pytest.fixture(scope="module")
def randomised():
    """One randomised structure simulated twice; the exit wave and the structure it was simulated from are kept."""
    import segdepth.physics.generate as generate

    params = PRESETS["tiny"].with_(optics=OPTICS["train"], surfaces=("faceted",), thickness_range=(3, 5), seed=3)
    assert params.gpts == 1024 and params.n_defocus == 2
    seen = []

    def spy(structure, **kwargs):
        wave = simulate_exit_wave(structure, **kwargs)
        seen.append((structure, wave))
        return wave

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "simulate_exit_wave", spy)
        a = make_structure_samples(params, 0)
    b = make_structure_samples(params, 0)
    return params, a, b, seen[0]


def _seeded_draws(params, index):
    """The optics of structure ``index`` by the documented seeding scheme (``[seed, index, 1]``)."""
    orng = np.random.default_rng([params.seed, index, 1])
    mistilt = params.optics.draw_mistilt(orng)
    draws = sorted((params.optics.draw(orng, params.microscope) for _ in range(params.n_defocus)), key=lambda d: d[0])
    return mistilt, draws


@pytest.mark.slow
def test_dataset_records_per_sample_optics(randomised):
    params, ds, _, _ = randomised
    r = params.optics
    k = params.n_defocus
    for name, (unit, _) in OPTICS_COORDS.items():
        assert name in ds.coords, name
        assert ds[name].dims == ("sample",) and ds[name].size == k
        assert ds[name].attrs["units"] == unit
    v = {name: ds[name].values.astype(np.float64) for name in OPTICS_COORDS}
    tol = lambda x: 1e-6 * max(1.0, abs(x))  # noqa: E731 - float32 storage
    for name, rng_ in (("defocus_spread", r.defocus_spread), ("Cs", r.Cs), ("C5", r.C5), ("detector_blur", r.blur),
                       ("detector_gain", r.gain), ("detector_offset", r.offset)):
        assert np.all(v[name] >= rng_[0] - tol(rng_[0])) and np.all(v[name] <= rng_[1] + tol(rng_[1])), name
    for order in ("12", "21", "23"):
        assert np.all((v["C" + order] >= 0) & (v["C" + order] <= getattr(r, f"C{order}_max") * (1 + 1e-6)))
        assert np.all((v["phi" + order] >= 0) & (v["phi" + order] <= 2 * np.pi + 1e-6))
    for name in ("mistilt_x", "mistilt_y"):  # one mistilt per structure
        assert np.all(np.abs(v[name]) <= r.mistilt_max) and np.unique(v[name]).size == 1
    assert np.all(v["defocus_samples"] % 2 == 1)
    overfocus = ds.overfocus.values
    assert np.all(np.diff(overfocus) >= 0)
    assert np.all((overfocus >= r.overfocus[0] - 1e-4) & (overfocus <= r.overfocus[1] + 1e-3))
    assert np.unique(v["defocus_spread"]).size == k  # every image its own lens
    assert set(ds.surface.values) == {"faceted"}
    # the recorded values are the draws of the documented seeding scheme ([seed, index, 1])
    mistilt, draws = _seeded_draws(params, 0)
    assert np.allclose(v["mistilt_x"], mistilt[0], rtol=1e-6) and np.allclose(v["mistilt_y"], mistilt[1], rtol=1e-6)
    assert np.allclose(overfocus, [d[0] for d in draws], rtol=1e-6)
    for name in ("defocus_spread", "defocus_samples", "Cs", "C5", "C12", "phi12", "C21", "phi21", "C23", "phi23"):
        assert np.allclose(v[name], [getattr(d[1], name) for d in draws], rtol=1e-6), name
    assert np.allclose(v["detector_gain"], [d[2].gain for d in draws], rtol=1e-6)
    # images: finite, normalised near vacuum = 1 (gain/offset errors of a few %), different per sample
    im = ds.image.values
    assert im.shape == (k, params.image_shape, params.image_shape) and np.all(np.isfinite(im))
    assert np.all(np.abs(np.median(im, axis=(1, 2)) - 1.0) < 0.1)
    assert np.abs(im[0] - im[1]).max() > 1e-3


@pytest.mark.slow
def test_dataset_images_use_the_recorded_optics(randomised):
    """Each stored image is the exit wave through its own lens and detector; the wave is of the tilted specimen."""
    params, ds, _, (structure, wave) = randomised
    mistilt, draws = _seeded_draws(params, 0)
    for i, (f, lens, det) in enumerate(draws):
        expected = apply_detector(image_exit_wave(wave, f, microscope=lens, binning=params.binning)[0], det)
        assert np.array_equal(ds.image.values[i], expected), i
        # and not the nominal lens, nor the image without the detector
        nominal = image_exit_wave(wave, f, microscope=params.microscope, binning=params.binning)[0]
        assert _rel(nominal, expected) > 1e-3
    # the recorded (float32) optics reproduce the image closely
    row = {name: float(ds[name].values[0]) for name in OPTICS_COORDS}
    lens = Microscope(**{name: row[name] for name in ("defocus_spread", "Cs", "C5", *RESIDUALS)},
                      defocus_samples=int(row["defocus_samples"]))
    det = Detector(blur=row["detector_blur"], gain=row["detector_gain"], offset=row["detector_offset"])
    again = apply_detector(image_exit_wave(wave, float(ds.overfocus.values[0]), microscope=lens)[0], det)
    assert _rel(again, ds.image.values[0]) < 1e-3
    # the simulated specimen is sheared by the recorded mistilt: x - column x = 1e-3 * mistilt_x * (z - z_mid)
    pos = structure.atoms.get_positions()
    cx, cy = ds.column_x.values[0], ds.column_y.values[0]
    ok = np.isfinite(cx)
    owner = np.argmin(np.hypot(pos[:, 0, None] - cx[None, ok], pos[:, 1, None] - cy[None, ok]), axis=1)
    dz = pos[:, 2] - 0.5 * (pos[:, 2].min() + pos[:, 2].max())
    assert np.abs(dz).max() > 3.0
    for axis, (c, m) in enumerate(((cx[ok], mistilt[0]), (cy[ok], mistilt[1]))):
        slope = np.polyfit(dz, pos[:, axis] - c[owner], 1)[0]
        assert slope == pytest.approx(1e-3 * m, abs=2e-5), axis
    assert abs(mistilt[0]) > 0.05 or abs(mistilt[1]) > 0.05  # the draw is not trivially zero


@pytest.mark.slow
def test_randomised_dataset_is_reproducible(randomised):
    _, a, b, _ = randomised
    assert a.image.values.tobytes() == b.image.values.tobytes()
    for name in OPTICS_COORDS:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
    assert a.depth.values.tobytes() == b.depth.values.tobytes()
    assert list(a.structure_spec.values) == list(b.structure_spec.values)


def test_generation_parameters_round_trip_with_optics():
    for p in (PRESETS["robust"], PRESETS["shift"],
              PRESETS["tiny"].with_(optics=OPTICS["train"], phonons=2, adatoms_max=3, surfaces=("multi", "flat"))):
        d = json.loads(json.dumps(p.to_dict()))
        assert GenerationParameters.from_dict(d) == p
    assert PRESETS["robust"].to_dict()["optics"] == OPTICS["train"].to_dict()


def test_parameters_without_optics_are_backward_compatible():
    old_keys = {"gpts", "sampling", "binning", "label_factor", "n_defocus", "overfocus_range", "surfaces",
                "thickness_range", "vacuum", "vacancy_max", "vacancy_probability", "slice_thickness",
                "structures_per_shard", "seed", "microscope", "labels"}
    for name in ("tiny", "paper", "cpu"):
        d = PRESETS[name].to_dict()
        assert set(d) == old_keys, name
        assert set(d["microscope"]) == {"energy", "Cs", "C5", "semiangle_cutoff", "defocus_spread",
                                        "defocus_samples"}
        assert GenerationParameters.from_dict(json.loads(json.dumps(d))) == PRESETS[name]


# ---------------------------------------------------------------------------------------------------------------
# 4. the shift test never overlaps the training draws


def test_shift_preset_is_apart_from_training():
    robust, shift = PRESETS["robust"], PRESETS["shift"]
    assert shift.seed != robust.seed
    assert robust.optics == OPTICS["train"] and shift.optics == OPTICS["shift"]
    assert tuple(robust.surfaces) == TRAIN_OUTLINES
    assert HELD_OUT_OUTLINE in shift.surfaces and HELD_OUT_OUTLINE in OUTLINES
    assert HELD_OUT_OUTLINE not in robust.surfaces and HELD_OUT_OUTLINE not in TRAIN_OUTLINES
    train = OPTICS["train"]
    centre = 0.5 * (train.defocus_spread[0] + train.defocus_spread[1])
    assert OPTICS["shift"].defocus_spread[0] > centre
    rng = np.random.default_rng(11)
    assert all(OPTICS["shift"].draw(rng, Microscope())[1].defocus_spread > centre for _ in range(200))


def _training_distance(lens: Microscope) -> float:
    """Distance from the training centre in training half-widths over (focal spread, Cs, C5)."""
    t = OPTICS["train"]
    out = 0.0
    for name, (lo, hi) in (("defocus_spread", t.defocus_spread), ("Cs", t.Cs), ("C5", t.C5)):
        out += ((getattr(lens, name) - 0.5 * (lo + hi)) / (0.5 * (hi - lo))) ** 2
    return float(np.sqrt(out))


def test_every_shift_draw_is_farther_from_the_training_centre_than_the_median_training_draw():
    train, shift = OPTICS["train"], OPTICS["shift"]
    rng = np.random.default_rng(0)
    median = np.median([_training_distance(train.draw(rng, Microscope())[1]) for _ in range(2000)])
    draws = [_training_distance(shift.draw(rng, Microscope())[1]) for _ in range(200)]
    # the nearest lens the shift ranges can draw: per coordinate the end of its range nearest the training centre
    nearest = {}
    for name in ("defocus_spread", "Cs", "C5"):
        lo, hi = getattr(shift, name)
        c = 0.5 * sum(getattr(train, name))
        nearest[name] = min(max(c, lo), hi)
    closest = _training_distance(dataclasses.replace(Microscope(), **nearest))
    assert closest <= min(draws) + 1e-12  # consistency: the draws lie in the shift box
    assert closest > median, f"closest possible shift draw {closest:.3f} vs median training draw {median:.3f}"
    assert min(draws) > median


# ---------------------------------------------------------------------------------------------------------------
# 5. structures: faceted and multi outlines, surface vacancies, short surface columns, adatoms


def test_faceted_particle_columns(rng):
    p = _particle(25.0, 25.0, 7, 11.0)
    spec = ParticleSpec(extent=(50.0, 50.0), surface="faceted", particles=(p,), roughness=0.25, wedge=4.0,
                        vacancy_rate=0.1)
    st = build_particle(spec, rng=rng)
    assert st.n_columns > 50
    _check_columns(st)
    _within_margin(st)
    assert np.all(_facet_distance(p, st.column_x, st.column_y) >= -1e-9)  # inside the outline
    assert st.column_count.max() <= 8  # bulk 7, roughness +1
    # without roughness or wedge every column has the particle's bulk thickness, and the outline is filled
    flat = build_particle(dataclasses.replace(spec, roughness=0.0, wedge=0.0, vacancy_rate=0.0), rng=rng)
    assert np.all(flat.column_count == 7)
    xs, ys = np.meshgrid(np.arange(15.0, 35.0, 0.25), np.arange(15.0, 35.0, 0.25))
    deep = _facet_distance(p, xs.ravel(), ys.ravel()) > 3.0
    nearest = np.hypot(xs.ravel()[deep, None] - flat.column_x[None], ys.ravel()[deep, None] - flat.column_y[None])
    assert nearest.min(axis=1).max() < 2.5  # no hole inside
    # a wedge thins the particle towards its outline
    wedged = build_particle(dataclasses.replace(spec, roughness=0.0, wedge=8.0, vacancy_rate=0.0), rng=rng)
    d = _facet_distance(p, wedged.column_x, wedged.column_y)
    assert wedged.column_count[d < 1.0].mean() < 4.5 and np.all(wedged.column_count[d > 7.0] == 7)


def test_faceted_particle_is_cut_at_the_vacuum_margin(rng):
    p = _particle(14.0, 36.0, 5, 12.0)  # reaches past x = 10 and y = 40
    st = build_particle(ParticleSpec(extent=(50.0, 50.0), surface="faceted", particles=(p,)), rng=rng)
    _check_columns(st)
    _within_margin(st)
    assert st.column_x.min() < 12.0 and st.column_y.max() > 38.0  # it is cut, not shrunk


def test_multi_particles_have_their_own_thickness(rng):
    a, b = _particle(18.0, 25.0, 3, 6.0), _particle(34.0, 25.0, 8, 6.0)
    st = build_particle(ParticleSpec(extent=(52.0, 50.0), surface="multi", particles=(a, b), wedge=0.0), rng=rng)
    _check_columns(st)
    _within_margin(st)
    da, db = _facet_distance(a, st.column_x, st.column_y), _facet_distance(b, st.column_x, st.column_y)
    assert np.all((da >= -1e-9) | (db >= -1e-9))
    assert np.all(st.column_count[da >= 0] == 3) and np.all(st.column_count[db >= 0] == 8)
    assert (da >= 0).sum() > 10 and (db >= 0).sum() > 10


def test_adatoms_are_short_columns_just_outside_the_outline(rng):
    p = _particle(25.0, 25.0, 6, 9.0)
    spec = ParticleSpec(extent=(50.0, 50.0), surface="faceted", particles=(p,), adatoms=6, wedge=0.0)
    st = build_particle(spec, rng=rng)
    _check_columns(st)
    _within_margin(st)
    d = _facet_distance(p, st.column_x, st.column_y)
    outside = d < 0
    assert outside.sum() == 6
    assert np.all(d[outside] > -3.5)
    assert set(st.column_count[outside]) <= {1, 2}
    assert np.all(st.column_count[~outside] == 6)
    bare = build_particle(dataclasses.replace(spec, adatoms=0), rng=rng)
    assert np.all(_facet_distance(p, bare.column_x, bare.column_y) >= 0)
    assert bare.n_columns == st.n_columns - 6


def test_surface_vacancies_remove_only_oxygen_near_the_surface():
    p = _particle(30.0, 30.0, 8, 14.0)
    base = ParticleSpec(extent=(60.0, 60.0), surface="faceted", particles=(p,))
    full = build_particle(base, rng=np.random.default_rng(0))
    vac = build_particle(dataclasses.replace(base, vacancy_rate=0.05, surface_vacancy_rate=0.5),
                         rng=np.random.default_rng(0))
    _check_columns(vac)

    def counts(st):
        pos, Z = st.atoms.get_positions(), st.atoms.numbers
        near = _facet_distance(p, pos[:, 0], pos[:, 1]) < base.surface_depth
        return {"ce": int((Z == Z_CE).sum()), "o_near": int(((Z == Z_O) & near).sum()),
                "o_far": int(((Z == Z_O) & ~near).sum())}

    f, v = counts(full), counts(vac)
    assert v["ce"] == f["ce"]
    assert f["o_near"] > 200 and f["o_far"] > 200
    lost_near = 1 - v["o_near"] / f["o_near"]
    lost_far = 1 - v["o_far"] / f["o_far"]
    assert 0.0 < lost_far < 0.12  # the bulk rate
    assert 0.42 < lost_near < 0.68  # bulk + surface rate
    assert vac.column_count.sum() == len(vac.atoms)


def test_surface_short_cuts_only_surface_columns():
    p = _particle(30.0, 30.0, 9, 14.0)
    st = build_particle(ParticleSpec(extent=(60.0, 60.0), surface="faceted", particles=(p,), surface_short=1.0,
                                      wedge=0.0),
                        rng=np.random.default_rng(2))
    _check_columns(st)
    d = _facet_distance(p, st.column_x, st.column_y)
    near = d < 4.0
    assert near.sum() > 20 and (~near).sum() > 20
    assert np.all(st.column_count[near] <= 3)
    assert np.all(st.column_count[~near] == 9)


def test_random_faceted_and_multi_specs_build():
    for seed in range(6):
        for outline, n in (("faceted", {1}), ("multi", {2, 3})):
            spec = random_particle_spec((40.0, 40.0), rng=np.random.default_rng(seed), surfaces=(outline,),
                                        thickness_range=(4, 6), adatoms_max=3, surface_short_max=0.3,
                                        surface_vacancy_max=0.2, vacancy_max=0.2)
            assert spec.surface == outline and len(spec.particles) in n
            assert all(4 <= q[2] <= 6 and len(q) == 3 + len(FACET_NORMALS) for q in spec.particles)
            assert 0 <= spec.adatoms <= 3 and 0 <= spec.surface_short <= 0.3
            assert spec.vacancy_rate > 0 or spec.surface_vacancy_rate == 0  # surface vacancies with bulk ones
            st = build_particle(spec, rng=np.random.default_rng(seed + 100))
            _check_columns(st)
            _within_margin(st)
            # the spec survives JSON (as stored in the dataset)
            d = json.loads(json.dumps(spec.to_dict()))
            assert d["particles"] == [list(q) for q in spec.particles]


def test_random_spec_defaults_draw_as_before():
    kw = dict(vacancy_max=0.2, vacancy_probability=1.0)
    new = dict(wedge_range=(0.0, 8.0), surface_vacancy_max=0.0, surface_short_max=0.0, adatoms_max=0)
    for seed in range(20):
        a = random_particle_spec((40.0, 40.0), rng=np.random.default_rng(seed), **kw)
        b = random_particle_spec((40.0, 40.0), rng=np.random.default_rng(seed), **kw, **new)
        assert a == b
    # pinned to the draws of the version before these keywords existed (same seed, same particle)
    s = random_particle_spec((40.0, 40.0), rng=np.random.default_rng(5), **kw)
    before = {"surface": "sawtooth", "thickness": 6, "surface_position": 26.63502046621766,
              "x_start": 11.615881579472987, "y_start": 11.030651122084285, "y_stop": 29.428397239823717,
              "wedge": 0.3622015512195613, "amplitude": 2.1950308429086722, "period": 11.993408920520572,
              "phase": 6.523691115879878, "roughness": 0.25, "vacancy_rate": 0.07667377615710365}
    for k, v in before.items():
        assert getattr(s, k) == (v if isinstance(v, str) else pytest.approx(v, rel=1e-12, abs=0)), k
    assert s.particles == () and s.adatoms == 0 and s.surface_short == 0.0 and s.surface_vacancy_rate == 0.0
    st = build_particle(s, rng=np.random.default_rng(6))
    assert (len(st.atoms), st.n_columns) == (431, 75)
    # wedge_range sets the wedge
    assert random_particle_spec((40.0, 40.0), rng=np.random.default_rng(1), wedge_range=(12.0, 12.0)).wedge == 12.0
    with pytest.raises(ValueError, match="wedge_range"):
        random_particle_spec((40.0, 40.0), rng=np.random.default_rng(1), wedge_range=(5.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"surface_short": 2.0}, "surface_short"),
        ({"surface_short": -0.1}, "surface_short"),
        ({"surface_vacancy_rate": 1.5}, "surface_vacancy_rate"),
        ({"adatoms": -1}, "adatoms"),
        ({"adatoms": 1.5}, "adatoms"),
        ({"adatoms": True}, "adatoms"),
        ({"surface": "faceted"}, "particles"),
        ({"surface": "multi"}, "particles"),
        ({"surface": "faceted", "particles": ((25.0, 25.0, 5, 1.0),)}, "particles"),
        ({"surface": "faceted", "particles": (_particle(25.0, 25.0, 0, 5.0),)}, "thickness"),
        ({"surface": "faceted", "particles": (_particle(25.0, 25.0, 11, 5.0),)}, "thickness"),
        ({"surface": "multi", "particles": ((25.0, 25.0, 5, *([5.0] * 7), 0.0),)}, "facet"),
        ({"surface": "hexagon"}, "surface"),
    ],
)
def test_bad_new_spec_values(kwargs, word, rng):
    with pytest.raises(ValueError, match=word):
        build_particle(ParticleSpec(extent=(50.0, 50.0), **kwargs), rng=rng)


def test_bad_generation_outline():
    with pytest.raises(ValueError, match="surface"):
        PRESETS["tiny"].with_(surfaces=("faceted", "hexagon"))
    assert PRESETS["tiny"].with_(surfaces=("faceted", "multi")).surfaces == ("faceted", "multi")


# ---------------------------------------------------------------------------------------------------------------
# 5. thermal vibrations for a fraction of the structures (preset robust_phonons)


def test_phonon_presets_and_probability_validation():
    rp, sp = PRESETS["robust_phonons"], PRESETS["shift_phonons"]
    assert rp.phonons == 2 and rp.phonon_probability == 0.75 and rp.with_(phonons=0, phonon_probability=1.0) == \
        PRESETS["robust"]
    assert sp.phonons == 4 and sp.seed not in (PRESETS["shift"].seed, PRESETS["robust"].seed)
    assert sp.optics == OPTICS["shift"]
    for name in ("robust_phonons", "shift_phonons"):
        d = PRESETS[name].to_dict()
        assert GenerationParameters.from_dict(json.loads(json.dumps(d))) == PRESETS[name]
    assert "phonon_probability" not in PRESETS["robust"].to_dict()  # older datasets keep their parameters
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="phonon_probability"):
            PRESETS["tiny"].with_(phonon_probability=bad)


@pytest.mark.slow
def test_phonon_probability_draws_per_structure_and_is_recorded():
    params = PRESETS["tiny"].with_(n_defocus=1, phonons=1, phonon_probability=0.5, seed=0)
    drawn = [int(np.random.default_rng([0, i, 3]).random() < 0.5) for i in range(4)]
    assert 0 < sum(drawn) < 4  # both kinds among the first four structures of seed 0
    samples = [make_structure_samples(params, i) for i in range(4)]
    assert [int(s.phonons.values[0]) for s in samples] == drawn
    static = PRESETS["tiny"].with_(n_defocus=1, seed=0)
    for i, s in enumerate(samples):
        same = np.array_equal(s.image.values, make_structure_samples(static, i).image.values)
        assert same == (not drawn[i])  # vibrating structures give another image, static ones the same bytes


# ---------------------------------------------------------------------------------------------------------------
# Which simulator: the focal spread as an incoherent defocus average or as abTEM's quasi-coherent envelope


@pytest.mark.slow
def test_quasi_coherent_envelope_is_another_image_and_agrees_without_spread(small):
    _, wave, ref = small
    spread = OPTICS["train"].defocus_spread[1]
    incoherent = image_exit_wave(wave, [OVERFOCUS], microscope=Microscope(defocus_spread=spread, defocus_samples=15))
    quasi = image_exit_wave(wave, [OVERFOCUS], microscope=Microscope(defocus_spread=spread, coherence="quasi"))
    assert quasi.shape == ref.shape and np.all(np.isfinite(quasi))
    assert abs(float(quasi.mean()) - float(incoherent.mean())) < 0.02  # both conserve the vacuum level
    assert _rel(quasi, incoherent) > 0.05  # a different approximation, a different image
    # without a focal spread both are the coherent image
    a = image_exit_wave(wave, [OVERFOCUS], microscope=Microscope(defocus_spread=0.0, defocus_samples=1))
    b = image_exit_wave(wave, [OVERFOCUS], microscope=Microscope(defocus_spread=0.0, coherence="quasi"))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_coherence_model_is_validated_and_omitted_from_old_files():
    with pytest.raises(ValueError, match="coherence"):
        Microscope(coherence="partial")
    assert "coherence" not in Microscope().to_dict()
    assert Microscope(coherence="quasi").to_dict()["coherence"] == "quasi"
    with pytest.raises(ValueError, match="quasi_coherent"):
        OpticsRanges(quasi_coherent=1.5)


def test_quasi_coherent_probability_draws_per_image_and_keeps_old_streams():
    base = Microscope()
    old, new = np.random.default_rng(11), np.random.default_rng(11)
    for _ in range(20):  # probability 0 draws nothing: the same stream as before the option existed
        assert OPTICS["train"].draw(old, base) == dataclasses.replace(OPTICS["train"], quasi_coherent=0.0).draw(new,
                                                                                                                 base)
    rng = np.random.default_rng(5)
    half = dataclasses.replace(OPTICS["train"], quasi_coherent=0.5)
    kinds = [half.draw(rng, base)[1].coherence for _ in range(400)]
    assert set(kinds) == {"incoherent", "quasi"} and 0.4 < kinds.count("quasi") / 400 < 0.6
    every = dataclasses.replace(OPTICS["shift"], quasi_coherent=1.0)
    assert {every.draw(rng, base)[1].coherence for _ in range(20)} == {"quasi"}
    assert OpticsRanges.from_dict(half.to_dict()) == half
    assert PRESETS["shift_quasi"].optics.quasi_coherent == 1.0 and PRESETS["robust_quasi"].optics.quasi_coherent == 0.5
    assert PRESETS["shift_quasi"].surfaces == PRESETS["shift"].surfaces
    assert PRESETS["shift_quasi"].seed not in {PRESETS[p].seed for p in ("robust", "robust_quasi", "shift",
                                                                         "robust_low_spread")}
    low = PRESETS["robust_low_spread"].optics
    assert low.defocus_spread == (0.0, 10.0) and low.quasi_coherent == 0.5  # coherent images are possible
    assert PRESETS["robust_low_spread"].seed != PRESETS["robust_quasi"].seed


def test_wide_spread_and_coherent_shift_presets():
    """Coherent images in training (focal spread from 0) and a coherent shift test apart from every training seed."""
    wide, coherent = PRESETS["robust_wide_spread"], PRESETS["shift_coherent"]
    assert wide.optics.defocus_spread == (0.0, 40.0) and wide.optics.quasi_coherent == 0.0
    assert wide.surfaces == PRESETS["robust"].surfaces and HELD_OUT_OUTLINE not in wide.surfaces
    assert coherent.optics.defocus_spread == (0.0, 0.0) and coherent.surfaces == PRESETS["shift"].surfaces
    assert dataclasses.replace(coherent.optics, defocus_spread=OPTICS["shift"].defocus_spread) == OPTICS["shift"]
    training = {PRESETS[p].seed for p in ("robust", "robust_quasi", "robust_low_spread", "robust_wide_spread")}
    tests = {PRESETS[p].seed for p in ("shift", "shift_quasi", "shift_phonons", "shift_coherent")}
    assert len(training) == 4 and len(tests) == 4 and not training & tests
    rng = np.random.default_rng(3)
    spreads = [wide.optics.draw(rng, Microscope())[1].defocus_spread for _ in range(200)]
    assert min(spreads) < 4.0 and max(spreads) > 36.0
    lenses = [coherent.optics.draw(rng, Microscope())[1] for _ in range(5)]
    assert {(m.defocus_spread, m.coherence) for m in lenses} == {(0.0, "incoherent")}
    for name in ("robust_wide_spread", "shift_coherent"):
        assert GenerationParameters.from_dict(json.loads(json.dumps(PRESETS[name].to_dict()))) == PRESETS[name]


@pytest.mark.slow
def test_dataset_records_the_coherence_model_of_each_image():
    params = PRESETS["tiny"].with_(optics=dataclasses.replace(OPTICS["train"], quasi_coherent=1.0), n_defocus=2,
                                  surfaces=("flat",), thickness_range=(3, 4))
    ds = make_structure_samples(params, 0)
    assert ds["quasi_coherent"].values.tolist() == [1.0, 1.0]
    plain = make_structure_samples(params.with_(optics=OPTICS["train"]), 0)
    assert plain["quasi_coherent"].values.tolist() == [0.0, 0.0]
    assert np.abs(plain.image.values - ds.image.values).max() > 1e-3  # the same structure, another simulator
