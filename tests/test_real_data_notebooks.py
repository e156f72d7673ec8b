"""Notebooks 00 (quickstart) and 06 (real data) executed by papermill on tiny parameters.

Assertions are on the files they write.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from segdepth.apps.notebook import run_notebook

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
def test_06_real_data_on_three_frames(tmp_path):
    out, cols = tmp_path / "real.nc", tmp_path / "cols.nc"
    run_notebook(
        NB / "06_real_data.py",
        tmp_path / "06.ipynb",
        {"frames": "0:3", "average": 2, "lattice_average": 3, "threads": 1, "output": str(out),
         "columns_output": str(cols), "figure_prefix": str(tmp_path) + "/"},
    )  # fmt: skip
    r = xr.load_dataset(out)
    assert r.sizes["frame"] == 3 and r.depth.dims == ("frame", "y", "x")
    assert r.attrs["calibrated"] == 1 and r.attrs["pixel_size"] == pytest.approx(0.201, abs=0.006)
    assert 0 < r.attrs["pixel_size_uncertainty"] < 0.005 and json.loads(r.attrs["calibration_peaks"])
    for name in ("valid", "valid_reason", "depth_averaged", "valid_averaged"):
        assert r[name].shape == r.depth.shape, name
    # issue 12: the vacuum band reads vacuum in every frame, the Pt particle is flagged as another lattice
    assert float(r.vacuum_depth0_fraction.min()) >= 0.98
    assert json.loads(r.attrs["validity_fractions"])["other_lattice"] > 0.03
    assert r.drift.shape == (3, 2) and float(np.abs(r.drift).max()) < 1.0  # this movie hardly drifts
    for name in ("vacuum_depth0_fraction", "average_agreement"):
        assert np.all((r[name] >= 0) & (r[name] <= 1))
    assert float(r.average_agreement[0]) > 0.99  # frame 0's "average" is frame 0 itself
    assert float(r.saliency.max()) > 0
    c = xr.load_dataset(cols)
    assert c.probability.dims == ("frame", "column", "depth_class") and c.sizes["column"] > 20
    inside = c.inside.values == 1  # the column's disc lies in the field in that frame (else NaN)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(c.probability.sum("depth_class").values[inside], 1, atol=1e-4)
    assert set(np.unique(c.element.values)) <= {"Ce", "O", "unknown"}
    assert (c.count_std.values[inside] >= 0).all() and c.smoothed_count.dims == ("frame", "column")
    low, high, count = c.count_low.values[inside], c.count_high.values[inside], c["count"].values[inside]
    assert ((0 <= low) & (low <= count) & (count <= high) & (high <= 10)).all()  # the set holds the read count
    for name in ("fig10_real_depth", "fig11_real_saliency", "fig12_depth_over_time"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
