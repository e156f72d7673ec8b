"""Stage 2, data: the simulated-dataset store (netCDF shards, atomic writes), microscope file readers,
pixel-size calibration from the lattice, preprocessing shared by training and inference, local
lattice maps and movie tracking. Never imports torch."""

from __future__ import annotations

from segdepth._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    ".store": ["atomic_write", "write_netcdf_atomic", "write_json_atomic", "open_dataset", "finished_shards"],
    ".io": ["SUPPORTED_EXTENSIONS", "READERS", "Reader", "RawImage", "read_image", "frame_indices", "check_pixel_size",
            "check_positive"],
    ".calibration": ["PixelSizeCalibration", "CalibrationError", "calibrate_pixel_size", "estimate_dose"],
    ".preprocess": ["normalise", "bin_image", "bin_dataset"],
    ".lattice": ["local_lattice"],
    ".hyperspy": ["from_signal", "to_signal", "to_signals", "is_signal"],
    ".tracking": ["AlignmentError", "align_frames", "find_columns", "track_columns", "smooth_counts"],
})
