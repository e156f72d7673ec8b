"""Stage 3, learning: the paper's UNet and its fast variant, training (weighted cross-entropy, fresh
noise every batch, early stopping, DDP), model files (safetensors + JSON card), metrics, evaluation,
inference and its validity checks. Needs torch (the ``learn`` extra), never abTEM."""

from __future__ import annotations

from segdepth._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    ".model": ["UNet", "DenoisingUNet", "DenoiseSegment", "build_model", "paper_config", "count_parameters"],
    ".torchdata": ["CropDataset", "split_indices"],
    ".training": ["TrainConfig", "ModelConfig", "DataConfig", "NoiseConfig", "LossConfig", "OptimiserConfig",
                  "RunConfig", "initial_model", "train", "weighted_cross_entropy"],
    ".modelio": ["save_model", "load_model"],
    ".metrics": ["summarise", "confusion_matrix", "expected_calibration_error", "reliability_diagram"],
    ".evaluation": ["evaluate_dataset", "infer"],
    ".inference": ["DEFAULT_MODEL", "DEFAULT_ROTATED_MODEL", "REFERENCE_MODEL",
                    "load_default_model", "predict", "predict_to_netcdf"],
    ".validity": ["predict_checked", "assess"],
    ".distributed": [],
})
