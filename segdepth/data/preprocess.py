"""Intensity normalisation shared by training and prediction.

The network is trained on noisy images divided by their own mean, and every
image given to :mod:`segdepth.learn.inference` is normalised the same way, so the model
never depends on the absolute dose scale (electron counts, gain, 8-bit
rescaling). For a weak-phase object the mean intensity of a frame is close to
the vacuum intensity, so this is close to "vacuum = 1".

What is assumed for data that are not raw counts (rescaled 8-bit, unknown
gain): grey values are *proportional* to counts (``gain * counts``, no offset).
A gain cancels in the division by the mean; an offset (dark level, or a
display stretch that maps the minimum to 0) does not, and should be subtracted
first. The dose lambda does not enter the normalisation: it only decides how
noisy the normalised frame is. It can be given, or estimated under a Poisson
model with unknown gain by :func:`segdepth.data.calibration.estimate_dose`
(``mean**2 / variance``), and is recorded and compared with the model's
training dose by :func:`segdepth.learn.inference.predict`.
"""

from __future__ import annotations

import numpy as np

from segdepth.constants import check_int

__all__ = ["normalise", "bin_image", "bin_dataset", "rotation_canvas", "rotate_frames", "rotated_points"]


def normalise(image, *, axes=(-2, -1), eps: float = 1e-12):
    """Divide ``image`` by its mean over ``axes`` (numpy array or torch tensor).

    Raises ``ValueError`` when the mean is not positive (all-zero or
    all-negative images carry no usable intensity).
    """
    if hasattr(image, "detach"):  # torch tensor
        mean = image.mean(dim=axes, keepdim=True)
        if (mean <= eps).any():
            raise ValueError("image mean intensity must be > 0 to normalise (all-zero or negative image?)")
        return image / mean
    arr = np.asarray(image, dtype=np.float32)
    mean = arr.mean(axis=axes, keepdims=True)
    if np.any(mean <= eps):
        raise ValueError("image mean intensity must be > 0 to normalise (all-zero or negative image?)")
    return arr / mean


def _binning_factor(factor) -> int:
    check_int(factor, "binning factor")
    return int(factor)


def bin_image(image, factor: int):
    """Mean over ``factor x factor`` pixel blocks of the last two axes (numpy array or torch tensor).

    Binning a noisy frame is what a coarser camera pixel does: the mean of
    ``factor**2`` independent ``Poisson(lam c_i) / lam`` pixels is distributed
    as ``Poisson(factor**2 lam mean(c)) / (factor**2 lam)``, so a frame at dose
    ``lam`` becomes one at dose ``factor**2 lam`` per binned pixel. The sides
    must be multiples of ``factor``. Floating numpy input keeps its dtype,
    other input becomes float32.
    """
    factor = _binning_factor(factor)
    if factor == 1:
        return image
    h, w = image.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image sides {h}x{w} must be multiples of the binning factor {factor}")
    blocks = (*image.shape[:-2], h // factor, factor, w // factor, factor)
    if hasattr(image, "detach"):  # torch tensor
        return image.reshape(blocks).mean(dim=(-3, -1))
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr.reshape(blocks).mean(axis=(-3, -1), dtype=arr.dtype)  # float64 stays float64 (simulation)


def bin_dataset(ds, factor: int):
    """A simulated dataset (``docs/conventions.md``) with its ``image`` binned ``factor x factor``.

    The label grid is left as it is; ``sampling`` / ``pixel_size`` and
    ``label_factor`` attributes (if present) are updated, the ``x`` / ``y``
    coordinates become the binned pixel centres (``xarray`` ``coarsen``).
    """
    factor = _binning_factor(factor)
    if factor == 1:
        return ds
    for dim in ("y", "x"):
        if ds.sizes.get(dim, 0) % factor:
            raise ValueError(f"dataset dimension {dim!r} ({ds.sizes.get(dim)}) is not a multiple of {factor}")
    binned = ds.coarsen(y=factor, x=factor).mean(keep_attrs=True)
    out = ds.drop_dims(["y", "x"]).assign(image=binned["image"].astype(np.float32))
    attrs = dict(ds.attrs)
    for key in ("sampling", "pixel_size"):
        if key in attrs:
            attrs[key] = float(attrs[key]) * factor
    if "label_factor" in attrs:
        lf = int(attrs["label_factor"])
        if lf % factor:
            raise ValueError(f"label_factor {lf} of the dataset is not a multiple of the binning factor {factor}")
        attrs["label_factor"] = lf // factor
    out.attrs = attrs
    return out


# ------------------------------------------------------------------ in-plane rotation


def _rotation(shape: tuple[int, int], angle: float):
    """The transform taking pixel coordinates ``(x, y)`` (column, row; pixel centres at integers) of a frame
    of ``shape`` to those of its canvas after turning it by ``angle`` [deg, from +x towards +y] about its
    centre, and the canvas's shape (the smallest that holds the whole frame)."""
    from skimage.transform import EuclideanTransform

    h, w = shape
    a = np.deg2rad(angle)
    c, s = abs(np.cos(a)), abs(np.sin(a))
    out = (int(np.ceil(h * c + w * s - 1e-6)), int(np.ceil(w * c + h * s - 1e-6)))
    centre_in = np.array([(w - 1) / 2, (h - 1) / 2])
    centre_out = np.array([(out[1] - 1) / 2, (out[0] - 1) / 2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return EuclideanTransform(rotation=a, translation=centre_out - rot @ centre_in), out


def rotation_canvas(shape: tuple[int, int], angle: float) -> tuple[int, int]:
    """Shape of the canvas that :func:`rotate_frames` turns a frame of ``shape`` into."""
    return _rotation(tuple(shape), angle)[1]


def rotate_frames(frames, angle: float, *, order: int = 1, mode: str = "edge",
                  cval: float | None = None) -> np.ndarray:
    """Frames ``(n, y, x)`` (or one ``(y, x)``) turned by ``angle`` [deg] about their centres.

    ``angle`` is measured from +x towards +y (the row index grows downwards, so a positive angle turns a
    displayed image clockwise). The canvas (:func:`rotation_canvas`) holds the whole frame; its corners
    are filled by extending the frame's edge pixels outwards (``mode``, scikit-image ``warp``), so that
    the field keeps noise up to its border: the networks take the noise level from the whole field, and
    a flat, noiseless fill (``mode="constant"``: ``cval``, default the frame's mean) made the default count
    13 points fewer columns right at lambda 10; a reflection of the frame (``"reflect"``) did as well as
    the edge on simulations but read more false columns into a real movie's vacuum band (README,
    "Crystals turned in the image plane"). ``order`` is the spline order of the interpolation (1:
    bilinear). Float32 out.
    """
    from skimage.transform import warp

    arr = np.asarray(frames, dtype=np.float64)
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    if arr.ndim != 3:
        raise ValueError(f"expected frames (n, y, x) or one frame (y, x), got shape {arr.shape}")
    transform, out = _rotation(arr.shape[1:], angle)
    canvas = np.stack([warp(frame, transform.inverse, output_shape=out, order=order, mode=mode,
                            cval=float(frame.mean()) if cval is None else cval, preserve_range=True)
                       for frame in arr]).astype(np.float32)
    return canvas[0] if single else canvas


def rotated_points(x, y, shape: tuple[int, int], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(x, y)`` (column, row) in a frame of ``shape`` -> the same points on the canvas of
    :func:`rotate_frames` ``(frame, angle)``."""
    transform, _ = _rotation(tuple(shape), angle)
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    xy = transform(np.stack([x.ravel(), y.ravel()], axis=1))
    return xy[:, 0].reshape(x.shape), xy[:, 1].reshape(x.shape)
