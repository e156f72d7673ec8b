"""Where the estimate applies (learn.validity): vacuum mask, other lattice, test-time disagreement, no crystal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from test_lattice import PX, N, _columns_image

from segdepth.learn.model import UNet
from segdepth.learn.validity import (
    REASONS,
    assess,
    crystal_region,
    pair_set_mass,
    predict_checked,
    summary,
    validity_fractions,
)
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
    out = assess(image, pred, keep_connected=None)  # readings everywhere: no growth (tested below)
    y = out["y"].values
    far = y < 16.0 - 8.0  # more than the margin plus the window's reach from the crystal
    inside = (y > 20.0) & (y < 28.0)
    assert (out["depth"].values[0, far] == 0).all()
    np.testing.assert_allclose(out["confidence"].values[0, far], 0.05, rtol=1e-5)  # p(0 atoms)
    assert (out["valid_reason"].values[0, far] == 1).all() and (out["valid"].values[0, far] == 1).all()
    inner = out.isel(x=slice(8, -8))  # away from the field edges, which are no lattice
    assert (inner["depth"].values[0, inside] == 3).all()  # the crystal keeps the network's reading
    assert (inner["valid_reason"].values[0, inside] == 0).all()
    # the count range: {3} holds 0.9 of the probability inside; vacuum reads 0-0
    assert (inner["depth_low"].values[0, inside] == 3).all() and (inner["depth_high"].values[0, inside] == 3).all()
    assert (out["depth_low"].values[0, far] == 0).all() and (out["depth_high"].values[0, far] == 0).all()
    # with margin=None nothing is masked, but the crystal map is still reported
    raw = assess(image, pred, margin=None)
    assert (raw["depth"] == 3).all() and (raw["crystal"] == 1).all()
    assert np.isnan(out["disagreement"]).all()  # no rotated pass given
    # a reading the network is sure of (p(0) = 0.01 < 0.03) is kept outside the lattice too
    sure = assess(image, _prediction(_columns_everywhere(p0=0.01)), keep_connected=None)
    assert (sure["depth"] == 3).all()
    assert (assess(image, _prediction(_columns_everywhere(p0=0.01)), keep_confident=None,
                   keep_connected=None)["depth"].values[0, far] == 0).all()
    # with the default hysteresis a reading field joined to the lattice is kept whole
    assert (assess(image, pred)["depth"] == 3).all()


def test_crystal_region_is_hysteresis_with_bridged_gaps():
    seeds = np.zeros((1, 20, 40), bool)
    seeds[0, :, :4] = True
    readings = np.zeros_like(seeds)
    readings[0, 10, 5:8] = True  # A: 1 px gap from the seeds
    readings[0, 10, 10:12] = True  # B: 2 px gap from A
    readings[0, 10, 15:17] = True  # C: 3 px gap from B
    readings[0, 10, 30:33] = True  # D: far away
    kept = {b: crystal_region(seeds, readings, bridge=b)[0, 10] for b in (0.0, 2.0, 4.0)}
    assert not kept[0.0][5:].any()  # only touching readings join without a bridge
    assert kept[2.0][5:8].all() and kept[2.0][10:12].all() and not kept[2.0][15:].any()
    assert kept[4.0][15:17].all() and not kept[4.0][30:].any()
    assert (crystal_region(seeds, readings, bridge=4.0) & ~(seeds | readings)).sum() == 0  # nothing but readings
    seeds[0, 10, 31] = True  # a seed inside the far blob keeps it
    assert crystal_region(seeds, readings, bridge=2.0)[0, 10, 30:33].all()


def test_crystal_region_reach_limits_the_growth_from_the_seeds():
    seeds = np.zeros((2, 20, 40), bool)
    seeds[:, :, :4] = True
    readings = np.zeros_like(seeds)
    readings[:, 10, 4:20] = True  # a chain of readings running 16 px out of the seeds (x = 3 is the last seed)
    for reach, last in ((None, 19), (0.0, None), (2.0, 5), (7.5, 10)):
        kept = crystal_region(seeds, readings, bridge=2.0, reach=reach)[:, 10]
        assert (kept[0] == kept[1]).all()  # frame by frame, the same rule
        out = np.flatnonzero(kept[0, 4:]) + 4
        assert (out.max() if out.size else None) == last and (out.size == 0 or (np.diff(out) == 1).all())
    seeds[1] = False  # a frame without seeds keeps nothing, reach or not
    assert not crystal_region(seeds, readings, bridge=2.0, reach=3.0)[1].any()


def _blobs(frames: int, *, joined_in: tuple, isolated_in: tuple, p: float = 0.7) -> np.ndarray:
    """Vacuum (p0 0.95) with a column-like strip joined to the crystal (y 8-16 A) and an isolated blob (y < 5 A)."""
    vac = np.zeros((1, 11, M, M))
    vac[:, 0] = 0.95
    vac[:, 1] = 0.05
    prob = np.repeat(vac, frames, axis=0)
    y = (np.arange(M) + 0.5) * PX * F
    middle = np.zeros(M, bool)
    middle[M // 2 - 1 : M // 2 + 1] = True
    reading = _columns_everywhere(2, p=p, p0=0.2)[0, :, :1, 0]  # (class, 1)
    for frames_in, rows in ((joined_in, (y > 6.0) & (y < 17.0)), (isolated_in, y < 3.0)):
        for f in frames_in:
            prob[f][:, rows[:, None] & middle[None]] = reading
    return prob


def _movie_prediction(probability: np.ndarray) -> xr.Dataset:
    pred = _prediction(probability[:1])
    return xr.concat([pred] * probability.shape[0], "frame").assign_coords(frame=np.arange(probability.shape[0])).copy(
        data={"depth": probability.argmax(1).astype(np.uint8), "confidence": probability.max(1).astype(np.float32),
              "probability": probability.astype(np.float32)})


def test_readings_joined_to_the_crystal_survive_the_mask(half_crystal):
    image, _ = half_crystal
    y = (np.arange(M) + 0.5) * PX * F
    out = assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=(0,))))
    strip = (y > 6.0) & (y < 17.0)
    assert (out["depth"].values[0, strip, M // 2 - 1 : M // 2 + 1] == 2).all()  # a weak particle edge: kept
    assert (out["depth"].values[0, y < 3.0] == 0).all()  # a false column in vacuum: masked
    assert (out["crystal"].values[0, strip, M // 2] == 1).all() and (out["crystal"].values[0, y < 3.0] == 0).all()
    old = assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=(0,))), keep_connected=None)
    assert (old["depth"].values[0, y < 8.0] == 0).all()  # the lattice mask alone loses the edge beyond its margin
    with pytest.raises(ValueError, match="keep_connected"):
        assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=())), keep_connected=1.5)
    with pytest.raises(ValueError, match="bridge"):
        assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=())), bridge=-1.0)
    short = assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=(0,))), reach=1.0)
    grown, full = (o["depth"].values[0, :, M // 2] == 2 for o in (short, out))
    seeds = old["crystal"].values[0, :, M // 2] == 1  # the lattice mask (no confident readings here)
    gap = np.abs(y[:, None] - y[seeds][None]).min(axis=1)  # distance from the seeds along the strip [A]
    assert (grown & ~seeds).any() and (grown <= full).all() and (grown & ~seeds).sum() < (full & ~seeds).sum()
    assert (gap[grown & ~seeds] <= 1.0).all() and (full & ~seeds & (gap <= 1.0) <= grown).all()
    assert short.attrs["validity_reach"] == 1.0 and out.attrs["validity_reach"] == -1.0
    with pytest.raises(ValueError, match="reach"):
        assess(image, _prediction(_blobs(1, joined_in=(0,), isolated_in=())), reach=-1.0)


def test_in_a_movie_a_flickering_reading_is_masked_and_a_steady_one_kept(half_crystal):
    image, _ = half_crystal
    movie = xr.concat([image] * 5, "frame").assign_coords(frame=np.arange(5))
    y = (np.arange(M) + 0.5) * PX * F
    strip = (y > 6.0) & (y < 10.0)  # beyond the lattice's margin
    steady = _movie_prediction(_blobs(5, joined_in=range(5), isolated_in=()))
    out = assess(movie, steady, lattice_average=5)
    assert (out["depth"].values[:, strip, M // 2] == 2).all()
    flicker = _movie_prediction(_blobs(5, joined_in=(2,), isolated_in=()))  # one frame in five
    out = assess(movie, flicker, lattice_average=5)
    assert (out["depth"].values[:, strip, M // 2] == 0).all()
    single = assess(movie, flicker, lattice_average=1)  # frame by frame it is kept
    assert (single["depth"].values[2, strip, M // 2] == 2).all()


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
    # the 90 % count set of the mean: 4 (0.475 + 0.45) and 3 (0.45 + 0.0125): 3-4 atoms
    assert (out["depth_low"] == 3).all() and (out["depth_high"] == 4).all()
    assert out["depth_low"].dtype == np.uint8 and out["depth_high"].attrs["units"] == "atoms"


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
    assert out.attrs["validity_keep_connected"] == 0.5 and out.attrs["validity_bridge"] == 2.0
    kept = predict_checked(image, model, card, tta=False, return_probabilities=True, tile=64, overlap=16,
                           keep_connected=None)
    assert "probability" in kept and np.isnan(kept["disagreement"]).all()
    assert (kept["depth"].values[0, kept["y"].values < 8.0] == 0).all()  # an untrained model's readings, masked


def test_predict_checked_rotated_pass_with_another_model(half_crystal):
    """A second model for the 180-degree pass: the estimate is the two models' mean, the disagreement theirs."""
    image, _ = half_crystal
    model, card = _tiny_model()
    same = predict_checked(image, model, card, tile=64, overlap=16, return_probabilities=True)
    twin = predict_checked(image, model, card, tile=64, overlap=16, return_probabilities=True,
                           rotated_model=model, rotated_card=dict(card))
    np.testing.assert_allclose(twin["probability"], same["probability"], atol=1e-6)  # the same model: no change
    torch.manual_seed(1)
    other = UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)
    mixed = predict_checked(image, model, card, tile=64, overlap=16, return_probabilities=True,
                            rotated_model=other, rotated_card=dict(card))
    assert not np.allclose(mixed["probability"], same["probability"], atol=1e-4)
    assert not np.allclose(mixed["disagreement"], same["disagreement"], atol=1e-4)
    with pytest.raises(ValueError, match="both rotated_model and rotated_card"):
        predict_checked(image, model, card, rotated_model=other)
    with pytest.raises(ValueError, match="tta=True"):
        predict_checked(image, model, card, tta=False, rotated_model=other, rotated_card=dict(card))
    with pytest.raises(ValueError, match="another grid: sampling"):
        predict_checked(image, model, card, rotated_model=other, rotated_card={**card, "sampling": 2 * PX})


def test_count_sets_take_the_calibrated_mass(half_crystal):
    image, pred = half_crystal  # 3 atoms with p 0.9, none with 0.05, the rest 0.05 / 9 each
    inside = (pred["y"].values > 20.0) & (pred["y"].values < 28.0)
    plain = assess(image, pred, keep_connected=None).isel(x=slice(8, -8))
    assert plain.attrs["count_set_mass"] == 0.9 and plain["depth_low"].attrs["set_mass"] == 0.9
    assert (plain["depth_low"].values[0, inside] == 3).all()  # {3} holds 0.9
    wide = assess(image, pred, keep_connected=None, count_set_mass=0.96).isel(x=slice(8, -8))
    assert wide.attrs["count_set_mass"] == 0.96
    assert (wide["depth_low"].values[0, inside] == 0).all() and (wide["depth_high"].values[0, inside] == 3).all()
    # one pass: the mass calibrated for the model, from the card in the prediction's attributes
    card = {"count_sets": {"mass": {"one_pass": 0.96}}}
    carded = assess(image, pred.assign_attrs(model_card=json.dumps(card)), keep_connected=None)
    assert carded.attrs["count_set_mass"] == 0.96
    # two passes: not the one-pass mass (predict_checked passes the pair's)
    pair = assess(image, pred.assign_attrs(model_card=json.dumps(card)), rotated=pred.copy(), keep_connected=None)
    assert pair.attrs["count_set_mass"] == 0.9
    with pytest.raises(ValueError, match="count_set_mass must be a probability"):
        assess(image, pred, count_set_mass=1.5)


def test_the_pair_mass_belongs_to_the_shipped_pair_only():
    from segdepth.learn.inference import DEFAULT_MODEL, DEFAULT_ROTATED_MODEL
    from segdepth.learn.modelio import card_path

    default = json.loads(card_path(DEFAULT_MODEL).read_text())
    second = json.loads(card_path(DEFAULT_ROTATED_MODEL).read_text())
    card = {"count_sets": {"mass": {"with_second_model": 0.97}, "second_model": DEFAULT_ROTATED_MODEL.name}}
    assert pair_set_mass(card, second) == 0.97
    assert pair_set_mass(card, default) == 0.9  # another second model: the probabilities at their word
    assert pair_set_mass({"lam": 2.5}, second) == 0.9


def test_a_lattice_read_at_another_orientation_is_not_valid():
    """CeO2 [110] turned by 40 degrees: read as given, its strong windows are a turned lattice (not valid); read
    after predict turned the frame by -40 degrees (its orientation attribute), they are valid again."""
    from segdepth.learn.validity import orientation_misfit

    image = _image(_columns_image(LATTICE_CONSTANT, cation_only=False, angle=40.0))
    pred = _prediction(_columns_everywhere())
    inner = {"y": slice(10, -10), "x": slice(10, -10)}
    as_given = assess(image, pred.assign_attrs(orientation=json.dumps({"rotation": 0.0})))
    assert float((as_given["valid_reason"].isel(inner) == 5).mean()) > 0.4  # the strong windows (score > 40)
    assert "turned lattice" in summary(as_given) and REASONS[5] == "turned_lattice"
    turned = assess(image, pred.assign_attrs(orientation=json.dumps({"rotation": -40.0})))
    assert float((turned["valid_reason"].isel(inner) == 5).mean()) == 0.0
    assert float(turned["valid"].isel(inner).mean()) > 0.95
    # the implied [001] of each family: {200} along g, {220} across it, {111} at 54.74 degrees either side
    np.testing.assert_allclose(orientation_misfit([2.7055, 1.9131, 3.1240], [90.0, 0.0, 35.26]), [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(orientation_misfit([2.7055], [120.0], rotation=-10.0), [20.0], atol=1e-9)
    assert np.isnan(orientation_misfit([2.266], [90.0])[0])  # Pt {111}: not a CeO2 reflection
    assert orientation_misfit([1.962], [0.0])[0] == 0.0  # Pt {200}: the maps cannot tell it from CeO2 {220}


def test_a_grain_whose_neighbourhood_refutes_110_is_other_lattice():
    """refute_radius: a pixel with many refuting lattice windows around it is other lattice, even where its own
    window fits [110] (a grain along [100] refutes [110] in part of its windows only); far from them nothing moves."""
    from segdepth.data.lattice import local_lattice

    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, angle=12.0)
    image, pred = _image(clean), _prediction(_columns_everywhere())
    lattice = local_lattice(image)
    y, x = np.meshgrid(lattice["y"].values, lattice["x"].values, indexing="ij")
    patch = (x < 14.0) & (y < 14.0)  # the upper left corner: every other window refutes [110]
    checker = patch & ((np.floor(x / 1.2) + np.floor(y / 1.2)) % 2 == 0)
    lattice["ceo2_110"] = lattice["ceo2_110"] & ~xr.DataArray(checker[None], dims=lattice["ceo2_110"].dims)
    alone = assess(image, pred, lattice=lattice)
    grain = assess(image, pred, lattice=lattice, refute_radius=3.0)
    ly, lx = np.meshgrid(alone["y"].values, alone["x"].values, indexing="ij")
    inside = (lx > 3.0) & (lx < 11.0) & (ly > 3.0) & (ly < 11.0)
    far = (lx > 20.0) & (ly > 20.0) & (lx < 28.0) & (ly < 28.0)
    assert 0.2 < float((alone["valid_reason"].values[0][inside] == 2).mean()) < 0.8  # window by window: a mixture
    assert (grain["valid_reason"].values[0][inside] == 2).all()  # the neighbourhood: the whole grain
    np.testing.assert_array_equal(grain["valid_reason"].values[0][far], alone["valid_reason"].values[0][far])
    assert (grain["valid_reason"].values[0][far] == 0).all()
    np.testing.assert_array_equal(grain["depth"], alone["depth"])  # the counts stay, not vouched for
    assert grain.attrs["validity_refute_radius"] == 3.0 and alone.attrs["validity_refute_radius"] == -1.0
    for bad in ({"refute_radius": 0.0}, {"refute_radius": 3.0, "refute_fraction": 1.0}):
        with pytest.raises(ValueError, match="refute_"):
            assess(image, pred, lattice=lattice, **bad)
