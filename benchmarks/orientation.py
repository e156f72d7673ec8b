"""Crystals turned in the image plane: what ``segdepth predict`` counts with and without the orientation step.

Run: ``python benchmarks/orientation.py [--test-sets DIR ...] [--images N] [--out FILE]`` (``make orientation``,
about 10 min on 2 cores).

The shipped models were trained on CeO2 [110] with [001] along y. Each test image (the clean simulation) is
turned by ``--angles`` degrees (scikit-image ``rotate``, cubic, about the centre; counter-clockwise as
displayed), given Poisson noise at each dose (``default_rng([1, index])``) and read by
:func:`segdepth.learn.validity.predict_checked` with the shipped default (what ``segdepth predict`` reports:
the default and its second model in the 180-degree pass, lattice maps per frame) with ``orientation="auto"``
(the default: measured from the power spectrum and turned back, :func:`segdepth.learn.inference.predict`) and
``orientation=None`` (read as given). The column centres are turned with the image; columns within 2 A of the
field's edge are left out. Printed: the fraction of columns counted exactly, and how many images had their
orientation measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_SETS = ["data/simulated/fresh4_shift_test", "data/simulated/fresh4_shift_phonons_test"]


def turned_columns(s, angle: float, pixel_size: float):
    """The image of sample ``s`` turned by ``angle`` [deg], its columns' positions [A] there, and which are inside."""
    from skimage.transform import rotate

    img = np.asarray(s.image.values, np.float64)
    if angle:
        img = rotate(img, angle, order=3, mode="constant", cval=float(np.median(img[:8])))
    keep = np.isfinite(s.column_x.values)
    c = img.shape[0] * pixel_size / 2
    dx, dy = s.column_x.values[keep] - c, s.column_y.values[keep] - c
    a = np.deg2rad(angle)
    x, y = c + np.cos(a) * dx + np.sin(a) * dy, c - np.sin(a) * dx + np.cos(a) * dy
    inside = (np.minimum(x, y) > 2) & (np.maximum(x, y) < img.shape[0] * pixel_size - 2)
    return img.clip(0).astype(np.float32), x[inside], y[inside], s.column_count.values[keep][inside]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-sets", nargs="+", default=TEST_SETS)
    ap.add_argument("--images", type=int, default=12, help="first N images of each set")
    ap.add_argument("--angles", nargs="+", type=float, default=[0, 10, 30, 45, 90])
    ap.add_argument("--plain-angles", nargs="+", type=float, default=[0, 30],
                    help="angles also read with orientation=None")
    ap.add_argument("--lams", nargs="+", type=float, default=[2.5, 10.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    import torch

    from segdepth.data.store import atomic_write, open_dataset
    from segdepth.learn.metrics import column_probabilities
    from segdepth.learn.validity import predict_checked
    from segdepth.physics.noise import poisson_noise

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lines = ["| test set | lambda | angle (deg) | orientation | exact | images turned back |",
             "|---|---|---|---|---|---|"]
    for path in args.test_sets:
        ds = open_dataset(ROOT / path)
        px = float(ds.attrs["pixel_size"])
        n = min(args.images, ds.sizes["sample"])
        for lam in args.lams:
            runs = [(a, "auto") for a in args.angles] + [(a, None) for a in args.plain_angles]
            for angle, orientation in sorted(runs, key=lambda r: (r[0], str(r[1]))):
                right = total = turned = 0
                for i in range(n):
                    img, x, y, true = turned_columns(ds.isel(sample=i), angle, px)
                    noisy = poisson_noise(img, lam, rng=np.random.default_rng([1, i]))
                    out = predict_checked(noisy, pixel_size=px, lam=lam, return_probabilities=True,
                                          orientation=orientation)
                    p = column_probabilities(out.probability.values[0], x, y, out.x.values, out.y.values)
                    right += int((p.argmax(1) == true).sum())
                    total += len(true)
                    turned += bool(json.loads(out.attrs["orientation"])["rotation"])
                line = (f"| {Path(path).name} | {lam:g} | {angle:g} | {orientation} | {right / total:.3f} | "
                        f"{turned} of {n} |")
                lines.append(line)
                print(line, f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        header = (f"Columns counted exactly by segdepth predict's checked default on test images turned in the image "
                  f"plane (benchmarks/orientation.py, {time.perf_counter() - t0:.0f} s; first {args.images} images "
                  "per set)\n\n")
        atomic_write(ROOT / args.out, lambda tmp: Path(tmp).write_text(header + "\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
