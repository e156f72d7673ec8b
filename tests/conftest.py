from __future__ import annotations

import os

import numpy as np
import pytest

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
