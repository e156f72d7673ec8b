"""A simulated in-situ movie with a known answer: drift, changing O occupancy, real-movie dose and pixels.

The real Pt/CeO2 movie has no ground truth. This module makes a short series that looks like it to the
analysis path (the same pixel size, dose and drift) while every column's atom count is known in every
frame: one particle (:func:`segdepth.physics.structures.build_particle`), an occupancy schedule that removes
atoms from chosen surface O columns at given frames (an O vacancy forming under the beam), one
multislice exit wave per distinct occupancy state, the nominal lens, a drift of the specimen, an
area-averaging resampling to the movie's pixels and Poisson noise at its dose (eq. 1).

Physics only (abTEM, ASE, numpy; never torch): the scoring lives with the analysis
(:func:`segdepth.apps.moviescore.score_simulated_movie`; ``benchmarks/simulated_movie.py`` runs both).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from segdepth.physics.noise import poisson_noise
from segdepth.physics.simulation import PAPER_SAMPLING, Microscope, image_exit_wave, simulate_exit_wave
from segdepth.physics.structures import Z_O, Structure

__all__ = ["surface_columns", "remove_atoms", "simulate_movie"]

#: Real Pt/CeO2 movie (``data/raw/README.md``): calibrated pixel size [A] and dose [electrons per pixel],
#: the defaults of :func:`simulate_movie`. The dose is what notebook 06's path estimates on the whole movie
#: (``estimate_dose``: 4.07, ``data/results/real_columns.nc``) and runs with; ``data/raw/README.md`` gives
#: 4.3-4.7 for the left half.
REAL_MOVIE_PIXEL_SIZE = 0.2006
REAL_MOVIE_DOSE = 4.1


def surface_columns(structure: Structure, *, element: int = Z_O, min_count: int = 3, radius: float = 3.2,
                    n: int = 2, rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` surface columns of ``element`` holding at least ``min_count`` atoms.

    The eligible columns (``element``, at least ``min_count`` atoms) are ranked by their number of
    neighbouring columns of any element within ``radius`` [A] (a bulk column is surrounded on every side,
    a surface one is not); ``n`` are drawn without replacement from the least surrounded quarter of them
    (at least ``n``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    xy = np.column_stack([structure.column_x, structure.column_y])
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    neighbours = (d < radius).sum(axis=1) - 1
    ok = (structure.column_Z == element) & (structure.column_count >= min_count)
    if ok.sum() < n:
        raise ValueError(f"the structure has {int(ok.sum())} columns of Z={element} with >= {min_count} atoms; "
                         f"{n} asked")
    # the least-surrounded quarter of the eligible columns, but never fewer than n
    cand = np.flatnonzero(ok)
    cand = cand[np.argsort(neighbours[cand], kind="stable")][: max(n, cand.size // 4)]
    return np.sort(rng.choice(cand, size=n, replace=False))


def remove_atoms(structure: Structure, counts: dict[int, int]) -> Structure:
    """``structure`` with column ``j`` cut to ``counts[j]`` atoms (from its exit-side end, largest z).

    The beam travels along +z, so the atoms removed are those at the exit surface. ``column_x``,
    ``column_y`` and ``column_Z`` are kept (an emptied column keeps its row with count 0).
    """
    keep = np.ones(len(structure.atoms), bool)
    new_count = structure.column_count.astype(int).copy()
    pos = structure.atoms.positions
    for j, c in counts.items():
        if not 0 <= j < structure.n_columns:
            raise ValueError(f"no column {j}: the structure has {structure.n_columns}")
        if not 0 <= c <= structure.column_count[j]:
            raise ValueError(f"column {j} holds {structure.column_count[j]} atoms; cannot set it to {c}")
        members = np.flatnonzero((np.abs(pos[:, 0] - structure.column_x[j]) < 0.05)
                                 & (np.abs(pos[:, 1] - structure.column_y[j]) < 0.05))
        if members.size != structure.column_count[j]:
            raise ValueError(f"column {j} lists {structure.column_count[j]} atoms but {members.size} lie on it "
                             "(a tilted or relaxed structure cannot be cut by column)")
        members = members[np.argsort(pos[members, 2])]
        keep[members[c:]] = False
        new_count[j] = c
    return Structure(atoms=structure.atoms[keep], column_x=structure.column_x, column_y=structure.column_y,
                     column_Z=structure.column_Z, column_count=new_count.astype(np.uint8), spec=structure.spec)


def _resample_area(image: np.ndarray, factor: float) -> np.ndarray:
    """Area average onto pixels ``factor`` times larger (a detector pixel integrates its area)."""
    from skimage.transform import resize

    shape = tuple(max(1, int(round(n / factor))) for n in image.shape)
    return resize(image, shape, order=1, anti_aliasing=True, anti_aliasing_sigma=(factor - 1) / 2,
                  preserve_range=True).astype(np.float32)


def simulate_movie(
    structure: Structure,
    schedule: dict[int, np.ndarray],
    *,
    gpts: int,
    sampling: float = PAPER_SAMPLING,
    microscope: Microscope = Microscope(),
    overfocus: float = 50.0,
    pixel_size: float = REAL_MOVIE_PIXEL_SIZE,
    dose: float = REAL_MOVIE_DOSE,
    drift: tuple[float, float] = (0.15, 0.1),
    jitter: float = 0.1,
    rng: np.random.Generator,
) -> xr.Dataset:
    """Noisy HRTEM movie of ``structure`` whose columns follow ``schedule``.

    Parameters
    ----------
    structure : Structure
        The particle at full occupancy (cell extent ``gpts * sampling``).
    schedule : dict
        Column index -> atoms in that column in each frame (one integer per frame, at most its count in
        ``structure``); every schedule has the movie's length. Other columns keep their counts.
    gpts, sampling : int, float
        Multislice grid [A]; images are formed at ``2 * sampling`` (the model's 0.053 A) first.
    microscope : Microscope
        Lens (nominal by default).
    overfocus : float
        Overfocus C10 of every frame [A].
    pixel_size : float
        Pixel size of the movie [A] (default: the real movie's calibrated 0.2006 A).
    dose : float
        Electrons per movie pixel in vacuum (default: the real movie's estimate, 4.5).
    drift : tuple of float
        Specimen drift per frame (dy, dx) [A].
    jitter : float
        Random frame-to-frame jitter (rms, each axis) added to the drift [A].
    rng : numpy.random.Generator
        Source of the jitter and the noise.

    Returns
    -------
    xarray.Dataset
        ``image`` (frame, y, x) noisy movie (attribute ``pixel_size``); ``clean`` the same without noise;
        ``drift`` (frame, axis) the specimen position relative to frame 0 [A]; the truth in frame 0's
        coordinates: ``column_x``, ``column_y`` [A], ``column_Z``, ``column_count`` (frame, column) and
        ``changing`` (column) marking the scheduled columns.
    """
    if not schedule:
        raise ValueError("schedule is empty: give at least one column's atoms per frame")
    lengths = {len(v) for v in schedule.values()}
    if len(lengths) != 1:
        raise ValueError(f"every column's schedule needs the same number of frames, got lengths {sorted(lengths)}")
    n_frames = lengths.pop()
    if n_frames < 2:
        raise ValueError(f"a movie needs at least 2 frames, got {n_frames}")
    if not pixel_size > 2 * sampling:
        raise ValueError(f"pixel_size must be coarser than the image grid ({2 * sampling} A), got {pixel_size}")
    cols = sorted(schedule)
    states = np.stack([np.asarray(schedule[j], int) for j in cols], axis=1)  # (frame, changed column)
    unique, which = np.unique(states, axis=0, return_inverse=True)
    clean_fine = []
    for state in unique:
        s = remove_atoms(structure, dict(zip(cols, (int(v) for v in state))))
        wave = simulate_exit_wave(s, gpts=gpts, sampling=sampling, energy=microscope.energy)
        clean_fine.append(image_exit_wave(wave, overfocus, microscope=microscope, binning=2)[0])
    fine_px = 2 * sampling
    steps = np.asarray(drift, float)[None] + jitter * rng.standard_normal((n_frames, 2))
    steps[0] = 0.0
    shift = np.cumsum(steps, axis=0)  # [A]
    frames = []
    for f in range(n_frames):
        moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(clean_fine[which.ravel()[f]]), shift[f] / fine_px)).real
        frames.append(_resample_area(moved, pixel_size / fine_px))
    clean = np.stack(frames)
    noisy = np.stack([poisson_noise(c, dose, rng=rng) for c in clean]).astype(np.float32)
    count = np.repeat(structure.column_count.astype(np.int16)[None], n_frames, axis=0)
    for k, j in enumerate(cols):
        count[:, j] = states[:, k]
    changing = np.zeros(structure.n_columns, bool)
    changing[cols] = True
    ny, nx = clean.shape[1:]
    pixel_size = clean_fine[0].shape[0] * fine_px / ny  # the exact pixel of the resampled grid
    return xr.Dataset(
        {
            "image": (("frame", "y", "x"), noisy, {"long_name": "noisy intensity", "units": "vacuum = 1"}),
            "clean": (("frame", "y", "x"), clean, {"long_name": "clean intensity", "units": "vacuum = 1"}),
            "drift": (("frame", "axis"), shift, {"units": "A", "long_name": "specimen shift from frame 0"}),
            "column_x": ("column", structure.column_x, {"units": "A"}),
            "column_y": ("column", structure.column_y, {"units": "A"}),
            "column_Z": ("column", structure.column_Z),
            "column_count": (("frame", "column"), count, {"units": "atoms", "long_name": "true atoms per column"}),
            "changing": ("column", changing),
        },
        coords={"frame": np.arange(n_frames), "axis": ["y", "x"],
                "y": ("y", (np.arange(ny) + 0.5) * pixel_size, {"units": "A"}),
                "x": ("x", (np.arange(nx) + 0.5) * pixel_size, {"units": "A"})},
        attrs={"pixel_size": pixel_size, "dose": dose, "overfocus": overfocus, "sampling": sampling, "gpts": gpts},
    )
