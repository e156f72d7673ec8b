"""benchmarks/pass_ensembles.py: the flips are turned back before the passes are averaged."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from benchmarkmodule import load

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bench():
    return load("pass_ensembles")


def _dataset(rng):
    image = 1 + 0.3 * rng.standard_normal((2, 32, 32)).astype(np.float32)
    label = (np.arange(8) + 0.5) * 0.2
    cx = np.array([[0.3, 0.9, 1.1, np.nan], [0.1, 1.5, np.nan, np.nan]], np.float32)
    cy = np.array([[0.5, 0.1, 1.3, np.nan], [1.5, 0.7, np.nan, np.nan]], np.float32)
    return xr.Dataset({"image": (("sample", "y", "x"), image),
                       "column_x": (("sample", "column"), cx), "column_y": (("sample", "column"), cy),
                       "column_count": (("sample", "column"), np.array([[3, 1, 7, 0], [2, 5, 0, 0]], np.uint8)),
                       "column_Z": (("sample", "column"), np.array([[58, 8, 58, 0], [8, 58, 0, 0]], np.uint8))},
                      coords={"label_x": label, "label_y": label})


def test_parse_combination(bench):
    assert bench.parse_combination("D@0+F@3") == [("D", 0), ("F", 3)]
    assert bench.parse_combination("F@0123") == [("F", 0), ("F", 1), ("F", 2), ("F", 3)]
    for bad in ("D", "D@4", "@0", "D@0+"):
        with pytest.raises(ValueError, match="expected MODEL@FLIPS"):
            bench.parse_combination(bad)


def test_flips_are_turned_back(bench, rng):
    """A per-pixel network is flip-equivariant: its four flips agree; a position-dependent one's do not."""
    ds = _dataset(rng)
    torch.manual_seed(0)
    pixelwise = torch.nn.Conv2d(1, 11, 1)

    class Ramp(torch.nn.Module):  # adds a ramp along x: not equivariant under left-right flips
        def forward(self, x):
            return pixelwise(x) + torch.arange(11.0)[:, None, None] * torch.linspace(0, 1, x.shape[-1])

    cell = bench.column_passes({"P": pixelwise.eval(), "R": Ramp().eval()}, ds, 2.5)
    assert cell["P"].shape == (5, 4, 11) and cell["T"].tolist() == [3, 1, 7, 2, 5]
    p = cell["P"].astype(float)
    for flip in range(1, 4):
        np.testing.assert_allclose(p[:, flip], p[:, 0], atol=2e-3)  # float16 storage
    r = cell["R"].astype(float)
    np.testing.assert_allclose(r[:, 1], r[:, 0], atol=2e-3)  # up-down: the ramp is along x
    assert np.abs(r[:, 2] - r[:, 0]).max() > 0.05
    avg = bench.average(cell, [("P", 0), ("R", 0)])
    np.testing.assert_allclose(avg.sum(1), 1)
    np.testing.assert_allclose(avg, (p[:, 0] / p[:, 0].sum(1, keepdims=True) + r[:, 0]) / 2, atol=3e-3)
