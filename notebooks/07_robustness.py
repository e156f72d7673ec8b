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
# # 07 Robustness: which microscope changes break a model (an ablation on the shift test)
#
# **In:** trained models (`models`). **Out:** one small simulated set per factor under
# `data_root/<factor>/` (notebook 01's generator), `results` (netCDF: every metric per factor x model
# x dose), `table` (Markdown) and a figure.
#
# The same particles (seed `seed`, the training outline families) are imaged with the paper's nominal
# lens (overfocus 1-9 nm, focal spread 15 A, Cs -9 um, C5 5 mm, no residual aberrations, no mistilt,
# an ideal detector) and then with **one factor at a time** moved to its range in the shift test
# (`segdepth.physics.generate.ABLATION_FACTORS`): overfocus beyond 9 nm, a large focal spread, Cs and C5 at the
# ends of their ranges, two-fold astigmatism, axial coma and three-fold astigmatism, specimen mistilt,
# detector blur and vacuum-level errors, frozen phonons, and all of the shift envelope at once. The drop
# of a model's per-column accuracy from `nominal` says how much that factor matters to it; a model
# trained on the randomised optics should not drop where the nominal model does.
#
# This is a sensitivity ablation (one test set per factor, no retraining): retraining one model per
# left-out factor is the stronger test and a parameter loop over notebook 02 away.

# %% tags=["parameters"]
models = [
    "segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors",
    "segdepth/models/segdepth_robust_base8_bin4.safetensors",
    "segdepth/models/segdepth_robust_wise_base8_bin4.safetensors",
    "data/models/study/segdepth_robust_wise_a0.5_base8_bin4.safetensors",
]  # models to compare (the default before issue 11, the first robust model, the default, its alpha-0.5 sibling)
factors = []  # factors of segdepth.physics.generate.ABLATION_FACTORS to run ([]: all)
preset = "cpu"  # field of the ablation sets ("cpu": 1536 -> 768 px; "tiny" for tests)
n_structures = 8  # particles per factor (rounded up to whole shards of 4)
n_defocus = 2  # images per particle
phonons = 4  # frozen-phonon configurations of the "phonons" factor
lams = [2.5, 10.0]  # test doses [electrons per pixel in vacuum]
seed = 4242  # particles and optics draws (the same for every factor)
noise_seed = 1  # test noise
tta = True  # score the mean of the plain and the 180-degree pass, as segdepth predict does (False: one pass)
workers = 2  # dask workers for the simulation (0: in-process)
data_root = "data/simulated/ablation"  # one dataset per factor
results = "data/results/ablation.nc"
table = "data/results/ablation.md"
figure = "figures/ablation.png"

# %%
import re
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from segdepth.apps.plotting import save_figure
from segdepth.data.store import open_dataset, write_netcdf_atomic
from segdepth.learn.evaluation import robustness
from segdepth.learn.modelio import load_model
from segdepth.physics.generate import ABLATION_FACTORS, PRESETS, TRAIN_OUTLINES, ablation_parameters, generate_dataset

names = list(factors) or list(ABLATION_FACTORS)
base = PRESETS[preset].with_(n_defocus=n_defocus, seed=seed, surfaces=TRAIN_OUTLINES, vacancy_max=0.2)


def slug(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


for name in names:
    generate_dataset(ablation_parameters(name, base, phonons=phonons), Path(data_root) / slug(name),
                     n_structures=n_structures, workers=workers, progress=False)

# %%
loaded = {}
for path in models:
    model, card = load_model(path)
    loaded[Path(path).stem] = (model, card.get("input_binning", 1))
test_sets = {name: open_dataset(Path(data_root) / slug(name), load=True) for name in names}
res = robustness(loaded, test_sets, lams, seed=noise_seed, tta=tta).rename(test_set="factor")
res.attrs["models"] = ", ".join(models)
res.attrs["seed"] = seed
write_netcdf_atomic(res, results)

# %% [markdown]
# Reopen the results: per-column exact counts per factor, and the change from `nominal`.

# %%
r = xr.load_dataset(results)
exact = r.column_exact.sel(group="all")
head = ["factor"] + [f"{m}, lambda {float(v):g}" for m in r.model.values for v in r.lam.values]
rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for f in r.factor.values:
    cells = [str(f)]
    for m in r.model.values:
        for v in r.lam.values:
            q = float(exact.sel(model=m, factor=f, lam=v))
            d = q - float(exact.sel(model=m, factor="nominal", lam=v)) if "nominal" in r.factor.values else 0.0
            cells.append(f"{q:.3f} ({100 * d:+.1f})")
    rows.append("| " + " | ".join(cells) + " |")
text = ("Per-column exact atom counts per ablation factor (in brackets: points against `nominal`)\n\n"
        + "\n".join(rows) + "\n")
Path(table).parent.mkdir(parents=True, exist_ok=True)
Path(table).write_text(text)
print(text)

fig, axes = plt.subplots(1, r.sizes["lam"], figsize=(7 * r.sizes["lam"], 4.5), squeeze=False)
for a, v in zip(axes[0], r.lam.values):
    for k, m in enumerate(r.model.values):
        y = exact.sel(model=m, lam=v).values
        a.barh([i + 0.4 * k for i in range(y.size)], y, height=0.4, label=str(m))
    a.set_yticks([i + 0.2 for i in range(r.sizes["factor"])], [str(f) for f in r.factor.values])
    a.set(xlabel="columns counted exactly", title=f"lambda = {float(v):g}", xlim=(0, 1))
    a.invert_yaxis()
axes[0][0].legend(fontsize=7, loc="lower right")
save_figure(fig, figure)
