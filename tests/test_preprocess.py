"""Binning of frames and datasets (the fast model's input)."""

import numpy as np
import pytest
import torch
import xarray as xr

from segdepth.data.preprocess import bin_dataset, bin_image, normalise
from segdepth.learn.evaluation import infer
from segdepth.physics.noise import poisson_noise


def test_bin_image_block_means_numpy_and_torch():
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    expected = np.array([[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]], np.float32)
    np.testing.assert_array_equal(bin_image(x, 2), expected)
    np.testing.assert_array_equal(bin_image(torch.from_numpy(x)[None, None], 2)[0, 0].numpy(), expected)
    assert bin_image(x, 1) is x


def test_bin_image_errors():
    with pytest.raises(ValueError, match="multiples of the binning factor 4"):
        bin_image(np.zeros((6, 8)), 4)
    with pytest.raises(ValueError, match="positive integer"):
        bin_image(np.zeros((8, 8)), 0)


def test_binned_poisson_frame_has_the_binned_dose():
    """Binning b x b pixels at dose lam gives Poisson statistics at b**2 lam (mean**2 / var)."""
    noisy = poisson_noise(np.ones((512, 512), np.float32), 2.5, rng=np.random.default_rng(0))
    binned = bin_image(noisy, 4)
    dose = binned.mean() ** 2 / binned.var()
    assert dose == pytest.approx(16 * 2.5, rel=0.05)


def _dataset():
    coords = (np.arange(8) + 0.5) * 0.05
    return xr.Dataset(
        {"image": (("sample", "y", "x"), np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8)),
         "label": (("sample", "label_y", "label_x"), np.ones((2, 2, 2), np.uint8))},
        coords={"x": coords, "y": coords, "label_x": [0.1, 0.3], "label_y": [0.1, 0.3]},
        attrs={"pixel_size": 0.05, "label_factor": 4},
    )


def test_bin_dataset_bins_images_only_and_updates_attributes():
    ds = _dataset()
    out = bin_dataset(ds, 4)
    assert out.image.shape == (2, 2, 2) and out.image.dtype == np.float32
    np.testing.assert_allclose(out.image.values, bin_image(ds.image.values, 4))
    np.testing.assert_allclose(out.x.values, out.label_x.values)  # binned pixel centres = label grid
    xr.testing.assert_identical(out.label, ds.label)
    assert out.attrs["pixel_size"] == pytest.approx(0.2) and out.attrs["label_factor"] == 1
    with pytest.raises(ValueError, match="not a multiple of 3"):
        bin_dataset(ds, 3)


def test_infer_bins_the_noisy_frame_not_the_clean_one():
    """Binned and unbinned models see the same electrons: noise on the fine grid, then the bin."""
    clean = np.random.default_rng(1).uniform(0.5, 1.5, (16, 16)).astype(np.float32)

    class Echo(torch.nn.Module):  # logits: the input in class 0, zeros elsewhere
        def forward(self, x):
            return torch.cat([x, torch.zeros_like(x).repeat(1, 10, 1, 1)], dim=1)

    noisy, proba = infer(Echo(), clean, 2.5, seed=3, index=4, input_binning=4)
    fine = poisson_noise(clean, 2.5, rng=np.random.default_rng([3, 4]))
    np.testing.assert_array_equal(noisy, fine)
    assert proba.shape == (11, 4, 4)
    seen = np.log(10 * proba[0] / (1 - proba[0]))  # invert softmax([x, 0 x 10])[0]
    np.testing.assert_allclose(seen, normalise(bin_image(fine, 4)), rtol=1e-5)


def test_infer_tta_averages_with_the_rotated_pass_rotated_back():
    """``tta``: the mean of the plain pass and the 180-degree pass, on the plain pass's pixels."""
    clean = np.random.default_rng(2).uniform(0.5, 1.5, (8, 8)).astype(np.float32)

    class Corner(torch.nn.Module):  # not rotation-equivariant: class 1 wins in the top-left corner only
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 11, *x.shape[2:])
            logits[:, 1, :2, :2] = 5.0
            return logits + 0.01 * x

    _, plain = infer(Corner(), clean, 2.5, seed=0)
    _, mean = infer(Corner(), clean, 2.5, seed=0, tta=True)
    assert plain[1, 0, 0] > 0.9 and plain[1, -1, -1] < 0.1  # the plain pass sees the corner top left
    # the rotated pass puts it bottom right in the original orientation; the mean has both at half weight
    assert 0.4 < mean[1, 0, 0] < 0.6 and 0.4 < mean[1, -1, -1] < 0.6
    np.testing.assert_allclose(mean.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mean[1, 0, 0], 0.5 * (plain[1, 0, 0] + plain[1, -1, -1]), rtol=0.05)


def test_infer_rotated_model_makes_the_180_degree_pass_on_the_same_noisy_frame():
    """``rotated_model``: the second pass is the other model's, on the same electrons (not a second noise draw)."""
    clean = np.random.default_rng(3).uniform(0.5, 1.5, (8, 8)).astype(np.float32)

    class Class(torch.nn.Module):  # logits: the normalised input in class k, zeros elsewhere
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 11, *x.shape[2:])
            logits[:, self.k] = x[:, 0]
            return logits

    noisy, mean = infer(Class(1), clean, 2.5, seed=0, tta=True, rotated_model=Class(2))
    x = normalise(noisy)
    # softmax of [x in one class, 0 in ten], both passes at the same pixel: x in class 1 by one, in class 2 by the other
    expected = 0.5 * (np.exp(x) + 1) / (np.exp(x) + 10)
    np.testing.assert_allclose(mean[1], expected, rtol=1e-5)
    np.testing.assert_allclose(mean[2], expected, rtol=1e-5)
    _, same = infer(Class(1), clean, 2.5, seed=0, tta=True, rotated_model=Class(1))
    np.testing.assert_allclose(same, infer(Class(1), clean, 2.5, seed=0, tta=True)[1], rtol=1e-6)
    with pytest.raises(ValueError, match="tta=True"):
        infer(Class(1), clean, 2.5, seed=0, rotated_model=Class(2))
