"""Where the estimate applies (learn.validity): vacuum mask, other lattice, test-time disagreement, no crystal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from test_lattice import PX, N, _columns_image

from segdepth.learn.model import UNet
from segdepth.learn.validity import REASONS, assess, predict_checked, summary, validity_fractions
from segdepth.physics.structures import LATTICE_CONSTANT

F = 4  # label pixels of 0.8 A
M = N // F


def _image(clean: np.ndarray, lam: float = 100.0, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = (rng.poisson(lam * clean) / lam)[None].astype(np.float32)
    coords = {"y": (np.arange(N) + 0.5) * PX, "x": (np.arange(N) + 0.5) * PX}
    return xr.DataArray(data, dims=("frame", "y", "x"), coords=coords, attrs={"pixel_size": PX})


def _prediction(probability: np.ndarray) -> xr.Dataset:
    """A prediction on the label grid from a (frame, class, y, x) distribution."""
    lab = (np.arange(M) + 0.5) * PX * F
    return xr.Dataset(
        {"depth": (("frame", "y", "x"), probability.argmax(1).astype(np.uint8)),
         "confidence": (("frame", "y", "x"), probability.max(1).astype(np.float32)),
         "probability": (("frame", "depth_class", "y", "x"), probability.astype(np.float32))},
        coords={"frame": [0], "y": lab, "x": lab, "depth_class": np.arange(probability.shape[1])},
        attrs={"label_pixel_size": PX * F})  # fmt: skip


def _columns_everywhere(count: int = 3, p: float = 0.9, p0: float = 0.05) -> np.ndarray:
    """``count`` atoms with probability ``p``, none with ``p0`` (below the 0.97 kept outside the lattice)."""
    prob = np.full((1, 11, M, M), (1 - p - p0) / 9)
    prob[:, count] = p
    prob[:, 0] = p0
    return prob


@pytest.fixture(scope="module")
def half_crystal():
    """CeO2 [110] in the lower half (y > 16 A), vacuum above; the model reads 3 atoms everywhere."""
    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, angle=12.0, region=lambda x, y: y > 16.0)
    return _image(clean), _prediction(_columns_everywhere())


def test_vacuum_far_from_the_lattice_reads_depth_zero(half_crystal):
    image, pred = half_crystal
    out = assess(image, pred)
    y = out["y"].values
    far = y < 16.0 - 8.0  # more than the margin plus the window's reach from the crystal
    inside = (y > 20.0) & (y < 28.0)
    assert (out["depth"].values[0, far] == 0).all()
    np.testing.assert_allclose(out["confidence"].values[0, far], 0.05, rtol=1e-5)  # p(0 atoms)
    assert (out["valid_reason"].values[0, far] == 1).all() and (out["valid"].values[0, far] == 1).all()
    inner = out.isel(x=slice(8, -8))  # away from the field edges, which are no lattice
    assert (inner["depth"].values[0, inside] == 3).all()  # the crystal keeps the network's reading
    assert (inner["valid_reason"].values[0, inside] == 0).all()
    # with margin=None nothing is masked, but the crystal map is still reported
    raw = assess(image, pred, margin=None)
    assert (raw["depth"] == 3).all() and (raw["crystal"] == 1).all()
    assert np.isnan(out["disagreement"]).all()  # no rotated pass given
    # a reading the network is sure of (p(0) = 0.01 < 0.03) is kept outside the lattice too
    sure = assess(image, _prediction(_columns_everywhere(p0=0.01)))
    assert (sure["depth"] == 3).all()
    assert (assess(image, _prediction(_columns_everywhere(p0=0.01)), keep_confident=None)["depth"].values[0, far]
            == 0).all()


def test_other_lattice_is_not_valid():
    image = _image(_columns_image(3.924, cation_only=True))  # Pt [110]
    out = assess(image, _prediction(_columns_everywhere()))
    inner = out["valid_reason"].isel(y=slice(10, -10), x=slice(10, -10))
    assert float((inner == 2).mean()) > 0.95
    assert float(out["valid"].isel(y=slice(10, -10), x=slice(10, -10)).mean()) < 0.05
    assert "other lattice" in summary(out)


def test_disagreement_of_the_rotated_pass_is_not_valid(half_crystal):
    image, pred = half_crystal
    same = pred.copy(data={k: v.values[..., ::-1, ::-1] for k, v in pred.data_vars.items()})
    agree = assess(image, pred, rotated=same)
    assert float(agree["disagreement"].max()) < 1e-5
    assert not (agree["valid_reason"] == 3).any()
    # the rotated pass reads 6 atoms in the lower right quarter (in the original orientation)
    prob = _columns_everywhere()
    prob[:, :, M // 2 :, M // 2 :] = _columns_everywhere(6)[:, :, M // 2 :, M // 2 :]
    other = _prediction(prob)
    other = other.copy(data={k: v.values[..., ::-1, ::-1] for k, v in other.data_vars.items()})
    out = assess(image, pred, rotated=other)
    quarter = out.isel(y=slice(M // 2 + 2, -4), x=slice(M // 2 + 2, -4))
    assert (quarter["valid_reason"] == 3).all() and (quarter["valid"] == 0).all()
    assert float(quarter["disagreement"].min()) == pytest.approx(3 * 0.9, abs=0.05)
    assert "model disagreement" in summary(out)


def test_the_estimate_is_the_mean_of_the_two_passes(half_crystal):
    image, pred = half_crystal
    # the rotated pass reads 4 atoms with 0.95 where the plain pass reads 3 with 0.9: the mean says 4
    prob = _columns_everywhere(4, p=0.95, p0=0.04)
    rotated = _prediction(prob)
    rotated = rotated.copy(data={k: v.values[..., ::-1, ::-1] for k, v in rotated.data_vars.items()})
    out = assess(image, pred, rotated=rotated, margin=None, max_disagreement=5.0)
    mean = 0.5 * (pred["probability"].values + prob)
    np.testing.assert_array_equal(out["depth"].values, mean.argmax(1))
    assert (out["depth"] == 4).all()
    np.testing.assert_allclose(out["confidence"].values, mean.max(1), rtol=1e-6)
    np.testing.assert_allclose(out["probability"].values, mean, rtol=1e-6)
    # the disagreement still compares the two single passes (expected counts 2.99 and 3.86 atoms)
    expected = [float(np.tensordot(np.arange(11), q[0, :, 0, 0], 1)) for q in (pred["probability"].values, prob)]
    np.testing.assert_allclose(out["disagreement"].values, expected[1] - expected[0], rtol=1e-5)
    # without the rotated pass the plain reading stays
    assert (assess(image, pred, margin=None)["depth"] == 3).all()


def test_a_field_without_crystal_is_not_valid_and_says_so():
    image = _image(np.ones((N, N)), lam=4.0)
    with pytest.warns(UserWarning, match="no crystal lattice found in 1 of 1 frames"):
        out = assess(image, _prediction(_columns_everywhere()))
    assert (out["valid_reason"] == 4).all() and (out["valid"] == 0).all()
    assert (out["depth"] == 0).all()  # and no confident counts
    fractions = validity_fractions(out)
    assert fractions["no_crystal"] == 1.0 and fractions["valid"] == 0.0
    assert sum(fractions[name] for name in REASONS.values()) == pytest.approx(1.0)
    assert summary(out).startswith("could not vouch for 100.0 % of the pixels (100.0 % no crystal)")


def test_bad_arguments(half_crystal):
    image, pred = half_crystal
    with pytest.raises(ValueError, match="probability"):
        assess(image, pred.drop_vars("probability"))
    with pytest.raises(ValueError, match="margin"):
        assess(image, pred, margin=-1.0)
    with pytest.raises(ValueError, match="frames"):
        assess(xr.concat([image, image], "frame"), pred)
    with pytest.raises(ValueError, match="no-check"):
        predict_checked(image.isel(y=slice(0, 40), x=slice(0, 40)), *_tiny_model())


def _tiny_model():
    torch.manual_seed(0)
    model = UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)
    return model, {"sampling": PX, "label_factor": 4, "lam": 5.0}


def test_predict_checked_end_to_end(half_crystal):
    image, _ = half_crystal
    model, card = _tiny_model()
    out = predict_checked(image, model, card, tile=64, overlap=16)
    assert "probability" not in out and out["valid"].shape == out["depth"].shape == (1, M, M)
    assert out["valid_reason"].attrs["flag_meanings"].split() == list(REASONS.values())
    assert np.isfinite(out["disagreement"]).all()  # tta on by default
    assert (out["depth"].values[0, out["y"].values < 8.0] == 0).all()
    kept = predict_checked(image, model, card, tta=False, return_probabilities=True, tile=64, overlap=16)
    assert "probability" in kept and np.isnan(kept["disagreement"]).all()
