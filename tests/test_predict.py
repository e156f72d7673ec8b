from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from segdepth.learn import inference as predict_module
from segdepth.learn.inference import _tile_layout, load_default_model, predict, resample
from segdepth.learn.model import UNet
from segdepth.learn.modelio import load_model, save_model

MODEL_PIXEL = 0.1  # [A]
# One downsampling and no median filter: the receptive field's half-width is
# ~24 pixels, below half the default overlap (32), so stitching is exact.
TINY = {"n_scales": 1, "channels": (2, 4), "head_channels": (4, 4), "median_size": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(UNet(**TINY), path, {"sampling": MODEL_PIXEL, "sampling_units": "A", "label_factor": 4, "lam": 5.0})
    return load_model(path)


def noisy(rng, shape, pixel_size=MODEL_PIXEL, **coords):
    data = rng.poisson(5.0, shape).astype(np.float32) / 5.0 + 0.05
    return xr.DataArray(data, dims=("frame", "y", "x")[-len(shape) :], coords=coords, attrs={"pixel_size": pixel_size})


def test_output_overlays_input(saved, rng):
    model, card = saved
    image = noisy(rng, (2, 96, 80))
    ds = predict(image, model, card, return_probabilities=True)
    assert ds["depth"].dims == ("frame", "y", "x") and ds["depth"].shape == (2, 24, 20)
    assert ds["depth"].dtype == np.uint8 and ds["confidence"].dtype == np.float32
    assert ds["probability"].dims == ("frame", "depth_class", "y", "x") and ds.sizes["depth_class"] == 11
    # label pixel j covers input pixels 4j..4j+3: centres at (j + 0.5) * 0.4 A, spanning the input's 8 A
    np.testing.assert_allclose(ds["x"].values, (np.arange(20) + 0.5) * 4 * MODEL_PIXEL)
    assert ds["x"].values[0] - 0.2 == pytest.approx(0) and ds["x"].values[-1] + 0.2 == pytest.approx(80 * MODEL_PIXEL)
    assert ds["y"].values[-1] + 0.2 == pytest.approx(96 * MODEL_PIXEL)
    assert ds["depth"].values.max() <= 10
    assert ds["depth"].attrs["last_class"].startswith("10 means 10 or more")  # the labels' end is a lower bound
    confidence = ds["confidence"].values
    assert confidence.min() >= 1 / 11 - 1e-6 and confidence.max() <= 1 + 1e-6
    probability = ds["probability"].values
    np.testing.assert_allclose(probability.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(ds["depth"].values, probability.argmax(axis=1))
    np.testing.assert_allclose(confidence, probability.max(axis=1))
    assert json.loads(ds.attrs["model_card"])["sampling"] == MODEL_PIXEL
    assert json.loads(ds.attrs["arguments"])["tile"] == 512
    assert "probability" not in predict(image, model, card)


def test_offset_coordinates_are_kept(saved, rng):
    model, card = saved
    x = 100 + (np.arange(64) + 0.5) * MODEL_PIXEL
    image = noisy(rng, (1, 32, 64), x=x)
    ds = predict(image, model, card)
    assert ds["x"].values[0] == pytest.approx(100.2) and ds["y"].values[0] == pytest.approx(0.2)


def test_tiled_equals_untiled(saved, rng):
    """Tiles whose corners lie on multiples of required_multiple and an overlap above the receptive field."""
    model, card = saved
    image = noisy(rng, (1, 200, 172))  # not a multiple of anything: reflect-padded
    whole = predict(image, model, card, tile=512, return_probabilities=True)
    tiled = predict(image, model, card, tile=96, overlap=64, return_probabilities=True, batch_size=3)
    assert json.loads(tiled.attrs["arguments"])["tile_used"] == 96
    np.testing.assert_allclose(tiled["probability"], whole["probability"], atol=1e-5)
    np.testing.assert_array_equal(tiled["depth"], whole["depth"])

    # without overlap the seams differ, but only there
    seams = predict(image, model, card, tile=64, overlap=0)
    assert (seams["depth"] == whole["depth"]).mean() > 0.8


def test_tile_layout_covers_with_overlap():
    for size in (64, 320, 1024, 1088, 4096):
        tile, starts, owned = _tile_layout(size, 512, 64, 64, 4)
        assert tile <= 512 and tile % 64 == 0 and all(s % 64 == 0 for s in starts)
        assert starts[-1] + tile == size and owned[0][0] == 0 and owned[-1][1] == size
        for (a, b), s in zip(owned, starts, strict=True):
            assert a % 4 == 0 and s <= a < b <= s + tile
        for (_, hi), (lo, _) in zip(owned[:-1], owned[1:], strict=True):
            assert hi == lo
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            assert a + tile - b >= 64  # overlap kept
    assert _tile_layout(1024, 512, 64, 64, 4)[0] == 384  # 3 tiles of 384 rather than 3 of 512


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_resampling_keeps_the_physical_extent(saved, rng, factor):
    model, card = saved
    n = int(64 / factor)
    image = noisy(rng, (1, n, n + 8), pixel_size=MODEL_PIXEL * factor)
    ds = predict(image, model, card)
    assert ds.sizes["y"] == 16 and ds.attrs["label_pixel_size"] == pytest.approx(4 * MODEL_PIXEL, rel=0.02)
    extent_x = (n + 8) * MODEL_PIXEL * factor
    assert ds["x"].values[0] - ds.attrs["label_pixel_size"] / 2 == pytest.approx(0, abs=1e-9)
    assert ds["x"].values[-1] + ds.attrs["label_pixel_size"] / 2 == pytest.approx(extent_x, abs=2 * MODEL_PIXEL)


def test_resample():
    image = np.arange(48, dtype=np.float32).reshape(6, 8)
    binned = image.reshape(3, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resample(image, (3, 4)), binned)  # shrinking is area averaging
    np.testing.assert_allclose(resample(np.full((5, 7), 2.0), (13, 3)), 2.0)
    up = resample(image, (12, 16))
    assert up.shape == (12, 16) and up.mean() == pytest.approx(image.mean(), rel=1e-6)
    assert resample(image, (6, 8)) is not None and np.array_equal(resample(image, (6, 8)), image)


def test_unknown_pixel_size_asks_for_it(saved, rng):
    model, card = saved
    image = noisy(rng, (1, 32, 32))
    image.attrs["pixel_size"] = None
    with pytest.raises(ValueError, match="--pixel-size"):
        predict(image, model, card)


def test_invalid_arguments(saved, rng):
    model, card = saved
    image = noisy(rng, (1, 32, 32))
    with pytest.raises(ValueError, match="overlap"):
        predict(image, model, card, tile=64, overlap=64)
    with pytest.raises(ValueError, match="mean intensity"):
        predict(image * 0 - 1, model, card)
    with pytest.raises(ValueError, match="sampling"):
        predict(image, model, {"label_factor": 4})
    with pytest.warns(UserWarning, match="trained at lambda = 5"):
        predict(image, model, card, lam=500.0)


def test_missing_default_model(monkeypatch):
    monkeypatch.setattr(predict_module, "DEFAULT_MODEL", predict_module.DEFAULT_MODEL.with_name("absent.safetensors"))
    with pytest.raises(FileNotFoundError, match="absent.safetensors not found.*--model"):
        load_default_model()


def test_fast_path_matches_the_eager_reference(rng):
    """The default (folded batch norms, channels-last) equals the plain eager model to float rounding."""
    from segdepth.learn.model import optimise_for_inference

    model, card = load_default_model()
    image = noisy(rng, (1, 128, 128), pixel_size=card["sampling"])
    fast = predict(image, model, card, return_probabilities=True)
    eager = predict(image, model, card, return_probabilities=True, fast=False)
    assert json.loads(fast.attrs["arguments"])["fast"] is True
    np.testing.assert_allclose(fast["probability"], eager["probability"], atol=1e-4)
    assert (fast["depth"] == eager["depth"]).mean() > 0.999
    # the folded copy has no batch norm left and leaves the original untouched
    folded = optimise_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_frames_share_forward_passes_without_changing_results(saved, rng):
    """batch_size > tiles per frame batches consecutive frames; every frame's result is unchanged."""
    model, card = saved
    image = noisy(rng, (5, 64, 64))
    one = predict(image, model, card, return_probabilities=True, batch_size=1)
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        batched = predict(image, model, card, return_probabilities=True, batch_size=4, fast=False)
    finally:
        handle.remove()
    assert calls == [4, 1]  # 5 one-tile frames: a pass of 4 frames, then 1
    np.testing.assert_allclose(batched["probability"], one["probability"], atol=1e-5)
    np.testing.assert_array_equal(batched["frame"], one["frame"])


def test_binned_input_model_bins_the_frame_and_keeps_the_label_grid(rng):
    """A fast model (input binned 4x, output factor 1) sees the block means and overlays like the paper's."""
    from segdepth.data.preprocess import bin_image, normalise

    torch.manual_seed(1)
    fast_model = UNet(n_scales=1, channels=(2, 4), output_factor=1, median_size=1).eval()
    card = {"sampling": 4 * MODEL_PIXEL, "sampling_units": "A", "label_factor": 1, "lam": 80.0, "input_binning": 4}
    image = noisy(rng, (1, 128, 96))
    ds = predict(image, fast_model, card, return_probabilities=True, fast=False)
    assert ds["depth"].shape == (1, 32, 24)
    np.testing.assert_allclose(ds["x"].values, (np.arange(24) + 0.5) * 4 * MODEL_PIXEL)  # as the paper layout
    with torch.no_grad():
        x = torch.from_numpy(normalise(bin_image(image.values[0], 4)))[None, None]
        expected = torch.softmax(fast_model(x), dim=1)[0].numpy()
    np.testing.assert_allclose(ds["probability"].values[0], expected, atol=1e-5)
    paper_layout = predict(image, UNet(**TINY).eval(), {**card, "sampling": MODEL_PIXEL, "label_factor": 4})
    np.testing.assert_allclose(paper_layout["x"], ds["x"])


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (50, 200)])
def test_fields_too_small_to_hold_a_column_are_refused_on_every_path(shape, rng):
    """Issue 13: the default (binned) path accepted a 1 x 1 image; 50 px of 0.053 A is 2.65 A < 3 A."""
    image = noisy(rng, shape, pixel_size=0.053)
    for reference in (False, True):
        model, card = load_default_model(reference=reference)
        with pytest.raises(ValueError, match=r"too small to hold an atomic column \(at least 3 A"):
            predict(image, model, card)


def test_dose_is_checked_in_electrons_per_pixel(saved, rng):
    model, card = saved
    with pytest.raises(ValueError, match=r"lam \(dose\) must be finite and > 0 \[electrons per pixel\], got -1"):
        predict(noisy(rng, (64, 64)), model, card, lam=-1)


class _Killed(Exception):
    pass


def test_long_prediction_resumes_from_its_last_finished_chunk(saved, rng, tmp_path):
    """A killed series leaves OUT untouched and its finished chunks; the rerun reads and predicts only the rest."""
    from segdepth.learn.inference import predict_to_netcdf

    model, card = saved
    movie = noisy(rng, (7, 64, 64), frame=np.arange(7))
    calls = []

    def chunks(kill_at=None):
        for k, start in enumerate(range(0, 7, 2)):
            def read(start=start, k=k):
                calls.append(start)
                if k == kill_at:
                    raise _Killed
                return movie.isel(frame=slice(start, start + 2))
            yield read

    out = tmp_path / "movie.nc"
    out.write_bytes(b"old")
    stale = tmp_path / ".movie.nc.abc123.nc"  # a temporary file of an earlier killed assembly
    stale.write_bytes(b"x")
    with pytest.raises(_Killed):
        predict_to_netcdf(chunks(kill_at=2), model, card, out, n_frames=7, return_probabilities=True)
    assert out.read_bytes() == b"old" and not stale.exists()
    parts = tmp_path / ".movie.nc.parts"
    assert sorted(p.name for p in parts.glob("chunk_*.nc")) == ["chunk_00000.nc", "chunk_00001.nc"]
    calls.clear()
    predict_to_netcdf(chunks(), model, card, out, n_frames=7, return_probabilities=True)
    assert calls == [4, 6]  # chunks 0 and 1 were neither read nor predicted again
    assert not parts.exists() and [p.name for p in tmp_path.iterdir()] == ["movie.nc"]
    expected = predict(movie, model, card, return_probabilities=True)
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["depth"].values, expected["depth"].values)
        np.testing.assert_allclose(ds["probability"].values, expected["probability"].values, atol=1e-6)
        assert list(ds["frame"].values) == list(range(7))
    # other options: the parts of an interrupted run are not reused
    with pytest.raises(_Killed):
        predict_to_netcdf(chunks(kill_at=1), model, card, out, n_frames=7)
    calls.clear()
    predict_to_netcdf(chunks(), model, card, out, n_frames=7, tile=32, overlap=16)
    assert calls == [0, 2, 4, 6]


def test_training_mode_is_restored_and_a_series_is_optimised_once(saved, rng, tmp_path, monkeypatch):
    """predict puts a training model in eval mode and back; predict_to_netcdf folds the network once per series."""
    from segdepth.learn import model as model_module
    from segdepth.learn.inference import predict_to_netcdf

    model, card = saved
    image = noisy(rng, (4, 64, 64), frame=np.arange(4))
    expected = predict(image, model, card)
    was_training = model.training
    model.train()
    try:
        np.testing.assert_array_equal(predict(image, model, card)["depth"], expected["depth"])
        assert model.training
    finally:
        model.train(was_training)
    calls = []
    optimise = model_module.optimise_for_inference
    monkeypatch.setattr(model_module, "optimise_for_inference", lambda m, **kw: calls.append(1) or optimise(m, **kw))
    chunks = [image.isel(frame=slice(0, 2)), image.isel(frame=slice(2, 4))]
    with xr.open_dataset(predict_to_netcdf(chunks, model, card, tmp_path / "series.nc", n_frames=4)) as ds:
        np.testing.assert_array_equal(ds["depth"].values, expected["depth"].values)
    assert calls == [1]
    predict(image, model, card, fast=False)
    assert calls == [1]  # the eager reference is not optimised


def test_default_second_model_is_the_default_reading_the_flattened_input():
    """DEFAULT_ROTATED_MODEL: the default's weights (to float16 storage) behind the weight-free local-mean layer
    of 1.5 A, on the default's grid."""
    from segdepth.learn.model import LocalMeanDivide

    model, card = load_default_model()
    second, second_card = load_default_model(rotated=True)
    assert second_card["sampling"] == card["sampling"] and second_card["label_factor"] == card["label_factor"]
    assert second_card["flattening"]["sigma_A"] == 1.5
    assert any(isinstance(m, LocalMeanDivide) for m in second.modules())
    assert not any(isinstance(m, LocalMeanDivide) for m in model.modules())
    weights, other = model.state_dict(), second.state_dict()
    assert weights.keys() == other.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(other[name].float(), tensor.float(), rtol=1e-3, atol=1e-3, msg=name)
    with pytest.raises(ValueError, match="exclude each other"):
        load_default_model(reference=True, rotated=True)


def test_predict_checked_pairs_the_default_with_its_second_model(rng):
    """predict_checked with the shipped default: the second pass is DEFAULT_ROTATED_MODEL unless 'same' is asked;
    a model passed explicitly makes both passes."""
    from segdepth.learn.validity import predict_checked

    model, card = load_default_model()
    image = noisy(rng, (1, 128, 128), pixel_size=card["sampling"])
    used = {}
    for name, kwargs in (("default", {}), ("same", {"rotated_model": "same"}), ("explicit", {"model": model,
                                                                                             "card": card})):
        with pytest.warns(UserWarning, match="no crystal lattice"):  # shot noise only: nothing to vouch for
            out = predict_checked(image, lattice_average=1, **kwargs)
        used[name] = (json.loads(out.attrs["validity_arguments"])["two_models"], out.attrs["count_set_mass"])
    pair = card["count_sets"]["mass"]["with_second_model"]  # calibrated for the shipped pair only
    assert used == {"default": (True, pair), "same": (False, 0.9), "explicit": (False, 0.9)}
    with pytest.raises(ValueError, match="a model or 'same'"):
        predict_checked(image, rotated_model="other")


def test_dose_matching_reads_clean_frames_at_the_target_dose(saved, rng):
    """Above the card's target the frame is read `draws` times at the target dose and the distributions averaged;
    at or below it, and without a dose, nothing changes; the noise depends on the frame number only."""
    model, card = saved  # input at the model pixel size: the dose per model pixel is lam
    matched = {**card, "dose_matching": {"target": 4.0, "draws": 3}}
    image = noisy(rng, (2, 64, 64), frame=np.array([5, 6]))
    plain = predict(image, model, card, lam=8.0, return_probabilities=True)
    low = predict(image, model, matched, lam=3.0, return_probabilities=True)  # below the target
    np.testing.assert_array_equal(low["probability"], plain["probability"])
    assert json.loads(low.attrs["arguments"])["dose_matched"] is None
    high = predict(image, model, matched, lam=8.0, return_probabilities=True)
    assert json.loads(high.attrs["arguments"])["dose_matched"] == {"dose": 8.0, "target": 4.0, "draws": 3}
    assert float(abs(high["probability"] - plain["probability"]).max()) > 1e-6  # an untrained model: small
    np.testing.assert_allclose(high["probability"].sum("depth_class"), 1, atol=1e-5)
    off = predict(image, model, matched, lam=8.0, return_probabilities=True, dose_matching=False)
    np.testing.assert_array_equal(off["probability"], plain["probability"])
    # the same by hand: three copies at the target dose (the seeds of the frame numbers 5 and 6), averaged
    from segdepth.learn.inference import DOSE_MATCHING_SEED
    from segdepth.physics.noise import lower_dose

    frame = image.isel(frame=[1])
    by_hand = sum(predict(frame.copy(data=lower_dose(frame.values / frame.values.mean(), 8.0, 4.0,
                                                     rng=np.random.default_rng([DOSE_MATCHING_SEED, 6, k]))),
                          model, card, return_probabilities=True)["probability"].values for k in range(3)) / 3
    np.testing.assert_allclose(high["probability"].values[1:], by_hand, atol=1e-5)
    # a movie cut into chunks gets the same noise as in one piece
    alone = predict(image.isel(frame=[1]), model, matched, lam=8.0, return_probabilities=True)
    np.testing.assert_allclose(alone["probability"].values, high["probability"].values[1:], atol=1e-6)
    with pytest.raises(ValueError, match="dose_matching needs target > 0"):
        predict(image, model, {**card, "dose_matching": {"target": 0, "draws": 3}}, lam=8.0)


def test_evaluation_scores_what_dose_matched_predict_reports(saved, rng):
    """segdepth.learn.evaluation.infer with dose_matching draws the noise predict draws for the same frame."""
    from segdepth.learn.evaluation import infer

    model, card = saved
    clean = rng.uniform(0.6, 1.2, (64, 64)).astype(np.float32)
    noisy_frame, scored = infer(model, clean, 8.0, seed=1, index=3, dose_matching=(4.0, 3))
    _, unmatched = infer(model, clean, 8.0, seed=1, index=3)
    image = xr.DataArray(noisy_frame[None], dims=("frame", "y", "x"), coords={"frame": [3]},
                         attrs={"pixel_size": MODEL_PIXEL})
    reported = predict(image, model, {**card, "dose_matching": {"target": 4.0, "draws": 3}}, lam=8.0,
                       return_probabilities=True, fast=False)["probability"].values[0]
    np.testing.assert_allclose(scored, reported, atol=1e-5)
    assert np.abs(scored - unmatched).max() > 1e-6


def test_the_dose_can_be_estimated_from_the_frames(saved, rng):
    from segdepth.data.calibration import estimate_dose

    model, card = saved
    image = noisy(rng, (2, 64, 64))
    auto = predict(image, model, card, lam="auto")
    assert json.loads(auto.attrs["arguments"])["lam"] == pytest.approx(estimate_dose(image.values))
    with pytest.raises(ValueError, match="'auto' or None"):
        predict(image, model, card, lam="high")


def test_no_dose_warning_when_the_frames_are_read_at_the_target(saved, rng):
    model, card = saved  # trained at lambda 5: 20 is more than 2x off
    image = noisy(rng, (1, 64, 64))
    with pytest.warns(UserWarning, match="expect degraded depth maps"):
        predict(image, model, card, lam=20.0)
    matched = {**card, "dose_matching": {"target": 5.0, "draws": 1}}
    predict(image, model, matched, lam=20.0)  # read at 5: no warning (warnings are errors here)
    with pytest.warns(UserWarning, match="expect degraded depth maps"):
        predict(image, model, matched, lam=20.0, dose_matching=False)
