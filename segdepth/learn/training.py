"""Training of the depth-segmentation UNet: loss, configuration, loop, checkpoints.

The loop follows the paper (section "Training"): weighted cross-entropy
(eq. 6), continuous noise sampling (a fresh Poisson draw for every batch),
Adam with a learning-rate schedule and early stopping on the validation loss.

Configuration
-------------
:class:`TrainConfig` (flat keywords, flat :meth:`TrainConfig.to_dict`) is
composed of frozen parts: :class:`ModelConfig` (task and architecture),
:class:`DataConfig` (crops, batches, binning), :class:`NoiseConfig` (dose),
:class:`LossConfig` (class and MSE weights), :class:`OptimiserConfig` (Adam and
its schedule) and :class:`RunConfig` (epochs, stopping, seed, threads). None
of them changes after construction or reads a file.

The loop
--------
:func:`train` runs these steps, each a function of its own:

1. :func:`_prepare_data`: bin the datasets, cut the crop datasets, compute the
   class weights, the per-process batch size and the doses per model pixel;
2. :func:`_restore_or_initialise`: the network (:func:`initial_model`: seeded
   weights, the ``denoiser_path`` and ``init_weights`` files), the optimiser
   and scheduler, and, when resuming, the state of the last checkpoint;
3. :func:`_train_epoch`, once per epoch: the optimisation steps, then the
   ranks' batch-norm statistics and mean loss made common;
4. :func:`_end_epoch`: validation, scheduler step, early-stopping and time
   budget decisions, the best model, the history and the checkpoint;
5. :func:`_write_results`: the whole run in the best model's card, the
   history with its stopping reason.

The distributed calls go through a
:class:`segdepth.learn.distributed.SingleProcess` or (inside an initialised
process group) :class:`segdepth.learn.distributed.TorchDistributed`, so the
steps are the same for one process and for ``torchrun``.

Reproducibility
---------------
Every random choice is a function of ``TrainConfig.seed`` and counters, never
of a global random state:

- weight initialisation: ``(seed, "init")`` inside :func:`torch.random.fork_rng`
  (the caller's global generator is left untouched);
- order of the training samples in epoch ``e``: ``(seed, e, "shuffle")``;
- crop and flip of sample ``i`` in epoch ``e``: ``(seed, e, i)``
  (:class:`segdepth.learn.torchdata.CropDataset`);
- noise (and dose, for a ``lam_range``) of step ``s`` in epoch ``e``:
  ``(seed, e, s, "noise")``;
- validation noise of sample ``i``: ``(seed, i, "validation")``, the same
  every epoch.

A checkpoint after every epoch therefore holds all the state there is
(weights, batch-norm statistics, optimiser and scheduler state, epoch counter,
early-stopping counters, history), and a resumed run continues bit for bit as
an uninterrupted one would (on the same machine and thread count).

Files written to ``out_dir``
----------------------------
``checkpoint.json``
    Everything but tensors (JSON; the commit point, replaced last).
``checkpoint-NNNN.safetensors``
    Model and optimiser tensors of the checkpoint (no pickle).
``model.safetensors`` (+ its card, :mod:`segdepth.learn.modelio`)
    The model with the lowest validation loss so far.
``history.nc``
    Per-epoch losses, learning rate, metrics and time (dim ``epoch``).

All are written to a temporary file and moved into place with
:func:`os.replace`, so a killed run leaves the previous complete version.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import operator
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import xarray as xr
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from segdepth import __version__
from segdepth.constants import N_CLASSES
from segdepth.data.preprocess import bin_dataset, normalise
from segdepth.data.store import atomic_write
from segdepth.learn.distributed import SingleProcess, current_processes
from segdepth.learn.metrics import METRIC_NAMES, summarise
from segdepth.learn.model import DenoiseSegment, DenoisingUNet, UNet, paper_config
from segdepth.learn.modelio import load_model, save_model
from segdepth.learn.torchdata import CropDataset, collate
from segdepth.physics.noise import poisson_noise_torch

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimiserConfig",
    "RunConfig",
    "TrainConfig",
    "class_weights",
    "evaluate",
    "initial_model",
    "load_checkpoint",
    "train",
    "weighted_cross_entropy",
]

CHECKPOINT_NAME = "checkpoint.json"
MODEL_NAME = "model.safetensors"
HISTORY_NAME = "history.nc"
NORMALISATION = "divide by frame mean"
_CHECKPOINT_FORMAT = "segdepth-training-checkpoint"
_CHECKPOINT_VERSION = 1
# Tags that separate the random streams derived from one seed.
_INIT, _SHUFFLE, _NOISE, _VALIDATION = 0x1A17, 0x5AFF, 0x0015E, 0x7A11D
# Fields that may change between a run and its resumption without changing its course.
_RESUMABLE_CHANGES = ("epochs", "max_minutes", "num_threads")
_SCHEDULES = ("plateau", "cosine", "constant")
TASKS = ("segment", "denoise", "joint")


def weighted_cross_entropy(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy of eq. (6) of the paper.

    ``L = sum_i w_i * (-log softmax(logits)_i[label_i]) / sum_i w_i`` over all
    pixels ``i`` of the batch.

    Parameters
    ----------
    logits : torch.Tensor
        (batch, n_classes, H, W) unnormalised class scores.
    label : torch.Tensor
        (batch, H, W) integer target classes.
    weight : torch.Tensor
        (batch, H, W) non-negative pixel weights; pixels of weight 0 do not
        contribute.

    Returns
    -------
    torch.Tensor
        Scalar loss; 0 when all weights are 0.
    """
    if logits.ndim != 4 or label.shape != (logits.shape[0], *logits.shape[2:]) or weight.shape != label.shape:
        raise ValueError(
            "expected logits (B, C, H, W) and label, weight (B, H, W); got "
            f"logits {tuple(logits.shape)}, label {tuple(label.shape)}, weight {tuple(weight.shape)}"
        )
    nll = F.cross_entropy(logits, label.long(), reduction="none")
    weight = weight.to(nll.dtype)
    return (weight * nll).sum() / weight.sum().clamp_min(torch.finfo(nll.dtype).tiny)


# ---------------------------------------------------------------------------
# Configuration: frozen parts, composed by TrainConfig
# ---------------------------------------------------------------------------


def _check_positive_int(owner: object, *names: str, optional: bool = False) -> None:
    """Raise ``ValueError`` unless the attributes ``names`` of ``owner`` are positive integers (or None)."""
    for name in names:
        value = getattr(owner, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = "None or a positive integer" if optional else "a positive integer"
            raise ValueError(f"{name} must be {what}, got {value!r}")


def _read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``mapping`` (nested values copied too)."""
    return MappingProxyType(copy.deepcopy(dict(mapping)))


@dataclass(frozen=True)
class ModelConfig:
    """What is trained and its architecture (part of :class:`TrainConfig`).

    Parameters
    ----------
    task : {"segment", "denoise", "joint"}
        What is trained (the baselines of Table II of the paper):
        ``"segment"``: the depth UNet on noisy images (the direct model), or,
        with ``denoiser_path``, on the outputs of that frozen denoiser (the
        sequential baseline); ``"denoise"``: a :class:`DenoisingUNet` with the
        mean squared error against the clean image; ``"joint"``: a
        :class:`DenoiseSegment` trained on cross-entropy + ``denoise_weight``
        x MSE.
    base_channels : int
        Width of the UNet's full-resolution scale.
    model_kwargs : mapping
        Extra :class:`segdepth.learn.model.UNet` arguments (e.g. ``n_scales``,
        ``channels``). Empty: the paper's architecture,
        :func:`segdepth.learn.model.paper_config` ``(base_channels)``. Kept
        as a read-only copy.
    denoiser : mapping
        :class:`DenoisingUNet` arguments of a fresh denoiser (tasks
        ``"denoise"`` and ``"joint"``); default ``{"base_channels":
        base_channels}``. Kept as a read-only copy.
    denoiser_path : str, optional
        A trained denoiser (``.safetensors`` from a ``"denoise"`` run): frozen
        in front of the segmentation network for ``"segment"``, initial
        weights for ``"joint"``. Read by :func:`initial_model`.
    init_weights : str, optional
        A trained segmentation model (``.safetensors``) of the same
        architecture whose weights start the run instead of a random
        initialisation (fine-tuning, e.g. on a new simulation distribution).
        A checkpoint, when resuming, takes precedence. Read by
        :func:`initial_model`; ignored for task ``"denoise"``.
    """

    task: str = "segment"
    base_channels: int = 16
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    denoiser: Mapping[str, Any] = field(default_factory=dict)
    denoiser_path: str | None = None
    init_weights: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "denoise" and self.denoiser_path is not None:
            raise ValueError("task 'denoise' trains a fresh denoiser; denoiser_path is for 'segment' and 'joint'")
        # freezing, not normalising: the values stay equal to the arguments
        object.__setattr__(self, "model_kwargs", _read_only(self.model_kwargs))
        object.__setattr__(self, "denoiser", _read_only(self.denoiser))

    def __reduce__(self):
        # pickle and copy.deepcopy: rebuild from plain dicts (a mappingproxy does not pickle)
        return type(self), (self.task, self.base_channels, dict(self.model_kwargs), dict(self.denoiser),
                            self.denoiser_path, self.init_weights)

    def build_denoiser(self) -> DenoisingUNet:
        """A fresh :class:`DenoisingUNet` (draws its weights from the global generator)."""
        return DenoisingUNet(**{"base_channels": self.base_channels, **copy.deepcopy(dict(self.denoiser))})

    def build_segmenter(self) -> UNet:
        """A fresh segmentation :class:`UNet` (draws its weights from the global generator)."""
        if self.model_kwargs:
            return UNet(base_channels=self.base_channels, **copy.deepcopy(dict(self.model_kwargs)))
        return UNet.from_config(paper_config(self.base_channels))

    def combine(self, segmenter: UNet, denoiser: DenoisingUNet | None = None) -> torch.nn.Module:
        """The network of ``task`` around ``segmenter`` (not for ``"denoise"``).

        Parameters
        ----------
        segmenter : UNet
            The segmentation network; its weights are kept.
        denoiser : DenoisingUNet, optional
            The trained denoiser of ``denoiser_path`` (required exactly when
            ``denoiser_path`` is set); without one, task ``"joint"`` draws a
            fresh denoiser from the global generator.

        Returns
        -------
        torch.nn.Module
            ``segmenter`` itself for ``"segment"`` without ``denoiser_path``,
            otherwise a :class:`DenoiseSegment` (denoiser frozen for
            ``"segment"``).
        """
        if self.task == "denoise":
            raise ValueError("task 'denoise' has no segmenter; use build_denoiser")
        if (denoiser is None) != (self.denoiser_path is None):
            raise ValueError("pass the denoiser loaded from denoiser_path exactly when denoiser_path is set "
                             "(initial_model does)")
        if self.task == "segment" and self.denoiser_path is None:
            return segmenter
        if denoiser is not None and not isinstance(denoiser, DenoisingUNet):
            raise ValueError(f"denoiser_path {self.denoiser_path} holds a {type(denoiser).__name__}, not a denoiser")
        denoiser_config = denoiser.config if denoiser is not None else self.build_denoiser().config
        model = DenoiseSegment(denoiser=denoiser_config, segmenter=segmenter.config,
                               freeze_denoiser=self.task == "segment")
        model.segmenter.load_state_dict(segmenter.state_dict())
        if denoiser is not None:
            model.denoiser.load_state_dict(denoiser.state_dict())
        return model


@dataclass(frozen=True)
class DataConfig:
    """Crops and batches (part of :class:`TrainConfig`).

    Parameters
    ----------
    crop : int
        Side of the square training crops [image pixels].
    val_crop : int, optional
        Side of the (fixed) validation crops; default ``crop``.
    label_factor : int
        Image pixels per label pixel.
    augment : bool
        Random flips along x / y (never 90 degree rotations).
    focus : float
        Probability that a training or validation crop is placed on a
        labelled column rather than uniformly (see ``CropDataset``).
    batch_size : int
        Crops per optimisation step (per process).
    val_batch_size : int, optional
        Crops per validation forward pass; default ``batch_size``.
    input_binning : int
        Bin the clean images ``input_binning x input_binning`` before the
        noise is drawn (:func:`segdepth.data.preprocess.bin_dataset`): the network
        sees fewer, larger pixels (the fast model of ``segdepth predict``,
        with ``model_kwargs={"output_factor": label_factor // input_binning}``).
        ``lam``, ``lam_range``, ``crop``, ``val_crop`` and ``label_factor``
        stay in units of the dataset's pixels; the noise of a binned pixel is
        drawn at ``input_binning**2 * lam``, which is the distribution of a
        binned noisy frame. The model card records the binned pixel size and
        the dose per binned pixel. Segmentation task only.
    """

    crop: int = 256
    val_crop: int | None = None
    label_factor: int = 4
    augment: bool = True
    focus: float = 0.0
    batch_size: int = 4
    val_batch_size: int | None = None
    input_binning: int = 1

    def __post_init__(self) -> None:
        _check_positive_int(self, "batch_size", "crop", "label_factor", "input_binning")
        _check_positive_int(self, "val_batch_size", "val_crop", optional=True)
        b = self.input_binning
        for name in ("label_factor", "crop", "val_crop"):
            value = getattr(self, name)
            if value is not None and value % b:
                raise ValueError(f"{name}={value} must be a multiple of input_binning={b}")


@dataclass(frozen=True)
class NoiseConfig:
    """Dose of the training and validation noise (part of :class:`TrainConfig`).

    Exactly one of ``lam`` and ``lam_range`` is set; :meth:`from_doses`
    builds one from the keywords of :class:`TrainConfig` (either, or
    neither for the default dose).

    Parameters
    ----------
    lam : float, optional
        One dose [e/pixel in vacuum]; 2.5 (the paper's main value) by default.
    lam_range : (float, float), optional
        ``(lo, hi)``: draw every sample's dose log-uniformly in this range
        (a dose-robust model).
    """

    lam: float | None = 2.5
    lam_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.lam is not None and self.lam_range is not None:
            raise ValueError("give either lam (one dose) or lam_range (log-uniform doses), not both")
        if self.lam is None and self.lam_range is None:
            raise ValueError("give lam (one dose) or lam_range (log-uniform doses)")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam must be a finite positive dose [e/pixel], got {self.lam!r}")
        if self.lam_range is not None:
            if not isinstance(self.lam_range, tuple) or len(self.lam_range) != 2:
                raise ValueError(f"lam_range must be a tuple (lo, hi) (NoiseConfig.from_doses converts a "
                                 f"sequence), got {self.lam_range!r}")
            lo, hi = self.lam_range
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"lam_range must be (lo, hi) with 0 < lo <= hi, got {self.lam_range!r}")

    @classmethod
    def from_doses(cls, lam: float | None = None, lam_range=None) -> NoiseConfig:
        """The noise of ``lam`` or ``lam_range`` (any pair of numbers); 2.5 if neither is given.

        Raises
        ------
        ValueError
            If both are given, or either is not a valid dose.
        """
        if lam is not None and lam_range is not None:
            raise ValueError("give either lam (one dose) or lam_range (log-uniform doses), not both")
        if lam_range is None:
            return cls(lam=2.5 if lam is None else lam)
        try:
            lo, hi = (float(v) for v in lam_range)
        except (TypeError, ValueError):
            raise ValueError(f"lam_range must be (lo, hi) with 0 < lo <= hi, got {lam_range!r}") from None
        return cls(lam=None, lam_range=(lo, hi))


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training objective (part of :class:`TrainConfig`).

    Parameters
    ----------
    class_balance : float
        Exponent ``p`` of the class weights ``(frequency of class d among the
        labelled pixels of the training split) ** -p`` for d = 1..10,
        normalised to mean 1 over labelled pixels; background keeps weight 1.
        They multiply the weight map. 0 (default) disables them, 0.5 is
        inverse square-root frequency, 1 inverse frequency.
    class_weight_max : float
        Upper limit of a class weight.
    denoise_weight : float
        Weight of the MSE term of the ``"joint"`` loss.
    """

    class_balance: float = 0.0
    class_weight_max: float = 10.0
    denoise_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.denoise_weight) and self.denoise_weight >= 0):
            raise ValueError(f"denoise_weight must be finite and >= 0, got {self.denoise_weight!r}")
        if self.class_balance < 0 or self.class_weight_max < 1:
            raise ValueError("class_balance must be >= 0 and class_weight_max >= 1")


@dataclass(frozen=True)
class OptimiserConfig:
    """Adam and its learning-rate schedule (part of :class:`TrainConfig`).

    Parameters
    ----------
    lr : float
        Initial Adam learning rate.
    lr_schedule : {"plateau", "cosine", "constant"}
        ``"plateau"``: multiply by ``lr_factor`` after ``lr_patience`` epochs
        without a better validation loss; ``"cosine"``: cosine annealing from
        ``lr`` to ``min_lr`` over ``epochs``.
    lr_factor, lr_patience, min_lr : float, int, float
        Parameters of the schedule.
    """

    lr: float = 1e-3
    lr_schedule: str = "plateau"
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_lr: float = 1e-6

    def __post_init__(self) -> None:
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_patience < 0:
            raise ValueError(f"lr_patience must be >= 0, got {self.lr_patience}")


@dataclass(frozen=True)
class RunConfig:
    """Length, stopping, seed and threads of a run (part of :class:`TrainConfig`).

    Parameters
    ----------
    epochs : int
        Maximum number of epochs.
    steps_per_epoch : int, optional
        Cap on the optimisation steps per epoch (default: one pass over the
        training set, last incomplete batch dropped).
    patience : int
        Early stopping: stop after this many epochs without a lower
        validation loss.
    seed : int
        Seed of initialisation, crops, flips, shuffling and noise.
    num_threads : int
        ``torch.set_num_threads`` during training.
    max_minutes : float, optional
        Wall-clock budget of one call of :func:`train` [min]; training stops
        cleanly after the epoch in which it is exceeded (resume to continue).
    """

    epochs: int = 100
    steps_per_epoch: int | None = None
    patience: int = 10
    seed: int = 0
    num_threads: int = 2
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        _check_positive_int(self, "epochs", "num_threads")
        _check_positive_int(self, "steps_per_epoch", optional=True)
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be None or > 0, got {self.max_minutes!r}")


_PARTS = {
    "model": ModelConfig,
    "data": DataConfig,
    "noise": NoiseConfig,
    "loss": LossConfig,
    "optimiser": OptimiserConfig,
    "run": RunConfig,
}
# The flat settings in the order of TrainConfig.to_dict (that of the model cards and checkpoints written so far).
_FLAT = (
    "base_channels", "model_kwargs", "lam", "lam_range", "crop", "val_crop", "label_factor", "augment", "focus",
    "batch_size", "val_batch_size", "epochs", "steps_per_epoch", "lr", "lr_schedule", "lr_factor", "lr_patience",
    "min_lr", "patience", "class_balance", "class_weight_max", "seed", "num_threads", "max_minutes", "task",
    "denoiser", "denoiser_path", "denoise_weight", "input_binning", "init_weights",
)
_PART_OF = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}
assert sorted(_PART_OF) == sorted(_FLAT), "every setting belongs to exactly one part"


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Settings of one training run (all JSON-serialisable), composed of frozen parts.

    Built from the flat settings, ``TrainConfig(lam=..., crop=..., lr=...)``
    (any of the parameters of the parts; missing ones take their defaults),
    or from whole parts, ``TrainConfig(model=ModelConfig(...), lr=...)`` (a
    part and settings of that same part cannot both be given). Every flat
    setting is also an attribute (``cfg.lr`` is ``cfg.optimiser.lr``), and
    :meth:`to_dict` / :meth:`from_dict` use the flat form.

    Parameters
    ----------
    model : ModelConfig
        ``task``, ``base_channels``, ``model_kwargs``, ``denoiser``,
        ``denoiser_path``, ``init_weights``.
    data : DataConfig
        ``crop``, ``val_crop``, ``label_factor``, ``augment``, ``focus``,
        ``batch_size``, ``val_batch_size``, ``input_binning``.
    noise : NoiseConfig
        ``lam`` or ``lam_range`` (built with :meth:`NoiseConfig.from_doses`:
        ``lam`` 2.5 if neither is given).
    loss : LossConfig
        ``class_balance``, ``class_weight_max``, ``denoise_weight``.
    optimiser : OptimiserConfig
        ``lr``, ``lr_schedule``, ``lr_factor``, ``lr_patience``, ``min_lr``.
    run : RunConfig
        ``epochs``, ``steps_per_epoch``, ``patience``, ``seed``,
        ``num_threads``, ``max_minutes``.
    **settings
        Flat settings of the parts not given; see the parts for their
        meaning.

    Raises
    ------
    TypeError
        For an unknown setting, or a part given together with its settings.
    ValueError
        For an invalid value, or ``input_binning > 1`` outside the
        segmentation task.
    """

    model: ModelConfig
    data: DataConfig
    noise: NoiseConfig
    loss: LossConfig
    optimiser: OptimiserConfig
    run: RunConfig

    def __init__(self, *, model: ModelConfig | None = None, data: DataConfig | None = None,
                 noise: NoiseConfig | None = None, loss: LossConfig | None = None,
                 optimiser: OptimiserConfig | None = None, run: RunConfig | None = None, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_PART_OF))
        if unknown:
            raise TypeError(f"TrainConfig got unexpected settings: {', '.join(unknown)}")
        given = {"model": model, "data": data, "noise": noise, "loss": loss, "optimiser": optimiser, "run": run}
        for name, cls in _PARTS.items():
            mine = {key: value for key, value in settings.items() if _PART_OF[key] == name}
            part = given[name]
            if part is None:
                part = NoiseConfig.from_doses(**mine) if cls is NoiseConfig else cls(**mine)
            elif mine:
                raise TypeError(f"give {name}= or its settings ({', '.join(sorted(mine))}), not both")
            elif not isinstance(part, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(part).__name__}")
            object.__setattr__(self, name, part)  # construction: what a frozen dataclass's own __init__ does
        if self.data.input_binning > 1 and self.model.task != "segment":
            raise ValueError("input_binning applies to the segmentation task only")

    def to_dict(self) -> dict[str, Any]:
        """The flat settings as a JSON-compatible dict (tuples become lists), as written into cards and checkpoints."""
        flat = {name: getattr(self, name) for name in _FLAT}
        return json.loads(json.dumps(flat, default=_json_default))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; settings missing from ``values`` (older files) take their defaults."""
        return cls(**values)

    def build_model(self, denoiser: DenoisingUNet | None = None) -> torch.nn.Module:
        """A freshly initialised network for ``task``, seeded from ``seed``; reads no file.

        The global random state is left untouched. :func:`initial_model`
        gives the network a run starts from (with the files of
        ``denoiser_path`` and ``init_weights``).

        Parameters
        ----------
        denoiser : DenoisingUNet, optional
            The trained denoiser of ``denoiser_path``; required exactly when
            ``denoiser_path`` is set.
        """
        with _init_rng(self.seed):
            if self.task == "denoise":
                return self.model.build_denoiser()
            return self.model.combine(self.model.build_segmenter(), denoiser)


def _flat_property(name: str) -> property:
    """Read-only attribute ``name`` of a :class:`TrainConfig`: that setting of its part."""
    part = _PART_OF[name]
    return property(operator.attrgetter(f"{part}.{name}"),
                    doc=f"``{part}.{name}`` (see :class:`{_PARTS[part].__name__}`).")


for _name in _FLAT:
    setattr(TrainConfig, _name, _flat_property(_name))
del _name


@contextlib.contextmanager
def _init_rng(seed: int) -> Iterator[None]:
    """The global torch generator seeded from ``(seed, "init")``, restored on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, _INIT))
        yield


def initial_model(cfg: TrainConfig, *, init_weights: bool = True) -> torch.nn.Module:
    """The network a fresh run of ``cfg`` starts from.

    Seeded weights (:meth:`TrainConfig.build_model`), with the trained
    denoiser of ``denoiser_path`` and (unless ``init_weights=False``) the
    segmentation weights of ``init_weights`` read from their files. The
    global random state is left untouched; the draws are those of an
    uninterrupted run of the same seed.

    Parameters
    ----------
    cfg : TrainConfig
        Settings of the run.
    init_weights : bool
        Load ``cfg.init_weights`` (``False`` when a checkpoint's weights
        replace them anyway).

    Raises
    ------
    ValueError
        If ``init_weights`` holds another architecture, or ``denoiser_path``
        no denoiser.
    """
    with _init_rng(cfg.seed):
        if cfg.task == "denoise":
            return cfg.model.build_denoiser()
        segmenter = cfg.model.build_segmenter()
        if init_weights and cfg.init_weights is not None:
            _load_same_architecture(segmenter, cfg.init_weights)
        trained = load_model(cfg.denoiser_path)[0] if cfg.denoiser_path is not None else None
        return cfg.model.combine(segmenter, trained)


def _load_same_architecture(model: torch.nn.Module, path: str) -> None:
    """Copy the weights of the model stored at ``path`` into ``model`` (same configuration required).

    One exception: a model without the input flattening (``flatten_sigma``, a layer without weights) may
    start a run that adds it (fine-tuning into that representation); the reverse is refused, since weights
    trained on flattened inputs do not read raw ones.
    """
    trained = load_model(path)[0]
    config = getattr(trained, "config", None)
    if isinstance(config, dict) and "flatten_sigma" not in config and "flatten_sigma" in getattr(model, "config", {}):
        config = {**config, "flatten_sigma": model.config["flatten_sigma"]}
    if type(trained) is not type(model) or config != getattr(model, "config", None):
        raise ValueError(
            f"init_weights {path} holds a {type(trained).__name__} with configuration "
            f"{getattr(trained, 'config', None)}, not the {type(model).__name__} {getattr(model, 'config', None)} "
            "of this run"
        )
    model.load_state_dict(trained.state_dict())


def class_weights(label, *, power: float, max_weight: float = 10.0, n_classes: int = N_CLASSES) -> np.ndarray:
    """Per-class loss weights that up-weight rare depth classes.

    Parameters
    ----------
    label : array_like
        Integer label maps of the training split (any shape).
    power : float
        Weight of depth class ``d >= 1`` is ``frequency_d ** -power``, scaled
        so that the mean weight over labelled (``label > 0``) pixels is 1.
        0 gives all ones.
    max_weight : float
        Upper limit (also the weight of classes absent from ``label``).
    n_classes : int
        Number of classes.

    Returns
    -------
    numpy.ndarray
        (n_classes,) float32; entry 0 (background) is 1.
    """
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {label.min()}..{label.max()}")
    weights = np.ones(n_classes, dtype=np.float64)
    counts = np.bincount(label.ravel().astype(np.int64), minlength=n_classes)[1:].astype(np.float64)
    if power == 0 or counts.sum() == 0:
        return weights.astype(np.float32)
    present = counts > 0
    raw = np.full(n_classes - 1, np.inf)
    raw[present] = (counts[present] / counts.sum()) ** -power
    raw[present] /= (counts[present] * raw[present]).sum() / counts.sum()
    weights[1:] = np.minimum(raw, max_weight)
    return weights.astype(np.float32)


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed for ``torch.Generator`` derived from integer keys."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _noisy_input(clean: torch.Tensor, generator: torch.Generator, *, lam, lam_range) -> torch.Tensor:
    """Model input ``normalise(Poisson(lam c) / lam)``; one dose per sample for a ``lam_range``."""
    if lam_range is not None:
        lo, hi = lam_range
        u = torch.rand(clean.shape[0], 1, 1, 1, generator=generator, dtype=clean.dtype)
        lam = lo * (hi / lo) ** u
    return normalise(poisson_noise_torch(clean, lam, generator=generator))


def _sampling(ds: xr.Dataset) -> float:
    if "sampling" in ds.attrs:
        return float(ds.attrs["sampling"])
    x = np.asarray(ds["x"].values, dtype=float)
    if x.size < 2:
        raise ValueError("cannot tell the pixel size: no 'sampling' attribute and fewer than 2 x coordinates")
    return float(np.mean(np.diff(x)))


def _data_parameters(ds: xr.Dataset):
    parameters = ds.attrs.get("parameters")
    if isinstance(parameters, str):
        try:
            return json.loads(parameters)
        except json.JSONDecodeError:
            return parameters
    return parameters


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: CropDataset,
    *,
    seed: int,
    lam: float | None = None,
    lam_range: tuple[float, float] | None = None,
    batch_size: int = 4,
    class_weight: torch.Tensor | None = None,
    task: str = "segment",
    denoise_weight: float = 1.0,
) -> dict[str, float]:
    """Validation loss and the paper's metrics with fixed (seeded) noise.

    Sample ``i`` of ``dataset`` always gets the same noise (and dose, for a
    ``lam_range``), drawn from ``(seed, i, "validation")``, so successive
    epochs are compared on identical inputs. The model is put in eval mode
    and returned to its previous mode.

    Returns
    -------
    dict
        ``loss`` (the training objective of ``task``: eq. 6 over the whole
        set with class weights, the MSE of the denoised image, or their
        weighted sum), ``mse`` (tasks ``"denoise"``/``"joint"``; NaN
        otherwise) and the entries of :func:`segdepth.learn.metrics.summarise` on
        the argmax prediction against ``label`` (NaN for ``"denoise"``).
    """
    if (lam is None) == (lam_range is None):
        raise ValueError("give exactly one of lam and lam_range")
    was_training = model.training
    model.eval()
    total, weight_sum, squared, n_pixels = 0.0, 0.0, 0.0, 0
    preds, labels, centers = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate(items)
            inputs = []
            for item in items:
                generator = torch.Generator().manual_seed(_derived_seed(seed, int(item["index"]), 0, _VALIDATION))
                inputs.append(_noisy_input(item["image"][None], generator, lam=lam, lam_range=lam_range))
            device = next(model.parameters()).device
            inputs = torch.cat(inputs).to(device)
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            if task != "segment":
                denoised = model(inputs) if task == "denoise" else model.denoise(inputs)
                squared += float(((denoised - normalise(batch["image"])) ** 2).sum(dtype=torch.float64))
                n_pixels += denoised.numel()
                if task == "denoise":
                    continue
                logits = model.segmenter(denoised)
            else:
                logits = model(inputs)
            weight = batch["weight"]
            if class_weight is not None:
                weight = weight * class_weight.to(device)[batch["label"]]
            nll = F.cross_entropy(logits, batch["label"], reduction="none")
            total += float((weight * nll).sum(dtype=torch.float64))
            weight_sum += float(weight.sum(dtype=torch.float64))
            preds.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
            labels.append(batch["label"].to(torch.uint8).cpu().numpy())
            centers.append(batch["center_mask"].cpu().numpy())
    finally:
        model.train(was_training)
    mse = squared / n_pixels if n_pixels else math.nan
    if task == "denoise":
        return {"loss": mse, "mse": mse, **{name: math.nan for name in METRIC_NAMES}}
    metrics = summarise(np.concatenate(preds), np.concatenate(labels), np.concatenate(centers))
    loss = total / weight_sum if weight_sum > 0 else 0.0
    if task == "joint":
        loss += denoise_weight * mse
    return {"loss": loss, "mse": mse, **{k: float(v) for k, v in metrics.items()}}


# ---------------------------------------------------------------------------
# Files: atomic writes, checkpoints, history
# ---------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(_encode_json(obj), indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _encode_json(obj: Any) -> Any:
    """Make ``obj`` strict JSON: non-finite floats become ``{"float": "inf"}`` etc."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"float": repr(obj)}
    if isinstance(obj, dict):
        return {str(k): _encode_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_json(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _encode_json(obj.item())
    return obj


def _decode_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"float"}:
            return float(obj["float"])
        return {k: _decode_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_json(v) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into named tensors and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entries in rest["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [dict(group) for group in rest["param_groups"]]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def load_checkpoint(out_dir) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Read the last complete checkpoint of ``out_dir``: ``(json_state, tensors)``, or None if none.

    Uses only :mod:`json` and :mod:`safetensors` (no pickle). Raises
    ``ValueError`` if the tensor file does not match the checksum recorded in
    the JSON file.
    """
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = _decode_json(json.loads(path.read_text()))
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a SegDepth training checkpoint")
    tensor_path = out_dir / state["tensors"]
    if _sha256(tensor_path) != state["sha256"]:
        raise ValueError(f"{tensor_path} does not match the checksum in {path}; the checkpoint is corrupt")
    return state, load_file(tensor_path)


def checkpoint_model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict among a checkpoint's tensors (:func:`load_checkpoint`; the optimiser's are left out)."""
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def _save_checkpoint(out_dir: Path, state: dict[str, Any], model, optimizer) -> None:
    optimizer_tensors, optimizer_rest = _optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors)
    name = f"checkpoint-{state['epoch']:04d}.safetensors"
    atomic_write(out_dir / name, lambda tmp: save_file(tensors, tmp), suffix=".safetensors")
    state = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        **state,
        "tensors": name,
        "sha256": _sha256(out_dir / name),
        "optimizer": optimizer_rest,
    }
    _write_json(out_dir / CHECKPOINT_NAME, state)  # the commit point
    for old in out_dir.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink()


def history_dataset(history: list[dict[str, float]], cfg: TrainConfig) -> xr.Dataset:
    """Per-epoch records as an xarray Dataset with dim ``epoch``."""
    described = {
        "train_loss": ("", "training loss (eq. 6, mean over steps)"),
        "val_loss": ("", "validation loss (eq. 6, fixed noise)"),
        "lr": ("", "learning rate"),
        "pixelwise_accuracy": ("", "validation pixelwise accuracy"),
        "center_accuracy": ("", "validation center accuracy"),
        "real_atom_detection_rate": ("", "validation real atom detection rate"),
        "hallucination_rate": ("", "validation hallucinated atom rate"),
        "val_mse": ("", "validation MSE of the denoised image (normalised intensities)"),
        "seconds": ("s", "wall-clock time of the epoch"),
    }
    epochs = np.array([record["epoch"] for record in history], dtype=np.int64)
    data_vars = {}
    for name, (units, long_name) in described.items():
        values = np.array([record.get(name, np.nan) for record in history], dtype=np.float64)
        attrs = {"long_name": long_name, **({"units": units} if units else {})}
        data_vars[name] = xr.DataArray(values, dims="epoch", attrs=attrs)
    ds = xr.Dataset(data_vars, coords={"epoch": ("epoch", epochs, {"long_name": "epoch (0-based)"})})
    ds.attrs = {"parameters": json.dumps(cfg.to_dict()), "segdepth_version": __version__, "seed": cfg.seed}
    return ds



# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, out_dir: Path) -> None:
    current = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # settings added after a checkpoint was written take their defaults
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    free = set(_RESUMABLE_CHANGES) - ({"epochs"} if cfg.lr_schedule == "cosine" else set())
    changed = sorted(k for k in set(saved) | set(current) if k not in free and saved.get(k) != current.get(k))
    if changed:
        raise ValueError(
            f"the checkpoint in {out_dir} was written with different settings ({', '.join(changed)}); "
            "resume with the same TrainConfig, or pass resume=False / a new out_dir"
        )


def _make_scheduler(cfg: TrainConfig, optimizer):
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    return None


def train(
    cfg: TrainConfig,
    train_ds: xr.Dataset,
    val_ds: xr.Dataset,
    out_dir,
    *,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    device: str | torch.device | None = None,
) -> xr.Dataset:
    """Train a UNet on ``train_ds``, validate on ``val_ds``, write results to ``out_dir``.

    Parameters
    ----------
    cfg : TrainConfig
        Settings of the run.
    train_ds, val_ds : xarray.Dataset
        Simulated datasets in the format of ``docs/conventions.md`` (clean
        images; the noise is drawn here). Split them by structure
        (:func:`segdepth.learn.torchdata.split_indices`).
    out_dir : str or path-like
        Folder for checkpoints, the best model and the history (created).
    resume : bool
        Continue from the last complete checkpoint in ``out_dir`` if there is
        one (it must have been written with the same settings, apart from
        ``epochs``, ``max_minutes`` and ``num_threads``). ``False`` starts
        afresh and overwrites.
    progress : bool
        Show a tqdm progress bar with the running loss.
    callback : callable, optional
        ``callback(epoch, record)`` after each epoch's checkpoint is written.
    device : str or torch.device, optional
        Where the network runs (default ``"cpu"``; e.g. ``"cuda"``). Noise
        is drawn on the CPU, so results do not depend on the device's
        random generator.

    Data parallelism
    ----------------
    Called in every process of an initialised :mod:`torch.distributed`
    process group (``torchrun``, see :mod:`segdepth.learn.distributed`), the
    network is wrapped in ``DistributedDataParallel``: every rank takes its
    own ``batch_size`` crops per step (the global batch is ``world_size x
    batch_size``; an epoch is still one pass over the training split), the
    gradients are averaged, batch-norm statistics are broadcast from rank 0
    before each validation, every rank validates identically and takes the
    same stopping decisions, and only rank 0 writes files. A checkpoint
    records the world size; resuming with another one is refused.

    Returns
    -------
    xarray.Dataset
        The history (also in ``out_dir / "history.nc"``), with dim ``epoch``:
        ``train_loss``, ``val_loss``, ``lr``, the four metrics of
        :func:`segdepth.learn.metrics.summarise` (``pixelwise_accuracy``,
        ``center_accuracy``, ``real_atom_detection_rate``,
        ``hallucination_rate``) and ``seconds``. Its attribute ``stopped``
        says why training ended ("early stopping", "time budget", "epochs").

    Notes
    -----
    The best model is saved with :func:`segdepth.learn.modelio.save_model` as
    ``out_dir / "model.safetensors"``; its card records the architecture,
    ``sampling`` [A], ``label_factor``, ``lam`` / ``lam_range``, the
    normalisation, the data parameters, ``val_metrics`` of the best epoch,
    ``best_epoch``, and (updated when the call returns) ``epochs_run`` and
    ``training_seconds``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, train_ds, val_ds, out_dir, resume=resume, progress=progress, callback=callback,
                      device=torch.device(device or "cpu"), processes=current_processes())
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig, train_ds, val_ds, out_dir: Path, *, resume: bool, progress: bool, callback,
           device: torch.device, processes: SingleProcess) -> xr.Dataset:
    """The loop of :func:`train` over its steps (see the module docstring)."""
    started = time.monotonic()
    data = _prepare_data(cfg, train_ds, val_ds, processes)
    fit, state = _restore_or_initialise(cfg, data, out_dir, resume=resume, processes=processes, device=device)
    run = _Run(cfg, out_dir, device, processes, _Clock(started, seconds_before=state.training_seconds))
    first_epoch = state.epoch + 1
    net = processes.wrap_model(fit.model, device)
    fit.model.train()
    last = cfg.epochs if state.stopped is None else first_epoch  # a run stopped early stays stopped
    for epoch in range(first_epoch, last):
        epoch_started, lr = time.monotonic(), fit.optimizer.param_groups[0]["lr"]
        train_loss = _train_epoch(run, data, net, fit, epoch, progress=progress and processes.is_main)
        record = _end_epoch(run, data, fit, state, epoch, train_loss=train_loss, lr=lr, started=epoch_started)
        if progress and processes.is_main:
            _report(epoch, record)
        if callback is not None:
            callback(epoch, record)
        if state.stopped == "epochs":
            state.stopped = None  # a later call with more epochs may continue
        if state.stopped is not None:
            break
    return _write_results(run, fit, state, ran=state.epoch >= first_epoch)


@dataclass(frozen=True)
class _Clock:
    """Wall-clock time of one call of :func:`train`, and of the run before it (restored from a checkpoint)."""

    started: float
    seconds_before: float = 0.0

    def training_seconds(self) -> float:
        """Seconds of the whole run so far, earlier calls included."""
        return self.seconds_before + time.monotonic() - self.started

    def over(self, max_minutes: float | None) -> bool:
        """Whether this call has run longer than ``max_minutes``."""
        return max_minutes is not None and time.monotonic() - self.started > 60 * max_minutes


@dataclass(frozen=True)
class _Run:
    """What every step of one call of :func:`train` reads: settings, folder, device, processes, clock."""

    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    processes: SingleProcess
    clock: _Clock


@dataclass(frozen=True)
class _Data:
    """The training material of a run, in model pixels (see :func:`_prepare_data`)."""

    train_ds: xr.Dataset  # binned
    train_set: CropDataset
    val_set: CropDataset
    label_factor: int  # model pixels per label pixel
    class_weight: torch.Tensor
    batch_size: int  # per process and step
    n_steps: int  # per epoch
    lam: float | None  # doses per model pixel
    lam_range: tuple[float, float] | None


@dataclass(frozen=True)
class _Fit:
    """The network and what optimises it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


@dataclass
class _State:
    """The progress of a run: what a checkpoint holds besides tensors, the settings and the scheduler."""

    epoch: int = -1
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    training_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None

    _SAVED = ("epoch", "best_val_loss", "best_epoch", "bad_epochs", "training_seconds")


def _prepare_data(cfg: TrainConfig, train_ds: xr.Dataset, val_ds: xr.Dataset, processes: SingleProcess) -> _Data:
    """Step 1: binned datasets, crop datasets, class weights, batch size, steps per epoch, model-pixel doses.

    Raises
    ------
    ValueError
        If the training split cannot give every process a sample per step.
    """
    b = cfg.input_binning
    train_ds, val_ds = bin_dataset(train_ds, b), bin_dataset(val_ds, b)
    label_factor = cfg.label_factor // b
    train_set = CropDataset(
        train_ds, crop=cfg.crop // b, label_factor=label_factor, augment=cfg.augment, seed=cfg.seed, focus=cfg.focus
    )
    val_set = CropDataset(
        val_ds, crop=(cfg.val_crop or cfg.crop) // b, label_factor=label_factor, augment=False, seed=cfg.seed,
        focus=cfg.focus,
    )
    class_weight = torch.from_numpy(
        class_weights(train_set.label, power=cfg.class_balance, max_weight=cfg.class_weight_max)
    )
    world = processes.world
    batch_size = min(cfg.batch_size, len(train_set) // world)
    if batch_size < 1:
        raise ValueError(f"{len(train_set)} training samples cannot feed {world} processes")
    n_steps = len(train_set) // (batch_size * world)
    if cfg.steps_per_epoch is not None:
        n_steps = min(n_steps, cfg.steps_per_epoch)
    # doses per model pixel: a binned pixel collects b**2 times the electrons
    lam = None if cfg.lam_range is not None else cfg.lam * b**2
    lam_range = None if cfg.lam_range is None else tuple(v * b**2 for v in cfg.lam_range)
    return _Data(train_ds, train_set, val_set, label_factor, class_weight, batch_size, n_steps, lam, lam_range)


def _restore_or_initialise(cfg: TrainConfig, data: _Data, out_dir: Path, *, resume: bool, processes: SingleProcess,
                           device: torch.device) -> tuple[_Fit, _State]:
    """Step 2: the network, Adam and the scheduler, fresh or as the last checkpoint left them.

    A fresh run starts from :func:`initial_model`. With ``resume``, a
    checkpoint in ``out_dir`` (same settings and number of processes
    required) restores the weights, the optimiser and scheduler state and the
    progress; a run stopped early stays stopped. Without ``resume``, an old
    checkpoint is removed (once the settings have been checked against the
    data).

    Raises
    ------
    ValueError
        If the checkpoint was written with other settings or another number
        of processes, or the crops do not fit the network.
    """
    world = processes.world
    checkpoint = load_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        _check_resumable(checkpoint[0]["config"], cfg, out_dir)
        if checkpoint[0].get("world_size", 1) != world:
            raise ValueError(f"the checkpoint in {out_dir} was written by {checkpoint[0].get('world_size', 1)} "
                             f"processes; resume it with the same number, not {world}")
    model = initial_model(cfg, init_weights=checkpoint is None)  # a checkpoint's weights replace init_weights
    _check_fits(cfg, data, model)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    fit, state = _Fit(model, optimizer, _make_scheduler(cfg, optimizer)), _State()
    if not resume and (out_dir / CHECKPOINT_NAME).exists():
        (out_dir / CHECKPOINT_NAME).unlink()
    if checkpoint is not None:
        saved, tensors = checkpoint
        model.load_state_dict(checkpoint_model_state(tensors))
        optimizer.load_state_dict(_optimizer_state(tensors, saved["optimizer"]))
        if fit.scheduler is not None:
            fit.scheduler.load_state_dict(saved["scheduler"])
        state = _State(**{k: saved[k] for k in _State._SAVED}, history=saved["history"],
                       stopped=saved["stopped"] if saved["stopped"] == "early stopping" else None)
    return fit, state


def _check_fits(cfg: TrainConfig, data: _Data, model: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless the crops and the label grid fit ``model``."""
    for name, crop in (("crop", data.train_set.crop), ("val_crop", data.val_set.crop)):
        if crop % model.required_multiple:
            raise ValueError(
                f"{name}={crop} must be a multiple of the model's required_multiple={model.required_multiple}"
            )
    if cfg.task != "denoise" and model.output_factor != data.label_factor:
        raise ValueError(f"the model's output is {model.output_factor}x coarser than its input, the labels "
                         f"{data.label_factor}x (label_factor={cfg.label_factor} / input_binning="
                         f"{cfg.input_binning}); set model_kwargs output_factor={data.label_factor}")


def _train_epoch(run: _Run, data: _Data, net: torch.nn.Module, fit: _Fit, epoch: int, *, progress: bool) -> float:
    """Step 3: the optimisation steps of ``epoch``; returns the mean training loss over steps and processes.

    Process ``rank`` takes part ``step * world + rank`` of the epoch's
    shuffled order in each step, with that part's noise. Afterwards every
    process holds rank 0's batch-norm statistics.
    """
    cfg, processes, device = run.cfg, run.processes, run.device
    data.train_set.set_epoch(epoch)
    order = np.random.default_rng([cfg.seed, epoch, _SHUFFLE]).permutation(len(data.train_set))
    class_weight = data.class_weight.to(device)
    losses = []
    bar = tqdm(total=data.n_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for step in range(data.n_steps):
        part = step * processes.world + processes.rank  # this process's share of the global batch
        batch = collate([data.train_set[i] for i in order[part * data.batch_size : (part + 1) * data.batch_size]])
        generator = torch.Generator().manual_seed(_derived_seed(cfg.seed, epoch, part, _NOISE))
        inputs = _noisy_input(batch["image"], generator, lam=data.lam, lam_range=data.lam_range)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        loss = _step_loss(cfg, net, inputs.to(device), batch, class_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at epoch {epoch}, step {step}; lower lr")
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    bar.close()
    for buffer in fit.model.buffers():  # identical models on every process before validating
        processes.broadcast(buffer)
    total = torch.tensor([float(np.mean(losses))], dtype=torch.float64, device=device)
    processes.all_reduce(total)
    return float(total) / processes.world


def _end_epoch(run: _Run, data: _Data, fit: _Fit, state: _State, epoch: int, *, train_loss: float, lr: float,
               started: float) -> dict[str, float]:
    """Step 4: validate, step the scheduler, decide on stopping, write the best model, history and checkpoint.

    Updates ``state`` (the early-stopping counters, the history, ``stopped``:
    "early stopping", "time budget" (rank 0's clock) or "epochs") and returns
    the epoch's history record. Every process takes the same decisions; only
    the main one writes, and all wait for it.
    """
    cfg, processes = run.cfg, run.processes
    val = evaluate(
        fit.model,
        data.val_set,
        seed=cfg.seed,
        lam=data.lam,
        lam_range=data.lam_range,
        batch_size=cfg.val_batch_size or cfg.batch_size,
        class_weight=data.class_weight,
        task=cfg.task,
        denoise_weight=cfg.denoise_weight,
    )
    over = torch.tensor([int(run.clock.over(cfg.max_minutes))], device=run.device)
    processes.broadcast(over)  # the time budget is rank 0's clock
    if isinstance(fit.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        fit.scheduler.step(val["loss"])
    elif fit.scheduler is not None:
        fit.scheduler.step()
    improved = val["loss"] < state.best_val_loss
    if improved:
        state.best_val_loss, state.best_epoch, state.bad_epochs = val["loss"], epoch, 0
    else:
        state.bad_epochs += 1
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val["loss"],
        "lr": lr,
        **{name: val[name] for name in METRIC_NAMES},
        "val_mse": val.get("mse", math.nan),
        "seconds": time.monotonic() - started,
    }
    state.history.append(record)
    state.epoch, state.training_seconds = epoch, run.clock.training_seconds()
    if state.bad_epochs >= cfg.patience:
        state.stopped = "early stopping"
    elif bool(over.item()):
        state.stopped = "time budget"
    elif epoch + 1 >= cfg.epochs:
        state.stopped = "epochs"
    if processes.is_main:
        if improved:
            save_model(fit.model, run.out_dir / MODEL_NAME, _best_model_card(run, data, fit.model, state, val))
        _write_history(run.out_dir, state.history, cfg, state.stopped)
        _save_checkpoint(run.out_dir, _checkpoint_state(run, data, fit, state), fit.model, fit.optimizer)
    processes.barrier()
    return record


def _write_results(run: _Run, fit: _Fit, state: _State, *, ran: bool) -> xr.Dataset:
    """Step 5: the whole run in the best model's card (if this call ran an epoch) and the final history.

    In a data-parallel run the history records every rank's weight checksum.
    Returns the history (only the main process writes it).
    """
    path = run.out_dir / MODEL_NAME
    if run.processes.is_main and ran and path.exists():
        _finalise_card(path, epochs_run=state.epoch + 1, seconds=state.training_seconds)
    checksums = _rank_checksums(fit.model, run.processes)
    run.processes.barrier()
    if not run.processes.is_main:
        return history_dataset(state.history, run.cfg)
    return _write_history(run.out_dir, state.history, run.cfg, state.stopped, checksums)


def _report(epoch: int, record: dict[str, float]) -> None:
    """One line per epoch below the progress bar."""
    values = {"loss": record["val_loss"], **{name: record[name] for name in METRIC_NAMES}, "mse": record["val_mse"]}
    tqdm.write(
        f"epoch {epoch + 1}: train {record['train_loss']:.4f}  val {values['loss']:.4f}  "
        + "  ".join(f"{name} {values[name]:.3f}" for name in (*METRIC_NAMES, "mse") if math.isfinite(values[name]))
        + f"  ({record['seconds']:.0f} s)"
    )


def _best_model_card(run: _Run, data: _Data, model: torch.nn.Module, state: _State, val: dict[str, float]):
    """The model card of the best model, written at ``state.best_epoch``."""
    cfg, world = run.cfg, run.processes.world
    return {
        "model_class": type(model).__name__,
        "sampling": _sampling(data.train_ds),
        "sampling_units": "A",
        "label_factor": data.label_factor,
        "lam": data.lam,
        "lam_range": list(data.lam_range) if data.lam_range is not None else None,
        "input_binning": cfg.input_binning,
        "dataset_lam": cfg.lam,
        "dataset_lam_range": list(cfg.lam_range) if cfg.lam_range is not None else None,
        "normalisation": NORMALISATION,
        "data_parameters": _data_parameters(data.train_ds),
        "train_config": cfg.to_dict(),
        "class_weights": data.class_weight.tolist(),
        "n_train": len(data.train_set),
        "n_val": len(data.val_set),
        "segdepth_version": __version__,
        **({"world_size": world} if world > 1 else {}),
        "training_seconds": state.training_seconds,
        "epochs_run": state.epoch + 1,
        "best_epoch": state.best_epoch,
        "val_metrics": _finite_or_none(
            {"val_loss": val["loss"], **({"val_mse": val["mse"]} if cfg.task != "segment" else {}),
             **{n: val[n] for n in METRIC_NAMES}}
        ),
    }


def _checkpoint_state(run: _Run, data: _Data, fit: _Fit, state: _State) -> dict[str, Any]:
    """What :func:`_save_checkpoint` writes to ``checkpoint.json`` besides its own entries."""
    return {
        "epoch": state.epoch,
        "config": run.cfg.to_dict(),
        **{k: getattr(state, k) for k in ("best_val_loss", "best_epoch", "bad_epochs", "training_seconds")},
        "stopped": state.stopped,
        "scheduler": fit.scheduler.state_dict() if fit.scheduler is not None else None,
        "class_weights": data.class_weight.tolist(),
        "history": state.history,
        "world_size": run.processes.world,
    }


def _step_loss(cfg: TrainConfig, model, inputs, batch, class_weight) -> torch.Tensor:
    """Training objective of one batch for ``cfg.task``."""
    if cfg.task == "denoise":
        return F.mse_loss(model(inputs), normalise(batch["image"]))
    weight = batch["weight"] * class_weight[batch["label"]]
    if cfg.task == "joint":
        logits, denoised = model(inputs, return_denoised=True)  # one forward (through a DDP wrapper too)
        ce = weighted_cross_entropy(logits, batch["label"], weight)
        return ce + cfg.denoise_weight * F.mse_loss(denoised, normalise(batch["image"]))
    return weighted_cross_entropy(model(inputs), batch["label"], weight)


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


def _finalise_card(path: Path, *, epochs_run: int, seconds: float) -> None:
    """Record the whole run (not just up to the best epoch) in the best model's card."""
    with torch.random.fork_rng(devices=[]):  # building the network draws initial weights
        model, card = load_model(path)
    card.update(epochs_run=epochs_run, training_seconds=seconds)
    save_model(model, path, card)


def _rank_checksums(model, processes: SingleProcess) -> list[str] | None:
    """SHA-256 of every rank's weights and batch-norm statistics (data-parallel runs only).

    Recorded in the history (attribute ``rank_checksums``): all equal when the
    ranks ended in step, as data-parallel training must.
    """
    if processes.world == 1:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return processes.all_gather_object(digest.hexdigest())


def _write_history(out_dir: Path, history, cfg: TrainConfig, stopped, checksums=None) -> xr.Dataset:
    ds = history_dataset(history, cfg)
    if checksums is not None:
        ds.attrs["rank_checksums"] = json.dumps(checksums)
        ds.attrs["world_size"] = len(checksums)
    ds.attrs["stopped"] = stopped or ("epochs" if history and history[-1]["epoch"] + 1 >= cfg.epochs else "")
    atomic_write(out_dir / HISTORY_NAME, lambda tmp: ds.to_netcdf(tmp), suffix=".nc")
    return ds
