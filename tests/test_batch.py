"""The papermill batch driver on a toy notebook: parallel runs, merge, isolated failures, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from segdepth.apps.batch import expand_grid, main, merge_results, point_key, run_grid

TOY = '''# %% tags=["parameters"]
x = 1
scale = 1.0
results = ""
label = ""

# %%
import os
import xarray as xr
from segdepth.data.store import write_netcdf_atomic

if x == 3:
    raise RuntimeError("x must not be 3")
with open(results + ".count", "a") as f:  # one line per execution
    f.write("run\\n")
ds = xr.Dataset({"y": scale * x**2, "threads": int(os.environ.get("OMP_NUM_THREADS", "0"))})
ds.attrs["label"] = label
write_netcdf_atomic(ds, results)
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    return path


def test_grid_expansion_and_keys():
    points = expand_grid({"lam": [0.1, 2.5], "base": [8]})
    assert points == [{"lam": 0.1, "base": 8}, {"lam": 2.5, "base": 8}]
    assert point_key({"lam": 2.5, "range": [0.25, 25]}) == "lam=2.5_range=0.25-25"
    assert point_key({"lam": 10.0}) == "lam=10"
    with pytest.raises(ValueError, match="non-empty list"):
        expand_grid({"lam": []})
    with pytest.raises(ValueError, match="repeated"):
        expand_grid({"lam": [1, 1]})


def test_parallel_runs_failure_isolated_merge_and_resume(toy, tmp_path, capsys):
    out, merged = tmp_path / "results", tmp_path / "merged.nc"
    kwargs = dict(parameters={"scale": 2.0, "label": "x is {x}"}, out_dir=out, executed_dir=tmp_path / "executed",
                  merged=merged, workers=2, cwd=tmp_path)
    runs = run_grid(toy, {"x": [1, 2, 3]}, **kwargs)
    assert [r.status for r in runs] == ["done", "done", "failed"]
    failed = runs[2]
    assert failed.point == {"x": 3} and "x must not be 3" in failed.message
    assert not failed.result.exists()  # nothing written for the failed point
    assert runs[0].executed.exists() and runs[0].executed.parent == tmp_path / "executed"
    # two workers on this machine share its cores
    assert int(xr.load_dataset(runs[0].result)["threads"]) >= 1
    ds = xr.load_dataset(merged)
    assert list(ds["x"].values) == [1, 2]
    np.testing.assert_allclose(ds["y"].values, [2.0, 8.0])
    assert json.loads(ds.attrs["batch"])["failed"] == [{"x": 3}]
    assert xr.load_dataset(runs[1].result).attrs["label"] == "x is 2"  # templates filled per point

    # Re-running skips finished points and retries only the failed one.
    runs = run_grid(toy, {"x": [1, 2, 3]}, **kwargs)
    assert [r.status for r in runs] == ["skipped", "skipped", "failed"]
    for x in (1, 2):
        assert (out / f"x={x}.nc.count").read_text().count("run") == 1
    assert (out / "x=3.nc.count").exists() is False  # it failed before writing anything


def test_merge_uses_existing_dimension_and_product_grids(tmp_path):
    paths, points = [], []
    for lam in (0.5, 5.0):
        for base in (4, 8):
            p = tmp_path / f"{lam}_{base}.nc"
            xr.Dataset({"acc": ("test_lambda", [lam * base])}, coords={"test_lambda": [lam]}).to_netcdf(p)
            paths.append(p)
            points.append({"test_lams": lam, "base": base})
    ds = merge_results(paths, points, dims={"test_lams": "test_lambda"})
    assert ds["acc"].dims == ("base", "test_lambda")
    np.testing.assert_allclose(ds["acc"].sel(base=8).values, [4.0, 40.0])


def test_cli_reports_failure_with_exit_code(toy, tmp_path, capsys):
    rc = main([str(toy), "--grid", "x", "3", "--out-dir", str(tmp_path / "r"), "--executed-dir",
               str(tmp_path / "e"), "--workers", "1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and '{"x": 3}' in err and "x must not be 3" in err
    assert main([str(tmp_path / "missing.py"), "--grid", "x", "1"]) == 2
