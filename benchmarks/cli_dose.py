"""``segdepth predict`` end to end on high-dose frames, without ``--lambda`` (the dose estimated) and with ``none``.

Run: ``python benchmarks/cli_dose.py [--test-set data/simulated/fresh4_shift_test] [--images 12] [--lam 100]``
(about 2 min on 2 cores; ``make cli-dose``).

Every image gets Poisson noise at ``--lam`` electrons per 0.053 A pixel (``default_rng([5, index])``), is saved as
``.npy`` and goes through the command a user types (``segdepth predict IMAGE --pixel-size 0.053 --out OUT``, the
validity check on), once as it is (the dose estimated from the grey values, so that dose matching applies) and
once with ``--lambda none`` (the network reads the frame as it is). Prints the fraction of columns whose depth at
the column centre is the true count, and the estimated doses.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-set", default="data/simulated/fresh4_shift_test")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--lam", type=float, default=100.0)
    args = ap.parse_args(argv)
    import xarray as xr

    from segdepth.apps.cli import main as cli
    from segdepth.data.store import open_dataset
    from segdepth.learn.metrics import column_counts
    from segdepth.physics.noise import poisson_noise

    if not (ROOT / args.test_set).is_dir():
        ap.error(f"test set {args.test_set} not found (make fresh4-shift-tests)")
    ds = open_dataset(ROOT / args.test_set)
    pixel = 0.053
    hits = {"estimated": [0, 0], "none": [0, 0]}
    doses = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(min(args.images, ds.sizes["sample"])):
            s = ds.isel(sample=i)
            noisy = poisson_noise(np.asarray(s.image.values, np.float32), args.lam, rng=np.random.default_rng([5, i]))
            image = Path(tmp) / f"image{i}.npy"
            np.save(image, noisy)
            keep = np.isfinite(s.column_x.values)
            truth = s.column_count.values[keep]
            for name, extra in (("estimated", []), ("none", ["--lambda", "none"])):
                out = Path(tmp) / f"out{i}_{name}.nc"
                code = cli(["predict", str(image), "--pixel-size", str(pixel), "--out", str(out), "--no-progress",
                            *extra])
                if code != 0:
                    raise SystemExit(f"segdepth predict failed on image {i} ({name})")
                with xr.open_dataset(out) as r:
                    if name == "estimated":
                        doses.append(float(r.attrs["lambda_estimated"]))
                    counts = column_counts(r.depth.values[0], s.column_x.values[keep], s.column_y.values[keep],
                                           r.x.values, r.y.values)
                hits[name][0] += int((counts == truth).sum())
                hits[name][1] += int(truth.size)
    print(f"{Path(args.test_set).name}, {len(doses)} images at lambda {args.lam:g} per {pixel} A pixel, "
          f"segdepth predict with the validity check ({time.perf_counter() - t0:.0f} s):")
    print(f"  dose estimated (no --lambda): exact {hits['estimated'][0] / hits['estimated'][1]:.3f} of "
          f"{hits['estimated'][1]} columns; estimated doses {min(doses):.0f}-{max(doses):.0f} "
          f"(median {np.median(doses):.0f})")
    print(f"  --lambda none: exact {hits['none'][0] / hits['none'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
