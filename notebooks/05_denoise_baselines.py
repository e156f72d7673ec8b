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
# # 05 Denoise, then segment? Baselines of Table II
#
# Is it better to estimate depth from the noisy image directly, or to denoise it first? As in the
# paper (Table II), three models of the same segmentation size, trained on the same data at the
# same dose and tested on the same test split:
#
# - **direct**: the segmentation UNet on noisy images (notebook 02, `direct_model`; or, with `direct_model`
#   empty, trained here with the same recipe on the same split);
# - **sequential**: a supervised denoiser (UNet, MSE against the clean image, fresh noise every
#   batch) is trained first, frozen, and a segmentation UNet is trained on its outputs;
# - **joint**: denoiser and segmentation UNet trained together on cross-entropy +
#   `denoise_weight` x MSE.
#
# **Out:** the trained denoiser, sequential and joint models (safetensors + cards), `results`
# (netCDF: metrics per model, denoiser MSE/PSNR), `table` (Markdown, beside the paper's numbers)
# and a figure of one test image through each pipeline. Training resumes from `checkpoint_root`.

# %% tags=["parameters"]
# simulated dataset (notebook 01): default the shipped test split (`make test-split`, 8 structures); Table II:
# data/simulated/cpu_train with direct_model data/models/study/base4_lam2.5.safetensors (`make study-denoise`)
data = "data/test"
direct_model = ""  # direct model from notebook 02 trained on this split, same size and dose ("": train it here)
base_channels = 4  # segmentation UNet width (the direct model's)
head_channels = [8, 16]  # its two extra downsampling blocks ([]: the paper-sized head)
denoiser_base = 4  # denoiser UNet width at full resolution
denoiser_scales = 4  # denoiser downsamplings
lam = 2.5  # training and test dose [e/pixel]
denoise_weight = 1.0  # weight of the MSE in the joint loss
epochs = 10  # maximum epochs of each training run
max_minutes = 0.0  # wall-clock budget of each training run [min] (0: none)
crop = 256  # training crop [image pixels]
batch_size = 4
steps_per_epoch = 0  # 0: one pass over the training split
lr = 1e-3
class_balance = 0.5
focus = 0.7
split = [0.8, 0.1, 0.1]  # must be the direct model's split (notebook 02 defaults)
split_seed = 0
seed = 0
num_threads = 2
# outputs: the defaults go under */fresh/ (the committed study models and Table II are not overwritten)
checkpoint_root = "data/checkpoints/fresh"
model_dir = "data/models/fresh"
reuse_models = False  # True: a model already exported to model_dir is used as it is (no checkpoint needed, e.g. the committed study models)
n_test = 0  # evaluate at most this many test samples (0: all)
test_seed = 1  # seed of the test noise
results = "data/results/fresh/table2_denoise_baselines.nc"
table = "data/results/fresh/table2_denoise_baselines.md"
figure_prefix = "figures/fresh/"

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from segdepth.learn.evaluation import evaluate_dataset, infer
from segdepth.learn.model import count_parameters
from segdepth.learn.modelio import load_model, save_model
from segdepth.physics.noise import poisson_noise
from segdepth.apps.plotting import depth_cmap, save_figure
from segdepth.data.preprocess import normalise
from segdepth.data.store import open_dataset, write_netcdf_atomic
from segdepth.learn.torchdata import split_indices
from segdepth.learn.training import TrainConfig, train

ds = open_dataset(data, load=True)
train_idx, val_idx, test_idx = split_indices(ds, split, seed=split_seed)
test_idx = test_idx[:n_test] if n_test else test_idx
print(f"{len(train_idx)} train, {len(val_idx)} validation, {len(test_idx)} test samples")
tag = f"base{base_channels}_lam{lam:g}"
common = dict(
    base_channels=base_channels,
    model_kwargs={"head_channels": list(head_channels)} if head_channels else {},
    denoiser={"base_channels": denoiser_base, "n_scales": denoiser_scales},
    lam=lam, crop=crop, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch or None, lr=lr,
    class_balance=class_balance, focus=focus, seed=seed, num_threads=num_threads, max_minutes=max_minutes or None,
)
split_card = {"data": data, "fractions": list(split), "seed": split_seed,
              "test_structures": sorted(int(s) for s in set(ds.structure.values[test_idx]))}


def fit(name, **changes):
    """Train (or resume) one run and export its best model with the split it was trained on."""
    out = Path(model_dir) / f"{name}.safetensors"
    if reuse_models and out.exists():
        card = load_model(out)[1]
        print(f"{name}: reused {out} (best epoch {card.get('best_epoch')}, {card['training_seconds'] / 60:.1f} min)")
        return out
    cfg = TrainConfig(**{**common, **changes})
    train(cfg, ds.isel(sample=train_idx), ds.isel(sample=val_idx), Path(checkpoint_root) / name)
    model, card = load_model(Path(checkpoint_root) / name / "model.safetensors")
    card.pop("architecture")
    card["split"] = split_card
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out, card, weights_dtype="float16")
    print(f"{name}: best epoch {card['best_epoch']} of {card['epochs_run']}, "
          f"{card['training_seconds'] / 60:.1f} min, validation {card['val_metrics']}")
    return out


# %% [markdown]
# ## Train: (the direct model, without `direct_model`), denoiser, then sequential (frozen denoiser), then joint

# %%
direct_model = direct_model or str(fit(f"direct_{tag}"))
denoiser_path = fit(f"denoiser{denoiser_base}_lam{lam:g}", task="denoise")
sequential_path = fit(f"sequential_{tag}", denoiser_path=str(denoiser_path))
joint_path = fit(f"joint_{tag}", task="joint", denoise_weight=denoise_weight)

# %% [markdown]
# ## Evaluate the three pipelines on the same test split, with the same noise

# %%
pipelines = {"direct": direct_model, "sequential": str(sequential_path), "joint": str(joint_path)}
rows, cards = [], {}
for name, path in pipelines.items():
    model, card = load_model(path)
    if card.get("split", {}).get("test_structures") not in (None, split_card["test_structures"]):
        raise ValueError(f"{path} was trained on another split; Table II needs one test set for all models")
    res = evaluate_dataset(model, ds, lam=lam, seed=test_seed, indices=test_idx)
    res = res.drop_vars([v for v in res.data_vars if v.endswith("_per_sample")]).drop_vars("sample")
    seg = model.segmenter if hasattr(model, "segmenter") else model
    res = res.expand_dims(pipeline=[name]).assign_coords(
        parameters=("pipeline", [count_parameters(model, trainable_only=False)]),
        segmentation_parameters=("pipeline", [count_parameters(seg)]),
        training_minutes=("pipeline", [card.get("training_seconds", np.nan) / 60]),
    )
    rows.append(res)
    cards[name] = card
out = xr.concat(rows, dim="pipeline")

# Denoising quality on the test split: MSE / PSNR of the normalised images against the clean ones.
den_rows = {}
for name, path in (("noisy input", None), ("denoiser (sequential)", denoiser_path), ("joint", joint_path)):
    model = load_model(path)[0] if path is not None else None
    errs = []
    for i in test_idx:
        clean = ds.image.values[int(i)]
        noisy = poisson_noise(clean, lam, rng=np.random.default_rng([test_seed, int(i)]))
        x = normalise(noisy)
        if model is not None:
            with torch.inference_mode():
                net = model.denoise if hasattr(model, "denoise") else model
                x = net(torch.from_numpy(x)[None, None]).numpy()[0, 0]
        errs.append(np.mean((x - normalise(clean)) ** 2))
    mse = float(np.mean(errs))
    den_rows[name] = (mse, float(10 * np.log10(np.mean([normalise(ds.image.values[int(i)]).max() ** 2
                                                        for i in test_idx]) / mse)))
out["denoise_mse"] = ("denoised", [v[0] for v in den_rows.values()])
out["denoise_psnr"] = ("denoised", [v[1] for v in den_rows.values()], {"units": "dB"})
out = out.assign_coords(denoised=list(den_rows))
out.attrs = {"data": data, "lam": lam, "seed": test_seed, "n_test": int(len(test_idx)),
             "model_cards": json.dumps(cards)}
write_netcdf_atomic(out, results)

# %% [markdown]
# ## Table II (reopened from the results file)

# %%
r = xr.load_dataset(results)
groups = list(r.group.values)
ce, o = groups.index("Ce"), groups.index("O")
PAPER = {"direct": (0.93, 0.847, 0.956, 2.33), "sequential": (0.867, 0.765, 0.946, 12.35),
         "joint": (0.862, 0.704, 0.936, 17.38)}
lines = ["| pipeline | params (1e6) | pixelwise | center | detection | hallucinated (1e-2) | columns exact (Ce / O) "
         "| paper (base 64): pixelwise / center / detection / hallucinated (1e-2) |", "|---|---|---|---|---|---|---|---|"]
for p in r.pipeline.values:
    q = r.sel(pipeline=p)
    lines.append(
        f"| {p} | {float(q.parameters) / 1e6:.2f} | {float(q.pixelwise_accuracy):.3f} | {float(q.center_accuracy):.3f} "
        f"| {float(q.real_atom_detection_rate):.3f} | {100 * float(q.hallucination_rate):.2f} "
        f"| {float(q.column_exact[ce]):.3f} / {float(q.column_exact[o]):.3f} | {' / '.join(map(str, PAPER[p]))} |")
den = "\n".join(f"- {d}: MSE {float(m):.4f}, PSNR {float(s):.1f} dB"
                for d, m, s in zip(r.denoised.values, r.denoise_mse.values, r.denoise_psnr.values))
text = (f"Table II at lambda = {lam:g} on the test split of {data} ({r.attrs['n_test']} images), segmentation "
        f"base {base_channels}\n\n" + "\n".join(lines) + "\n\nDenoising on the same images (normalised "
        "intensities):\n\n" + den + "\n")
Path(table).parent.mkdir(parents=True, exist_ok=True)
Path(table).write_text(text)
print(text)

# %% [markdown]
# ## One test image through each pipeline

# %%
if figure_prefix:
    i = int(test_idx[0])
    s = ds.isel(sample=i)
    cmap, norm = depth_cmap()
    fig, ax = plt.subplots(2, 4, figsize=(17, 8))
    noisy, _ = infer(load_model(direct_model)[0], s.image.values, lam, seed=test_seed, index=i)
    ext = [float(s.x[0]), float(s.x[-1]), float(s.y[-1]), float(s.y[0])]
    ax[0, 0].imshow(normalise(noisy), cmap="gray", extent=ext)
    ax[0, 0].set_title(f"noisy, lambda = {lam:g}")
    ax[0, 1].imshow(normalise(s.image.values), cmap="gray", extent=ext)
    ax[0, 1].set_title("clean")
    for k, (name, path) in enumerate((("sequential", denoiser_path), ("joint", joint_path))):
        m = load_model(path)[0]
        net = m.denoise if hasattr(m, "denoise") else m
        with torch.inference_mode():
            d = net(torch.from_numpy(normalise(noisy))[None, None]).numpy()[0, 0]
        ax[0, 2 + k].imshow(d, cmap="gray", extent=ext)
        ax[0, 2 + k].set_title(f"denoised ({name})")
    lab_ext = [float(s.label_x[0]), float(s.label_x[-1]), float(s.label_y[-1]), float(s.label_y[0])]
    ax[1, 0].imshow(s.label, cmap=cmap, norm=norm, extent=lab_ext)
    ax[1, 0].set_title("truth")
    for k, (name, path) in enumerate(pipelines.items()):
        _, proba = infer(load_model(path)[0], s.image.values, lam, seed=test_seed, index=i)
        ax[1, 1 + k].imshow(proba.argmax(0), cmap=cmap, norm=norm, extent=lab_ext)
        ax[1, 1 + k].set_title(f"depth: {name}")
    save_figure(fig, figure_prefix + "table2_pipelines.png")
