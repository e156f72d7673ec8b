"""Local lattice maps (segdepth.data.lattice): vacuum, CeO2 [110], Pt, wrong angles, boundaries and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from segdepth.data.lattice import LATTICE_THRESHOLD, local_lattice, on_grid, zone_angles
from segdepth.physics.structures import LATTICE_CONSTANT, projected_columns

PX = 0.2  # [A], like the real movie
N = 160  # 32 A field


def _columns_image(a: float, cation_only: bool, *, angle: float = 12.0, n: int = N, sigma: float = 0.45,
                   region=None) -> np.ndarray:
    """Gaussian columns of the CeO2 [110] projection (or its fcc cation sublattice, scaled to ``a``), rotated."""
    xy, _, numbers = projected_columns(a)
    if cation_only:
        xy, numbers = xy[numbers == 58], numbers[numbers == 58]
    cell = np.array([a / math.sqrt(2), a])
    k = int(n * PX / cell.min()) + 4
    i, j = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing="ij")
    pts = (xy[None, None] + np.stack([i, j], -1)[:, :, None] * cell).reshape(-1, 2)
    weight = np.tile(np.where(numbers == 58, 1.0, 0.35), i.size)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    pts = pts @ np.array([[c, s], [-s, c]]) + n * PX / 2
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * PX
    img = np.zeros((n, n))
    for (x0, y0), w in zip(pts, weight, strict=True):
        if -2 < x0 < n * PX + 2 and -2 < y0 < n * PX + 2 and (region is None or region(x0, y0)):
            img += w * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return 1.0 - 0.3 * img  # dark columns on a bright vacuum level


def _noisy(clean: np.ndarray, lam: float, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    return xr.DataArray(rng.poisson(lam * clean) / lam, dims=("y", "x"), attrs={"pixel_size": PX})


def test_zone_angles_of_ceo2_110():
    np.testing.assert_allclose(zone_angles((1, 1, 1), (1, 1, 1)), [70.53], atol=0.01)
    np.testing.assert_allclose(sorted(zone_angles((1, 1, 1), (2, 0, 0))), [54.74], atol=0.01)
    assert len(zone_angles((2, 0, 0), (2, 0, 0))) == 0  # only one {200} pair lies in the [110] zone


def test_noise_alone_is_no_lattice():
    """The threshold: shot noise of vacuum stays below it (measured 99.9 % quantile 16-19, see the module)."""
    ds = local_lattice(_noisy(np.ones((N, N)), 4.0))
    assert not ds["crystal"].any()
    assert (ds["reason"] == 1).all()
    assert float(ds["lattice_score"].max()) < LATTICE_THRESHOLD


def test_ceo2_110_is_recognised_and_pt_is_refuted():
    ceo2 = local_lattice(_noisy(_columns_image(LATTICE_CONSTANT, cation_only=False), 100.0))
    inner = dict(y=slice(8, 24), x=slice(8, 24))  # away from the field edge
    assert float(ceo2["ceo2_110"].sel(**inner).mean()) > 0.98
    pt = local_lattice(_noisy(_columns_image(3.924, cation_only=True), 100.0, seed=1))
    assert float(pt["crystal"].sel(**inner).mean()) > 0.98  # a lattice ...
    assert float((pt["reason"].sel(**inner) == 2).mean()) > 0.95  # ... but not CeO2 [110]
    assert float(pt["ceo2_score"].sel(**inner).median()) < 0.5 < float(ceo2["ceo2_score"].sel(**inner).median())


def test_wrong_angle_between_ceo2_fringes_refutes_110():
    """Two sets of {111} fringes at 90 degrees exist in no CeO2 zone with 70.5-degree {111} pairs."""
    yy, xx = (np.mgrid[0:N, 0:N] + 0.5) * PX
    d = 3.124
    clean = 1.0 + 0.1 * np.cos(2 * np.pi * xx / d) + 0.1 * np.cos(2 * np.pi * yy / d)
    ds = local_lattice(_noisy(clean, 50.0))
    inner = dict(y=slice(8, 24), x=slice(8, 24))
    assert float(ds["crystal"].sel(**inner).mean()) > 0.98
    assert float((ds["reason"].sel(**inner) == 2).mean()) > 0.9


def test_boundary_between_crystal_and_vacuum():
    """Crystal in the lower half only: the map's edge lies within ~3 A of the particle's edge."""
    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, region=lambda x, y: y > 16.0)
    ds = local_lattice(_noisy(clean, 100.0))
    crystal = ds["crystal"].mean("x")
    inner = ds["crystal"].sel(x=slice(6, 26)).mean("x")  # an image edge is no lattice
    assert float(crystal.sel(y=slice(0, 12)).max()) < 0.05  # vacuum more than 4 A away: no lattice
    assert float(inner.sel(y=slice(20, 28)).min()) > 0.95


def test_movie_averaging_and_on_grid():
    clean = _columns_image(LATTICE_CONSTANT, cation_only=False)
    frames = np.stack([_noisy(clean, 10.0, seed=s).values for s in range(3)])
    stack = xr.DataArray(frames, dims=("frame", "y", "x"), coords={"frame": [5, 6, 7]}, attrs={"pixel_size": PX})
    single = local_lattice(stack)
    averaged = local_lattice(stack, average=3)
    assert single.sizes == averaged.sizes == {"frame": 3, "y": N, "x": N}
    assert list(averaged["frame"].values) == [5, 6, 7]
    # averaging three frames raises the lattice's signal above the single frames'
    assert float(averaged["lattice_score"].median()) > float(single["lattice_score"].median())
    y = np.linspace(1, 30, 40)
    g = on_grid(averaged, y, y[:30])
    assert g["crystal"].dtype == bool and g["reason"].dtype == np.uint8
    assert g["lattice_score"].shape == (3, 40, 30)


@pytest.mark.parametrize(
    ("kwargs", "image", "message"),
    [
        ({}, np.ones((40, 40)), "smaller than the 12.0 A window"),
        ({}, np.full((N, N), np.nan), "NaN"),
        ({"average": 2}, np.ones((N, N)), "odd number"),
        ({"window": -1.0}, np.ones((N, N)), "window must be a positive number"),
        ({"tolerance": 0.5}, np.ones((N, N)), "tolerance"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, image, message):
    with pytest.raises(ValueError, match=message):
        local_lattice(xr.DataArray(image, dims=("y", "x"), attrs={"pixel_size": PX}), **kwargs)


def test_pixel_size_is_required():
    with pytest.raises(ValueError, match="pixel"):
        local_lattice(np.ones((N, N)))
