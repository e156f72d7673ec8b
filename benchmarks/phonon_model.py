"""Issue 11: candidate robust models (phonon fine-tune, interpolations) scored beside the robust default.

Scores both on the shift test (static atoms, shifted optics, held-out outline; ``make shift-test``) and
on a frozen-phonon shift test (preset ``shift_phonons``: 4 configurations, seed 912, 10 structures x 2
images; ``make shift-phonons-test``) at the doses of the dose curve (``make phonon-model`` runs both).

    python benchmarks/phonon_model.py --test-sets data/simulated/shift_test --out data/results/robustness_phonons_static

``--pair MODEL ROTATED`` scores a two-model 180-degree pass (``segdepth predict --rotated-model``). A model whose
card has ``dose_matching`` (the default since 2026-12-05) is scored with it, as ``segdepth predict --lambda`` reports
(``--no-dose-matching``: without).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segdepth.data.store import open_dataset, write_netcdf_atomic
from segdepth.learn.evaluation import confusion_table, robustness, robustness_table
from segdepth.learn.inference import DEFAULT_MODEL
from segdepth.learn.modelio import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["data/models/study/segdepth_robust_phonons_base8_bin4.safetensors",
                                                    str(DEFAULT_MODEL)])
    ap.add_argument("--test-sets", nargs="+", default=["data/simulated/shift_test",
                                                       "data/simulated/shift_phonons_test"])
    ap.add_argument("--lams", nargs="+", type=float, default=[0.5, 1.0, 2.5, 10.0, 25.0])
    ap.add_argument("--out", default="data/results/robustness_phonons")
    ap.add_argument("--tta", action="store_true",
                    help="score the mean of the plain and the 180-degree pass (what segdepth predict reports)")
    ap.add_argument("--no-dose-matching", action="store_true", help="ignore the cards' dose_matching")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("MODEL", "ROTATED"),
                    help="also score MODEL with ROTATED making its 180-degree pass (segdepth predict "
                    "--rotated-model; needs --tta), named MODEL+ROTATED; may be repeated")
    args = ap.parse_args(argv)
    if not args.models and not args.pair:
        ap.error("nothing to score: give --models and/or --pair")
    if args.pair and not args.tta:
        ap.error("--pair needs --tta (ROTATED makes the 180-degree pass)")
    loaded, matching = {}, {}

    def load(path):
        if path not in loaded:
            model, card = load_model(ROOT / path)
            loaded[path] = (model.eval(), card["input_binning"], card.get("dose_matching"))
        return loaded[path]

    def dose_matching(spec):
        return None if args.no_dose_matching or not spec else (float(spec["target"]), int(spec["draws"]))

    models = {}
    for path in args.models:
        model, binning, spec = load(path)
        models[Path(path).stem] = (model, binning)
        matching[Path(path).stem] = dose_matching(spec)
    for first, second in args.pair:
        (model, binning, spec), (rotated, rotated_binning, _) = load(first), load(second)
        if rotated_binning != binning:
            ap.error(f"--pair {first} {second}: input binning {binning} and {rotated_binning} differ")
        models[f"{Path(first).stem}+{Path(second).stem}"] = (model, binning, rotated)
        matching[f"{Path(first).stem}+{Path(second).stem}"] = dose_matching(spec)
    sets = {Path(p).name: open_dataset(ROOT / p) for p in args.test_sets}
    t0 = time.perf_counter()
    result = robustness(models, sets, args.lams, seed=1, tta=args.tta, dose_matching=matching)
    sizes = ", ".join(f"{k} ({v.sizes['sample']} images)" for k, v in sets.items())
    passes = "mean of the plain and the 180-degree pass" if args.tta else "one network pass"
    if args.pair:
        passes += " (A+B: B makes the 180-degree pass of A, on the same noisy frame)"
    matched = {name: spec for name, spec in matching.items() if spec}
    if matched:
        passes += "; dose matching (the cards' dose_matching, as segdepth predict --lambda): " + ", ".join(
            f"{name} target {spec[0]:g} e per model pixel, {spec[1]} draws" for name, spec in matched.items())
    text = (f"Per-column exact count, {sizes}; seed 1 noise; {passes}; {time.perf_counter() - t0:.0f} s\n\n"
            + robustness_table(result) + "\n")
    for m in models:
        for t in sets:
            text += f"\n{m} on {t}, lambda 2.5 (rows: true count):\n\n" + confusion_table(
                result, model=m, test_set=t, lam=2.5) + "\n"
    out = ROOT / args.out
    write_netcdf_atomic(result, out.with_suffix(".nc"))
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
