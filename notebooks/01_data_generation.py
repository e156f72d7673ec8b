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
# # 01 Data generation: simulated CeO2 [110] surfaces, HRTEM images and depth labels
#
# **In:** nothing but parameters. **Out:** a simulated dataset (netCDF shards) under
# `data/simulated/<name>/` and the paper's Fig. 3 (depth mask, clean image, noisy image) under
# `figures/`.
#
# Each structure is a CeO2 nanoparticle seen along [110] with a flat, sawtooth or stepped (1-10)
# surface, 3-10 atoms per column in the bulk and a wedge towards its edges, optionally with oxygen
# vacancies. Its exit wave is computed once by multislice (abTEM, 300 kV) and imaged at several
# overfocus values (1-9 nm, C3 = -9 um, C5 = 5 mm, incoherent average over a Gaussian defocus
# spread). Labels are drawn on the network's output grid, 4x coarser than the image.
#
# The `cpu` preset simulates 1536^2 at the paper's 0.0265 A and bins to 768^2 at 0.053 A; the
# `paper` preset is the paper's 2048 -> 1024. Generation runs on a dask.distributed LocalCluster
# (`workers`) or on any running cluster (`scheduler_address`), and resumes after a kill.

# %% tags=["parameters"]
preset = "cpu"  # "paper" (2048 -> 1024 px), "cpu" (1536 -> 768 px) or "tiny" (1024 -> 512 px)
n_structures = 8  # structures; each gives n_defocus images
n_defocus = 3  # images per structure (overfocus values), from one exit wave
overfocus_min = 10.0  # [A] (paper: 1 nm)
overfocus_max = 90.0  # [A] (paper: 9 nm)
vacancy_max = 0.15  # largest O vacancy rate (drawn for half of the structures)
lam_preview = 2.5  # dose of the noisy preview [electrons per pixel in vacuum]
seed = 2026  # root seed of the dataset (the shipped model was trained on seed 0)
output = "data/simulated/nb01_cpu"  # dataset directory (relative to the repository)
figure = "figures/fig3_simulated_samples.png"  # Fig. 3
n_show = 3  # samples shown in Fig. 3
workers = 2  # local dask worker processes (0: no dask)
scheduler_address = ""  # address of a running dask scheduler, e.g. "tcp://10.0.0.1:8786" ("": local)

# %%
import json

import numpy as np

from segdepth.apps.plotting import plot_samples, save_figure
from segdepth.data.store import open_dataset
from segdepth.physics.generate import PRESETS, generate_dataset
from segdepth.physics.noise import poisson_noise

params = PRESETS[preset].with_(
    n_defocus=n_defocus,
    overfocus_range=(overfocus_min, overfocus_max),
    vacancy_max=vacancy_max,
    seed=seed,
)
print(f"field {params.extent:.1f} A, image {params.image_shape} px at {params.pixel_size} A, "
      f"labels {params.label_shape} px at {params.pixel_size * params.label_factor:.3f} A")

# %%
generate_dataset(
    params, output, n_structures=n_structures, workers=workers, scheduler_address=scheduler_address or None
)

# %% [markdown]
# Reopen the saved dataset (all shards as one) and check it.

# %%
ds = open_dataset(output)
print(ds)
print("parameters:", json.dumps(json.loads(ds.attrs["parameters"]))[:300], "...")
counts = ds.column_count.values
print("columns per sample:", (counts > 0).sum(axis=1))
print("count histogram (all columns):", np.bincount(counts[counts > 0].astype(int), minlength=11)[1:])

# %% [markdown]
# Fig. 3: depth mask, clean image and noisy image (eq. 1) for a few samples.

# %%
idx = np.linspace(0, ds.sizes["sample"] - 1, min(n_show, ds.sizes["sample"])).astype(int)
rng = np.random.default_rng(seed)
clean = [ds.image[i].load() for i in idx]
noisy = [c.copy(data=poisson_noise(c.values, lam_preview, rng=rng)) for c in clean]
titles = [f"{str(ds.surface.values[i])}, overfocus {float(ds.overfocus[i]) / 10:.1f} nm" for i in idx]
fig = plot_samples([ds.depth[i].load() for i in idx], clean, noisy, lam=lam_preview, titles=titles)
save_figure(fig, figure)
