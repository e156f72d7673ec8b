"""Shot noise of eq. (1): ``x ~ Poisson(lambda * c) / lambda``.

The clean image ``c`` is normalised so that vacuum is 1; ``lambda`` is then the
mean number of electrons per pixel in vacuum. ``E[x] = c`` and
``Var[x] = c / lambda``, so the signal-to-noise ratio of a pixel is
``sqrt(lambda * c)`` (eq. 2 of the paper).

Both functions take an explicit random generator; nothing here seeds a global
state. The numpy version never imports torch and the torch version never
imports numpy's random state.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_lambda", "lower_dose", "poisson_noise", "poisson_noise_paired", "poisson_noise_torch"]


def check_lambda(lam) -> None:
    """Raise ``ValueError`` unless every dose ``lam`` is a finite positive number."""
    arr = np.asarray(lam, dtype=float) if not hasattr(lam, "detach") else lam.detach().cpu().numpy()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"lam (dose lambda, electrons per pixel in vacuum) must be finite and > 0, got {lam!r}")


def _check_clean(clean: np.ndarray) -> None:
    if not np.all(np.isfinite(clean)):
        raise ValueError("clean image contains NaN or inf")
    if np.any(clean < 0):
        raise ValueError("clean image must be non-negative (it is an intensity)")


def _noise_inputs(clean, lam, rng) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` and ``lam`` as float64 arrays, after checking them and ``rng`` (the noise functions' inputs)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (use numpy.random.default_rng(seed))")
    check_lambda(lam)
    clean = np.asarray(clean, dtype=np.float64)
    _check_clean(clean)
    return clean, np.asarray(lam, dtype=np.float64)


def poisson_noise(clean, lam, *, rng: np.random.Generator) -> np.ndarray:
    """Draw a noisy image ``Poisson(lam * clean) / lam``.

    Parameters
    ----------
    clean : array_like
        Clean intensity, vacuum = 1 [dimensionless].
    lam : float or array_like
        Dose: mean electron count per pixel in vacuum [e/pixel]. Broadcast
        against ``clean`` (one value per sample is allowed).
    rng : numpy.random.Generator
        Source of randomness (keyword-only, required).

    Returns
    -------
    numpy.ndarray
        Float32 noisy image with the shape of ``clean``.
    """
    clean, lam = _noise_inputs(clean, lam, rng)
    counts = rng.poisson(lam * clean)
    return (counts / lam).astype(np.float32)


def poisson_noise_paired(clean, lam, *, rng: np.random.Generator) -> np.ndarray:
    """:func:`poisson_noise` drawn by the inverse CDF from one uniform per pixel (common random numbers).

    Each pixel's count depends only on its own uniform and its mean ``lam * clean``, so two images that differ a
    little (the same particle through two simulators, or the same simulation in two processes, which differ in
    the last bits) get paired noise. ``Generator.poisson`` takes a number of draws per pixel that depends on the
    mean (and switches algorithm at a mean of 10), so there a last-bit change re-draws most of the image.
    About 10x slower than :func:`poisson_noise`; used by ``benchmarks/simulator_shift.py`` and
    ``benchmarks/validity_checks.py``.
    """
    from scipy.stats import poisson

    clean, lam = _noise_inputs(clean, lam, rng)
    counts = poisson.ppf(rng.random(clean.shape), lam * clean)
    return (counts / lam).astype(np.float32)


def poisson_noise_torch(clean, lam, *, generator=None):
    """Torch version of :func:`poisson_noise` (works on CPU and GPU tensors).

    Parameters
    ----------
    clean : torch.Tensor
        Clean intensity, vacuum = 1.
    lam : float or torch.Tensor
        Dose [e/pixel]; a tensor broadcastable to ``clean`` (for example shape
        ``(batch, 1, 1, 1)``) gives every sample its own dose.
    generator : torch.Generator, optional
        Source of randomness; pass one for reproducible noise.
    """
    import torch

    check_lambda(lam)
    if not torch.isfinite(clean).all():
        raise ValueError("clean image contains NaN or inf")
    if (clean < 0).any():
        raise ValueError("clean image must be non-negative (it is an intensity)")
    lam_t = torch.as_tensor(lam, dtype=clean.dtype, device=clean.device)
    rate = (clean * lam_t).expand_as(clean) if lam_t.ndim else clean * lam_t
    counts = torch.poisson(rate.contiguous(), generator=generator)
    return counts / lam_t


def lower_dose(noisy, lam, target, *, rng: np.random.Generator) -> np.ndarray:
    """The image ``noisy`` of dose ``lam`` as if recorded at the lower dose ``target``.

    ``noisy`` is on the scale of eq. (1) (``E[x] = c``, ``Var[x] = c / lam``; for a measured frame,
    divided by its vacuum level or its mean). Adding independent Gaussian noise of variance
    ``max(x, 0) * (1 / target - 1 / lam)`` gives ``Var = c / target``: the shot noise of ``target``
    electrons per pixel, to the Gaussian approximation of the Poisson law (good at the doses where
    lowering helps, tens of electrons per pixel). Binomial thinning would be exact for integer
    counts, but a camera's grey values are not counts. ``target >= lam`` returns a float32 copy.

    Used at inference (:func:`segdepth.learn.inference.predict`'s dose matching): a network trained
    at doses up to about 30 electrons per 0.053 A pixel counts columns worse on cleaner images than
    on images of about 5-10 (README, "Dose matching").
    """
    check_lambda(lam)
    check_lambda(target)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (use numpy.random.default_rng(seed))")
    x = np.asarray(noisy, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("image contains NaN or inf")
    if target >= lam:
        return x.copy()
    sd = np.sqrt(np.clip(x, 0, None) * np.float32(1.0 / target - 1.0 / lam))
    return (x + sd * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
