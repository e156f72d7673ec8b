"""Notebooks executed by papermill on tiny parameters; assertions are on the files they write.

The chain is the user's: 01 simulates a tiny dataset, 02 trains a tiny network on it, 03 evaluates
that network on the test split recorded in its model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from segdepth.apps.notebook import run_notebook
from segdepth.data.store import open_dataset
from segdepth.learn.modelio import load_model

NB = Path(__file__).resolve().parents[1] / "notebooks"
# The shipped model on its test split at lambda = 2.5 (README): detection 0.941, hallucinated 0.0023,
# Ce columns within one atom 0.994. The floors below leave room for a 4-structure sample.
DETECTION_MIN, HALLUCINATION_MAX, CE_WITHIN_ONE_MIN = 0.85, 0.03, 0.9


@pytest.mark.slow
def test_01_data_generation(nb01):
    ds = open_dataset(nb01 / "sim", load=True)
    assert ds.sizes["sample"] == 8 and ds.sizes["y"] == 512
    assert json.loads(ds.attrs["parameters"])["seed"] == 5
    fig = nb01 / "fig3.png"
    assert fig.exists() and fig.stat().st_size > 10_000
    executed = json.loads((nb01 / "01.ipynb").read_text())
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in executed["cells"])


@pytest.mark.slow
def test_02_training_writes_model_card_and_history(nb02):
    model, card = load_model(nb02 / "model.safetensors")
    assert card["architecture"]["base_channels"] == 4
    assert card["architecture"]["head_channels"] == [8, 8]
    assert card["lam"] == 2.5
    ds = open_dataset(nb02 / "sim")
    test_structures = set(card["split"]["test_structures"])
    assert test_structures and test_structures < set(ds.structure.values.tolist())
    h = xr.load_dataset(nb02 / "history.nc")
    assert h.sizes["epoch"] == 2 and np.all(np.isfinite(h.train_loss.values))
    assert (nb02 / "history.png").stat().st_size > 10_000


@pytest.mark.slow
def test_03_evaluation_uses_the_test_split_and_writes_figures(nb02):
    root = nb02
    _, card = load_model(root / "model.safetensors")
    ds = open_dataset(root / "sim")
    n_test = int(np.isin(ds.structure.values, card["split"]["test_structures"]).sum())
    run_notebook(
        NB / "03_evaluation.py",
        root / "03.ipynb",
        {"data": str(root / "sim"), "models": [str(root / "model.safetensors")], "saliency_lams": [1.0, 10.0],
         "results": str(root / "eval.nc"), "examples": str(root / "examples.nc"),
         "table": str(root / "table1.md"), "figure_prefix": str(root) + "/",
         "shift_data": [str(root / "sim")], "dose_lams": [1.0, 10.0],
         "robustness_results": str(root / "robustness.nc"), "robustness_table": str(root / "robustness.md"),
         "record_in_card": True, "tta": True,
         "rotated_models": {str(root / "model.safetensors"): str(root / "model.safetensors")}},
    )
    _, card_after = load_model(root / "model.safetensors")
    fig = card_after["robustness"]["figures"]["sim"]["lambda_10"]
    assert 0 <= fig["column_exact"] <= 1 and card_after["envelope"]["dose_range"] == [2.5]
    rob = xr.load_dataset(root / "robustness.nc")
    assert dict(rob.sizes)["lam"] == 2 and list(rob.test_set.values) == ["in-distribution", "sim"]
    # the extra row of rotated_models: here the model makes its own 180-degree pass, so it equals the plain row
    assert list(rob.model.values) == ["model", "model+model"]
    np.testing.assert_allclose(rob.column_exact.sel(model="model+model"), rob.column_exact.sel(model="model"))
    # in-distribution is the test split; the shifted set (here the same data) is used whole
    n_cols = int((ds.column_count.values > 0).sum())
    assert int(rob.column_n.sel(group="all", test_set="sim").isel(model=0, lam=0)) == n_cols
    assert int(rob.column_n.sel(group="all", test_set="in-distribution").isel(model=0, lam=0)) < n_cols
    assert np.all((rob.column_exact >= 0) & (rob.column_exact <= 1))
    assert "in-distribution" in (root / "robustness.md").read_text()
    assert (root / "robustness_dose_curve.png").stat().st_size > 10_000
    r = xr.load_dataset(root / "eval.nc")
    assert r.sizes["model"] == 1 and r.attrs["lam"] == 2.5
    for name in ("pixelwise_accuracy", "center_accuracy", "real_atom_detection_rate", "hallucination_rate"):
        assert 0.0 <= r[name].item() <= 1.0
    # the confusion matrix counts every label pixel of exactly the test samples
    assert int(r.confusion.sum()) == n_test * ds.sizes["label_y"] * ds.sizes["label_x"]
    assert "| paper | 64 |" in (root / "table1.md").read_text()
    for name in ("fig1_depth_confidence", "fig6_confusion", "fig7_calibration", "fig8_saliency"):
        assert (root / f"{name}.png").stat().st_size > 10_000, name
    ex = xr.load_dataset(root / "examples.nc")
    assert ex.saliency_lam.sizes["lam"] == 2 and float(ex.saliency_column.max()) > 0
    # Fig. 8's column pixel sits on a real column, its background pixel in vacuum
    cy, cx = ex.attrs["column_pixel"]
    by, bx = ex.attrs["background_pixel"]
    assert ex.attrs["true_count_at_column"] >= 1 and int(ex.depth_true[cy, cx]) >= 1
    assert int(ex.depth_true[by, bx]) == 0 and int(ex.label[by, bx]) == 0


@pytest.mark.slow
def test_07_ablation_one_factor_at_a_time(nb02):
    root = nb02
    run_notebook(
        NB / "07_robustness.py",
        root / "07.ipynb",
        {"models": [str(root / "model.safetensors")], "factors": ["nominal", "focal spread"], "preset": "tiny",
         "n_structures": 1, "n_defocus": 1, "lams": [2.5], "workers": 0, "data_root": str(root / "ablation"),
         "results": str(root / "ablation.nc"), "table": str(root / "ablation.md"),
         "figure": str(root / "ablation.png")},
    )
    nominal = open_dataset(root / "ablation" / "nominal", load=True)
    spread = open_dataset(root / "ablation" / "focal_spread", load=True)
    # the same particle and overfocus, only the focal spread moved to the shift test's range
    assert np.array_equal(nominal.column_count.values, spread.column_count.values)
    assert np.allclose(nominal.overfocus.values, spread.overfocus.values)
    assert float(nominal.defocus_spread[0]) == 15.0 and float(spread.defocus_spread[0]) >= 30.0
    assert not np.allclose(nominal.image.values, spread.image.values, atol=1e-3)
    r = xr.load_dataset(root / "ablation.nc")
    assert list(r.factor.values) == ["nominal", "focal spread"] and r.sizes["model"] == 1
    assert "focal spread" in (root / "ablation.md").read_text()
    assert (root / "ablation.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("reference", [False, True], ids=["robust default", "paper-layout reference"])
def test_shipped_model_on_a_fresh_simulation(nb01, reference):
    """Both shipped models, through the public predict path, on particles they never saw (tiny preset, seed 5)."""
    from segdepth.learn import metrics
    from segdepth.learn.inference import load_default_model, predict
    from segdepth.physics.noise import poisson_noise

    model, card = load_default_model(reference=reference)
    if reference:
        assert card["lam"] == 2.5 and card["sampling"] == pytest.approx(0.053)
    else:  # trained on 4x4-binned 0.053 A pixels, lambda drawn per batch over 0.2-32 per original pixel
        assert card["dataset_lam_range"] == [0.2, 32.0] and card["sampling"] == pytest.approx(0.212)
        assert card["lam_range"] == [3.2, 512.0] and card["data_parameters"]["optics"] is not None
    ds = open_dataset(nb01 / "sim", load=True)
    rng = np.random.default_rng(0)
    noisy = np.stack([poisson_noise(im, 2.5, rng=rng) for im in ds.image.values])
    image = xr.DataArray(noisy, dims=("frame", "y", "x"), attrs={"pixel_size": float(ds.attrs["pixel_size"])})
    out = predict(image, model, card, fast=not reference)
    assert out["depth"].shape == ds.depth.shape
    pred, label = out["depth"].values, ds.label.values
    print(f"shipped model (reference={reference}) on the tiny simulation:",
          metrics.summarise(pred, label, ds.center_mask.values))
    assert metrics.real_atom_detection_rate(pred, label) > DETECTION_MIN
    assert metrics.hallucination_rate(pred, label) < HALLUCINATION_MAX
    counts = np.concatenate([
        metrics.column_counts(pred[i], ds.column_x.values[i], ds.column_y.values[i], ds.label_x.values,
                              ds.label_y.values) for i in range(pred.shape[0])])
    acc = metrics.column_count_accuracy(counts, ds.column_count.values.ravel(), ds.column_Z.values.ravel())
    print("column counts:", acc)
    assert acc["within_one_Ce"] > CE_WITHIN_ONE_MIN


def test_notebooks_have_parameters_cell_and_pair():
    for py in sorted(NB.glob("[0-9][0-9]_*.py")):
        text = py.read_text()
        assert 'tags=["parameters"]' in text, py
        assert py.with_suffix(".ipynb").exists(), f"{py.name} has no paired .ipynb (run `make sync`)"
