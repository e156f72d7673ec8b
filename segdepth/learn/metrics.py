"""Evaluation metrics of the paper: accuracies, detection rates, calibration, saliency.

All depth maps live on the label grid (see ``docs/conventions.md``): ``pred`` is
the predicted depth per label pixel (argmax of the network output, see
:func:`depth_map`), ``label`` the ring-smoothed target and ``center_mask`` the
paper's centre region, all of shape ``(..., H, W)``. Rates are pooled over every
pixel given (all samples together) unless ``axis`` is passed; a rate over an
empty set of pixels is NaN.

The four numbers the paper reports per model (:func:`summarise`):

- pixel-wise accuracy: ``mean(pred == label)`` over all pixels;
- centre accuracy: the same over the centre region only;
- real-atom detection rate: fraction of atom pixels (``label > 0``) predicted
  as atoms (``pred > 0``);
- hallucination rate: fraction of background pixels (``label == 0``) predicted
  as atoms.

Only :func:`saliency` needs torch, and imports it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from segdepth.constants import N_CLASSES, Z_CE, Z_O, check_int
from segdepth.data.tracking import COUNT_SET_LEVEL, prediction_sets

__all__ = [
    "pixelwise_accuracy",
    "center_accuracy",
    "real_atom_detection_rate",
    "hallucination_rate",
    "METRIC_NAMES",
    "metric_counts",
    "summarise",
    "column_counts",
    "column_count_accuracy",
    "column_probabilities",
    "prediction_sets",
    "COUNT_SET_LEVEL",
    "column_calibration",
    "confusion_matrix",
    "normalise_confusion",
    "ReliabilityDiagram",
    "reliability_diagram",
    "expected_calibration_error",
    "confidence_map",
    "depth_map",
    "saliency",
]



def _as_array(x: Any, name: str) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    return arr


def _depth_pair(pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, label = _as_array(pred, "pred"), _as_array(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have the same shape (..., H, W), got {pred.shape} and {label.shape}")
    if pred.ndim < 2:
        raise ValueError(f"pred and label must be depth maps of shape (..., H, W), got shape {pred.shape}")
    return pred, label


def _mask_like(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = _as_array(mask, name)
    if mask.shape != shape:
        raise ValueError(f"{name} must have the shape of pred and label {shape}, got {mask.shape}")
    return mask.astype(bool)


def _masked_rate(hit: np.ndarray, mask: np.ndarray, axis: int | Sequence[int] | None) -> float | np.ndarray:
    """Fraction of ``mask`` pixels where ``hit`` is true; NaN where the mask is empty."""
    axis = tuple(axis) if isinstance(axis, Sequence) else axis
    num = np.sum(hit & mask, axis=axis)
    den = np.sum(mask, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    return float(rate) if np.ndim(rate) == 0 else rate


def pixelwise_accuracy(pred: Any, label: Any, *, axis: int | Sequence[int] | None = None) -> float | np.ndarray:
    """Fraction of pixels whose predicted depth equals the label.

    Parameters
    ----------
    pred, label : array_like of int, shape (..., H, W)
        Predicted and target depth maps [atoms].
    axis : int or tuple of int, optional
        Axes to pool over; default all (one number). ``(-2, -1)`` gives one
        value per sample.

    Returns
    -------
    float or numpy.ndarray
        Accuracy in [0, 1]; NaN for an empty input.
    """
    pred, label = _depth_pair(pred, label)
    return _masked_rate(pred == label, np.ones(pred.shape, dtype=bool), axis)


def center_accuracy(
    pred: Any, label: Any, center_mask: Any, *, axis: int | Sequence[int] | None = None
) -> float | np.ndarray:
    """Fraction of centre-region pixels whose predicted depth equals the label.

    Parameters
    ----------
    pred, label : array_like of int, shape (..., H, W)
        Predicted and target depth maps [atoms].
    center_mask : array_like of bool or 0/1, shape (..., H, W)
        Pixels within the centre radius of a column.
    axis : int or tuple of int, optional
        Axes to pool over; default all.

    Returns
    -------
    float or numpy.ndarray
        Accuracy in [0, 1]; NaN where the mask is empty.
    """
    pred, label = _depth_pair(pred, label)
    mask = _mask_like(center_mask, pred.shape, "center_mask")
    return _masked_rate(pred == label, mask, axis)


def real_atom_detection_rate(pred: Any, label: Any, *, axis: int | Sequence[int] | None = None) -> float | np.ndarray:
    """Fraction of atom pixels (``label > 0``) predicted as atoms (``pred > 0``).

    NaN where there are no atom pixels. See :func:`pixelwise_accuracy` for the
    parameters.
    """
    pred, label = _depth_pair(pred, label)
    return _masked_rate(pred > 0, label > 0, axis)


def hallucination_rate(pred: Any, label: Any, *, axis: int | Sequence[int] | None = None) -> float | np.ndarray:
    """Fraction of background pixels (``label == 0``) predicted as atoms (``pred > 0``).

    NaN where there are no background pixels. See :func:`pixelwise_accuracy`
    for the parameters.
    """
    pred, label = _depth_pair(pred, label)
    return _masked_rate(pred > 0, label == 0, axis)


#: The paper's four pixel metrics (Table I), in its order: the names of :func:`summarise`.
METRIC_NAMES = ("pixelwise_accuracy", "center_accuracy", "real_atom_detection_rate", "hallucination_rate")


def metric_counts(pred: Any, label: Any, center_mask: Any) -> dict[str, tuple[int, int]]:
    """Numerator and denominator of each of the four metrics (:data:`METRIC_NAMES`) over all pixels.

    Summing these over samples and dividing at the end pools a dataset without keeping its pixels
    (:func:`segdepth.learn.evaluation.evaluate_dataset`); for one map, ``num / den`` is the metric.
    """
    pred, label = _depth_pair(pred, label)
    centre = _mask_like(center_mask, pred.shape, "center_mask")
    ok, fg, bg, atom = pred == label, label > 0, label == 0, pred > 0
    return {
        "pixelwise_accuracy": (int(ok.sum()), int(ok.size)),
        "center_accuracy": (int((ok & centre).sum()), int(centre.sum())),
        "real_atom_detection_rate": (int((atom & fg).sum()), int(fg.sum())),
        "hallucination_rate": (int((atom & bg).sum()), int(bg.sum())),
    }


def summarise(pred: Any, label: Any, center_mask: Any) -> dict[str, float]:
    """The paper's four metrics, pooled over all pixels.

    Returns
    -------
    dict
        ``pixelwise_accuracy``, ``center_accuracy``, ``real_atom_detection_rate``
        and ``hallucination_rate``, each a float in [0, 1] (or NaN).
    """
    return {
        "pixelwise_accuracy": pixelwise_accuracy(pred, label),
        "center_accuracy": center_accuracy(pred, label, center_mask),
        "real_atom_detection_rate": real_atom_detection_rate(pred, label),
        "hallucination_rate": hallucination_rate(pred, label),
    }


def _nearest_index(centres: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest pixel centre for each value, and whether it is inside the grid."""
    centres = np.asarray(centres, dtype=float)
    if centres.ndim != 1 or centres.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of pixel centres [A], got shape {centres.shape}")
    if centres.size > 1 and not np.all(np.diff(centres) > 0):
        raise ValueError(f"{name} must be strictly increasing pixel centres [A]")
    half = 0.5 * (centres[1] - centres[0]) if centres.size > 1 else np.inf
    finite = np.isfinite(values)
    v = np.where(finite, values, centres[0])
    right = np.clip(np.searchsorted(centres, v), 1, max(centres.size - 1, 1))
    left = right - 1
    if centres.size == 1:
        index = np.zeros(v.shape, dtype=np.intp)
    else:
        index = np.where(np.abs(v - centres[left]) <= np.abs(centres[right] - v), left, right)
    inside = finite & (v >= centres[0] - half) & (v <= centres[-1] + half)
    return index, inside


def column_counts(pred: Any, column_x: Any, column_y: Any, label_x: Any, label_y: Any) -> np.ndarray:
    """Predicted atom count of each column: ``pred`` at the pixel nearest its centre.

    Parameters
    ----------
    pred : array_like of int, shape (..., H, W)
        Predicted depth maps on the label grid [atoms].
    column_x, column_y : array_like of float, shape (..., n_columns)
        Projected column centres [A]; NaN marks padding. Leading dimensions
        match those of ``pred``.
    label_x : array_like of float, shape (W,)
        Label-grid pixel centres along x [A], increasing.
    label_y : array_like of float, shape (H,)
        Label-grid pixel centres along y [A], increasing.

    Returns
    -------
    numpy.ndarray of int64, shape (..., n_columns)
        Predicted count per column; -1 for padding columns and for centres
        more than half a pixel outside the grid. Ties go to the lower index.
    """
    pred = _as_array(pred, "pred")
    cx = _as_array(column_x, "column_x").astype(float)
    cy = _as_array(column_y, "column_y").astype(float)
    if pred.ndim < 2:
        raise ValueError(f"pred must have shape (..., H, W), got {pred.shape}")
    if cx.shape != cy.shape:
        raise ValueError(f"column_x and column_y must have the same shape, got {cx.shape} and {cy.shape}")
    if cx.ndim < 1 or cx.shape[:-1] != pred.shape[:-2]:
        raise ValueError(
            f"column_x must have shape {(*pred.shape[:-2], 'n_columns')} to match pred {pred.shape}, got {cx.shape}"
        )
    label_x, label_y = np.asarray(label_x), np.asarray(label_y)
    if label_x.shape != (pred.shape[-1],) or label_y.shape != (pred.shape[-2],):
        raise ValueError(
            f"label_x and label_y must have shapes ({pred.shape[-1]},) and ({pred.shape[-2]},) to match pred "
            f"{pred.shape}, got {label_x.shape} and {label_y.shape}"
        )
    sample, iy, ix, inside = _column_pixels(pred.shape, cx, cy, label_x, label_y)
    counts = pred.reshape(-1, *pred.shape[-2:])[sample, iy, ix].astype(np.int64)
    return np.where(inside, counts, -1)


def _column_pixels(shape: tuple[int, ...], cx: np.ndarray, cy: np.ndarray, label_x: np.ndarray, label_y: np.ndarray):
    """Flat sample index, row and column of the label pixel nearest each column centre, and whether it is inside."""
    ix, inside_x = _nearest_index(label_x, cx, "label_x")
    iy, inside_y = _nearest_index(label_y, cy, "label_y")
    n = int(np.prod(shape[:-2], dtype=np.int64))
    sample = np.broadcast_to(np.arange(n).reshape(cx.shape[:-1] + (1,)), cx.shape)
    return sample, iy, ix, inside_x & inside_y


def column_probabilities(proba: Any, column_x: Any, column_y: Any, label_x: Any, label_y: Any) -> np.ndarray:
    """Class probabilities at the pixel nearest each column centre (the pixel :func:`column_counts` reads).

    Parameters
    ----------
    proba : array_like of float, shape (..., n_classes, H, W)
        Probability maps on the label grid (softmax of the network).
    column_x, column_y, label_x, label_y
        As for :func:`column_counts` (leading dimensions of ``column_x`` match those of ``proba`` before
        the class axis).

    Returns
    -------
    numpy.ndarray of float, shape (..., n_columns, n_classes)
        ``argmax`` over the last axis is :func:`column_counts` of ``argmax`` over the class axis; NaN rows
        for padding columns and centres outside the grid.
    """
    proba = _as_array(proba, "proba").astype(float)
    if proba.ndim < 3:
        raise ValueError(f"proba must have shape (..., n_classes, H, W), got {proba.shape}")
    cx = _as_array(column_x, "column_x").astype(float)
    cy = _as_array(column_y, "column_y").astype(float)
    if cx.shape != cy.shape or cx.ndim < 1 or cx.shape[:-1] != proba.shape[:-3]:
        raise ValueError(f"column_x and column_y must both have shape {(*proba.shape[:-3], 'n_columns')} to match "
                         f"proba {proba.shape}, got {cx.shape} and {cy.shape}")
    label_x, label_y = np.asarray(label_x), np.asarray(label_y)
    if label_x.shape != (proba.shape[-1],) or label_y.shape != (proba.shape[-2],):
        raise ValueError(f"label_x and label_y must have shapes ({proba.shape[-1]},) and ({proba.shape[-2]},) to "
                         f"match proba {proba.shape}, got {label_x.shape} and {label_y.shape}")
    sample, iy, ix, inside = _column_pixels(proba.shape[:-3] + proba.shape[-2:], cx, cy, label_x, label_y)
    flat = np.moveaxis(proba.reshape(-1, *proba.shape[-3:]), 1, -1)  # (samples, H, W, classes)
    out = flat[sample, iy, ix]
    out[~inside] = np.nan
    return out


def column_calibration(column_proba: Any, true_counts: Any, *, level: float = COUNT_SET_LEVEL,
                       n_bins: int = 10) -> dict[str, float]:
    """Whether the confidence at the columns means what it says.

    Parameters
    ----------
    column_proba : array_like of float, shape (..., n_columns, n_classes)
        :func:`column_probabilities`; NaN rows are left out.
    true_counts : array_like of int, shape (..., n_columns)
        Atoms per column; 0 marks padding (left out).
    level : float
        Level of the prediction sets (:func:`prediction_sets`).
    n_bins : int
        Bins of the column reliability diagram.

    Returns
    -------
    dict
        ``n`` columns; ``exact`` (most probable count right), ``confidence`` (mean probability of the most
        probable count: equals ``exact`` for a calibrated model), ``ece`` (:func:`expected_calibration_error`
        over the columns), ``set_coverage`` (fraction of columns whose ``level`` set holds the true count)
        and ``set_size`` (mean number of counts in the set). NaN over no columns.
    """
    p = _as_array(column_proba, "column_proba").astype(float)
    true = _as_array(true_counts, "true_counts").astype(np.int64)
    if p.shape[:-1] != true.shape:
        raise ValueError(f"column_proba must have shape {(*true.shape, 'n_classes')} to match true_counts "
                         f"{true.shape}, got {p.shape}")
    keep = (true > 0) & np.all(np.isfinite(p), axis=-1)
    p, true = p[keep], true[keep]
    if true.size and true.max() >= p.shape[-1]:
        raise ValueError(f"true_counts reach {true.max()}, beyond the {p.shape[-1]} classes of column_proba")
    out = {"n": int(true.size)}
    if true.size == 0:
        return out | dict.fromkeys(("exact", "confidence", "ece", "set_coverage", "set_size"), float("nan"))
    confidence = p.max(axis=-1)
    correct = p.argmax(axis=-1) == true
    sets = prediction_sets(p, level)
    out.update(exact=float(correct.mean()), confidence=float(confidence.mean()),
               ece=expected_calibration_error(np.clip(confidence, 0.0, 1.0), correct, n_bins=n_bins),
               set_coverage=float(sets[np.arange(true.size), true].mean()), set_size=float(sets.sum(-1).mean()))
    return out


def column_count_accuracy(pred_counts: Any, true_counts: Any, Z: Any) -> dict[str, float]:
    """Exact and within-one accuracy of predicted column counts, per element and overall.

    Parameters
    ----------
    pred_counts : array_like of int, shape (..., n_columns)
        Predicted atoms per column (:func:`column_counts`; -1 = not observed).
    true_counts : array_like of int, shape (..., n_columns)
        Atoms present per column; 0 marks padding.
    Z : array_like of int, shape (..., n_columns)
        Atomic number per column (58 Ce, 8 O; 0 = padding).

    Returns
    -------
    dict
        ``exact_<group>`` (fraction with ``pred == true``),
        ``within_one_<group>`` (``|pred - true| <= 1``) and ``n_<group>``
        (columns counted) for groups ``all``, ``Ce`` and ``O``. Padding
        columns and columns with ``pred_counts < 0`` are left out; accuracies
        over no columns are NaN.
    """
    pred = _as_array(pred_counts, "pred_counts").astype(np.int64)
    true = _as_array(true_counts, "true_counts").astype(np.int64)
    Z = _as_array(Z, "Z").astype(np.int64)
    if not pred.shape == true.shape == Z.shape:
        raise ValueError(
            f"pred_counts, true_counts and Z must have the same shape, got {pred.shape}, {true.shape} and {Z.shape}"
        )
    valid = (true > 0) & (Z > 0) & (pred >= 0)
    error = np.abs(pred - true)
    out: dict[str, float] = {}
    for group, mask in (("all", valid), ("Ce", valid & (Z == Z_CE)), ("O", valid & (Z == Z_O))):
        out[f"exact_{group}"] = _masked_rate(error == 0, mask, None)
        out[f"within_one_{group}"] = _masked_rate(error <= 1, mask, None)
        out[f"n_{group}"] = int(mask.sum())
    return out


def _check_classes(arr: np.ndarray, name: str, n_classes: int) -> None:
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must hold integer depth classes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} values must lie in [0, {n_classes - 1}], got [{arr.min()}, {arr.max()}]")


def confusion_matrix(pred: Any, label: Any, *, n_classes: int = N_CLASSES) -> np.ndarray:
    """Pixel counts per (true depth, predicted depth).

    Parameters
    ----------
    pred, label : array_like of int, shape (..., H, W)
        Predicted and target depth maps, values in ``[0, n_classes)``.
    n_classes : int
        Number of depth classes.

    Returns
    -------
    numpy.ndarray of int64, shape (n_classes, n_classes)
        ``cm[i, j]`` = number of pixels with ``label == i`` and ``pred == j``
        (rows true, columns predicted); sums to the number of pixels.
    """
    pred, label = _depth_pair(pred, label)
    check_int(n_classes, "n_classes")
    _check_classes(pred, "pred", n_classes)
    _check_classes(label, "label", n_classes)
    flat = label.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def normalise_confusion(cm: Any) -> np.ndarray:
    """Row-normalised confusion matrix: ``cm[i, j] / sum_j cm[i, j]``.

    Rows of classes that never occur (sum 0) are NaN.
    """
    cm = _as_array(cm, "cm").astype(float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square (n_classes, n_classes) matrix, got shape {cm.shape}")
    total = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, cm / np.where(total > 0, total, 1), np.nan)


class ReliabilityDiagram(NamedTuple):
    """Calibration per confidence bin (NaN in empty bins).

    Diagrams of several images add up with :meth:`merge` (sums of counts, weighted means), so a
    dataset is binned once, the same way, whether it is given whole or image by image.
    """

    edges: np.ndarray
    """Bin edges, shape (n_bins + 1,), from 0 to 1."""
    confidence: np.ndarray
    """Mean confidence of the pixels in each bin, shape (n_bins,)."""
    accuracy: np.ndarray
    """Fraction of correct pixels in each bin, shape (n_bins,)."""
    count: np.ndarray
    """Pixels per bin (int64), shape (n_bins,)."""

    @classmethod
    def merge(cls, diagrams) -> ReliabilityDiagram:
        """One diagram of the pixels of all ``diagrams`` (same bins)."""
        diagrams = list(diagrams)
        if not diagrams:
            raise ValueError("no reliability diagrams to merge")
        edges = diagrams[0].edges
        if any(d.edges.shape != edges.shape or not np.array_equal(d.edges, edges) for d in diagrams):
            raise ValueError("reliability diagrams with different bins cannot be merged")
        count = np.sum([d.count for d in diagrams], axis=0).astype(np.int64)
        conf_sum = np.sum([np.nan_to_num(d.confidence) * d.count for d in diagrams], axis=0)
        corr_sum = np.sum([np.nan_to_num(d.accuracy) * d.count for d in diagrams], axis=0)
        return cls._from_sums(edges, count, conf_sum, corr_sum)

    @classmethod
    def _from_sums(cls, edges, count, conf_sum, corr_sum) -> ReliabilityDiagram:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
            accuracy = np.where(count > 0, corr_sum / np.maximum(count, 1), np.nan)
        return cls(edges, mean_conf, accuracy, count)

    def ece(self) -> float:
        """Expected calibration error of this diagram (:func:`expected_calibration_error`)."""
        n = self.count.sum()
        if n == 0:
            return float("nan")
        filled = self.count > 0
        return float(np.sum(self.count[filled] * np.abs(self.accuracy[filled] - self.confidence[filled])) / n)


def reliability_diagram(confidence: Any, correct: Any, *, n_bins: int = 10) -> ReliabilityDiagram:
    """Bin pixels by confidence and compare mean confidence with accuracy.

    Parameters
    ----------
    confidence : array_like of float
        Confidence per pixel in [0, 1] (:func:`confidence_map`).
    correct : array_like of bool
        Whether the predicted depth is right, same shape.
    n_bins : int
        Number of equal-width bins on [0, 1]; bin ``k`` is
        ``[k / n_bins, (k + 1) / n_bins)``, the last one closed.

    Returns
    -------
    ReliabilityDiagram
        ``(edges, confidence, accuracy, count)``.
    """
    conf = _as_array(confidence, "confidence").astype(float)
    corr = _as_array(correct, "correct")
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct must have the same shape, got {conf.shape} and {corr.shape}")
    check_int(n_bins, "n_bins")
    if conf.size and not (np.all(np.isfinite(conf)) and conf.min() >= 0 and conf.max() <= 1):
        raise ValueError("confidence must be finite and lie in [0, 1] (a probability, not a logit)")
    conf, corr = conf.ravel(), corr.astype(bool).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)  # floor; 1.0 joins the last bin
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(index, weights=corr.astype(float), minlength=n_bins)
    return ReliabilityDiagram._from_sums(edges, count, conf_sum, corr_sum)


def expected_calibration_error(confidence: Any, correct: Any, *, n_bins: int = 10) -> float:
    """Expected calibration error ``sum_k (n_k / n) |accuracy_k - confidence_k|``.

    Bins as in :func:`reliability_diagram`. 0 for a perfectly calibrated
    classifier; NaN for no pixels.
    """
    return reliability_diagram(confidence, correct, n_bins=n_bins).ece()


def _class_axis(arr: np.ndarray, axis: int, name: str) -> int:
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"{name} has shape {arr.shape}; class axis {axis} is out of range")
    return axis


def confidence_map(proba: Any, *, axis: int = -3) -> np.ndarray:
    """Confidence ``c_i = max_d F(y)_i[d]`` (eq. 5): the largest class probability.

    Parameters
    ----------
    proba : array_like of float, shape (..., n_classes, H, W)
        Per-pixel depth distribution (softmax of the logits).
    axis : int
        Class axis (default -3, matching the model output ``(B, 11, H, W)``).

    Returns
    -------
    numpy.ndarray
        Confidence per pixel in [1 / n_classes, 1], the class axis removed.
    """
    proba = _as_array(proba, "proba")
    axis = _class_axis(proba, axis, "proba")
    if proba.size and (np.nanmin(proba) < -1e-6 or np.nanmax(proba) > 1 + 1e-6):
        raise ValueError("proba must hold probabilities in [0, 1] (apply softmax to the logits first)")
    return proba.max(axis=axis)


def depth_map(proba: Any, *, axis: int = -3) -> np.ndarray:
    """Predicted depth: the most probable class per pixel (also works on logits).

    Parameters
    ----------
    proba : array_like of float, shape (..., n_classes, H, W)
        Class probabilities or logits.
    axis : int
        Class axis (default -3).

    Returns
    -------
    numpy.ndarray of int64
        Depth per pixel [atoms], the class axis removed.
    """
    proba = _as_array(proba, "proba")
    axis = _class_axis(proba, axis, "proba")
    return proba.argmax(axis=axis).astype(np.int64)


def saliency(model: Any, image: Any, pixel: tuple[int, int], depth: int) -> np.ndarray:
    """Input gradient ``|d F(y)_pixel[depth] / d y|`` (eq. 7).

    Parameters
    ----------
    model : torch.nn.Module
        Network returning logits ``(1, n_classes, h, w)``; evaluated in eval
        mode (its previous mode is restored afterwards, parameter gradients
        are not touched).
    image : array_like of float, shape (H, W)
        Normalised noisy input image ``y``.
    pixel : (int, int)
        ``(row, col)`` of the output (label-grid) pixel.
    depth : int
        Depth class whose probability is differentiated.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        Absolute gradient of that probability with respect to every input
        pixel [per unit of normalised intensity].
    """
    import torch

    image = _as_array(image, "image")
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {image.shape}")
    if len(pixel) != 2:
        raise ValueError(f"pixel must be (row, col) on the output grid, got {pixel!r}")
    row, col = (int(p) for p in pixel)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=dtype, device=device)[None, None].requires_grad_(True)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x)
            n_classes, h, w = logits.shape[1:]
            if not 0 <= row < h or not 0 <= col < w:
                raise ValueError(f"pixel {pixel!r} is outside the output grid of shape ({h}, {w})")
            if not 0 <= int(depth) < n_classes:
                raise ValueError(f"depth must be a class in [0, {n_classes - 1}], got {depth!r}")
            prob = torch.softmax(logits, dim=1)[0, int(depth), row, col]
            (grad,) = torch.autograd.grad(prob, x)
    finally:
        model.train(was_training)
    return grad[0, 0].abs().detach().cpu().numpy().astype(np.float32)
