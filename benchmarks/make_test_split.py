"""Build the compact test split that the repository ships under ``data/test/`` (issue 14).

Notebooks 03, 04 and 05 default to it, so they run from a fresh clone without the 354 MB training set
``data/simulated/cpu_train`` (gitignored, 25 minutes to rebuild). It is an ordinary simulated dataset
(``segdepth.data.store.open_dataset`` reads it; same variables as notebook 01's): the ``cpu`` preset of
the shipped models' training set (1536 -> 768 px at 0.053 A, what the paper-layout models take; the
binned-input models bin it 4x themselves), with **another seed** than training (seed 0), so its
structures are new to every shipped model. To keep it small the clean images are stored as float32
rounded to ``--image-bits`` significant mantissa bits (netCDF BitRound, then shuffle + zlib): a relative
error below 2**-(bits+1) (bits 12: 1.2e-4), far under the Poisson noise of any test dose
(1/sqrt(lambda): 0.14 at lambda 50). Labels and column tables are exact. Every shard records these
parameters and this command in its attributes.

    python benchmarks/make_test_split.py                # data/test, the shipped parameters
    python benchmarks/make_test_split.py --force        # rebuild from scratch

Made with ``make test-split``. About 15-30 s per structure on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segdepth.data.store import SHARD_GLOB, atomic_write, finished_shards, prepare_directory, shard_path  # noqa: E402
from segdepth.physics.generate import PRESETS, make_shard  # noqa: E402

#: The shipped split: preset, seed (training used 0; 14 is this issue's number), size.
PRESET, SEED, STRUCTURES, IMAGES, PER_SHARD, IMAGE_BITS = "cpu", 14, 8, 2, 2, 12


def parameters(preset: str = PRESET, seed: int = SEED, images: int = IMAGES, per_shard: int = PER_SHARD):
    return PRESETS[preset].with_(seed=seed, n_defocus=images, structures_per_shard=per_shard)


def encoding(ds, image_bits: int) -> dict:
    enc = {}
    for name, var in ds.data_vars.items():
        if var.dtype.kind in "fiub":
            enc[name] = {"zlib": True, "complevel": 9, "shuffle": True}
    enc["image"].update(quantize_mode="BitRound", significant_digits=int(image_bits))
    return enc


def build(out, *, preset=PRESET, seed=SEED, structures=STRUCTURES, images=IMAGES, per_shard=PER_SHARD,
          image_bits=IMAGE_BITS, force=False) -> list[Path]:
    given = Path(out).as_posix()
    out = Path(out) if Path(out).is_absolute() else REPO / out
    if force and out.exists():
        shutil.rmtree(out)
    params = parameters(preset, seed, images, per_shard)
    out = prepare_directory(out, params.to_dict())
    command = (f"python benchmarks/make_test_split.py --out {given} --preset {preset} --seed {seed} "
               f"--structures {structures} --images {images} --per-shard {per_shard} --image-bits {image_bits}")
    n_shards = -(-structures // per_shard)
    done = set(finished_shards(out))
    for k in range(n_shards):
        if k in done:
            continue
        started = time.monotonic()
        ds = make_shard(params, k)
        ds.attrs.update(
            description=("SegDepth shipped test split (issue 14): fresh structures for notebooks 03-05 from a "
                         "fresh clone, never seen in training (training seed 0)"),
            build_command=command,
            build=json.dumps({"preset": preset, "seed": seed, "structures": structures, "images": images,
                              "structures_per_shard": per_shard, "image_bits": image_bits}),
            image_encoding=(f"float32 rounded to {image_bits} significant mantissa bits (netCDF BitRound; "
                            f"relative error < 2**-{image_bits + 1}), shuffle + zlib 9; other variables exact"),
        )
        enc = encoding(ds, image_bits)
        atomic_write(shard_path(out, k), lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", encoding=enc))
        print(f"shard {k}: {ds.sizes['sample']} images, {time.monotonic() - started:.0f} s", flush=True)
    paths = sorted(out.glob(SHARD_GLOB))
    print(f"{out}: {len(paths)} shards, {sum(p.stat().st_size for p in paths) / 1e6:.2f} MB")
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/test", help="dataset directory (relative: to the repository)")
    ap.add_argument("--preset", default=PRESET, choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--structures", type=int, default=STRUCTURES)
    ap.add_argument("--images", type=int, default=IMAGES, help="images (overfocus values) per structure")
    ap.add_argument("--per-shard", type=int, default=PER_SHARD, help="structures per shard")
    ap.add_argument("--image-bits", type=int, default=IMAGE_BITS, help="significant mantissa bits of the images")
    ap.add_argument("--force", action="store_true", help="delete the directory first")
    args = ap.parse_args(argv)
    build(args.out, preset=args.preset, seed=args.seed, structures=args.structures, images=args.images,
          per_shard=args.per_shard, image_bits=args.image_bits, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
