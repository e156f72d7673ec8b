"""benchmarks/count_set_calibration.py: set statistics, and both modes read the same columns as the evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from benchmarkmodule import load
from test_pass_ensembles import _dataset

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    return load("count_set_calibration")


def test_set_stats_on_hand_made_columns(bench):
    p = np.array([[0.0, 0.6, 0.3, 0.1], [0.5, 0.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]])
    true = np.array([2, 1, 2])
    coverage, size, width = bench.set_stats(p, true, 0.85)  # sets {1, 2}, {0, 3}, {2}
    assert coverage == pytest.approx(2 / 3) and size == pytest.approx(5 / 3)
    assert width == pytest.approx((2 + 4 + 1) / 3)  # a set {0, 3} spans four counts


def test_both_modes_with_and_without_dose_matching(bench, rng):
    """The two routes (cached flips; evaluation.infer with dose matching) give the same probabilities where dose
    matching does not apply, and the pair mode averages the second model's 180-degree pass."""
    ds = _dataset(rng)
    torch.manual_seed(0)
    one = torch.nn.Conv2d(1, 11, 1).eval()
    two = torch.nn.Conv2d(1, 11, 3, padding=1).eval()
    flips = bench.cell_probabilities(one, two, ds, 2.5)
    matched = bench.cell_probabilities(one, two, ds, 2.5, (1000.0, 2))  # target above the dose: off
    assert flips["T"].tolist() == matched["T"].tolist() == [3, 1, 7, 2, 5]
    for mode in ("one_pass", "with_second_model"):
        np.testing.assert_allclose(flips[mode], matched[mode], atol=3e-3)  # float16 cache of the flips route
    assert np.abs(flips["with_second_model"] - flips["one_pass"]).max() > 1e-3
    lowered = bench.cell_probabilities(one, two, ds, 2.5, (16.0, 2))  # brought down to lambda 1 (16 per binned pixel)
    assert np.abs(lowered["one_pass"] - matched["one_pass"]).max() > 1e-4


def test_calibration_needs_sets(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--test-sets", "data/simulated/nowhere"])
    assert "--calibration-sets" in capsys.readouterr().err
