"""Data-parallel training: two CPU processes under torchrun (gloo) on a tiny set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_training import tiny_config, toy_dataset

from segdepth.learn.distributed import launch, main
from segdepth.learn.modelio import load_model


@pytest.mark.slow
def test_two_processes_end_identical_and_learn(tmp_path):
    data = tmp_path / "toy.nc"
    toy_dataset(12, seed=1).to_netcdf(data)
    cfg = tiny_config(lam_range=None, lam=50.0, batch_size=2, epochs=12, class_balance=0.5, lr_schedule="constant",
                      num_threads=1)
    history = launch(data, cfg, tmp_path / "ddp", nproc=2, split=(0.67, 0.33, 0.0), backend="gloo")
    checksums = json.loads(history.attrs["rank_checksums"])
    assert history.attrs["world_size"] == 2 and len(checksums) == 2
    assert checksums[0] == checksums[1], "the two ranks ended with different weights"
    loss = history["train_loss"].values
    assert np.all(np.isfinite(loss)) and loss[-1] < 0.8 * loss[0]
    model, card = load_model(tmp_path / "ddp" / "model.safetensors")
    assert card["world_size"] == 2 and card["n_train"] == 8  # 8 train crops: 2 steps of 2 x 2 per epoch


def test_worker_refuses_to_run_outside_torchrun(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit):
        main(["--data", "x.nc", "--out", "y", "--config", "{}"])
    assert "torchrun" in capsys.readouterr().err
