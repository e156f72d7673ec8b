from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

NB = Path(__file__).resolve().parents[1] / "notebooks"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread avoids contention on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Tiny notebook chain shared by the notebook tests (tests/test_notebooks.py, tests/test_study_notebooks.py).


@pytest.fixture(scope="session")
def nb01(tmp_path_factory):
    """Notebook 01 at the tiny preset: 4 structures x 2 overfocus values, in-process."""
    root = tmp_path_factory.mktemp("nb")
    out, fig = root / "sim", root / "fig3.png"
    _run_notebook(
        NB / "01_data_generation.py",
        root / "01.ipynb",
        {"preset": "tiny", "n_structures": 4, "n_defocus": 2, "workers": 0, "output": str(out),
         "figure": str(fig), "n_show": 2, "seed": 5},
    )
    return root


@pytest.fixture(scope="session")
def nb02(nb01):
    """Notebook 02 on that dataset: a narrow 6-scale UNet, two short epochs."""
    root = nb01
    _run_notebook(
        NB / "02_training.py",
        root / "02.ipynb",
        {"data": str(root / "sim"), "base_channels": 4, "head_channels": [8, 8], "epochs": 2, "crop": 128,
         "batch_size": 2, "steps_per_epoch": 2, "split": [0.5, 0.25, 0.25], "patience": 5,
         "checkpoint_dir": str(root / "ckpt"), "model_out": str(root / "model.safetensors"),
         "history_out": str(root / "history.nc"), "figure": str(root / "history.png"), "max_minutes": 0},
    )
    return root




def _run_notebook(*args, **kwargs):
    from segdepth.apps.notebook import run_notebook

    return run_notebook(*args, **kwargs)
