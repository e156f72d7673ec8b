# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 Noise generalisation (Fig. 9 of the paper, and a dose-robust model)
#
# How does a model trained at one dose do on images of another dose? **In:** trained models (from
# notebook 02, e.g. with the batch driver over `lam` and `base_channels`, see the README) and the
# simulated dataset they were trained on (their test split is used). **Out:** `results` (netCDF,
# dims `model` x `test_lambda`: the paper's four metrics, the expected calibration error and the
# per-column atom-count accuracy for Ce and O) and Fig. 9:
#
# - (a) models of several sizes trained at `fig9a_train_lam`, evaluated over the test-dose grid;
# - (b) models of one size (`fig9b_base`) trained at several doses, on the same grid;
# - beyond the paper: a dose-robust model (trained on a log-uniform range of doses, `lam_range` in
#   notebook 02) drawn on both panels.
#
# The notebook resumes: pairs (model, test lambda) already in `results` are not evaluated again. It
# can also run one test dose at a time (`test_lams` a single number) under the batch driver, which
# merges the results along `test_lambda`.

# %% tags=["parameters"]
# simulated dataset: the models' training set (its test split is used; Fig. 9: data/simulated/cpu_train) or any
# other (used whole); default the shipped test split (`make test-split`: 8 fresh structures x 2 images)
data = "data/test"
models = [
    "data/models/study/base4_lam2.5.safetensors",
    "data/models/study/base8_lam2.5.safetensors",
    "segdepth/models/segdepth_base16_lam2.5.safetensors",
    "data/models/study/base4_lam0.1.safetensors",
    "data/models/study/base4_lam10.safetensors",
    "data/models/study/base8_lam0.25-25.safetensors",
]
test_lams = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0]  # test doses [e/pixel]; a number is one dose
n_test = 20  # evaluate this many test samples per dose, spread over the split (0: all of it)
seed = 1  # seed of the test noise
fig9a_train_lam = 2.5  # panel (a): models trained at this dose, one per size
fig9b_base = 4  # panel (b): models of this base width, one per training dose
robust_range = [0.25, 25.0]  # test-dose range over which the dose-robust model should stay flat
# outputs: the defaults go under */fresh/ (the committed Fig. 9 results: `make study-noise`, see the Makefile)
results = "data/results/fresh/noise_generalization.nc"
figure_prefix = "figures/fresh/"  # empty: no figure (e.g. for single-dose runs under the batch driver)

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from segdepth.learn.evaluation import evaluate_dataset
from segdepth.learn.model import count_parameters
from segdepth.learn.modelio import load_model
from segdepth.apps.plotting import save_figure
from segdepth.data.store import open_dataset, write_netcdf_atomic

ds = open_dataset(data, load=True)
data_params = json.loads(ds.attrs["parameters"])
test_lams = [float(v) for v in np.atleast_1d(test_lams)]
KEEP = ["pixelwise_accuracy", "center_accuracy", "real_atom_detection_rate", "hallucination_rate", "ece",
        "column_exact", "column_within_one", "column_n"]


def test_indices(card):
    split = card.get("split", {})
    if card.get("data_parameters") == data_params and "test_structures" in split:
        idx = np.flatnonzero(np.isin(ds.structure.values, split["test_structures"]))
    else:
        idx = np.arange(ds.sizes["sample"])
    return idx[:: max(1, idx.size // n_test)][:n_test] if n_test else idx  # spread over structures


def describe(path, model, card):
    """Per-model coordinates: size and training dose (NaN + a range for a dose-robust model)."""
    lam_range = card.get("lam_range") or [np.nan, np.nan]
    return {
        "base_channels": card["architecture"].get("segmenter", card["architecture"])["base_channels"],
        "parameters": count_parameters(model),
        "train_lambda": card.get("lam") if card.get("lam") is not None else np.nan,
        "train_lambda_min": lam_range[0],
        "train_lambda_max": lam_range[1],
        "training_minutes": card.get("training_seconds", np.nan) / 60,
        "epochs_run": card.get("epochs_run", -1),
    }


# %% [markdown]
# ## Evaluate every model at every test dose (resuming from `results`)

# %%
done = xr.load_dataset(results) if Path(results).exists() else None
# one dataset per model (dim test_lambda, the model's description as scalar coordinates)
per_model = {} if done is None else {str(m): done.sel(model=m) for m in done.model.values}


def have(name, lam):
    return (name in per_model and lam in per_model[name].test_lambda.values
            and bool(np.isfinite(per_model[name].center_accuracy.sel(test_lambda=lam))))


for path in models:
    name = Path(path).stem
    todo = [lam for lam in test_lams if not have(name, lam)]
    if not todo:
        continue
    model, card = load_model(path)
    idx = test_indices(card)
    rows = []
    for lam in todo:
        res = evaluate_dataset(model, ds, lam=lam, seed=seed, indices=idx)[KEEP]
        rows.append(res.expand_dims(test_lambda=[lam]))
        print(f"{name}: test lambda {lam:g}: center {float(res.center_accuracy):.3f}, "
              f"detection {float(res.real_atom_detection_rate):.3f}, "
              f"hallucinated {float(res.hallucination_rate):.4f}")
    new = xr.concat(rows, dim="test_lambda").assign_coords(**describe(path, model, card), n_test=idx.size)
    if name in per_model:
        old = per_model[name].drop_sel(test_lambda=[lam for lam in todo if lam in per_model[name].test_lambda])
        new = xr.concat([old, new], dim="test_lambda", coords="minimal", compat="override")
    per_model[name] = new.sortby("test_lambda")
    done = xr.concat([per_model[m].expand_dims(model=[m]) for m in per_model], dim="model", join="outer",
                     coords="all")
    done.attrs = {"data": data, "seed": seed, "lam_units": "electrons per pixel in vacuum",
                  "description": "noise generalisation: models (rows) evaluated at test doses test_lambda"}
    write_netcdf_atomic(done, results)  # after every model: a killed run keeps what it finished

r = xr.load_dataset(results)
r["test_lambda"].attrs["units"] = "e/pixel"
print(r[["center_accuracy", "real_atom_detection_rate", "hallucination_rate"]].to_dataframe().round(3))

# %% [markdown]
# ## Fig. 9: accuracy against the test dose

# %%
names = [Path(p).stem for p in models if Path(p).stem in r.model.values]
r = r.sel(model=names)
robust = [m for m in names if np.isfinite(float(r.train_lambda_min.sel(model=m)))]
panel_a = [m for m in names if float(r.train_lambda.sel(model=m)) == fig9a_train_lam]
panel_a.sort(key=lambda m: int(r.base_channels.sel(model=m)))
panel_b = [m for m in names if int(r.base_channels.sel(model=m)) == fig9b_base and m not in robust
           and np.isfinite(float(r.train_lambda.sel(model=m)))]
panel_b.sort(key=lambda m: float(r.train_lambda.sel(model=m)))
shown = [("center_accuracy", "center accuracy"), ("real_atom_detection_rate", "real-atom detection"),
         ("hallucination_rate", "hallucination rate")]


def plot_panel(axes, members, label):
    colours = plt.cm.viridis(np.linspace(0, 0.85, max(len(members), 1)))
    for colour, m in zip(colours, members):
        q = r.sel(model=m)
        for ax, (var, _) in zip(axes, shown):
            ax.plot(r.test_lambda, q[var], "o-", color=colour, ms=3, label=label(q))
    for m in robust:
        q = r.sel(model=m)
        for ax, (var, _) in zip(axes, shown):
            ax.plot(r.test_lambda, q[var], "k--", lw=1.5,
                    label=f"base {int(q.base_channels)}, dose-robust "
                          f"[{float(q.train_lambda_min):g}, {float(q.train_lambda_max):g}]")
    for ax, (_, title) in zip(axes, shown):
        ax.set_xscale("log")
        ax.set_xlabel("test lambda [e/pixel]")
        ax.set_title(title)
        ax.grid(alpha=0.3)


if figure_prefix and names:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), sharex=True)
    plot_panel(axes[0], panel_a, lambda q: f"base {int(q.base_channels)} ({float(q.parameters) / 1e6:.1f} M)")
    plot_panel(axes[1], panel_b, lambda q: f"trained at lambda = {float(q.train_lambda):g}")
    axes[0, 0].set_ylabel(f"(a) sizes, trained at lambda = {fig9a_train_lam:g}")
    axes[1, 0].set_ylabel(f"(b) base {fig9b_base}, several training doses")
    for row in axes:
        for m in (panel_a if row is axes[0] else panel_b):
            row[0].axvline(float(r.train_lambda.sel(model=m)), color="0.8", lw=0.8, zorder=0)
        row[0].legend(fontsize=7)
    save_figure(fig, figure_prefix + "fig9_noise_generalization.png")

# %% [markdown]
# ## The dose-robust model: how flat is it?
#
# Goal: center accuracy within 5 points of its best over test doses in `robust_range`. The table
# also gives each fixed-dose model's drop over the same range for comparison.

# %%
lo, hi = robust_range
inside = r.test_lambda[(r.test_lambda >= lo) & (r.test_lambda <= hi)]
rows = ["| model | trained at | best center | worst center in range | drop (points) |", "|---|---|---|---|---|"]
for m in names if inside.size else []:
    c = r.center_accuracy.sel(model=m, test_lambda=inside)
    q = r.sel(model=m)
    at = (f"[{float(q.train_lambda_min):g}, {float(q.train_lambda_max):g}]" if m in robust
          else f"{float(q.train_lambda):g}")
    rows.append(f"| {m} | {at} | {float(c.max()):.3f} | {float(c.min()):.3f} | {100 * float(c.max() - c.min()):.1f} |")
summary = f"Center accuracy over test lambda {lo:g} to {hi:g}\n\n" + "\n".join(rows) + "\n"
print(summary)
if figure_prefix and inside.size:
    Path(results).with_suffix(".md").write_text(summary)
