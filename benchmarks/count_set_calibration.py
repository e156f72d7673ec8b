"""Count sets that keep their promise: the probability mass of the default's 90 % count sets, calibrated.

Run: ``python benchmarks/count_set_calibration.py --calibration-sets DIR ... --test-sets DIR ... [--write-card]
[--out FILE]`` (``make count-set-calibration``; about 1 min per test set on 2 cores).

``segdepth predict`` reports, per pixel and per tracked column, the range of the most probable counts that hold
90 % of the probability (:func:`segdepth.data.tracking.prediction_sets`). Off the training distribution the
probabilities are overconfident and such sets hold the truth less often than promised. This script calibrates
the mass a set must hold (split conformal prediction, :func:`segdepth.data.tracking.calibrated_mass`) on every
calibration set x dose cell (lambda 1 / 2.5 / 10 per 0.053 A pixel, the noise of
:func:`segdepth.learn.evaluation.infer`) and takes the largest: the guarantee is meant to hold for the worst
kind of image we can simulate, not on average. Two masses: ``one_pass`` (the default alone, what ``--no-check``
probabilities and a plain :func:`~segdepth.learn.inference.predict` give) and ``with_second_model`` (the default
averaged with its second model on the frame turned by 180 degrees, what the checked mode reports).

On the test sets (never used for the calibration) it reports, per cell, the fraction of columns whose true count
lies in the set and the sets' mean size (classes) and range (largest - smallest + 1 counts), at 0.9 and at the
calibrated mass. The rule of the Makefile (``count-set-calibration``): a mass is adopted only if its sets hold the
truth in at least ``--floor`` (0.88) of the columns in every test cell while the 0.9 sets fall below it in at least
one; ``--write-card`` then writes the adopted masses into the default's card (``count_sets``), where
:func:`segdepth.learn.validity.predict_checked` and :func:`segdepth.data.tracking.track_columns` read them.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

LAMS = (1.0, 2.5, 10.0)
MODES = ("one_pass", "with_second_model")


def cell_probabilities(default, second, ds, lam: float, dose_matching=None, binning: int = 4) -> dict[str, np.ndarray]:
    """True counts and the column probabilities of both modes on every image of ``ds`` at dose ``lam``.

    ``dose_matching``: ``(target, draws)``: read as ``segdepth predict --lambda`` does with the cards'
    ``dose_matching`` (:func:`segdepth.learn.evaluation.infer`, the same seed-1 noise).
    """
    if dose_matching is not None:
        from segdepth.learn.evaluation import infer
        from segdepth.learn.metrics import column_probabilities

        true, one, pair = [], [], []
        for i in range(ds.sizes["sample"]):
            s = ds.isel(sample=i)
            keep = np.isfinite(s.column_x.values)
            true.append(s.column_count.values[keep].astype(np.int64))
            at = (s.column_x.values[keep], s.column_y.values[keep], s.label_x.values, s.label_y.values)
            for out, kwargs in ((one, {}), (pair, {"tta": True, "rotated_model": second})):
                _, proba = infer(default, s.image.values, lam, seed=1, index=i, input_binning=binning,
                                 dose_matching=dose_matching, **kwargs)
                out.append(column_probabilities(proba, *at).astype(np.float64))
        one, pair = np.concatenate(one), np.concatenate(pair)
        return {"T": np.concatenate(true), "one_pass": one / one.sum(1, keepdims=True),
                "with_second_model": pair / pair.sum(1, keepdims=True)}
    from pass_ensembles import column_passes

    plain = column_passes({"D": default}, ds, lam, flips=(0,))
    turned = column_passes({"F": second}, ds, lam, flips=(3,))
    one = plain["D"][:, 0].astype(np.float64)
    pair = 0.5 * (one + turned["F"][:, 0].astype(np.float64))
    return {"T": plain["T"].astype(np.int64), "one_pass": one / one.sum(1, keepdims=True),
            "with_second_model": pair / pair.sum(1, keepdims=True)}


def set_stats(proba: np.ndarray, true: np.ndarray, mass: float) -> tuple[float, float, float]:
    """Coverage, mean size (classes) and mean range (counts) of the sets of ``mass``."""
    from segdepth.data.tracking import count_range, prediction_sets

    member = prediction_sets(proba, mass)
    low, high = count_range(proba, mass)
    return (float(member[np.arange(len(true)), true].mean()), float(member.sum(1).mean()),
            float((high - low + 1).mean()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration-sets", nargs="+", default=[])
    ap.add_argument("--test-sets", nargs="+", required=True)
    ap.add_argument("--lams", nargs="+", type=float, default=list(LAMS))
    ap.add_argument("--floor", type=float, default=0.88, help="coverage every test cell must reach (the rule)")
    ap.add_argument("--cache", default="", help="directory for the per-cell probabilities ('' : none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-card", action="store_true", help="write the adopted masses into the default's card")
    ap.add_argument("--score-card", action="store_true",
                    help="no calibration: score the masses in the default's card on --test-sets (with the cards' "
                    "dose matching, as segdepth predict --lambda reads them); --calibration-sets are ignored")
    ap.add_argument("--out", default="", help="also write the report to this markdown file")
    args = ap.parse_args(argv)
    import torch

    from segdepth.data.store import atomic_write, open_dataset
    from segdepth.data.tracking import COUNT_SET_LEVEL, calibrated_mass, set_scores
    from segdepth.learn.inference import DEFAULT_MODEL, DEFAULT_ROTATED_MODEL
    from segdepth.learn.modelio import load_model, update_card

    if not args.calibration_sets and not args.score_card:
        ap.error("give --calibration-sets (or --score-card to score the card's masses)")
    for path in (*args.calibration_sets, *args.test_sets):
        if not (ROOT / path).is_dir():
            ap.error(f"test set {path} not found (make fresh-shift-tests fresh2-shift-tests fresh3-shift-tests)")
    torch.set_num_threads(args.threads)
    default, second = load_model(DEFAULT_MODEL)[0].eval(), load_model(DEFAULT_ROTATED_MODEL)[0].eval()
    cache = Path(args.cache) if args.cache else None
    t0 = time.perf_counter()

    def cells_of(paths):
        cells = {}
        for path in paths:
            name, ds = Path(path).name, None
            for lam in args.lams:
                file = cache / f"sets_{name}_{lam:g}.npz" if cache else None
                if file is not None and file.exists():
                    cell = dict(np.load(file))
                else:
                    ds = open_dataset(ROOT / path) if ds is None else ds
                    cell = cell_probabilities(default, second, ds, lam)
                    if file is not None:
                        atomic_write(file, lambda tmp, c=cell: np.savez_compressed(tmp, **c), suffix=".tmp.npz")
                cells[(name, lam)] = cell
                took = time.perf_counter() - t0
                print(f"{name} lambda {lam:g}: {len(cell['T'])} columns ({took:.0f} s)", flush=True)
        return cells

    lines = []

    def say(text=""):
        print(text)
        lines.append(text)

    if args.score_card:
        card = load_model(DEFAULT_MODEL)[1]
        masses, spec = card["count_sets"]["mass"], card.get("dose_matching")
        matching = (float(spec["target"]), int(spec["draws"])) if spec else None
        say(f"The default's count sets (card masses {masses}) on {', '.join(Path(p).name for p in args.test_sets)}, "
            f"dose matching {matching}: coverage / mean set size (classes) / mean range (counts)\n")
        say("| cell | columns | " + " | ".join(m.replace("_", " ") for m in masses) + " |\n|---|---|"
            + "---|" * len(masses))
        for path in args.test_sets:
            ds = open_dataset(ROOT / path)
            for lam in args.lams:
                c = cell_probabilities(default, second, ds, lam, matching, int(card["input_binning"]))
                stats = [set_stats(c[m], c["T"], masses[m]) for m in masses]
                say(f"| {Path(path).name} lambda {lam:g} | {len(c['T'])} | "
                    + " | ".join(f"{a:.3f} / {b:.2f} / {w:.2f}" for a, b, w in stats) + " |")
        if args.out:
            header = (f"Count sets of the default as shipped (benchmarks/count_set_calibration.py --score-card, "
                      f"{time.perf_counter() - t0:.0f} s; lambda per 0.053 A pixel, seed-1 noise)\n\n")
            atomic_write(ROOT / args.out, lambda tmp: Path(tmp).write_text(header + "\n".join(lines) + "\n"))
        return 0

    calibration, test = cells_of(args.calibration_sets), cells_of(args.test_sets)
    per_cell = {mode: {key: calibrated_mass(set_scores(c[mode], c["T"]), COUNT_SET_LEVEL)
                       for key, c in calibration.items()} for mode in MODES}
    mass = {mode: max(per_cell[mode].values()) for mode in MODES}
    say(f"Calibrated probability mass of the {COUNT_SET_LEVEL:.0%} count sets per calibration cell "
        "(split conformal; the largest is taken)\n")
    say("| cell | " + " | ".join(MODES) + " |\n|---|" + "---|" * len(MODES))
    for key in calibration:
        say(f"| {key[0]} lambda {key[1]:g} | " + " | ".join(f"{per_cell[m][key]:.4f}" for m in MODES) + " |")
    say("| **largest** | " + " | ".join(f"**{mass[m]:.4f}**" for m in MODES) + " |")

    verdict, summary = {}, {}
    for mode in MODES:
        say(f"\nTest sets, {mode.replace('_', ' ')}: coverage / mean set size (classes) / mean range (counts), "
            f"at mass 0.9 and at the calibrated {mass[mode]:.4f}\n")
        say("| cell | columns | mass 0.9 | calibrated |\n|---|---|---|---|")
        nominal, calibrated = [], []
        for key, c in test.items():
            a, b = set_stats(c[mode], c["T"], COUNT_SET_LEVEL), set_stats(c[mode], c["T"], mass[mode])
            nominal.append(a)
            calibrated.append(b)
            say(f"| {key[0]} lambda {key[1]:g} | {len(c['T'])} | {a[0]:.3f} / {a[1]:.2f} / {a[2]:.2f} | "
                f"{b[0]:.3f} / {b[1]:.2f} / {b[2]:.2f} |")
        worst_nominal = min(a[0] for a in nominal)
        worst = min(b[0] for b in calibrated)
        verdict[mode] = worst >= args.floor and worst_nominal < args.floor
        best_nominal, best = max(a[0] for a in nominal), max(b[0] for b in calibrated)
        width_nominal, width = np.mean([a[2] for a in nominal]), np.mean([b[2] for b in calibrated])
        summary[mode] = (f"test cells {len(calibrated)}: coverage at mass 0.9 {worst_nominal:.3f}-{best_nominal:.3f} "
                         f"(mean range {width_nominal:.2f} counts), calibrated {worst:.3f}-{best:.3f} (mean range "
                         f"{width:.2f} counts)")
        say(f"\n{mode}: {summary[mode]}; rule (every cell >= {args.floor}, the 0.9 sets below it somewhere): "
            + ("holds, adopted" if verdict[mode] else "fails, not adopted"))

    if args.write_card and any(verdict.values()):
        adopted = {m: min(1.0, math.ceil(mass[m] * 1e4) / 1e4) for m in MODES if verdict[m]}  # rounded up
        fields = {"count_sets": {
            "level": COUNT_SET_LEVEL,
            "mass": adopted,
            "second_model": DEFAULT_ROTATED_MODEL.name,
            "method": "split conformal (segdepth.data.tracking.calibrated_mass), largest over the calibration "
                      "cells, benchmarks/count_set_calibration.py",
            "calibration_sets": [Path(p).name for p in args.calibration_sets],
            "test_sets": [Path(p).name for p in args.test_sets],
            "lams": list(args.lams),
            "test": {m: summary[m] for m in adopted},
            "since": datetime.date.today().isoformat(),
        }}
        update_card(DEFAULT_MODEL, fields)
        say(f"\nwrote count_sets {adopted} into {DEFAULT_MODEL.relative_to(ROOT)}'s card")
    if args.out:
        header = (f"Count-set calibration of the default (benchmarks/count_set_calibration.py, "
                  f"{time.perf_counter() - t0:.0f} s; lambda per 0.053 A pixel, seed-1 noise)\n\n")
        atomic_write(ROOT / args.out, lambda tmp: Path(tmp).write_text(header + "\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
