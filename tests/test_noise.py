from __future__ import annotations

import numpy as np
import pytest
import torch

from segdepth.physics.noise import poisson_noise, poisson_noise_paired, poisson_noise_torch


@pytest.mark.parametrize("lam", [0.1, 2.5, 40.0])
def test_numpy_noise_moments(lam):
    clean = np.full((400, 400), 1.3)
    x = poisson_noise(clean, lam, rng=np.random.default_rng(0))
    # E[x] = c, Var[x] = c / lambda (eq. 1-2)
    assert x.mean() == pytest.approx(1.3, rel=0.02)
    assert x.var() == pytest.approx(1.3 / lam, rel=0.03)
    # values are counts / lambda
    assert np.allclose(np.round(x * lam), x * lam, atol=1e-3)


def test_torch_noise_moments_and_per_sample_dose():
    clean = torch.full((2, 1, 300, 300), 0.8)
    lam = torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    x = poisson_noise_torch(clean, lam, generator=g)
    assert x.shape == clean.shape
    for i, lam in enumerate([1.0, 10.0]):
        assert x[i].mean().item() == pytest.approx(0.8, rel=0.02)
        assert x[i].var().item() == pytest.approx(0.8 / lam, rel=0.05)


def test_same_seed_same_noise():
    clean = np.random.default_rng(3).uniform(0.5, 1.5, (64, 64))
    a = poisson_noise(clean, 2.5, rng=np.random.default_rng(7))
    b = poisson_noise(clean, 2.5, rng=np.random.default_rng(7))
    c = poisson_noise(clean, 2.5, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    t = torch.as_tensor(clean)
    ta = poisson_noise_torch(t, 2.5, generator=torch.Generator().manual_seed(1))
    tb = poisson_noise_torch(t, 2.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ta, tb)


@pytest.mark.parametrize("lam", [0, -1.0, float("nan"), float("inf")])
def test_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        poisson_noise(np.ones((4, 4)), lam, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="lam"):
        poisson_noise_torch(torch.ones(4, 4), lam)


def test_bad_clean_and_rng():
    with pytest.raises(ValueError, match="NaN"):
        poisson_noise(np.array([1.0, np.nan]), 1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        poisson_noise(np.ones(3), 1.0, rng=0)


def test_paired_noise_has_poisson_statistics_and_survives_a_last_bit_change():
    """poisson_noise_paired: mean c, variance c / lambda, whole electrons, and the same draws for an image whose
    vacuum (c = 1) changed in the last bit, as between two processes (Generator.poisson switches algorithm at a mean
    of 10 and takes another number of draws there, so at lambda 10 most of the image is re-drawn)."""
    clean = np.random.default_rng(0).uniform(0.5, 1.5, (256, 256))
    clean[:64] = 1.0  # vacuum
    noisy = poisson_noise_paired(clean, 10.0, rng=np.random.default_rng(1))
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(float((noisy - clean).mean())) < 0.01
    np.testing.assert_allclose(((noisy - clean) ** 2).mean(), clean.mean() / 10.0, rtol=0.05)
    assert np.allclose(noisy * 10.0, np.round(noisy * 10.0), atol=1e-4)  # whole electrons
    nudged = clean.copy()
    half = np.random.default_rng(2).random((64, 256)) < 0.5
    nudged[:64][half] = np.nextafter(1.0, 0.0)  # lambda * c just below 10 in half the vacuum
    again = poisson_noise_paired(nudged, 10.0, rng=np.random.default_rng(1))
    assert (again != noisy).sum() <= 2
    plain = poisson_noise(clean, 10.0, rng=np.random.default_rng(1))
    plain_nudged = poisson_noise(nudged, 10.0, rng=np.random.default_rng(1))
    assert (plain != plain_nudged).mean() > 0.5  # what the paired draw avoids
    with pytest.raises(ValueError, match="lam"):
        poisson_noise_paired(clean, 0.0, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="Generator"):
        poisson_noise_paired(clean, 1.0, rng=1)


def test_lower_dose_gives_the_shot_noise_of_the_target_dose():
    from segdepth.physics.noise import lower_dose

    clean = np.full((500, 500), 0.8)
    x = poisson_noise(clean, 200.0, rng=np.random.default_rng(0))
    y = lower_dose(x, 200.0, 5.0, rng=np.random.default_rng(1))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.mean() == pytest.approx(0.8, rel=0.01)
    assert y.var() == pytest.approx(0.8 / 5.0, rel=0.03)  # Var = c / target
    again = lower_dose(x, 200.0, 5.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(y, again)  # the same seed, the same noise
    np.testing.assert_array_equal(lower_dose(x, 5.0, 10.0, rng=np.random.default_rng(1)), x)  # never raised
    with pytest.raises(ValueError, match="lam"):
        lower_dose(x, 200.0, 0.0, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="NaN"):
        lower_dose(np.full((4, 4), np.nan), 200.0, 5.0, rng=np.random.default_rng(1))
