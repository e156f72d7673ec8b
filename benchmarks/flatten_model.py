"""Issue 11: a trained model with the input divided by its local mean first (``UNet(flatten_sigma=...)``).

The layer (:class:`segdepth.learn.model.LocalMeanDivide`) has no weights: the output is the same network
reading ``x / (G_sigma * x)`` instead of ``x``. It removes intensity that varies slower than the lattice (an
envelope on the wave that loses intensity in thick regions, uneven illumination, an aperture), which the robust
models read as thickness. Used as is (test time only), or as the start of a fine-tune in that representation
(notebook 02, ``-p flatten``), or as the base of a weight average with such a fine-tune
(``benchmarks/wise_model.py``). The card is the source's, with ``flattening`` recording the source and sigma.

    python benchmarks/flatten_model.py --model segdepth/models/segdepth_robust_wise_base8_bin4.safetensors \\
        --sigma 1.5 --out segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdepth.learn.inference import model_pixel_size
from segdepth.learn.model import UNet
from segdepth.learn.modelio import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
#: Card entries of the source that describe measurements of the source, not of the flattened model.
DROP = ("robustness", "envelope", "val_metrics", "architecture", "weights_dtype", "known_limits", "check_second_pass")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained UNet (.safetensors with its card)")
    ap.add_argument("--sigma", type=float, required=True, help="standard deviation of the local mean [A]")
    ap.add_argument("--out", required=True, help="output weights (.safetensors; the card beside it)")
    args = ap.parse_args(argv)
    source, card = load_model(ROOT / args.model)
    if not isinstance(source, UNet):
        raise SystemExit(f"error: {args.model} holds a {type(source).__name__}, not a UNet")
    pixel = model_pixel_size(card)
    model = UNet.from_config({**source.config, "flatten_sigma": args.sigma / pixel})
    model.load_state_dict(source.state_dict())
    card = {k: v for k, v in card.items() if k not in DROP}
    card["flattening"] = {"source": args.model, "sigma_A": args.sigma, "sigma_pixels": args.sigma / pixel,
                          "layer": "segdepth.learn.model.LocalMeanDivide"}
    written = save_model(model.eval(), ROOT / args.out, card, weights_dtype="float16")
    print(f"wrote {ROOT / args.out} and {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
