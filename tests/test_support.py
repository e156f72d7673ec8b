"""Amorphous carbon supports (physics.structures.on_amorphous_support, generator support_max): the film reaches the
wave, keeps the labels, is recorded per sample and seeded; its parameters round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from segdepth.physics.generate import PRESETS, GenerationParameters, make_structure_samples, support_thickness
from segdepth.physics.structures import (
    CARBON_DENSITY,
    ParticleSpec,
    build_particle,
    on_amorphous_support,
)


@pytest.fixture(scope="module")
def particle():
    spec = ParticleSpec(extent=(27.136, 27.136), surface="flat", thickness=4)
    return build_particle(spec, rng=np.random.default_rng(0))


def test_film_density_spacing_place_and_labels(particle):
    film = on_amorphous_support(particle, 20.0, rng=np.random.default_rng(1))
    n_particle = len(particle.atoms)
    carbon = film.atoms.positions[n_particle:]
    assert (film.atoms.numbers[n_particle:] == 6).all()
    np.testing.assert_array_equal(film.atoms.numbers[:n_particle], particle.atoms.numbers)
    ex, ey = particle.atoms.cell.lengths()[:2]
    assert len(carbon) == pytest.approx(CARBON_DENSITY * ex * ey * 20.0, abs=1)  # 2.0 g/cm^3
    assert CARBON_DENSITY == pytest.approx(0.1003, rel=1e-3)
    assert carbon[:, 2].min() >= particle.atoms.positions[:, 2].max() + 2.0 - 1e-9  # on the exit side, below it
    assert carbon[:, 2].max() <= film.atoms.cell.lengths()[2]
    assert not cKDTree(carbon).query_pairs(1.3)  # no two atoms closer than a bond
    for name in ("column_x", "column_y", "column_Z", "column_count"):
        np.testing.assert_array_equal(getattr(film, name), getattr(particle, name))
    again = on_amorphous_support(particle, 20.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again.atoms.positions, film.atoms.positions)  # seeded
    assert on_amorphous_support(particle, 0.0, rng=np.random.default_rng(1)) is particle
    for bad in (-1.0, float("nan"), "2 nm"):
        with pytest.raises(ValueError, match="support thickness must be a length >= 0"):
            on_amorphous_support(particle, bad, rng=np.random.default_rng(1))


def test_support_draws_and_parameters():
    params = PRESETS["robust_support"]
    draws = [support_thickness(params, i) for i in range(200)]
    on = [d for d in draws if d > 0]
    assert 0.35 < len(on) / len(draws) < 0.65 and min(on) >= 0.5 and max(on) <= 5.0
    assert all(support_thickness(PRESETS["shift_support"], i) >= 0.5 for i in range(50))  # every shift structure
    assert support_thickness(PRESETS["robust"], 3) == 0.0
    assert "support_max" not in PRESETS["robust"].to_dict()  # older datasets keep their parameters
    d = json.loads(json.dumps(params.to_dict()))
    assert d["support_max"] == 5.0 and GenerationParameters.from_dict(d) == params
    for bad in ({"support_max": 0.1}, {"support_max": -1.0}, {"support_probability": 1.5}):
        with pytest.raises(ValueError, match="support_"):
            PRESETS["tiny"].with_(**bad)


@pytest.mark.slow
def test_generator_images_the_film_and_records_it():
    base = PRESETS["tiny"].with_(surfaces=("faceted",), thickness_range=(3, 5), seed=3, n_defocus=1)
    plain = make_structure_samples(base, 0)
    film = make_structure_samples(base.with_(support_max=3.0, support_probability=1.0), 0)
    assert "support_thickness" not in plain.coords
    t = float(film["support_thickness"][0])
    assert 0.5 <= t <= 3.0 and film["support_thickness"].attrs["units"] == "nm"
    np.testing.assert_array_equal(film["label"].values, plain["label"].values)  # the film has no columns
    diff = film["image"].values - plain["image"].values
    assert np.sqrt(np.mean(diff**2)) > 0.02  # the speckle of the film reaches the image
    again = make_structure_samples(base.with_(support_max=3.0, support_probability=1.0), 0)
    np.testing.assert_array_equal(again["image"].values, film["image"].values)  # the same seed, the same bytes
