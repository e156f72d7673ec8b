"""The contrast-regime check end to end: does ``segdepth predict`` flag underfocused frames, and only those?

Run: ``python benchmarks/regime_check.py --test data/simulated/shift_regime_test [--lam 0.5 1 2.5 10]
[--images N] [--output data/results/regime_check]`` (``make regime-test evaluate-regime``; about 6 min on 2 cores
for 40 images at 4 doses). Every image of the test set(s) gets Poisson noise at each dose (electrons per
0.053 A pixel; paired noise, :func:`segdepth.physics.noise.poisson_noise_paired`, one stream per image and dose)
and goes through :func:`segdepth.learn.validity.predict_checked` as ``segdepth predict`` runs it (default pair,
180-degree pass, lattice maps, the regime model, the in-plane turn). Printed and written (``OUTPUT.md``,
``OUTPUT.nc``): the fraction of frames whose crystal is flagged ``wrong_focus`` (their ``underfocus_score`` above
:data:`segdepth.learn.regime.MAX_UNDERFOCUS`) for underfocused images (wanted: all) and overfocused ones (wanted:
none), by dose and by the amount of defocus, static and vibrating atoms apart; and the exact count of the pair at
the true columns of the frames it vouches for and of those it flags (what the flag keeps a user from believing).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

BINS = (-120.0, -50.0, -20.0, 0.0, 20.0, 50.0, 120.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", nargs="+", required=True, help="simulated dataset directories (overfocus recorded)")
    ap.add_argument("--lam", type=float, nargs="+", default=[0.5, 1.0, 2.5, 10.0])
    ap.add_argument("--images", type=int, help="the first N images of each test set (default all)")
    ap.add_argument("--regime-model", help="a regime model file instead of the shipped one")
    ap.add_argument("--output", help="write OUTPUT.md and OUTPUT.nc")
    args = ap.parse_args(argv)

    from segdepth.data.store import open_dataset, write_netcdf_atomic
    from segdepth.learn.metrics import column_counts
    from segdepth.learn.regime import MAX_UNDERFOCUS, load_regime_model
    from segdepth.learn.validity import predict_checked
    from segdepth.physics.noise import poisson_noise_paired

    start = time.perf_counter()
    regime = load_regime_model(args.regime_model)
    if regime is None:
        raise SystemExit("no regime model: train one first (make train-regime) or pass --regime-model")
    rows = []
    for t, path in enumerate(args.test):
        ds = open_dataset(path)
        ds = ds.isel(sample=slice(0, args.images)).load()
        px = float(ds.attrs["pixel_size"])
        for i in range(ds.sizes["sample"]):
            s = ds.isel(sample=i)
            n = int((s.column_count.values > 0).sum())
            cx, cy, cc = (s[v].values[:n] for v in ("column_x", "column_y", "column_count"))
            for j, lam in enumerate(args.lam):
                noisy = poisson_noise_paired(s.image.values, lam, rng=np.random.default_rng([5, t, i, j]))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    out = predict_checked(noisy, pixel_size=px, lam=lam, regime_model=regime)
                counts = column_counts(out.depth.values[0], cx, cy, out.x.values, out.y.values)
                rows.append({"test": t, "image": i, "lam": lam, "overfocus": float(s.overfocus),
                             "phonons": int(s.phonons) if "phonons" in s.coords else 0,
                             "score": float(out.underfocus_score.values[0]),
                             "exact": float((counts == cc).mean()) if n else np.nan, "columns": n})
            print(f"{path} image {i}: overfocus {float(s.overfocus):+.0f} A, scores "
                  + ", ".join(f"{r['score']:.2f}" for r in rows[-len(args.lam):])
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    df["flagged"] = df.score > MAX_UNDERFOCUS
    lines = [f"# The contrast-regime check ({', '.join(args.test)})", "",
             f"Fraction of frames flagged `wrong_focus` (underfocus_score > {MAX_UNDERFOCUS}); "
             "overfocus C10 in A (negative: underfocused).", "",
             "| overfocus | images | " + " | ".join(f"lambda {lam:g}" for lam in args.lam) + " |",
             "| --- | --- | " + " | ".join("---" for _ in args.lam) + " |"]
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        inside = df[(df.overfocus >= lo) & (df.overfocus < hi)]
        cells = [f"{inside[inside.lam == lam].flagged.mean():.2f}" if (inside.lam == lam).any() else ""
                 for lam in args.lam]
        lines.append(f"| {lo:+.0f} to {hi:+.0f} | {int((inside.lam == args.lam[0]).sum())} | " + " | ".join(cells)
                     + " |")
    lines += ["", "| atoms | regime | frames | flagged | exact count, vouched for | exact count, flagged |",
              "| --- | --- | --- | --- | --- | --- |"]
    for vib in sorted(df.phonons.unique()):
        for name, under in (("overfocused", False), ("underfocused", True)):
            sel = df[(df.phonons == vib) & ((df.overfocus < 0) == under)]
            if sel.empty:
                continue
            ok, bad = sel[~sel.flagged], sel[sel.flagged]
            mean = lambda d: f"{d.exact.mean():.3f}" if len(d) else ""  # noqa: E731
            lines.append(f"| {'vibrating' if vib else 'static'} | {name} | {len(sel)} | "
                         f"{sel.flagged.mean():.3f} | {mean(ok)} | {mean(bad)} |")
    table = xr.Dataset.from_dataframe(df.rename_axis("row"))
    lines += ["", f"total {time.perf_counter() - start:.0f} s"]
    print("\n".join(lines))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_netcdf_atomic(table.assign_attrs(tests=" ".join(args.test), max_underfocus=MAX_UNDERFOCUS),
                            out.with_suffix(".nc"))
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
