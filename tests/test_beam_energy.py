"""The beam energy (high tension): read from the file, compared with the model's, warned about or flagged.

Every shipped model was trained on 300 kV images; at 200 kV its counts are 14-29 points lower, at 120 and 80 kV
its count sets no longer hold the truth (README, "Other microscopes"). What a file states reaches the output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from fileformats import write_dm3, write_dm4, write_emi, write_ser
from test_lattice import PX, N, _columns_image
from test_validity import _image

from segdepth.apps.cli import main
from segdepth.data.io import beam_energy, read_image
from segdepth.learn.inference import MIN_BEAM_ENERGY, beam_energy_status, predict, trained_beam_energy
from segdepth.learn.model import UNet
from segdepth.learn.modelio import save_model
from segdepth.learn.validity import REASONS, predict_checked, summary
from segdepth.physics.structures import LATTICE_CONSTANT

CARD = {"sampling": PX, "label_factor": 4, "lam": 5.0, "data_parameters": {"microscope": {"energy": 300e3}}}


def _tiny_model():
    torch.manual_seed(0)
    return UNet(n_scales=1, channels=(2, 4), head_channels=(4, 4), median_size=1)


@pytest.fixture(scope="module")
def half_crystal_image():
    """CeO2 [110] in the lower half of a 32 A field, vacuum above (as test_validity's)."""
    return _image(_columns_image(LATTICE_CONSTANT, cation_only=False, angle=12.0, region=lambda x, y: y > 16.0))


@pytest.mark.parametrize(("writer", "suffix"), [(write_dm3, ".dm3"), (write_dm4, ".dm4")], ids=["dm3", "dm4"])
def test_digitalmicrograph_voltage_becomes_beam_energy_in_kv(tmp_path, writer, suffix):
    image = np.arange(48 * 64, dtype=np.float32).reshape(48, 64) + 1
    for thumbnail in (True, False):  # the image is ImageList's second entry behind a thumbnail, or the first
        writer(tmp_path / f"a{suffix}", image, 0.5, thumbnail=thumbnail, voltage=200e3)
        assert read_image(tmp_path / f"a{suffix}").attrs["beam_energy"] == pytest.approx(200.0)
    writer(tmp_path / f"b{suffix}", image, 0.5)  # no microscope tags: nothing stated, nothing invented
    assert "beam_energy" not in read_image(tmp_path / f"b{suffix}").attrs


def test_tia_high_tension_comes_from_the_emi_file(tmp_path):
    write_ser(tmp_path / "series_1.ser", np.ones((20, 30), np.float32), 2e-10)
    write_emi(tmp_path / "series.emi", high_tension_kv=80)
    assert read_image(tmp_path / "series.emi").attrs["beam_energy"] == pytest.approx(80.0)
    assert "beam_energy" not in read_image(tmp_path / "series_1.ser").attrs  # the .ser alone does not say


def test_beam_energy_of_a_signal_dict():
    assert beam_energy({"metadata": {"Acquisition_instrument": {"TEM": {"beam_energy": 300.0}}}}) == 300.0
    mapped = {"original_metadata": {"Optics": {"AccelerationVoltage": "200000"}},
              "mapping": {"Optics.AccelerationVoltage": ("Acquisition_instrument.TEM.beam_energy",
                                                         lambda v: float(v) / 1e3)}}
    assert beam_energy(mapped) == 200.0
    spaced = {"original_metadata": {"Info": {"High tension_kV": 120}},  # HyperSpy's names: spaces as underscores
              "mapping": {"Info.High_tension_kV": ("Acquisition_instrument.TEM.beam_energy", None)}}
    assert beam_energy(spaced) == 120.0
    for bad in ("n/a", -300.0, float("nan"), None, 0.3, 300000.0):  # 0.3: volts read as kV; 300000: kV as volts
        assert beam_energy({"metadata": {"Acquisition_instrument": {"TEM": {"beam_energy": bad}}}}) is None
    broken = {"original_metadata": {"V": "x"}, "mapping": {"V": ("Acquisition_instrument.TEM.beam_energy", float)}}
    assert beam_energy(broken) is None and beam_energy({}) is None


def test_status_against_the_card():
    assert trained_beam_energy(CARD) == 300.0 and trained_beam_energy({"sampling": PX}) is None
    assert beam_energy_status(300.0, CARD) == "trained" and beam_energy_status(302.0, CARD) == "trained"
    assert beam_energy_status(200.0, CARD) == "other" and beam_energy_status(400.0, CARD) == "other"
    assert MIN_BEAM_ENERGY == 120.0  # the rule of make microscope-shift
    assert beam_energy_status(120.0, CARD) == "flagged" and beam_energy_status(80.0, CARD) == "flagged"
    assert beam_energy_status(None, CARD) == "unknown" and beam_energy_status(80.0, {"sampling": PX}) == "unknown"
    with pytest.raises(ValueError, match=r"beam energy must be finite and > 0 \[kV\]"):
        beam_energy_status(-1.0, CARD)
    volts = r"beam energy must be a high tension in kV \(10-3000\), got 300000.0 \(volts\?\)"
    with pytest.raises(ValueError, match=volts):
        beam_energy_status(300000.0, CARD)


def test_predict_warns_and_records(half_crystal_image):
    model = _tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 300 kV, or nothing stated: no warning
        same = predict(half_crystal_image.assign_attrs(beam_energy=300.0), model, CARD, tile=64, overlap=16)
        unknown = predict(half_crystal_image, model, CARD, tile=64, overlap=16)
    assert same.attrs["beam_energy"] == 300.0 and same.attrs["beam_energy_status"] == "trained"
    assert "beam_energy" not in unknown.attrs and unknown.attrs["beam_energy_status"] == "unknown"
    with pytest.warns(UserWarning, match="recorded at 200 kV but the model was trained on 300 kV images only"):
        other = predict(half_crystal_image.assign_attrs(beam_energy=200.0), model, CARD, tile=64, overlap=16)
    assert other.attrs["beam_energy_status"] == "other"
    np.testing.assert_array_equal(other["depth"], same["depth"])  # a warning, the counts as they are
    with pytest.warns(UserWarning, match="recorded at 80 kV .* marks them not valid"):  # the argument wins
        low = predict(half_crystal_image.assign_attrs(beam_energy=300.0), model, CARD, tile=64, overlap=16,
                      beam_energy=80)
    assert low.attrs["beam_energy"] == 80.0 and low.attrs["beam_energy_status"] == "flagged"
    with pytest.raises(ValueError, match="beam energy must be"):
        predict(half_crystal_image, model, CARD, tile=64, overlap=16, beam_energy="high")


def test_checked_path_makes_a_low_beam_energy_not_valid(half_crystal_image):
    model = _tiny_model()
    with pytest.warns(UserWarning, match="recorded at 200 kV"):
        other = predict_checked(half_crystal_image, model, CARD, tile=64, overlap=16, regime="off", beam_energy=200,
                                keep_connected=None)
    with pytest.warns(UserWarning, match="recorded at 80 kV"):
        low = predict_checked(half_crystal_image, model, CARD, tile=64, overlap=16, regime="off", beam_energy=80,
                              keep_connected=None)
    assert REASONS[7] == "beam_energy"
    assert not (other["valid_reason"] == 7).any()
    crystal = low["crystal"].values.astype(bool)
    assert crystal.any() and (~crystal).any()
    reason = low["valid_reason"].values
    assert set(np.unique(reason[crystal])) <= {7, 2, 4}  # every crystal pixel: the energy (or a stronger reason)
    assert (reason[crystal] == 7).mean() > 0.9 and (low["valid"].values[crystal] == 0).all()
    assert (reason[~crystal] == 1).all()  # vacuum stays vacuum
    assert "beam energy" in summary(low)
    assert low["depth_high"].attrs["long_name"].endswith("10: 10 or more")
    assert low["depth"].attrs["last_class"].startswith("10 means 10 or more")  # kept through the vacuum mask
    np.testing.assert_array_equal(low["depth"], other["depth"])  # the counts stay, not vouched for


def test_cli_reads_the_energy_from_the_file_and_takes_an_override(tmp_path, capsys):
    model_path = tmp_path / "tiny.safetensors"
    save_model(_tiny_model(), model_path, CARD)
    clean = _columns_image(LATTICE_CONSTANT, cation_only=False, angle=0.0, region=lambda x, y: y > 16.0)
    noisy = (np.random.default_rng(0).poisson(50 * clean) / 50 + 0.01).astype(np.float32)
    write_dm4(tmp_path / "low.dm4", noisy, PX / 10, voltage=80e3)
    base = ["predict", str(tmp_path / "low.dm4"), "--model", str(model_path), "--regime", "off", "--lambda", "5"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # printed by the command line, not raised
        assert main([*base, "--out", str(tmp_path / "low.nc")]) == 0
    out, err = capsys.readouterr()
    assert err.count("warning: the frames were recorded at 80 kV") == 1  # once, not once per pass
    with xr.open_dataset(tmp_path / "low.nc") as ds:
        assert ds.attrs["beam_energy"] == 80.0 and ds.attrs["beam_energy_source"] == "file"
        assert ds.attrs["beam_energy_status"] == "flagged" and (ds["valid_reason"] == 7).any()
    assert "beam energy" in out
    assert main([*base, "--beam-energy", "300", "--out", str(tmp_path / "fixed.nc")]) == 0
    assert "kV" not in capsys.readouterr().err  # the user knows better than the file: 300 kV, no warning
    with xr.open_dataset(tmp_path / "fixed.nc") as ds:
        assert ds.attrs["beam_energy"] == 300.0 and ds.attrs["beam_energy_source"] == "--beam-energy"
        assert not (ds["valid_reason"] == 7).any()
    for bad in ("0", "300kV", "nan", "300000"):
        assert main([*base, "--beam-energy", bad, "--out", str(tmp_path / "bad.nc")]) == 2
        err = capsys.readouterr().err
        assert "--beam-energy must be" in err and err.count("\n") == 1
    assert "(volts?)" in err
    assert not (tmp_path / "bad.nc").exists()


def test_hyperspy_signal_metadata_reaches_predict():
    hs = pytest.importorskip("hyperspy.api")
    from segdepth.data.hyperspy import from_signal

    signal = hs.signals.Signal2D(np.ones((N, N), np.float32))
    for axis in signal.axes_manager.signal_axes:
        axis.scale, axis.units = PX, "Å"
    assert "beam_energy" not in from_signal(signal).attrs
    signal.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200.0)
    assert from_signal(signal).attrs["beam_energy"] == 200.0
