"""Inference speed of the shipped model on 1024 x 1024 frames, and what each speed-up costs in accuracy.

Run: ``python benchmarks/inference_speed.py [--threads 2] [--repeats 5] [--data data/simulated/cpu_train]``.

Every variant is timed in this same process on the same random frame (the machine is shared:
compare the printed ratios, not absolute numbers across runs) and, when ``--data`` holds a
simulated dataset with the model's test split, checked for accuracy on that split at lambda 2.5:
per-column atom-count accuracy (exact) and the fraction of label pixels whose depth differs from
the float32 eager baseline.

Variants (each adds to the previous where it says so):

- ``eager fp32``: ``model(x)`` under ``torch.no_grad`` (the baseline: plain eager PyTorch);
- ``predict() default tiles``: the ``segdepth.predict`` path with its default 512 px tiles and
  64 px overlap (what ``segdepth predict`` did before this benchmark);
- ``inference_mode``;
- ``channels_last``: NHWC memory layout;
- ``bf16 autocast``: bfloat16 matmuls/convolutions on the CPU's bf16 units;
- ``bf16 weights``: the whole network converted to bfloat16 (no casts inside);
- ``compile``: ``torch.compile`` (inductor), fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _timed(fn, x, repeats: int) -> float:
    fn(x)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _runner(net, *, bf16_autocast: bool = False, dtype=None, grad_free=torch.inference_mode):
    """forward(x) -> float32 logits of ``net`` with channels-last input (and bf16 as asked)."""

    def forward(x):
        with grad_free(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
            x = x.to(dtype) if dtype is not None else x
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    return forward


def variants(model):
    """name -> forward(x) -> float32 logits."""
    import copy

    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    bf = copy.deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def eager(x):
        with torch.no_grad():
            return model(x)

    def inference(x):
        with torch.inference_mode():
            return model(x)

    out = {"eager fp32": eager, "inference_mode": inference, "channels_last": _runner(cl),
           "bf16 autocast": _runner(cl, bf16_autocast=True), "bf16 weights": _runner(bf, dtype=torch.bfloat16)}
    try:
        compiled = torch.compile(cl)
        out["compile fp32"] = _runner(compiled)
        out["compile bf16"] = _runner(compiled, bf16_autocast=True)
    except Exception as err:  # noqa: BLE001 - report and go on
        print(f"torch.compile unavailable: {err}")
    return out


def column_accuracy(fn, ds, indices, lam: float = 2.5, seed: int = 1):
    """Exact per-column count accuracy and the depth maps of ``fn`` on test samples."""
    from segdepth import metrics
    from segdepth.noise import poisson_noise
    from segdepth.preprocess import normalise

    preds, hits, total = [], 0, 0
    for i in indices:
        s = ds.isel(sample=int(i))
        noisy = poisson_noise(s.image.values, lam, rng=np.random.default_rng([seed, int(i)]))
        logits = fn(torch.from_numpy(normalise(noisy))[None, None])
        pred = logits[0].argmax(0).numpy()
        preds.append(pred)
        counts = metrics.column_counts(pred, s.column_x.values, s.column_y.values, s.label_x.values, s.label_y.values)
        true = s.column_count.values
        keep = true > 0
        hits += int((counts[keep] == true[keep]).sum())
        total += int(keep.sum())
    return hits / max(total, 1), np.stack(preds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024, help="frame edge [model pixels]")
    ap.add_argument("--model", default=None, help="model (default: the shipped one)")
    ap.add_argument("--data", default="data/simulated/cpu_train", help="dataset with the model's test split")
    ap.add_argument("--n-test", type=int, default=8, help="test images for the accuracy check (0: skip)")
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out (e.g. 'compile fp32')")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from segdepth.modelio import load_model
    from segdepth.predict import load_default_model, predict

    model, card = load_model(args.model) if args.model else load_default_model()
    model.eval()
    rng = np.random.default_rng(0)
    frame = rng.poisson(2.5, (args.size, args.size)).astype(np.float32) / 2.5
    x = torch.from_numpy(frame / frame.mean())[None, None]

    ds, idx = None, []
    if args.n_test and Path(args.data).exists():
        from segdepth.store import open_dataset

        ds = open_dataset(args.data, load=True)
        test = card.get("split", {}).get("test_structures", [])
        idx = np.flatnonzero(np.isin(ds.structure.values, test))
        idx = idx[:: max(1, idx.size // args.n_test)][: args.n_test]
    print(f"model {card.get('train_config', {}).get('base_channels')} base channels, {args.size}^2 frame, "
          f"{args.threads} threads, {len(idx)} test images for accuracy")

    import xarray as xr

    image = xr.DataArray(frame, dims=("y", "x"), attrs={"pixel_size": float(card["sampling"])})
    fns = {k: v for k, v in variants(model).items() if k not in args.skip}
    rows, base_time, base_acc, base_pred = [], None, None, None
    for name, fn in fns.items():
        seconds = _timed(fn, x, args.repeats)
        acc, pred = column_accuracy(fn, ds, idx) if len(idx) else (float("nan"), None)
        if base_time is None:
            base_time, base_acc, base_pred = seconds, acc, pred
        differ = float(np.mean(pred != base_pred)) if pred is not None else float("nan")
        rows.append((name, seconds, acc, differ))
        print(f"{name:24s} {seconds:7.3f} s/frame  {1 / seconds:6.2f} fps  {base_time / seconds:5.2f}x  "
              f"column exact {acc:.4f} ({100 * (acc - base_acc):+.2f} pts)  depth differs {100 * differ:.3f} %",
              flush=True)
        if name == "inference_mode":  # the predict() path with its default tiling, same precision
            t = _timed(lambda _: predict(image, model, card), None, args.repeats)
            rows.append(("predict() default tiles", t, float("nan"), float("nan")))
            print(f"{'predict() default tiles':24s} {t:7.3f} s/frame  {1 / t:6.2f} fps  {base_time / t:5.2f}x",
                  flush=True)
    best = min((r for r in rows if not np.isfinite(r[2]) or abs(r[2] - base_acc) <= 0.005), key=lambda r: r[1])
    print(json.dumps({"baseline_s": base_time, "fastest_accurate": best[0], "fastest_s": best[1],
                      "speedup": base_time / best[1], "goal_fps": 7.7, "reached_fps": 1 / best[1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
