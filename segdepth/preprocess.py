"""Intensity normalisation shared by training and prediction.

The network is trained on noisy images divided by their own mean, and every
image given to :mod:`segdepth.predict` is normalised the same way, so the model
never depends on the absolute dose scale (electron counts, gain, 8-bit
rescaling). For a weak-phase object the mean intensity of a frame is close to
the vacuum intensity, so this is close to "vacuum = 1".

What is assumed for data that are not raw counts (rescaled 8-bit, unknown
gain): grey values are *proportional* to counts (``gain * counts``, no offset).
A gain cancels in the division by the mean; an offset (dark level, or a
display stretch that maps the minimum to 0) does not, and should be subtracted
first. The dose lambda does not enter the normalisation: it only decides how
noisy the normalised frame is. It can be given, or estimated under a Poisson
model with unknown gain by :func:`segdepth.calibration.estimate_dose`
(``mean**2 / variance``), and is recorded and compared with the model's
training dose by :func:`segdepth.predict.predict`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalise"]


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
