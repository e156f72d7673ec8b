"""SegDepth: atomic depth estimation from noisy HRTEM images (Leibovich et al.).

The package follows the pipeline in three stages and the apps on top of them:

- :mod:`segdepth.physics`: structures, multislice simulation, noise, labels, dataset generation
  (numpy, ASE, abTEM; never torch);
- :mod:`segdepth.data`: dataset store, microscope file readers, pixel-size calibration,
  preprocessing, lattice maps, movie tracking (never torch);
- :mod:`segdepth.learn`: the UNet, training, model files, metrics, evaluation, inference and
  its validity checks (torch; never abTEM);
- :mod:`segdepth.apps`: the command line, notebook and batch runners, plotting, movie scoring.

The names users reach for are re-exported here and imported on first use, e.g.
``segdepth.predict(image, pixel_size=0.053, lam=2.5)`` or ``segdepth.read_image(path)``.
"""

from __future__ import annotations

from segdepth._lazy import attach

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(__name__, {
    ".physics": [], ".data": [], ".learn": [], ".apps": [],
    ".physics.structures": ["build_particle", "random_particle_spec"],
    ".physics.simulation": ["Microscope", "simulate_exit_wave", "image_exit_wave"],
    ".physics.noise": ["poisson_noise"],
    ".physics.generate": ["GenerationParameters", "PRESETS", "generate_dataset"],
    ".data.store": ["open_dataset"],
    ".data.io": ["read_image"],
    ".data.calibration": ["calibrate_pixel_size", "estimate_dose"],
    ".data.lattice": ["local_lattice"],
    ".learn.modelio": ["load_model", "save_model"],
    ".learn.inference": ["predict", "predict_to_netcdf", "load_default_model"],
    ".learn.validity": ["predict_checked"],
    ".learn.training": ["TrainConfig", "train"],
    ".learn.evaluation": ["evaluate_dataset"],
})
__all__ = [*__all__, "__version__"]
