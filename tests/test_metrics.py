from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from segdepth.learn import metrics
from segdepth.learn.metrics import (
    center_accuracy,
    column_count_accuracy,
    column_counts,
    confidence_map,
    confusion_matrix,
    depth_map,
    expected_calibration_error,
    hallucination_rate,
    normalise_confusion,
    pixelwise_accuracy,
    real_atom_detection_rate,
    reliability_diagram,
    saliency,
    summarise,
)

# A 4 x 4 case worked out by hand.
PRED = np.array(
    [
        [0, 1, 2, 0],
        [0, 3, 3, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 2],
    ]
)
LABEL = np.array(
    [
        [0, 1, 1, 0],
        [0, 3, 2, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ],
    dtype=np.uint8,
)
# wrong pixels: (0,2) 2 vs 1, (1,2) 3 vs 2, (2,0) 1 vs 0, (2,2) 0 vs 1, (3,3) 2 vs 0  -> 11 / 16 right
# atom pixels (label > 0): 6, of which (2,2) is predicted as background        -> 5 / 6 detected
# background pixels: 10, of which (2,0) and (3,3) are predicted as atoms        -> 2 / 10 hallucinated
CENTER = np.zeros((4, 4), dtype=np.uint8)
CENTER[1, 1:3] = 1  # (1,1) right, (1,2) wrong -> 1 / 2


def test_paper_metrics_on_hand_made_case():
    assert pixelwise_accuracy(PRED, LABEL) == 11 / 16
    assert center_accuracy(PRED, LABEL, CENTER) == 1 / 2
    assert center_accuracy(PRED, LABEL, LABEL > 0) == 3 / 6
    assert real_atom_detection_rate(PRED, LABEL) == 5 / 6
    assert hallucination_rate(PRED, LABEL) == 2 / 10
    assert summarise(PRED, LABEL, CENTER) == {
        "pixelwise_accuracy": 11 / 16,
        "center_accuracy": 1 / 2,
        "real_atom_detection_rate": 5 / 6,
        "hallucination_rate": 2 / 10,
    }


def test_metrics_pool_over_samples_or_per_sample():
    pred = np.stack([PRED, LABEL.astype(int)])  # the second sample is perfect
    label = np.stack([LABEL, LABEL])
    assert pixelwise_accuracy(pred, label) == 27 / 32
    np.testing.assert_array_equal(pixelwise_accuracy(pred, label, axis=(-2, -1)), [11 / 16, 1.0])
    np.testing.assert_array_equal(hallucination_rate(pred, label, axis=(1, 2)), [0.2, 0.0])


def test_empty_masks_give_nan_without_warnings():
    with np.errstate(all="raise"):
        assert math.isnan(center_accuracy(PRED, LABEL, np.zeros((4, 4))))
        assert math.isnan(hallucination_rate(PRED, np.ones((4, 4), dtype=int)))
        assert math.isnan(real_atom_detection_rate(PRED, np.zeros((4, 4), dtype=int)))
        assert math.isnan(pixelwise_accuracy(np.zeros((0, 4)), np.zeros((0, 4))))
        per_sample = center_accuracy(np.stack([PRED, PRED]), np.stack([LABEL, LABEL]), np.stack([CENTER, 0 * CENTER]))
    assert per_sample == pytest.approx(0.5)  # pooled: the empty sample adds nothing
    out = center_accuracy(
        np.stack([PRED, PRED]), np.stack([LABEL, LABEL]), np.stack([CENTER, 0 * CENTER]), axis=(-2, -1)
    )
    assert out[0] == 0.5 and math.isnan(out[1])


def test_shape_checks():
    with pytest.raises(ValueError, match="same shape"):
        pixelwise_accuracy(PRED, LABEL[:3])
    with pytest.raises(ValueError, match="center_mask must have the shape"):
        center_accuracy(PRED, LABEL, CENTER[:, :2])
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        hallucination_rate(np.zeros(4), np.zeros(4))


def test_column_counts():
    label_x = (np.arange(4) + 0.5) * 0.2  # 0.1, 0.3, 0.5, 0.7 A
    label_y = label_x.copy()
    column_x = np.array([0.32, 0.49, np.nan, 1.5, 0.05])
    column_y = np.array([0.28, 0.12, np.nan, 0.3, 0.7])
    counts = column_counts(PRED, column_x, column_y, label_x, label_y)
    # (row 1, col 1) = 3; (row 0, col 2) = 2; padding -> -1; x = 1.5 A is outside the grid -> -1; (row 3, col 0) = 0
    np.testing.assert_array_equal(counts, [3, 2, -1, -1, 0])
    assert counts.dtype == np.int64

    batch = column_counts(np.stack([PRED, PRED.T]), np.stack([column_x, column_x]), np.stack([column_y, column_y]),
                          label_x, label_y)  # fmt: skip
    np.testing.assert_array_equal(batch, [[3, 2, -1, -1, 0], [3, 1, -1, -1, 0]])

    with pytest.raises(ValueError, match="column_x must have shape"):
        column_counts(np.stack([PRED, PRED]), column_x, column_y, label_x, label_y)
    with pytest.raises(ValueError, match="label_x and label_y must have shapes"):
        column_counts(PRED, column_x, column_y, label_x[:3], label_y)
    with pytest.raises(ValueError, match="same shape"):
        column_counts(PRED, column_x, column_y[:2], label_x, label_y)
    with pytest.raises(ValueError, match="strictly increasing"):
        column_counts(PRED, column_x, column_y, label_x[::-1], label_y)


def test_column_probabilities_read_the_pixel_column_counts_reads():
    label_x = (np.arange(4) + 0.5) * 0.2
    label_y = label_x.copy()
    column_x = np.array([0.32, 0.49, np.nan, 1.5, 0.05])
    column_y = np.array([0.28, 0.12, np.nan, 0.3, 0.7])
    rng = np.random.default_rng(3)
    proba = rng.dirichlet(np.ones(11), size=(2, 4, 4)).transpose(0, 3, 1, 2)  # (2 samples, 11, 4, 4)
    cx, cy = np.stack([column_x, column_x[::-1]]), np.stack([column_y, column_y[::-1]])
    p = metrics.column_probabilities(proba, cx, cy, label_x, label_y)
    assert p.shape == (2, 5, 11)
    assert np.isnan(p[0, 2]).all() and np.isnan(p[0, 3]).all() and np.isnan(p[1, 1]).all()
    np.testing.assert_allclose(p[0, 0], proba[0, :, 1, 1])
    np.testing.assert_allclose(p[1, 0], proba[1, :, 3, 0])  # second sample, reversed columns
    counts = column_counts(proba.argmax(1), cx, cy, label_x, label_y)
    seen = counts >= 0
    np.testing.assert_array_equal(np.nanargmax(np.nan_to_num(p, nan=-1.0), -1)[seen], counts[seen])
    with pytest.raises(ValueError, match="column_x and column_y must both have shape"):
        metrics.column_probabilities(proba, column_x, column_y, label_x, label_y)
    with pytest.raises(ValueError, match=r"shape \(..., n_classes, H, W\)"):
        metrics.column_probabilities(proba[0, 0], column_x, column_y, label_x, label_y)


def test_prediction_sets_are_the_smallest_reaching_the_level():
    p = np.array([[0.5, 0.3, 0.2, 0.0],
                  [0.05, 0.9, 0.05, 0.0],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.4, 0.1, 0.4, 0.1]])
    sets = metrics.prediction_sets(p, 0.8)
    np.testing.assert_array_equal(sets, [[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])
    assert metrics.prediction_sets(p, 1.0)[0].tolist() == [True, True, True, False]  # zero-probability class stays out
    assert metrics.prediction_sets(p, 0.5).sum(1).tolist() == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="level must lie in"):
        metrics.prediction_sets(p, 0.0)


def test_set_scores_decide_membership_of_the_truth():
    from segdepth.data.tracking import set_scores

    p = np.array([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(set_scores(p, np.array([2, 0])), [0.8, 0.0])
    np.testing.assert_allclose(set_scores(p, np.array([0, 3])), [0.0, 0.75])  # ties: the lower class first
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(11, 0.3), size=500)
    true = rng.integers(0, 11, size=500)
    scores = set_scores(q, true)
    for mass in (0.3, 0.6, 0.9, 0.99):
        member = metrics.prediction_sets(q, mass)[np.arange(500), true]
        np.testing.assert_array_equal(member, scores < mass - 1e-6)
    with pytest.raises(ValueError, match="true classes must lie in 0..3"):
        set_scores(p, np.array([0, 4]))


def test_calibrated_mass_is_the_conformal_quantile():
    from segdepth.data.tracking import calibrated_mass

    scores = np.arange(10) / 10  # 0, 0.1, ..., 0.9
    assert calibrated_mass(scores, 0.5) == pytest.approx(0.5, abs=1e-5)  # the ceil(11 * 0.5) = 6th smallest
    assert (scores < calibrated_mass(scores, 0.5) - 1e-6).sum() == 6
    assert calibrated_mass(scores, 0.9) == pytest.approx(0.9, abs=1e-5)
    assert calibrated_mass(scores[:5], 0.9) == 1.0  # ceil(6 * 0.9) = 6 > 5 rows: everything
    with pytest.raises(ValueError, match="level must lie in"):
        calibrated_mass(scores, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        calibrated_mass([], 0.9)


def test_calibrated_sets_of_an_overconfident_model_keep_their_promise():
    from segdepth.data.tracking import calibrated_mass, set_scores

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, size=(8000, 11))
    truth_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    true = np.array([rng.choice(11, p=row) for row in truth_p])
    sharp = np.exp(2.5 * logits)  # the model's probabilities: too sharp (temperature 0.4)
    model_p = sharp / sharp.sum(1, keepdims=True)
    cal, test = slice(0, 4000), slice(4000, None)
    nominal = metrics.prediction_sets(model_p[test], 0.9)[np.arange(4000), true[test]].mean()
    mass = calibrated_mass(set_scores(model_p[cal], true[cal]), 0.9)
    covered = metrics.prediction_sets(model_p[test], mass)[np.arange(4000), true[test]].mean()
    assert nominal < 0.8  # taken at its word the model promises 0.9 and does not hold it
    assert mass > 0.9 and 0.88 <= covered <= 0.92


def test_column_calibration_on_hand_made_columns():
    # four columns of 2 atoms: two read right with probability 0.6, two wrong (0.6 on 3 atoms)
    right = np.zeros(11)
    right[[2, 3]] = [0.6, 0.4]
    wrong = np.zeros(11)
    wrong[[3, 2]] = [0.6, 0.4]
    pad = np.full(11, np.nan)
    p = np.stack([right, right, wrong, wrong, pad])
    true = np.array([2, 2, 2, 2, 0])
    c = metrics.column_calibration(p, true, level=0.9)
    assert c["n"] == 4
    assert c["exact"] == pytest.approx(0.5) and c["confidence"] == pytest.approx(0.6)
    assert c["ece"] == pytest.approx(0.1)  # one bin at confidence 0.6 with accuracy 0.5
    assert c["set_coverage"] == pytest.approx(1.0) and c["set_size"] == pytest.approx(2.0)
    c = metrics.column_calibration(p, true, level=0.5)  # sets of one count: coverage = exact
    assert c["set_coverage"] == pytest.approx(0.5) and c["set_size"] == pytest.approx(1.0)
    assert math.isnan(metrics.column_calibration(p[4:], true[4:])["ece"])
    with pytest.raises(ValueError, match="beyond the 11 classes"):
        metrics.column_calibration(p[:1], np.array([11]))
    with pytest.raises(ValueError, match="to match true_counts"):
        metrics.column_calibration(p, true[:3])


def test_column_count_accuracy():
    pred = np.array([3, 5, 2, 7, 1, -1, 9])
    true = np.array([3, 4, 4, 7, 2, 5, 0])
    Z = np.array([58, 58, 8, 8, 8, 58, 0])
    # Ce: exact, off by one; O: off by two, exact, off by one; (-1: not observed, 0: padding) left out
    out = column_count_accuracy(pred, true, Z)
    assert out == pytest.approx(
        {
            "exact_all": 2 / 5, "within_one_all": 4 / 5, "n_all": 5,
            "exact_Ce": 1 / 2, "within_one_Ce": 1.0, "n_Ce": 2,
            "exact_O": 1 / 3, "within_one_O": 2 / 3, "n_O": 3,
        }
    )  # fmt: skip
    only_ce = column_count_accuracy(pred[:2], true[:2], Z[:2])
    assert only_ce["n_O"] == 0 and math.isnan(only_ce["exact_O"])
    with pytest.raises(ValueError, match="same shape"):
        column_count_accuracy(pred, true[:3], Z)


def test_confusion_matrix():
    cm = confusion_matrix(PRED, LABEL, n_classes=5)
    expected = np.array(
        [
            [8, 1, 1, 0, 0],  # true 0: (2,0) -> 1, (3,3) -> 2
            [1, 2, 1, 0, 0],  # true 1: (2,2) -> 0, (0,2) -> 2
            [0, 0, 0, 1, 0],  # true 2: (1,2) -> 3
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.sum() == PRED.size
    assert np.trace(cm) / cm.sum() == pixelwise_accuracy(PRED, LABEL)
    assert confusion_matrix(PRED, LABEL).shape == (11, 11)

    norm = normalise_confusion(cm)
    np.testing.assert_allclose(norm[0], [0.8, 0.1, 0.1, 0, 0])
    np.testing.assert_allclose(norm[1], [0.25, 0.5, 0.25, 0, 0])
    assert np.all(np.isnan(norm[4]))  # class 4 never occurs
    np.testing.assert_allclose(np.nansum(norm, axis=1), [1, 1, 1, 1, 0])

    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        confusion_matrix(PRED, LABEL, n_classes=3)  # pred and label hold a 3
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(PRED.astype(float), LABEL)
    with pytest.raises(ValueError, match="square"):
        normalise_confusion(np.ones((2, 3)))


def test_reliability_diagram_and_ece():
    # perfectly calibrated: 75 % confident and 3 of 4 right; 25 % confident and 1 of 4 right
    conf = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    diagram = reliability_diagram(conf, correct, n_bins=10)
    np.testing.assert_allclose(diagram.edges, np.linspace(0, 1, 11))
    np.testing.assert_array_equal(diagram.count, [0, 0, 4, 0, 0, 0, 0, 4, 0, 0])
    assert diagram.accuracy[7] == 0.75 and diagram.confidence[7] == 0.75
    assert diagram.accuracy[2] == 0.25 and np.isnan(diagram.accuracy[0]) and np.isnan(diagram.confidence[9])
    assert len(tuple(diagram)) == 4  # (edges, confidence, accuracy, count)
    assert expected_calibration_error(conf, correct) == 0.0

    # over-confident: 90 % confident, half right -> ECE 0.4
    assert expected_calibration_error([0.9] * 4, [1, 1, 0, 0]) == pytest.approx(0.4)
    # two bins: 0.95 with 1 of 2 right (gap 0.45), 0.55 with 2 of 2 right (gap 0.45)
    assert expected_calibration_error([0.95, 0.95, 0.55, 0.55], [1, 0, 1, 1]) == pytest.approx(0.45)
    # confidence 1 falls in the last bin, 0 in the first
    assert list(reliability_diagram([0.0, 1.0], [0, 1], n_bins=4).count) == [1, 0, 0, 1]
    # values on an edge open the bin above it (0.3 * 10 and 0.7 * 10 are not exact in floating point)
    assert list(reliability_diagram([0.3, 0.6, 0.7], [1, 1, 1], n_bins=10).count) == [0, 0, 0, 1, 0, 0, 1, 1, 0, 0]
    assert math.isnan(expected_calibration_error([], []))

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_diagram([1.5], [1])
    with pytest.raises(ValueError, match="same shape"):
        reliability_diagram([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram([0.5], [1], n_bins=0)


def test_confidence_and_depth_maps():
    proba = np.zeros((1, 3, 2, 2))
    proba[0, :, 0, 0] = [0.2, 0.5, 0.3]
    proba[0, :, 0, 1] = [0.9, 0.05, 0.05]
    proba[0, :, 1, 0] = [0.1, 0.1, 0.8]
    proba[0, :, 1, 1] = [0.3, 0.3, 0.4]
    np.testing.assert_allclose(confidence_map(proba), [[[0.5, 0.9], [0.8, 0.4]]])
    np.testing.assert_array_equal(depth_map(proba), [[[1, 0], [2, 2]]])
    np.testing.assert_array_equal(depth_map(np.log(proba[0])), [[1, 0], [2, 2]])  # logits work too
    np.testing.assert_array_equal(depth_map(np.moveaxis(proba, 1, -1), axis=-1), [[[1, 0], [2, 2]]])
    with pytest.raises(ValueError, match="softmax"):
        confidence_map(proba * 3)
    with pytest.raises(ValueError, match="out of range"):
        confidence_map(np.ones((2, 2)) / 2)


def test_saliency_is_local():
    torch = pytest.importorskip("torch")
    from segdepth.learn.model import UNet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: avoid thread contention
    try:
        _check_saliency(torch, UNet)
    finally:
        torch.set_num_threads(threads)


def _check_saliency(torch, UNet):
    torch.manual_seed(0)
    model = UNet(channels=(2, 4), n_scales=1, head_channels=(4, 4)).train()
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32) + 0.5
    sal = saliency(model, image, (2, 2), 3)  # output pixel (2, 2) covers image pixels 8..11
    assert sal.shape == image.shape and sal.dtype == np.float32
    assert np.all(sal >= 0)
    assert sal[4:16, 4:16].sum() > 0  # inside the receptive field
    assert np.all(sal[64:, :] == 0) and np.all(sal[:, 64:] == 0)  # far outside it
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # parameter gradients untouched

    with pytest.raises(ValueError, match="outside the output grid"):
        saliency(model, image, (32, 0), 3)
    with pytest.raises(ValueError, match="depth must be a class"):
        saliency(model, image, (0, 0), 11)
    with pytest.raises(ValueError, match="2-D"):
        saliency(model, image[None], (0, 0), 1)


def test_metrics_module_does_not_import_torch_at_top_level():
    tree = ast.parse(Path(metrics.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module for node in top_level if isinstance(node, ast.ImportFrom)
    ]
    assert not any(name and name.split(".")[0] == "torch" for name in names)


def test_robustness_tables_on_a_hand_made_result():
    """dose_spread is the largest drop below the best over lambda 0.5-25; confusion rows are normalised."""
    import xarray as xr

    from segdepth.learn.evaluation import confusion_table, dose_spread, robustness_table

    lams = [0.25, 1.0, 2.5, 25.0]
    exact = np.array([0.1, 0.6, 0.8, 0.7])  # 0.25 lies outside 0.5-25: spread = 0.8 - 0.6
    conf = np.zeros((1, 1, 4, 11, 11), np.int64)
    conf[..., 3, 3] = 6
    conf[..., 3, 2] = 2  # 3-atom columns: 6 read as 3, 2 read as 2
    groups = ["all", "Ce", "O", "vacancies_O"]
    r = xr.Dataset(
        {"column_exact": (("model", "test_set", "lam", "group"), np.tile(exact[None, None, :, None], (1, 1, 1, 4))),
         "column_within_one": (("model", "test_set", "lam", "group"), np.ones((1, 1, 4, 4))),
         "ece": (("model", "test_set", "lam"), np.full((1, 1, 4), 0.01)),
         "hallucination_rate": (("model", "test_set", "lam"), np.full((1, 1, 4), 0.002)),
         "column_confusion": (("model", "test_set", "lam", "true_count", "predicted_count"), conf)},
        coords={"model": ["m"], "test_set": ["shift"], "lam": lams, "group": groups,
                "true_count": np.arange(11), "predicted_count": np.arange(11)})
    assert float(dose_spread(r).sel(model="m", test_set="shift")) == pytest.approx(0.2)
    table = robustness_table(r)
    assert "| m | shift | 0.600 | 0.800 |" in table and "| 20.0 |" in table
    assert table.splitlines()[2].endswith("| - | - | - |")  # a result written before the column calibration
    r["column_confidence"] = r.ece * 0 + 0.7
    r["column_ece"] = r.ece * 0 + 0.05
    r["column_set_coverage"] = r.ece * 0 + 0.93
    r["column_set_size"] = r.ece * 0 + 3.25
    assert robustness_table(r).splitlines()[2].endswith("| 0.700 | 0.050 | 0.930 / 3.25 |")
    rows = confusion_table(r, model="m", test_set="shift", lam=2.5).splitlines()
    assert len(rows) == 3  # header, rule, the only populated row (3 atoms)
    assert rows[2].startswith("| 3 | 8 |") and "| 0.25 | 0.75 |" in rows[2]
