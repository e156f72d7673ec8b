"""Crystals turned in the image plane: the orientation estimate, the turn and its inverse, and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_calibration import fcc_110_image

from segdepth.data.calibration import CalibrationError, estimate_orientation, rotation_between
from segdepth.data.preprocess import rotate_frames, rotated_points, rotation_canvas


def _line_error(a, b):
    return abs((a - b + 90.0) % 180.0 - 90.0)


@pytest.mark.parametrize("pixel_size, rotation", [(0.2, 0.0), (0.13, 23.0), (0.28, -61.0), (0.053, 90.0)])
def test_orientation_of_a_turned_lattice(pixel_size, rotation):
    shape = (160, 160) if pixel_size > 0.1 else (512, 512)
    found = estimate_orientation(fcc_110_image(pixel_size, shape=shape, rotation=rotation), pixel_size)
    # fcc_110_image puts [001] along (-sin r, cos r): at 90 + r degrees from x towards y
    assert _line_error(found.angle, 90.0 + rotation) < 0.5
    assert {"111", "200"} <= {p["family"] for p in found.peaks}
    assert not found.ambiguous and found.uncertainty < 0.5
    assert abs(found.rotation_to(90.0) + rotation) < 0.5 or abs(abs(rotation) - 90) < 1e-9
    assert "[001] at" in str(found)


def test_orientation_of_noisy_frames(rng):
    stack = fcc_110_image(0.18, shape=(150, 200), rotation=-35.0, lam=3.0, rng=rng, frames=4)
    assert _line_error(estimate_orientation(stack, 0.18).angle, 55.0) < 1.0


def test_no_lattice_or_impossible_scale_fails(rng):
    with pytest.raises(CalibrationError, match="no lattice reflections|no reflection"):
        estimate_orientation(rng.poisson(5.0, (128, 128)).astype(float), 0.2)
    with pytest.raises(CalibrationError, match="outside the searched"):  # rings beyond the searched frequencies
        estimate_orientation(fcc_110_image(0.2), 2.0)
    with pytest.raises(ValueError, match="pixel_size"):
        estimate_orientation(fcc_110_image(0.2), -1.0)


def test_rotation_between_takes_the_shortest_turn():
    assert rotation_between(116.0, 90.0) == pytest.approx(-26.0)
    assert rotation_between(80.0, 90.0) == pytest.approx(10.0)
    assert rotation_between(170.0, 90.0) == pytest.approx(-80.0)
    assert rotation_between(5.0, 90.0) == pytest.approx(85.0)
    assert rotation_between(90.0, 90.0) == 0.0


def test_rotate_frames_moves_points_where_rotated_points_says():
    frame = np.zeros((60, 80))
    frame[10, 20] = 1.0
    for angle in (30.0, -47.0, 90.0):
        canvas = rotate_frames(frame, angle, order=1, mode="constant")
        assert canvas.shape == rotation_canvas(frame.shape, angle)
        qx, qy = rotated_points(20, 10, frame.shape, angle)
        iy, ix = np.unravel_index(np.argmax(canvas), canvas.shape)
        assert abs(ix - qx) <= 1 and abs(iy - qy) <= 1
    # the whole frame lands on the canvas, and a turn by 0 changes nothing
    x, y = np.meshgrid([0, 79], [0, 59])
    qx, qy = rotated_points(x, y, frame.shape, 33.0)
    h, w = rotation_canvas(frame.shape, 33.0)
    assert qx.min() >= -0.5 and qy.min() >= -0.5 and qx.max() <= w - 0.5 and qy.max() <= h - 0.5
    np.testing.assert_array_equal(rotate_frames(frame, 0.0), frame.astype(np.float32))
    # a turn by 90 degrees of an odd-even frame is a permutation of the pixels (nearest neighbour)
    rng = np.random.default_rng(0)
    noisy = rng.poisson(3.0, (6, 9)).astype(float)
    np.testing.assert_array_equal(np.sort(rotate_frames(noisy, 90.0, order=0).ravel()), np.sort(noisy.ravel()))


def test_corners_extend_the_frames_edge(rng):
    """The canvas corners repeat the frame's edge pixels (so they carry its noise), or hold its mean when asked
    for a flat fill."""
    frame = rng.poisson(4.0, (80, 80)).astype(float)
    canvas = rotate_frames(frame, 45.0, order=0)
    edge = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    assert np.isin(canvas[:12, :12], edge).all() and canvas[:12, :12].std() > 0
    flat = rotate_frames(frame, 45.0, mode="constant")
    assert flat[0, 0] == pytest.approx(frame.mean()) and flat[:12, :12].std() < 0.1 * frame.std()


def test_predict_records_the_turn_and_refuses_bad_orientations(rng):
    from segdepth.learn.inference import predict

    img = fcc_110_image(0.212, shape=(96, 96), rotation=-40.0)
    out = predict(img, pixel_size=0.212)
    turned = json.loads(out.attrs["orientation"])
    assert turned["estimated"] and turned["rotation"] == pytest.approx(40.0, abs=0.5)
    assert json.loads(out.attrs["arguments"])["orientation"] == "auto"
    plain = predict(img, pixel_size=0.212, orientation=None)
    assert plain["depth"].shape == out["depth"].shape and json.loads(plain.attrs["orientation"])["rotation"] == 0
    np.testing.assert_allclose(out["x"].values, plain["x"].values)  # the maps stay on the frame's own grid
    noise = rng.poisson(5.0, (96, 96)).astype(float)
    nothing = json.loads(predict(noise, pixel_size=0.212).attrs["orientation"])
    assert nothing["rotation"] == 0.0 and nothing["angle"] is None and "no CeO2" in nothing["note"]
    small = json.loads(predict(img, pixel_size=0.212, orientation=88.0).attrs["orientation"])
    assert small["rotation"] == 0.0  # under MIN_ROTATION: read as given
    with pytest.raises(ValueError, match="orientation"):
        predict(img, pixel_size=0.212, orientation="left")
    with pytest.raises(ValueError, match="finite"):
        predict(img, pixel_size=0.212, orientation=float("nan"))


def test_one_111_fringe_family_is_ambiguous_and_not_turned():
    """Fringes of one {111} family alone: [001] is one of two directions 109.5 degrees apart, so predict and the
    CLI read the frame as it is and say why."""
    from segdepth.learn.inference import predict

    px, d, angle = 0.2, 3.124, 20.0  # fringe normal at 20 deg from x
    y, x = np.mgrid[0:128, 0:128] * px
    g = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) / d
    img = 1.0 + 0.3 * np.cos(2 * np.pi * (x * g[0] + y * g[1]))
    found = estimate_orientation(img, px)
    assert found.ambiguous and [p["family"] for p in found.peaks] == ["111"]
    assert min(_line_error(found.angle, angle + 54.74), _line_error(found.angle, angle - 54.74)) < 1.0
    turned = json.loads(predict(img, pixel_size=px).attrs["orientation"])
    assert turned["rotation"] == 0.0 and "ambiguous" in turned["note"]
