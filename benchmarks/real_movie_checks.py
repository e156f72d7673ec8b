"""No-ground-truth checks of a model on the real Pt/CeO2 movie: the vacuum band at the top of the field.

Run: ``python benchmarks/real_movie_checks.py [--model PATH ...]`` (default: ``default``, what
``segdepth predict`` runs without ``--model``: the default with its second model in the 180-degree pass; then
the default's weights alone, the first robust model and the previous default). For each model,
``segdepth predict`` runs on ``data/raw/ptceo2_udvd_40frames.gif``
(raw left half, pixel size calibrated from the CeO2 and Pt lattices, dose estimated) and the script prints,
over all frames, the fraction of pixels in the top ``--band`` A (vacuum in every frame) estimated as depth 0,
the worst frame, and the mean confidence in that band and below it (the lattice). ``segdepth predict`` runs
with its validity check (vacuum mask, other lattice, test-time disagreement) unless ``--no-check`` is given;
the script then also prints the validity summary. ``--keep-confident P`` is passed on to ``segdepth predict``
(the vacuum mask keeps column readings at least this sure; what it trades: README, "Where the estimate applies"),
and so are ``--lattice-average N`` (1: every frame judged on its own, as a single image would be) and
``--rotated-model PATH`` (another model makes the 180-degree pass) and ``--reach A`` (how far from the lattice mask
the hysteresis may grow; ``none``: no limit).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
MOVIE = ROOT / "data/raw/ptceo2_udvd_40frames.gif"


def check(model: str, band: float, validity: bool = True, keep_confident: float | None = None,
          lattice_average: int | None = None, rotated_model: str | None = None, reach: str | None = None,
          refute_radius: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "movie.nc"
        cmd = [sys.executable, "-m", "segdepth", "predict", str(MOVIE), "--crop", "0:180,:", "--calibrate",
               "CeO2,Pt", "--lambda", "auto", "--out", str(out)] + ([] if model == "default" else ["--model", model])
        if not validity:
            cmd.append("--no-check")
        if keep_confident is not None:
            cmd += ["--keep-confident", str(keep_confident)]
        if lattice_average is not None:
            cmd += ["--lattice-average", str(lattice_average)]
        if rotated_model is not None:
            cmd += ["--rotated-model", rotated_model]
        if reach is not None:
            cmd += ["--reach", reach]
        if refute_radius is not None:
            cmd += ["--refute-radius", refute_radius]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        ds = xr.load_dataset(out)
    top = ds.y <= float(ds.y.min()) + band
    vac = (ds.depth.where(top, drop=True) == 0).mean(("y", "x"))
    result = {"summary": ""}
    if "valid" in ds:
        from segdepth.learn.validity import summary

        result["summary"] = summary(ds)
    return result | {
        "vacuum_as_vacuum": float(vac.mean()), "worst_frame": float(vac.min()),
        "confidence_band": float(ds.confidence.where(top, drop=True).mean()),
        "confidence_lattice": float(ds.confidence.where(~top, drop=True).mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", nargs="+", default=["default",
                                                   "segdepth/models/segdepth_robust_wise_base8_bin4.safetensors",
                                                   "segdepth/models/segdepth_robust_base8_bin4.safetensors",
                                                   "segdepth/models/segdepth_fast_base8_bin4_lam2.5.safetensors"])
    ap.add_argument("--band", type=float, default=5.0, help="height of the vacuum band [A]")
    ap.add_argument("--no-check", action="store_true", help="the network's raw output (segdepth predict --no-check)")
    ap.add_argument("--keep-confident", type=float, help="segdepth predict --keep-confident (default: its default)")
    ap.add_argument("--lattice-average", type=int,
                    help="segdepth predict --lattice-average (default 5; 1: every frame judged on its own)")
    ap.add_argument("--rotated-model", help="segdepth predict --rotated-model (the 180-degree pass of every --model)")
    ap.add_argument("--reach", help="segdepth predict --reach (A or 'none'; default: its default)")
    ap.add_argument("--refute-radius", help="segdepth predict --refute-radius (A or 'none'; default: its default)")
    args = ap.parse_args(argv)
    if args.rotated_model is not None and "default" in args.model:
        ap.error("--rotated-model applies to models given as files, not to 'default'")
    for m in args.model:
        r = check(m, args.band, validity=not args.no_check, keep_confident=args.keep_confident,
                  lattice_average=args.lattice_average, rotated_model=args.rotated_model, reach=args.reach,
                  refute_radius=args.refute_radius)
        name = Path(m).stem + ("" if args.rotated_model is None else f"+{Path(args.rotated_model).stem}")
        print(f"{name}: vacuum band read as depth 0 {r['vacuum_as_vacuum']:.3f} (worst frame "
              f"{r['worst_frame']:.3f}); mean confidence band {r['confidence_band']:.3f}, "
              f"lattice {r['confidence_lattice']:.3f}. {r['summary']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
