"""The contrast-regime check (learn.regime): underfocused images are generated, learned, recognised and flagged."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr

from segdepth.learn.model import UNet
from segdepth.learn.regime import (
    MAX_UNDERFOCUS,
    REGIME_MODEL,
    VACUUM_WEIGHT,
    frame_scores,
    load_regime_model,
    regime_dataset,
    train_regime,
    underfocus_probability,
)
from segdepth.physics.generate import PRESETS
from segdepth.physics.simulation import OPTICS, Microscope, OpticsRanges

# ---------------------------------------------------------------------------------------------------------------
# generation


def test_underfocus_probability_draws_per_image_and_keeps_old_streams():
    base = Microscope()
    old, new = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):  # probability 0 draws nothing: the same stream as before the option existed
        assert OPTICS["train"].draw(old, base) == dataclasses.replace(OPTICS["train"], underfocus=0.0).draw(new, base)
    rng = np.random.default_rng(4)
    half = dataclasses.replace(OPTICS["train"], underfocus=0.5)
    focus = np.array([half.draw(rng, base)[0] for _ in range(400)])
    assert 0.4 < (focus < 0).mean() < 0.6  # about half underfocused ...
    lo, hi = OPTICS["train"].overfocus
    assert ((np.abs(focus) >= lo) & (np.abs(focus) <= hi)).all()  # ... by the drawn amount
    every = dataclasses.replace(OPTICS["train"], underfocus=1.0)
    assert all(every.draw(rng, base)[0] < 0 for _ in range(20))
    assert OpticsRanges.from_dict(half.to_dict()) == half
    with pytest.raises(ValueError, match="underfocus"):
        OpticsRanges(underfocus=1.5)


def test_regime_presets_are_apart_from_every_other_seed():
    train, test = PRESETS["regime"], PRESETS["shift_regime"]
    assert train.optics.underfocus == 0.5 and test.optics.underfocus == 0.5
    assert train.surfaces == PRESETS["robust"].surfaces and test.surfaces == PRESETS["shift"].surfaces
    others = {p.seed for name, p in PRESETS.items() if name not in ("regime", "shift_regime")}
    assert train.seed not in others and test.seed not in others and train.seed != test.seed
    assert test.optics.defocus_spread == OPTICS["shift"].defocus_spread  # the shifted optics, both regimes


# ---------------------------------------------------------------------------------------------------------------
# labels and scores on hand-made cases

N = 16  # label pixels


def _dataset(overfocus=(-30.0, 40.0), n=2) -> xr.Dataset:
    """``n`` samples of a 4x-finer image grid, one column at label pixel (4, 4) in each."""
    depth = np.zeros((n, N, N), np.uint8)
    depth[:, 4, 4] = 5
    rng = np.random.default_rng(0)
    dims = ("sample", "label_y", "label_x")
    return xr.Dataset(
        {"image": (("sample", "y", "x"), rng.uniform(0.8, 1.2, (n, 4 * N, 4 * N)).astype(np.float32)),
         "depth": (dims, depth), "label": (dims, depth), "weight": (dims, np.ones(depth.shape, np.float32)),
         "center_mask": (dims, depth > 0)},
        coords={"overfocus": ("sample", np.resize(np.asarray(overfocus, np.float32), n)),
                "structure": ("sample", np.arange(n) // 2)},  # each structure over- and underfocused
        attrs={"pixel_size": 0.053, "label_factor": 4})  # fmt: skip


def test_regime_labels_follow_the_defocus_sign_and_weigh_the_crystal():
    out = regime_dataset(_dataset())
    assert (out["label"].values[0] == 1).all() and (out["label"].values[1] == 0).all()  # -30 A: under, +40: over
    w = out["weight"].values[0]
    assert w[4, 4] == 1.0 and w[4, 12] == 1.0  # within 8 label pixels of the column
    assert w[15, 15] == pytest.approx(VACUUM_WEIGHT)  # farther: vacuum
    assert (out["depth"] == _dataset()["depth"]).all()  # the counts are kept
    with pytest.raises(ValueError, match="overfocus"):
        regime_dataset(_dataset().drop_vars("overfocus"))
    with pytest.raises(ValueError, match="only overfocus images"):
        regime_dataset(_dataset(overfocus=(10.0, 40.0)))
    vibrating = _dataset().assign_coords(phonons=("sample", np.array([0, 4])))
    by_phonons = regime_dataset(vibrating, target="phonons")  # the other target: static 0, vibrating 1
    assert (by_phonons["label"].values[0] == 0).all() and (by_phonons["label"].values[1] == 1).all()
    with pytest.raises(ValueError, match="phonons"):
        regime_dataset(_dataset(), target="phonons")  # no such coordinate
    with pytest.raises(ValueError, match="target must be one of"):
        regime_dataset(vibrating, target="tilt")


def test_frame_scores_average_over_the_crystal():
    p = np.zeros((3, 4, 4))
    p[0, :2] = 1.0  # the crystal half is underfocused
    p[1] = 0.25
    p[2, 0, 0] = 1.0
    crystal = np.zeros((3, 4, 4), bool)
    crystal[0, :2] = crystal[1, :, :1] = True  # frame 2: no crystal -> all pixels
    np.testing.assert_allclose(frame_scores(p, crystal), [1.0, 0.25, 1 / 16])
    with pytest.raises(ValueError, match="shape"):
        frame_scores(p, crystal[:, :2])


# ---------------------------------------------------------------------------------------------------------------
# training: a tiny run learns a regime that is visible, writes its card, resumes


def _contrast_dataset(n=8) -> xr.Dataset:
    """Bright discs on a flat field (overfocused) or dark ones (underfocused), one per 32 x 32 image pixels."""
    ds = _dataset(overfocus=(-30.0, 40.0), n=n)
    yy, xx = np.mgrid[: 4 * N, : 4 * N]
    dots = (((yy % 32) - 16) ** 2 + ((xx % 32) - 16) ** 2 < 64).astype(np.float32)
    sign = np.where(ds["overfocus"].values < 0, -1.0, 1.0)[:, None, None]
    depth = np.ones((n, N, N), np.uint8)
    return ds.assign(image=(("sample", "y", "x"), (1.0 + 0.5 * sign * dots).astype(np.float32)),
                     depth=(("sample", "label_y", "label_x"), depth))


def test_train_regime_learns_writes_a_card_and_resumes(tmp_path):
    ds = _contrast_dataset()
    out = tmp_path / "regime.safetensors"
    card = train_regime(ds, out, epochs=2, steps_per_epoch=8, batch_size=4, crop=64, lr=1e-2, val_fraction=0.25,
                        lam_range=(50.0, 100.0), progress=False)
    assert out.is_file() and card["model_class"] == "regime" and len(card["history"]) == 2
    assert card["target"] == "underfocus" and card["classes"] == ["overfocus", "underfocus"]
    assert card["sampling"] == pytest.approx(0.212) and card["label_factor"] == 1 and card["input_binning"] == 4
    card = train_regime(ds, out, epochs=8, steps_per_epoch=8, batch_size=4, crop=64, lr=1e-2, val_fraction=0.25,
                        lam_range=(50.0, 100.0), progress=False)  # resumes after epoch 1
    assert [r["epoch"] for r in card["history"]] == list(range(len(card["history"])))
    assert 2 < len(card["history"]) <= 8
    model, loaded = load_regime_model(out)
    assert loaded["best_epoch"] == card["best_epoch"]
    p = underfocus_probability(ds["image"].values, model, loaded, pixel_size=0.053)
    scores = frame_scores(p.values, np.ones(p.shape, bool))
    under = ds["overfocus"].values < 0
    assert (scores[under] > MAX_UNDERFOCUS).all() and (scores[~under] < MAX_UNDERFOCUS).all()
    with pytest.raises(ValueError, match="safetensors"):
        train_regime(ds, tmp_path / "regime.pt", epochs=1)


def test_a_counting_model_is_not_a_regime_model(tmp_path):
    from segdepth.learn.modelio import save_model

    save_model(UNet(n_scales=1, channels=(2, 4), head_channels=(), output_factor=1, median_size=1),
               tmp_path / "m.safetensors", {"sampling": 0.2})
    with pytest.raises(ValueError, match="not a regime model"):
        load_regime_model(tmp_path / "m.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# the validity map: a frame read as underfocused is not valid


def test_assess_flags_an_underfocused_frame():
    from test_lattice import _columns_image
    from test_validity import _columns_everywhere, _image, _prediction

    from segdepth.learn.validity import REASONS, assess, summary
    from segdepth.physics.structures import LATTICE_CONSTANT

    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, angle=12.0, region=lambda x, y: y > 16.0)
    image, pred = _image(clean), _prediction(_columns_everywhere())
    shape = pred["depth"].shape
    calm = assess(image, pred, underfocus=np.full(shape, 0.2))
    assert not (calm["valid_reason"] == 6).any() and float(calm["underfocus_score"][0]) == pytest.approx(0.2)
    with pytest.warns(UserWarning, match="1 of 1 frames .* look underfocused"):
        out = assess(image, pred, underfocus=np.full(shape, 0.8))
    crystal = out["crystal"].values.astype(bool)
    assert (out["valid_reason"].values[crystal & (calm["valid_reason"].values == 0)] == 6).all()
    assert (out["valid"].values[crystal & (out["valid_reason"].values == 6)] == 0).all()
    assert (out["valid_reason"].values[~crystal] == 1).all()  # vacuum stays vacuum
    assert REASONS[6] == "wrong_focus" and "wrong focus" in summary(out)
    with pytest.warns(UserWarning, match="look underfocused .* check the defocus sign"):
        warned = assess(image, pred, underfocus=np.full(shape, 0.8), flag_underfocus=False)  # regime="warn"
    assert not (warned["valid_reason"] == 6).any() and float(warned["underfocus_score"][0]) == pytest.approx(0.8)
    assert warned.attrs["validity_regime"] == "warn" and out.attrs["validity_regime"] == "flag"
    unchecked = assess(image, pred)
    assert np.isnan(unchecked["underfocus_score"]).all() and unchecked.attrs["validity_regime"] == "off"
    with pytest.raises(ValueError, match="max_underfocus"):
        assess(image, pred, underfocus=np.full(shape, 0.8), max_underfocus=1.5)


def test_assess_names_a_quasi_coherent_frame_and_never_flags_it():
    from test_lattice import _columns_image
    from test_validity import _columns_everywhere, _image, _prediction

    from segdepth.learn.regime import MAX_QUASI
    from segdepth.learn.validity import assess
    from segdepth.physics.structures import LATTICE_CONSTANT

    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, angle=12.0, region=lambda x, y: y > 16.0)
    image, pred = _image(clean), _prediction(_columns_everywhere())
    shape = pred["depth"].shape
    calm = assess(image, pred, quasi=np.full(shape, 0.2))
    assert float(calm["quasi_score"][0]) == pytest.approx(0.2) and calm["quasi_score"].attrs["threshold"] == MAX_QUASI
    with pytest.warns(UserWarning, match="1 of 1 frames .* quasi-coherent focal-spread envelope"):
        out = assess(image, pred, quasi=np.full(shape, 0.8))
    assert float(out["quasi_score"][0]) == pytest.approx(0.8)
    assert (out["valid_reason"].values == calm["valid_reason"].values).all()  # a warning, never a flag
    assert np.isnan(assess(image, pred)["quasi_score"]).all()  # not checked


@pytest.mark.slow
def test_the_shipped_regime_model_tells_over_from_underfocus():
    """One simulated particle, 5 nm over- and underfocused (lambda 2.5): only the underfocused frame scores above
    the threshold, end to end through predict_checked as segdepth predict runs it; regime="flag" makes it not valid,
    the default ("warn") names it and leaves the validity map alone."""
    from segdepth.learn.validity import predict_checked
    from segdepth.physics.generate import PRESETS as P
    from segdepth.physics.noise import poisson_noise_paired
    from segdepth.physics.simulation import image_exit_wave, simulate_exit_wave
    from segdepth.physics.structures import build_particle, random_particle_spec

    assert REGIME_MODEL.is_file() and json.loads(REGIME_MODEL.with_suffix(".json").read_text())["model_class"] == \
        "regime"
    params = P["robust"]
    rng = np.random.default_rng([606, 0])
    spec = random_particle_spec((params.extent, params.extent), rng=rng, surfaces=("faceted",),
                                thickness_range=(4, 8), vacuum=params.vacuum, vacancy_max=0.0)
    structure = build_particle(spec, rng=rng)
    wave = simulate_exit_wave(structure, gpts=params.gpts, sampling=params.sampling,
                              slice_thickness=params.slice_thickness)
    lens = Microscope(defocus_spread=20.0, defocus_samples=9)
    scores = {}
    for overfocus in (50.0, -50.0):
        image = image_exit_wave(wave, overfocus, microscope=lens, binning=params.binning)[0]
        noisy = poisson_noise_paired(image, 2.5, rng=np.random.default_rng(1))
        with pytest.warns(UserWarning, match="underfocused") if overfocus < 0 else _no_warning():
            out = predict_checked(noisy, pixel_size=params.pixel_size, lam=2.5, regime="flag")
        scores[overfocus] = float(out["underfocus_score"][0])
        crystal_valid = out["valid"].values[out["crystal"].values.astype(bool)]
        assert (crystal_valid.mean() < 0.05) if overfocus < 0 else (crystal_valid.mean() > 0.9)
    with pytest.warns(UserWarning, match="check the defocus sign"):
        warned = predict_checked(noisy, pixel_size=params.pixel_size, lam=2.5, tta=False)  # the default: "warn"
    assert not (warned["valid_reason"] == 6).any() and float(warned["underfocus_score"][0]) > MAX_UNDERFOCUS
    assert scores[50.0] < MAX_UNDERFOCUS < scores[-50.0]
    assert predict_checked(noisy, pixel_size=params.pixel_size, lam=2.5, regime="off",
                           tta=False)["underfocus_score"].isnull().all()


@pytest.mark.slow
def test_the_shipped_coherence_model_tells_the_quasi_coherent_envelope_apart():
    """One simulated particle, 5 nm overfocused, focal spread 21 A imaged the incoherent way (the counting models')
    and with abTEM's quasi-coherent envelope (lambda 2.5): only the quasi-coherent frame scores above the threshold
    and is named in a warning, end to end through predict_checked; the validity map is the same either way."""
    from segdepth.learn.regime import COHERENCE_MODEL, MAX_QUASI
    from segdepth.learn.validity import predict_checked
    from segdepth.physics.generate import PRESETS as P
    from segdepth.physics.noise import poisson_noise_paired
    from segdepth.physics.simulation import image_exit_wave, simulate_exit_wave
    from segdepth.physics.structures import build_particle, random_particle_spec

    assert json.loads(COHERENCE_MODEL.with_suffix(".json").read_text())["target"] == "quasi"
    params = P["robust"]
    rng = np.random.default_rng([607, 0])
    spec = random_particle_spec((params.extent, params.extent), rng=rng, surfaces=("faceted",),
                                thickness_range=(4, 8), vacuum=params.vacuum, vacancy_max=0.0)
    wave = simulate_exit_wave(build_particle(spec, rng=rng), gpts=params.gpts, sampling=params.sampling,
                              slice_thickness=params.slice_thickness)
    scores = {}
    for coherence in ("incoherent", "quasi"):
        lens = Microscope(defocus_spread=21.0, defocus_samples=9, coherence=coherence)
        image = image_exit_wave(wave, 50.0, microscope=lens, binning=params.binning)[0]
        noisy = poisson_noise_paired(image, 2.5, rng=np.random.default_rng(1))
        with pytest.warns(UserWarning, match="quasi-coherent focal-spread envelope") if coherence == "quasi" else \
                _no_warning():
            out = predict_checked(noisy, pixel_size=params.pixel_size, lam=2.5, tta=False)
        scores[coherence] = float(out["quasi_score"][0])
        assert out["quasi_score"].attrs["threshold"] == MAX_QUASI and not (out["valid_reason"] == 6).any()
    assert scores["incoherent"] < MAX_QUASI < scores["quasi"]
    off = predict_checked(noisy, pixel_size=params.pixel_size, lam=2.5, tta=False, regime="off")
    assert off["quasi_score"].isnull().all()


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.filterwarnings("error", message=".*underfocused.*")
        warnings.filterwarnings("error", message=".*quasi-coherent focal-spread envelope.*")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def test_regime_argument_is_checked():
    from test_lattice import N as SIDE
    from test_validity import _image, _tiny_model

    from segdepth.learn.validity import predict_checked

    model, card = _tiny_model()
    with pytest.raises(ValueError, match="regime must be 'off', 'warn' or 'flag'"):
        predict_checked(_image(np.ones((SIDE, SIDE))), model, card, tile=64, overlap=16, regime="yes")
    with pytest.raises(ValueError, match="regime_model must be a"):
        predict_checked(_image(np.ones((SIDE, SIDE))), model, card, tile=64, overlap=16, regime_model=model)
