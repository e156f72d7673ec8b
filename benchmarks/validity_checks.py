"""The validity check on simulated CeO2 [110] images: how much of the crystal it vouches for, what it masks.

Run: ``python benchmarks/validity_checks.py [--preset robust] [--structures 4] [--lam 0.3 1 2.5 10]``.
Simulates ``--structures`` particles of a generator preset (one image each, seed ``--seed``), adds Poisson
noise at each dose (electrons per 0.053 A pixel; paired noise, :func:`segdepth.physics.noise.poisson_noise_paired`,
since 2026-12-05, so that the figures repeat between runs), predicts every image with the default model (plain and
180-degree pass, :func:`segdepth.learn.inference.predict`) and assesses the *same* predictions with two vacuum
masks (:func:`segdepth.learn.validity.assess`), so that the difference is the rule's alone: the default
(lattice, confident seeds and hysteresis, ``keep_connected`` :data:`~segdepth.learn.validity.KEEP_CONNECTED`) and
the rule before 2026-12-05 (lattice and confident seeds only, ``keep_connected=None``). For each it prints per
dose: the fraction of labelled column pixels (true depth > 0) that are valid as CeO2 [110] counts (reason 0;
masked vacuum does not count), the columns *lost to the mask* (the network reads a non-zero count at the
column centre, the mask sets it to 0), the columns counted exactly after the mask, and the fraction of
true-vacuum pixels (true depth 0) read as non-zero. Issue 12 asks >= 0.98 valid and no column lost.
``--keep-confident P`` sets the seed threshold of both (default :data:`~segdepth.learn.validity.KEEP_CONFIDENT`),
``--keep-connected P`` the default rule's hysteresis threshold, ``--reach R ...`` adds the default rule with the
hysteresis limited to ``R`` A from a seed (``assess(reach=R)``). ``--data DIR [--images N]`` takes the first N images
of a simulated dataset (for example ``make fresh-shift-tests``) instead of simulating, ``--default-rule-only`` skips
the rule before 2026-12-05, ``--rotated-model same`` makes the 180-degree pass with the default itself. Also
printed: what the valid map buys, the exact count among the columns vouched for (reason 0 at the column centre)
and among those flagged as a model disagreement.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="robust")
    ap.add_argument("--structures", type=int, default=4)
    ap.add_argument("--seed", type=int, default=555)
    ap.add_argument("--lam", type=float, nargs="+", default=[0.3, 1.0, 2.5, 10.0])
    ap.add_argument("--keep-confident", type=float, help="the vacuum mask's seed threshold")
    ap.add_argument("--keep-connected", type=float, help="the default rule's hysteresis threshold")
    ap.add_argument("--reach", type=float, nargs="+", default=[],
                    help="also the default rule with the hysteresis limited to this distance [A] from a seed")
    ap.add_argument("--refute-radius", type=float, nargs="+", default=[],
                    help="also the default rule with assess(refute_radius=R) (a grain's neighbourhood refutes [110])")
    ap.add_argument("--data", help="a simulated dataset directory instead of simulating --structures particles")
    ap.add_argument("--images", type=int, help="with --data: its first N images (default all)")
    ap.add_argument("--default-rule-only", action="store_true", help="only the default vacuum rule")
    ap.add_argument("--rotated-model", choices=("default", "same"), default="default",
                    help="the 180-degree pass: the default's second model (as segdepth predict) or the default itself")
    args = ap.parse_args(argv)

    from segdepth.learn.inference import load_default_model, predict
    from segdepth.learn.validity import (
        KEEP_CONFIDENT,
        KEEP_CONNECTED,
        REACH,
        REASONS,
        REFUTE_RADIUS,
        assess,
        rotated_180,
    )
    from segdepth.physics.generate import PRESETS, make_shard
    from segdepth.physics.noise import poisson_noise_paired

    start = time.perf_counter()
    if args.data:
        from segdepth.data.store import open_dataset

        ds = open_dataset(args.data)
        ds = ds.isel(sample=slice(0, args.images)).load()
        print(f"{ds.sizes['sample']} images of {args.data}")
    else:
        params = PRESETS[args.preset].with_(n_defocus=1, structures_per_shard=args.structures, seed=args.seed)
        ds = make_shard(params, 0)
        elapsed = time.perf_counter() - start
        print(f"simulated {args.structures} images ({args.preset}, seed {args.seed}) in {elapsed:.0f} s")
    model, card = load_default_model()
    second, second_card = (model, card) if args.rotated_model == "same" else load_default_model(rotated=True)
    rng = np.random.default_rng(0)
    f = ds.attrs["label_pixel_size"]
    keep = KEEP_CONFIDENT if args.keep_confident is None else args.keep_confident
    connected = KEEP_CONNECTED if args.keep_connected is None else args.keep_connected
    disagreement_code = next(code for code, name in REASONS.items() if name == "model_disagreement")
    rules = {f"hysteresis {connected:g}": (connected, REACH, REFUTE_RADIUS),
             **{f"hysteresis {connected:g}, reach {r:g} A": (connected, r, REFUTE_RADIUS) for r in args.reach},
             **{f"hysteresis {connected:g}, refute radius {r:g} A": (connected, REACH, r) for r in args.refute_radius},
             "lattice and seeds only": (None, None, REFUTE_RADIUS)}
    if args.default_rule_only:
        rules.pop("lattice and seeds only")
    # per rule and dose: valid px, labelled px, lost, columns, vacuum > 0, vacuum, exact,
    # valid columns, exact valid columns, disagreement columns, exact disagreement columns
    totals = {(rule, lam): [0] * 11 for rule in rules for lam in args.lam}
    for s in range(ds.sizes["sample"]):
        lab = ds.depth[s].values > 0
        count = ds.column_count[s].values
        ok = np.isfinite(ds.column_x[s].values) & (count > 0)
        iy = np.clip(np.round((ds.column_y[s].values[ok] - ds.label_y.values[0]) / f).astype(int), 0, lab.shape[0] - 1)
        ix = np.clip(np.round((ds.column_x[s].values[ok] - ds.label_x.values[0]) / f).astype(int), 0, lab.shape[1] - 1)
        for lam in args.lam:
            noisy = poisson_noise_paired(ds.image[s].values, lam, rng=rng)  # reproducible between runs
            image = xr.DataArray(noisy[None], dims=("frame", "y", "x"), coords={"y": ds.y.values, "x": ds.x.values},
                                 attrs={"pixel_size": ds.attrs["pixel_size"]})
            plain = predict(image, model, card, return_probabilities=True)
            rotated = predict(rotated_180(image), second, second_card, return_probabilities=True)  # as predict_checked
            for rule, (connected, reach, refute) in rules.items():
                with np.errstate(all="ignore"):
                    out = assess(image, plain, rotated=rotated, keep_confident=keep, keep_connected=connected,
                                 reach=reach, refute_radius=refute)
                raw = out.probability.values[0].argmax(0)
                depth = out.depth.values[0]
                reason = out.valid_reason.values[0]
                t = totals[rule, lam]
                t[0] += int((reason[lab] == 0).sum())  # vouched for as a CeO2 [110] count
                t[1] += int(lab.sum())
                t[2] += int(((raw[iy, ix] > 0) & (depth[iy, ix] == 0)).sum())
                t[3] += int(ok.sum())
                t[4] += int(((ds.depth[s].values == 0) & (depth > 0)).sum())
                t[5] += int((ds.depth[s].values == 0).sum())
                right = depth[iy, ix] == count[ok]
                t[6] += int(right.sum())
                at = reason[iy, ix]
                t[7] += int((at == 0).sum())
                t[8] += int(right[at == 0].sum())
                disagree = at == disagreement_code
                t[9] += int(disagree.sum())
                t[10] += int(right[disagree].sum())
                reasons = np.bincount(reason[lab], minlength=len(REASONS))
                print(f"image {s} lambda {lam:g} {rule}: valid {(reason[lab] == 0).mean():.3f} of the column pixels "
                      f"({dict(zip(REASONS.values(), reasons.tolist(), strict=True))})", flush=True)
    for (rule, lam), (v, n, lost, cols, vac, nvac, exact, vcols, vexact, dcols, dexact) in totals.items():
        print(f"lambda {lam:g}, {rule} (keep_confident {keep:g}): valid {v / n:.3f} of {n} column pixels; {lost} of "
              f"{cols} columns lost to the mask; exact {exact / cols:.3f}; true-vacuum pixels read > 0: "
              f"{vac / nvac:.4f}; exact among the {vcols} columns vouched for {vexact / max(vcols, 1):.3f}, among the "
              f"{dcols} flagged as model disagreement {dexact / max(dcols, 1):.3f}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
