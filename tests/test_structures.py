from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from segdepth.physics.structures import (
    SURFACES,
    ParticleSpec,
    build_particle,
    ceo2_110_cell,
    projected_columns,
    random_particle_spec,
)


def test_cell_geometry():
    cell = ceo2_110_cell()
    assert np.allclose(cell.cell.lengths(), [3.826, 5.411, 3.826], atol=1e-3)
    assert sorted(cell.get_chemical_symbols()) == ["Ce", "Ce", "O", "O", "O", "O"]


def test_projected_spacings():
    xy, _, Z = projected_columns()
    # periodic images of the projected cell
    shifts = np.array([(i * 3.826155, j * 5.411) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    ce = xy[Z == 58]
    o = xy[Z == 8]
    o_all = (o[None] + shifts[:, None]).reshape(-1, 2)
    d_ce_o = np.linalg.norm(ce[:, None] - o_all[None], axis=-1).min()
    assert d_ce_o == pytest.approx(5.411 / 4, abs=2e-3)  # 1.353 A
    d_oo = np.linalg.norm(o[:, None] - o_all[None], axis=-1)
    d_oo = d_oo[d_oo > 1e-6].min()
    assert d_oo == pytest.approx(1.913, abs=2e-3)


@pytest.mark.parametrize("surface", SURFACES)
def test_columns_are_pure_and_counts_match(surface, rng):
    spec = ParticleSpec(extent=(40.0, 40.0), surface=surface, thickness=8, roughness=0.25)
    st = build_particle(spec, rng=rng)
    pos = st.atoms.get_positions()
    assert st.n_columns > 20
    # every atom belongs to exactly one column of the table, of the same element
    d = np.hypot(pos[:, 0, None] - st.column_x[None], pos[:, 1, None] - st.column_y[None])
    owner = d.argmin(axis=1)
    assert np.all(d.min(axis=1) < 1e-6)
    assert np.all(st.column_Z[owner] == st.atoms.numbers)  # columns are pure Ce or pure O
    assert np.array_equal(np.bincount(owner, minlength=st.n_columns), st.column_count)
    assert st.column_count.min() >= 1 and st.column_count.max() <= 10
    assert st.column_count.sum() == len(st.atoms)
    # atoms in a column are spaced by one [110] repeat
    for c in range(0, st.n_columns, 7):
        z = np.sort(pos[owner == c, 2])
        assert np.allclose(np.diff(z), 3.826155, atol=1e-4)


def test_vacuum_margin_and_wedge(rng):
    spec = ParticleSpec(extent=(44.0, 44.0), surface="flat", thickness=9, wedge=8.0, edge_wedge=False)
    st = build_particle(spec, rng=rng)
    pos = st.atoms.get_positions()
    assert pos[:, 0].min() >= 10.0 and pos[:, 0].max() <= 34.0
    assert pos[:, 1].min() >= 10.0 and pos[:, 1].max() <= 34.0
    # the thickness rises from the surface inwards (wedge) to the bulk value
    s = spec.surface_position if spec.surface_position is not None else 0.6 * 44.0
    near = st.column_count[st.column_x > s - 2.0]
    far = st.column_count[st.column_x < s - 10.0]
    assert near.mean() < far.mean()
    assert far.max() == 9


def test_vacancies_remove_only_oxygen(rng):
    spec = ParticleSpec(extent=(40.0, 40.0), thickness=10, vacancy_rate=0.3)
    full = build_particle(ParticleSpec(extent=(40.0, 40.0), thickness=10), rng=np.random.default_rng(0))
    vac = build_particle(spec, rng=np.random.default_rng(0))
    n_ce = lambda s: int((s.atoms.numbers == 58).sum())  # noqa: E731
    n_o = lambda s: int((s.atoms.numbers == 8).sum())  # noqa: E731
    assert n_ce(vac) == n_ce(full)
    assert 0.6 < n_o(vac) / n_o(full) < 0.8
    assert vac.column_count.sum() == len(vac.atoms)


def test_same_seed_same_structure():
    a = build_particle(random_particle_spec((40.0, 40.0), rng=np.random.default_rng(5), vacancy_max=0.2),
                       rng=np.random.default_rng(6))
    b = build_particle(random_particle_spec((40.0, 40.0), rng=np.random.default_rng(5), vacancy_max=0.2),
                       rng=np.random.default_rng(6))
    assert np.array_equal(a.atoms.get_positions(), b.atoms.get_positions())


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"thickness": 0}, "thickness"),
        ({"thickness": 11}, "thickness"),
        ({"surface": "zigzag"}, "surface"),
        ({"vacuum": 5.0}, "vacuum"),
        ({"vacancy_rate": 1.5}, "vacancy_rate"),
    ],
)
def test_bad_spec(kwargs, word, rng):
    with pytest.raises(ValueError, match=word):
        build_particle(ParticleSpec(extent=(40.0, 40.0), **kwargs), rng=rng)


@pytest.mark.parametrize("stacking", ["entrance", "exit", "random"])
def test_stacking_moves_columns_along_the_beam_only(stacking):
    """Every stacking keeps the columns, counts, vacancies and in-plane positions of the centred structure; only
    the heights move, by whole cells: flush with the entrance (z = 0) or the exit plane, or anywhere between."""
    spec = random_particle_spec((40.0, 40.0), rng=np.random.default_rng(3), vacancy_max=0.2)
    centred = build_particle(spec, rng=np.random.default_rng(4))
    other = build_particle(replace(spec, stacking=stacking), rng=np.random.default_rng(4))
    assert np.array_equal(other.column_count, centred.column_count)
    assert np.array_equal(other.atoms.numbers, centred.atoms.numbers)
    a, b = centred.atoms.get_positions(), other.atoms.get_positions()
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    cell = 5.411 / np.sqrt(2)  # [110] repeat along the beam [A]
    shift = (b[:, 2] - a[:, 2]) / cell
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    assert np.any(shift != 0)
    z, height = b[:, 2], other.atoms.cell[2, 2]
    assert z.min() >= 0 and z.max() < height
    ce = other.atoms.numbers == 58  # Ce columns: no vacancies, so their ends are where the stacking put them
    column = np.unique(np.round(b[ce, :2], 3), axis=0, return_inverse=True)[1].ravel()
    first = np.array([z[ce][column == c].min() for c in range(column.max() + 1)])
    last = np.array([z[ce][column == c].max() for c in range(column.max() + 1)])
    starts_on_top, ends_at_bottom = first < cell, last >= height - cell
    if stacking == "entrance":
        assert starts_on_top.all() and not ends_at_bottom.all()
    elif stacking == "exit":
        assert ends_at_bottom.all() and not starts_on_top.all()
    else:
        assert not starts_on_top.all() and not ends_at_bottom.all()


def test_bad_stacking(rng):
    with pytest.raises(ValueError, match="stacking must be one of"):
        build_particle(ParticleSpec(extent=(40.0, 40.0), stacking="middle"), rng=rng)
