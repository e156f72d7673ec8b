"""Simulation throughput: images per hour at the paper and CPU presets, 1 vs 2 dask workers.

Run: ``python benchmarks/simulation_throughput.py [--structures N] [--presets cpu paper] [--randomised]``.
With ``--randomised`` each preset is also timed with the randomised optics and particles of the
robust training set (``OPTICS["train"]``, the outline families and variety of ``PRESETS["robust"]``;
every image its own lens, wider focal spreads averaged over proportionally more samples) at 2 workers,
and the ratio randomised / nominal is printed.
For each worker count one LocalCluster is started and warmed up with one structure per worker
(FFTW planning, imports), as a long-lived worker would be; then N structures (the preset's images
per structure, or ``--images``) are generated and timed. Prints images/hour, the 2-worker /
1-worker ratio and the scaling efficiency (ratio / 2) measured in this same invocation (the
machine is shared: compare ratios, not absolute numbers across runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from distributed import Client, LocalCluster

from segdepth.physics.generate import PRESETS, generate_dataset


def randomised(params):
    """``params`` with the optics and particle variety of the robust training preset."""
    robust = PRESETS["robust"]
    keys = ("optics", "surfaces", "vacancy_max", "wedge_range", "surface_vacancy_max", "surface_short_max",
            "adatoms_max", "thickness_range")
    return params.with_(**{k: getattr(robust, k) for k in keys})

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def images_per_hour(params, n_structures: int, workers: int) -> float:
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0", env=ENV) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
        generate_dataset(params, f"{tmp}/warm", n_structures=workers, client=client, progress=False)
        t0 = time.perf_counter()
        generate_dataset(params.with_(seed=params.seed + 1), f"{tmp}/timed", n_structures=n_structures,
                         client=client, progress=False)
        dt = time.perf_counter() - t0
    return 3600 * n_structures * params.n_defocus / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--structures", type=int, default=4, help="structures per timed run")
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"], choices=sorted(PRESETS))
    ap.add_argument("--images", type=int, default=0, help="images per structure (0: the preset's)")
    ap.add_argument("--randomised", action="store_true", help="also time the randomised optics (2 workers)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of the nominal runs")
    args = ap.parse_args(argv)
    for name in args.presets:
        params = PRESETS[name].with_(structures_per_shard=1)
        if args.images:
            params = params.with_(n_defocus=args.images)
        rate = {w: images_per_hour(params, args.structures, w) for w in args.workers}
        for w, r in rate.items():
            print(f"{name:6s} {params.gpts}->{params.image_shape} px, {w} worker(s): {r:7.0f} images/hour", flush=True)
        if 1 in rate and 2 in rate:
            print(f"{name:6s} ({params.n_defocus} images per structure) ratio 2 workers / 1 worker: "
                  f"{rate[2] / rate[1]:.2f}x, scaling efficiency {rate[2] / rate[1] / 2:.0%}", flush=True)
        if args.randomised:
            r = images_per_hour(randomised(params), args.structures, 2)
            base = rate.get(2) or images_per_hour(params, args.structures, 2)
            print(f"{name:6s} randomised optics + particles, 2 workers: {r:7.0f} images/hour, "
                  f"{r / base:.2f}x the nominal path ({base:.0f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
