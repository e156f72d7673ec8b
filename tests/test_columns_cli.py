"""segdepth columns: the (frame, column) table of a movie from the command line (the path of notebook 06)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from segdepth.apps.cli import main

MOVIE = Path(__file__).resolve().parents[1] / "data/raw/ptceo2_udvd_40frames.gif"


def test_columns_of_the_real_movie(tmp_path, capsys):
    out = tmp_path / "columns.nc"
    args = ["columns", str(MOVIE), "--crop", "0:180,:", "--frames", "0:3", "--pixel-size", "0.2006",
            "--average", "3", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the movie's regime warnings (README, 'The contrast regime')
        assert main(args) == 0, capsys.readouterr().err
    line = capsys.readouterr().out
    assert line.startswith(f"segdepth: wrote {out}: ") and "over 3 frames" in line
    with xr.open_dataset(out) as ds:
        assert ds.sizes["frame"] == 3 and ds.sizes["column"] > 20
        for name in ("x", "y", "element", "probability", "expected_count", "count_low", "count_high",
                     "smoothed_count", "smoothed_count_low", "smoothed_count_high", "valid", "inside"):
            assert name in ds.variables, name
        assert set(np.unique(ds["element"].values)) <= {"Ce", "O", "unknown"}
        np.testing.assert_allclose(ds["probability"].sum("depth_class").where(ds["inside"] == 1), 1, atol=1e-4)
        low, high, count = ds["smoothed_count_low"], ds["smoothed_count_high"], ds["smoothed_count"]
        assert bool(((low <= count) & (count <= high)).all())  # the smoothed count lies in its own count set
        assert ds.attrs["pixel_size"] == pytest.approx(0.2006) and ds.attrs["source"] == MOVIE.name
        assert json.loads(ds.attrs["command"])[:2] == ["segdepth", "columns"] and ds.attrs["lam"] > 0


def test_columns_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).poisson(5.0, (2, 160, 160)).astype(np.float32))
    out = tmp_path / "columns.nc"
    cases = [
        (["--average", "0"], "--average must be >= 1"),
        (["--p-change", "1.5"], "--p-change must be a probability in (0, 1)"),
        (["--beam-energy", "high"], "--beam-energy must be a positive number"),
        ([], "no region is valid CeO2 [110] in half the frames or more, no columns to follow: could not vouch for "
             "100.0 % of the pixels (100.0 % no crystal)"),  # a field of noise: no crystal, nothing to follow
    ]
    for extra, message in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no crystal lattice found" (valid = 0)
            assert main(["columns", str(noise), "--pixel-size", "0.2", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    assert main(["columns", str(noise), "--out", str(out)]) == 2  # no pixel size: refused before any model loads
    assert "pixel size" in capsys.readouterr().err
