"""Which passes should the checked mode average? Models x flips of the same noisy frame, scored per column.

Run: ``python benchmarks/pass_ensembles.py --test-sets DIR ... [--models NAME=PATH ...] [--cache DIR]``
(about 1 min per test set and dose on 2 cores for the eight default models x four flips).

Every image of every test set gets Poisson noise at each dose (``default_rng([1, index])``, as
:func:`segdepth.learn.evaluation.infer`), and every model reads it through the four flips the training
augmentation uses (identity, up-down, left-right, 180 degrees; ``segdepth.learn.torchdata.FLIPS``), turned back.
The probabilities at the column centres (the pixel :func:`segdepth.learn.metrics.column_counts` reads) are
kept per model and flip (``--cache``: one ``.npz`` per test set and dose, reused when present), so that any
average of passes is scored on the same noise: the fraction of columns counted exactly per test set and dose,
its mean over the cells of each family of test sets (the set name's first ``_`` part, e.g. ``fresh`` and
``fresh2``), the static sets (names ``<family>_shift_test``) and the column calibration
(:func:`segdepth.learn.metrics.column_calibration`: ECE and 90 % set coverage per set, mean over doses).

Combinations are named ``MODEL@FLIPS+...``, e.g. ``D@0+F@3`` (what ``segdepth predict`` reports: the default on
the frame, its second model on the frame turned by 180 degrees), ``F@0123`` (one model, four flips); flips are
0 identity, 1 up-down, 2 left-right, 3 180 degrees.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: Short names of the default, its second model and the study models of its lineage.
MODELS = {
    "D": "segdepth/models/segdepth_robust_wise_base8_bin4.safetensors",
    "F": "segdepth/models/segdepth_robust_wise_flat_base8_bin4.safetensors",
    "B": "segdepth/models/segdepth_robust_base8_bin4.safetensors",
    "Q": "data/models/study/segdepth_robust_quasi_base8_bin4.safetensors",
    "W": "data/models/study/segdepth_robust_wide_base8_bin4.safetensors",
    "FF": "data/models/study/segdepth_robust_flat_base8_bin4.safetensors",
    "P3": "data/models/study/segdepth_robust_plain3_base8_bin4.safetensors",
    "PH": "data/models/study/segdepth_robust_phonons_base8_bin4.safetensors",
}
#: Image axes flipped by each flip index (of a (batch, channel, y, x) tensor).
FLIP_DIMS = ((), (2,), (3,), (2, 3))
LAMS = (1.0, 2.5, 10.0)
ALL = "D F B Q W FF P3 PH"
COMBINATIONS = [
    "D@0+F@3", "D@0+D@3", "D@0123", "F@0123", "D@01+F@32", "D@0123+F@0123", "D@0+F@3+B@0+B@3",
    "D@0123+F@0123+FF@0123+PH@0123", "D@0123+F@0123+Q@0123+FF@0123", "D@0123+F@0123+B@0123+P3@0123",
    "+".join(f"{m}@0123" for m in ALL.split()), "+".join(f"{m}@03" for m in ALL.split()),
    *(f"D@0+F@3+{m}@0+{m}@3" for m in ("B", "Q", "W", "FF", "P3", "PH")),
]


def parse_combination(spec: str) -> list[tuple[str, int]]:
    """``"D@0+F@3"`` -> ``[("D", 0), ("F", 3)]``."""
    passes = []
    for part in spec.split("+"):
        name, _, flips = part.partition("@")
        if not name or not flips or any(c not in "0123" for c in flips):
            raise ValueError(f"bad pass {part!r} in {spec!r}: expected MODEL@FLIPS with flips from 0123")
        passes += [(name, int(c)) for c in flips]
    return passes


def column_passes(models: dict, ds, lam: float, flips=(0, 1, 2, 3)) -> dict[str, np.ndarray]:
    """Per model: probabilities (columns, flips, classes) at the column centres of every image of ``ds``.

    ``flips``: indices into :data:`FLIP_DIMS` (default all four). Also ``T`` and ``Z``: the true count and the
    element of every column. The noise depends only on the image index: calls with different models or flips
    see the same noisy frames.
    """
    import torch

    from segdepth.data.preprocess import bin_image, normalise
    from segdepth.learn.metrics import column_probabilities
    from segdepth.physics.noise import poisson_noise

    out = {name: [] for name in models}
    true, element = [], []
    for i in range(ds.sizes["sample"]):
        s = ds.isel(sample=i)
        noisy = poisson_noise(np.asarray(s.image.values, np.float32), lam, rng=np.random.default_rng([1, i]))
        x = torch.from_numpy(normalise(bin_image(noisy, 4)))[None, None]
        keep = np.isfinite(s.column_x.values)
        true.append(s.column_count.values[keep].astype(np.int8))
        element.append(s.column_Z.values[keep].astype(np.int8))
        with torch.inference_mode():
            for name, model in models.items():
                per_flip = []
                for dims in (FLIP_DIMS[k] for k in flips):
                    p = torch.softmax(model(torch.flip(x, dims) if dims else x), dim=1)
                    p = (torch.flip(p, dims) if dims else p)[0].numpy()
                    per_flip.append(column_probabilities(p, s.column_x.values[keep], s.column_y.values[keep],
                                                         s.label_x.values, s.label_y.values))
                out[name].append(np.stack(per_flip, axis=1).astype(np.float16))
    return {"T": np.concatenate(true), "Z": np.concatenate(element)} | {k: np.concatenate(v) for k, v in out.items()}


def average(cell: dict, passes: list[tuple[str, int]]) -> np.ndarray:
    p = sum(cell[name][:, flip, :].astype(np.float64) for name, flip in passes) / len(passes)
    return p / p.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-sets", nargs="+", required=True)
    ap.add_argument("--models", nargs="*", default=[f"{k}={v}" for k, v in MODELS.items()],
                    help="NAME=PATH of the models the combinations name")
    ap.add_argument("--combinations", nargs="+", default=COMBINATIONS)
    ap.add_argument("--lams", nargs="+", type=float, default=list(LAMS))
    ap.add_argument("--cache", default="", help="directory for the per-set probabilities ('' : none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    import torch

    from segdepth.data.store import atomic_write, open_dataset
    from segdepth.learn.metrics import column_calibration
    from segdepth.learn.modelio import load_model

    torch.set_num_threads(args.threads)
    paths = dict(item.split("=", 1) for item in args.models)
    combos = {spec: parse_combination(spec) for spec in args.combinations}
    unknown = {name for passes in combos.values() for name, _ in passes} - set(paths)
    if unknown:
        ap.error(f"combinations name models not given in --models: {sorted(unknown)}")
    models = {name: load_model(ROOT / path)[0].eval() for name, path in paths.items()}
    cache = Path(args.cache) if args.cache else None
    cells = {}
    t0 = time.perf_counter()
    for path in args.test_sets:
        name = Path(path).name
        ds = None
        for lam in args.lams:
            file = cache / f"{name}_{lam:g}.npz" if cache else None
            if file is not None and file.exists():
                cell = dict(np.load(file))
                if set(models) - set(cell):
                    raise SystemExit(f"{file}: cached without models {sorted(set(models) - set(cell))}; remove it")
            else:
                ds = open_dataset(ROOT / path) if ds is None else ds
                cell = column_passes(models, ds, lam)
                if file is not None:
                    atomic_write(file, lambda tmp, c=cell: np.savez_compressed(tmp, **c), suffix=".tmp.npz")
            cells[(name, lam)] = cell
            print(f"{name} lambda {lam:g}: {len(cell['T'])} columns ({time.perf_counter() - t0:.0f} s)", flush=True)

    lines = []

    def say(text=""):
        print(text)
        lines.append(text)

    families = {}
    for name, lam in cells:
        families.setdefault(name.split("_")[0], []).append((name, lam))
    say("Exact count per column (seed-1 noise); family means over their test x dose cells; static sets at "
          "lambda " + " / ".join(f"{v:g}" for v in args.lams) + "\n")
    head = ["passes", *(f"{f} mean" for f in families), "mean", *(f"{f} static" for f in families)]
    say("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for spec, passes in combos.items():
        exact = {key: float((average(c, passes).argmax(1) == c["T"]).mean()) for key, c in cells.items()}
        means = [np.mean([exact[k] for k in keys]) for keys in families.values()]
        static = [" / ".join(f"{exact[(f'{fam}_shift_test', lam)]:.3f}" for lam in args.lams
                             if (f"{fam}_shift_test", lam) in exact) or "-" for fam in families]
        say(f"| {spec} | " + " | ".join(f"{m:.4f}" for m in means) + f" | {np.mean(means):.4f} | "
              + " | ".join(static) + " |")
    sets = list(dict.fromkeys(name for name, _ in cells))
    say("\nColumn calibration: ECE / 90 % set coverage, mean over doses\n")
    say("| passes | " + " | ".join(sets) + " |\n|" + "---|" * (len(sets) + 1))
    for spec, passes in combos.items():
        row = []
        for name in sets:
            cal = [column_calibration(average(c, passes), c["T"].astype(int)) for (n, _), c in cells.items()
                   if n == name]
            row.append(f"{np.mean([c['ece'] for c in cal]):.3f} / {np.mean([c['set_coverage'] for c in cal]):.3f}")
        say(f"| {spec} | " + " | ".join(row) + " |")
    if args.out:
        header = (f"Passes averaged at the column centres; test sets {', '.join(sets)}; seed-1 noise "
                  f"(benchmarks/pass_ensembles.py, {time.perf_counter() - t0:.0f} s)\n\n")
        atomic_write(ROOT / args.out, lambda tmp: Path(tmp).write_text(header + "\n".join(lines) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
