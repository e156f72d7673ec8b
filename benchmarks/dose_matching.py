"""Dose matching: the default and its second model on clean images, with and without bringing the dose down.

Run: ``python benchmarks/dose_matching.py --test-sets DIR ... [--target 80] [--draws 4] [--lams 10 25 50 100]
[--write-card] [--out data/results/dose_matching]`` (``make dose-matching``; about 15 min for four test sets of
40 images on 2 cores).

The default counts columns best near the middle of its training doses and worse on cleaner images. With
dose matching (:func:`segdepth.learn.inference.predict` with ``lam`` and a card that has ``dose_matching``)
a frame whose dose per model pixel exceeds ``--target`` is brought down to it
(:func:`segdepth.physics.noise.lower_dose`) ``--draws`` times and the distributions are averaged. This script
scores the pair that ``segdepth predict`` uses (the default on the frame, its second model on the frame turned
by 180 degrees; :func:`segdepth.learn.evaluation.robustness` with ``tta``, seed-1 noise, the noise of
``predict`` for the draws) without and with it at every test set and dose, and applies the Makefile's rule
(``dose-matching``): adopted if the exact count averaged over the doses and test sets rises by at least
``--min-gain`` (2 points) and no test set at any dose loses more than ``--max-loss`` (1 point).
``--write-card`` then writes ``dose_matching`` into the cards of both models.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-sets", nargs="+", required=True)
    ap.add_argument("--target", type=float, default=80.0, help="electrons per model pixel (0.212 A) (default 80)")
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--lams", nargs="+", type=float, default=[10.0, 25.0, 50.0, 100.0],
                    help="doses per 0.053 A pixel (the test sets' grid)")
    ap.add_argument("--min-gain", type=float, default=0.02)
    ap.add_argument("--max-loss", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-card", action="store_true", help="write dose_matching into both cards if adopted")
    ap.add_argument("--out", default="", help="write <out>.nc and <out>.md")
    args = ap.parse_args(argv)
    if not args.target > 0 or args.draws < 1:
        ap.error("--target must be > 0 and --draws >= 1")
    import torch

    from segdepth.data.store import atomic_write, open_dataset, write_netcdf_atomic
    from segdepth.learn.evaluation import robustness, robustness_table
    from segdepth.learn.inference import DEFAULT_MODEL, DEFAULT_ROTATED_MODEL
    from segdepth.learn.modelio import load_model, update_card

    for path in args.test_sets:
        if not (ROOT / path).is_dir():
            ap.error(f"test set {path} not found (make fresh3-shift-tests)")
    torch.set_num_threads(args.threads)
    (default, card), (second, _) = load_model(DEFAULT_MODEL), load_model(DEFAULT_ROTATED_MODEL)
    binning = int(card["input_binning"])
    models = {"pair": (default.eval(), binning, second.eval()),
              "pair, dose-matched": (default, binning, second)}
    sets = {Path(p).name: open_dataset(ROOT / p) for p in args.test_sets}
    t0 = time.perf_counter()
    result = robustness(models, sets, args.lams, seed=1, tta=True,
                        dose_matching={"pair, dose-matched": (args.target, args.draws)})
    seconds = time.perf_counter() - t0
    exact = result["column_exact"].sel(group="all")
    plain, matched = exact.sel(model="pair"), exact.sel(model="pair, dose-matched")
    gain = float((matched - plain).mean())
    worst = float((matched - plain).min())
    adopted = gain >= args.min_gain and worst >= -args.max_loss
    lines = [f"Dose matching (target {args.target:g} e per model pixel = {args.target / binning**2:g} per 0.053 A "
             f"pixel, {args.draws} draws) for the pair segdepth predict uses; seed-1 noise; "
             f"benchmarks/dose_matching.py, {seconds:.0f} s", "",
             "| test set | " + " | ".join(f"lambda {v:g}: plain / matched" for v in args.lams) + " |",
             "|---|" + "---|" * len(args.lams)]
    for t in sets:
        cells = [f"{float(plain.sel(test_set=t, lam=v)):.3f} / {float(matched.sel(test_set=t, lam=v)):.3f}"
                 for v in args.lams]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", f"mean exact count: plain {float(plain.mean()):.4f}, matched {float(matched.mean()):.4f} "
              f"(gain {100 * gain:+.2f} points; worst cell {100 * worst:+.2f}); rule (gain >= "
              f"{100 * args.min_gain:g}, no cell below -{100 * args.max_loss:g}): "
              + ("holds, adopted" if adopted else "fails, not adopted")]
    if 2.5 in args.lams:  # the robustness table's columns read lambda 2.5
        lines += ["", robustness_table(result)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = ROOT / args.out
        write_netcdf_atomic(result.assign_attrs(dose_matching_target=args.target, dose_matching_draws=args.draws),
                            out.with_suffix(".nc"))
        atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    if args.write_card and adopted:
        spec = {"target": args.target, "draws": args.draws, "units": "electrons per model pixel",
                "since": datetime.date.today().isoformat(),
                "test": f"pair on {', '.join(sets)}, lambda {' / '.join(f'{v:g}' for v in args.lams)}: exact "
                        f"{float(plain.mean()):.3f} -> {float(matched.mean()):.3f} (worst cell {100 * worst:+.1f} "
                        "points); benchmarks/dose_matching.py"}
        for path in (DEFAULT_MODEL, DEFAULT_ROTATED_MODEL):
            update_card(path, {"dose_matching": spec})
        print(f"wrote dose_matching {spec['target']:g} / {spec['draws']} into the cards of "
              f"{DEFAULT_MODEL.name} and {DEFAULT_ROTATED_MODEL.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
