"""The one bridge between the simulated xarray datasets and torch tensors.

:class:`CropDataset` cuts random crops, aligned to the label grid, out of a
dataset in the format of ``docs/conventions.md`` and returns them as tensors.
:func:`split_indices` splits a dataset into train / validation / test samples
so that no structure appears in two splits. :func:`collate` stacks crops into a
batch.

Augmentation keeps the [110] projection of fluorite valid: the projected cell
is 3.826 A x 5.411 A, so only mirror flips along x, along y, or both (a
180 degree rotation) map a simulated image onto another valid image. A
90 degree rotation would swap the two cell edges and is never produced.
Because pixel centres sit at ``(i + 0.5) * sampling`` on both grids, flipping
image and labels together keeps label pixel ``j`` over image pixels
``4j .. 4j + 3``.

Nothing here seeds a global random state: the crop and the flip of sample
``index`` in epoch ``epoch`` come from ``numpy.random.default_rng([seed,
epoch, index])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

__all__ = ["CropDataset", "collate", "split_indices"]

#: The four symmetry operations allowed on a [110] fluorite projection:
#: (flip along y, flip along x). (True, True) is the 180 degree rotation.
FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (False, True), (True, False), (True, True))

_VARIABLES = ("image", "label", "weight", "depth", "center_mask")


class CropDataset(torch.utils.data.Dataset):
    """Random label-grid-aligned crops of a simulated dataset, as tensors.

    Parameters
    ----------
    ds : xarray.Dataset
        Dataset with ``image`` (sample, y, x) and ``label``, ``weight``,
        ``depth``, ``center_mask`` (sample, label_y, label_x), the label grid
        ``label_factor`` times coarser than the image grid. Loaded into memory.
    crop : int or None
        Side of the square image crop [image pixels]; a multiple of
        ``label_factor``. The label crop has side ``crop // label_factor``.
        ``None`` returns whole images.
    label_factor : int
        Image pixels per label pixel along each axis.
    augment : bool
        Apply a random flip along x, y, or both (never a 90 degree rotation).
    seed : int
        Seed of the crops and flips; item ``index`` in epoch ``epoch`` is a
        function of ``(seed, epoch, index)`` only.
    focus : float
        Probability that a crop is placed to contain a random labelled (column)
        pixel rather than uniformly; simulated particles leave much of the
        field empty, and uniform crops waste steps on vacuum. 0 = uniform.

    Notes
    -----
    Each item is a dict of tensors: ``image`` (1, crop, crop) float32 clean
    intensity; ``label``, ``depth`` (c, c) int64 and ``weight`` (c, c)
    float32, ``center_mask`` (c, c) bool with ``c = crop // label_factor``;
    ``index`` (sample index), ``origin`` (y0, x0) of the crop [image pixels,
    before flipping], ``flip`` (flip_y, flip_x) as int64.
    """

    def __init__(
        self, ds: xr.Dataset, *, crop: int | None, label_factor: int = 4, augment: bool, seed: int, focus: float = 0.0
    ):
        if not 0.0 <= focus <= 1.0:
            raise ValueError(f"focus must be a probability within 0-1, got {focus!r}")
        self.focus = float(focus)
        missing = [name for name in _VARIABLES if name not in ds]
        if missing:
            raise ValueError(
                f"dataset lacks variables {missing}; expected {list(_VARIABLES)} (see docs/conventions.md)"
            )
        if int(label_factor) != label_factor or label_factor < 1:
            raise ValueError(f"label_factor must be a positive integer, got {label_factor!r}")
        self.label_factor = int(label_factor)
        self.image = np.ascontiguousarray(ds["image"].transpose("sample", "y", "x").values, dtype=np.float32)
        label_dims = ("sample", "label_y", "label_x")
        self.label = np.ascontiguousarray(ds["label"].transpose(*label_dims).values, dtype=np.uint8)
        self.weight = np.ascontiguousarray(ds["weight"].transpose(*label_dims).values, dtype=np.float32)
        self.depth = np.ascontiguousarray(ds["depth"].transpose(*label_dims).values, dtype=np.uint8)
        self.center_mask = np.ascontiguousarray(ds["center_mask"].transpose(*label_dims).values).astype(bool)
        n, height, width = self.image.shape
        label_shape = self.label.shape[1:]
        if label_shape != (height // self.label_factor, width // self.label_factor) or (
            height % self.label_factor or width % self.label_factor
        ):
            raise ValueError(
                f"image grid {height}x{width} and label grid {label_shape[0]}x{label_shape[1]} do not match "
                f"label_factor={self.label_factor} (expected the label grid "
                f"{height // self.label_factor}x{width // self.label_factor} and image sides that are multiples)"
            )
        if crop is None:
            if height != width:
                raise ValueError(f"crop=None needs square images, got {height}x{width}; give a crop size")
            crop = height
        if int(crop) != crop or crop <= 0 or crop % self.label_factor:
            raise ValueError(f"crop must be a positive multiple of label_factor={self.label_factor}, got {crop!r}")
        if crop > min(height, width):
            raise ValueError(f"crop={crop} exceeds the image size {height}x{width}")
        self.crop = int(crop)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.image.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def sample_transform(self, index: int) -> tuple[tuple[int, int], tuple[bool, bool]]:
        """Crop origin (y0, x0) [image pixels] and flips (flip_y, flip_x) of item ``index``."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        label_crop = self.crop // self.label_factor
        n_y, n_x = self.label.shape[1] - label_crop + 1, self.label.shape[2] - label_crop + 1
        ly, lx = int(rng.integers(n_y)), int(rng.integers(n_x))
        if self.focus > 0 and rng.random() < self.focus:
            fg = np.flatnonzero(self.label[int(index)])
            if fg.size:
                py, px = np.unravel_index(fg[rng.integers(fg.size)], self.label.shape[1:])
                ly = int(np.clip(py - rng.integers(label_crop), 0, n_y - 1))
                lx = int(np.clip(px - rng.integers(label_crop), 0, n_x - 1))
        origin = (ly * self.label_factor, lx * self.label_factor)
        flips = FLIPS[int(rng.integers(len(FLIPS)))] if self.augment else FLIPS[0]
        return origin, flips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        (y0, x0), (flip_y, flip_x) = self.sample_transform(index)
        f = self.label_factor
        ly0, lx0, lc = y0 // f, x0 // f, self.crop // f
        image = self.image[index, y0 : y0 + self.crop, x0 : x0 + self.crop]
        maps = {
            name: getattr(self, name)[index, ly0 : ly0 + lc, lx0 : lx0 + lc]
            for name in ("label", "weight", "depth", "center_mask")
        }
        axes = tuple(axis for axis, flip in ((0, flip_y), (1, flip_x)) if flip)
        if axes:
            image = np.flip(image, axis=axes)
            maps = {name: np.flip(value, axis=axes) for name, value in maps.items()}
        return {
            # copies: the tensors never share memory with the dataset
            "image": torch.from_numpy(np.array(image, dtype=np.float32))[None],
            "label": torch.from_numpy(maps["label"].astype(np.int64)),
            "weight": torch.from_numpy(np.array(maps["weight"], dtype=np.float32)),
            "depth": torch.from_numpy(maps["depth"].astype(np.int64)),
            "center_mask": torch.from_numpy(np.array(maps["center_mask"], dtype=bool)),
            "index": torch.tensor(index),
            "origin": torch.tensor([y0, x0]),
            "flip": torch.tensor([int(flip_y), int(flip_x)]),
        }


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of :class:`CropDataset` items into one batch (new leading axis)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def split_indices(
    ds: xr.Dataset, fractions: Sequence[float] = (0.7, 0.2, 0.1), seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Split the samples of ``ds`` by structure into disjoint index sets.

    Structures (the ``structure`` coordinate) are shuffled with ``seed`` and
    assigned whole to the splits, so that the share of *samples* in each split
    is as close to ``fractions`` as whole structures allow. Images of one
    structure (for example the same particle at several defocus values) never
    land in two splits.

    Parameters
    ----------
    ds : xarray.Dataset
        Dataset with a ``structure`` coordinate along ``sample``.
    fractions : sequence of float
        Wanted share of samples per split, e.g. (train, val, test); must be
        non-negative and sum to 1.
    seed : int
        Seed of the shuffle of structures.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted integer sample indices, one array per fraction.
    """
    if "structure" not in ds.coords and "structure" not in ds:
        raise ValueError("dataset has no 'structure' coordinate to split by (see docs/conventions.md)")
    fractions = np.asarray(fractions, dtype=float)
    if fractions.ndim != 1 or fractions.size == 0 or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    structure = np.asarray(ds["structure"].values).reshape(-1)
    unique, inverse, counts = np.unique(structure, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(unique.size)
    # Each structure goes to the split whose share of the sample axis holds its midpoint.
    cumulative = np.cumsum(counts[order]) / structure.size
    midpoint = cumulative - counts[order] / (2 * structure.size)
    split_of_ordered = np.searchsorted(np.cumsum(fractions)[:-1], midpoint, side="right")
    split_of_structure = np.empty(unique.size, dtype=int)
    split_of_structure[order] = split_of_ordered
    empty = [k for k in range(fractions.size) if fractions[k] > 0 and not np.any(split_of_structure == k)]
    if empty:
        raise ValueError(
            f"{unique.size} structures cannot fill the splits {tuple(fractions)}: splits {empty} would be empty; "
            "simulate more structures or change the fractions"
        )
    sample_split = split_of_structure[inverse]
    return tuple(np.flatnonzero(sample_split == k) for k in range(fractions.size))
