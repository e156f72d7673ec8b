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
# # 06 Real data: depth over time in a low-dose movie (Figs. 10, 11, 12)
#
# **In:** a real image or movie (`input`; default the Pt/CeO2 movie in `data/raw/`, its raw left
# half), the shipped model. **Out:** `output` (netCDF: depth and confidence maps of every frame, the
# depth probabilities over time at the tracked pixels, the calibration and the checks below) and
# Figs. 10-12 under `figure_prefix`.
#
# No ground truth exists here. The checks that need none:
# - the fraction of vacuum pixels estimated as depth 0, frame by frame;
# - the agreement between the estimate from single frames and from a running average of frames
#   (`average` frames; averaging raises the dose, so a stable estimate should agree);
# - the confidence at the particle boundary, in the interior and in vacuum.
#
# The pixel size of the movie is not stored: with `pixel_size` 0 it is calibrated from the lattice
# reflections of CeO2 and Pt (`segdepth.calibration`). The grey values are rescaled 8-bit, not counts:
# the model divides each frame by its mean, so only the *dose* matters, and it is estimated under a
# Poisson model with unknown gain (`lam` 0) and only recorded.

# %% tags=["parameters"]
input = "data/raw/ptceo2_udvd_40frames.gif"  # image or movie file
crop = "0:180,:"  # region x0:x1,y0:y1 in pixels (the raw left half of the movie)
frames = ":"  # frames to use, e.g. "0:10" (":" for all)
pixel_size = 0.0  # [A]; 0 calibrates from the lattice
phases = ["CeO2", "Pt"]  # cubic phases whose {111}, {200}, {220} reflections calibrate the pixel size
model = ""  # model file ("" for the default model of `segdepth predict`, the fast binned-input one)
lam = 0.0  # dose [electrons per pixel]; 0 estimates it from the data
average = 5  # frames in the running average
tracked = [[150, 60], [104, 35], [20, 30]]  # pixels to track (y, x) [input pixels after the crop]
tracked_names = ["CeO2 interior", "particle boundary", "vacuum"]
vacuum_rows = 18  # the top rows of the frame that are vacuum (for the vacuum check) [input pixels]
threads = 2  # torch threads
output = "data/results/real_data.nc"
figure_prefix = "figures/"  # writes <prefix>fig10_real_depth.png, fig11_real_saliency.png, fig12_depth_over_time.png

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from segdepth import metrics
from segdepth.calibration import calibrate_pixel_size, cubic_spacings, estimate_dose
from segdepth.io import read_image
from segdepth.plotting import depth_cmap, save_figure
from segdepth.predict import load_default_model, predict, resample
from segdepth.preprocess import normalise
from segdepth.store import provenance_attrs, write_netcdf_atomic

torch.set_num_threads(threads)
start = time.perf_counter()
movie = read_image(input, frames=frames, crop=crop, pixel_size=pixel_size or None)
print(movie.sizes, movie.attrs)
if pixel_size:
    calibration = None
else:
    spacings = {}
    for phase in phases:
        spacings.update(cubic_spacings(phase))
    calibration = calibrate_pixel_size(movie.values, spacings=spacings)
    print("calibrated:", calibration)
    movie = read_image(input, frames=frames, crop=crop, pixel_size=calibration.pixel_size)
px = float(movie.attrs["pixel_size"])
dose = lam or estimate_dose(movie.values)
print(f"pixel size {px:.4f} A, dose {dose:.3g} e/pixel ({'given' if lam else 'estimated: Poisson, unknown gain'})")

# %%
if model:
    from segdepth.modelio import load_model

    net, card = load_model(model)
else:
    net, card = load_default_model()
with np.errstate(all="ignore"):
    single = predict(movie, net, card, lam=dose, return_probabilities=True, progress=True)
# running average of `average` frames ending at each frame (fewer at the start)
averaged = np.stack([movie.values[max(0, f - average + 1) : f + 1].mean(axis=0) for f in range(movie.sizes["frame"])])
avg = predict(movie.copy(data=averaged.astype(np.float32)), net, card, lam=dose * average)
print(f"predicted {movie.sizes['frame']} frames (single and averaged) in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# Tracked pixels and regions on the label grid (the model's output, `label_factor` model pixels each).

# %%
def to_label(yx):
    """Input pixel (y, x) after the crop -> label pixel (row, col)."""
    y = float(movie["y"][yx[0]]), float(movie["x"][yx[1]])
    return int(np.abs(single["y"].values - y[0]).argmin()), int(np.abs(single["x"].values - y[1]).argmin())


label_px = [to_label(p) for p in tracked]
vacuum = (single["y"].values < float(movie["y"][0]) + vacuum_rows * px)[:, None] * np.ones(single.sizes["x"], bool)
# particle: where the time-averaged estimate says atoms; boundary: particle pixels next to non-particle ones
mean_depth = single["depth"].values.mean(0)
particle = mean_depth >= 0.5
from scipy import ndimage

boundary = particle & ~ndimage.binary_erosion(particle, iterations=2)
interior = ndimage.binary_erosion(particle, iterations=4)

depth, conf = single["depth"].values, single["confidence"].values
vacuum_zero = (depth[:, vacuum] == 0).mean(axis=1)
agreement = (depth == avg["depth"].values).mean(axis=(1, 2))
conf_regions = {name: float(conf[:, m].mean()) if m.any() else float("nan")
                for name, m in (("boundary", boundary), ("interior", interior), ("vacuum", vacuum))}
print(f"vacuum pixels estimated as depth 0: mean {vacuum_zero.mean():.3f} (min {vacuum_zero.min():.3f}) over frames")
print(f"single-frame vs {average}-frame running average: same depth at {agreement.mean():.3f} of pixels "
      f"(min {agreement.min():.3f})")
print("mean confidence:", {k_: round(v, 3) for k_, v in conf_regions.items()})

# %% [markdown]
# Fig. 11's arrays: input gradient (eq. 7) of the estimated depth's probability at the boundary pixel and
# at the vacuum pixel, first frame, on the resampled input the model sees.

# %%
model_px = float(card["sampling"])
h_r, w_r = json.loads(single.attrs["arguments"])["resampled_shape"]
x_in = normalise(resample(movie.values[0], (h_r, w_r)))
m = net.required_multiple
x_in = np.pad(x_in, ((0, -h_r % m), (0, -w_r % m)), mode="reflect")
sal = {}
for name, p in zip(tracked_names, label_px, strict=True):
    if name in ("particle boundary", "vacuum"):
        sal[name] = metrics.saliency(net, x_in, p, int(depth[0][p]))[:h_r, :w_r]

prob_track = single["probability"].values[:, :, [p[0] for p in label_px], [p[1] for p in label_px]]
out = xr.Dataset(
    {
        "depth": single["depth"], "confidence": single["confidence"],
        "depth_averaged": avg["depth"], "confidence_averaged": avg["confidence"],
        "image": (("frame", "image_y", "image_x"), movie.values),
        "tracked_probability": (("frame", "depth_class", "tracked"), prob_track,
                                {"long_name": "depth distribution F(y) at the tracked pixels"}),
        "tracked_label_pixel": (("tracked", "axis"), np.asarray(label_px)),
        "vacuum_depth0_fraction": ("frame", vacuum_zero),
        "average_agreement": ("frame", agreement),
        "saliency": (("saliency_pixel", "model_y", "model_x"), np.stack(list(sal.values()))),
        "boundary": (("y", "x"), boundary.astype(np.uint8)), "interior": (("y", "x"), interior.astype(np.uint8)),
        "vacuum": (("y", "x"), vacuum.astype(np.uint8)),
    },
    coords={"image_y": movie["y"].values, "image_x": movie["x"].values, "tracked": tracked_names,
            "saliency_pixel": list(sal), "model_y": (np.arange(h_r) + 0.5) * px * movie.sizes["y"] / h_r,
            "model_x": (np.arange(w_r) + 0.5) * px * movie.sizes["x"] / w_r},
    attrs={**provenance_attrs({"input": input, "crop": crop, "frames": frames, "pixel_size": pixel_size,
                               "phases": phases, "model": model, "lam": lam, "average": average,
                               "tracked": tracked}, 0),
           "pixel_size": px, "calibrated": int(calibration is not None),
           "pixel_size_uncertainty": calibration.uncertainty if calibration else 0.0,
           "calibration_peaks": json.dumps(calibration.peaks if calibration else []),
           "lam": dose, "model_pixel_size": model_px, "confidence_boundary": conf_regions["boundary"],
           "confidence_interior": conf_regions["interior"], "confidence_vacuum": conf_regions["vacuum"],
           "vacuum_depth0_fraction_mean": float(vacuum_zero.mean()),
           "average_agreement_mean": float(agreement.mean())},
)
write_netcdf_atomic(out, output)

# %% [markdown]
# ## Fig. 10: a real frame, its depth estimate, its confidence (reopened from the file)

# %%
r = xr.load_dataset(output)
cmap, norm = depth_cmap()
ext_i = [float(r.image_x[0]), float(r.image_x[-1]), float(r.image_y[-1]), float(r.image_y[0])]
ext_l = [float(r.x[0]), float(r.x[-1]), float(r.y[-1]), float(r.y[0])]
fig, ax = plt.subplots(1, 3, figsize=(14, 4.4))
ax[0].imshow(r.image[0], cmap="gray", extent=ext_i)
ax[0].set_title(f"frame {int(r.frame[0])}, {r.attrs['pixel_size']:.3f} A/px")
for (name, p) in zip(r.tracked.values, r.tracked_label_pixel.values, strict=True):
    ax[0].plot(float(r.x[p[1]]), float(r.y[p[0]]), "+", ms=12, label=str(name))
ax[0].legend(fontsize=7)
im = ax[1].imshow(r.depth[0], cmap=cmap, norm=norm, extent=ext_l)
ax[1].set_title("depth estimate")
fig.colorbar(im, ax=ax[1], ticks=range(11), shrink=0.8)
imc = ax[2].imshow(r.confidence[0], cmap="magma", vmin=0, vmax=1, extent=ext_l)
ax[2].set_title("confidence")
fig.colorbar(imc, ax=ax[2], shrink=0.8)
for a in ax:
    a.set_xlabel("x [A]")
save_figure(fig, figure_prefix + "fig10_real_depth.png")

# %% [markdown]
# ## Fig. 11: input-gradient magnitude at the boundary pixel and the vacuum pixel

# %%
fig, ax = plt.subplots(1, len(r.saliency_pixel), figsize=(5 * len(r.saliency_pixel), 4.4), squeeze=False)
ext_m = [float(r.model_x[0]), float(r.model_x[-1]), float(r.model_y[-1]), float(r.model_y[0])]
for a, name in zip(ax[0], r.saliency_pixel.values, strict=True):
    a.imshow(r.saliency.sel(saliency_pixel=name), cmap="inferno", extent=ext_m)
    p = r.tracked_label_pixel.sel(tracked=name).values
    a.plot(float(r.x[p[1]]), float(r.y[p[0]]), "c+", ms=12)
    a.set_title(f"|gradient|, {name}")
    a.set_xlabel("x [A]")
save_figure(fig, figure_prefix + "fig11_real_saliency.png")

# %% [markdown]
# ## Fig. 12: probability of each depth over time at the tracked pixels

# %%
n_t = r.sizes["tracked"]
fig, ax = plt.subplots(1, n_t, figsize=(5 * n_t, 4), squeeze=False)
for a, name in zip(ax[0], r.tracked.values, strict=True):
    im = a.imshow(r.tracked_probability.sel(tracked=name).T, aspect="auto", origin="lower", vmin=0, vmax=1,
                  cmap="viridis", extent=[float(r.frame[0]) - 0.5, float(r.frame[-1]) + 0.5, -0.5, 10.5])
    a.set(xlabel="frame", ylabel="atoms in the column", title=str(name))
fig.colorbar(im, ax=ax[0].tolist(), shrink=0.8, label="probability")
save_figure(fig, figure_prefix + "fig12_depth_over_time.png")
print(f"vacuum depth-0 fraction {r.attrs['vacuum_depth0_fraction_mean']:.3f}, single vs averaged agreement "
      f"{r.attrs['average_agreement_mean']:.3f}, confidence boundary / interior / vacuum "
      f"{r.attrs['confidence_boundary']:.3f} / {r.attrs['confidence_interior']:.3f} / {r.attrs['confidence_vacuum']:.3f}")
