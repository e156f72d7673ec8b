"""Issue 11: choose the weight of a fine-tune in a weight average (WiSE-FT) on the ablation sets, not the shift tests.

Every ``alpha`` builds ``(1 - alpha) * base + alpha * tuned`` in memory
(:func:`segdepth.learn.modelio.interpolate_models`) and scores it with :func:`segdepth.learn.evaluation.robustness`
(test-time averaging as ``segdepth predict``) on every dataset under ``--sets`` (default: notebook 07's ablation
sets, ``data/simulated/ablation/<factor>``: the training outlines, one microscope factor at a time). Prints the
mean exact count over all sets and doses, and that of each set; writes the results as netCDF and a markdown
table. The default's alpha (0.2) is the largest whose mean stays within 1 point of alpha = 0 (the base).

    python benchmarks/wise_alpha_sweep.py   # about 6 min on 2 idle cores (12 min measured on busy ones)
    python benchmarks/wise_alpha_sweep.py --table-only   # the markdown table again from --out
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parents[1]


def table(res: xr.Dataset) -> str:
    """Markdown: mean exact count over every set and dose, then per set (lambda 2.5 / 10 averaged)."""
    ex = res.column_exact.sel(group="all")
    sets = [str(t) for t in res.test_set.values]
    head = ["alpha", "mean (all sets and doses)"] + sets
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in res.model.values:
        e = ex.sel(model=m)
        cells = [str(m), f"{float(e.mean()):.4f}"] + [f"{float(e.sel(test_set=t).mean()):.3f}" for t in sets]
        rows.append("| " + " | ".join(cells) + " |")
    lams = ", ".join(f"{float(v):g}" for v in res.lam.values)
    return (f"Exact per-column count of weight averages (1 - alpha) x base + alpha x tuned, mean over lambda {lams}"
            f" (base {res.attrs.get('base')}, tuned {res.attrs.get('tuned')};"
            " mean of the plain and the rotated pass)\n\n"
            + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="segdepth/models/segdepth_robust_base8_bin4.safetensors")
    ap.add_argument("--tuned", default="data/models/study/segdepth_robust_mix_base8_bin4.safetensors")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4, 0.5, 1.0])
    ap.add_argument("--sets", default="data/simulated/ablation", help="directory of datasets (make ablation)")
    ap.add_argument("--lam", type=float, nargs="+", default=[2.5, 10.0])
    ap.add_argument("--seed", type=int, default=1, help="test noise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="data/results/wise_alpha_sweep.nc")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the markdown table from --out")
    args = ap.parse_args(argv)
    out = ROOT / args.out
    if not args.table_only:
        import torch

        from segdepth.data.store import open_dataset, write_netcdf_atomic
        from segdepth.learn.evaluation import robustness
        from segdepth.learn.modelio import interpolate_models, load_model

        torch.set_num_threads(args.threads)
        root = ROOT / args.sets
        if not root.is_dir():
            raise SystemExit(f"error: no datasets in {root}; make them with: make ablation")
        base, _ = load_model(ROOT / args.base)
        tuned, _ = load_model(ROOT / args.tuned)
        sets = {p.name: open_dataset(p, load=True) for p in sorted(root.iterdir()) if p.is_dir()}
        models = {f"a{a:g}": (interpolate_models(base, tuned, a), 4) for a in args.alpha}
        t = time.time()
        res = robustness(models, sets, args.lam, seed=args.seed, tta=True)
        res.attrs.update(base=args.base, tuned=args.tuned)
        write_netcdf_atomic(res, out)
        print(f"scored {len(models)} weight averages on {len(sets)} sets in {time.time() - t:.0f} s")
    res = xr.load_dataset(out)
    text = table(res)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
