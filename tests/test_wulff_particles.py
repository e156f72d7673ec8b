"""benchmarks/wulff_particles.py: 3D CeO2 polyhedra seen along [110], cut from bulk fluorite."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarkmodule import load

PERIOD = 5.411 / np.sqrt(2)  # [110] repeat along the beam [A]


@pytest.fixture(scope="module")
def bench():
    return load("wulff_particles")


def _columns(structure):
    pos = structure.atoms.get_positions()
    keys, column = np.unique(np.round(pos[:, :2], 2), axis=0, return_inverse=True)
    return pos, column.ravel()


def test_a_polyhedron_is_pure_columns_of_whole_cells_mirrored_about_its_centre(bench):
    numbers, beam = bench.polyhedron(11.0, 0.8 * np.sqrt(3) * 11.0, np.array([0.4, 1.3, 2.2]), None)
    structure = bench.as_structure(numbers, beam, 54.272)
    pos, column = _columns(structure)
    assert structure.column_count.sum() == len(numbers) and 1 <= structure.column_count.max() <= 10
    assert set(np.unique(structure.column_Z)) == {8, 58}
    for c in range(column.max() + 1):  # one element per column, one atom per [110] repeat
        z = np.sort(pos[column == c, 2])
        assert len(set(structure.atoms.numbers[column == c])) == 1
        np.testing.assert_allclose(np.diff(z), PERIOD, atol=1e-6)
    # (110) is a mirror plane of the polyhedron: the columns' mid-heights lie within half a repeat of each other
    mid = np.array([pos[column == c, 2].mean() for c in range(column.max() + 1)])
    assert np.ptp(mid) <= PERIOD + 1e-6
    assert 1.7 < (numbers == 8).sum() / (numbers == 58).sum() < 2.3  # about CeO2
    # the {111} and {100} cuts: nothing beyond them in the cubic frame is kept
    assert np.ptp(beam[:, 1]) <= 2 * 0.8 * np.sqrt(3) * 11.0 + 1e-6  # y = [001]: bounded by the {100} planes


def test_a_truncated_polyhedron_has_a_flat_base(bench):
    centre = np.array([0.4, 1.3, 2.2])
    full = bench.polyhedron(11.0, 0.8 * np.sqrt(3) * 11.0, centre, None)
    numbers, beam = bench.polyhedron(11.0, 0.8 * np.sqrt(3) * 11.0, centre, 2.0)
    assert len(numbers) < len(full[0]) and beam[:, 2].min() >= -2.0
    structure = bench.as_structure(numbers, beam, 54.272)
    pos, column = _columns(structure)
    lowest = np.array([pos[column == c, 2].min() for c in range(column.max() + 1)])
    # most columns start on the base (within one repeat; a column's first atom sits at its own height in the cell)
    assert np.mean(lowest - lowest.min() < PERIOD) > 0.8
    assert structure.column_count.max() < bench.as_structure(*full, 54.272).column_count.max()
