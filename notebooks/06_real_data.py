# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 Real data: where the estimate applies, and atom counts per column over time (Figs. 10, 11, 12)
#
# **In:** a real image or movie (`input`; default the Pt/CeO2 movie in `data/raw/`, its raw left
# half), the default model of `segdepth predict`. **Out:** `output` (netCDF: depth, confidence and
# validity maps of every frame and of running averages of aligned frames, the drift, the checks below)
# and `columns_output` (netCDF, dims (frame, column): position, element, count probabilities, expected
# count and its spread, hidden-Markov smoothed counts), Figs. 10-12 under `figure_prefix`.
#
# The path, as for any movie a user brings:
# 1. **Calibration and dose.** The pixel size is not stored in the GIF: with `pixel_size` 0 it is
#    calibrated from the CeO2 and Pt lattice reflections (`segdepth.data.calibration`); the grey values are
#    rescaled 8-bit, so the dose is estimated under a Poisson model with unknown gain (`lam` 0).
# 2. **Depth with a validity map** (`segdepth.learn.validity.predict_checked`, what `segdepth predict` runs):
#    vacuum beyond 4 A of any lattice reads depth 0; lattices that are not CeO2 [110] (the Pt particle)
#    and pixels where a 180-degree-rotated pass disagrees by more than one atom are not valid.
# 3. **Drift** (`segdepth.data.tracking.align_frames`, scikit-image phase correlation) and **running
#    averages of `average` aligned frames** (the dose of `average` frames, no blur from the drift).
# 4. **Columns** found in the time-averaged estimate inside the valid CeO2 region, named Ce or O from the
#    CeO2 [110] motif, tracked through the movie, their counts smoothed in time by a hidden Markov model
#    (after De wael et al., PRL 124, 106105 (2020)).
#
# No ground truth exists here. The checks that need none: vacuum read as vacuum in the top
# `vacuum_band` A of every frame; single frames against the aligned running average (same depth where
# both are valid); the confidence at the particle boundary, in the interior and in vacuum. Notebook
# `benchmarks/simulated_movie.py` runs the same path on a simulated movie whose answer is known.

# %% tags=["parameters"]
input = "data/raw/ptceo2_udvd_40frames.gif"  # image or movie file
crop = "0:180,:"  # region x0:x1,y0:y1 in pixels (the raw left half of the movie)
frames = ":"  # frames to use, e.g. "0:10" (":" for all)
pixel_size = 0.0  # [A]; 0 calibrates from the lattice
phases = ["CeO2", "Pt"]  # cubic phases whose {111}, {200}, {220} reflections calibrate the pixel size
model = ""  # model file ("" for the default model of `segdepth predict`)
lam = 0.0  # dose [electrons per pixel]; 0 estimates it from the data
average = 5  # aligned frames in the running average
lattice_average = 5  # frames averaged for the lattice (validity) maps
tta = True  # the 180-degree test-time pass of the validity check
vacuum_band = 5.0  # the top of the field that is vacuum in every frame (for the vacuum check) [A]
n_shown = 4  # columns shown in Fig. 12
threads = 2  # torch threads
output = "data/results/real_data.nc"
columns_output = "data/results/real_columns.nc"
figure_prefix = "figures/"  # writes <prefix>fig10_real_depth.png, fig11_real_saliency.png, fig12_depth_over_time.png

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr
from scipy import ndimage

from segdepth.apps.moviescore import column_table, run_movie_path, write_column_table
from segdepth.apps.plotting import depth_cmap, save_figure
from segdepth.data.calibration import calibrate_pixel_size, cubic_spacings, estimate_dose
from segdepth.data.io import read_image
from segdepth.data.preprocess import normalise
from segdepth.data.store import provenance_attrs, write_netcdf_atomic
from segdepth.data.tracking import shift_frames
from segdepth.learn import metrics
from segdepth.learn.inference import load_default_model, resample
from segdepth.learn.validity import REASONS, summary, validity_fractions

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
n_frames = movie.sizes["frame"]

# %% [markdown]
# Depth, confidence and validity of every single frame, then the drift and the running averages of aligned
# frames (frame `f` averages frames `f - average + 1 .. f` moved onto frame 0, fewer at the start).

# %%
if model:
    from segdepth.learn.modelio import load_model

    net, card = load_model(model)
    rotated = None  # the model makes both passes
else:
    net, card = load_default_model()
    rotated = load_default_model(rotated=True) if tta else None  # the default's second model (segdepth predict)
# the whole path in one call (the one the simulated movie is scored with): validity-checked single frames, drift,
# aligned running averages, columns in the valid CeO2 region, tracking and hidden-Markov smoothing
path = run_movie_path(movie, net, card, lam=dose, average=average, lattice_average=lattice_average, tta=tta,
                      rotated=rotated)
single, alignment = path["prediction"], path["alignment"]
avg = path["average_prediction"] if path["average_prediction"] is not None else single
print("single frames:", summary(single))
if alignment is not None:  # frames that could not be aligned are warned about and flagged
    print(f"drift: {int(alignment.attrs['n_aligned'])} of {n_frames} frames aligned, largest "
          f"{float(np.abs(alignment.drift).max()):.2f} A")
print(f"running averages of {average} aligned frames:", summary(avg))
print(f"predicted {n_frames} frames (single and averaged) in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# The checks without ground truth. Single frames are moved onto frame 0 (nearest label pixel) to be compared
# with the running averages, which are already there: the agreement over all pixels valid in both, and over
# the averages' column pixels (depth > 0) alone, the harder test.

# %%
def on_frame0(da):
    return shift_frames(da, alignment, order=0) if alignment is not None else da


y_l = single["y"].values
band = y_l < float(movie["y"][0]) + vacuum_band
depth, conf, valid = single["depth"].values, single["confidence"].values, single["valid"].values.astype(bool)
vacuum_zero = (depth[:, band] == 0).mean(axis=(1, 2))
depth0 = on_frame0(single["depth"].astype(np.float32)).values
valid0 = on_frame0(single["valid"].astype(np.float32)).values > 0.5
both = valid0 & avg["valid"].values.astype(bool)
columns_both = both & (avg["depth"].values > 0)


def agree(mask):
    return np.array([(depth0[f][mask[f]] == avg["depth"].values[f][mask[f]]).mean() if mask[f].any() else np.nan
                     for f in range(n_frames)])


agreement, agreement_columns = agree(both), agree(columns_both)
# particle: lattice (not vacuum) in most running averages; boundary: its outer 2 A; interior: 4 A inside
label_px = float(single.attrs["label_pixel_size"])
particle = avg["crystal"].values.mean(0) >= 0.5
boundary = particle & ~ndimage.binary_erosion(particle, iterations=max(1, round(2.0 / label_px)))
interior = ndimage.binary_erosion(particle, iterations=max(1, round(4.0 / label_px)))
conf0 = on_frame0(single["confidence"]).values
conf_regions = {name: float(conf0[:, m].mean()) if m.any() else float("nan")
                for name, m in (("boundary", boundary), ("interior", interior))}
conf_regions["vacuum"] = float(conf[:, band].mean())
fractions = validity_fractions(single)
print(f"vacuum band (top {vacuum_band} A) read as depth 0: mean {vacuum_zero.mean():.3f}, worst frame "
      f"{vacuum_zero.min():.3f}")
print(f"single frame vs {average}-frame aligned average, same depth where both are valid: "
      f"{np.nanmean(agreement):.3f} (worst {np.nanmin(agreement):.3f}); on the averages' columns "
      f"{np.nanmean(agreement_columns):.3f} (worst {np.nanmin(agreement_columns):.3f})")
print("mean confidence:", {k_: round(v, 3) for k_, v in conf_regions.items()})
print("validity of the single frames:", {k_: round(v, 3) for k_, v in fractions.items()})

# %% [markdown]
# ## Columns through the movie
#
# Columns are the peaks of the expected count averaged over the aligned frames, searched only where the
# running averages are valid CeO2 [110] crystal in most frames; they are named Ce or O from the fitted
# CeO2 [110] motif ("unknown" when the lattice fit is not believed), followed through the drift, and their
# per-frame count distributions smoothed in time.

# %%
columns = path["columns"]
table = column_table(path, source=input, pixel_size=px, lam=dose, model=model or "default")
elements = {e: int((table.element == e).sum()) for e in ("Ce", "O", "unknown")}
print(f"{table.sizes['column']} columns ({elements}); lattice fit believed: "
      f"{bool(columns.attrs.get('lattice_found', 0))}")
width = (table.count_high - table.count_low + 1).where(table.inside)
print(f"90 % count sets: median {float(width.median()):.0f} counts wide "
      f"(columns valid in that frame: {float(width.where(table.valid == 1).median()):.0f}); "
      f"HMM-smoothed over the movie: median "
      f"{float((table.smoothed_count_high - table.smoothed_count_low + 1).where(table.inside).median()):.0f}")
changes = (np.diff(table.smoothed_count.values, axis=0) != 0).sum(axis=0)
print(f"columns whose smoothed count changes during the movie: {int((changes > 0).sum())}")
write_column_table(table, columns_output)

# %% [markdown]
# Fig. 11's arrays: input gradient (eq. 7) of the estimated depth's probability at the column with the highest
# mean count and at a pixel in the vacuum band, first frame, on the resampled input the model sees.

# %%
model_px = float(card["sampling"])
h_r, w_r = json.loads(single.attrs["arguments"])["resampled_shape"]
x_in = normalise(resample(movie.values[0], (h_r, w_r)))
m = net.required_multiple
x_in = np.pad(x_in, ((0, -h_r % m), (0, -w_r % m)), mode="reflect")
saliency_at = {}
if table.sizes["column"]:
    best = int(table.expected_count.mean("frame").argmax("column"))
    saliency_at["column"] = (int(np.abs(y_l - float(table.y[0, best])).argmin()),
                             int(np.abs(single["x"].values - float(table.x[0, best])).argmin()))
saliency_at["vacuum"] = (int(band.sum() // 2), single.sizes["x"] // 2)
sal = {name: metrics.saliency(net, x_in, p, int(depth[0][p]))[:h_r, :w_r] for name, p in saliency_at.items()}

keep = ["depth", "confidence", "valid", "valid_reason", "crystal", "lattice_score", "ceo2_score", "disagreement"]
out = xr.Dataset(
    {
        **{name: single[name] for name in keep},
        **{f"{name}_averaged": (("frame", "y", "x"), avg[name].values, avg[name].attrs) for name in keep},
        "image": (("frame", "image_y", "image_x"), movie.values),
        "vacuum_depth0_fraction": ("frame", vacuum_zero),
        "average_agreement": ("frame", agreement),
        "average_agreement_columns": ("frame", agreement_columns),
        "saliency": (("saliency_pixel", "model_y", "model_x"), np.stack(list(sal.values()))),
        "saliency_label_pixel": (("saliency_pixel", "axis"), np.asarray(list(saliency_at.values()))),
        "boundary": (("y", "x"), boundary.astype(np.uint8)), "interior": (("y", "x"), interior.astype(np.uint8)),
        "vacuum_band": (("y",), band.astype(np.uint8)),
    },
    coords={"image_y": movie["y"].values, "image_x": movie["x"].values, "saliency_pixel": list(sal),
            "model_y": (np.arange(h_r) + 0.5) * px * movie.sizes["y"] / h_r,
            "model_x": (np.arange(w_r) + 0.5) * px * movie.sizes["x"] / w_r},
    attrs={**provenance_attrs({"input": input, "crop": crop, "frames": frames, "pixel_size": pixel_size,
                               "phases": phases, "model": model, "lam": lam, "average": average,
                               "lattice_average": lattice_average, "tta": tta, "vacuum_band": vacuum_band}, 0),
           "pixel_size": px, "calibrated": int(calibration is not None),
           "pixel_size_uncertainty": calibration.uncertainty if calibration else 0.0,
           "calibration_peaks": json.dumps(calibration.peaks if calibration else []),
           "lam": dose, "model_pixel_size": model_px, "confidence_boundary": conf_regions["boundary"],
           "confidence_interior": conf_regions["interior"], "confidence_vacuum": conf_regions["vacuum"],
           "vacuum_depth0_fraction_mean": float(vacuum_zero.mean()),
           "vacuum_depth0_fraction_worst": float(vacuum_zero.min()),
           "average_agreement_mean": float(np.nanmean(agreement)),
           "average_agreement_columns_mean": float(np.nanmean(agreement_columns)),
           "validity_fractions": json.dumps(fractions), "summary": summary(single),
           "n_columns": int(table.sizes["column"]), "column_elements": json.dumps(elements)},
)
if alignment is not None:
    out["drift"] = alignment["drift"]
    out["aligned"] = alignment["aligned"].astype(np.uint8)
write_netcdf_atomic(out, output)

# %% [markdown]
# ## Fig. 10: a real frame, its depth estimate, its confidence and where it applies (reopened from the file)

# %%
r = xr.load_dataset(output)
cols = xr.load_dataset(columns_output)
cmap, norm = depth_cmap()
ext_i = [float(r.image_x[0]), float(r.image_x[-1]), float(r.image_y[-1]), float(r.image_y[0])]
ext_l = [float(r.x[0]), float(r.x[-1]), float(r.y[-1]), float(r.y[0])]
fig, ax = plt.subplots(1, 4, figsize=(19, 4.4))
ax[0].imshow(r.image[0], cmap="gray", extent=ext_i)
ax[0].set_title(f"frame {int(r.frame[0])}, {r.attrs['pixel_size']:.3f} A/px, {r.attrs['lam']:.2g} e/px")
colour = {"Ce": "tab:orange", "O": "tab:cyan", "unknown": "w"}
for e in ("Ce", "O", "unknown"):
    sel = cols.element == e
    if bool(sel.any()):
        ax[0].plot(cols.x.isel(frame=0)[sel], cols.y.isel(frame=0)[sel], ".", ms=3, color=colour[e], label=e)
if cols.sizes["column"]:
    ax[0].legend(fontsize=7, loc="lower right")
im = ax[1].imshow(r.depth[0], cmap=cmap, norm=norm, extent=ext_l)
ax[1].set_title("depth estimate (vacuum masked)")
fig.colorbar(im, ax=ax[1], ticks=range(11), shrink=0.8)
imc = ax[2].imshow(r.confidence[0], cmap="magma", vmin=0, vmax=1, extent=ext_l)
ax[2].set_title("confidence")
fig.colorbar(imc, ax=ax[2], shrink=0.8)
reason_cmap = plt.matplotlib.colors.ListedColormap(["tab:green", "0.85", "tab:red", "tab:purple", "k", "tab:orange",
                                                    "tab:brown"])
imr = ax[3].imshow(r.valid_reason[0], cmap=reason_cmap, vmin=-0.5, vmax=len(REASONS) - 0.5, extent=ext_l,
                   interpolation="nearest")
ax[3].set_title("where the estimate applies")
cb = fig.colorbar(imr, ax=ax[3], ticks=list(REASONS), shrink=0.8)
cb.ax.set_yticklabels([n.replace("_", " ") for n in REASONS.values()], fontsize=7)
for a in ax:
    a.set_xlabel("x [A]")
save_figure(fig, figure_prefix + "fig10_real_depth.png")

# %% [markdown]
# ## Fig. 11: input-gradient magnitude at a column and in the vacuum band

# %%
fig, ax = plt.subplots(1, len(r.saliency_pixel), figsize=(5 * len(r.saliency_pixel), 4.4), squeeze=False)
ext_m = [float(r.model_x[0]), float(r.model_x[-1]), float(r.model_y[-1]), float(r.model_y[0])]
for a, name in zip(ax[0], r.saliency_pixel.values, strict=True):
    a.imshow(r.saliency.sel(saliency_pixel=name), cmap="inferno", extent=ext_m)
    p = r.saliency_label_pixel.sel(saliency_pixel=name).values
    a.plot(float(r.x[p[1]]), float(r.y[p[0]]), "c+", ms=12)
    a.set_title(f"|gradient|, {name}")
    a.set_xlabel("x [A]")
save_figure(fig, figure_prefix + "fig11_real_saliency.png")

# %% [markdown]
# ## Fig. 12: atoms in chosen columns over time
#
# Per frame the expected count (dots; grey crosses where the validity map does not vouch for the column in that
# frame), the band of counts the network's 90 % count set spans (`count_low`-`count_high`, built with the
# probability mass calibrated for the default so that on never-used simulated shift tests it held the true count
# in 0.935-0.985 of the columns of every kind of image: README, "Count sets that keep their promise"), the
# hidden-Markov smoothed count and the count set of its posterior over all frames (same probability mass; on the
# simulated movie at this dose it held the true count in 0.973 of the columns and frames, 1.8 counts wide).
# Shown: among the columns valid in 80 % of the frames and at least one atom thick, the thickest, then those
# whose smoothed count changes most often.

# %%
if cols.sizes["column"]:
    valid_share = cols.valid.mean("frame").values
    n_change = (np.diff(cols.smoothed_count.values, axis=0) != 0).sum(axis=0)
    thick = cols.smoothed_expected_count.mean("frame").values
    pool = np.flatnonzero((valid_share >= 0.8) & (thick >= 1))
    pool = pool if pool.size else np.arange(cols.sizes["column"])
    by_thickness = pool[np.argsort(-thick[pool], kind="stable")][: max(1, n_shown // 2)]
    rest = np.setdiff1d(pool, by_thickness)
    shown = np.concatenate([by_thickness, rest[np.argsort(-n_change[rest], kind="stable")]])[:n_shown]
    fig, ax = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.6), squeeze=False, sharey=True)
    t = cols.frame.values
    for a, j in zip(ax[0], shown, strict=True):
        c = cols.isel(column=int(j))
        e = c.expected_count.values
        low = np.where(c.count_low.values >= 0, c.count_low.values, np.nan)
        high = np.where(c.count_high.values >= 0, c.count_high.values, np.nan)
        a.fill_between(t, low - 0.5, high + 0.5, color="tab:blue", alpha=0.2, step="mid",
                       label="90 % count set (this frame)")
        a.fill_between(t, c.smoothed_count_low.values - 0.5, c.smoothed_count_high.values + 0.5, color="0.3",
                       alpha=0.25, step="mid", label="90 % count set (HMM, all frames)")
        a.plot(t, e, ".", color="tab:blue", ms=4, label="expected count")
        bad = c.valid.values == 0
        a.plot(t[bad], e[bad], "x", color="0.5", ms=5, label="not valid" if bad.any() else None)
        a.step(t, c.smoothed_count.values, where="mid", color="k", label="HMM smoothed")
        a.set(xlabel="frame", title=f"column {int(j)} ({str(c.element.values)}), valid {valid_share[j]:.0%}")
    ax[0][0].set_ylabel("atoms in the column")
    ax[0][0].legend(fontsize=7)
else:
    fig, a = plt.subplots(figsize=(5, 3))
    a.text(0.5, 0.5, "no columns found in a valid CeO2 [110] region", ha="center", va="center")
    a.set_axis_off()
save_figure(fig, figure_prefix + "fig12_depth_over_time.png")
print(f"vacuum depth-0 fraction {r.attrs['vacuum_depth0_fraction_mean']:.3f} (worst frame "
      f"{r.attrs['vacuum_depth0_fraction_worst']:.3f}), single vs averaged agreement "
      f"{r.attrs['average_agreement_mean']:.3f}, confidence boundary / interior / vacuum "
      f"{r.attrs['confidence_boundary']:.3f} / {r.attrs['confidence_interior']:.3f} / {r.attrs['confidence_vacuum']:.3f}")
print(r.attrs["summary"])
print(f"done in {time.perf_counter() - start:.0f} s")
