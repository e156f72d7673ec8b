"""Is the frame in the contrast regime the counting models know? A check for underfocused images.

Every counting model was trained on *over*focused images (the paper's defocus 1-9 nm is abTEM
``defocus = -10 ... -90`` A; with Cs < 0 the columns are bright, ``../shared/PHYSICS.md``). An image taken, or
simulated, at the other sign of the defocus is read confidently and wrongly: the shipped pair counts 0.012 /
0.004 of the columns exactly at lambda 2.5 / 10 when the same particles are underfocused by 2-8 nm, with
confidence 0.69-0.71 at the columns (``benchmarks/simulator_shift.py --kinds incoherent underfocus``, README).
Linear imaging would make the underfocused image the overfocused one with its contrast negated, but the
columns are not weak phase objects: reading ``2 - image`` counts 0.01-0.17 exactly (ad hoc, 2026-12-05).
A hand-made polarity test (correlation of the image with the counts it implies) does not separate 5 nm of
underfocus from overfocus either (README, "Underfocus").

This module learns the regime instead. :func:`regime_dataset` labels every pixel of a simulated dataset made
with :class:`segdepth.physics.simulation.OpticsRanges` ``underfocus > 0`` (preset ``regime``: the training
optics, half the images underfocused by the drawn amount) with the sign of its image's defocus, weighted
towards the crystal (vacuum far from a particle says little about the focus); :func:`train_regime` trains the
counting models' binned-input UNet (0.212 A pixels, two classes, about 0.2 M parameters) on noisy crops at
doses drawn per sample like the counting models', with fresh noise every step, and checkpoints every epoch
(a killed run resumes). :func:`underfocus_probability` reads a frame with it through
:func:`segdepth.learn.inference.predict` (the same resampling, tiling and in-plane turn as the counting
model); :func:`frame_scores` averages it over the crystal pixels of each frame. Above :data:`MAX_UNDERFOCUS`
:func:`segdepth.learn.validity.assess` gives the frame's crystal the reason ``wrong_focus`` (not valid).

The same machinery learns other regimes (:data:`TARGETS`): ``quasi`` tells images made with abTEM's quasi-coherent
focal-spread envelope, which the counting models misread (0.17-0.35 exact), from the incoherent defocus average
they know; shipped as :data:`COHERENCE_MODEL`, read by :func:`regime_probability`, a frame above :data:`MAX_QUASI`
is named in a warning, never flagged (README, "The coherence check"). ``phonons`` (static against vibrating
atoms) was tried and learned nothing.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy import ndimage

__all__ = ["COHERENCE_MODEL", "MAX_QUASI", "MAX_UNDERFOCUS", "REGIME_MODEL", "TARGETS", "cached_regime_model",
           "frame_scores", "load_regime_model", "regime_dataset", "regime_probability", "train_regime",
           "underfocus_probability"]

#: The shipped regime model (weights and JSON card beside the counting models).
REGIME_MODEL = Path(__file__).resolve().parents[1] / "models" / "segdepth_regime_base8_bin4.safetensors"
#: The shipped coherence check: a regime model of target ``quasi`` (abTEM's quasi-coherent envelope).
COHERENCE_MODEL = Path(__file__).resolve().parents[1] / "models" / "segdepth_coherence_base8_bin4.safetensors"
#: A frame whose crystal pixels' mean probability of underfocus exceeds this is read in the wrong regime.
MAX_UNDERFOCUS = 0.5
#: A frame whose crystal pixels' mean probability of the quasi-coherent envelope exceeds this is named in a warning.
MAX_QUASI = 0.5
#: Loss weight of pixels farther than :data:`CRYSTAL_REACH` label pixels from a column (vacuum).
VACUUM_WEIGHT = 0.1
CRYSTAL_REACH = 8
#: Dose range [electrons per 0.053 A pixel] of the training noise (the counting models': 0.2-32).
LAM_RANGE = (0.2, 32.0)
_ARCHITECTURE = {"n_classes": 2, "base_channels": 8, "n_scales": 4, "output_factor": 1, "median_size": 1}
_CHECKPOINT = "regime_checkpoint"
#: What a regime model learns: its per-sample label (from the dataset's coordinates) and its two class names.
#: ``underfocus``: the defocus sign (the shipped check); ``phonons``: whether the image was made with vibrating
#: atoms (frozen phonons), static ones being class 0; ``quasi``: whether the focal spread was modelled by abTEM's
#: quasi-coherent envelope (``quasi_coherent``) with a spread of at least :data:`QUASI_MIN_SPREAD` (below it the
#: two models of temporal coherence give nearly the same image).
TARGETS = {"underfocus": ("overfocus", ("overfocus", "underfocus")),
           "phonons": ("phonons", ("static", "vibrating")),
           "quasi": ("quasi_coherent", ("incoherent", "quasi-coherent"))}
#: Smallest focal spread (standard deviation [A]) labelled quasi-coherent by the ``quasi`` target.
QUASI_MIN_SPREAD = 10.0


def _target_labels(ds: xr.Dataset, target: str) -> np.ndarray:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")
    coord = TARGETS[target][0]
    if coord not in ds.coords and coord not in ds:
        raise ValueError(f"dataset has no per-sample {coord!r} coordinate: it was not made by the generator")
    values = np.asarray(ds[coord].values)
    if target == "quasi":
        return (values > 0) & (np.asarray(ds["defocus_spread"].values) >= QUASI_MIN_SPREAD)
    return values < 0 if target == "underfocus" else values > 0


def regime_dataset(ds: xr.Dataset, target: str = "underfocus") -> xr.Dataset:
    """``ds`` with ``label`` the regime of every label pixel (1: its image is underfocused) and ``weight``.

    ``ds`` is a simulated dataset (``docs/conventions.md``) with the per-sample coordinate ``overfocus`` [A]
    (negative: underfocused, as preset ``regime`` records it). ``weight`` is 1 within :data:`CRYSTAL_REACH`
    label pixels of a column and :data:`VACUUM_WEIGHT` elsewhere; ``depth`` and ``center_mask`` are kept.
    """
    under = _target_labels(ds, target)
    if under.all() or not under.any():
        name = TARGETS[target][1][int(under.all())]
        raise ValueError(f"dataset holds only {name} images ({target}): the regime check needs both (preset "
                         "'regime', OpticsRanges(underfocus=...))")
    depth = ds["depth"].transpose("sample", "label_y", "label_x").values
    disc = np.hypot(*np.mgrid[-CRYSTAL_REACH:CRYSTAL_REACH + 1, -CRYSTAL_REACH:CRYSTAL_REACH + 1]) <= CRYSTAL_REACH
    crystal = np.stack([ndimage.binary_dilation(d > 0, disc) for d in depth])
    dims = ("sample", "label_y", "label_x")
    label = np.broadcast_to(under[:, None, None], depth.shape).astype(np.uint8)
    return ds.assign(label=(dims, label), weight=(dims, np.where(crystal, 1.0, VACUUM_WEIGHT).astype(np.float32)))


def _frame_accuracy(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> float:
    """Fraction of frames decided right (weighted mean probability of underfocus > :data:`MAX_UNDERFOCUS`)."""
    p = torch.softmax(logits, 1)[:, 1]
    score = (p * weight).sum((1, 2)) / weight.sum((1, 2))
    return float(((score > MAX_UNDERFOCUS).float() == label[:, 0, 0].float()).float().mean())


def train_regime(
    dataset,
    output,
    *,
    minutes: float = 20.0,
    epochs: int = 200,
    steps_per_epoch: int = 50,
    batch_size: int = 16,
    crop: int = 512,
    binning: int = 4,
    lr: float = 1e-3,
    patience: int = 8,
    val_fraction: float = 0.15,
    seed: int = 0,
    lam_range: tuple[float, float] = LAM_RANGE,
    blur: tuple[float, float] = (0.0, 0.0),
    init_weights=None,
    checkpoint_dir=None,
    resume: bool = True,
    progress: bool = True,
    target: str = "underfocus",
) -> dict:
    """Train the regime model on ``dataset`` (a directory of shards or a Dataset) and save it as ``output``.

    Crops of ``crop`` dataset pixels (binned ``binning`` x ``binning`` before the noise, as the counting models: 512
    -> 128 pixels of 0.212 A, 27 A of context), a dose per crop log-uniform over ``lam_range`` [electrons per
    dataset pixel] (default :data:`LAM_RANGE`), fresh noise every step, Adam at ``lr`` halved after 3 epochs without
    a better validation loss, stopped after ``patience`` such epochs, ``epochs`` or ``minutes`` of training time,
    whichever comes first. ``blur``: each clean crop is first blurred by a Gaussian of a standard deviation drawn
    uniformly in this range [binned pixels] (a camera's MTF and a lower information limit than the simulation's; the
    validation images too, with their own fixed draws). ``init_weights``: a regime model to start from
    (fine-tuning). Validation: whole binned images of structures held out of training, noise fixed per image. A
    checkpoint (safetensors + JSON, :func:`segdepth.learn.training.load_checkpoint`) is written after every epoch to
    ``checkpoint_dir`` (default: ``<output stem>_regime_checkpoint`` beside ``output``; keep it out of a package
    directory); with ``resume`` a killed run goes on from it. The best epoch's weights are saved as ``output`` with
    a card (architecture, pixel size, doses, data, history, time).
    Returns the card.
    """
    from segdepth.data.preprocess import bin_dataset
    from segdepth.data.store import open_dataset
    from segdepth.learn.inference import TRAINED_ORIENTATION
    from segdepth.learn.model import UNet
    from segdepth.learn.modelio import save_model
    from segdepth.learn.torchdata import CropDataset, collate, split_indices
    from segdepth.learn.training import (
        _derived_seed,
        _noisy_input,
        _optimizer_state,
        _save_checkpoint,
        checkpoint_model_state,
        load_checkpoint,
        weighted_cross_entropy,
    )

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(dataset) if not isinstance(dataset, xr.Dataset) else dataset
    ds = bin_dataset(regime_dataset(ds.load(), target), binning)
    if crop % binning:
        raise ValueError(f"crop must be a multiple of binning={binning}, got {crop}")
    train_idx, val_idx = split_indices(ds, fractions=(1 - val_fraction, val_fraction), seed=seed)
    label_factor = int(ds.attrs.get("label_factor", 1))
    train_set = CropDataset(ds.isel(sample=train_idx), crop=crop // binning, label_factor=label_factor,
                            augment=True, seed=seed, focus=0.7)
    val_set = CropDataset(ds.isel(sample=val_idx), crop=None, label_factor=label_factor, augment=False, seed=seed)
    dataset_lam_range = tuple(float(v) for v in lam_range)
    lam_range = (dataset_lam_range[0] * binning**2, dataset_lam_range[1] * binning**2)  # per binned pixel

    torch.manual_seed(seed)
    model = UNet(**_ARCHITECTURE)
    if init_weights is not None:
        model.load_state_dict(load_regime_model(init_weights)[0].state_dict())
    lo, hi = (float(v) for v in blur)
    if not 0 <= lo <= hi:
        raise ValueError(f"blur must be (lo, hi) with 0 <= lo <= hi [binned pixels], got {blur!r}")

    def blurred(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if hi == 0:
            return images
        out = images.numpy().copy()
        for b, sigma in enumerate(rng.uniform(lo, hi, size=len(out))):
            out[b, 0] = ndimage.gaussian_filter(out[b, 0], sigma, mode="reflect")
        return torch.from_numpy(out)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3, min_lr=lr / 64)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else output.parent / f"{output.stem}_{_CHECKPOINT}"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = {"epoch": -1, "history": [], "best": float("inf"), "best_epoch": -1, "seconds": 0.0, "stale": 0}
    saved = load_checkpoint(checkpoint_dir) if resume else None
    if saved is not None:
        saved_state, tensors = saved
        model.load_state_dict(checkpoint_model_state(tensors))
        optimizer.load_state_dict(_optimizer_state(tensors, saved_state["optimizer"]))
        scheduler.load_state_dict(saved_state["scheduler"])
        state = {k: saved_state[k] for k in state}
        if progress:
            print(f"resumed after epoch {state['epoch']} ({state['seconds']:.0f} s)", flush=True)
    val_batch = collate([val_set[i] for i in range(len(val_set))])
    val_input = _noisy_input(blurred(val_batch["image"], np.random.default_rng([seed, 1])),
                             torch.Generator().manual_seed(_derived_seed(seed, 1)), lam=None, lam_range=lam_range)
    epoch = state["epoch"] + 1
    while epoch < epochs and state["seconds"] < 60 * minutes and state["stale"] < patience:
        start = time.perf_counter()
        model.train()
        train_set.set_epoch(epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(train_set))
        generator = torch.Generator().manual_seed(_derived_seed(seed, 2, epoch))
        losses = []
        for step in range(steps_per_epoch):
            picks = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
            batch = collate([train_set[int(i)] for i in picks])
            clean = blurred(batch["image"], np.random.default_rng([seed, 3, epoch, step]))
            x = _noisy_input(clean, generator, lam=None, lam_range=lam_range)
            loss = weighted_cross_entropy(model(x), batch["label"], batch["weight"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(val_input[i:i + 8]) for i in range(0, len(val_input), 8)])
            val_loss = float(weighted_cross_entropy(logits, val_batch["label"], val_batch["weight"]))
            accuracy = _frame_accuracy(logits, val_batch["label"], val_batch["weight"])
        scheduler.step(val_loss)
        state["seconds"] += time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                  "val_frame_accuracy": accuracy, "lr": optimizer.param_groups[0]["lr"], "seconds": state["seconds"]}
        state["history"].append(record)
        if val_loss < state["best"]:
            state.update(best=val_loss, best_epoch=epoch, stale=0)
            (checkpoint_dir / "best").mkdir(exist_ok=True)
            _save_checkpoint(checkpoint_dir / "best", {"epoch": epoch}, model, optimizer)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        _save_checkpoint(checkpoint_dir, {**state, "scheduler": scheduler.state_dict()}, model, optimizer)
        if progress:
            print(f"epoch {epoch}: train {record['train_loss']:.4f}, val {val_loss:.4f}, frames right "
                  f"{accuracy:.3f}, lr {record['lr']:.1e}, {state['seconds']:.0f} s", flush=True)
        epoch += 1
    best = load_checkpoint(checkpoint_dir / "best")
    if best is None:
        raise RuntimeError("no epoch was trained (epochs, minutes or patience left nothing to do)")
    model.load_state_dict(checkpoint_model_state(best[1]))
    attrs = ds.attrs
    card = {
        "model_class": "regime", "target": target, "classes": list(TARGETS[target][1]),
        "sampling": float(attrs.get("sampling", attrs.get("pixel_size"))), "label_factor": label_factor,
        "input_binning": binning, "normalisation": "divide by frame mean",
        "lam_range": [lam_range[0], lam_range[1]], "dataset_lam_range": list(dataset_lam_range),
        "max_underfocus": MAX_UNDERFOCUS, "orientation": TRAINED_ORIENTATION,
        "train_config": {"minutes": minutes, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                         "batch_size": batch_size, "crop": crop, "lr": lr, "patience": patience,
                         "val_fraction": val_fraction, "seed": seed, "vacuum_weight": VACUUM_WEIGHT,
                         "crystal_reach": CRYSTAL_REACH, "blur": [lo, hi],
                         "init_weights": None if init_weights is None else Path(init_weights).name},
        "data_parameters": json.loads(attrs["parameters"]) if "parameters" in attrs else None,
        "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "best_epoch": int(state["best_epoch"]), "training_seconds": float(state["seconds"]),
        "history": state["history"],
    }
    save_model(model, output, card)
    return card


def load_regime_model(path=None):
    """``(model, card)`` of the regime model at ``path`` (default :data:`REGIME_MODEL`), or ``None`` when the
    default is not shipped."""
    from segdepth.learn.modelio import load_model

    path = REGIME_MODEL if path is None else Path(path)
    if path in (REGIME_MODEL, COHERENCE_MODEL) and not path.is_file():
        return None
    model, card = load_model(path)
    if card.get("model_class") != "regime":
        raise ValueError(f"{path} is not a regime model (its card's model_class is {card.get('model_class')!r})")
    return model, card


@functools.lru_cache(maxsize=2)
def cached_regime_model(coherence: bool = False):
    """:func:`load_regime_model` of the shipped underfocus check (``coherence``: of the shipped coherence check),
    loaded once per process (``None`` where none is shipped)."""
    return load_regime_model(COHERENCE_MODEL if coherence else None)


def regime_probability(image, model, card, *, pixel_size=None, orientation=None, **options) -> xr.DataArray:
    """Probability of the regime model's second class (its card's ``classes[1]``: underfocused for the shipped
    check, quasi-coherent for target ``quasi``) at each label pixel of ``image``, ``(frame, y, x)``.

    ``image`` as for :func:`segdepth.learn.inference.predict` (which reads it: the same resampling and tiling;
    ``orientation`` as there, default ``None``: pass the counting prediction's turn so both read the same
    lattice direction); ``options`` go to it too.
    """
    from segdepth.learn.inference import predict

    target = card.get("target", "underfocus")
    name = card.get("classes", TARGETS["underfocus"][1])[1]
    out = predict(image, model, card, pixel_size=pixel_size, orientation=orientation, return_probabilities=True,
                  dose_matching=False, **options)
    p = out["probability"].isel(depth_class=1).drop_vars("depth_class")
    return p.rename(f"{target}_probability").assign_attrs(long_name=f"probability that the frame is {name}", units="1")


def underfocus_probability(image, model, card, **options) -> xr.DataArray:
    """:func:`regime_probability` of the underfocus check (``underfocus_probability``, ``(frame, y, x)``)."""
    if card.get("target", "underfocus") != "underfocus":
        raise ValueError(f"not an underfocus model (its card's target is {card.get('target')!r})")
    return regime_probability(image, model, card, **options).assign_attrs(
        long_name="probability that the frame is underfocused")


def frame_scores(probability: np.ndarray, crystal: np.ndarray) -> np.ndarray:
    """Mean of ``probability`` ``(frame, y, x)`` over each frame's ``crystal`` pixels (all pixels where a frame
    has none): the frame's score of underfocus."""
    probability = np.asarray(probability, np.float64)
    crystal = np.asarray(crystal, bool)
    if probability.shape != crystal.shape:
        raise ValueError(f"probability {probability.shape} and crystal {crystal.shape} differ in shape")
    weight = np.where(crystal.any(axis=(1, 2), keepdims=True), crystal, True)
    return (probability * weight).sum(axis=(1, 2)) / weight.sum(axis=(1, 2))
