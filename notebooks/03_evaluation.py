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
# # 03 Evaluation on simulated data: Table I, Figs. 1, 6, 7, 8
#
# **In:** trained models (`models`, from notebook 02) and a simulated dataset (`data`). When the
# dataset is the one a model was trained on, only its test split (structures never seen in training
# or validation, recorded in the model card) is used; any other dataset is used whole.
# **Out:** `results` (netCDF: metrics per model, confusion matrices, reliability diagrams, per-column
# count accuracy), `examples` (netCDF: the arrays behind Figs. 1 and 8), `table` (Markdown Table I
# beside the paper's numbers) and the figures.

# %% tags=["parameters"]
# simulated dataset: default the shipped test split (`make test-split`: 8 fresh structures x 2 images, used whole);
# Table I: the training set data/simulated/cpu_train (its test split)
data = "data/test"
models = ["segdepth/models/segdepth_base16_lam2.5.safetensors"]  # one per row of Table I
lam = 2.5  # test dose [electrons per pixel in vacuum]
n_test = 0  # evaluate at most this many samples (0: all)
seed = 1  # seed of the test noise
saliency_lams = [0.25, 1.0, 2.5, 10.0, 40.0]  # doses of Fig. 8(c)
example = 0  # which evaluated sample Figs. 1 and 8 show
# outputs: the defaults go under */fresh/ (the committed results are made by `make evaluate`, see the Makefile)
results = "data/results/fresh/evaluation_lam2.5.nc"
examples = "data/results/fresh/evaluation_examples_lam2.5.nc"
table = "data/results/fresh/table1_lam2.5.md"
figure_prefix = "figures/fresh/"  # figures are written as <prefix>fig1_depth_confidence.png, ...
shift_data = []  # further test sets (e.g. ["data/simulated/shift_test"]) for the robustness table ([]: none)
dose_lams = [2.5]  # doses of the dose curve of the robustness table [electrons per pixel in vacuum]
robustness_results = "data/results/fresh/robustness.nc"  # every metric per model x test set x dose
robustness_table = "data/results/fresh/robustness.md"
record_in_card = False  # write the robustness figures of the first model (and its envelope) into its model card
tta = False  # score the mean of the plain and the 180-degree pass, what `segdepth predict` reports (False: one pass)
# model path -> another model that makes its 180-degree pass (needs tta): an extra row "A+B" of the robustness table,
# what `segdepth predict` reports for the default since 2026-12-05 ({DEFAULT_MODEL: DEFAULT_ROTATED_MODEL})
rotated_models = {}

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

from segdepth.learn import metrics
from segdepth.learn.evaluation import PAPER_TABLE_I_METRICS, evaluate_dataset, infer, robustness
from segdepth.learn.evaluation import confusion_table
from segdepth.learn.evaluation import robustness_table as format_robustness
from segdepth.learn.model import count_parameters
from segdepth.learn.modelio import load_model
from segdepth.apps.plotting import depth_cmap, save_figure
from segdepth.data.preprocess import bin_image, normalise
from segdepth.data.store import open_dataset, write_netcdf_atomic

ds = open_dataset(data, load=True)
data_params = json.loads(ds.attrs["parameters"])


def test_indices(card):
    split = card.get("split", {})
    if card.get("data_parameters") == data_params and "test_structures" in split:
        idx = np.flatnonzero(np.isin(ds.structure.values, split["test_structures"]))
        print(f"test split of the training data: {idx.size} samples")
    else:
        idx = np.arange(ds.sizes["sample"])
        print(f"independent dataset: all {idx.size} samples")
    return idx[:n_test] if n_test else idx


# %%
for first in rotated_models:  # refused before anything is computed
    if first not in models:
        raise ValueError(f"rotated_models names {first}, which is not in models")
    if not tta or not shift_data:
        raise ValueError("rotated_models needs tta = True and shift_data (it adds rows to the robustness table)")
per_model, cards, loaded = [], [], []
for path in models:
    model, card = load_model(path)
    idx = test_indices(card)
    res = evaluate_dataset(model, ds, lam=lam, seed=seed, indices=idx, progress=True,
                           input_binning=card.get("input_binning", 1), tta=tta).drop_vars("sample")
    res = res.drop_vars([v for v in res.data_vars if v.endswith("_per_sample")])
    res = res.expand_dims(model=[Path(path).stem])
    res["base_channels"] = ("model", [card["architecture"]["base_channels"]])
    res["parameters"] = ("model", [count_parameters(model)])
    res["train_lam"] = ("model", [card.get("dataset_lam", card.get("lam")) or np.nan])  # per dataset pixel
    per_model.append(res)
    cards.append(card)
    loaded.append((model, idx, card.get("input_binning", 1)))
out = xr.concat(per_model, dim="model")
out.attrs = {"data": data, "data_parameters": json.dumps(data_params), "lam": lam, "seed": seed, "tta": int(tta),
             "model_cards": json.dumps(cards)}
write_netcdf_atomic(out, results)

# %% [markdown]
# Arrays for Figs. 1 and 8 (first model): one test sample's noisy input, truth, estimate and
# confidence; input-gradient magnitudes (eq. 7) for a column pixel and a background pixel, and for
# the column pixel across doses.

# %%
model, idx, binning = loaded[0]
i = int(idx[min(example, idx.size - 1)])
s = ds.isel(sample=i)
noisy, proba = infer(model, s.image.values, lam, seed=seed, index=i, input_binning=binning)
pred = proba.argmax(0)
label = s.label.values
# a column pixel: the centre of the thickest column of the sample; a background pixel: vacuum
# a few label pixels outside the particle
cnt = s.column_count.values.astype(np.int64)  # uint8 would wrap the -1 below
c = int(np.nanargmax(np.where(cnt > 0, cnt, -1)))
col_px = (int(np.abs(s.label_y.values - s.column_y.values[c]).argmin()),
          int(np.abs(s.label_x.values - s.column_x.values[c]).argmin()))
gy, gx = np.meshgrid(s.label_y.values, s.label_x.values, indexing="ij")
present = cnt > 0
d2 = np.min((gx[..., None] - s.column_x.values[present]) ** 2 + (gy[..., None] - s.column_y.values[present]) ** 2,
            axis=-1)
bg = np.argwhere(d2 > 3.0**2)  # vacuum: more than 3 A from every column
bg_px = tuple(int(v) for v in bg[np.linalg.norm(bg - np.array(col_px), axis=1).argmin()])


# Fig. 8 shows +-6 A around the column pixel: the maps are kept on a +-8 A window (the whole frame
# would be ~15 MB of gradients that no figure shows)
window = {d: np.abs(s[d].values - float(s[f"label_{d}"][col_px[k]])) <= 8.0 for k, d in enumerate(("y", "x"))}


def saliency_map(noisy_image, pixel, depth):
    """eq. 7 w.r.t. the frame's pixels (a binned model's gradient is shared by the pixels of a bin), on the window."""
    g = metrics.saliency(model, normalise(bin_image(noisy_image, binning)), pixel, depth)
    full = np.kron(g, np.ones((binning, binning), np.float32)) / binning**2
    return full[np.ix_(window["y"], window["x"])]


sal_col = saliency_map(noisy, col_px, int(pred[col_px]))
sal_bg = saliency_map(noisy, bg_px, int(pred[bg_px]))
sal_lam = []
for j, lam_j in enumerate(saliency_lams):
    noisy_j, proba_j = infer(model, s.image.values, lam_j, seed=seed, index=i, input_binning=binning)
    sal_lam.append(saliency_map(noisy_j, col_px, int(proba_j.argmax(0)[col_px])))
ex = xr.Dataset(
    {
        "noisy": (("y", "x"), noisy), "clean": (("y", "x"), s.image.values),
        "label": (("label_y", "label_x"), label), "depth_true": (("label_y", "label_x"), s.depth.values),
        "estimate": (("label_y", "label_x"), pred.astype(np.uint8)),
        "confidence": (("label_y", "label_x"), proba.max(0)),
        "saliency_column": (("saliency_y", "saliency_x"), sal_col),
        "saliency_background": (("saliency_y", "saliency_x"), sal_bg),
        "saliency_lam": (("lam", "saliency_y", "saliency_x"), np.stack(sal_lam)),
    },
    coords={"x": s.x.values, "y": s.y.values, "label_x": s.label_x.values, "label_y": s.label_y.values,
            "saliency_x": ("saliency_x", s.x.values[window["x"]], {"units": "A"}),
            "saliency_y": ("saliency_y", s.y.values[window["y"]], {"units": "A"}),
            "lam": ("lam", np.asarray(saliency_lams, dtype=float), {"units": "e/pixel"})},
    attrs={"sample": i, "column_pixel": list(col_px), "background_pixel": list(bg_px), "test_lam": lam,
           "true_count_at_column": int(cnt[c])},
)
write_netcdf_atomic(ex, examples)

# %% [markdown]
# ## Table I (reopened from the results file)

# %%
r = xr.load_dataset(results)
groups = list(r.group.values)
rows = ["| model | base | params (1e6) | pixelwise | center | detection | hallucinated (1e-2) | columns exact (Ce / O) "
        "| columns within one (Ce / O) |", "|---|---|---|---|---|---|---|---|---|"]
for m in r.model.values:
    q = r.sel(model=m)
    ce, o = groups.index("Ce"), groups.index("O")
    rows.append(
        f"| {m} | {int(q.base_channels)} | {float(q.parameters) / 1e6:.2f} | {float(q.pixelwise_accuracy):.3f} "
        f"| {float(q.center_accuracy):.3f} | {float(q.real_atom_detection_rate):.3f} "
        f"| {100 * float(q.hallucination_rate):.2f} | {float(q.column_exact[ce]):.3f} / {float(q.column_exact[o]):.3f} "
        f"| {float(q.column_within_one[ce]):.3f} / {float(q.column_within_one[o]):.3f} |")
for b, (pw, ca, det, hal) in PAPER_TABLE_I_METRICS.items():
    rows.append(f"| paper | {b} | | {pw:.3f} | {ca:.3f} | {det:.3f} | {100 * hal:.2f} | | |")
text = f"Table I at lambda = {lam} on {r.attrs['data']}, ours vs the paper's\n\n" + "\n".join(rows) + "\n"
Path(table).parent.mkdir(parents=True, exist_ok=True)
Path(table).write_text(text)
print(text)
print(r[["column_exact", "column_within_one", "column_n"]].to_dataframe())

# %% [markdown]
# ## Fig. 1: depth estimate and confidence beside the truth

# %%
e = xr.load_dataset(examples)
cmap, norm = depth_cmap()
fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
ext_img = [float(e.x[0]), float(e.x[-1]), float(e.y[-1]), float(e.y[0])]
ext_lab = [float(e.label_x[0]), float(e.label_x[-1]), float(e.label_y[-1]), float(e.label_y[0])]
lo, hi = np.percentile(e.noisy, [0.5, 99.5])
ax[0].imshow(e.noisy, cmap="gray", vmin=lo, vmax=hi, extent=ext_img)
ax[0].set_title(f"noisy input, lambda = {e.attrs['test_lam']:g}")
ax[1].imshow(e.label, cmap=cmap, norm=norm, extent=ext_lab)
ax[1].set_title("ground truth (ring-smoothed label)")
im = ax[2].imshow(e.estimate, cmap=cmap, norm=norm, extent=ext_lab)
ax[2].set_title("depth estimate")
fig.colorbar(im, ax=ax[2], ticks=range(11), shrink=0.8)
imc = ax[3].imshow(e.confidence, cmap="magma", vmin=0, vmax=1, extent=ext_lab)
ax[3].set_title("confidence (max probability)")
fig.colorbar(imc, ax=ax[3], shrink=0.8)
for a in ax:
    a.set_xlabel("x [A]")
save_figure(fig, figure_prefix + "fig1_depth_confidence.png")

# %% [markdown]
# ## Fig. 6: confusion matrix (pixels; rows = true depth, row-normalised)

# %%
cm = r.confusion.isel(model=0).values
fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
sns.heatmap(metrics.normalise_confusion(cm), annot=True, fmt=".2f", cmap="Blues", ax=axes[0], cbar=False,
            annot_kws={"size": 7})
axes[0].set(xlabel="estimated depth", ylabel="true depth", title="pixels (ring-smoothed labels)")
ccm = r.column_confusion.isel(model=0).values[1:, :].astype(float)
with np.errstate(invalid="ignore"):
    ccm = ccm / ccm.sum(axis=1, keepdims=True)
sns.heatmap(ccm, annot=True, fmt=".2f", cmap="Greens", ax=axes[1], cbar=False,
            annot_kws={"size": 7}, yticklabels=range(1, 11))
axes[1].set(xlabel="estimated atoms at the column centre", ylabel="true atoms in the column", title="columns")
save_figure(fig, figure_prefix + "fig6_confusion.png")

# %% [markdown]
# ## Fig. 7: calibration (reliability diagram)

# %%
fig, ax = plt.subplots(figsize=(5, 5))
for m in r.model.values:
    q = r.sel(model=m)
    keep = q.bin_count.values > 0
    ax.plot(q.bin.values[keep], q.bin_accuracy.values[keep], "o-", label=f"{m} (ECE {float(q.ece):.3f})")
ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"lambda = {lam}")
ax.legend(fontsize=7)
save_figure(fig, figure_prefix + "fig7_calibration.png")

# %% [markdown]
# ## Fig. 8: input-gradient magnitude (eq. 7)

# %%
n = e.sizes["lam"]
fig, ax = plt.subplots(1, 2 + n, figsize=(4 * (2 + n), 4))
col_px, bg_px = e.attrs["column_pixel"], e.attrs["background_pixel"]
ext_sal = [float(e.saliency_x[0]), float(e.saliency_x[-1]), float(e.saliency_y[-1]), float(e.saliency_y[0])]
for a, name, px, title in ((ax[0], "saliency_column", col_px, "column pixel"),
                           (ax[1], "saliency_background", bg_px, "background pixel")):
    a.imshow(e[name], cmap="inferno", extent=ext_sal)
    a.plot(float(e.label_x[px[1]]), float(e.label_y[px[0]]), "c+", ms=12)
    a.set_title(f"|gradient|, {title}")
for k in range(n):
    ax[2 + k].imshow(e.saliency_lam[k], cmap="inferno", extent=ext_sal)
    ax[2 + k].plot(float(e.label_x[col_px[1]]), float(e.label_y[col_px[0]]), "c+", ms=12)
    ax[2 + k].set_title(f"column pixel, lambda = {float(e.lam[k]):g}")
cx, cy = float(e.label_x[col_px[1]]), float(e.label_y[col_px[0]])
for a in ax:
    a.set_xlabel("x [A]")
    a.set_xlim(cx - 6, cx + 6)
    a.set_ylim(cy + 6, cy - 6)
save_figure(fig, figure_prefix + "fig8_saliency.png")

# %% [markdown]
# ## Robustness: in-distribution beside shifted test sets, over a dose curve
#
# With `shift_data`, every model is scored on `data` (its test split, as above: the first model's
# split when several share the dataset) and on each dataset of `shift_data` used whole (for example
# the shift test of notebook 01's `shift` preset: another seed, optics away from the training centre,
# an outline family held out of training), at every dose of `dose_lams`, with the same noise for every
# model. Per-column exact counts, within one atom, O columns of structures with vacancies, ECE and
# hallucination are written to `robustness_results` and `robustness_table`.

# %%
if shift_data:
    test_sets = {"in-distribution": ds, **{Path(p).name: open_dataset(p, load=True) for p in shift_data}}
    scored = {Path(p).stem: (m, b) for p, (m, _, b) in zip(models, loaded)}
    for first, second in rotated_models.items():
        m, _, b = loaded[models.index(first)]
        second_model, second_card = load_model(second)
        if second_card.get("input_binning", 1) != b:
            raise ValueError(f"rotated_models: {second} bins its input {second_card.get('input_binning', 1)}x, "
                             f"{first} {b}x")
        scored[f"{Path(first).stem}+{Path(second).stem}"] = (m, b, second_model.eval())
    rob = robustness(scored, test_sets, dose_lams, seed=seed, indices={"in-distribution": loaded[0][1]},
                     progress=True, tta=tta)
    rob.attrs["data"] = data
    rob.attrs["shift_data"] = json.dumps(list(shift_data))
    write_netcdf_atomic(rob, robustness_results)
    rob = xr.load_dataset(robustness_results)
    text = (f"Per-column exact atom counts, in-distribution ({data}; the test split where a model was trained "
            f"on it) and shifted ({', '.join(shift_data)}); spread: largest drop below the best over lambda "
            f"0.5-25; " + ("mean of the plain and the 180-degree pass (as segdepth predict)" if tta else
                           "one network pass") + "\n\n" + format_robustness(rob))
    lam_c = 2.5 if 2.5 in dose_lams else float(dose_lams[0])
    for t in rob.test_set.values:
        for m in rob.model.values:
            text += (f"\nColumn confusion, {m} on {t}, lambda {lam_c:g} (rows: true atoms, fraction read as "
                     f"each count)\n\n" + confusion_table(rob, model=str(m), test_set=str(t), lam=lam_c))
    Path(robustness_table).write_text(text)
    print(text)
    fig, axes = plt.subplots(1, rob.sizes["test_set"], figsize=(5 * rob.sizes["test_set"], 4), squeeze=False)
    for a, t in zip(axes[0], rob.test_set.values):
        for m in rob.model.values:
            q = rob.sel(model=m, test_set=t)
            a.semilogx(q.lam, q.column_exact.sel(group="all"), "o-", label=f"{m}")
        a.set(xlabel="dose lambda [e/pixel]", ylabel="columns counted exactly", title=str(t), ylim=(0, 1))
        a.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, figure_prefix + "robustness_dose_curve.png")

# %% [markdown]
# With `record_in_card`, the first model's card gets the envelope it was trained on (the randomised
# ranges a user may trust) and these figures.

# %%
if shift_data and record_in_card:
    from segdepth.learn.modelio import update_card

    card0, m0 = cards[0], Path(models[0]).stem
    dp = card0.get("data_parameters", {})
    envelope = {k: dp.get(k) for k in ("optics", "surfaces", "thickness_range", "wedge_range", "vacancy_max",
                                       "surface_vacancy_max", "surface_short_max", "adatoms_max", "microscope",
                                       "phonons", "phonon_probability")}
    envelope["dose_range"] = card0.get("dataset_lam_range") or [card0.get("dataset_lam")]
    envelope["pixel_size"] = dp.get("sampling", 0) * dp.get("binning", 0)
    figures = {}
    for t in rob.test_set.values:
        q = rob.sel(model=m0, test_set=t)
        figures[str(t)] = {
            f"lambda_{float(v):g}": {
                "column_exact": float(q.column_exact.sel(group="all", lam=v)),
                "column_within_one": float(q.column_within_one.sel(group="all", lam=v)),
                "column_exact_O_vacancies": float(q.column_exact.sel(group="vacancies_O", lam=v)),
                "ece": float(q.ece.sel(lam=v)),
                "hallucination_rate": float(q.hallucination_rate.sel(lam=v)),
            } for v in rob.lam.values}
    update_card(models[0], {"envelope": envelope, "robustness": {
        "data": data, "shift_data": list(shift_data), "noise_seed": seed, "figures": figures,
        "table": robustness_table}})
    print("recorded in", models[0])
