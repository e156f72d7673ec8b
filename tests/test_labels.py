from __future__ import annotations

import numpy as np
import pytest

from segdepth.physics.labels import LabelSettings, make_label_maps


def _single(count=8, Z=58, n=41, p=0.05):
    c = (n // 2 + 0.5) * p  # column exactly on a pixel centre
    return make_label_maps([c], [c], [Z], [count], shape=(n, n), pixel_size=p), n // 2


def test_rings_decrease_monotonically_and_weight_is_one_at_centre():
    maps, i0 = _single()
    lab = maps["label"]
    assert lab[i0, i0] == 8
    assert maps["weight"][i0, i0] == pytest.approx(1.0)
    for direction in [(0, 1), (1, 0), (1, 1), (-1, 0)]:
        prof = [lab[i0 + k * direction[0], i0 + k * direction[1]] for k in range(0, 20)]
        assert all(a >= b for a, b in zip(prof, prof[1:])), prof
        w = [maps["weight"][i0 + k * direction[0], i0 + k * direction[1]] for k in range(0, 20)]
        assert all(a >= b for a, b in zip(w, w[1:]))
    # several distinct rings between the core and the edge
    assert len(np.unique(lab[lab > 0])) >= 4
    assert maps["weight"].min() == pytest.approx(LabelSettings().weight_floor)


def test_centre_radius_ce_and_o():
    p = 0.05
    for Z, r in [(58, 0.85), (8, 0.64)]:
        maps, i0 = _single(count=3, Z=Z, p=p)
        yy, xx = np.mgrid[:41, :41]
        d = np.hypot(yy - i0, xx - i0) * p
        clear = np.abs(d - r) > 1e-6  # pixels exactly on the radius may go either way in floating point
        assert np.array_equal((maps["center_mask"] == 1)[clear], (d <= r)[clear])
        assert np.array_equal(maps["label"] > 0, maps["depth"] > 0)
        assert set(np.unique(maps["depth"])) == {0, 3}
        assert set(np.unique(maps["element"])) == {0, Z}


def test_depth_map_matches_column_table():
    # two columns 1.353 A apart (Ce-O): the nearest column owns each pixel
    p = 0.053
    cx, cy = np.array([5.0, 5.0 + 1.353]), np.array([5.0, 5.0])
    maps = make_label_maps(cx, cy, [58, 8], [7, 4], shape=(200, 200), pixel_size=p)
    d = maps["depth"]
    assert set(np.unique(d)) == {0, 4, 7}
    # depth of each owned region equals the table's count, centres carry the count
    iy = int(5.0 / p)
    assert d[iy, int(5.0 / p)] == 7 and d[iy, int((5.0 + 1.353) / p)] == 4
    assert (maps["element"][d == 7] == 58).all() and (maps["element"][d == 4] == 8).all()


def test_bad_counts():
    with pytest.raises(ValueError, match="0-10"):
        make_label_maps([1.0], [1.0], [58], [11], shape=(8, 8), pixel_size=0.2)
