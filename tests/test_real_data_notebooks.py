"""Notebooks 00 (quickstart) and 06 (real data) executed by papermill on tiny parameters.

Assertions are on the files they write.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from segdepth.notebook import run_notebook

NB = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
def test_00_quickstart(tmp_path):
    run_notebook(
        NB / "00_quickstart.py",
        tmp_path / "00.ipynb",
        {"gpts": 1024, "lam": 2.5, "output": str(tmp_path / "q.nc"), "figure": str(tmp_path / "q.png")},
    )
    q = xr.load_dataset(tmp_path / "q.nc")
    assert q.depth.shape == q.depth_true.shape == (128, 128)
    atoms, vacuum = q.depth_true.values > 0, q.depth_true.values == 0
    assert atoms.any() and np.mean(q.depth.values[atoms] > 0) > 0.8  # the shipped model finds the columns
    assert np.mean(q.depth.values[vacuum] == 0) > 0.95
    assert 0 < float(q.confidence.min()) and float(q.confidence.max()) <= 1
    assert (tmp_path / "q.png").stat().st_size > 10_000


@pytest.mark.slow
def test_06_real_data_on_two_frames(tmp_path):
    out = tmp_path / "real.nc"
    run_notebook(
        NB / "06_real_data.py",
        tmp_path / "06.ipynb",
        {"frames": "0:2", "average": 2, "threads": 1, "output": str(out), "figure_prefix": str(tmp_path) + "/"},
    )
    r = xr.load_dataset(out)
    assert r.sizes["frame"] == 2 and r.depth.dims == ("frame", "y", "x")
    assert r.attrs["calibrated"] == 1 and r.attrs["pixel_size"] == pytest.approx(0.201, abs=0.006)
    assert 0 < r.attrs["pixel_size_uncertainty"] < 0.005 and json.loads(r.attrs["calibration_peaks"])
    assert r.tracked_probability.dims == ("frame", "depth_class", "tracked") and r.sizes["tracked"] == 3
    np.testing.assert_allclose(r.tracked_probability.sum("depth_class"), 1, atol=1e-4)
    for name in ("vacuum_depth0_fraction", "average_agreement"):
        assert np.all((r[name] >= 0) & (r[name] <= 1))
    assert float(r.saliency.max()) > 0
    for name in ("fig10_real_depth", "fig11_real_saliency", "fig12_depth_over_time"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
