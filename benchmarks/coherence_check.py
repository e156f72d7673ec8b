"""Does the coherence check tell abTEM's quasi-coherent envelope from the incoherent focal-spread average?

Run: ``python benchmarks/coherence_check.py --model MODEL --test-sets DIR ... [--lam 1 2.5 10] [--images N]
[--out data/results/coherence_check.md]`` (``make fresh5-shift-tests coherence-check``; about 3 min on 2 cores for
four tests of 20 images at 3 doses). ``MODEL`` is a regime model trained with ``target="quasi"``
(:func:`segdepth.learn.regime.train_regime`; default the shipped one, ``segdepth.learn.regime.COHERENCE_MODEL``).
Every image gets Poisson noise at each dose (electrons per 0.053 A pixel; paired noise,
:func:`segdepth.physics.noise.poisson_noise_paired`, one stream per test, image and dose), the model's probability
of the quasi-coherent envelope at every label pixel (:func:`segdepth.learn.regime.regime_probability`, upright:
the test sets are not turned) and the frame's score, its mean over the crystal as the validity check's lattice mask
sees it (lattice windows of :func:`segdepth.data.lattice.local_lattice` and the 4 A margin,
:func:`segdepth.learn.regime.frame_scores`; the hysteresis growth left out). Printed and written: per test set and
dose the fraction of frames scoring above :data:`segdepth.learn.regime.MAX_UNDERFOCUS` (0.5, the same threshold)
and the lowest / highest score; a test set counts as quasi-coherent when its images record ``quasi_coherent``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a regime model with target 'quasi' (default: the shipped coherence model)")
    ap.add_argument("--test-sets", nargs="+", required=True)
    ap.add_argument("--lam", type=float, nargs="+", default=[1.0, 2.5, 10.0])
    ap.add_argument("--images", type=int, help="the first N images of each test set (default all)")
    ap.add_argument("--out", help="write the table (markdown) here")
    args = ap.parse_args(argv)

    import xarray as xr

    from segdepth.data.lattice import local_lattice, on_grid
    from segdepth.data.store import open_dataset
    from segdepth.learn.regime import (
        COHERENCE_MODEL,
        MAX_UNDERFOCUS,
        frame_scores,
        load_regime_model,
        regime_probability,
    )
    from segdepth.learn.validity import MARGIN, _disc
    from segdepth.physics.noise import poisson_noise_paired

    start = time.perf_counter()
    pair = load_regime_model(args.model or COHERENCE_MODEL)
    if pair is None:
        raise SystemExit("no coherence model is shipped: train one (make train-coherence) and pass --model")
    model, card = pair
    if card.get("target") != "quasi":
        raise SystemExit(f"{args.model or COHERENCE_MODEL} is not a coherence model (target {card.get('target')!r})")
    lines = ["| test set | quasi-coherent | lambda | frames | scoring > 0.5 | lowest | highest |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for t, path in enumerate(args.test_sets):
        ds = open_dataset(path).isel(sample=slice(0, args.images)).load()
        quasi = bool(np.all(ds["quasi_coherent"].values > 0)) if "quasi_coherent" in ds.coords else False
        px = float(ds.attrs["pixel_size"])
        coords = {"y": ds.y.values, "x": ds.x.values}
        for j, lam in enumerate(args.lam):
            scores = []
            for i in range(ds.sizes["sample"]):
                noisy = poisson_noise_paired(ds.image[i].values, lam, rng=np.random.default_rng([7, t, i, j]))
                image = xr.DataArray(noisy[None], dims=("frame", "y", "x"), coords=coords, attrs={"pixel_size": px})
                p = regime_probability(image, model, card)
                grid = on_grid(local_lattice(image), p["y"].values, p["x"].values)
                disc = _disc(MARGIN / float(p["y"].values[1] - p["y"].values[0]))
                crystal = np.stack([ndimage.binary_dilation(c, disc) for c in grid["crystal"].values.astype(bool)])
                scores.append(float(frame_scores(p.values, crystal)[0]))
            scores = np.asarray(scores)
            lines.append(f"| {Path(path).name} | {'yes' if quasi else 'no'} | {lam:g} | {scores.size} | "
                         f"{np.mean(scores > MAX_UNDERFOCUS):.3f} | {scores.min():.3f} | {scores.max():.3f} |")
            print(lines[-1], flush=True)
    lines.append("")
    lines.append(f"({time.perf_counter() - start:.0f} s; model {args.model or COHERENCE_MODEL}; frame score: mean "
                 "probability of the quasi-coherent envelope over the lattice mask with its 4 A margin)")
    if args.out:
        from segdepth.data.store import atomic_write

        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print(lines[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
