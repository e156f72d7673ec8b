from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from segdepth.data.calibration import (
    CEO2_SPACINGS,
    CalibrationError,
    calibrate_pixel_size,
    cubic_spacings,
    estimate_dose,
)

A = 5.411  # CeO2 lattice constant [A]
MOVIE = Path(__file__).resolve().parents[1] / "data" / "raw" / "ptceo2_udvd_40frames.gif"


def fcc_110_image(pixel_size, shape=(160, 160), *, a=A, rotation=0.0, lam=None, rng=None, frames=1, shift=(0, 0)):
    """A projected fcc / fluorite lattice seen along [110]: Gaussian columns on the 2-D lattice
    spanned by [1-10]/2 (x, a / sqrt 2) and [001] (y, a) with a centred site: its reflections
    are {111} (4), {200} (2), {220} (2), ... at the crystal's spacings."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w] * pixel_size + 0.5 * pixel_size
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    u, v = c * x + s * y + shift[0], -s * x + c * y + shift[1]
    ax, ay = a / math.sqrt(2), a
    img = np.zeros(shape)
    sigma = 0.45  # [A]
    for ox, oy in ((0, 0), (0.5, 0.5)):
        du = (u / ax - ox) % 1.0
        dv = (v / ay - oy) % 1.0
        du = np.minimum(du, 1 - du) * ax
        dv = np.minimum(dv, 1 - dv) * ay
        img += np.exp(-(du**2 + dv**2) / (2 * sigma**2))
    img = 1.0 + 0.5 * img
    if lam is None:
        return img
    return np.stack([rng.poisson(lam * img) / lam for _ in range(frames)])


@pytest.mark.parametrize("pixel_size, rotation", [(0.2, 0.0), (0.13, 23.0), (0.28, -61.0)])
def test_synthetic_lattice_known_pixel_size(pixel_size, rotation):
    cal = calibrate_pixel_size(fcc_110_image(pixel_size, rotation=rotation))
    assert cal.pixel_size == pytest.approx(pixel_size, rel=0.01)
    assert 0 < cal.uncertainty < 0.02 * pixel_size
    assert abs(cal.pixel_size - pixel_size) < 4 * cal.uncertainty + 0.002 * pixel_size
    assert {"111", "200"} <= {p["family"] for p in cal.peaks}
    for p in cal.peaks:
        assert p["pixel_size"] == pytest.approx(pixel_size, rel=0.03)
    assert "A/px" in str(cal)


def test_noisy_stack_and_non_square_frame(rng):
    stack = fcc_110_image(0.18, shape=(150, 200), rotation=10.0, lam=3.0, rng=rng, frames=4)
    cal = calibrate_pixel_size(stack)
    assert cal.n_frames == 4
    assert cal.pixel_size == pytest.approx(0.18, rel=0.015)


def test_angles_break_a_tie_and_other_spacings_are_accepted():
    # {220} alone with {111}: a user-given set of families
    cal = calibrate_pixel_size(fcc_110_image(0.15), spacings=cubic_spacings("CeO2", families=("111", "220")))
    assert cal.pixel_size == pytest.approx(0.15, rel=0.01)
    assert {p["family"] for p in cal.peaks} == {"CeO2 111", "CeO2 220"}
    # a Pt lattice (a = 3.924 A) with the Pt spacings
    cal = calibrate_pixel_size(fcc_110_image(0.12, a=3.924), spacings=cubic_spacings("Pt"))
    assert cal.pixel_size == pytest.approx(0.12, rel=0.01)


@pytest.mark.parametrize("case", ["noise", "blank", "one frame of noise, poisson", "ramp"])
def test_no_lattice_fails(case, rng):
    images = {
        "noise": rng.normal(100, 10, (4, 128, 128)),
        "blank": np.full((128, 128), 7.0),
        "one frame of noise, poisson": rng.poisson(3.0, (128, 128)).astype(float),
        "ramp": np.add.outer(np.arange(128.0), np.arange(128.0)),
    }
    with pytest.raises(CalibrationError, match="calibration failed"):
        calibrate_pixel_size(images[case])


def test_single_family_is_ambiguous():
    # cosine fringes of one spacing: {111} or {200}? Refused, unless only one spacing is given.
    y, x = np.mgrid[0:128, 0:128]
    fringes = 1 + 0.3 * np.cos(2 * np.pi * (x * 0.2 / 3.124 + y * 0.05 / 3.124))
    with pytest.raises(CalibrationError, match="ambiguous"):
        calibrate_pixel_size(fringes)
    cal = calibrate_pixel_size(fringes, spacings={"111": CEO2_SPACINGS["111"]})
    assert cal.pixel_size == pytest.approx(math.hypot(0.2, 0.05), rel=0.01)


def test_another_phase_is_not_mistaken(rng):
    # a Pt lattice has the same {111}/{200} ratio and angles as CeO2: with CeO2 spacings alone the
    # strongest reflections still match (at the wrong scale) - that is why another phase's spacings
    # must be given when it is present. A Pt+CeO2 image with both phases' spacings is right.
    pt = fcc_110_image(0.2, (128, 256), a=3.924)
    ceo2 = fcc_110_image(0.2, (128, 256), rotation=35.0)
    both = np.concatenate([pt, ceo2], axis=0)
    spacings = {**cubic_spacings("CeO2"), **cubic_spacings("Pt")}
    cal = calibrate_pixel_size(both, spacings=spacings)
    assert cal.pixel_size == pytest.approx(0.2, rel=0.01)
    assert any(p["family"].startswith("Pt") for p in cal.peaks)
    assert any(p["family"].startswith("CeO2") for p in cal.peaks)


def test_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        calibrate_pixel_size(np.ones((8, 8)))
    with pytest.raises(ValueError, match="spacing"):
        calibrate_pixel_size(fcc_110_image(0.2), spacings={"111": -1.0})
    with pytest.raises(ValueError, match="shape"):
        calibrate_pixel_size(np.ones((2, 2, 32, 32)))
    with pytest.raises(ValueError, match="unknown phase"):
        cubic_spacings("Au")


def test_estimate_dose(rng):
    gain, lam = 12.0, 4.0
    counts = rng.poisson(lam, (3, 64, 64))
    assert estimate_dose(gain * counts) == pytest.approx(lam, rel=0.05)
    assert estimate_dose(gain * counts[0] + 20, offset=20) == pytest.approx(lam, rel=0.05)
    # contrast: over time it is removed, over space it lowers the estimate
    c = 1 + 0.5 * np.sin(np.arange(64) / 3.0)[None, :] * np.ones((64, 1))
    frames = gain * rng.poisson(lam * c, (5, 64, 64))
    assert estimate_dose(frames, mask=np.abs(c - 1) < 0.05) == pytest.approx(lam, rel=0.1)
    assert estimate_dose(frames) == pytest.approx(lam * float(np.mean(c)), rel=0.1)
    assert estimate_dose(frames[0]) < 0.8 * lam * float(np.mean(c))
    with pytest.raises(ValueError, match="no variance"):
        estimate_dose(np.ones((8, 8)))
    with pytest.raises(ValueError, match="offset"):
        estimate_dose(gain * counts, offset=1e6)


@pytest.mark.skipif(not MOVIE.exists(), reason="real movie not shipped")
def test_real_movie_left_half():
    from segdepth.data.io import read_image

    movie = read_image(MOVIE, crop="0:180,0:180")
    spacings = {**cubic_spacings("CeO2"), **cubic_spacings("Pt")}
    cal = calibrate_pixel_size(movie.values[:3], spacings=spacings)
    assert cal.pixel_size == pytest.approx(0.201, abs=0.006)
    assert cal.uncertainty < 0.005


def test_reflections_below_the_matched_ones_are_refused_unless_their_spacing_is_given():
    # fringes of a 5 A spacing (another phase) below the CeO2 {111}: with the CeO2 spacings alone the
    # lowest ring is unexplained, so calibration refuses; given that spacing too, it calibrates.
    image = fcc_110_image(0.2)
    y, x = np.mgrid[0:160, 0:160] * 0.2
    image = image + 0.2 * np.cos(2 * np.pi * (x * math.cos(0.5) + y * math.sin(0.5)) / 5.0)
    with pytest.raises(CalibrationError, match=r"reflections below the matched ones \(rings at 0\.0399, .*phase"):
        calibrate_pixel_size(image)
    cal = calibrate_pixel_size(image, spacings={**CEO2_SPACINGS, "fringes": 5.0})
    assert cal.pixel_size == pytest.approx(0.2, rel=0.01)
    assert "fringes" in {p["family"] for p in cal.peaks}


def test_ring_quantile_is_numpys_quantile_in_every_ring():
    """The background of the peak detector: numpy's quantile of each ring's selected pixels (from one sort), given
    to the whole ring; rings with fewer than 8 selected pixels take the nearest filled ring's value."""
    from segdepth.data.calibration import _radial_quantile

    rng = np.random.default_rng(3)
    h, w = 60, 90
    values = rng.gamma(2.0, size=(h, w))
    radius = np.hypot(*np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)),
                                   indexing="ij"))
    mask = (radius > 0.05) & (radius < 0.4) & (rng.random((h, w)) > 0.2)
    width = 2.0 / h
    out = _radial_quantile(values, radius, width, mask, 0.25)
    ring = np.floor(radius / width).astype(int)
    for k in np.unique(ring[mask]):
        sel = (ring == k) & mask
        if sel.sum() >= 8:
            assert (out[ring == k] == np.quantile(values[sel], 0.25)).all(), k
        else:  # too few pixels: between its neighbours' values
            filled = np.isfinite(out) & mask & (ring != k)
            assert np.isfinite(out[sel]).all() and out[sel].min() >= out[filled].min()
    assert np.isnan(out[ring > ring[mask].max()]).all()  # beyond every selected ring: nothing
    assert np.isnan(_radial_quantile(values, radius, width, np.zeros_like(mask), 0.25)).all()
