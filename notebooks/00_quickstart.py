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
# # 00 Quickstart: one simulated particle, noise at your dose, depth and confidence
#
# **In:** nothing but parameters and the shipped default model of `segdepth predict`
# (`segdepth/models/segdepth_robust_wise_base8_bin4.safetensors`; no data generation, no training). **Out:** `output`
# (netCDF: clean and noisy image, true depth,
# estimated depth, confidence) and `figure` (estimate and confidence beside the truth).
#
# 1. Build one small CeO2 particle seen along [110] (`segdepth.physics.structures`), a 27 A field.
# 2. Simulate its HRTEM image by multislice at the paper's settings (`segdepth.physics.simulation`, abTEM),
#    binned to the paper's 0.053 A pixels; vacuum = 1. (`predict` bins it 4x further for the fast
#    model, which was trained on 0.212 A pixels, the label grid.)
# 3. Add Poisson noise `Poisson(lambda c) / lambda`: `lam` is the dose in electrons per pixel of vacuum.
#    Try 0.5, 2.5 (the model's training dose) and 20.
# 4. Estimate the number of atoms in every column (`segdepth.learn.inference.predict`) and the confidence
#    (probability of the estimate, eq. 5 of the paper).
#
# Then: notebook 01 simulates a training set, 02 trains, 03 evaluates, 06 applies the model to a real movie.

# %% tags=["parameters"]
lam = 2.5  # dose [electrons per pixel in vacuum]
surface = "sawtooth"  # "flat", "sawtooth" or "stepped" (1-10) surface
thickness = 7  # atoms per column in the bulk (1-10)
overfocus = 50.0  # [A] (the paper's defocus 1-9 nm is 10-90 A)
seed = 0  # seed of the structure and of the noise
threads = 1  # torch threads (1 keeps it at about a minute on one core)
gpts = 1536  # simulation points per side (1536: a 40.7 A field; 1024: 27 A, faster, a smaller particle)
output = "data/results/quickstart.nc"  # netCDF with the arrays below
figure = "figures/quickstart.png"

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from segdepth.apps.plotting import depth_cmap, save_figure
from segdepth.data.calibration import CalibrationError, calibrate_pixel_size
from segdepth.data.store import write_netcdf_atomic
from segdepth.learn.inference import load_default_model, predict
from segdepth.physics.labels import make_label_maps
from segdepth.physics.noise import poisson_noise
from segdepth.physics.simulation import PAPER_SAMPLING, simulate_images
from segdepth.physics.structures import ParticleSpec, build_particle

torch.set_num_threads(threads)
start = time.perf_counter()
rng = np.random.default_rng(seed)
binning = 2  # simulated at the paper's 0.0265 A, binned to the model's 0.053 A
extent = gpts * PAPER_SAMPLING
structure = build_particle(ParticleSpec(extent=(extent, extent), surface=surface, thickness=thickness), rng=rng)
print(f"{structure.n_columns} columns, {len(structure.atoms)} atoms, field {extent:.1f} A")

# %%
clean = simulate_images(structure, [overfocus], gpts=gpts, binning=binning)[0]
pixel_size = PAPER_SAMPLING * binning
noisy = poisson_noise(clean, lam, rng=rng)
print(f"simulated {clean.shape} px at {pixel_size} A in {time.perf_counter() - start:.0f} s")

# %%
model, card = load_default_model()
image = xr.DataArray(noisy[None], dims=("frame", "y", "x"), attrs={"pixel_size": pixel_size})
estimate = predict(image, model, card, lam=lam)
n_label = estimate.sizes["y"]
truth = make_label_maps(structure.column_x, structure.column_y, structure.column_Z, structure.column_count,
                        shape=(n_label, n_label), pixel_size=estimate.attrs["label_pixel_size"])["depth"]
depth, confidence = estimate["depth"].values[0], estimate["confidence"].values[0]
atoms, vacuum = truth > 0, truth == 0
print(f"atom pixels estimated as atoms: {np.mean(depth[atoms] > 0):.3f}; exact depth: {np.mean(depth[atoms] == truth[atoms]):.3f}; "
      f"vacuum pixels estimated as vacuum: {np.mean(depth[vacuum] == 0):.3f}")

# %% [markdown]
# The pixel size of a real image is often unknown; `segdepth.data.calibration` measures it from the lattice
# reflections. On this simulated image it should find the 0.053 A it was simulated at.

# %%
try:
    cal = calibrate_pixel_size(noisy)
    print("calibrated pixel size:", cal)
    calibrated, calibrated_sigma = cal.pixel_size, cal.uncertainty
except CalibrationError as err:
    print(err)
    calibrated = calibrated_sigma = float("nan")

ds = xr.Dataset(
    {
        "clean": (("y", "x"), clean), "noisy": (("y", "x"), noisy),
        "depth_true": (("label_y", "label_x"), truth), "depth": (("label_y", "label_x"), depth),
        "confidence": (("label_y", "label_x"), confidence),
    },
    coords={"x": (np.arange(clean.shape[1]) + 0.5) * pixel_size,
            "y": (np.arange(clean.shape[0]) + 0.5) * pixel_size,
            "label_x": estimate["x"].values, "label_y": estimate["y"].values},
    attrs={"lam": lam, "surface": surface, "thickness": thickness, "overfocus": overfocus, "seed": seed,
           "pixel_size": pixel_size, "calibrated_pixel_size": calibrated,
           "calibrated_pixel_size_uncertainty": calibrated_sigma,
           "seconds": time.perf_counter() - start},
)
write_netcdf_atomic(ds, output)

# %% [markdown]
# ## The estimate and its confidence beside the truth (reopened from the file)

# %%
q = xr.load_dataset(output)
cmap, norm = depth_cmap()
ext = [0, clean.shape[1] * pixel_size, clean.shape[0] * pixel_size, 0]
fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))
ax[0].imshow(q.noisy, cmap="gray", extent=ext, vmin=np.percentile(q.noisy, 0.5), vmax=np.percentile(q.noisy, 99.5))
ax[0].set_title(f"noisy input, lambda = {q.attrs['lam']:g}")
ax[1].imshow(q.depth_true, cmap=cmap, norm=norm, extent=ext)
ax[1].set_title("truth (atoms per column)")
im = ax[2].imshow(q.depth, cmap=cmap, norm=norm, extent=ext)
ax[2].set_title("estimate")
fig.colorbar(im, ax=ax[2], ticks=range(11), shrink=0.8)
imc = ax[3].imshow(q.confidence, cmap="magma", vmin=0, vmax=1, extent=ext)
ax[3].set_title("confidence")
fig.colorbar(imc, ax=ax[3], shrink=0.8)
for a in ax:
    a.set_xlabel("x [A]")
save_figure(fig, figure)
print(f"whole notebook: {time.perf_counter() - start:.0f} s")
