"""Simulated training sets: random particles -> HRTEM images + labels -> netCDF shards.

Work is split into shards of ``structures_per_shard`` structures. Shard ``k``
is fully determined by ``(seed, k)``, so shards can be computed in any order, on
any worker, and a killed run resumes by computing only the missing shards.
Parallelism goes through dask.distributed: a :class:`~distributed.LocalCluster`
on this machine by default, or any running cluster given by its scheduler
address (``tcp://host:8786``), with no code change. Workers keep abTEM's FFTW
plans warm between shards.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from segdepth.constants import LATTICE_CONSTANT, PERIOD_X, check_int
from segdepth.data.store import finished_shards, prepare_directory, provenance_attrs, shard_path, write_netcdf_atomic
from segdepth.physics.labels import LabelSettings, label_coordinates, make_label_maps
from segdepth.physics.simulation import (
    OPTICS,
    PAPER_SAMPLING,
    Microscope,
    OpticsRanges,
    apply_detector,
    check_grid,
    image_exit_wave,
    simulate_exit_wave,
    tilt_structure,
)
from segdepth.physics.structures import (
    MAX_ATOMS,
    OUTLINES,
    SURFACES,
    build_particle,
    on_amorphous_support,
    random_particle_spec,
)

__all__ = [
    "GenerationParameters", "PRESETS", "OPTICS_COORDS", "TRAIN_OUTLINES", "HELD_OUT_OUTLINE",
    "make_structure_samples", "make_shard", "generate_dataset", "ABLATION_FACTORS", "NOMINAL_OPTICS",
    "ablation_parameters", "support_thickness",
]


@dataclass(frozen=True)
class GenerationParameters:
    """Everything that defines a simulated dataset (stored with it as JSON).

    Parameters
    ----------
    gpts : int
        Simulation grid points per side (paper: 2048).
    sampling : float
        Simulation sampling [A] (paper: 0.0265; never coarser).
    binning : int
        Block-average factor after simulation (paper: 2 -> 0.053 A pixels).
    label_factor : int
        Label grid is this many image pixels coarser (network output, 4).
    n_defocus : int
        Images per structure, each at its own overfocus, from one exit wave.
    overfocus_range : tuple of float
        Uniform overfocus range [A] (paper: 1-9 nm).
    surfaces : tuple of str
        Surface types drawn uniformly.
    thickness_range : tuple of int
        Bulk thickness range [atoms per column].
    vacuum : float
        Vacuum margin at the cell edges [A] (>= 10).
    vacancy_max, vacancy_probability : float
        O vacancy rate drawn in [0, vacancy_max] for this fraction of structures.
    slice_thickness : float
        Multislice slice thickness [A].
    structures_per_shard : int
        Structures per netCDF shard.
    seed : int
        Root seed; structure ``i`` uses ``numpy.random.default_rng([seed, i])``
        (and ``[seed, i, 1]`` for its optics draws).
    microscope : Microscope
        The lens (fixed), or with ``optics`` the energy and aperture of every lens.
    optics : OpticsRanges, optional
        Randomised optics: every image draws its own overfocus, focal spread,
        Cs, C5, residual aberrations and detector errors, every structure its
        mistilt (recorded per sample). ``overfocus_range`` is then unused.
    phonons : int
        Frozen-phonon configurations per exit wave (0: static atoms).
    phonon_probability : float
        Fraction of structures simulated with ``phonons`` configurations (the
        rest static), drawn per structure from ``[seed, i, 3]`` and recorded per
        sample as ``phonons``.
    wedge_range, surface_vacancy_max, surface_short_max, adatoms_max
        Particle variety (:func:`segdepth.physics.structures.random_particle_spec`).
    support_max : float
        Largest thickness [nm] of an amorphous carbon support film under the particle
        (:func:`segdepth.physics.structures.on_amorphous_support`; 0: particles in vacuum). A structure gets a film
        with probability ``support_probability``, its thickness uniform in ``[0.5, support_max]`` nm (drawn from
        ``[seed, i, 4]``, the atoms from ``[seed, i, 5]``), recorded per sample as ``support_thickness`` [nm].
    support_probability : float
        Fraction of structures on a support film.
    """

    gpts: int = 1536
    sampling: float = PAPER_SAMPLING
    binning: int = 2
    label_factor: int = 4
    n_defocus: int = 3
    overfocus_range: tuple[float, float] = (10.0, 90.0)
    surfaces: tuple[str, ...] = SURFACES
    thickness_range: tuple[int, int] = (3, 10)
    vacuum: float = 10.0
    vacancy_max: float = 0.0
    vacancy_probability: float = 0.5
    slice_thickness: float = 1.913
    structures_per_shard: int = 4
    seed: int = 0
    microscope: Microscope = field(default_factory=Microscope)
    labels: LabelSettings = field(default_factory=LabelSettings)
    optics: OpticsRanges | None = None
    phonons: int = 0
    phonon_probability: float = 1.0
    wedge_range: tuple[float, float] = (0.0, 8.0)
    surface_vacancy_max: float = 0.0
    surface_short_max: float = 0.0
    adatoms_max: int = 0
    support_max: float = 0.0
    support_probability: float = 0.5

    def __post_init__(self):
        check_grid(self.gpts, self.sampling, self.binning, self.label_factor)
        lo, hi = self.thickness_range
        if not (1 <= lo <= hi <= MAX_ATOMS):
            raise ValueError(
                f"thickness_range must lie within 1-{MAX_ATOMS} atoms with lo <= hi, got {self.thickness_range}"
            )
        for s in self.surfaces:
            if s not in OUTLINES:
                raise ValueError(f"unknown surface type {s!r}; expected one of {OUTLINES}")
        check_int(self.phonons, "phonons", minimum=0)
        if not 0 <= self.phonon_probability <= 1:
            raise ValueError(f"phonon_probability must be within 0-1, got {self.phonon_probability!r}")
        if not (self.support_max == 0 or 0.5 <= self.support_max < 100):
            raise ValueError(f"support_max must be 0 or a thickness of 0.5-100 nm, got {self.support_max!r}")
        if not 0 <= self.support_probability <= 1:
            raise ValueError(f"support_probability must be within 0-1, got {self.support_probability!r}")
        a, b = self.overfocus_range
        if not (0 < a <= b):
            raise ValueError(f"overfocus_range must be positive [A] with lo <= hi, got {self.overfocus_range}")
        if self.vacuum < 10.0:
            raise ValueError(f"vacuum must be >= 10 A, got {self.vacuum}")
        if self.n_defocus < 1 or self.structures_per_shard < 1:
            raise ValueError("n_defocus and structures_per_shard must be >= 1")
        if not 0 <= self.vacancy_max <= 1:
            raise ValueError(f"vacancy_max must be within 0-1, got {self.vacancy_max}")
        if self.extent <= 2 * self.vacuum + 4:
            raise ValueError(
                f"field {self.extent:.1f} A (gpts={self.gpts}) leaves no room for crystal inside "
                f"{self.vacuum} A of vacuum; use a larger gpts"
            )

    @property
    def extent(self) -> float:
        """Field of view [A]."""
        return self.gpts * self.sampling

    @property
    def pixel_size(self) -> float:
        """Image pixel size after binning [A]."""
        return self.sampling * self.binning

    @property
    def image_shape(self) -> int:
        return self.gpts // self.binning

    @property
    def label_shape(self) -> int:
        return self.image_shape // self.label_factor

    @property
    def max_columns(self) -> int:
        """Upper bound of the number of columns in the field (fixed padding of the column table)."""
        return (math.ceil(self.extent / PERIOD_X) + 1) * (math.ceil(self.extent / LATTICE_CONSTANT) + 1) * 6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overfocus_range"] = list(self.overfocus_range)
        d["surfaces"] = list(self.surfaces)
        d["thickness_range"] = list(self.thickness_range)
        d["microscope"] = self.microscope.to_dict()
        d["wedge_range"] = list(self.wedge_range)
        d["optics"] = None if self.optics is None else self.optics.to_dict()
        for k in _NEW_FIELD_DEFAULTS:
            if d[k] == _NEW_FIELD_DEFAULTS[k]:
                del d[k]  # keep the parameters (and so the directory check) of datasets made before these existed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GenerationParameters:
        d = dict(d)
        d["microscope"] = Microscope(**d.get("microscope", {}))
        d["labels"] = LabelSettings(**d.get("labels", {}))
        if d.get("optics") is not None:
            d["optics"] = OpticsRanges.from_dict(d["optics"])
        for k in ("overfocus_range", "surfaces", "thickness_range", "wedge_range"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def with_(self, **changes) -> GenerationParameters:
        return replace(self, **changes)


#: Fields added with randomised optics (issue 11): left out of ``to_dict`` at these values.
_NEW_FIELD_DEFAULTS = {
    "optics": None, "phonons": 0, "phonon_probability": 1.0, "wedge_range": [0.0, 8.0], "surface_vacancy_max": 0.0,
    "surface_short_max": 0.0, "adatoms_max": 0, "support_max": 0.0, "support_probability": 0.5,
}

#: Named presets. ``paper``: the paper's 2048 -> 1024 px at 5.3 pm, tuned for throughput
#: (``benchmarks/simulation_speed.py``): 10 images (overfocus values) per exit wave, so the
#: 9,000-image set is 900 structures, and a 7-sample focal-spread average (0.4-0.5 % RMS of
#: the image contrast from a converged 81-sample average, 11 samples: 0.1 %); ``cpu``: a
#: smaller field at the same sampling for laptops; ``tiny``: the smallest valid field (tests).
PRESETS = {
    "paper": GenerationParameters(gpts=2048, n_defocus=10, microscope=Microscope(defocus_samples=7)),
    "cpu": GenerationParameters(gpts=1536, vacancy_max=0.15),
    "tiny": GenerationParameters(gpts=1024, n_defocus=2, structures_per_shard=2),
}

#: Training families of the robust model (``sawtooth`` is held out for the shift test).
TRAIN_OUTLINES = ("flat", "stepped", "faceted", "multi")
HELD_OUT_OUTLINE = "sawtooth"
_VARIETY = dict(
    vacancy_max=0.2, wedge_range=(0.0, 12.0), surface_vacancy_max=0.2, surface_short_max=0.3, adatoms_max=4,
    thickness_range=(4, 10),
)
#: Randomised presets (issue 11): ``robust`` the training distribution of the robust default
#: model (cpu field, 4 images per structure, every image its own optics); ``shift`` the
#: shift test (another seed, optics away from the training centre, the held-out outline
#: family beside two training ones).
PRESETS["robust"] = GenerationParameters(
    gpts=1536, n_defocus=4, surfaces=TRAIN_OUTLINES, optics=OPTICS["train"], **_VARIETY,
)
#: ``robust_phonons``: the robust distribution with thermal vibrations (issue 11's ablation: frozen
#: phonons cost the robust model 14-22 points): three structures in four get 2 frozen-phonon
#: configurations (rms :data:`segdepth.physics.simulation.PHONON_SIGMAS`), one in four stays static.
PRESETS["robust_phonons"] = PRESETS["robust"].with_(phonons=2, phonon_probability=0.75)
PRESETS["shift"] = GenerationParameters(
    gpts=1536, n_defocus=2, surfaces=(HELD_OUT_OUTLINE, "faceted", "multi"), optics=OPTICS["shift"], seed=911,
    structures_per_shard=2, **_VARIETY,
)
#: ``shift_phonons``: the shift test with thermal vibrations (4 frozen-phonon configurations), another seed.
PRESETS["shift_phonons"] = PRESETS["shift"].with_(phonons=4, seed=912)
#: ``robust_support`` / ``shift_support`` (2026-12-06, tenth session): half the training structures, every shift-test
#: structure, on an amorphous carbon film 0.5-5 nm thick (README, "Other microscopes": a 2 / 5 nm film costs the
#: default 20-32 points on simulator_shift's particles); not yet trained on.
PRESETS["robust_support"] = PRESETS["robust"].with_(support_max=5.0, support_probability=0.5, seed=11)
PRESETS["shift_support"] = PRESETS["shift"].with_(support_max=5.0, support_probability=1.0, seed=917)
#: Which simulator (2026-12-05): ``robust_quasi`` the robust distribution with half the images made with
#: abTEM's quasi-coherent focal-spread envelope instead of the incoherent defocus average and half the
#: structures through 2 frozen-phonon configurations; ``shift_quasi`` the shift test with every image
#: made the quasi-coherent way (another seed).
PRESETS["robust_quasi"] = PRESETS["robust"].with_(
    optics=replace(OPTICS["train"], quasi_coherent=0.5), phonons=2, phonon_probability=0.5, seed=5)
PRESETS["shift_quasi"] = PRESETS["shift"].with_(optics=replace(OPTICS["shift"], quasi_coherent=1.0), seed=914)
#: ``robust_low_spread``: ``robust_quasi`` with focal spreads of 0-10 A (0: a fully coherent image, which
#: simulations without temporal coherence make; the training range above starts at 8 A), seed 6.
PRESETS["robust_low_spread"] = PRESETS["robust_quasi"].with_(
    optics=replace(OPTICS["train"], quasi_coherent=0.5, defocus_spread=(0.0, 10.0)), seed=6)
#: ``robust_wide_spread`` (2026-12-05): the robust distribution with focal spreads of 0-40 A, all imaged the
#: incoherent way (0: a coherent image, as a simulation without temporal coherence makes; the paper lists
#: none), half the structures through 2 frozen-phonon configurations, seed 7.
PRESETS["robust_wide_spread"] = PRESETS["robust"].with_(
    optics=replace(OPTICS["train"], defocus_spread=(0.0, 40.0)), phonons=2, phonon_probability=0.5, seed=7)
#: ``shift_coherent``: the shift test without temporal coherence (focal spread 0, every other shifted range
#: kept), another seed: how a simulation at the paper's listed settings, which name no focal spread, looks.
PRESETS["shift_coherent"] = PRESETS["shift"].with_(optics=replace(OPTICS["shift"], defocus_spread=(0.0, 0.0)),
                                                   seed=915)


#: Contrast regime (2026-12-05, eighth session): ``regime`` the robust distribution with half the images
#: *under*focused by the drawn amount (the other defocus sign: Ce columns dark), focal spreads 0-40 A, a
#: quarter quasi-coherent, half the structures through 2 frozen-phonon configurations, seed 9: the training
#: set of the contrast-regime check (:mod:`segdepth.learn.regime`); ``shift_regime`` its test (the shift
#: test's optics and outlines, half the images underfocused, half the structures vibrating, seed 916).
PRESETS["regime"] = PRESETS["robust"].with_(
    optics=replace(OPTICS["train"], underfocus=0.5, quasi_coherent=0.25, defocus_spread=(0.0, 40.0)),
    phonons=2, phonon_probability=0.5, seed=9)
PRESETS["shift_regime"] = PRESETS["shift"].with_(
    optics=replace(OPTICS["shift"], underfocus=0.5), phonons=2, phonon_probability=0.5, seed=916)

def support_thickness(params: GenerationParameters, index: int) -> float:
    """Thickness [nm] of structure ``index``'s amorphous carbon support (0: none), drawn from ``[seed, index, 4]``."""
    if not params.support_max:
        return 0.0
    rng = np.random.default_rng([params.seed, index, 4])
    on_film, thickness = rng.random() < params.support_probability, rng.uniform(0.5, params.support_max)
    return float(thickness) if on_film else 0.0


def make_structure_samples(params: GenerationParameters, index: int) -> xr.Dataset:
    """Simulate structure ``index``: one particle, ``n_defocus`` images and its labels."""
    rng = np.random.default_rng([params.seed, index])
    ext = params.extent
    spec = random_particle_spec(
        (ext, ext),
        rng=rng,
        surfaces=params.surfaces,
        thickness_range=params.thickness_range,
        vacuum=params.vacuum,
        vacancy_max=params.vacancy_max,
        vacancy_probability=params.vacancy_probability,
        wedge_range=params.wedge_range,
        surface_vacancy_max=params.surface_vacancy_max,
        surface_short_max=params.surface_short_max,
        adatoms_max=params.adatoms_max,
    )
    structure = build_particle(spec, rng=rng)
    if params.optics is None:
        overfocus = np.sort(rng.uniform(*params.overfocus_range, size=params.n_defocus))
        mistilt = (0.0, 0.0)
    else:
        optics_rng = np.random.default_rng([params.seed, index, 1])
        mistilt = params.optics.draw_mistilt(optics_rng)
        draws = sorted((params.optics.draw(optics_rng, params.microscope) for _ in range(params.n_defocus)),
                       key=lambda d: d[0])
        overfocus = np.array([d[0] for d in draws])
    phonons = params.phonons
    if phonons and params.phonon_probability < 1:
        phonons = phonons if np.random.default_rng([params.seed, index, 3]).random() < params.phonon_probability else 0
    support = support_thickness(params, index)
    imaged = on_amorphous_support(structure, 10.0 * support, rng=np.random.default_rng([params.seed, index, 5]))
    wave = simulate_exit_wave(
        tilt_structure(imaged, mistilt), gpts=params.gpts, sampling=params.sampling,
        energy=params.microscope.energy, slice_thickness=params.slice_thickness,
        phonons=phonons, phonon_seed=int(np.random.default_rng([params.seed, index, 2]).integers(2**31)),
    )
    if params.optics is None:
        images = image_exit_wave(wave, overfocus, microscope=params.microscope, binning=params.binning)
        optics_coords = {}
    else:
        images = np.stack([
            apply_detector(image_exit_wave(wave, f, microscope=lens, binning=params.binning)[0], det)
            for f, lens, det in draws
        ])
        optics_coords = _optics_coords([lens for _, lens, _ in draws], [det for _, _, det in draws], mistilt)
    nl = params.label_shape
    maps = make_label_maps(
        structure.column_x, structure.column_y, structure.column_Z, structure.column_count,
        shape=(nl, nl), pixel_size=params.pixel_size * params.label_factor, settings=params.labels,
    )
    ncol = params.max_columns
    if structure.n_columns > ncol:  # pragma: no cover - bound is geometric
        raise RuntimeError("column table larger than its padding bound")

    def pad(a, fill, dtype):
        out = np.full(ncol, fill, dtype=dtype)
        out[: a.size] = a
        return out

    k = params.n_defocus
    rep = lambda a: np.repeat(a[None], k, axis=0)  # noqa: E731
    n_img = params.image_shape
    sample_coords = {
        "structure": ("sample", np.full(k, index, np.int64)),
        "overfocus": ("sample", overfocus.astype(np.float32),
                      {"units": "A", "long_name": "overfocus C10 (paper's defocus)"}),
        "defocus": ("sample", (-overfocus).astype(np.float32), {"units": "A", "long_name": "abTEM defocus (= -C10)"}),
        "surface": ("sample", np.array([spec.surface] * k, dtype=object)),
        "thickness": ("sample", np.full(k, _bulk_thickness(spec), np.int16),
                      {"units": "atoms", "long_name": "bulk thickness"}),
        "mean_thickness": ("sample", np.full(k, float(structure.column_count.mean()), np.float32), {"units": "atoms"}),
        "vacancy_rate": ("sample", np.full(k, spec.vacancy_rate, np.float32)),
        **({"phonons": ("sample", np.full(k, phonons, np.int16),
                        {"long_name": "frozen-phonon configurations (0: static atoms)"})} if params.phonons else {}),
        **({"support_thickness": ("sample", np.full(k, support, np.float32),
                                  {"units": "nm", "long_name": "amorphous carbon support under the particle"})}
           if params.support_max else {}),
        **optics_coords,
    }
    ds = xr.Dataset(
        {
            "image": (("sample", "y", "x"), images, {"long_name": "clean HRTEM intensity", "units": "vacuum = 1"}),
            "depth": (("sample", "label_y", "label_x"), rep(maps["depth"]),
                      {"long_name": "atoms per column", "units": "atoms"}),
            "label": (("sample", "label_y", "label_x"), rep(maps["label"]), {"long_name": "ring-smoothed depth label"}),
            "weight": (("sample", "label_y", "label_x"), rep(maps["weight"]), {"long_name": "loss weight"}),
            "center_mask": (("sample", "label_y", "label_x"), rep(maps["center_mask"])),
            "element": (("sample", "label_y", "label_x"), rep(maps["element"]),
                        {"long_name": "atomic number of column"}),
            "column_x": (("sample", "column"), rep(pad(structure.column_x, np.nan, np.float32)), {"units": "A"}),
            "column_y": (("sample", "column"), rep(pad(structure.column_y, np.nan, np.float32)), {"units": "A"}),
            "column_Z": (("sample", "column"), rep(pad(structure.column_Z, 0, np.uint8))),
            "column_count": (("sample", "column"), rep(pad(structure.column_count, 0, np.uint8)), {"units": "atoms"}),
        },
        coords={
            "y": ("y", label_coordinates(n_img, params.pixel_size), {"units": "A"}),
            "x": ("x", label_coordinates(n_img, params.pixel_size), {"units": "A"}),
            "label_y": ("label_y", label_coordinates(nl, params.pixel_size * params.label_factor), {"units": "A"}),
            "label_x": ("label_x", label_coordinates(nl, params.pixel_size * params.label_factor), {"units": "A"}),
            **sample_coords,
        },
    )
    ds["structure_spec"] = ("sample", np.array([_spec_json(spec)] * k, dtype=object))
    return ds


#: Per-sample optics coordinates of a randomised dataset: name -> (units, long name).
OPTICS_COORDS = {
    "defocus_spread": ("A", "focal spread (standard deviation)"),
    "defocus_samples": ("", "samples of the focal-spread average"),
    "Cs": ("A", "spherical aberration C30"),
    "C5": ("A", "fifth-order spherical aberration C50"),
    "C12": ("A", "two-fold astigmatism"),
    "phi12": ("rad", "two-fold astigmatism azimuth"),
    "C21": ("A", "axial coma"),
    "phi21": ("rad", "axial coma azimuth"),
    "C23": ("A", "three-fold astigmatism"),
    "phi23": ("rad", "three-fold astigmatism azimuth"),
    "mistilt_x": ("mrad", "specimen mistilt about y (atoms shift along x)"),
    "mistilt_y": ("mrad", "specimen mistilt about x (atoms shift along y)"),
    "detector_blur": ("px", "detector Gaussian blur (image pixels)"),
    "detector_gain": ("", "vacuum-level gain error"),
    "detector_offset": ("vacuum = 1", "vacuum-level offset error"),
    "quasi_coherent": ("", "focal spread as abTEM's quasi-coherent envelope (1) or an incoherent defocus average (0)"),
}


def _optics_coords(lenses, detectors, mistilt) -> dict:
    k = len(lenses)
    values = {name: [getattr(m, name) for m in lenses] for name in
              ("defocus_spread", "defocus_samples", "Cs", "C5", "C12", "phi12", "C21", "phi21", "C23", "phi23")}
    values["mistilt_x"] = [mistilt[0]] * k
    values["mistilt_y"] = [mistilt[1]] * k
    values["detector_blur"] = [d.blur for d in detectors]
    values["detector_gain"] = [d.gain for d in detectors]
    values["detector_offset"] = [d.offset for d in detectors]
    values["quasi_coherent"] = [float(m.coherence == "quasi") for m in lenses]
    return {
        name: ("sample", np.asarray(values[name], np.float32), {"units": unit, "long_name": long})
        for name, (unit, long) in OPTICS_COORDS.items()
    }


def _bulk_thickness(spec) -> int:
    """Bulk thickness of the structure [atoms]: the thickest particle of a faceted / multi outline."""
    return int(max(p[2] for p in spec.particles)) if spec.particles else int(spec.thickness)


def _spec_json(spec) -> str:
    import json

    return json.dumps(spec.to_dict(), sort_keys=True)


def make_shard(params: GenerationParameters, shard: int) -> xr.Dataset:
    """Simulate all structures of shard ``shard`` and return them as one dataset."""
    n = params.structures_per_shard
    parts = [make_structure_samples(params, shard * n + i) for i in range(n)]
    ds = xr.concat(parts, dim="sample")
    ds.attrs = provenance_attrs(params.to_dict(), params.seed)
    ds.attrs["shard"] = int(shard)
    ds.attrs["pixel_size"] = params.pixel_size
    ds.attrs["label_pixel_size"] = params.pixel_size * params.label_factor
    ds.attrs["label_factor"] = params.label_factor
    return ds


def generate_dataset(
    params: GenerationParameters,
    out_dir,
    *,
    n_structures: int,
    workers: int = 2,
    scheduler_address: str | None = None,
    client=None,
    progress: bool = True,
) -> list[Path]:
    """Generate (or finish) a simulated dataset in ``out_dir``.

    Parameters
    ----------
    params : GenerationParameters
        Dataset parameters (written to ``out_dir/parameters.json``; a directory
        made with other parameters is refused).
    out_dir : path
        Dataset directory.
    n_structures : int
        Number of structures wanted (rounded up to whole shards).
    workers : int
        Local dask worker processes; 0 computes in this process without dask.
    scheduler_address : str, optional
        Address of a running dask scheduler; when given, ``workers`` is ignored.
    client : distributed.Client, optional
        An existing client to use (left open); its workers keep FFTW plans warm
        across calls.
    progress : bool
        Show a progress bar over shards.

    Returns
    -------
    list of Path
        All shard files of the dataset (old and new).
    """
    check_int(n_structures, "n_structures")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    out_dir = prepare_directory(out_dir, params.to_dict())
    n_shards = math.ceil(n_structures / params.structures_per_shard)
    done = set(finished_shards(out_dir))
    todo = [k for k in range(n_shards) if k not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=n_shards, initial=n_shards - len(todo), desc="shards", unit="shard", disable=not progress)
    errors = []
    try:
        if not todo:
            pass
        elif client is None and scheduler_address is None and workers == 0:
            for k in todo:
                write_netcdf_atomic(make_shard(params, k), shard_path(out_dir, k))
                bar.update()
        else:
            from distributed import Client, LocalCluster, as_completed

            own_client = client is None
            cluster = None
            if client is None and scheduler_address is not None:
                client = Client(scheduler_address)
            elif client is None:
                cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                )
                client = Client(cluster)
            try:
                futures = {client.submit(make_shard, params, k, pure=False): k for k in todo}
                for fut in as_completed(futures):
                    k = futures[fut]
                    try:
                        write_netcdf_atomic(fut.result(), shard_path(out_dir, k))
                    except Exception as exc:  # report, keep the other shards going
                        errors.append((k, repr(exc)))
                    bar.update()
            finally:
                if own_client:
                    client.close()
                if cluster is not None:
                    cluster.close()
    finally:
        bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} shard(s) failed (re-run to retry them): {errors[:3]}")
    return [shard_path(out_dir, k) for k in range(n_shards)]


#: Optics of the ablation (notebook 07): the paper's nominal lens with zero-width ranges, and one
#: factor at a time set to its range in the shift test (``OPTICS["shift"]``); ``phonons`` adds
#: frozen phonons to the nominal lens, ``all`` is the whole shift envelope.
NOMINAL_OPTICS = OpticsRanges(
    overfocus=(10.0, 90.0), defocus_spread=(15.0, 15.0), Cs=(-9e4, -9e4), C5=(5e7, 5e7), C12_max=0.0, C21_max=0.0,
    C23_max=0.0, mistilt_max=0.0, blur=(0.0, 0.0), gain=(1.0, 1.0), offset=(0.0, 0.0),
)
_SHIFT = OPTICS["shift"]
ABLATION_FACTORS = {
    "nominal": {},
    "overfocus 9-11 nm": {"overfocus": (90.0, 110.0)},
    "focal spread": {"defocus_spread": _SHIFT.defocus_spread},
    "Cs": {"Cs": _SHIFT.Cs},
    "C5": {"C5": _SHIFT.C5},
    "two-fold astigmatism": {"C12_max": _SHIFT.C12_max},
    "coma + three-fold": {"C21_max": _SHIFT.C21_max, "C23_max": _SHIFT.C23_max},
    "mistilt": {"mistilt_max": _SHIFT.mistilt_max},
    "detector": {"blur": _SHIFT.blur, "gain": _SHIFT.gain, "offset": _SHIFT.offset},
    "phonons": {},
    "all (shift)": {f.name: getattr(_SHIFT, f.name) for f in dataclasses.fields(OpticsRanges)},
}


def ablation_parameters(factor: str, base: GenerationParameters, *, phonons: int = 4) -> GenerationParameters:
    """``base`` with the optics of one ablation factor (:data:`ABLATION_FACTORS`)."""
    if factor not in ABLATION_FACTORS:
        raise ValueError(f"unknown ablation factor {factor!r}; expected one of {list(ABLATION_FACTORS)}")
    optics = replace(NOMINAL_OPTICS, **ABLATION_FACTORS[factor])
    return base.with_(optics=optics, phonons=phonons if factor == "phonons" else 0)
