from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

from segdepth.learn.model import UNet
from segdepth.learn.modelio import card_path, interpolate_models, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kwargs) -> UNet:
    args = {"channels": (2, 4, 4), "n_scales": 2, "head_channels": (4, 4)}
    args.update(kwargs)
    return UNet(**args)


@pytest.fixture
def trained():
    """A tiny model with non-trivial weights and batch-norm statistics."""
    torch.manual_seed(0)
    model = tiny()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 1, 16, 16) * 3)
    return model.eval()


def test_round_trip_gives_identical_outputs(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    card = {"lambda": 100.0, "sampling": 0.053, "metrics": {"pixelwise_accuracy": np.float32(0.9)}, "n": np.int64(3)}
    written = save_model(trained, path, card)
    assert written == tmp_path / "unet.json"

    model, loaded = load_model(path)
    assert not model.training
    assert loaded["architecture"] == trained.config
    assert loaded["lambda"] == 100.0 and loaded["n"] == 3
    assert loaded["metrics"]["pixelwise_accuracy"] == pytest.approx(0.9)
    x = torch.rand(3, 1, 32, 16)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_files_are_safetensors_and_json_not_pickle(trained, tmp_path, monkeypatch):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {"lambda": 10})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.json", "unet.safetensors"]  # no temp files left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.iterdir())

    raw = path.read_bytes()
    assert not raw.startswith(b"PK")  # not a torch.save zip archive
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header length, then a JSON header
    assert raw[8:9] == b"{"
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == set(trained.state_dict())
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(trained.state_dict())
    card = json.loads(card_path(path).read_text())
    assert card["architecture"] == trained.config and card["lambda"] == 10

    def forbidden(*args, **kwargs):
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_model(path)


def test_overwrite_is_allowed(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {"epoch": 1})
    save_model(trained, path, {"epoch": 2})
    assert load_model(path)[1]["epoch"] == 2


def test_missing_files(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_model(tmp_path / "absent.safetensors")
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {})
    card_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="model card not found"):
        load_model(path)


def test_wrong_suffix(trained, tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_model(trained, tmp_path / "unet.pt", {})
    with pytest.raises(ValueError, match=r"\.safetensors"):
        load_model(tmp_path / "unet.pth")


def test_architecture_mismatch_names_keys(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {})
    expected = tiny(upsample="transpose", median_size=3).config
    with pytest.raises(ValueError, match="different architecture") as info:
        load_model(path, architecture=expected)
    assert "upsample" in str(info.value) and "median_size" in str(info.value)
    assert "channels" not in str(info.value).replace("head_channels", "").replace("base_channels", "")
    # tuples and lists describe the same architecture
    same = {**trained.config, "channels": tuple(trained.config["channels"])}
    load_model(path, architecture=same)


def test_weights_that_do_not_match_the_card(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {})
    other = tmp_path / "other.safetensors"
    save_model(tiny(channels=(2, 4, 8)), other, {})
    other.replace(path)  # card says channels (2, 4, 4), weights are (2, 4, 8)
    with pytest.raises(ValueError, match=r"tensor 'encoder\.downs\.1\.1\.0\.weight' has shape \(8, 4, 3, 3\)"):
        load_model(path)


def test_weights_of_a_smaller_network_name_the_missing_tensor(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {})
    small = tmp_path / "small.safetensors"
    save_model(UNet(channels=(2, 4), n_scales=1, head_channels=(4, 4)), small, {})
    small.replace(path)
    with pytest.raises(ValueError, match=r"tensor 'encoder\.downs\.1\.1\.0\.weight' is missing"):
        load_model(path)


def test_corrupted_weights(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    save_model(trained, path, {})
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="could not read weights"):
        load_model(path)


def test_bad_cards(trained, tmp_path):
    path = tmp_path / "unet.safetensors"
    with pytest.raises(ValueError, match="differs from model.config"):
        save_model(trained, path, {"architecture": {"channels": [1]}})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_model(trained, path, {"when": object()})
    save_model(trained, path, {})
    card_path(path).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(path)
    card_path(path).write_text('{"lambda": 1}')
    with pytest.raises(ValueError, match="'architecture'"):
        load_model(path)


def test_update_card_adds_fields_atomically_and_keeps_the_architecture(tmp_path):
    from segdepth.learn.modelio import update_card

    model = UNet(base_channels=2, n_scales=1, head_channels=[], output_factor=1)
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"lam": 2.5})
    update_card(path, {"shift_test": {"exact": 0.5}})
    _, card = load_model(path)
    assert card["shift_test"] == {"exact": 0.5} and card["lam"] == 2.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(ValueError, match="architecture"):
        update_card(path, {"architecture": {}})
    assert card_path(path).read_text().endswith("\n")


def test_interpolate_models_ends_midpoint_and_batch_norm_statistics():
    torch.manual_seed(1)
    a, b = tiny().eval(), tiny().eval()
    with torch.no_grad():  # distinct running statistics in b
        b.train()
        b(torch.rand(2, 1, 16, 16) * 5)
        b.eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(interpolate_models(a, b, 0.0)(x), a(x))
        assert torch.allclose(interpolate_models(a, b, 1.0)(x), b(x), atol=1e-6)
    mid = interpolate_models(a, b, 0.25).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    for name, value in mid.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * sa[name] + 0.25 * sb[name], atol=1e-6), name
        else:
            assert torch.equal(value, sa[name]), name
    assert any("running_var" in n and not torch.equal(sa[n], sb[n]) for n in sa)  # the statistics were mixed


def test_interpolate_models_refuses_other_architectures_and_alphas():
    a = tiny()
    with pytest.raises(ValueError, match="different architectures: channels"):
        interpolate_models(a, tiny(channels=(2, 4, 8)), 0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        interpolate_models(a, tiny(), 1.5)
    with pytest.raises(ValueError, match="tuned must be a segdepth.learn.model network"):
        interpolate_models(a, torch.nn.Conv2d(1, 1, 1), 0.5)
