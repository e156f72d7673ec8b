"""Stage 1, physics: CeO2 [110] particles, multislice HRTEM (abTEM), Poisson noise, depth labels and
simulated datasets. Needs numpy, ASE and abTEM, never torch (``pip install segdepth`` without the
``learn`` extra is enough)."""

from __future__ import annotations

from segdepth._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    ".structures": ["LATTICE_CONSTANT", "SURFACES", "OUTLINES", "MAX_ATOMS", "ParticleSpec", "Structure",
                    "ceo2_110_cell", "projected_columns", "build_particle", "random_particle_spec"],
    ".simulation": ["Microscope", "Detector", "OpticsRanges", "OPTICS", "PAPER_SAMPLING", "PHONON_SIGMAS",
                    "simulate_exit_wave", "image_exit_wave", "simulate_images", "apply_detector", "tilt_structure"],
    ".noise": ["check_lambda", "poisson_noise", "poisson_noise_torch"],
    ".labels": ["LabelSettings", "label_coordinates", "make_label_maps"],
    ".generate": ["GenerationParameters", "PRESETS", "TRAIN_OUTLINES", "HELD_OUT_OUTLINE", "make_structure_samples",
                  "make_shard", "generate_dataset", "ablation_parameters"],
    ".simmovie": ["surface_columns", "remove_atoms", "simulate_movie"],
})
