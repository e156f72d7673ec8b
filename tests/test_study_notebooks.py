"""Notebooks 04 (noise generalisation) and 05 (denoise-then-segment) on tiny parameters.

They reuse the tiny dataset and model of tests/test_notebooks.py (fixtures nb01, nb02).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from conftest import NB

from segdepth.apps.batch import run_grid
from segdepth.apps.notebook import run_notebook
from segdepth.learn.modelio import load_model

TINY_TRAIN = {"base_channels": 4, "head_channels": [8, 8], "denoiser_base": 4, "denoiser_scales": 2, "epochs": 1,
              "crop": 128, "batch_size": 2, "steps_per_epoch": 2, "split": [0.5, 0.25, 0.25], "max_minutes": 0,
              "num_threads": 1}


@pytest.fixture(scope="module")
def nb05(nb02):
    root = nb02
    run_notebook(
        NB / "05_denoise_baselines.py",
        root / "05.ipynb",
        {**TINY_TRAIN, "data": str(root / "sim"), "direct_model": str(root / "model.safetensors"),
         "checkpoint_root": str(root / "ckpt05"), "model_dir": str(root / "models05"),
         "results": str(root / "table2.nc"), "table": str(root / "table2.md"), "figure_prefix": str(root) + "/"},
    )
    return root


@pytest.mark.slow
def test_05_denoise_baselines_table(nb05):
    root = nb05
    r = xr.load_dataset(root / "table2.nc")
    assert list(r.pipeline.values) == ["direct", "sequential", "joint"]
    for name in ("pixelwise_accuracy", "center_accuracy", "real_atom_detection_rate", "hallucination_rate"):
        assert np.all((r[name].values >= 0) & (r[name].values <= 1)), name
    # the same segmentation network in all three pipelines; the other two add a denoiser
    seg = r.segmentation_parameters.values
    assert seg[0] == seg[1] == seg[2] and np.all(r.parameters.values[1:] > seg[1:])
    assert list(r.denoised.values) == ["noisy input", "denoiser (sequential)", "joint"]
    assert np.all(r.denoise_mse.values > 0)
    seq, _ = load_model(root / "models05" / "sequential_base4_lam2.5.safetensors")
    den, card = load_model(root / "models05" / "denoiser4_lam2.5.safetensors")
    assert card["train_config"]["task"] == "denoise"
    for k, v in den.state_dict().items():  # the sequential pipeline holds the frozen denoiser unchanged
        assert np.allclose(seq.denoiser.state_dict()[k].numpy(), v.numpy(), atol=1e-3), k
    text = (root / "table2.md").read_text()
    assert "| sequential |" in text and "0.867 / 0.765 / 0.946 / 12.35" in text
    assert (root / "table2_pipelines.png").stat().st_size > 10_000


@pytest.mark.slow
def test_04_noise_generalization_resumes_and_batch_merges(nb05, tmp_path):
    root = nb05
    models = [str(root / "model.safetensors"), str(root / "models05" / "joint_base4_lam2.5.safetensors")]
    params = {"data": str(root / "sim"), "models": models, "n_test": 1, "fig9a_train_lam": 2.5, "fig9b_base": 4,
              "results": str(root / "noise.nc"), "figure_prefix": str(root) + "/", "robust_range": [0.5, 5.0]}
    run_notebook(NB / "04_noise_generalization.py", root / "04.ipynb", {**params, "test_lams": [0.5, 5.0]})
    r = xr.load_dataset(root / "noise.nc")
    assert r.center_accuracy.dims == ("model", "test_lambda")
    assert list(r.test_lambda.values) == [0.5, 5.0] and r.sizes["model"] == 2
    assert float(r.train_lambda.sel(model="model")) == 2.5 and list(r.group.values)[:3] == ["all", "Ce", "O"]
    assert (root / "fig9_noise_generalization.png").stat().st_size > 10_000
    assert "drop (points)" in (root / "noise.md").read_text()
    # resume: a new dose is added, the finished ones are kept bit for bit
    run_notebook(NB / "04_noise_generalization.py", root / "04b.ipynb", {**params, "test_lams": [0.5, 5.0, 50.0]})
    r2 = xr.load_dataset(root / "noise.nc")
    assert list(r2.test_lambda.values) == [0.5, 5.0, 50.0]
    xr.testing.assert_equal(r2.center_accuracy.sel(test_lambda=[0.5, 5.0]), r.center_accuracy)

    # the batch driver runs one dose per process and merges along test_lambda
    runs = run_grid(NB / "04_noise_generalization.py", {"test_lams": [0.5, 50.0]},
                    parameters={**params, "figure_prefix": "", "results": str(tmp_path / "lam{test_lams}.nc")},
                    dims={"test_lams": "test_lambda"}, merged=tmp_path / "merged.nc",
                    executed_dir=tmp_path / "executed", workers=2)
    assert [run.status for run in runs] == ["done", "done"], [run.message for run in runs]
    m = xr.load_dataset(tmp_path / "merged.nc")
    assert list(m.test_lambda.values) == [0.5, 50.0]
    np.testing.assert_allclose(m.center_accuracy.values, r2.center_accuracy.sel(test_lambda=[0.5, 50.0]).values)
    assert json.loads(m.attrs["batch"])["failed"] == []
