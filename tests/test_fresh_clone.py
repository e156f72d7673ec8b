"""Issue 14: notebooks 03-05 run on their defaults from a fresh clone (the shipped test split in data/test).

The slow test copies what a clone holds (``git ls-files``: tracked files and new ones not ignored, so
nothing gitignored such as ``data/simulated/`` helps) into a temporary directory and runs the README's
batch command there for one new test dose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import numpy as np
import pytest
import xarray as xr

from segdepth.data.store import open_dataset

REPO = Path(__file__).resolve().parents[1]
TEST_SPLIT = REPO / "data" / "test"
EVALUATION_NOTEBOOKS = ("03_evaluation.py", "04_noise_generalization.py", "05_denoise_baselines.py")
VARIABLES = {"image", "depth", "label", "weight", "center_mask", "element", "column_x", "column_y", "column_Z",
             "column_count"}


def defaults(notebook: str) -> dict:
    """The values of a notebook's cell tagged ``parameters``."""
    nb = jupytext.read(REPO / "notebooks" / notebook)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    values: dict = {}
    exec(cell.source, {}, values)
    return values


def clone_files() -> list[str]:
    """What a clone of the working tree holds: tracked files and new files git does not ignore."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.split("\0") if f and (REPO / f).is_file() and "/fresh/" not in f]


@pytest.mark.parametrize("name, command", [
    ("data/simulated/robust_test", "make robust-test"),
    ("data/simulated/shift_test", "make shift-test"),
    ("data/simulated/robust_train", "make data-robust"),
    ("data/simulated/ablation/Cs", "make ablation"),
    ("data/test", "make test-split"),
    ("data/simulated/cpu_train", "python -m segdepth.apps.notebook notebooks/01_data_generation.py -p output "
                                 "data/simulated/cpu_train -p n_structures 100 -p n_defocus 4 -p seed 0"),
    ("elsewhere/mine", "python -m segdepth.apps.notebook notebooks/01_data_generation.py -p output"),
])
def test_missing_dataset_is_one_line_naming_the_command(tmp_path, name, command):
    directory = tmp_path / name
    if name == "data/test":
        directory.mkdir(parents=True)  # an empty directory reads the same as a missing one
    with pytest.raises(FileNotFoundError) as err:
        open_dataset(directory)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"no dataset shards (shard_*.nc) in {directory}; make it with: {command}")


def test_shipped_test_split_is_small_fresh_and_complete():
    shards = sorted(TEST_SPLIT.glob("shard_*.nc"))
    assert shards and sum(p.stat().st_size for p in shards) < 5e6
    ds = open_dataset(TEST_SPLIT, load=True)
    assert VARIABLES <= set(ds.data_vars) and ds.image.dtype == np.float32
    params = json.loads(ds.attrs["parameters"])
    assert params["seed"] != 0  # the shipped models were trained on seed 0
    assert ds.attrs["pixel_size"] == pytest.approx(0.053) and ds.attrs["label_factor"] == 4
    assert "make_test_split.py" in ds.attrs["build_command"] and "BitRound" in ds.attrs["image_encoding"]
    assert np.unique(ds.structure.values).size >= 8 and np.all(ds.image.values > 0)
    assert set(ds.surface.values) == {"flat", "sawtooth", "stepped"}
    assert json.loads((TEST_SPLIT / "parameters.json").read_text()) == params


@pytest.mark.parametrize("notebook", EVALUATION_NOTEBOOKS)
def test_evaluation_defaults_read_shipped_files_and_write_beside_committed_results(notebook):
    p = defaults(notebook)
    assert p["data"] == "data/test"
    models = list(p["models"]) if "models" in p else [p["direct_model"]]
    for path in filter(None, models):
        assert (REPO / path).is_file(), path
    outputs = [p[k] for k in ("results", "examples", "table", "robustness_results", "robustness_table",
                              "figure_prefix", "model_dir", "checkpoint_root") if k in p]
    assert outputs and all("/fresh/" in o or o.endswith("/fresh") for o in outputs), outputs


@pytest.mark.slow
def test_readme_batch_command_runs_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    for f in clone_files():
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, clone / f)
    assert not (clone / "data" / "simulated").exists() and (clone / "data" / "test" / "shard_00000.nc").is_file()
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "2"}
    where = subprocess.run([sys.executable, "-c", "import segdepth.apps.batch as b; print(b.REPO)"], cwd=clone,
                           env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()) == clone, f"segdepth is not imported from the copy: {where}"
    # the README's command for one new dose (3: not on the committed grid); two test images to keep it short
    cmd = [sys.executable, "-m", "segdepth.apps.batch", "notebooks/04_noise_generalization.py",
           "--grid", "test_lams", "3", "--dim", "test_lams=test_lambda",
           "-p", "figure_prefix", "", "-p", "results", "data/results/fresh/noise/lam{test_lams}.nc",
           "--merged", "data/results/fresh/noise_generalization.nc", "--workers", "2", "-p", "n_test", "2"]
    run = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 done, 0 skipped, 0 failed" in run.stdout
    point = xr.load_dataset(clone / "data" / "results" / "fresh" / "noise" / "lam3.nc")
    merged = xr.load_dataset(clone / "data" / "results" / "fresh" / "noise_generalization.nc")
    assert list(merged.test_lambda.values) == [3.0] and merged.sizes["model"] == len(defaults(
        "04_noise_generalization.py")["models"])
    assert np.all(np.isfinite(merged.center_accuracy.values)) and np.all(point.n_test.values == 2)
    assert json.loads(merged.attrs["batch"])["failed"] == []
    assert (clone / "notebooks" / "executed" / "04_noise_generalization" / "test_lams=3.ipynb").is_file()
