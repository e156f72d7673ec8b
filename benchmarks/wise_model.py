"""Issue 11: a robust model made by weight interpolation of a base model and its fine-tune (WiSE-FT).

``(1 - alpha) * base + alpha * tuned`` (:func:`segdepth.learn.modelio.interpolate_models`; Wortsman et
al., "Robust fine-tuning of zero-shot models", CVPR 2022). ``alpha`` = 0.5 is that paper's default and
was fixed before the shift test was scored. The card is the fine-tune's, with ``interpolation``
recording both ends and ``training_seconds`` their total; notebook 03 (``make evaluate-robust``) adds
the envelope and the shift-test figures.

    python benchmarks/wise_model.py --base segdepth/models/segdepth_robust_base8_bin4.safetensors \\
        --tuned data/models/study/segdepth_robust_mix_base8_bin4.safetensors --alpha 0.5 \\
        --out segdepth/models/segdepth_robust_wise_base8_bin4.safetensors   # make robust-wise (the default)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdepth.learn.modelio import interpolate_models, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
DROP = ("robustness", "envelope", "val_metrics", "best_epoch", "epochs_run", "weights_dtype")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the model fine-tuning started from")
    ap.add_argument("--tuned", required=True, help="its fine-tune (same architecture)")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tune, in [0, 1]")
    ap.add_argument("--out", required=True, help="output weights (.safetensors; the card beside it)")
    args = ap.parse_args(argv)
    base, base_card = load_model(ROOT / args.base)
    tuned, card = load_model(ROOT / args.tuned)
    if base_card.get("input_binning") != card.get("input_binning"):
        raise SystemExit(f"error: input_binning differs ({base_card.get('input_binning')} and "
                         f"{card.get('input_binning')}); the two models do not read the same pixels")
    model = interpolate_models(base, tuned, args.alpha)
    card = {k: v for k, v in card.items() if k not in DROP and k != "architecture"}
    card["interpolation"] = {
        "method": "weight interpolation (1 - alpha) * base + alpha * tuned (WiSE-FT, Wortsman et al. 2022)",
        "alpha": args.alpha, "base": args.base, "tuned": args.tuned,
        "base_split": base_card.get("split"), "base_training_seconds": base_card.get("training_seconds"),
        "tuned_training_seconds": card.get("training_seconds"),
    }
    card["training_seconds"] = float(base_card.get("training_seconds") or 0) + float(card.get("training_seconds") or 0)
    written = save_model(model, ROOT / args.out, card, weights_dtype="float16")
    print(f"wrote {ROOT / args.out} and {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
