"""Evaluation of a trained model on simulated data, as in the paper (Sec. IV).

:func:`infer` adds seeded Poisson noise to clean images and returns the
network's class probabilities; :func:`evaluate_dataset` pools, over a set of
test samples, the paper's four metrics (pixelwise accuracy, center accuracy,
real-atom detection, hallucination), the per-column atom-count accuracy (exact
and within one atom, Ce and O separately), the confusion matrix and the
reliability diagram, and returns them as one xarray dataset.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from segdepth.constants import N_CLASSES
from segdepth.data.preprocess import bin_image, normalise
from segdepth.learn import metrics
from segdepth.learn.metrics import METRIC_NAMES
from segdepth.physics.noise import lower_dose, poisson_noise

__all__ = ["infer", "evaluate_dataset", "PAPER_TABLE_I_METRICS"]

#: Table I of the paper (lambda = 2.5): base channels -> (pixelwise, center, detection, hallucinated).
PAPER_TABLE_I_METRICS = {
    16: (0.931, 0.812, 0.955, 0.0725),
    32: (0.932, 0.842, 0.944, 0.0358),
    64: (0.939, 0.847, 0.956, 0.0233),
    96: (0.936, 0.830, 0.943, 0.0362),
    130: (0.888, 0.699, 0.939, 0.0175),
}


def infer(model, clean, lam: float | None, *, seed: int, index: int = 0,
          input_binning: int = 1, tta: bool = False, rotated_model=None,
          dose_matching: tuple[float, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy input and class probabilities for one clean image.

    Parameters
    ----------
    model : torch.nn.Module
        Trained network (eval mode is set here).
    clean : array_like, shape (H, W)
        Clean image, vacuum = 1; H and W multiples of ``model.required_multiple``.
    lam : float or None
        Dose [e/pixel]; ``None`` uses ``clean`` as it is (already noisy data).
    seed, index : int
        The noise is drawn from ``numpy.random.default_rng([seed, index])``.
    input_binning : int
        Bin the noisy image this many times before the network (a model
        trained with ``TrainConfig.input_binning``, its card's
        ``input_binning``). The noise is drawn on the grid of ``clean``, so
        models with and without binning see the same electrons.
    tta : bool
        Average the probabilities with those of the 180-degree-rotated input (rotated back), as
        ``segdepth predict`` (:func:`segdepth.learn.validity.predict_checked`) reports them.
    rotated_model : torch.nn.Module, optional
        With ``tta``: the model of the 180-degree pass (same ``input_binning``), fed the same noisy
        frame turned (``predict_checked(rotated_model=...)``, ``segdepth predict --rotated-model``).
    dose_matching : (float, int), optional
        ``(target, draws)`` as a card's ``dose_matching`` (target in electrons per *model* pixel, after
        ``input_binning``): when ``lam * input_binning**2`` exceeds it, each pass is the mean over
        ``draws`` copies of its input brought down to ``target``, with the noise
        :func:`segdepth.learn.inference.predict` draws for frame ``index`` (what it reports).

    Returns
    -------
    noisy : ndarray (H, W)
        The network's input before normalisation.
    proba : ndarray (11, H / 4, W / 4)
        On the model's output grid (the label grid).
        Softmax probabilities.
    """
    if rotated_model is not None and not tta:
        raise ValueError("rotated_model needs the 180-degree pass (tta=True)")
    rotated_model = model if rotated_model is None else rotated_model
    clean = np.asarray(clean, dtype=np.float32)
    noisy = clean if lam is None else poisson_noise(clean, lam, rng=np.random.default_rng([seed, index]))
    model.eval()
    rotated_model.eval()
    base = normalise(bin_image(noisy, input_binning))
    draws = [None]
    if dose_matching is not None and lam is not None:
        from segdepth.learn.inference import DOSE_MATCHING_SEED, _dose_matching

        plan = _dose_matching({"target": dose_matching[0], "draws": dose_matching[1]},
                              lam * input_binning**2)  # what predict would do at this dose
        if plan is not None:
            draws = [(plan[0], plan[1], (DOSE_MATCHING_SEED, index, k)) for k in range(plan[2])]

    def passes(frame):  # the input of one pass, brought down to the target once per draw
        for d in draws:
            yield frame if d is None else normalise(lower_dose(frame, d[0], d[1], rng=np.random.default_rng(d[2])))

    with torch.inference_mode():
        proba = sum(torch.softmax(model(torch.from_numpy(x)[None, None]), dim=1)[0] for x in passes(base))
        proba = proba / len(draws)
        if tta:
            turned = sum(torch.softmax(rotated_model(torch.from_numpy(np.ascontiguousarray(x))[None, None]), dim=1)[0]
                         for x in passes(np.ascontiguousarray(base[::-1, ::-1])))
            proba = 0.5 * (proba + torch.flip(turned / len(draws), (1, 2)))
    return noisy, proba.numpy()


def evaluate_dataset(model, ds: xr.Dataset, *, lam: float, seed: int = 0, indices=None, n_bins: int = 10,
                     progress: bool = False, input_binning: int = 1, tta: bool = False,
                     rotated_model=None, dose_matching: tuple[float, int] | None = None) -> xr.Dataset:
    """Evaluate ``model`` on samples ``indices`` of a simulated dataset at dose ``lam``.

    Parameters
    ----------
    model : torch.nn.Module
        Trained network.
    ds : xarray.Dataset
        Simulated dataset (``docs/conventions.md``).
    lam : float
        Test dose [e/pixel in vacuum].
    seed : int
        Seed of the test noise (sample ``i`` uses ``default_rng([seed, i])``).
    indices : sequence of int, optional
        Samples to evaluate (default all).
    n_bins : int
        Bins of the reliability diagram.
    input_binning, tta, rotated_model, dose_matching : int, bool, torch.nn.Module, (float, int)
        See :func:`infer`.

    Returns
    -------
    xarray.Dataset
        ``pixelwise_accuracy``, ``center_accuracy``, ``real_atom_detection_rate``,
        ``hallucination_rate`` pooled over all pixels (scalars) and per sample
        (``*_per_sample``); ``confusion`` (true_depth, predicted_depth) counts;
        reliability ``bin_confidence``, ``bin_accuracy``, ``bin_count`` (bin) and
        ``ece``; ``column_exact`` / ``column_within_one`` / ``column_n`` over
        ``group`` (all, Ce, O, and the same on samples with O vacancies).
    """
    from tqdm.auto import tqdm

    indices = np.arange(ds.sizes["sample"]) if indices is None else np.asarray(indices, dtype=int)
    if indices.size == 0:
        raise ValueError("no samples to evaluate (indices is empty)")
    cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    hits = {name: [0, 0] for name in METRIC_NAMES}  # [numerator, denominator] pooled
    per_sample = {name: [] for name in METRIC_NAMES}
    diagrams = []
    col_pred, col_true, col_Z, col_vac, col_proba = [], [], [], [], []
    for i in tqdm(indices, desc="evaluate", disable=not progress):
        s = ds.isel(sample=int(i))
        _, proba = infer(model, s.image.values, lam, seed=seed, index=int(i), input_binning=input_binning, tta=tta,
                         rotated_model=rotated_model, dose_matching=dose_matching)
        pred = proba.argmax(axis=0)
        conf = proba.max(axis=0)
        label = s.label.values.astype(np.int64)
        for name, (num, den) in metrics.metric_counts(pred, label, s.center_mask.values).items():
            hits[name][0] += int(num)
            hits[name][1] += int(den)
            per_sample[name].append(num / den if den else np.nan)
        cm += metrics.confusion_matrix(pred, label, n_classes=N_CLASSES)
        diagrams.append(metrics.reliability_diagram(conf, pred == label, n_bins=n_bins))
        counts = metrics.column_counts(pred, s.column_x.values, s.column_y.values, s.label_x.values, s.label_y.values)
        col_pred.append(counts)
        col_proba.append(metrics.column_probabilities(proba, s.column_x.values, s.column_y.values, s.label_x.values,
                                                      s.label_y.values))
        col_true.append(s.column_count.values.astype(np.int64))
        col_Z.append(s.column_Z.values.astype(np.int64))
        col_vac.append(np.full(counts.shape, float(s.vacancy_rate) > 0 if "vacancy_rate" in s.coords else False))
    col_pred, col_true, col_Z, col_vac, col_proba = map(np.concatenate, (col_pred, col_true, col_Z, col_vac, col_proba))
    level = metrics.COUNT_SET_LEVEL
    column_cal = metrics.column_calibration(col_proba, col_true, level=level, n_bins=n_bins)

    groups, exact, within, n = [], [], [], []
    for tag, sel in (("", np.ones_like(col_vac)), ("vacancies_", col_vac)):
        acc = metrics.column_count_accuracy(np.where(sel, col_pred, -1), np.where(sel, col_true, 0), col_Z)
        for g in ("all", "Ce", "O"):
            groups.append(tag + g)
            exact.append(acc[f"exact_{g}"])
            within.append(acc[f"within_one_{g}"])
            n.append(acc[f"n_{g}"])

    diagram = metrics.ReliabilityDiagram.merge(diagrams)
    out = xr.Dataset(
        {
            **{name: ((), hits[name][0] / hits[name][1] if hits[name][1] else np.nan) for name in METRIC_NAMES},
            **{f"{name}_per_sample": ("sample", np.asarray(per_sample[name])) for name in METRIC_NAMES},
            "confusion": (("true_depth", "predicted_depth"), cm, {"long_name": "pixel counts (rows: truth)"}),
            "bin_confidence": ("bin", diagram.confidence),
            "bin_accuracy": ("bin", diagram.accuracy),
            "bin_count": ("bin", diagram.count),
            "ece": ((), diagram.ece(), {"long_name": "expected calibration error"}),
            "column_exact": ("group", np.asarray(exact, dtype=float)),
            "column_within_one": ("group", np.asarray(within, dtype=float)),
            "column_n": ("group", np.asarray(n, dtype=np.int64)),
            "column_confidence": ((), column_cal["confidence"], {
                "long_name": "mean probability of the count read at the column centres (= column_exact['all'] "
                             "if calibrated)"}),
            "column_ece": ((), column_cal["ece"], {"long_name": "expected calibration error over the columns"}),
            "column_set_coverage": ((), column_cal["set_coverage"], {
                "long_name": f"fraction of columns whose {level:.0%} count set holds the true count"}),
            "column_set_size": ((), column_cal["set_size"], {
                "long_name": f"mean number of counts in the {level:.0%} count sets", "units": "counts"}),
            "column_confusion": (
                ("true_count", "predicted_count"),
                _count_confusion(col_pred, col_true),
                {"long_name": "columns (rows: true atom count)"},
            ),
        },
        coords={
            "sample": ("sample", indices),
            "true_depth": np.arange(N_CLASSES),
            "predicted_depth": np.arange(N_CLASSES),
            "true_count": np.arange(N_CLASSES),
            "predicted_count": np.arange(N_CLASSES),
            "bin": ("bin", 0.5 * (diagram.edges[1:] + diagram.edges[:-1]), {"long_name": "confidence bin centre"}),
            "group": ("group", np.asarray(groups, dtype=object)),
        },
        attrs={"lam": float(lam), "seed": int(seed), "n_samples": int(indices.size), "tta": int(tta)},
    )
    return out


def _count_confusion(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    ok = (true > 0) & (pred >= 0)
    cm = np.zeros((11, 11), dtype=np.int64)
    np.add.at(cm, (true[ok], np.clip(pred[ok], 0, 10)), 1)
    return cm


#: Per-column groups reported by :func:`robustness` (from ``evaluate_dataset``'s ``group``).
ROBUSTNESS_GROUPS = ("all", "Ce", "O", "vacancies_O")


def robustness(models: dict, test_sets: dict, lams, *, seed: int = 1, indices: dict | None = None,
               progress: bool = False, tta: bool = False, dose_matching: dict | None = None) -> xr.Dataset:
    """Every metric of :func:`evaluate_dataset` for each model x test set x dose.

    Parameters
    ----------
    models : dict
        name -> ``(model, input_binning)``, or ``(model, input_binning, rotated_model)`` for a model whose
        180-degree pass another model makes (needs ``tta``; :func:`infer`).
    test_sets : dict
        name -> simulated dataset (for example ``in-distribution`` and ``shift``).
    lams : sequence of float
        Test doses [e/pixel in vacuum] (the dose curve).
    seed : int
        Seed of the test noise (the same noise for every model).
    indices : dict, optional
        test set name -> sample indices to use (default: all samples).
    tta : bool
        Score the mean of the plain and the 180-degree pass (:func:`infer`), what ``segdepth predict``
        reports.
    dose_matching : dict, optional
        Model name -> ``(target, draws)`` (:func:`infer`), for the models scored with dose matching.

    Returns
    -------
    xarray.Dataset
        Dims ``model``, ``test_set``, ``lam`` (and ``group``, ``true_count``,
        ``predicted_count``): the four pixel metrics, ``ece``,
        ``column_exact`` / ``column_within_one`` / ``column_n`` per group,
        the per-column confusion matrix and the column calibration of :func:`evaluate_dataset`.
    """
    lams = [float(v) for v in np.atleast_1d(lams)]
    if not lams:
        raise ValueError("lams must hold at least one dose")
    keep = list(METRIC_NAMES) + ["ece", "column_exact", "column_within_one", "column_n", "column_confusion",
                                 "column_confidence", "column_ece", "column_set_coverage", "column_set_size"]
    rows = []
    for mname, (model, binning, *rotated) in models.items():
        rotated_model = rotated[0] if rotated else None
        per_set = []
        for tname, ds in test_sets.items():
            idx = None if indices is None else indices.get(tname)
            per_lam = [
                evaluate_dataset(model, ds, lam=lam, seed=seed, indices=idx, input_binning=binning,
                                 progress=progress, tta=tta, rotated_model=rotated_model,
                                 dose_matching=(dose_matching or {}).get(mname))[keep].sel(
                    group=list(ROBUSTNESS_GROUPS))
                for lam in lams
            ]
            per_set.append(xr.concat(per_lam, dim=xr.DataArray(lams, dims="lam", attrs={"units": "e/pixel"})))
        rows.append(xr.concat(per_set, dim=xr.DataArray(list(test_sets), dims="test_set")))
    out = xr.concat(rows, dim=xr.DataArray(list(models), dims="model"))
    out["group"] = out.group.astype(str)
    out.attrs = {"seed": int(seed), "test_sets": ", ".join(test_sets), "models": ", ".join(models), "tta": int(tta)}
    return out


def dose_spread(result: xr.Dataset, *, lo: float = 0.5, hi: float = 25.0, group: str = "all") -> xr.DataArray:
    """Largest drop of the per-column exact count below its best over doses ``lo``-``hi`` [points of 1]."""
    sel = result.column_exact.sel(group=group).where((result.lam >= lo) & (result.lam <= hi), drop=True)
    return sel.max("lam") - sel.min("lam")


def robustness_table(result: xr.Dataset, lams=(1.0, 2.5, 10.0)) -> str:
    """Markdown table of :func:`robustness`: per-column exact count (all, O with vacancies), within one, ECE.

    At the reference dose (2.5) it also reads the calibration at the columns: the mean confidence there
    (compare with the exact count), the column ECE and the coverage of the 90 % count sets (with their
    mean size); result files written before these existed show ``-``.
    """
    lams = [v for v in lams if v in set(result.lam.values.tolist())]
    head = ["model", "test set"] + [f"exact, lambda {v:g}" for v in lams] + [
        "within one (2.5)", "O vac. exact (2.5)", "spread 0.5-25 (points)", "ECE (2.5)", "hallucinated (1e-2, 2.5)",
        "column confidence (2.5)", "column ECE (2.5)", "90 % set coverage / size (2.5)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = 2.5 if 2.5 in set(result.lam.values.tolist()) else float(result.lam.values[0])
    spread = dose_spread(result)
    for m in result.model.values:
        for t in result.test_set.values:
            q = result.sel(model=m, test_set=t)
            r = q.sel(lam=ref)
            cells = [str(m), str(t)] + [f"{float(q.column_exact.sel(group='all', lam=v)):.3f}" for v in lams] + [
                f"{float(r.column_within_one.sel(group='all')):.3f}",
                f"{float(r.column_exact.sel(group='vacancies_O')):.3f}",
                f"{100 * float(spread.sel(model=m, test_set=t)):.1f}",
                f"{float(r.ece):.3f}",
                f"{100 * float(r.hallucination_rate):.2f}",
                *_column_calibration_cells(r),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _column_calibration_cells(r: xr.Dataset) -> list[str]:
    if "column_ece" not in r:
        return ["-", "-", "-"]
    return [f"{float(r.column_confidence):.3f}", f"{float(r.column_ece):.3f}",
            f"{float(r.column_set_coverage):.3f} / {float(r.column_set_size):.2f}"]


def confusion_table(result: xr.Dataset, *, model: str, test_set: str, lam: float = 2.5) -> str:
    """Markdown column confusion matrix of :func:`robustness` for one model, test set and dose.

    Rows: true atoms in the column (1-10; columns of 0 atoms do not exist), each row normalised to 1
    (the fraction of those columns read as each count at the column centre); ``n`` is the row's count.
    """
    c = result.column_confusion.sel(model=model, test_set=test_set, lam=lam).values.astype(float)
    head = ["true \\ read", "n"] + [str(k) for k in range(c.shape[1])]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in range(1, c.shape[0]):
        n = c[k].sum()
        if n == 0:
            continue
        rows.append("| " + " | ".join([str(k), f"{int(n)}"] + [f"{v / n:.2f}" if v else "" for v in c[k]]) + " |")
    return "\n".join(rows) + "\n"
