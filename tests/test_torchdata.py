from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from segdepth.learn.torchdata import FLIPS, CropDataset, collate, split_indices

SAMPLING = 0.053  # [A]
FACTOR = 4


def toy_dataset(n_samples=4, size=64, *, structures=None, seed=0, label_map=None):
    """A dataset in the contract format; by default ``image = kron(label, ones(4, 4))`` plus a tiny ramp.

    Every image pixel then names its label pixel, so any misalignment between
    image and labels shows up as a mismatch.
    """
    rng = np.random.default_rng(seed)
    n_label = size // FACTOR
    if label_map is None:
        label_map = rng.integers(0, 11, size=(n_samples, n_label, n_label)).astype(np.uint8)
    image = np.kron(label_map.astype(np.float32), np.ones((1, FACTOR, FACTOR), np.float32)) + 1.0
    x = (np.arange(size) + 0.5) * SAMPLING
    lx = (np.arange(n_label) + 0.5) * SAMPLING * FACTOR
    structures = np.arange(n_samples) if structures is None else np.asarray(structures)
    return xr.Dataset(
        {
            "image": (("sample", "y", "x"), image),
            "label": (("sample", "label_y", "label_x"), label_map),
            "depth": (("sample", "label_y", "label_x"), label_map),
            "weight": (("sample", "label_y", "label_x"), (1.0 + label_map).astype(np.float32)),
            "center_mask": (("sample", "label_y", "label_x"), (label_map > 0).astype(np.uint8)),
        },
        coords={"x": x, "y": x, "label_x": lx, "label_y": lx, "structure": ("sample", structures)},
        attrs={"sampling": SAMPLING, "parameters": json.dumps({"toy": True})},
    )


def _source_crop(ds, item, crop):
    """The crop of ``ds`` that ``item`` was cut from, before flipping."""
    y0, x0 = (int(v) for v in item["origin"])
    return ds["image"].values[int(item["index"]), y0 : y0 + crop, x0 : x0 + crop]


def test_crop_shapes_and_label_grid_alignment():
    ds = toy_dataset()
    data = CropDataset(ds, crop=32, augment=False, seed=3)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
            for name in ("label", "weight", "depth", "center_mask"):
                assert item[name].shape == (8, 8)
            y0, x0 = (int(v) for v in item["origin"])
            assert y0 % FACTOR == 0 and x0 % FACTOR == 0
            np.testing.assert_array_equal(item["image"][0].numpy(), _source_crop(ds, item, 32))
            expected = ds["label"].values[i, y0 // 4 : y0 // 4 + 8, x0 // 4 : x0 // 4 + 8]
            np.testing.assert_array_equal(item["label"].numpy(), expected)
            assert item["flip"].tolist() == [0, 0]


def test_whole_images_with_crop_none():
    ds = toy_dataset()
    item = CropDataset(ds, crop=None, augment=False, seed=0)[1]
    np.testing.assert_array_equal(item["image"][0].numpy(), ds["image"].values[1])
    np.testing.assert_array_equal(item["label"].numpy(), ds["label"].values[1])


@pytest.mark.parametrize("crop", [30, 0, 68])
def test_bad_crop_raises(crop):
    with pytest.raises(ValueError, match="crop"):
        CropDataset(toy_dataset(), crop=crop, augment=False, seed=0)


def test_mismatched_grids_raise():
    ds = toy_dataset().isel(label_x=slice(0, 15))
    with pytest.raises(ValueError, match="label_factor"):
        CropDataset(ds, crop=32, augment=False, seed=0)


def test_flips_keep_image_and_labels_aligned():
    ds = toy_dataset(n_samples=3)
    data = CropDataset(ds, crop=32, augment=True, seed=1)
    seen = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            seen.add(tuple(item["flip"].tolist()))
            # each 4x4 block of the image still carries its own label pixel's value
            expected = np.kron(item["label"].numpy().astype(np.float32), np.ones((4, 4), np.float32)) + 1
            np.testing.assert_array_equal(item["image"][0].numpy(), expected)
            expected_weight = 1.0 + item["label"].numpy()
            np.testing.assert_array_equal(item["weight"].numpy(), expected_weight)
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_marker_moves_consistently_under_flips():
    label_map = np.zeros((1, 16, 16), np.uint8)
    label_map[0, 1, 2] = 7  # one marker pixel, off every symmetry axis
    ds = toy_dataset(n_samples=1, label_map=label_map)
    data = CropDataset(ds, crop=64, augment=True, seed=0)
    for epoch in range(12):
        data.set_epoch(epoch)
        item = data[0]
        flip_y, flip_x = item["flip"].tolist()
        ly, lx = (14 if flip_y else 1), (13 if flip_x else 2)
        assert np.argwhere(item["label"].numpy() == 7).tolist() == [[ly, lx]]
        rows, cols = np.nonzero(item["image"][0].numpy() > 1)
        assert set(rows) == set(range(4 * ly, 4 * ly + 4)) and set(cols) == set(range(4 * lx, 4 * lx + 4))


def test_no_quarter_turns():
    assert (True, True) in FLIPS and len(FLIPS) == 4  # the flip group of a rectangle: no transposes
    rng = np.random.default_rng(5)
    ds = toy_dataset(n_samples=2)
    ds["image"].values[:] = rng.random(ds["image"].shape, dtype=np.float32)  # no symmetry at all
    data = CropDataset(ds, crop=32, augment=True, seed=2)
    for epoch in range(6):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            image = item["image"][0].numpy()
            source = _source_crop(ds, item, 32)
            allowed = [np.flip(source, axis=[a for a, f in ((0, fy), (1, fx)) if f]) for fy, fx in FLIPS]
            rotated = [np.rot90(source, 1), np.rot90(source, 3), source.T, np.rot90(source, 2).T]
            assert any(np.array_equal(image, a) for a in allowed)
            assert not any(np.array_equal(image, r) for r in rotated)


def test_same_seed_same_items_and_epochs_differ():
    ds = toy_dataset(n_samples=4, size=128)
    a = CropDataset(ds, crop=32, augment=True, seed=7)
    b = CropDataset(ds, crop=32, augment=True, seed=7)
    c = CropDataset(ds, crop=32, augment=True, seed=8)
    for data in (a, b, c):
        data.set_epoch(2)
    transforms = [a.sample_transform(i) for i in range(4)]
    assert transforms == [b.sample_transform(i) for i in range(4)]
    assert transforms != [c.sample_transform(i) for i in range(4)]
    for i in range(4):
        torch.testing.assert_close(a[i]["image"], b[i]["image"])
    b.set_epoch(3)
    assert transforms != [b.sample_transform(i) for i in range(4)]


def test_collate_stacks():
    data = CropDataset(toy_dataset(), crop=16, augment=True, seed=0)
    batch = collate([data[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 16, 16)
    assert batch["label"].shape == (3, 4, 4) and batch["label"].dtype == torch.int64
    assert batch["center_mask"].dtype == torch.bool


def test_split_by_structure_is_disjoint():
    structures = np.repeat(np.arange(10), 3)  # 10 structures, 3 images (defocus values) each
    ds = toy_dataset(n_samples=30, size=16, structures=structures)
    splits = split_indices(ds, fractions=(0.6, 0.2, 0.2), seed=4)
    assert sorted(np.concatenate(splits).tolist()) == list(range(30))
    sets = [set(structures[s].tolist()) for s in splits]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in splits] == [18, 6, 6]
    again = split_indices(ds, fractions=(0.6, 0.2, 0.2), seed=4)
    assert all(np.array_equal(s, t) for s, t in zip(splits, again))
    other = split_indices(ds, fractions=(0.6, 0.2, 0.2), seed=5)
    assert not all(np.array_equal(s, t) for s, t in zip(splits, other))


def test_split_errors():
    ds = toy_dataset(n_samples=2, size=16)
    with pytest.raises(ValueError, match="structures"):
        split_indices(ds, fractions=(0.5, 0.3, 0.2), seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(ds, fractions=(0.5, 0.3), seed=0)
    with pytest.raises(ValueError, match="structure"):
        split_indices(ds.drop_vars("structure"), seed=0)
