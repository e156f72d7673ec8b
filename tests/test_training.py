from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open

from segdepth.learn import training
from segdepth.learn.distributed import SingleProcess, current_processes
from segdepth.learn.modelio import load_model, save_model
from segdepth.learn.training import (
    DataConfig,
    ModelConfig,
    NoiseConfig,
    RunConfig,
    TrainConfig,
    class_weights,
    initial_model,
    load_checkpoint,
    train,
    weighted_cross_entropy,
)

SAMPLING = 0.053  # [A]


def toy_dataset(n_samples, *, size=64, seed=0, first_structure=0):
    """Contract-format dataset: 4 columns per image, disks on the label grid, intensity bumps ~ depth."""
    rng = np.random.default_rng(seed)
    n_label = size // 4
    ly, lx = np.mgrid[0:n_label, 0:n_label] + 0.5  # label pixel centres [label pixels]
    iy, ix = (np.mgrid[0:size, 0:size] + 0.5) / 4  # image pixel centres [label pixels]
    image = np.ones((n_samples, size, size), np.float32)
    depth = np.zeros((n_samples, n_label, n_label), np.uint8)
    weight = np.full((n_samples, n_label, n_label), 0.1, np.float32)
    for s in range(n_samples):
        for cy, cx, d in zip(*rng.uniform(2, n_label - 2, (2, 4)), rng.choice([2, 6], 4)):
            r2 = (ly - cy) ** 2 + (lx - cx) ** 2
            depth[s][r2 <= 1.5**2] = d
            weight[s] = np.maximum(weight[s], np.exp(-r2 / 2))
            image[s] += 0.1 * d * np.exp(-((iy - cy) ** 2 + (ix - cx) ** 2) / (2 * 0.8**2))
    coords = (np.arange(size) + 0.5) * SAMPLING
    label_coords = (np.arange(n_label) + 0.5) * 4 * SAMPLING
    label_dims = ("sample", "label_y", "label_x")
    return xr.Dataset(
        {
            "image": (("sample", "y", "x"), image),
            "depth": (label_dims, depth),
            "label": (label_dims, depth),
            "weight": (label_dims, weight),
            "center_mask": (label_dims, (depth > 0).astype(np.uint8)),
        },
        coords={
            "x": coords,
            "y": coords,
            "label_x": label_coords,
            "label_y": label_coords,
            "structure": ("sample", first_structure + np.arange(n_samples)),
        },
        attrs={"parameters": json.dumps({"toy": True}), "seed": seed},
    )


TINY_MODEL = {"n_scales": 2, "channels": [4, 8, 8], "head_channels": [8, 8]}


def tiny_config(**changes):
    values = dict(
        base_channels=4,
        model_kwargs=TINY_MODEL,
        lam_range=(2.0, 20.0),
        crop=32,
        batch_size=4,
        epochs=2,
        lr=1e-2,
        seed=11,
        num_threads=1,
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data():
    return toy_dataset(8, seed=1), toy_dataset(4, seed=2, first_structure=100)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 2-epoch run; also records the global RNG states around it."""
    out = tmp_path_factory.mktemp("reference")
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    history = train(tiny_config(), *data, out, progress=False)
    untouched = torch.equal(torch_state, torch.get_rng_state()) and np.array_equal(
        numpy_state, np.random.get_state()[1]
    )
    return out, history, untouched


def _assert_same_run(out_a, out_b):
    (state_a, tensors_a), (state_b, tensors_b) = load_checkpoint(out_a), load_checkpoint(out_b)
    assert state_a["epoch"] == state_b["epoch"]
    assert tensors_a.keys() == tensors_b.keys()
    for name in tensors_a:
        assert torch.equal(tensors_a[name], tensors_b[name]), name
    for a, b in zip(state_a["history"], state_b["history"]):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert state_a["scheduler"] == state_b["scheduler"]


def test_weighted_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[[[1.0, 0.0], [2.0, 0.5]], [[0.0, 1.0], [0.0, 0.5]]]])  # (1, 2 classes, 2, 2)
    label = torch.tensor([[[0, 1], [1, 0]]])
    weight = torch.tensor([[[1.0, 2.0], [0.5, 0.0]]])
    nll = [
        -math.log(math.e / (math.e + 1)),  # pixel (0,0): class 0, logits (1, 0)
        -math.log(math.e / (1 + math.e)),  # pixel (0,1): class 1, logits (0, 1)
        -math.log(1 / (math.e**2 + 1)),  # pixel (1,0): class 1, logits (2, 0)
    ]
    expected = (1.0 * nll[0] + 2.0 * nll[1] + 0.5 * nll[2]) / 3.5
    loss = weighted_cross_entropy(logits, label, weight)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a pixel of weight 0 contributes nothing, whatever its label and logits
    logits2, label2 = logits.clone(), label.clone()
    logits2[0, :, 1, 1] = torch.tensor([-30.0, 30.0])
    label2[0, 1, 1] = 0
    assert weighted_cross_entropy(logits2, label2, weight).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        weighted_cross_entropy(logits, label[0], weight)


def test_class_weights_up_weight_rare_counts():
    label = np.array([0] * 50 + [1] * 40 + [2] * 10)
    w = class_weights(label, power=1.0)
    assert w[0] == 1 and w[2] > w[1]
    assert (40 * w[1] + 10 * w[2]) / 50 == pytest.approx(1.0)  # mean 1 over labelled pixels
    assert w[5] == 10.0  # absent class: the cap
    np.testing.assert_array_equal(class_weights(label, power=0.0), np.ones(11, np.float32))


def test_config_validation():
    assert TrainConfig().lam == 2.5
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(lam=2.5, lam_range=(1.0, 10.0))
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


# The flat settings, in the order in which the model cards and checkpoints written so far hold them.
FLAT_SETTINGS = [
    "base_channels", "model_kwargs", "lam", "lam_range", "crop", "val_crop", "label_factor", "augment", "focus",
    "batch_size", "val_batch_size", "epochs", "steps_per_epoch", "lr", "lr_schedule", "lr_factor", "lr_patience",
    "min_lr", "patience", "class_balance", "class_weight_max", "seed", "num_threads", "max_minutes", "task",
    "denoiser", "denoiser_path", "denoise_weight", "input_binning", "init_weights",
]


def test_config_is_frozen_parts_with_the_flat_dict_of_the_cards():
    cfg = tiny_config(lam_range=[2, 20], epochs=3)
    assert list(cfg.to_dict()) == FLAT_SETTINGS
    assert cfg.to_dict()["lam_range"] == [2.0, 20.0] and cfg.lam is None and cfg.lam_range == (2.0, 20.0)
    assert cfg.noise == NoiseConfig(lam=None, lam_range=(2.0, 20.0)) and cfg.run.epochs == cfg.epochs == 3
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig(model=cfg.model, data=cfg.data, noise=cfg.noise, loss=cfg.loss, optimiser=cfg.optimiser,
                       run=cfg.run) == cfg
    assert TrainConfig(run=RunConfig(epochs=3), lr=0.5).to_dict() == {**TrainConfig().to_dict(), "epochs": 3, "lr": 0.5}
    # a dict of an older card, before some settings existed: their defaults
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("input_binning", "init_weights")}
    assert TrainConfig.from_dict(old) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.noise.lam = 1.0
    with pytest.raises(TypeError):
        cfg.model_kwargs["n_scales"] = 3  # read-only copy
    kwargs = {"n_scales": 2}
    frozen = ModelConfig(model_kwargs=kwargs)
    kwargs["n_scales"] = 3
    assert frozen.model_kwargs == {"n_scales": 2}
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(TypeError, match="unexpected settings: colour"):
        TrainConfig(colour="red")
    with pytest.raises(TypeError, match="not both"):
        TrainConfig(data=DataConfig(), crop=64)
    with pytest.raises(ValueError, match="tuple"):
        NoiseConfig(lam=None, lam_range=[1.0, 2.0])  # NoiseConfig.from_doses converts
    assert NoiseConfig.from_doses() == NoiseConfig(lam=2.5)


def test_build_model_reads_no_file(tmp_path):
    missing = str(tmp_path / "missing.safetensors")
    model = tiny_config(init_weights=missing).build_model()  # the file is read by initial_model only
    fresh = tiny_config().build_model()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError):
        initial_model(tiny_config(init_weights=missing))
    with pytest.raises(ValueError, match="denoiser_path"):
        tiny_config(denoiser_path=missing).build_model()  # needs the loaded denoiser


def test_single_process_stand_in():
    processes = current_processes()  # no process group here
    assert type(processes) is SingleProcess and processes.is_main and (processes.rank, processes.world) == (0, 1)
    tensor = torch.arange(3.0)
    processes.broadcast(tensor)
    processes.all_reduce(tensor)
    processes.barrier()
    assert torch.equal(tensor, torch.arange(3.0)) and processes.all_gather_object("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert processes.wrap_model(model, torch.device("cpu")) is model


def test_loss_falls_on_toy_data(data, tmp_path):
    cfg = tiny_config(lam_range=None, lam=50.0, batch_size=2, epochs=8, class_balance=0.5, lr_schedule="cosine")
    history = train(cfg, *data, tmp_path, progress=False)
    loss = history["train_loss"].values
    assert loss[-1] < 0.8 * loss[0]
    assert history["val_loss"].values[-1] < history["val_loss"].values[0]


def test_outputs_history_and_model_card(reference):
    out, history, _ = reference
    assert history.sizes["epoch"] == 2
    for name in ("train_loss", "val_loss", "lr", *training.METRIC_NAMES, "seconds"):
        assert np.all(np.isfinite(history[name].values)), name
    with xr.open_dataset(out / "history.nc") as saved:
        xr.testing.assert_allclose(saved.load(), history)
    model, card = load_model(out / "model.safetensors")
    assert card["sampling"] == pytest.approx(SAMPLING)
    assert card["label_factor"] == 4 and card["lam_range"] == [2.0, 20.0] and card["lam"] is None
    assert card["normalisation"] == "divide by frame mean"
    assert card["data_parameters"] == {"toy": True}
    assert card["epochs_run"] == 2 and card["best_epoch"] == int(np.argmin(history["val_loss"].values))
    assert card["training_seconds"] > 0
    assert set(card["val_metrics"]) == {"val_loss", *training.METRIC_NAMES}
    assert card["architecture"] == model.config


def test_global_rng_state_untouched(reference):
    assert reference[2]


def test_checkpoint_files_contain_no_pickle(reference):
    out = reference[0]
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoint-0001.safetensors",
        "checkpoint.json",
        "history.nc",
        "model.json",
        "model.safetensors",
    ]  # no temporary files left, nothing pickled (.pt, .pth, .pkl)
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["epoch"] == 1 and state["tensors"] == "checkpoint-0001.safetensors"
    with safe_open(str(out / state["tensors"]), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("optimizer.") for k in keys)
    for name in ("checkpoint-0001.safetensors", "model.safetensors"):
        raw = (out / name).read_bytes()  # safetensors: u64 header length, JSON header, raw tensor bytes
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        assert all(entry["dtype"] in {"F32", "I64"} for key, entry in header.items() if key != "__metadata__")


def test_resume_is_bit_identical(reference, data, tmp_path):
    train(tiny_config(epochs=1), *data, tmp_path, progress=False)
    history = train(tiny_config(epochs=2), *data, tmp_path, progress=False)
    assert history.sizes["epoch"] == 2
    _assert_same_run(reference[0], tmp_path)


def test_killed_run_resumes(reference, data, tmp_path):
    def kill(epoch, record):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), *data, tmp_path, progress=False, callback=kill)
    assert load_checkpoint(tmp_path)[0]["epoch"] == 0
    train(tiny_config(), *data, tmp_path, progress=False)
    _assert_same_run(reference[0], tmp_path)


def test_resume_accepts_a_checkpoint_without_newer_settings(reference, data, tmp_path):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    for name in ("input_binning", "init_weights"):  # settings added after the first checkpoints were written
        del state["config"][name]
    (tmp_path / "checkpoint.json").write_text(json.dumps(state))
    history = train(tiny_config(epochs=3), *data, tmp_path, progress=False)
    assert history.sizes["epoch"] == 3
    assert history["train_loss"].values[:2].tolist() == reference[1]["train_loss"].values.tolist()


def test_resume_refuses_other_settings(reference, data):
    with pytest.raises(ValueError, match="lr"):
        train(tiny_config(lr=0.5), *data, reference[0], progress=False)


def test_time_budget_stops_after_one_epoch(data, tmp_path):
    history = train(tiny_config(max_minutes=1e-9), *data, tmp_path, progress=False)
    assert history.sizes["epoch"] == 1 and history.attrs["stopped"] == "time budget"
    history = train(tiny_config(), *data, tmp_path, progress=False)
    assert history.sizes["epoch"] == 2


def test_early_stopping(data, tmp_path, monkeypatch):
    losses = iter([1.0, 0.8, 0.9, 0.85, 0.5, 0.4])

    def scripted_evaluate(*args, **kwargs):
        return {"loss": next(losses), **dict.fromkeys(training.METRIC_NAMES, 0.5)}

    monkeypatch.setattr(training, "evaluate", scripted_evaluate)
    cfg = tiny_config(epochs=6, patience=2, steps_per_epoch=1)
    history = train(cfg, *data, tmp_path, progress=False)
    assert history["val_loss"].values.tolist() == [1.0, 0.8, 0.9, 0.85]
    assert history.attrs["stopped"] == "early stopping"
    assert load_model(tmp_path / "model.safetensors")[1]["best_epoch"] == 1
    # a stopped run stays stopped when resumed
    assert train(cfg, *data, tmp_path, progress=False).sizes["epoch"] == 4


# ---------------------------------------------------------------------------
# Denoise-then-segment baselines (Table II): denoiser, sequential, joint
# ---------------------------------------------------------------------------

TINY_DENOISER = {"n_scales": 2, "channels": [4, 8, 8]}


def _noisy_mse(ds, lam, seed=0):
    """MSE of the normalised noisy image against the normalised clean one (the identity 'denoiser')."""
    from segdepth.data.preprocess import normalise
    from segdepth.physics.noise import poisson_noise

    clean = ds["image"].values
    noisy = poisson_noise(clean, lam, rng=np.random.default_rng(seed))
    return float(np.mean((normalise(noisy) - normalise(clean)) ** 2))


@pytest.fixture(scope="module")
def denoiser(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("denoiser")
    cfg = tiny_config(task="denoise", denoiser=TINY_DENOISER, lam_range=None, lam=5.0, epochs=8, lr=3e-3,
                      batch_size=2, lr_schedule="constant")
    history = train(cfg, *data, out, progress=False)
    return out / "model.safetensors", history


def test_denoiser_learns_to_beat_the_noisy_input(denoiser, data):
    path, history = denoiser
    mse = history["val_mse"].values
    assert np.all(np.isfinite(mse))
    assert mse[-1] < mse[0]
    assert mse.min() < 0.5 * _noisy_mse(data[1], 5.0)  # clearly better than doing nothing
    assert np.all(np.isnan(history["center_accuracy"].values))  # no segmentation metrics for a denoiser
    model, card = load_model(path)
    assert type(model).__name__ == "DenoisingUNet" and card["train_config"]["task"] == "denoise"


def test_sequential_trains_segmenter_on_frozen_denoiser(denoiser, data, tmp_path):
    from segdepth.learn.evaluation import infer

    path, _ = denoiser
    frozen, _ = load_model(path)
    cfg = tiny_config(denoiser_path=str(path), lam_range=None, lam=5.0, epochs=2)
    history = train(cfg, *data, tmp_path, progress=False)
    model, card = load_model(tmp_path / "model.safetensors")
    assert type(model).__name__ == "DenoiseSegment" and model.freeze_denoiser
    for name, value in frozen.state_dict().items():  # the denoiser did not move, batch-norm statistics included
        assert torch.equal(model.denoiser.state_dict()[name], value), name
    assert np.isfinite(history["center_accuracy"].values).all()
    _, proba = infer(model, data[1]["image"].values[0], 5.0, seed=0)  # drops into the UNet evaluation unchanged
    assert proba.shape == (11, 16, 16) and np.allclose(proba.sum(axis=0), 1, atol=1e-5)


def test_joint_training_updates_both_parts_and_counts_the_mse(denoiser, data, tmp_path):
    path, _ = denoiser
    start = initial_model(TrainConfig.from_dict(tiny_config(task="joint", denoiser_path=str(path)).to_dict()))
    cfg = tiny_config(task="joint", denoiser_path=str(path), lam_range=None, lam=5.0, epochs=1, denoise_weight=10.0)
    history = train(cfg, *data, tmp_path, progress=False)
    model, _ = load_model(tmp_path / "model.safetensors")
    assert not model.freeze_denoiser
    for part in ("denoiser", "segmenter"):
        before, after = getattr(start, part).state_dict(), getattr(model, part).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{part} was not trained"
    # the validation loss is cross-entropy + 10 x MSE, so it exceeds 10 x the MSE alone
    assert float(history["val_loss"][0]) > 10 * float(history["val_mse"][0]) > 0


def test_task_validation():
    with pytest.raises(ValueError, match="task must be one of"):
        tiny_config(task="classify")
    with pytest.raises(ValueError, match="denoiser_path is for"):
        tiny_config(task="denoise", denoiser_path="x.safetensors")
    with pytest.raises(ValueError, match="denoise_weight"):
        tiny_config(denoise_weight=-1.0)


def test_input_binning_trains_on_binned_images_and_records_it(data, tmp_path):
    """input_binning 2: the model sees 2x2-binned crops at 4x the dose; the card says so."""
    cfg = tiny_config(input_binning=2, lam_range=None, lam=5.0, epochs=1,
                      model_kwargs={**TINY_MODEL, "head_channels": [8], "output_factor": 2})
    seen = []
    original = training._noisy_input

    def spy(clean, generator, *, lam, lam_range):
        seen.append((tuple(clean.shape), lam))
        return original(clean, generator, lam=lam, lam_range=lam_range)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "_noisy_input", spy)
        train(cfg, *data, tmp_path, progress=False)
    assert seen[0] == ((4, 1, 16, 16), 20.0)  # crop 32 -> 16 binned pixels, dose 5 x 2**2
    model, card = load_model(tmp_path / "model.safetensors")
    assert card["sampling"] == pytest.approx(2 * SAMPLING)
    assert card["label_factor"] == 2 and card["input_binning"] == 2
    assert card["lam"] == pytest.approx(20.0) and card["dataset_lam"] == pytest.approx(5.0)
    assert model.output_factor == 2


def test_input_binning_validation(data, tmp_path):
    with pytest.raises(ValueError, match="crop=30 must be a multiple of input_binning=4"):
        tiny_config(input_binning=4, crop=30)
    with pytest.raises(ValueError, match="segmentation task only"):
        tiny_config(input_binning=2, task="denoise")
    with pytest.raises(ValueError, match="set model_kwargs output_factor=2"):
        train(tiny_config(input_binning=2, epochs=1), *data, tmp_path, progress=False)


def test_init_weights_starts_from_a_trained_model_and_refuses_another_architecture(reference, tmp_path):
    out, _, _ = reference
    start = initial_model(tiny_config(init_weights=str(out / "model.safetensors")))
    trained, _ = load_model(out / "model.safetensors")
    fresh = initial_model(tiny_config())
    for name, value in trained.state_dict().items():
        assert torch.allclose(start.state_dict()[name].float(), value.float(), atol=1e-3), name
    assert any(not torch.allclose(fresh.state_dict()[n].float(), v.float(), atol=1e-3)
               for n, v in trained.state_dict().items() if v.is_floating_point())
    other = tiny_config(model_kwargs={**TINY_MODEL, "channels": [4, 8, 16]},
                        init_weights=str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="init_weights"):
        initial_model(other)
    # the input flattening has no weights: a model without it starts one with it
    flattened = initial_model(tiny_config(model_kwargs={**TINY_MODEL, "flatten_sigma": 2.0},
                                          init_weights=str(out / "model.safetensors")))
    assert flattened.config["flatten_sigma"] == 2.0
    for name, value in trained.state_dict().items():
        assert torch.allclose(flattened.state_dict()[name].float(), value.float(), atol=1e-3), name
    # ... but weights trained on flattened inputs do not start a run without the layer
    flat_path = tmp_path / "flat.safetensors"
    save_model(flattened, flat_path, {"note": "test"})
    with pytest.raises(ValueError, match="init_weights"):
        initial_model(tiny_config(init_weights=str(flat_path)))
