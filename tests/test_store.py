from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr

from segdepth.data.store import finished_shards, merge_datasets, open_dataset, shard_path, write_netcdf_atomic
from segdepth.physics import generate as gen
from segdepth.physics.generate import PRESETS, GenerationParameters, generate_dataset, make_shard

TINY = PRESETS["tiny"]


def _fake_shard(params, k):
    """A cheap stand-in for make_shard with the same layout (no multislice)."""
    n = 2
    ds = xr.Dataset(
        {"image": (("sample", "y", "x"), np.full((n, 8, 8), float(k), np.float32))},
        coords={"structure": ("sample", np.arange(n) + n * k)},
    )
    ds.attrs = {"parameters": json.dumps(params.to_dict(), sort_keys=True), "seed": params.seed, "shard": k}
    return ds


@pytest.mark.slow
def test_tiny_dataset_roundtrip(tmp_path):
    params = TINY.with_(seed=3, vacancy_max=0.3, vacancy_probability=1.0)
    generate_dataset(params, tmp_path / "ds", n_structures=2, workers=0, progress=False)
    ds = open_dataset(tmp_path / "ds", load=True)
    assert ds.sizes["sample"] == params.n_defocus * 2
    assert ds.image.dims == ("sample", "y", "x") and ds.sizes["y"] == params.image_shape
    assert ds.label.dims == ("sample", "label_y", "label_x") and ds.sizes["label_x"] == params.label_shape
    # coordinates in A, pixel centres
    assert float(ds.x[1] - ds.x[0]) == pytest.approx(params.pixel_size)
    assert float(ds.label_x[0]) == pytest.approx(params.pixel_size * params.label_factor / 2)
    # attributes round-trip: parameters rebuild the same object
    assert GenerationParameters.from_dict(json.loads(ds.attrs["parameters"])) == params
    assert ds.attrs["seed"] == 3 and "segdepth_version" in ds.attrs and "git_commit" in ds.attrs
    # vacuum at the cell edge is 1, counts within 0..10, depth map agrees with the column table
    assert np.allclose(ds.image.values[:, :4, :4], 1.0, atol=2e-3)
    for s in range(ds.sizes["sample"]):
        cnt = ds.column_count.values[s]
        Z = ds.column_Z.values[s]
        assert cnt.max() <= 10 and set(np.unique(Z[cnt > 0])) <= {8, 58}
        depth = ds.depth.values[s]
        assert set(np.unique(depth)) - {0} <= set(np.unique(cnt[cnt > 0]))
        # every column's centre pixel carries its own count
        lx, ly = ds.label_x.values, ds.label_y.values
        for c in np.flatnonzero(cnt)[:40]:
            j = np.abs(lx - ds.column_x.values[s, c]).argmin()
            i = np.abs(ly - ds.column_y.values[s, c]).argmin()
            assert depth[i, j] == cnt[c]
    # vacancies: with rate > 0 some O columns are short of the Ce thickness
    assert (ds.vacancy_rate.values > 0).all()


@pytest.mark.slow
def test_dask_local_cluster_matches_in_process(tmp_path):
    params = TINY.with_(seed=11)
    generate_dataset(params, tmp_path / "a", n_structures=2, workers=0, progress=False)
    generate_dataset(params, tmp_path / "b", n_structures=2, workers=1, progress=False)
    a = open_dataset(tmp_path / "a", load=True)
    b = open_dataset(tmp_path / "b", load=True)
    np.testing.assert_array_equal(a.label.values, b.label.values)
    np.testing.assert_allclose(a.image.values, b.image.values, atol=1e-5)


def test_resume_after_kill(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    calls = []

    def flaky(params, k):
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt  # the job is killed while computing shard 2
        return _fake_shard(params, k)

    monkeypatch.setattr(gen, "make_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(TINY, out, n_structures=8, workers=0, progress=False)
    assert finished_shards(out) == [0, 1]
    mtimes = {k: os.stat(shard_path(out, k)).st_mtime_ns for k in (0, 1)}
    calls.clear()
    monkeypatch.setattr(gen, "make_shard", _fake_shard)
    generate_dataset(TINY, out, n_structures=8, workers=0, progress=False)
    assert finished_shards(out) == [0, 1, 2, 3]
    assert {k: os.stat(shard_path(out, k)).st_mtime_ns for k in (0, 1)} == mtimes  # not recomputed
    ds = open_dataset(out, load=True)
    assert ds.sizes["sample"] == 8
    assert list(ds.structure.values) == list(range(8))


def test_no_half_written_shard(tmp_path, monkeypatch):
    ds = _fake_shard(TINY, 0)
    path = tmp_path / "shard_00000.nc"

    def broken(self, target, *a, **k):
        with open(target, "wb") as fh:
            fh.write(b"CDF\x01 partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError):
        write_netcdf_atomic(ds, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed too


def test_refuses_to_mix_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "make_shard", _fake_shard)
    generate_dataset(TINY, tmp_path / "ds", n_structures=2, workers=0, progress=False)
    with pytest.raises(ValueError, match="different parameters.*seed"):
        generate_dataset(TINY.with_(seed=99), tmp_path / "ds", n_structures=2, workers=0, progress=False)
    # a file where a directory should be
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_dataset(TINY, tmp_path / "file", n_structures=2, workers=0, progress=False)


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"thickness_range": (0, 5)}, "thickness"),
        ({"thickness_range": (3, 11)}, "thickness"),
        ({"surfaces": ("flat", "zigzag")}, "surface"),
        ({"gpts": 1026}, "divisible"),
        ({"sampling": 0.05}, "coarser"),
        ({"gpts": 512}, "no room"),
    ],
)
def test_bad_parameters(changes, word):
    with pytest.raises(ValueError, match=word):
        TINY.with_(**changes)


def test_make_shard_is_deterministic_metadata():
    assert PRESETS["paper"].image_shape == 1024 and PRESETS["paper"].pixel_size == pytest.approx(0.053)
    assert PRESETS["paper"].extent == pytest.approx(54.272)
    assert callable(make_shard)


def test_generation_on_a_cluster_given_by_address(tmp_path, monkeypatch):
    """scheduler_address: the shards are computed by an already running dask cluster (left running)."""
    from distributed import Client, LocalCluster

    monkeypatch.setattr(gen, "make_shard", _fake_shard)  # in-process workers see the stand-in
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        paths = generate_dataset(TINY, tmp_path / "ds", n_structures=8, scheduler_address=cluster.scheduler_address,
                                 progress=False)
        assert [p.name for p in paths] == [shard_path(tmp_path / "ds", k).name for k in range(4)]
        for k, path in enumerate(paths):
            with xr.open_dataset(path) as ds:
                assert float(ds.image[0, 0, 0]) == k
        with Client(cluster.scheduler_address) as client:  # the cluster is still up
            assert len(client.scheduler_info()["workers"]) == 2


def _fake_source(directory, n_structures, *, phonons=None, parameters=None):
    directory.mkdir()
    (directory / "parameters.json").write_text(json.dumps(parameters or {"preset": directory.name}))
    for shard in range(2):
        structure = np.arange(n_structures // 2) + shard * (n_structures // 2)
        coords = {"structure": ("sample", structure), "surface": ("sample", np.array(["flat"] * structure.size))}
        if phonons is not None:
            coords["phonons"] = ("sample", np.full(structure.size, phonons, np.int16))
        ds = xr.Dataset({"image": (("sample", "y", "x"), np.random.default_rng(shard).random((structure.size, 4, 4)))},
                        coords=coords, attrs={"parameters": json.dumps(parameters or {}), "shard": shard})
        write_netcdf_atomic(ds, shard_path(directory, shard))


def test_merge_datasets_keeps_structures_distinct_and_fills_missing_coordinates(tmp_path):
    _fake_source(tmp_path / "fp", 4, phonons=2, parameters={"phonons": 2})
    _fake_source(tmp_path / "static", 6, parameters={"phonons": None})
    out = merge_datasets([tmp_path / "fp", tmp_path / "static"], tmp_path / "mix")
    ds = open_dataset(out, load=True)
    assert ds.sizes["sample"] == 10
    assert list(ds.structure.values) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert list(ds.phonons.values) == [2] * 4 + [0] * 6
    np.testing.assert_array_equal(ds.image.values[4:7], open_dataset(tmp_path / "static", load=True).image.values[:3])
    params = json.loads(ds.attrs["parameters"])
    assert params["phonons"] == 2 and [m["parameters"]["phonons"] for m in params["merged_from"]] == [2, None]
    last = xr.load_dataset(shard_path(out, 3))
    assert last.attrs["source"].endswith("static") and json.loads(last.attrs["source_parameters"]) == {"phonons": None}
    # a killed merge resumes: a removed shard is written again, the others are kept
    stamp = os.stat(shard_path(out, 0)).st_mtime_ns
    shard_path(out, 2).unlink()
    merge_datasets([tmp_path / "fp", tmp_path / "static"], out)
    assert shard_path(out, 2).exists() and os.stat(shard_path(out, 0)).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different parameters"):
        merge_datasets([tmp_path / "static", tmp_path / "fp"], out)
    with pytest.raises(FileNotFoundError, match="no dataset shards"):
        merge_datasets([tmp_path / "fp", tmp_path / "nothing"], tmp_path / "mix2")
    with pytest.raises(ValueError, match="at least two"):
        merge_datasets([tmp_path / "fp"], tmp_path / "mix3")
