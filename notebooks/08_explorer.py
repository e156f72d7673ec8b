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
# # 08 Explorer: what the microscope and the dose do to the depth estimate
#
# **In:** the shipped robust model (or `model`). **Out:** an interactive explorer (ipywidgets; served
# as an app with `voila notebooks/08_explorer.ipynb`, or `make explore`) and one static figure.
#
# Pick a particle, a lens and a dose; the explorer simulates the HRTEM image of the CeO2 particle
# seen along [110], draws the shot noise, runs the depth network on the noisy image and shows four
# panels: the **noisy image**, the **estimate** (atoms per column, 0 = background), its
# **confidence** (the probability of the predicted depth, eq. 5) and the **truth**. The title of the
# estimate gives the fraction of columns whose atom count it gets exactly right.
#
# The controls:
#
# - **outline**, **thickness**, **O vacancies** (the particle): the outline family (`flat`,
#   `sawtooth`, `stepped` surfaces of a rectangular island, a `faceted` particle, `multi`: several),
#   the bulk number of atoms per column (1-10; the columns thin towards the edges over a wedge) and the
#   fraction of oxygen atoms missing. A new particle runs the multislice simulation of the electron
#   wave through the atoms: the slow step (seconds).
# - **overfocus** [A] (the lens): the overfocus C10 (the paper's defocus 1-9 nm is 10-90 A). With the
#   negative spherical aberration of the corrected lens (Cs = -9 um) it decides which spatial
#   frequencies come through with which phase, so the contrast of the columns (bright or dark O, how
#   Ce columns of different depths differ) changes with it.
# - **focal spread** [A] (the lens): partial temporal coherence (energy spread of the beam, lens
#   current noise) smears the focus; the image is the incoherent average over a Gaussian distribution
#   of defocus of this standard deviation. It damps the high spatial frequencies (for a thin specimen the envelope
#   `exp(-(pi lambda_e Delta k^2)^2 / 2)`): a wide spread blurs the columns and washes out the fine
#   contrast that tells 6 atoms from 7. A new lens images the cached exit wave again (tenths of a second).
# - **dose** [electrons per 0.053 A pixel in vacuum] and **noise seed**: the shot noise of eq. (1),
#   `x ~ Poisson(lambda c) / lambda`. The signal-to-noise ratio of a pixel is `sqrt(lambda c)`: ten
#   times the dose, three times less noise. The robust model was trained at 0.2-32; below ~0.1 it warns.
#   A new dose only draws new noise and predicts again (fast).
#
# Exit waves and clean images are cached (`segdepth.apps.explorer.Explorer`), so only what changed is
# recomputed; the status line under the figure says what ran and how long it took.

# %% tags=["parameters"]
gpts = 0  # simulation grid (0: $SEGDEPTH_EXPLORER_GPTS, else 1024, the tiny 27 A field; 1536: a 40 A field)
model = ""  # model file ("": the shipped robust model)
seed = 0  # particle geometry (one particle per outline family and seed)
surface = "flat"  # initial outline
thickness = 6  # initial bulk thickness [atoms per column]
vacancy = 0.0  # initial O vacancy rate
overfocus = 50.0  # initial overfocus [A]
focal_spread = 15.0  # initial focal spread [A]
lam = 2.5  # initial dose [e/pixel]
figure = ""  # where to save the static figure ("": not saved)

# %%
import os
import time

from IPython.display import Image, display

from segdepth.apps.explorer import Explorer, ViewFigure

gpts = int(gpts) or int(os.environ.get("SEGDEPTH_EXPLORER_GPTS", 1024))
if model:
    from segdepth.learn.modelio import load_model

    explorer = Explorer(*load_model(model), gpts=gpts, seed=seed)
else:
    explorer = Explorer(gpts=gpts, seed=seed)
print(f"field {explorer.extent:.1f} A, image {explorer.image_shape[0]} px of {explorer.pixel_size:.3f} A, "
      f"label grid {explorer.label_shape[0]} px of {explorer.label_pixel_size:.3f} A")

# %% [markdown]
# ## The explorer
#
# Sliders update when released. Without a front end (papermill, a terminal) the widget shows as
# text, and the cells below still run.

# %%
initial = dict(surface=surface, thickness=thickness, vacancy=vacancy, overfocus=overfocus,
               focal_spread=focal_spread, lam=lam)
explorer.show(**initial)

# %% [markdown]
# ## What a change costs
#
# The same particle, then a new lens, then a new dose, then a new particle: only the stages that
# depend on what changed run.

# %%
steps = [
    ("same view", {}),
    ("new dose", {"lam": lam * 4}),
    ("new lens", {"lam": lam * 4, "focal_spread": focal_spread + 15}),
    ("new particle", {"lam": lam * 4, "focal_spread": focal_spread + 15, "thickness": max(1, thickness - 2)}),
]
for label, change in steps:
    t0 = time.perf_counter()
    v = explorer.view(**{**initial, **change})
    print(f"{label:13s} {time.perf_counter() - t0:6.2f} s  ran: {v.attrs['computed']:26s} "
          f"columns exact {v.attrs['column_exact']:.0%} of {v.attrs['n_columns']}")

# %% [markdown]
# ## A static figure
#
# The initial settings, as a plain figure (also what the app shows).

# %%
view = explorer.view(**initial)
canvas = ViewFigure(view)
if figure:
    from segdepth.apps.plotting import save_figure

    save_figure(canvas.fig, figure)
display(Image(data=canvas.png(dpi=100)))  # a PNG: shown by any front end, no matplotlib backend needed
