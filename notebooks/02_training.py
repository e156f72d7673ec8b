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
# # 02 Training: the depth-estimation UNet on simulated data
#
# **In:** a simulated dataset from notebook 01 (`data`). **Out:** the best weights
# (`model_out`, safetensors) with its JSON model card, checkpoints under `checkpoint_dir` (resume
# after a kill), and the training history as netCDF (`history_out`) with a figure.
#
# Training follows the paper: weighted cross-entropy (eq. 6) against the ring-smoothed labels with
# the centre weights, fresh Poisson noise at `lam` for every batch (continuous noise sampling), Adam
# with a learning-rate schedule, early stopping on a validation split that shares no structure with
# the training split. Augmentation is limited to the flips that keep the [110] projection valid.
# The test split (also by structure) is recorded in the model card for notebook 03.

# %% tags=["parameters"]
data = "data/simulated/cpu_train"  # dataset directory from notebook 01
base_channels = 16  # UNet width at full resolution (paper: 16, 32, 64, 96, 130)
head_channels = [32, 64]  # widths of the two extra downsampling blocks ([]: the paper-sized head)
lam = 2.5  # training dose [electrons per pixel in vacuum]
lam_range = []  # [lo, hi]: log-uniform dose range instead of a fixed lam (dose-robust model)
epochs = 60  # maximum epochs
crop = 256  # training crop [image pixels], a multiple of 64 * input_binning
input_binning = 1  # 4: the fast model (input binned 4x to the label grid; no head downsampling)
flatten = 0.0  # divide the input by its Gaussian local mean of this sigma [A] first (0: not; model.LocalMeanDivide)
batch_size = 4  # crops per step
steps_per_epoch = 0  # cap on steps per epoch (0: one pass over the training split)
lr = 1e-3  # initial Adam learning rate
lr_schedule = "plateau"  # "plateau", "cosine" or "constant"
patience = 8  # early stopping patience [epochs]
class_balance = 0.5  # class weight exponent (0: none, 0.5: inverse square-root frequency)
focus = 0.7  # probability that a crop is placed on a column
split = [0.8, 0.1, 0.1]  # train / validation / test fractions (by structure)
split_seed = 0  # seed of the split
seed = 0  # seed of initialisation, crops and noise
init_model = ""  # a trained model of the same architecture to start from (fine-tuning; "": random initialisation)
max_minutes = 80.0  # wall-clock budget of this run [min] (0: none)
num_threads = 2  # torch threads (per process)
nproc = 1  # data-parallel processes on this machine (torchrun + DDP; gloo on CPU, NCCL with one GPU each)
device = "cpu"  # single-process device ("cpu" or "cuda"); with nproc > 1 GPUs are used when present
checkpoint_dir = "data/checkpoints/base16_lam2.5"  # per-epoch checkpoints (resume)
model_out = "segdepth/models/segdepth_base16_lam2.5.safetensors"  # exported best model
history_out = "data/results/training_history_base16_lam2.5.nc"  # training history
figure = "figures/training_history_base16_lam2.5.png"

# %%
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from segdepth.apps.plotting import save_figure
from segdepth.data.store import open_dataset, write_netcdf_atomic
from segdepth.learn.modelio import load_model, save_model
from segdepth.learn.torchdata import split_indices
from segdepth.learn.training import TrainConfig, train

ds = open_dataset(data, load=True)
train_idx, val_idx, test_idx = split_indices(ds, split, seed=split_seed)
print(f"{ds.sizes['sample']} samples: {len(train_idx)} train, {len(val_idx)} validation, {len(test_idx)} test")
n_head = (4 // input_binning).bit_length() - 1  # head downsampling blocks: 2 (paper), 0 for a 4x binned input
model_kwargs = {"head_channels": list(head_channels)[:n_head]} if head_channels else {}
if input_binning > 1:
    model_kwargs["output_factor"] = 4 // input_binning
if flatten:  # [A] -> network input pixels
    model_kwargs["flatten_sigma"] = flatten / (float(ds.attrs["pixel_size"]) * input_binning)
cfg = TrainConfig(
    base_channels=base_channels,
    model_kwargs=model_kwargs,
    lam=None if lam_range else lam,
    lam_range=tuple(lam_range) if lam_range else None,
    crop=crop,
    input_binning=input_binning,
    batch_size=batch_size,
    epochs=epochs,
    steps_per_epoch=steps_per_epoch or None,
    lr=lr,
    lr_schedule=lr_schedule,
    patience=patience,
    class_balance=class_balance,
    focus=focus,
    seed=seed,
    num_threads=num_threads,
    max_minutes=max_minutes or None,
    init_weights=init_model or None,
)

# %%
if nproc > 1:
    from segdepth.learn.distributed import launch

    history = launch(data, cfg, checkpoint_dir, nproc=nproc, split=split, split_seed=split_seed)
else:
    history = train(cfg, ds.isel(sample=train_idx), ds.isel(sample=val_idx), checkpoint_dir, device=device)

# %% [markdown]
# Export the best model (float16 weights, converted back to float32 on loading) with the split it
# was trained on, so that the evaluation never sees a training structure.

# %%
model, card = load_model(Path(checkpoint_dir) / "model.safetensors")
card.pop("architecture")
card["split"] = {
    "data": data,
    "fractions": list(split),
    "seed": split_seed,
    "test_structures": sorted(int(s) for s in set(ds.structure.values[test_idx])),
}
Path(model_out).parent.mkdir(parents=True, exist_ok=True)
save_model(model, model_out, card, weights_dtype="float16")
write_netcdf_atomic(history, history_out)
print(json.dumps({k: card[k] for k in ("best_epoch", "val_metrics", "training_seconds", "epochs_run") if k in card},
                 indent=1))

# %% [markdown]
# Reopen the saved history and plot it.

# %%
h = xr.load_dataset(history_out)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(h.epoch + 1, h.train_loss, label="train")
axes[0].plot(h.epoch + 1, h.val_loss, label="validation")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("weighted cross-entropy")
axes[0].legend()
for name in ("pixelwise_accuracy", "center_accuracy", "real_atom_detection_rate", "hallucination_rate"):
    axes[1].plot(h.epoch + 1, h[name], label=name.replace("_", " "))
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("validation metric")
axes[1].legend(fontsize=8)
fig.suptitle(f"base {base_channels}, lambda = {lam_range or lam}, stopped: {h.attrs.get('stopped', '?')}")
save_figure(fig, figure)
